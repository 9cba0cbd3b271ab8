//! The built-in dashboard page in a real headless Chromium (Debian `chromium`), driven over the
//! DevTools protocol: the page of a running 3-DC mesh draws three DCs linked healthy; a DC
//! stopped with SIGSTOP has its links drawn unhealthy within seconds. A screenshot is saved in
//! the test's output (`target/dashboard-e2e.png`). `.ci/run` installs chromium and sets
//! `MESH_REQUIRE_CHROMIUM=1`, so CI never skips this.

use super::*;
use tungstenite::Message as WsMessage;

/// A headless Chromium with one page, driven over its DevTools WebSocket; closed when dropped.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Browser.close ends Chromium with every helper process it forked (killing the main
        // process alone leaves them running); a kill only if it does not end in time.
        let close = serde_json::json!({"id": 0, "method": "Browser.close"});
        let _ = self.socket.send(WsMessage::text(close.to_string()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = free_tcp();
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=900,700",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let devtools: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut url = None;
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
        wait_for(Duration::from_secs(30), || {
            let body = agent
                .get(format!("http://{devtools}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .unwrap_or_default();
            let targets: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            url = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_owned);
            url.is_some()
        });
        let url = url.unwrap();
        let stream = TcpStream::connect(devtools).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
        Browser { child, socket, next_id: 1, _profile: profile }
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({"id": id, "method": method, "params": params});
        self.socket.send(WsMessage::text(request.to_string())).unwrap();
        loop {
            let WsMessage::Text(text) = self.socket.read().unwrap() else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; returns its value.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call("Runtime.evaluate", serde_json::json!({"expression": expression, "returnByValue": true}));
        r["result"]["value"].clone()
    }
}

/// The links the page draws: "a|b" → health.
fn links(browser: &mut Browser) -> BTreeMap<String, String> {
    let v = browser.eval(
        "JSON.stringify([...document.querySelectorAll('[data-link]')].map(e => [e.dataset.link, e.dataset.health]))",
    );
    let pairs: Vec<(String, String)> = serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap_or_default();
    pairs.into_iter().collect()
}

use std::collections::BTreeMap;

#[test]
fn the_dashboard_page_draws_the_mesh_healthy_and_a_stopped_dc_unhealthy() {
    let Some(binary) = installed_tool(&["chromium", "chromium-browser"], "chromium", "MESH_REQUIRE_CHROMIUM")
    else {
        return;
    };
    let mesh = Mesh::start(3);
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
    // The page itself needs no token.
    let (code, page) = http(mesh.apis[0], "GET", "/dashboard", b"");
    assert!(code == 200 && page.contains("<svg id=\"graph\""), "{code}");
    for i in 0..3 {
        write_load(mesh.apis[i], &format!("dash-{i}"), 20);
    }
    let mut browser = Browser::start(&binary);
    browser.call("Page.enable", serde_json::json!({}));
    let url = format!("http://{}/dashboard#token={TOKEN}", mesh.apis[0]);
    browser.call("Page.navigate", serde_json::json!({"url": url}));
    wait_for(Duration::from_secs(20), || {
        let l = links(&mut browser);
        let dcs = browser.eval("document.querySelectorAll('g[data-dc][data-state=\"up\"]').length");
        l.len() == 3 && l.values().all(|h| h == "healthy") && dcs == 3
    });
    let screenshot = browser.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
    save_png(&screenshot, "dashboard-e2e.png");

    // dc2 stops: the links to it turn unhealthy; the link between the others stays healthy.
    signal(&mesh.children[2], "STOP");
    let start = Instant::now();
    wait_for(Duration::from_secs(10), || {
        let l = links(&mut browser);
        ["dc0|dc2", "dc1|dc2"].iter().all(|k| l.get(*k).is_some_and(|h| h == "suspect" || h == "down"))
            && l.get("dc0|dc1").is_some_and(|h| h == "healthy")
    });
    eprintln!("links to the stopped DC drawn unhealthy after {:?}", start.elapsed());
    let screenshot = browser.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
    save_png(&screenshot, "dashboard-e2e-stopped.png");
    signal(&mesh.children[2], "CONT");
}

/// Writes a DevTools screenshot result to `target/NAME`.
fn save_png(result: &serde_json::Value, name: &str) {
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(result["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
