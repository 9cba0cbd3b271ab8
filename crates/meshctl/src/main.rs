//! meshctl: the mesh's client and admin CLI.
//!
//! `put`, `get`, `del`, `incr`, `sadd`, `srem`, `smembers`, `conflicts`, `backlog`, `status` and
//! `watch` (a live terminal view of every DC) talk to one
//! DC's HTTP API (by default the first DC of
//! mesh.toml, with its token; `--api`/`--token` override); `certs` issues development
//! certificates; `topology-check` validates mesh.toml and prints its fingerprint.

mod bench;
mod watch;

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "meshctl", about = "Client and admin CLI for mesh", version)]
struct Cli {
    /// The topology file.
    #[arg(long, global = true, default_value = "mesh.toml")]
    config: PathBuf,
    /// Which DC's API to use (default: the first of mesh.toml).
    #[arg(long, global = true)]
    dc: Option<String>,
    /// The API's base URL (overrides --dc), e.g. http://127.0.0.1:8101.
    #[arg(long, global = true)]
    api: Option<String>,
    /// The bearer token (default: mesh.toml's [node] api_token; MESH__NODE__API_TOKEN overrides).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the API's JSON as is.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a value.
    Put {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// async, sync or hybrid.
        #[arg(long)]
        mode: Option<String>,
        /// Acks of a sync write: a number, quorum or all.
        #[arg(long)]
        acks: Option<String>,
        /// An idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Reads a key.
    Get {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: String,
    },
    /// Deletes a key.
    Del {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: String,
    },
    /// Adds to a counter.
    Incr {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: String,
        /// The amount (negative subtracts).
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Adds members to a set.
    Sadd {
        /// The keyspace (a set keyspace).
        keyspace: String,
        /// The key.
        key: String,
        /// The members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Removes members from a set (the adds this DC has seen).
    Srem {
        /// The keyspace (a set keyspace).
        keyspace: String,
        /// The key.
        key: String,
        /// The members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Lists a set's members.
    Smembers {
        /// The keyspace (a set keyspace).
        keyspace: String,
        /// The key.
        key: String,
    },
    /// The newest conflict records this DC resolved: the competing versions and the winner.
    Conflicts {
        /// Only this keyspace's.
        #[arg(long)]
        keyspace: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What this DC still has to get to peer DC: ops per origin, per keyspace, the first keys.
    Backlog {
        /// The peer DC.
        peer: String,
        /// Most ops read from the log to break it down.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// A live terminal view of every DC's status, refreshed each second (q quits).
    Watch,
    /// Shows a DC's status: its peers, their health and lag.
    Status,
    /// Issues development certificates for every DC of mesh.toml that lacks one.
    Certs,
    /// Validates mesh.toml and prints its DCs, keyspaces and fingerprint.
    TopologyCheck,
    /// Drives writes at one DC (--dc) through the batch API and measures replication at the others.
    Bench {
        /// How long to write, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Ops per second in total (0: as fast as answers come).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Ops per batch request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// The keyspace written (a register keyspace).
        #[arg(long, default_value = "users")]
        keyspace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let loaded = mesh_node::config::load(&cli.config).map_err(|e| e.to_string())?;
    match &cli.command {
        Command::Certs => {
            for line in mesh_node::config::ensure_dev_certs(&loaded)? {
                println!("{line}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::TopologyCheck => {
            let t = &loaded.topology;
            println!("{}: valid; fingerprint {:016x}", cli.config.display(), t.fingerprint());
            for dc in &t.dcs {
                println!(
                    "  dc {} (priority {}, listen {}, api {}{})",
                    dc.id,
                    dc.priority,
                    dc.listen,
                    dc.api,
                    if dc.active { "" } else { ", inactive" }
                );
            }
            for (name, ks) in &t.keyspaces {
                println!(
                    "  keyspace {name}: {} ({:?}{})",
                    ks.rules.strategy(),
                    ks.mode,
                    if ks.critical { ", critical" } else { "" }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Bench { seconds, rate, batch, value_bytes, writers, keyspace } => {
            let origin = match &cli.dc {
                Some(dc) => loaded.dc(dc).map_err(|e| e.to_string())?,
                None => loaded.topology.dcs.first().ok_or("no DC in mesh.toml")?.id.clone(),
            };
            let url = |id: &mesh_core::DcId| {
                format!("http://{}", loaded.topology.dc(id).expect("a DC of the topology").api)
            };
            let others = loaded
                .topology
                .dcs
                .iter()
                .filter(|d| d.active && d.id != origin)
                .map(|d| (d.id.to_string(), url(&d.id)))
                .collect();
            bench::run(bench::Bench {
                origin_api: url(&origin),
                origin: origin.to_string(),
                others,
                token: cli.token.clone().unwrap_or_else(|| loaded.topology.config.node.api_token.clone()),
                keyspace: keyspace.clone(),
                seconds: *seconds,
                rate: *rate,
                batch: (*batch).clamp(1, 10_000),
                value_bytes: *value_bytes,
                writers: (*writers).max(1),
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let base = match &cli.api {
        Some(api) => api.trim_end_matches('/').to_owned(),
        None => {
            let dc = match &cli.dc {
                Some(dc) => loaded.dc(dc).map_err(|e| e.to_string())?,
                None => loaded.topology.dcs.first().ok_or("no DC in mesh.toml")?.id.clone(),
            };
            format!("http://{}", loaded.topology.dc(&dc).expect("checked").api)
        }
    };
    let token = cli.token.clone().unwrap_or_else(|| loaded.topology.config.node.api_token.clone());
    if matches!(cli.command, Command::Watch) {
        watch::run(&base, &token)?;
        return Ok(ExitCode::SUCCESS);
    }
    // A stopped or unreachable DC gets an error, not a hang.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let path = |ks: &str, k: &str| format!("{base}/v1/kv/{ks}/{}", encode(k));
    let response = match &cli.command {
        Command::Put { keyspace, key, value, mode, acks, idempotency_key } => {
            let mut request = agent.put(path(keyspace, key)).header("authorization", &auth);
            if let Some(m) = mode {
                request = request.header("x-mesh-mode", m);
            }
            if let Some(a) = acks {
                request = request.header("x-mesh-acks", a);
            }
            if let Some(k) = idempotency_key {
                request = request.header("idempotency-key", k);
            }
            request.send(value.as_bytes())
        }
        Command::Get { keyspace, key } => {
            agent.get(path(keyspace, key)).header("authorization", &auth).call()
        }
        Command::Del { keyspace, key } => {
            agent.delete(path(keyspace, key)).header("authorization", &auth).call()
        }
        Command::Incr { keyspace, key, by } => agent
            .post(format!("{base}/v1/counter/{keyspace}/{}", encode(key)))
            .header("authorization", &auth)
            .send(format!("{{\"by\": {by}}}").as_bytes()),
        Command::Sadd { keyspace, key, members } | Command::Srem { keyspace, key, members } => {
            let op = if matches!(cli.command, Command::Sadd { .. }) { "add" } else { "remove" };
            let body = serde_json::json!({ op: members }).to_string();
            agent
                .post(format!("{base}/v1/set/{keyspace}/{}", encode(key)))
                .header("authorization", &auth)
                .send(body.as_bytes())
        }
        Command::Smembers { keyspace, key } => {
            agent.get(path(keyspace, key)).header("authorization", &auth).call()
        }
        Command::Conflicts { keyspace, limit } => {
            let mut request = agent
                .get(format!("{base}/v1/conflicts"))
                .query("limit", limit.to_string())
                .header("authorization", &auth);
            if let Some(k) = keyspace {
                request = request.query("keyspace", k);
            }
            request.call()
        }
        Command::Backlog { peer, limit } => agent
            .get(format!("{base}/v1/peers/{}/backlog", encode(peer)))
            .query("limit", limit.to_string())
            .header("authorization", &auth)
            .call(),
        Command::Status => agent.get(format!("{base}/v1/status")).header("authorization", &auth).call(),
        Command::Certs | Command::TopologyCheck | Command::Bench { .. } | Command::Watch => {
            unreachable!("handled above")
        }
    };
    let mut response = response.map_err(|e| format!("{base}: {e}"))?;
    let status = response.status().as_u16();
    let mut body = String::new();
    response.body_mut().as_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
    if cli.json || !(200..300).contains(&status) {
        println!("{body}");
    } else {
        print_human(&cli.command, &body);
    }
    Ok(if (200..300).contains(&status) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Percent-encodes a key for a URL path segment.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_human(command: &Command, body: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        println!("{body}");
        return;
    };
    match command {
        Command::Backlog { .. } => {
            println!("{} ops to get to {}", v["ops"], v["peer"].as_str().unwrap_or("?"));
            for o in v["origins"].as_array().into_iter().flatten() {
                println!(
                    "  from {}: {} ops (it holds {}, up to {})",
                    o["origin"].as_str().unwrap_or("?"),
                    o["ops"],
                    o["peer_holds"],
                    o["up_to"]
                );
            }
            println!("the first {} of them, by keyspace:", v["scanned_ops"]);
            for (keyspace, k) in v["keyspaces"].as_object().into_iter().flatten() {
                println!("  {keyspace}: {} ops, {} bytes", k["ops"], k["bytes"]);
            }
            let keys: Vec<String> = v["first_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    format!("{}/{}", k["keyspace"].as_str().unwrap_or("?"), k["key"].as_str().unwrap_or("?"))
                })
                .collect();
            println!("first keys: {}", keys.join(", "));
        }
        Command::Smembers { .. } => {
            for member in v["members"].as_array().into_iter().flatten() {
                println!("{}", member.as_str().unwrap_or(""));
            }
        }
        Command::Conflicts { .. } => {
            for c in v["conflicts"].as_array().into_iter().flatten() {
                println!(
                    "{} {}/{} ({}): winner {}",
                    unix_ms_text(c["at_unix_ms"].as_u64()),
                    c["keyspace"].as_str().unwrap_or("?"),
                    c["key"].as_str().unwrap_or("?"),
                    c["strategy"].as_str().unwrap_or("?"),
                    c["winner"].as_str().unwrap_or("none (siblings kept)")
                );
                for version in c["versions"].as_array().into_iter().flatten() {
                    println!(
                        "    {}:{} hlc {}.{}  {}",
                        version["dc"].as_str().unwrap_or("?"),
                        version["seq"],
                        version["hlc"]["physical_ms"],
                        version["hlc"]["logical"],
                        version["value"].as_str().unwrap_or("(deleted)")
                    );
                }
            }
        }
        Command::Get { .. } => {
            let base64 = if v["encoding"] == "base64" { " [base64]" } else { "" };
            if let Some(values) = v["values"].as_array() {
                for value in values {
                    println!(
                        "{}{base64}  ({}:{})",
                        value["value"].as_str().unwrap_or(""),
                        value["dc"].as_str().unwrap_or("?"),
                        value["seq"]
                    );
                }
            } else if let Some(members) = v["members"].as_array() {
                let members: Vec<&str> = members.iter().filter_map(|m| m.as_str()).collect();
                println!("{}", members.join(", "));
            } else {
                println!("{}", v["value"]);
            }
        }
        Command::Status => {
            println!("{}: ready {}, seen {}", v["dc"].as_str().unwrap_or("?"), v["ready"], v["seen"]["dots"]);
            println!(
                "{:<14} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12} {:>10}",
                "peer",
                "connected",
                "health",
                "phi",
                "lag ops",
                "lag ms",
                "queued",
                "replicated",
                "bytes raw",
                "bytes wire",
                "last sent"
            );
            for p in v["peers"].as_array().into_iter().flatten() {
                let alert = if p["lag_alert"].as_bool() == Some(true) { " !" } else { "" };
                println!(
                    "{:<14} {:>9} {:>8} {:>7.2} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12} {:>10}",
                    p["dc"].as_str().unwrap_or("?"),
                    p["connected"].to_string(),
                    p["health"].as_str().unwrap_or("-"),
                    p["phi"].as_f64().unwrap_or(-1.0),
                    p["lag_ops"].to_string(),
                    format!("{}{alert}", p["lag_ms"]),
                    p["queued_ops"].to_string(),
                    p["replicated_ops"].to_string(),
                    p["bytes_raw"].to_string(),
                    p["bytes_wire"].to_string(),
                    p["last_sent_ms_ago"].as_u64().map_or("-".into(), |ms| format!("{ms} ms ago")),
                );
            }
            println!("(! marks a lag above max_replication_lag_ms = {})", v["max_replication_lag_ms"]);
        }
        _ => println!("ok {}", v["dot"].as_str().unwrap_or("")),
    }
}

/// A Unix time in ms as RFC 3339 UTC (`2026-12-01T04:25:31.123Z`); `?` when missing or out of
/// range.
fn unix_ms_text(ms: Option<u64>) -> String {
    let at =
        ms.and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok());
    at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn conflict_times_read_as_rfc3339_utc() {
        assert_eq!(super::unix_ms_text(Some(1_764_563_131_123)), "2025-12-01T04:25:31.123Z");
        assert_eq!(super::unix_ms_text(None), "?");
    }
}
