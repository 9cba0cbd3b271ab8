//! mesh side by side with Redis primary → 2 replicas, driven by the same redis-benchmark flags.
//!
//! `cargo bench --bench compare_redis` (not run in CI). Needs Debian's `redis-server` and
//! `redis-tools`; installs them with apt-get when missing and running as root.
//!
//! 1. Redis 7 (Debian): a primary with AOF `everysec` and two replicas on loopback. One
//!    redis-benchmark run of SET; then wait until both replicas' offsets reach the primary's.
//! 2. mesh: three `meshd run` processes on loopback (benches/mesh.toml's keyspaces, fresh data
//!    directories); the same redis-benchmark run against the first DC's RESP port (acks after
//!    the local fsync); then wait until both other DCs' `seen` hold every write.
//! 3. mesh replication lag at a steady 10,000 writes/s (`meshctl bench --rate 10000`), read
//!    from the nodes' own per-op histograms. Beside it, for the same seconds, a probe of the
//!    disk the DCs write to: one thread overwrites a 4 KiB block of a file in the same directory
//!    and `fdatasync`s it every 10 ms, and prints that latency's p50/p99/p99.9/max and the time
//!    spent in syncs over 20 ms. Every lag sample includes two such syncs (the origin's commit,
//!    then the receiver's), so the disk's own tail in the same seconds is the floor of the lag's.
//!
//! Prints one table: acked ops/s, replicated ops/s (acked writes / time until every replica or
//! DC held them), the mesh/Redis ratio, CPU µs per replicated op (user + system time of the
//! system's three processes from /proc, the load generator excluded), and bytes sent per op to
//! each replica/peer (Redis: replication offset; mesh: compressed frames). Ports are ephemeral;
//! every process started is stopped at the end.
//!
//! 4. mesh wire bytes per op on the reference records (`shared/data/reference-records.jsonl`,
//!    via `mesh_wire::reference`): 10 rounds of the 1,000 records written at the first DC in one
//!    `POST /v1/batch` each, the compressed frame bytes it sent until both peers held them.
//! 5. A partition of the third DC while the first takes 10,000 writes/s: the third `meshd` is
//!    stopped with SIGSTOP (no packet reaches it and it answers none: to the others it is cut
//!    off; this machine has no tc or iptables to cut loopback links), `meshctl bench --rate
//!    10000` writes for the partition's length, then SIGCONT heals it. Prints the writer's RSS
//!    before and at its peak during the partition (sampled every 250 ms), and the catch-up rate:
//!    the ops the third DC lacked at the heal divided by the time until it held them all (also
//!    from the first op it applied, which leaves out the redial). A catch-up under 100k ops/s
//!    keeps the three DCs' logs, status and metrics (`target/tmp/compare_redis-logs-<unix
//!    seconds>`).
//!
//! Flags: `MESH_COMPARE_REQUESTS` (default 1,000,000), `MESH_COMPARE_LAG_SECONDS` (10),
//! `MESH_COMPARE_PARTITION_SECONDS` (60; 0 skips step 5; the issue's memory target asks for 600).

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
/// The mesh's DCs: the first takes the writes, the third is the one cut off.
const DCS: [&str; 3] = ["us-east", "us-west", "eu-central"];

/// Children killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn ensure_redis() {
    if on_path("redis-server") && on_path("redis-benchmark") && on_path("redis-cli") {
        return;
    }
    eprintln!("installing redis-server and redis-tools with apt-get");
    let ok = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install redis-server/redis-tools: install them (Debian packages) and run again");
}

/// user + system CPU time of `pid`, in µs.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let hz = 100; // USER_HZ on Linux
    ticks * 1_000_000 / hz
}

fn cpu_of(procs: &Procs) -> u64 {
    procs.0.iter().map(|c| cpu_us(c.id())).sum()
}

