//! End to end with real `meshd` processes on loopback (real QUIC, mutual TLS, real disks):
//! writes taken at every DC converge at every DC.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "e2e-token";

/// Redis clients against the RESP front end.
#[path = "e2e/resp.rs"]
mod resp;

/// The dashboards and alert rules against a real Prometheus.
#[path = "e2e/prometheus.rs"]
mod prometheus;

/// The built-in dashboard page in a real headless Chromium.
#[path = "e2e/dashboard.rs"]
mod dashboard;

/// `meshd up`: up only once every DC answers; a DC that cannot start fails the command.
#[path = "e2e/up.rs"]
mod up;

/// A mesh of `meshd run` processes, killed when dropped.
struct Mesh {
    dir: tempfile::TempDir,
    names: Vec<String>,
    children: Vec<Child>,
    apis: Vec<SocketAddr>,
    listens: Vec<SocketAddr>,
    /// Each DC's RESP (Redis protocol) address.
    resps: Vec<SocketAddr>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ports handed out in this process: tests run in parallel, and the OS may hand a port just
/// released to the next bind, so one test's port must not be given to another.
static PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

fn fresh(bind: impl Fn() -> u16) -> u16 {
    let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = bind();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

fn free_tcp() -> u16 {
    fresh(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

fn free_udp() -> u16 {
    fresh(|| UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

fn write_certs(dir: &Path, dcs: &[String]) {
    let ca = mesh_node::tls::generate_ca().unwrap();
    mesh_node::tls::write(&dir.join("certs/ca.crt"), &ca.cert, false).unwrap();
    mesh_node::tls::write(&dir.join("certs/ca.key"), &ca.key, true).unwrap();
    for dc in dcs {
        let issued = mesh_node::tls::issue(&ca, &mesh_core::DcId::new(dc.as_str()).unwrap()).unwrap();
        mesh_node::tls::write(&dir.join(format!("certs/{dc}.crt")), &issued.cert, false).unwrap();
        mesh_node::tls::write(&dir.join(format!("certs/{dc}.key")), &issued.key, true).unwrap();
    }
}

impl Mesh {
    /// Starts `n` DCs; if one cannot start (another process took a port between its release
    /// and the DC's bind), starts again on other ports.
    fn start(n: usize) -> Mesh {
        Self::start_with(n, "")
    }

    /// As [`Mesh::start`], with `node` appended to mesh.toml's `[node]` section.
    fn start_with(n: usize, node: &str) -> Mesh {
        for _ in 0..3 {
            if let Some(mesh) = Self::try_start(n, node) {
                return mesh;
            }
        }
        panic!("a mesh of {n} DCs did not start in 3 attempts");
    }

    fn try_start(n: usize, node: &str) -> Option<Mesh> {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("dc{i}")).collect();
        let mut toml = String::from(
            "[replication]\nheartbeat_interval_ms = 100\nretry_delay_ms = 50\nretry_delay_max_ms = 500\n\n",
        );
        let (mut apis, mut listens, mut resps) = (Vec::new(), Vec::new(), Vec::new());
        for (i, name) in names.iter().enumerate() {
            let api: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
            let listen: SocketAddr = format!("127.0.0.1:{}", free_udp()).parse().unwrap();
            let resp: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
            apis.push(api);
            listens.push(listen);
            resps.push(resp);
            toml += &format!(
                "[[dcs]]\nid = \"{name}\"\npriority = {}\nlisten = \"{listen}\"\napi = \"{api}\"\nresp = \"{resp}\"\n\n",
                10 * (n - i)
            );
        }
        toml += "[keyspaces.users]\nstrategy = \"lww\"\n\n[keyspaces.carts]\nstrategy = \"siblings\"\n\n";
        toml += "[keyspaces.config]\nstrategy = \"priority\"\n\n";
        // The keyspaces of redis-benchmark's key patterns (`key:…`, `counter:…`).
        toml += "[keyspaces.key]\nstrategy = \"lww\"\n\n[keyspaces.counter]\nstrategy = \"counter\"\n\n";
        toml += "[keyspaces.views]\nstrategy = \"counter\"\n\n[keyspaces.tags]\nstrategy = \"set\"\n\n";
        toml += &format!("[node]\napi_token = \"{TOKEN}\"\n{node}\n");
        std::fs::write(dir.path().join("mesh.toml"), toml).unwrap();
        write_certs(dir.path(), &names);
        let mut mesh = Mesh { dir, names, children: Vec::new(), apis, listens, resps };
        for i in 0..n {
            let child = mesh.spawn(i);
            mesh.children.push(child);
        }
        let start = Instant::now();
        for i in 0..n {
            while http(mesh.apis[i], "GET", "/healthz", b"").0 != 200 {
                let exited = mesh.children[i].try_wait().ok().flatten().is_some();
                if exited || start.elapsed() > Duration::from_secs(30) {
                    let log = std::fs::read_to_string(mesh.dir.path().join(format!("{}.log", mesh.names[i])));
                    eprintln!("{} did not start: {}", mesh.names[i], log.unwrap_or_default());
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(mesh)
    }

    fn spawn(&self, i: usize) -> Child {
        let name = &self.names[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["run", "--config"])
            .arg(self.dir.path().join("mesh.toml"))
            .args(["--dc", name])
            .env("MESH_LOG_FORMAT", "json")
            .env("MESH_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    /// kill -9 of DC `i`.
    fn kill(&mut self, i: usize) {
        self.children[i].kill().unwrap();
        self.children[i].wait().unwrap();
    }

    /// Starts DC `i` again from its data directory.
    fn restart(&mut self, i: usize) {
        self.children[i] = self.spawn(i);
        let api = self.apis[i];
        wait_for(Duration::from_secs(30), || http(api, "GET", "/healthz", b"").0 == 200);
    }
}

/// A minimal HTTP/1.1 request; returns (status, body). Status 0 when the connection failed.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_with(addr, method, path, body, "")
}

/// As [`http`], with extra header lines (each ending in `\r\n`).
fn http_with(addr: SocketAddr, method: &str, path: &str, body: &[u8], headers: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return (0, String::new());
    }
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The first of `names` on the PATH, for a test of a real third-party tool from Debian package
/// `package`; `None` (the test skips, saying so) when none is installed, unless `required`
/// (`MESH_REQUIRE_…`, set by `.ci/run`, which installs the package) is set: then the test fails.
fn installed_tool(names: &[&str], package: &str, required: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let name = names[0];
        assert!(
            std::env::var_os(required).is_none(),
            "{name} is required ({required}) but not installed: apt-get install {package}"
        );
        eprintln!("{name} is not installed (apt-get install {package}): skipped here, run by .ci/run");
    }
    found
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Headers of a sync write that waits for every DC.
const SYNC_ALL: &str = "x-mesh-mode: sync\r\nx-mesh-acks: all\r\n";

/// Writes until the DC accepts (it refuses while it starts), then returns the response body.
fn put(addr: SocketAddr, path: &str, value: &str) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = http(addr, "PUT", path, value.as_bytes());
        if status == 200 {
            return body;
        }
        assert!(status == 503 && start.elapsed() < Duration::from_secs(30), "PUT {path}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn writes_at_every_dc_converge_at_every_dc() {
    let mesh = Mesh::start(3);
    for (i, api) in mesh.apis.iter().enumerate() {
        for k in 0..10 {
            put(*api, &format!("/v1/kv/users/k{i}-{k}"), &format!("v{i}-{k}"));
        }
    }
    let start = Instant::now();
    for api in &mesh.apis {
        for i in 0..mesh.apis.len() {
            for k in 0..10 {
                let want = format!("\"value\":\"v{i}-{k}\"");
                wait_for(Duration::from_secs(20), || {
                    let (status, body) = http(*api, "GET", &format!("/v1/kv/users/k{i}-{k}"), b"");
                    status == 200 && body.contains(&want)
                });
            }
        }
    }
    eprintln!("converged {:?} after the last write", start.elapsed());
    // Status per peer: nothing left queued once converged, bytes sent, the last batch's time.
    wait_for(Duration::from_secs(10), || {
        let (status, body) = http(mesh.apis[0], "GET", "/v1/status", b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let peers = v["peers"].as_array().cloned().unwrap_or_default();
        status == 200
            && v["max_replication_lag_ms"].as_u64().is_some()
            && peers.len() == 2
            && peers.iter().all(|p| {
                p["queued_ops"] == 0
                    && p["replicated_ops"].as_u64() >= Some(10)
                    && p["bytes_wire"].as_u64() > Some(0)
                    && p["bytes_raw"].as_u64() > Some(0)
                    && p["last_sent_unix_ms"].as_u64().is_some()
                    && p["lag_alert"] == false
            })
    });
}

/// Requests a collector received: (request line and headers, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in OTLP collector: accepts HTTP requests on loopback and keeps each.
fn otlp_collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Received::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Read the head, then as many body bytes as Content-Length says.
            let (head, body_start) = loop {
                let Ok(n) = stream.read(&mut chunk) else { break (String::new(), 0) };
                if n == 0 {
                    break (String::new(), 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
                }
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < body_start + length {
                match stream.read(&mut chunk) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            sink.lock().unwrap().push((head, buf[body_start.min(buf.len())..].to_vec()));
        }
    });
    (addr, got)
}

#[test]
fn metrics_are_pushed_over_otlp_when_an_endpoint_is_configured() {
    let (collector, got) = otlp_collector();
    let node = format!("otlp_endpoint = \"http://{collector}/v1/metrics\"\notlp_interval_ms = 200");
    let mesh = Mesh::start_with(1, &node);
    put(mesh.apis[0], "/v1/kv/users/a", "1");
    wait_for(Duration::from_secs(20), || {
        got.lock().unwrap().iter().any(|(head, body)| {
            head.starts_with("POST /v1/metrics ")
                && head.to_ascii_lowercase().contains("content-type: application/x-protobuf")
                && body.windows(b"mesh_writes".len()).any(|w| w == b"mesh_writes")
        })
    });
}

#[test]
fn the_api_refuses_a_missing_token_and_bad_input_with_json_errors() {
    let mesh = Mesh::start(1);
    let api = mesh.apis[0];
    // The API answers `503 starting` until the DC actor is live (a loaded machine shows it).
    wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    let mut stream = TcpStream::connect(api).unwrap();
    stream.write_all(b"GET /v1/kv/users/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("\"code\":\"unauthorized\""), "{response}");
    let (status, body) = http(api, "PUT", "/v1/kv/nope/a", b"x");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_keyspace"), "{body}");
    let (status, body) = http(api, "PUT", "/v1/kv/users/a", &vec![b'x'; (1 << 20) + 1]);
    assert_eq!(status, 413, "{body}");
    let (status, body) = http(api, "PUT", "/v1/kv/users/a", &vec![b'x'; 3 << 20]);
    assert!(
        status == 413 && body.contains("\"code\":\"too_large\""),
        "over axum's body limit: {status} {body}"
    );
    // The batch API takes what docs/http-api.md promises: 10,000 ops of 250-byte values (3 MB)...
    let value = "v".repeat(250);
    let ops: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"op":"put","keyspace":"users","key":"big{i}","value":"{value}"}}"#))
        .collect();
    let big = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
    put(api, "/v1/kv/users/warm-up", "x");
    let (status, body) = http(api, "POST", "/v1/batch", big.as_bytes());
    assert!(
        status == 200 && body.matches("\"ok\":true").count() == 10_000,
        "{status} {}",
        &body[..200.min(body.len())]
    );
    // ...and refuses a body over its limit with a JSON error.
    let (status, body) = http(api, "POST", "/v1/batch", &vec![b' '; 65 << 20]);
    assert!(status == 413 && body.contains("\"code\":\"too_large\""), "{status} {body}");
    let (status, body) = http(api, "GET", "/v1/kv/users/a?encoding=rot13", b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_query"), "{body}");
    // Values are binary-safe: bytes that are not UTF-8 come back base64-encoded, never altered.
    put(api, "/v1/kv/users/bin", "warm-up");
    assert_eq!(http(api, "PUT", "/v1/kv/users/bin", &[0xff, 0x00, b'A']).0, 200);
    let (status, body) = http(api, "GET", "/v1/kv/users/bin", b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"encoding\":\"base64\"") && body.contains("\"value\":\"/wBB\""), "{body}");
    let batch = br#"{"ops":[{"op":"put","keyspace":"users","key":"b64","value_base64":"AAEC/w=="}]}"#;
    let (status, body) = http(api, "POST", "/v1/batch", batch);
    assert!(status == 200 && body.contains("\"ok\":true"), "{status} {body}");
    let (_, body) = http(api, "GET", "/v1/kv/users/b64?encoding=base64", b"");
    assert!(body.contains("\"value\":\"AAEC/w==\""), "{body}");
    let batch =
        br#"{"ops":[{"op":"add","keyspace":"tags","key":"bin","members":["ok"],"members_base64":["/w=="]}]}"#;
    let (status, body) = http(api, "POST", "/v1/batch", batch);
    assert!(status == 200 && body.contains("\"ok\":true"), "{status} {body}");
    let (_, body) = http(api, "GET", "/v1/kv/tags/bin", b"");
    assert!(
        body.contains("\"encoding\":\"base64\"") && body.contains("\"/w==\"") && body.contains("\"b2s=\""),
        "{body}"
    );
    put(api, "/v1/kv/users/text", "plain");
    let (_, body) = http(api, "GET", "/v1/kv/users/text", b"");
    assert!(body.contains("\"encoding\":\"utf8\"") && body.contains("\"value\":\"plain\""), "{body}");
}

/// Writes `count` keys at `api`, as fast as answers come, and returns those acknowledged (200).
/// Refusals and broken connections (the DC was killed) are not acknowledgements.
fn write_load(api: SocketAddr, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    for k in 0..count {
        let (path, value) = (format!("/v1/kv/users/{prefix}-{k}"), format!("{prefix}-value-{k}"));
        if http(api, "PUT", &path, value.as_bytes()).0 == 200 {
            acked.push((path, value));
        }
    }
    acked
}

/// Posts `batches` batches of `ops` async puts at `api`, one after another; returns how many ops
/// were acknowledged and how long it took.
fn batch_load(api: SocketAddr, prefix: &str, batches: usize, ops: usize) -> (usize, Duration) {
    let start = Instant::now();
    let mut acked = 0;
    for b in 0..batches {
        let ops: Vec<String> = (0..ops)
            .map(|i| format!(r#"{{"op":"put","keyspace":"users","key":"{prefix}-{b}-{i}","value":"v{i}"}}"#))
            .collect();
        let (status, body) =
            http(api, "POST", "/v1/batch", format!(r#"{{"ops":[{}]}}"#, ops.join(",")).as_bytes());
        if status == 200 {
            acked += body.matches("\"ok\":true").count();
        }
    }
    (acked, start.elapsed())
}

/// Waits until every DC of `mesh` reads each acknowledged `(path, value)`.
fn assert_everywhere(mesh: &Mesh, acked: &[(String, String)]) {
    for api in &mesh.apis {
        for (path, value) in acked {
            let want = format!("\"value\":\"{value}\"");
            wait_for(Duration::from_secs(30), || {
                let (status, body) = http(*api, "GET", path, b"");
                status == 200 && body.contains(&want)
            });
        }
    }
}

#[test]
fn after_a_kill_9_under_load_and_a_restart_every_acknowledged_write_is_everywhere() {
    let mut mesh = Mesh::start(3);
    for api in &mesh.apis {
        put(*api, "/v1/kv/users/warm-up", "x");
    }
    let writers: Vec<_> = mesh
        .apis
        .iter()
        .enumerate()
        .map(|(i, api)| {
            let api = *api;
            std::thread::spawn(move || write_load(api, &format!("w{i}"), 400))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    mesh.kill(1);
    std::thread::sleep(Duration::from_millis(500));
    mesh.restart(1);
    let acked: Vec<(String, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 400, "only {} writes were acknowledged", acked.len());
    assert_everywhere(&mesh, &acked);
    eprintln!("{} acknowledged writes present at all 3 DCs", acked.len());
}

#[test]
fn with_one_dc_down_async_and_quorum_writes_succeed_and_all_times_out_with_the_partial_result() {
    let mut mesh = Mesh::start(3);
    // Every DC up and linked: a sync write to all of them succeeds.
    let all = SYNC_ALL;
    wait_for(Duration::from_secs(30), || {
        http_with(mesh.apis[0], "PUT", "/v1/kv/users/before", b"v", all).0 == 200
    });
    // Async writes through the batch API, first with every DC up, then with one down: the two
    // left accept every write, and at about the same rate (the dead peer is not waited for).
    let (acked_up, up) = batch_load(mesh.apis[0], "up", 10, 500);
    assert_eq!(acked_up, 5_000);
    mesh.kill(2);
    let (acked_down, down) = batch_load(mesh.apis[0], "down", 10, 500);
    assert_eq!(acked_down, 5_000, "async writes were refused with a DC down");
    let rate = |d: Duration| 5_000.0 / d.as_secs_f64();
    eprintln!(
        "async batch writes: {:.0} ops/s with every DC up, {:.0} ops/s with one down",
        rate(up),
        rate(down)
    );
    // Generous (a loaded 2-core machine varies): a rate that collapsed would be far below this.
    assert!(down < up * 3 + Duration::from_secs(2), "with a DC down: {down:?} against {up:?}");
    let acked = write_load(mesh.apis[0], "async", 100).len() + write_load(mesh.apis[1], "async-b", 100).len();
    assert_eq!(acked, 200, "single async writes were refused with a DC down");
    let (status, body) = http_with(
        mesh.apis[0],
        "PUT",
        "/v1/kv/users/q",
        b"v",
        "x-mesh-mode: sync\r\nx-mesh-acks: quorum\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_with(mesh.apis[0], "PUT", "/v1/kv/users/a", b"v", all);
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("\"code\":\"sync_timeout\"") && body.contains("\"committed_locally\":true"),
        "{body}"
    );
    assert!(body.contains("\"required\":3"), "{body}");
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Conflict records DC `api` emitted for `strategy`, from /v1/status.
fn conflicts(api: SocketAddr, strategy: &str) -> u64 {
    let (_, body) = http(api, "GET", "/v1/status", b"");
    let needle = format!("\"{strategy}\":");
    body.split_once(&needle)
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn concurrent_writes_forced_by_pausing_a_dc_resolve_identically_everywhere() {
    let mesh = Mesh::start(3);
    for api in &mesh.apis {
        put(*api, "/v1/kv/users/warm-up", "x");
    }
    let (a, b) = (mesh.apis[0], mesh.apis[1]);
    wait_for(Duration::from_secs(20), || {
        let reads: Vec<String> =
            mesh.apis.iter().map(|api| http(*api, "GET", "/v1/kv/users/warm-up", b"").1).collect();
        reads.iter().all(|r| *r == reads[0])
    });
    for (keyspace, strategy) in [("users", "lww"), ("config", "priority"), ("carts", "siblings")] {
        let before: u64 = mesh.apis.iter().map(|api| conflicts(*api, strategy)).sum();
        let mut keys = Vec::new();
        for round in 0..20 {
            let path = format!("/v1/kv/{keyspace}/k{round}");
            // dc1 is paused: its client's write waits in its socket while dc0 takes a write to the
            // same key and sends it on; resumed, dc1 names its write without having seen dc0's.
            signal(&mesh.children[1], "STOP");
            let paused = {
                let path = path.clone();
                std::thread::spawn(move || http(b, "PUT", &path, b"from-dc1"))
            };
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(http(a, "PUT", &path, b"from-dc0").0, 200);
            std::thread::sleep(Duration::from_millis(20));
            signal(&mesh.children[1], "CONT");
            assert_eq!(paused.join().unwrap().0, 200);
            keys.push(path);
            if mesh.apis.iter().map(|api| conflicts(*api, strategy)).sum::<u64>() > before {
                break;
            }
        }
        let total = mesh.apis.iter().map(|api| conflicts(*api, strategy)).sum::<u64>() - before;
        assert!(total > 0, "no {strategy} conflict record after {} rounds", keys.len());
        // Every DC ends with the same resolution (values and context) for every key.
        for path in &keys {
            wait_for(Duration::from_secs(20), || {
                let reads: Vec<(u16, String)> =
                    mesh.apis.iter().map(|api| http(*api, "GET", path, b"")).collect();
                reads.iter().all(|r| r.0 == 200 && r.1 == reads[0].1) && reads[0].1.contains("\"dots\"")
            });
        }
        if strategy == "siblings" {
            // The concurrent writes are kept side by side.
            let both = keys.iter().any(|path| {
                let (_, body) = http(a, "GET", path, b"");
                body.contains("from-dc0") && body.contains("from-dc1")
            });
            assert!(both, "no siblings key holds both concurrent writes");
        }
        eprintln!("{strategy}: {total} conflict records over {} keys", keys.len());
        // The audit log names the competing versions and the winner, at some DC.
        let records: Vec<serde_json::Value> = mesh
            .apis
            .iter()
            .flat_map(|api| {
                let (code, body) =
                    http(*api, "GET", &format!("/v1/conflicts?keyspace={keyspace}&limit=50"), b"");
                assert_eq!(code, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                v["conflicts"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        let record = records.iter().find(|r| r["strategy"] == strategy).expect("a record in /v1/conflicts");
        assert!(record["versions"].as_array().unwrap().len() >= 2, "{record}");
        assert_eq!(record["winner"].is_null(), strategy == "siblings", "{record}");
    }
    let (code, body) = http(mesh.apis[0], "GET", "/v1/conflicts?limit=0", b"");
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(mesh.apis[0], "GET", "/v1/conflicts?keyspace=nosuch", b"");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown_keyspace"), "{body}");
}

/// Dials `target` as a peer with `cert` (trusting the mesh CA at `ca`) and sends a Hello for
/// `claimed` with `fingerprint`; returns once the link ends (or after a few seconds).
fn rogue_peer(
    target: SocketAddr,
    ca: &str,
    cert: &mesh_node::tls::Pem,
    claimed: &str,
    dial_as: &str,
    fingerprint: u64,
) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let p = Path::new("rogue");
        let material = mesh_node::tls::Material::from_pem(ca, cert, &[p, p, p]).unwrap();
        let endpoint = mesh_node::transport::endpoint("127.0.0.1:0".parse().unwrap(), &material).unwrap();
        let codec = mesh_wire::CodecConfig::default();
        let target_dc = mesh_core::DcId::new(dial_as).unwrap();
        let attempt = async {
            let mut link = mesh_node::transport::dial(&endpoint, target, &target_dc, &codec).await.ok()?;
            let hello = mesh_wire::Hello {
                dc: mesh_core::DcId::new(claimed).unwrap(),
                protocol_version: mesh_wire::PROTOCOL_VERSION,
                topology_fingerprint: fingerprint,
                seen: mesh_core::VersionVector::new(),
            };
            link.writer.send(&mesh_wire::Message::Hello(hello)).await.ok()?;
            while let Ok(Some(_)) = link.reader.next().await {}
            Some(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), attempt).await;
    });
}

/// The value of `mesh_links_refused_total` for `reason` in DC `api`'s /metrics.
fn refused(api: SocketAddr, reason: &str) -> u64 {
    let (_, body) = http(api, "GET", "/metrics", b"");
    body.lines()
        .filter(|l| l.starts_with("mesh_links_refused_total{") && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

#[test]
fn peers_with_another_ca_another_identity_or_another_topology_are_refused_and_counted() {
    let mut mesh = Mesh::start(2);
    let dir = mesh.dir.path().to_path_buf();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = mesh_node::tls::Pem { cert: read("certs/ca.crt"), key: read("certs/ca.key") };
    // The real fingerprint, from the mesh's own file.
    let topology = mesh_node::config::load(&dir.join("mesh.toml")).unwrap().topology;
    let fingerprint = topology.fingerprint();
    let target = mesh.listens[0];
    // While the genuine dc1 is linked, another link proving dc1 is a duplicate: refused.
    put(mesh.apis[1], "/v1/kv/users/before", "linked");
    let dc1 = mesh_node::tls::issue(&ca, &mesh_core::DcId::new("dc1").unwrap()).unwrap();
    rogue_peer(target, &ca.cert, &dc1, "dc1", "dc0", fingerprint);
    wait_for(Duration::from_secs(10), || refused(mesh.apis[0], "duplicate") >= 1);
    // With dc1 gone, a link proving dc1 replaces its dead one and its Hello is checked.
    mesh.kill(1);
    std::thread::sleep(Duration::from_millis(500));

    // A certificate from another CA.
    let rogue_ca = mesh_node::tls::generate_ca().unwrap();
    let rogue = mesh_node::tls::issue(&rogue_ca, &mesh_core::DcId::new("dc1").unwrap()).unwrap();
    rogue_peer(target, &ca.cert, &rogue, "dc1", "dc0", fingerprint);
    // The mesh CA's certificate for dc1, with a Hello claiming to be another DC.
    rogue_peer(target, &ca.cert, &dc1, "dc0", "dc0", fingerprint);
    // The right identity with a different topology.
    rogue_peer(target, &ca.cert, &dc1, "dc1", "dc0", fingerprint ^ 1);

    for reason in ["tls", "identity", "fingerprint"] {
        let start = Instant::now();
        while refused(mesh.apis[0], reason) < 1 {
            let metrics = http(mesh.apis[0], "GET", "/metrics", b"").1;
            let log = std::fs::read_to_string(dir.join("dc0.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no refusal counted for {reason}:\n{metrics}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The genuine dc1, back, links again.
    mesh.restart(1);
    put(mesh.apis[1], "/v1/kv/users/after", "still-replicating");
    wait_for(Duration::from_secs(20), || {
        http(mesh.apis[0], "GET", "/v1/kv/users/after", b"").1.contains("still-replicating")
    });
}

#[test]
fn counters_sets_and_batches_replicate_and_a_bad_batch_writes_nothing() {
    let mesh = Mesh::start(2);
    let (a, b) = (mesh.apis[0], mesh.apis[1]);
    put(a, "/v1/kv/users/warm-up", "x");
    // Counter adds at both DCs sum everywhere.
    for api in [a, b] {
        for _ in 0..5 {
            let (status, body) = http(api, "POST", "/v1/counter/views/home", br#"{"by": 2}"#);
            assert_eq!(status, 200, "{body}");
        }
    }
    let (status, body) = http(a, "POST", "/v1/set/tags/t", br#"{"add": ["red", "blue"]}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(b, "POST", "/v1/set/tags/t", br#"{"remove": ["red"], "add": ["x"]}"#);
    assert_eq!(status, 400, "{body}");
    // A batch: 200 puts, a counter add and a set add, applied in order.
    let mut ops: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"op": "put", "keyspace": "users", "key": "b{i}", "value": "v{i}"}}"#))
        .collect();
    ops.push(r#"{"op": "incr", "keyspace": "views", "key": "home", "by": 1}"#.into());
    ops.push(r#"{"op": "add", "keyspace": "tags", "key": "t", "members": ["green"]}"#.into());
    ops.push(r#"{"op": "put", "keyspace": "users", "key": "b0", "value": "last"}"#.into());
    let body = format!(r#"{{"ops": [{}]}}"#, ops.join(","));
    let (status, answer) = http(a, "POST", "/v1/batch", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.matches("\"ok\":true").count(), 203, "{answer}");
    // A batch with one bad op is refused whole.
    let bad = r#"{"ops": [{"op": "put", "keyspace": "users", "key": "never", "value": "v"}, {"op": "incr", "keyspace": "users", "key": "k", "by": 1}]}"#;
    let (status, answer) = http(a, "POST", "/v1/batch", bad.as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("ops[1]") && answer.contains("wrong_type"), "{answer}");
    assert_eq!(http(a, "GET", "/v1/kv/users/never", b"").0, 404, "a refused batch wrote an op");
    // Everything reaches the other DC.
    wait_for(Duration::from_secs(20), || http(b, "GET", "/v1/kv/views/home", b"").1.contains("\"value\":21"));
    wait_for(Duration::from_secs(20), || {
        let body = http(b, "GET", "/v1/kv/tags/t", b"").1;
        body.contains("blue") && body.contains("green") && body.contains("red")
    });
    wait_for(Duration::from_secs(20), || {
        http(b, "GET", "/v1/kv/users/b0", b"").1.contains("\"value\":\"last\"")
    });
    wait_for(Duration::from_secs(20), || http(b, "GET", "/v1/kv/users/b199", b"").1.contains("v199"));
}

#[test]
fn meshctl_writes_at_one_dc_and_reads_at_another() {
    let mesh = Mesh::start(2);
    put(mesh.apis[0], "/v1/kv/users/warm-up", "x");
    let config = mesh.dir.path().join("mesh.toml");
    let meshctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) =
        meshctl(&["--dc", "dc0", "put", "users", "from cli", "hello", "--mode", "sync", "--acks", "all"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = meshctl(&["--dc", "dc1", "get", "users", "from cli"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("hello"), "{out}");
    let (code, out) = meshctl(&["--dc", "dc1", "get", "nope", "k"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unknown_keyspace"), "{out}");
    let (code, out) = meshctl(&["topology-check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("fingerprint"), "{out}");
    // Sets, and the conflict audit log (empty here).
    assert_eq!(meshctl(&["--dc", "dc0", "sadd", "tags", "t1", "a", "b", "c"]).0, Some(0));
    assert_eq!(meshctl(&["--dc", "dc0", "srem", "tags", "t1", "b"]).0, Some(0));
    let (code, out) = meshctl(&["--dc", "dc0", "smembers", "tags", "t1"]);
    assert_eq!((code, out.as_str()), (Some(0), "a\nc\n"));
    let (code, out) = meshctl(&["--dc", "dc0", "conflicts", "--keyspace", "users"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
}

/// `/v1/status` of the DC at `api`, as JSON.
fn status_of(api: SocketAddr) -> serde_json::Value {
    let (status, body) = http(api, "GET", "/v1/status", b"");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_dc_restarted_from_an_empty_data_directory_under_load_ends_with_every_acknowledged_write() {
    // Issue 9, fault 1: a DC on a new disk named again seqs its peers held; its new writes were
    // ignored and the DCs diverged while every status said converged.
    let mut mesh = Mesh::start(3);
    for api in &mesh.apis {
        put(*api, "/v1/kv/users/warm-up", "x");
    }
    // dc1 writes, and everything it acknowledged reaches its peers before its disk is lost (an
    // async write only dc1 held would be lost with the disk, by design).
    let before = write_load(mesh.apis[1], "w1-before", 200);
    wait_for(Duration::from_secs(30), || {
        status_of(mesh.apis[1])["peers"].as_array().unwrap().iter().all(|p| p["queued_ops"] == 0)
    });
    // dc0 and dc2 write throughout; dc1 loses its disk meanwhile and restarts empty.
    let writers: Vec<_> = [0, 2]
        .into_iter()
        .map(|i| {
            let api = mesh.apis[i];
            std::thread::spawn(move || write_load(api, &format!("w{i}"), 600))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    mesh.kill(1);
    let data = mesh.dir.path().join("data");
    std::fs::rename(data.join("dc1"), data.join("dc1-lost-disk")).unwrap();
    mesh.restart(1);
    // It names no seq before its peers answered: its first write after the restart continues
    // after what they hold of it.
    let first = put(mesh.apis[1], "/v1/kv/users/w1-after-0", "w1-after-value-0");
    let dot: u64 =
        first.split("\"dot\":\"dc1:").nth(1).and_then(|s| s.split('"').next()).unwrap().parse().unwrap();
    assert!(dot > 200, "dc1 reused seq {dot} after losing its disk: {first}");
    let mut after = write_load(mesh.apis[1], "w1-after", 200);
    after.push(("/v1/kv/users/w1-after-0".into(), "w1-after-value-0".into()));
    let mut acked: Vec<(String, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    acked.extend(before);
    acked.extend(after);
    assert_everywhere(&mesh, &acked);
    // Identical states: every DC holds the same vector, and the peers saw dc1 regress.
    wait_for(Duration::from_secs(30), || {
        let seen: Vec<serde_json::Value> = mesh.apis.iter().map(|a| status_of(*a)["seen"].clone()).collect();
        seen.iter().all(|s| *s == seen[0])
    });
    // The peer that dc1 said Hello to first saw it come back with less than it had acknowledged
    // (the other may have heard a Hello already refilled through the first).
    let regressed = [0, 2].iter().any(|&i| {
        http(mesh.apis[i], "GET", "/metrics", b"").1.contains("mesh_peer_regressions_total{peer=\"dc1\"")
    });
    assert!(regressed, "no peer counted dc1's regression");
    eprintln!("{} acknowledged writes present at all 3 DCs after dc1 lost its disk", acked.len());
}

#[test]
fn a_dc_killed_and_restarted_at_once_has_its_links_back_within_heartbeats() {
    // Issue 9, fault 2: the peers held the dead connection for 30 s (quinn's default idle
    // timeout), and only the lower DC of a pair dialed, so a sync write with acks=all failed.
    let mut mesh = Mesh::start(3);
    let all = SYNC_ALL;
    wait_for(Duration::from_secs(30), || {
        http_with(mesh.apis[2], "PUT", "/v1/kv/users/k", b"v", all).0 == 200
    });
    for victim in [2, 0] {
        mesh.kill(victim);
        let start = Instant::now();
        mesh.restart(victim);
        let restarted = start.elapsed();
        let mut attempts = 0;
        loop {
            attempts += 1;
            // The DC that restarted and a peer both take a sync write to every DC.
            let ok = [victim, 1]
                .iter()
                .all(|&i| http_with(mesh.apis[i], "PUT", "/v1/kv/users/k", b"v", all).0 == 200);
            if ok {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no acks=all write succeeded in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let linked = start.elapsed();
        assert_eq!(http(mesh.apis[victim], "GET", "/readyz", b"").0, 200, "a DC taking writes is ready");
        eprintln!(
            "dc{victim}: process serving after {restarted:?}, acks=all writes at it and at dc1 after {linked:?} ({attempts} tries; heartbeat 100 ms)"
        );
        // The issue's bound is the restart plus 3 heartbeats (300 ms); allow for a loaded CI
        // machine, still far below the 30 s idle timeout this replaces.
        assert!(linked < restarted + Duration::from_secs(3), "links back only after {linked:?}");
    }
}

/// The JSON log events DC `i` wrote so far (its stderr).
fn log_events(mesh: &Mesh, i: usize) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(mesh.dir.path().join(format!("{}.log", mesh.names[i]))).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn has_event(events: &[serde_json::Value], message: &str, field: (&str, &str)) -> bool {
    events.iter().any(|e| e["message"] == message && e[field.0] == field.1)
}

#[test]
fn the_log_is_json_events_an_operator_can_follow_start_links_and_peer_health() {
    let mut mesh = Mesh::start(3);
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
    let events = log_events(&mesh, 0);
    let started = events.iter().find(|e| e["message"] == "meshd started").expect("a start event");
    assert_eq!(started["dc"], "dc0");
    assert!(started["keyspaces"].as_str().unwrap().contains("users=lww"), "{started}");
    assert!(has_event(&events, "link up", ("peer", "dc1")));
    assert!(has_event(&events, "accepting writes", ("dc", "dc0")));
    // Once dc2's heartbeats made it healthy (the first verdict, down until a heartbeat, is not
    // logged), a kill: the failure detector's verdicts are logged, and the link's end with its
    // reason: closed by this DC when the detector judged the peer down, or ended by QUIC's idle
    // timeout, whichever came first.
    let health_of = |events: &[serde_json::Value], h: &str| {
        events.iter().any(|e| e["message"] == "peer health" && e["peer"] == "dc2" && e["health"] == h)
    };
    wait_for(Duration::from_secs(10), || health_of(&log_events(&mesh, 0), "Healthy"));
    mesh.kill(2);
    wait_for(Duration::from_secs(20), || {
        let events = log_events(&mesh, 0);
        let ended = events.iter().any(|e| {
            (e["message"] == "link down" || e["message"] == "link closed")
                && e["peer"] == "dc2"
                && e["reason"].is_string()
        });
        ended && health_of(&events, "Suspect") && health_of(&events, "Down")
    });
    // Nothing is logged per op.
    let before = log_events(&mesh, 0).len();
    write_load(mesh.apis[0], "quiet", 200);
    assert!(log_events(&mesh, 0).len() < before + 20, "writes filled the log");
}

#[test]
fn every_metric_docs_observability_lists_is_exported() {
    let mesh = Mesh::start(2);
    wait_for(Duration::from_secs(30), || http(mesh.apis[0], "GET", "/readyz", b"").0 == 200);
    // Writes at both DCs, so each has a peer's ops to measure lag on.
    write_load(mesh.apis[0], "metrics", 20);
    write_load(mesh.apis[1], "metrics-1", 20);
    let doc = include_str!("../docs/observability.md");
    // The names in the first column of the metrics table.
    let names: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| `mesh_"))
        .flat_map(|l| l.split('|').nth(1).unwrap_or("").split(',').map(|n| n.trim().trim_matches('`')))
        .collect();
    assert!(names.len() >= 25, "the table lists {} metrics", names.len());
    wait_for(Duration::from_secs(10), || {
        let (_, text) = http(mesh.apis[0], "GET", "/metrics", b"");
        let missing: Vec<&&str> = names
            .iter()
            .filter(|n| {
                !text
                    .lines()
                    .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n}_count{{")))
            })
            .collect();
        if !missing.is_empty() {
            eprintln!("not exported yet: {missing:?}");
        }
        missing.is_empty() && text.contains("target_info{") && text.contains("service_name=\"meshd\"")
    });
}

#[test]
fn the_backlog_of_a_stopped_peer_names_its_ops_keyspaces_and_first_keys() {
    let mut mesh = Mesh::start(2);
    put(mesh.apis[0], "/v1/kv/users/warm-up", "x");
    mesh.kill(1);
    write_load(mesh.apis[0], "behind", 30);
    for i in 0..5 {
        assert_eq!(http(mesh.apis[0], "POST", &format!("/v1/set/tags/t{i}"), br#"{"add": ["m"]}"#).0, 200);
    }
    let (code, body) = http(mesh.apis[0], "GET", "/v1/peers/dc1/backlog?limit=1000", b"");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["ops"].as_u64().unwrap() >= 35, "{v}");
    assert_eq!(v["keyspaces"]["tags"]["ops"], 5, "{v}");
    assert!(v["keyspaces"]["users"]["ops"].as_u64().unwrap() >= 30, "{v}");
    assert!(v["first_keys"].as_array().unwrap().iter().any(|k| k["key"] == "behind-0"), "{v}");
    assert_eq!(http(mesh.apis[0], "GET", "/v1/peers/dc9/backlog", b"").0, 404);
    assert_eq!(http(mesh.apis[0], "GET", "/v1/peers/dc1/backlog?limit=0", b"").0, 400);
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--config")
        .arg(mesh.dir.path().join("mesh.toml"))
        .args(["--dc", "dc0", "backlog", "dc1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("tags: 5 ops"), "{text}");
}

#[test]
fn one_traced_put_gives_spans_from_all_three_dcs_in_one_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let (collector, got) = otlp_collector();
    let node = format!("otlp_traces_endpoint = \"http://{collector}/v1/traces\"\ntrace_sampling = 1.0");
    let mesh = Mesh::start_with(3, &node);
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
    // The client's own trace: the write's spans join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let headers = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n");
    assert_eq!(http_with(mesh.apis[0], "PUT", "/v1/kv/users/traced", b"v", &headers).0, 200);
    // (dc, span name) of every span received in that trace.
    let spans_of_trace = || -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (head, body) in got.lock().unwrap().iter() {
            if !head.contains("/v1/traces") {
                continue;
            }
            let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
            for resource in request.resource_spans {
                let dc = resource
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|a| a.key == "mesh.dc")
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                        if id == trace_id {
                            out.push((dc.clone(), span.name.clone()));
                        }
                    }
                }
            }
        }
        out
    };
    wait_for(Duration::from_secs(15), || {
        let spans = spans_of_trace();
        ["dc0", "dc1", "dc2"].iter().all(|dc| spans.iter().any(|(d, _)| d.contains(dc)))
    });
    let spans = spans_of_trace();
    assert!(spans.iter().any(|(dc, name)| dc.contains("dc0") && name == "mesh.write"), "{spans:?}");
    for dc in ["dc1", "dc2"] {
        assert!(spans.iter().any(|(d, name)| d.contains(dc) && name == "mesh.apply"), "{spans:?}");
    }
}

#[test]
fn meshctl_watch_shows_every_dc_and_its_peers_live_in_a_terminal() {
    let Some(_) = installed_tool(&["tmux"], "tmux", "MESH_REQUIRE_TMUX") else { return };
    let mesh = Mesh::start(2);
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
    let session = format!("mesh-watch-{}", std::process::id());
    let command = format!(
        "{} --config {} --dc dc0 watch",
        env!("CARGO_BIN_EXE_meshctl"),
        mesh.dir.path().join("mesh.toml").display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    assert!(tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "30", &command]).status.success());
    // The session goes away however the test ends.
    struct Session(String);
    impl Drop for Session {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
        }
    }
    let _cleanup = Session(session.clone());
    let capture =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    wait_for(Duration::from_secs(15), || {
        let screen = capture();
        screen.contains("dc0  ready true") && screen.contains("dc1  ready true") && screen.contains("healthy")
    });
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for(Duration::from_secs(5), || !tmux(&["has-session", "-t", &session]).status.success());
}
