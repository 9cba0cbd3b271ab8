//! The dashboards and alert rules under docs/ checked against a real Prometheus scraping a real
//! 3-DC mesh: every panel's PromQL must return at least one series, and every metric an alert
//! rule names must be exported. Needs Debian's `prometheus` (with `promtool`); `.ci/run`
//! installs it and sets `MESH_REQUIRE_PROMETHEUS=1`, so CI never skips this.

use super::*;

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    api: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping every DC's `/metrics` each second.
    fn start(binary: &Path, mesh: &Mesh) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = mesh.apis.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: [{}]\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts/mesh.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let prometheus = Prometheus { child, api, _dir: dir };
        wait_for(Duration::from_secs(30), || http(api, "GET", "/-/ready", b"").0 == 200);
        prometheus
    }

    /// Evaluates `expr` now; `Err` with Prometheus' message when it does not parse or fails.
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .get(format!("http://{}/api/v1/query", self.api))
            .query("query", expr)
            .call()
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Every PromQL expression of the dashboards, with Grafana's variables set for DC `dc`.
fn panel_queries(dc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["docs/dashboards/overview.json", "docs/dashboards/dc.json"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().replace("$dc", dc);
                out.push((format!("{file}: {}", panel["title"]), expr));
            }
        }
    }
    out
}

#[test]
fn every_dashboard_panel_and_alert_rule_queries_what_the_nodes_export() {
    let Some(binary) = installed_tool(&["prometheus"], "prometheus", "MESH_REQUIRE_PROMETHEUS") else {
        return;
    };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts/mesh.yml");
    let check = Command::new("promtool").arg("check").arg("rules").arg(&rules).output().unwrap();
    assert!(check.status.success(), "promtool: {}", String::from_utf8_lossy(&check.stdout));

    let mesh = Mesh::start(3);
    for api in &mesh.apis {
        let api = *api;
        wait_for(Duration::from_secs(30), || http(api, "GET", "/readyz", b"").0 == 200);
    }
    let prometheus = Prometheus::start(&binary, &mesh);
    // A few seconds of writes at every DC, so rates and lag histograms have samples.
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(6) {
        for (i, api) in mesh.apis.iter().enumerate() {
            write_load(*api, &format!("prom-{i}-{round}"), 10);
        }
        round += 1;
    }
    let queries = panel_queries("dc0");
    assert!(queries.len() >= 20, "{} panel queries", queries.len());
    wait_for(Duration::from_secs(30), || {
        let empty: Vec<String> = queries
            .iter()
            .filter(|(_, expr)| prometheus.query(expr).map(|series| series.is_empty()).unwrap_or(true))
            .map(|(panel, expr)| format!("{panel}: {expr}"))
            .collect();
        if !empty.is_empty() {
            eprintln!("no series yet: {empty:#?}");
        }
        empty.is_empty()
    });
    // Every expression parses (an error is not "no data"), and every metric an alert names is
    // exported (the alerts themselves fire only on trouble).
    for (panel, expr) in &queries {
        prometheus.query(expr).unwrap_or_else(|e| panic!("{panel}: {expr}: {e}"));
    }
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let mut names: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|expr| expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("mesh_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        let series = prometheus.query(name).unwrap();
        assert!(!series.is_empty(), "alert metric {name} has no series");
    }
    // The rules load into Prometheus too.
    let (_, rules_api) = http(prometheus.api, "GET", "/api/v1/rules", b"");
    assert!(rules_api.contains("MeshPeerDown") && rules_api.contains("MeshApplyFailures"), "{rules_api}");
}