fn redis_cli(port: u16, auth: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(a) = auth {
        cmd.args(["-a", a, "--no-auth-warning"]);
    }
    let out = cmd.args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).and_then(|v| v.trim().parse().ok())
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// Runs redis-benchmark's SET test against `port`; returns acked requests/s as it reports them.
fn redis_benchmark(port: u16, auth: Option<&str>, requests: u64) -> f64 {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(a) = auth {
        cmd.args(["-a", a]);
    }
    let out = cmd
        .args(["-t", "set", "-P", "64", "-d", "100", "-n", &requests.to_string(), "-r", "100000000", "--csv"])
        .stderr(Stdio::null())
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find(|l| l.starts_with("\"SET\"")).unwrap_or_else(|| panic!("no SET line in {text}"));
    line.split(',').nth(1).and_then(|v| v.trim_matches('"').parse().ok()).expect("a requests/s figure")
}

struct Row {
    acked: f64,
    replicated: f64,
    cpu_us_per_op: f64,
    bytes_per_op: f64,
}

fn run_redis(dir: &Path, requests: u64) -> Row {
    let ports = [tcp_port(), tcp_port(), tcp_port()];
    let mut procs = Procs(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let data = dir.join(format!("redis{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&data)
            .stdout(Stdio::null());
        if i > 0 {
            cmd.args(["--replicaof", "127.0.0.1", &ports[0].to_string()]);
        }
        procs.0.push(cmd.spawn().expect("redis-server starts"));
    }
    wait_for("redis replicas link up", Duration::from_secs(30), || {
        ports[1..]
            .iter()
            .all(|p| redis_cli(*p, None, &["INFO", "replication"]).contains("master_link_status:up"))
    });
    let offset = |port| {
        info_field(&redis_cli(port, None, &["INFO", "replication"]), "master_repl_offset").unwrap_or(0)
    };
    let (offset_before, cpu_before) = (offset(ports[0]), cpu_of(&procs));
    let start = Instant::now();
    let acked = redis_benchmark(ports[0], None, requests);
    let target = offset(ports[0]);
    wait_for("redis replicas catch up", Duration::from_secs(300), || {
        ports[1..].iter().all(|p| {
            info_field(&redis_cli(*p, None, &["INFO", "replication"]), "slave_repl_offset").unwrap_or(0)
                >= target
        })
    });
    let elapsed = start.elapsed().as_secs_f64();
    Row {
        acked,
        replicated: requests as f64 / elapsed,
        cpu_us_per_op: (cpu_of(&procs) - cpu_before) as f64 / requests as f64,
        bytes_per_op: (target - offset_before) as f64 / requests as f64,
    }
}

struct Mesh {
    dir: PathBuf,
    procs: Procs,
    apis: Vec<u16>,
    resp: u16,
}

fn start_mesh(dir: &Path) -> Mesh {
    let mut toml =
        String::from("[replication]\nmax_delay_ms = 5\nbatch_size = 1000\nheartbeat_interval_ms = 250\n\n");
    let (mut apis, mut resps) = (Vec::new(), Vec::new());
    for (i, name) in DCS.iter().enumerate() {
        let (api, resp, listen) = (tcp_port(), tcp_port(), udp_port());
        apis.push(api);
        resps.push(resp);
        toml += &format!(
            "[[dcs]]\nid = \"{name}\"\npriority = {}\nlisten = \"127.0.0.1:{listen}\"\napi = \"127.0.0.1:{api}\"\nresp = \"127.0.0.1:{resp}\"\n\n",
            30 - 10 * i
        );
    }
    toml += "[keyspaces.key]\nstrategy = \"lww\"\n\n[keyspaces.counter]\nstrategy = \"counter\"\n\n";
    toml += &format!("[keyspaces.{}]\nstrategy = \"lww\"\n\n", mesh_wire::reference::KEYSPACE);
    toml += &format!("[node]\napi_token = \"{TOKEN}\"\n");
    std::fs::write(dir.join("mesh.toml"), toml).unwrap();
    let ca = mesh_node::tls::generate_ca().unwrap();
    mesh_node::tls::write(&dir.join("certs/ca.crt"), &ca.cert, false).unwrap();
    mesh_node::tls::write(&dir.join("certs/ca.key"), &ca.key, true).unwrap();
    let mut procs = Procs(Vec::new());
    for name in DCS {
        let issued = mesh_node::tls::issue(&ca, &mesh_core::DcId::new(name).unwrap()).unwrap();
        mesh_node::tls::write(&dir.join(format!("certs/{name}.crt")), &issued.cert, false).unwrap();
        mesh_node::tls::write(&dir.join(format!("certs/{name}.key")), &issued.key, true).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["run", "--config"])
            .arg(dir.join("mesh.toml"))
            .args(["--dc", name])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("meshd starts");
        procs.0.push(child);
    }
    for api in &apis {
        wait_for("meshd ready", Duration::from_secs(60), || http_get(*api, "/readyz").starts_with("ready"));
    }
    Mesh { dir: dir.to_path_buf(), procs, apis, resp: resps[0] }
}

/// An HTTP client that returns error statuses as answers, with a whole-request timeout.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

fn http_get(port: u16, path: &str) -> String {
    agent(Duration::from_secs(10))
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn seen_of(port: u16, origin: &str) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&http_get(port, "/v1/status")).unwrap_or_default();
    status["seen"]["dots"][origin].as_u64().unwrap_or(0)
}

