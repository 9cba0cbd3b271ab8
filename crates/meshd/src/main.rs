//! meshd: the mesh node daemon.
//!
//! - `meshd run --config mesh.toml --dc ID` runs one DC.
//! - `meshd up [--config mesh.toml]` runs every DC of the file on this machine, each its own
//!   child process with its own data directory, after generating development certificates on
//!   first start; Ctrl-C stops them all.

use clap::{Parser, Subcommand};
use mesh_core::DcId;
use mesh_node::config::{self, Loaded};
use mesh_node::http::{self, ApiState};
use mesh_node::runtime::{self, DcArgs, Supervisor};
use mesh_node::tls::Material;
use mesh_node::transport;
use mesh_wire::CodecConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// mimalloc instead of glibc's malloc: allocation and free were a fifth of a replicating DC's
/// CPU under redis-benchmark (perf, docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the position of `mi_option_purge_delay` in the
/// `mi_option_e` enum of the mimalloc.h that libmimalloc-sys 0.1.49 builds; its Rust bindings
/// do not name it). Checked by a test against the option's default, 1,000 ms in that version's
/// options.c.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS (purge delay −1), unless the operator
/// set the purge delay in the environment (`MIMALLOC_PURGE_DELAY`, or its older name
/// `MIMALLOC_RESET_DELAY`; mimalloc reads either at start, in any letter case), which this then
/// leaves alone.
///
/// By default mimalloc gives pages freed for a second back to the OS (`madvise`), and the next
/// allocation there faults in a fresh zeroed page. A DC frees and reallocates hundreds of MB a
/// minute (the overlay's layers, redb's page buffers, batches allocated on one thread and freed
/// on another), so under a 1M-SET redis-benchmark run the kernel's page zeroing was 11–15 % of
/// each DC's CPU, with 35–62k page faults per DC; without purging, 1–6k faults, 8–11 % less CPU
/// per replicated op and ~9 % more replicated SETs/s (three interleaved pairs,
/// docs/performance.md). The cost: a DC's resident memory stays at its high-water mark instead
/// of shrinking after a burst; it is bounded by the same settings as the peak (`node.cache_mib`,
/// `node.checkpoint_keys`, docs/configuration.md).
///
/// Must run first in `main`, before any other thread exists: `mi_option_set` is a plain store.
fn allocator_keeps_freed_memory() {
    if purge_delay_in_environment() {
        return;
    }
    // SAFETY: `mi_option_set` takes any option and value and only stores the value (a plain,
    // non-atomic store), which mimalloc reads at each purge. This runs first in `main`, before
    // any other thread exists, so nothing reads it concurrently. The option number is checked
    // by the test below.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Whether the environment sets mimalloc's purge delay, under either name mimalloc reads
/// (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_RESET_DELAY`, in any letter case).
fn purge_delay_in_environment() -> bool {
    std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|n| {
            n.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY") || n.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    })
}

#[derive(Parser)]
#[command(name = "meshd", about = "The mesh node daemon", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one DC of the topology.
    Run {
        /// The topology file.
        #[arg(long, default_value = "mesh.toml")]
        config: PathBuf,
        /// The DC this process is.
        #[arg(long)]
        dc: String,
        /// Record mesh.toml's topology in a data directory written under another one, instead
        /// of refusing to start (after a deliberate change made at every DC).
        #[arg(long)]
        adopt_topology: bool,
    },
    /// Runs every DC of the topology on this machine (development), one child process each.
    Up {
        /// The topology file.
        #[arg(long, default_value = "mesh.toml")]
        config: PathBuf,
    },
}

/// Logs go to stderr through `tracing`: the filter from `MESH_LOG`, else `RUST_LOG`, else
/// `info` (`EnvFilter` syntax, e.g. `MESH_LOG=mesh_node=debug`); `MESH_LOG_FORMAT=json` writes
/// one JSON object per event (docs/observability.md lists the events).
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("MESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal);
    if std::env::var("MESH_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    allocator_keeps_freed_memory();
    let cli = Cli::parse();
    init_logs();
    let result = match cli.command {
        Command::Run { config, dc, adopt_topology } => run(&config, &dc, adopt_topology),
        Command::Up { config } => up(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(config_path: &Path) -> Result<(), String> {
    let loaded = config::load(config_path).map_err(|e| e.to_string())?;
    for line in mesh_node::config::ensure_dev_certs(&loaded)? {
        println!("{line}");
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for dc in loaded.topology.dcs.iter().filter(|d| d.active) {
        let child = std::process::Command::new(&exe)
            .args(["run", "--config"])
            .arg(config_path)
            .args(["--dc", dc.id.as_str()])
            .spawn()
            .map_err(|e| format!("starting {}: {e}", dc.id))?;
        match dc.resp {
            Some(resp) => {
                println!("{}: API http://{}  RESP redis://{resp}  (replication {})", dc.id, dc.api, dc.listen)
            }
            None => println!("{}: API http://{}  (replication {})", dc.id, dc.api, dc.listen),
        }
        children.push((dc.id.clone(), child));
    }
    let apis: Vec<SocketAddr> = loaded.topology.dcs.iter().filter(|d| d.active).map(|d| d.api).collect();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(async {
        // Up means every DC's API answers (it does while the store opens): a DC that exits first
        // (a port taken, a bad data directory) fails the whole command, with its own message
        // above this one.
        let deadline = tokio::time::Instant::now() + UP_WITHIN;
        loop {
            if let Some(exited) = exited(&mut children) {
                return Err(exited);
            }
            let mut answering = 0;
            for api in &apis {
                answering += usize::from(tokio::net::TcpStream::connect(api).await.is_ok());
            }
            if answering == apis.len() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not every DC's API answered within {}s", UP_WITHIN.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("{} DCs up; Ctrl-C stops them all", children.len());
        // Until Ctrl-C or SIGTERM, or until a DC exits by itself.
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(exited) = exited(&mut children) {
                    return exited;
                }
            }
        };
        tokio::select! {
            _ = stopped() => Ok(()),
            exited = watch => Err(exited),
        }
    });
    for (dc, mut child) in children {
        if child.try_wait().ok().flatten().is_some() {
            continue;
        }
        // SIGTERM lets each DC close its links and its store.
        #[cfg(unix)]
        {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        if child.wait().is_err() {
            let _ = child.kill();
        }
        println!("{dc} stopped");
    }
    outcome.map_err(|e| format!("{e}; the other DCs were stopped"))
}

/// How long `meshd up` waits for every DC's API.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// The first DC of `children` whose process has exited, said as an error.
fn exited(children: &mut [(DcId, std::process::Child)]) -> Option<String> {
    children.iter_mut().find_map(|(dc, child)| match child.try_wait() {
        Ok(Some(status)) => Some(format!("{dc} exited ({status}); its own message is above")),
        Ok(None) => None,
        Err(e) => Some(format!("{dc}: {e}")),
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn run(config_path: &Path, dc: &str, adopt_topology: bool) -> Result<(), String> {
    let loaded = config::load(config_path).map_err(|e| e.to_string())?;
    let local: DcId = loaded.dc(dc).map_err(|e| e.to_string())?;
    // Built outside the runtime: the OTLP push uses a blocking HTTP client on its own thread.
    let settings = &loaded.topology.config.node;
    let otlp = Some(settings.otlp_endpoint.trim())
        .filter(|e| !e.is_empty())
        .map(|e| (e, Duration::from_millis(settings.otlp_interval_ms)));
    let region = loaded.topology.dc(&local).map(|d| d.region.clone()).unwrap_or_default();
    let metrics = mesh_node::metrics::Metrics::with_otlp(local.as_str(), &region, otlp)?;
    let traces = Some(settings.otlp_traces_endpoint.trim())
        .filter(|e| !e.is_empty())
        .map(|e| mesh_node::traces::Traces::new(local.as_str(), &region, e, settings.trace_sampling))
        .transpose()?
        .map(std::sync::Arc::new);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(serve(loaded, local, metrics, traces, adopt_topology))
}

async fn serve(
    loaded: Loaded,
    local: DcId,
    metrics: mesh_node::metrics::Metrics,
    traces: Option<std::sync::Arc<mesh_node::traces::Traces>>,
    adopt_topology: bool,
) -> Result<(), String> {
    let topology = loaded.topology.clone();
    let me = topology.dc(&local).expect("checked").clone();
    let settings = &topology.config.node;
    let material = Material::load(
        &loaded.path_for(&settings.tls.ca_cert, &local),
        &loaded.path_for(&settings.tls.cert, &local),
        &loaded.path_for(&settings.tls.key, &local),
    )
    .map_err(|e| format!("{e} (run `meshd up` once to generate development certificates)"))?;
    let heartbeat_ms = topology.config.replication.heartbeat_interval_ms;
    let endpoint = transport::endpoint_for(me.listen, &material, heartbeat_ms).map_err(|e| e.to_string())?;
    let data_dir = loaded.path_for(&settings.data_dir, &local);
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let codec = CodecConfig::from_replication(&topology.config.replication).map_err(|e| e.to_string())?;
    let args = DcArgs {
        metrics: metrics.clone(),
        local: local.clone(),
        topology: topology.clone(),
        store_path: data_dir.join("store.redb"),
        endpoint: endpoint.clone(),
        codec: codec.clone(),
        started: Instant::now(),
        adopt_topology,
        traces,
    };
    let (current_tx, current_rx) = tokio::sync::watch::channel(None);
    // The API serves first (`503 starting` until the DC actor is live), so a restart that
    // replays a long write-ahead log keeps the port open and says why.
    let api = tokio::net::TcpListener::bind(me.api)
        .await
        .map_err(|e| format!("binding the API at {}: {e}", me.api))?;
    let app = http::router(ApiState {
        dc: current_rx.clone(),
        token: settings.api_token.clone(),
        metrics: metrics.clone(),
        topology: topology.clone(),
        local: local.clone(),
    });
    let keyspaces: Vec<String> =
        topology.keyspaces.values().map(|k| format!("{}={}", k.name, k.rules.strategy())).collect();
    tracing::info!(
        dc = %local,
        region = %me.region,
        api = %me.api,
        replication = %me.listen,
        resp = %me.resp.map_or("none".to_string(), |a| a.to_string()),
        peers = topology.dcs.len() - 1,
        keyspaces = %keyspaces.join(","),
        fingerprint = %format!("{:016x}", topology.fingerprint()),
        data_dir = %data_dir.display(),
        heartbeat_ms = heartbeat_ms,
        "meshd started"
    );
    if let Some(address) = me.resp {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("binding the RESP front end at {address}: {e}"))?;
        let resp = mesh_node::resp::RespServer::new(
            current_rx.clone(),
            settings.api_token.clone(),
            topology.clone(),
            local.clone(),
        );
        tokio::spawn(resp.serve(listener));
    }
    let server = tokio::spawn(async move { axum::serve(api, app).with_graceful_shutdown(stopped()).await });
    let (pool_tx, pool_rx) = tokio::sync::watch::channel(None);
    // The live health actor is published for tests; the front ends reach it through the
    // resolver (`/v1/status`).
    let (health_tx, _) = tokio::sync::watch::channel(None);
    let (supervisor, supervisor_done) =
        ractor::Actor::spawn(None, Supervisor, (args, current_tx, pool_tx, health_tx))
            .await
            .map_err(|e| format!("starting {local}: {e}"))?;
    let candidates: Vec<DcId> = topology.dcs.iter().map(|d| d.id.clone()).collect();
    runtime::spawn_accept_loop(local.clone(), endpoint.clone(), candidates, codec, pool_rx, metrics);
    server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    tracing::info!(dc = %local, "meshd stopping: closing links and the store");
    supervisor.stop(Some("shutdown".into()));
    let _ = supervisor_done.await;
    endpoint.close(0u32.into(), b"shutdown");
    tracing::info!(dc = %local, "meshd stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc's purge delay: its default is 1,000 (ms, options.c of
    /// the mimalloc that libmimalloc-sys 0.1.49 builds), and the options on either side
    /// default to other values.
    #[test]
    fn the_option_meshd_sets_is_mimallocs_purge_delay() {
        if super::purge_delay_in_environment() {
            return;
        }
        // SAFETY: reading an option has no precondition.
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(get(super::MI_OPTION_PURGE_DELAY), 1_000);
        assert_ne!(get(super::MI_OPTION_PURGE_DELAY - 1), 1_000);
        assert_ne!(get(super::MI_OPTION_PURGE_DELAY + 1), 1_000);
    }
}
