//! `meshd up`, the README's first command: it says the mesh is up only once every DC answers,
//! and a DC that cannot start fails the whole command and stops the others.

use super::{free_tcp, free_udp, http, signal};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Three DCs on free loopback ports; returns their API addresses.
fn write_topology(dir: &Path) -> Vec<SocketAddr> {
    let mut toml = String::from("[replication]\nheartbeat_interval_ms = 100\n\n");
    let mut apis = Vec::new();
    for i in 0..3 {
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_udp()).parse().unwrap();
        toml += &format!("[[dcs]]\nid = \"dc{i}\"\nlisten = \"{listen}\"\napi = \"{api}\"\n\n");
        apis.push(api);
    }
    toml += "[keyspaces.users]\nstrategy = \"lww\"\n";
    std::fs::write(dir.join("mesh.toml"), toml).unwrap();
    apis
}

fn meshd_up(dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["up", "--config"])
        .arg(dir.join("mesh.toml"))
        .env("MESH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("meshd up did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn meshd_up_says_up_once_every_dc_answers_and_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let apis = write_topology(dir.path());
    let mut up = meshd_up(dir.path());
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let said_up = lines.by_ref().map_while(Result::ok).find(|l| l.ends_with("DCs up; Ctrl-C stops them all"));
    assert_eq!(said_up.as_deref(), Some("3 DCs up; Ctrl-C stops them all"));
    for api in &apis {
        assert_eq!(http(*api, "GET", "/healthz", b"").0, 200, "{api} answers once up is said");
    }
    signal(&up, "TERM");
    assert!(wait_exit(&mut up, Duration::from_secs(30)).success());
    let stopped: Vec<String> = lines.map_while(Result::ok).filter(|l| l.ends_with(" stopped")).collect();
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    for api in &apis {
        assert_eq!(http(*api, "GET", "/healthz", b"").0, 0, "{api} still answers after up stopped");
    }
}

#[test]
fn meshd_up_fails_when_a_dc_cannot_start_and_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let apis = write_topology(dir.path());
    // dc1's API port is taken: dc1 exits at once.
    let _taken = TcpListener::bind(apis[1]).unwrap();
    let mut up = meshd_up(dir.path());
    let status = wait_exit(&mut up, Duration::from_secs(60));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut up.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(!status.success(), "up must fail: {stdout}\n{stderr}");
    assert!(stderr.contains("dc1 exited"), "{stderr}");
    assert!(!stdout.contains("DCs up"), "{stdout}");
    for api in [apis[0], apis[2]] {
        assert_eq!(http(api, "GET", "/healthz", b"").0, 0, "{api} still runs after up failed");
    }
}