/// Waits until the other DCs hold every write the first DC has made durable.
fn wait_replicated(mesh: &Mesh, what: &str, limit: Duration) {
    let target = seen_of(mesh.apis[0], "us-east");
    wait_for(what, limit, || mesh.apis[1..].iter().all(|p| seen_of(*p, "us-east") >= target));
}

fn wire_bytes(port: u16) -> u64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|l| l.starts_with("mesh_bytes_sent_total{") && l.contains("kind=\"wire\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

fn run_mesh(mesh: &Mesh, requests: u64) -> Row {
    let (bytes_before, cpu_before) = (wire_bytes(mesh.apis[0]), cpu_of(&mesh.procs));
    let start = Instant::now();
    let acked = redis_benchmark(mesh.resp, Some(TOKEN), requests);
    wait_replicated(mesh, "mesh DCs catch up", Duration::from_secs(600));
    let elapsed = start.elapsed().as_secs_f64();
    Row {
        acked,
        replicated: requests as f64 / elapsed,
        cpu_us_per_op: (cpu_of(&mesh.procs) - cpu_before) as f64 / requests as f64,
        // Frames to both peers: per peer.
        bytes_per_op: (wire_bytes(mesh.apis[0]) - bytes_before) as f64 / requests as f64 / 2.0,
    }
}

fn http_post(port: u16, path: &str, body: &str) -> u16 {
    agent(Duration::from_secs(60))
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send(body.as_bytes())
        .map_or(0, |r| r.status().as_u16())
}

/// Compressed frame bytes per op to each peer for the reference records, written `rounds`
/// times at the first DC, 1,000 ops per batch.
fn reference_bytes(mesh: &Mesh, rounds: u64) -> f64 {
    let records = mesh_wire::reference::load(Path::new(env!("CARGO_MANIFEST_DIR")));
    let ops: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "op": "put",
                "keyspace": mesh_wire::reference::KEYSPACE,
                "key": r.key.as_str(),
                "value": String::from_utf8_lossy(&r.value),
            })
        })
        .collect();
    let body = serde_json::json!({ "ops": ops }).to_string();
    let before = wire_bytes(mesh.apis[0]);
    for _ in 0..rounds {
        assert_eq!(http_post(mesh.apis[0], "/v1/batch", &body), 200, "the reference batch is written");
        wait_replicated(mesh, "peers hold the reference batch", Duration::from_secs(60));
    }
    (wire_bytes(mesh.apis[0]) - before) as f64 / (rounds * records.len() as u64) as f64 / 2.0
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

struct Partition {
    /// Ops the cut-off DC lacked at the heal.
    behind: u64,
    /// From SIGCONT until it held them all, in s.
    heal_to_caught_up: f64,
    /// From the first op it applied after the heal until it held them all, in s.
    first_apply_to_caught_up: f64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
}

impl Partition {
    /// The catch-up rate from the heal, in ops/s (the issue's target 3).
    fn rate_from_heal(&self) -> f64 {
        self.behind as f64 / self.heal_to_caught_up
    }
}

/// Cuts the third DC off for `seconds` while the first takes 10,000 writes/s, then heals it.
fn partition(mesh: &Mesh, seconds: u64) -> Partition {
    let (writer, cut) = (mesh.procs.0[0].id(), mesh.procs.0[2].id());
    let rss_before_kib = rss_kib(writer);
    let written_before = seen_of(mesh.apis[0], "us-east");
    // meshctl reads every peer's status before it writes: the cut comes once writes flow. It
    // waits (up to 10 minutes) until both peers hold every write, so it ends after the heal.
    let mut bench = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--config")
        .arg(mesh.dir.join("mesh.toml"))
        .args(["--dc", "us-east", "bench", "--keyspace", "key", "--seconds", &(seconds + 2).to_string()])
        .args(["--rate", "10000", "--batch", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("meshctl bench starts");
    let started = Instant::now();
    wait_for("meshctl bench writes", Duration::from_secs(60), || {
        seen_of(mesh.apis[0], "us-east") >= written_before + 1_000
    });
    let held_before = seen_of(mesh.apis[2], "us-east");
    signal(cut, "-STOP");
    let cut_at = Instant::now();
    let mut rss_peak_kib = rss_before_kib;
    while cut_at.elapsed() < Duration::from_secs(seconds)
        || started.elapsed() < Duration::from_secs(seconds + 2) + Duration::from_millis(500)
    {
        rss_peak_kib = rss_peak_kib.max(rss_kib(writer));
        std::thread::sleep(Duration::from_millis(250));
    }
    let target = seen_of(mesh.apis[0], "us-east");
    signal(cut, "-CONT");
    let healed = Instant::now();
    let mut first_apply = None;
    let mut held = held_before;
    while held < target {
        assert!(healed.elapsed() < Duration::from_secs(600), "the cut-off DC did not catch up in 10 minutes");
        held = seen_of(mesh.apis[2], "us-east");
        if held > held_before && first_apply.is_none() {
            first_apply = Some(Instant::now());
        }
        rss_peak_kib = rss_peak_kib.max(rss_kib(writer));
        std::thread::sleep(Duration::from_millis(20));
    }
    let caught_up = Instant::now();
    let _ = bench.wait();
    Partition {
        behind: target - held_before,
        heal_to_caught_up: caught_up.duration_since(healed).as_secs_f64(),
        first_apply_to_caught_up: caught_up.duration_since(first_apply.unwrap_or(healed)).as_secs_f64(),
        rss_before_kib,
        rss_peak_kib,
    }
}

/// `fdatasync` latency of the disk under `dir` while `seconds` pass: a 4 KiB block
/// overwritten and synced every 10 ms. Returns the histogram (µs) and the µs spent in syncs
/// that took over 20 ms.
fn disk_probe(dir: &Path, seconds: u64) -> (hdrhistogram::Histogram<u64>, u64) {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fdatasync-probe");
    let file = std::fs::File::create(&path).expect("the probe file is created");
    let block = [0x5au8; 4096];
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut stalled_us = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    for i in 0u64.. {
        if Instant::now() >= end {
            break;
        }
        file.write_all_at(&block, (i % 256) * 4096).expect("the probe writes");
        let started = Instant::now();
        file.sync_data().expect("the probe syncs");
        let us = started.elapsed().as_micros() as u64;
        histogram.saturating_record(us.max(1));
        if us > 20_000 {
            stalled_us += us;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    (histogram, stalled_us)
}

/// Lag p50 and p99 (ms) at each other DC at a steady 10,000 writes/s, from `meshctl bench`.
fn mesh_lag(mesh: &Mesh, seconds: u64) -> Vec<(String, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--config")
        .arg(mesh.dir.join("mesh.toml"))
        .args(["--dc", "us-east", "bench", "--keyspace", "key", "--seconds", &seconds.to_string()])
        .args(["--rate", "10000", "--batch", "100"])
        .stderr(Stdio::null())
        .output()
        .expect("meshctl bench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("us-west") || l.starts_with("eu-central"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), format!("{} ms", f[2]), format!("{} ms", f[4]))
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    ensure_redis();
    let requests: u64 =
        std::env::var("MESH_COMPARE_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let lag_seconds: u64 =
        std::env::var("MESH_COMPARE_LAG_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let partition_seconds: u64 =
        std::env::var("MESH_COMPARE_PARTITION_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    println!("redis-benchmark -t set -P 64 -d 100 -n {requests} -r 100000000, against each system in turn");
    let redis = run_redis(dir.path(), requests);
    let mesh_dir = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh_dir).unwrap();
    let mesh = start_mesh(&mesh_dir);
    let ours = run_mesh(&mesh, requests);
    let probe_dir = mesh.dir.clone();
    let probe = std::thread::spawn(move || disk_probe(&probe_dir, lag_seconds));
    let lags = mesh_lag(&mesh, lag_seconds);
    let (disk, stalled_us) = probe.join().expect("the disk probe finishes");
    let reference = reference_bytes(&mesh, 10);
    let cut = (partition_seconds > 0).then(|| partition(&mesh, partition_seconds));
    // A catch-up under the issue's 100k ops/s is kept for a look: the three DCs' logs outlive
    // the temporary directory.
    let kept_logs = cut.as_ref().filter(|p| p.rate_from_heal() < 100_000.0).map(|_| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("compare_redis-logs-{secs}"));
        std::fs::create_dir_all(&kept).unwrap();
        // With each DC's status and metrics as the catch-up left them: per link, the batches,
        // ops, relayed ops and retransmits that tell which link carried the backlog.
        for (name, api) in DCS.iter().zip(&mesh.apis) {
            let log = format!("{name}.log");
            std::fs::copy(mesh.dir.join(&log), kept.join(&log)).unwrap();
            std::fs::write(kept.join(format!("{name}.status.json")), http_get(*api, "/v1/status")).unwrap();
            std::fs::write(kept.join(format!("{name}.metrics.txt")), http_get(*api, "/metrics")).unwrap();
        }
        kept
    });
    drop(mesh);
    println!();
    println!("| system | acked ops/s | replicated ops/s | CPU µs per replicated op | bytes per op to each replica |");
    println!("|---|---|---|---|---|");
    for (name, r) in
        [("Redis 7, primary (AOF everysec) → 2 replicas", &redis), ("mesh, 3 DCs (fsync per ack)", &ours)]
    {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} |",
            r.acked, r.replicated, r.cpu_us_per_op, r.bytes_per_op
        );
    }
    println!(
        "| mesh / Redis | {:.2}× | {:.2}× | {:.2}× | |",
        ours.acked / redis.acked,
        ours.replicated / redis.replicated,
        ours.cpu_us_per_op / redis.cpu_us_per_op
    );
    println!();
    println!(
        "mesh replication lag at 10,000 writes/s for {lag_seconds} s (per op, origin commit → apply here):"
    );
    for (dc, p50, p99) in lags {
        println!("  {dc}: p50 {p50}, p99 {p99}");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "  the disk in the same seconds (4 KiB write + fdatasync every 10 ms, {} syncs): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {:.0} ms of the run in syncs over 20 ms",
        disk.len(),
        ms(disk.value_at_quantile(0.5)),
        ms(disk.value_at_quantile(0.99)),
        ms(disk.value_at_quantile(0.999)),
        ms(disk.max()),
        ms(stalled_us)
    );
    println!();
    println!("mesh wire bytes per op to each peer, reference records (1,000-op batches): {reference:.1}");
    if let Some(p) = cut {
        println!();
        println!(
            "partition of eu-central for {partition_seconds} s at 10,000 writes/s: {} ops behind at the heal",
            p.behind
        );
        println!(
            "  catch-up: {:.0} ops/s from the heal ({:.2} s), {:.0} ops/s from the first op applied ({:.2} s)",
            p.rate_from_heal(),
            p.heal_to_caught_up,
            p.behind as f64 / p.first_apply_to_caught_up,
            p.first_apply_to_caught_up
        );
        println!(
            "  writer (us-east) RSS: {} MiB before, {} MiB at the peak",
            p.rss_before_kib / 1024,
            p.rss_peak_kib / 1024
        );
        if let Some(kept) = kept_logs {
            println!("  the catch-up was under 100k ops/s: the DCs' logs are kept in {}", kept.display());
        }
    }
}
