//! A DC's actors under their supervisor: when the resolver, the connection pool or a link's
//! replicator actor fails, a new one takes over, and every write acknowledged before is still
//! there and replicates.

use mesh_core::{builtin_resolvers, DcId, Key, Keyspace, OpKind, ReadValue, Topology};
use mesh_engine::health::{Health, PeerStatus};
use mesh_engine::node::WriteOptions;
use mesh_engine::resolver::WriteRequest;
use mesh_node::health::HealthMsg;
use mesh_node::runtime::{check_store_identity, DcArgs, DcMsg, Supervisor};
use mesh_node::tls::{self, Material};
use mesh_wire::CodecConfig;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ONE_DC: &str = r#"
# Addresses are names here: the test binds its own endpoint on an ephemeral port.
[[dcs]]
id = "solo"
listen = "127.0.0.1:1"
api = "127.0.0.1:2"

[keyspaces.users]
strategy = "lww"
"#;

async fn live(
    rx: &tokio::sync::watch::Receiver<Option<ActorRef<DcMsg>>>,
    not: Option<&ActorRef<DcMsg>>,
) -> ActorRef<DcMsg> {
    let start = Instant::now();
    loop {
        let current = rx.borrow().clone();
        if let Some(actor) = current.filter(|a| not.is_none_or(|n| n.get_id() != a.get_id())) {
            return actor;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no live DC actor");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(actor: &ActorRef<DcMsg>, key: &str) -> bool {
    let request = WriteRequest {
        request: mesh_engine::sync::RequestId::default(),
        keyspace: Keyspace::new("users").unwrap(),
        key: Key::new(key).unwrap(),
        kind: OpKind::Put(key.as_bytes().to_vec()),
        context: None,
        idempotency_key: None,
    };
    let answer = actor
        .call(
            |reply| DcMsg::Write {
                write: request,
                options: WriteOptions::default(),
                traceparent: None,
                reply,
            },
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    matches!(answer, CallResult::Success(Ok(_)))
}

async fn read(actor: &ActorRef<DcMsg>, key: &str) -> Vec<u8> {
    let answer = actor
        .call(
            |reply| DcMsg::Read {
                keys: vec![(Keyspace::new("users").unwrap(), Key::new(key).unwrap())],
                reply,
            },
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let CallResult::Success(mut answers) = answer else { panic!("read failed") };
    let Some(Ok(Some(read))) = answers.pop() else { panic!("read failed") };
    match read.value {
        ReadValue::Register(versions) => {
            versions.first().and_then(|v| v.value.clone()).map(|b| b.to_vec()).unwrap_or_default()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dc_actor_is_restarted_from_the_store_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(Topology::new(toml::from_str(ONE_DC).unwrap(), &builtin_resolvers()).unwrap());
    let ca = tls::generate_ca().unwrap();
    let p = Path::new("mem");
    let material =
        Material::from_pem(&ca.cert, &tls::issue(&ca, &DcId::new("solo").unwrap()).unwrap(), &[p, p, p])
            .unwrap();
    let endpoint = mesh_node::transport::endpoint("127.0.0.1:0".parse().unwrap(), &material).unwrap();
    let args = DcArgs {
        local: DcId::new("solo").unwrap(),
        topology,
        store_path: dir.path().join("store.redb"),
        endpoint,
        codec: CodecConfig::default(),
        started: Instant::now(),
        metrics: mesh_node::metrics::Metrics::new("solo").unwrap(),
        adopt_topology: false,
        traces: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(None);
    let (pool_tx, _pool_rx) = tokio::sync::watch::channel(None);
    let (health_tx, _) = tokio::sync::watch::channel(None);
    let (supervisor, _) =
        ractor::Actor::spawn(None, Supervisor, (args, tx, pool_tx, health_tx)).await.unwrap();
    let first = live(&rx, None).await;
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("k{i}");
        if write(&first, &key).await {
            acked.push(key);
        }
    }
    assert_eq!(acked.len(), 50);
    first.cast(DcMsg::Fail("forced by the test".into())).unwrap();
    let second = live(&rx, Some(&first)).await;
    for key in &acked {
        assert_eq!(read(&second, key).await, key.as_bytes(), "{key} lost across the restart");
    }
    assert!(write(&second, "after").await, "the new actor takes writes");
    supervisor.stop(None);
}

#[test]
fn a_store_written_under_another_topology_is_refused_unless_adopted() {
    // Issue 9, fault 8: one op written under other rules wedged replication from that DC forever.
    let dir = tempfile::tempdir().unwrap();
    let store = mesh_store::DurableStore::open(dir.path().join("store.redb")).unwrap();
    let topology = |strategy: &str| {
        let text = ONE_DC.replace("strategy = \"lww\"", &format!("strategy = \"{strategy}\""));
        Topology::new(toml::from_str(&text).unwrap(), &builtin_resolvers()).unwrap()
    };
    let (lww, set) = (topology("lww"), topology("set"));
    assert!(!check_store_identity(&store, &lww, false).unwrap(), "a new store is not settled");
    assert!(!check_store_identity(&store, &lww, false).unwrap(), "the same topology starts again");
    let err = check_store_identity(&store, &set, false).unwrap_err();
    assert!(err.contains("another topology") && err.contains("--adopt-topology"), "{err}");
    assert!(check_store_identity(&store, &lww, false).is_ok(), "the refusal wrote nothing");
    check_store_identity(&store, &set, true).unwrap();
    assert!(check_store_identity(&store, &set, false).is_ok(), "the adopted topology is recorded");
    assert!(check_store_identity(&store, &lww, false).is_err());
}

#[test]
fn a_store_from_before_identities_that_holds_data_keeps_its_bounded_start() {
    // An upgrade must not make a DC that has run before wait for a peer that is away.
    let dir = tempfile::tempdir().unwrap();
    let store = mesh_store::DurableStore::open(dir.path().join("store.redb")).unwrap();
    let topology = Topology::new(toml::from_str(ONE_DC).unwrap(), &builtin_resolvers()).unwrap();
    mesh_store::Store::commit(
        &store,
        mesh_store::testing::put_commit(&DcId::new("solo").unwrap(), 1, "k", b"v".to_vec()),
    )
    .unwrap();
    assert!(check_store_identity(&store, &topology, false).unwrap(), "settled: it ran before");
}

/// Two DCs in this process on loopback QUIC, each under its supervisor: (supervisor, live
/// resolver, live pool, live health actor) watches per DC.
struct Pair {
    supervisors: Vec<ActorRef<()>>,
    resolvers: Vec<tokio::sync::watch::Receiver<Option<ActorRef<DcMsg>>>>,
    pools: Vec<tokio::sync::watch::Receiver<Option<ActorRef<mesh_node::pool::PoolMsg>>>>,
    healths: Vec<tokio::sync::watch::Receiver<Option<ActorRef<HealthMsg>>>>,
    _dir: tempfile::TempDir,
}

async fn start_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::generate_ca().unwrap();
    let names = ["east", "west"];
    let p = Path::new("mem");
    let mut endpoints = Vec::new();
    for name in names {
        let material =
            Material::from_pem(&ca.cert, &tls::issue(&ca, &DcId::new(name).unwrap()).unwrap(), &[p, p, p])
                .unwrap();
        endpoints.push(mesh_node::transport::endpoint("127.0.0.1:0".parse().unwrap(), &material).unwrap());
    }
    let mut text = String::from("[replication]\nheartbeat_interval_ms = 100\n");
    for (i, (name, endpoint)) in names.iter().zip(&endpoints).enumerate() {
        // The API addresses are names only: no API is served here.
        let listen = endpoint.local_addr().unwrap();
        text += &format!("[[dcs]]\nid = \"{name}\"\nlisten = \"{listen}\"\napi = \"127.0.0.1:{}\"\n", i + 1);
    }
    text += "[keyspaces.users]\nstrategy = \"lww\"\n";
    let topology = Arc::new(Topology::new(toml::from_str(&text).unwrap(), &builtin_resolvers()).unwrap());
    let mut pair = Pair {
        supervisors: Vec::new(),
        resolvers: Vec::new(),
        pools: Vec::new(),
        healths: Vec::new(),
        _dir: dir,
    };
    for (name, endpoint) in names.iter().zip(endpoints) {
        let local = DcId::new(*name).unwrap();
        let metrics = mesh_node::metrics::Metrics::new(name).unwrap();
        let args = DcArgs {
            local: local.clone(),
            topology: topology.clone(),
            store_path: pair._dir.path().join(format!("{name}.redb")),
            endpoint: endpoint.clone(),
            codec: CodecConfig::default(),
            started: Instant::now(),
            metrics: metrics.clone(),
            adopt_topology: false,
            traces: None,
        };
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (pool_tx, pool_rx) = tokio::sync::watch::channel(None);
        let (health_tx, health_rx) = tokio::sync::watch::channel(None);
        let (supervisor, _) =
            ractor::Actor::spawn(None, Supervisor, (args, tx, pool_tx, health_tx)).await.unwrap();
        let candidates = names.iter().map(|n| DcId::new(*n).unwrap()).collect();
        mesh_node::runtime::spawn_accept_loop(
            local,
            endpoint,
            candidates,
            CodecConfig::default(),
            pool_rx.clone(),
            metrics,
        );
        pair.supervisors.push(supervisor);
        pair.resolvers.push(rx);
        pair.pools.push(pool_rx);
        pair.healths.push(health_rx);
    }
    pair
}

/// Waits until `actor` reads `key` as written by [`write`].
async fn replicated(rx: &tokio::sync::watch::Receiver<Option<ActorRef<DcMsg>>>, key: &str) {
    let start = Instant::now();
    loop {
        let actor = live(rx, None).await;
        if read(&actor, key).await == key.as_bytes() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{key} never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes at east until 20 are acknowledged (the first after a restart may find the DC still
/// starting), returns their keys.
async fn acknowledged_writes(pair: &Pair, prefix: &str) -> Vec<String> {
    let mut acked = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while acked.len() < 20 {
        let key = format!("{prefix}-{i}");
        i += 1;
        if write(&live(&pair.resolvers[0], None).await, &key).await {
            acked.push(key);
        } else {
            assert!(start.elapsed() < Duration::from_secs(20), "east takes no writes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

/// How east's health actor judges west, once it has judged it at all.
async fn peer_status(pair: &Pair) -> PeerStatus {
    let start = Instant::now();
    loop {
        let resolver = live(&pair.resolvers[0], None).await;
        let status = resolver.call(DcMsg::Status, Some(Duration::from_secs(5))).await.unwrap().unwrap();
        if let Some(s) = status.peers[0].status.clone() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "east's health actor never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_actor_kind_restarts_without_losing_an_acknowledged_write() {
    use mesh_node::link::LinkMsg;
    use mesh_node::pool::PoolMsg;
    let pair = start_pair().await;
    let mut acked = acknowledged_writes(&pair, "before").await;
    for kind in ["link", "pool", "health", "resolver"] {
        match kind {
            "link" => {
                // A replicator actor fails: its link goes down and is dialed again.
                let pool = pair.pools[0].borrow().clone().expect("a pool");
                let start = Instant::now();
                let links = loop {
                    let links =
                        pool.call(PoolMsg::Links, Some(Duration::from_secs(5))).await.unwrap().unwrap();
                    if !links.is_empty() {
                        break links;
                    }
                    assert!(start.elapsed() < Duration::from_secs(20), "east never linked to west");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let failed = links[0].1.get_id();
                links[0].1.cast(LinkMsg::Fail("forced by the test".into())).unwrap();
                // A new link (and replicator actor) replaces it.
                loop {
                    let links =
                        pool.call(PoolMsg::Links, Some(Duration::from_secs(5))).await.unwrap().unwrap();
                    if links.iter().any(|(_, actor)| actor.get_id() != failed) {
                        break;
                    }
                    assert!(start.elapsed() < Duration::from_secs(20), "the link was not replaced");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "pool" => {
                let pool = pair.pools[0].borrow().clone().expect("a pool");
                pool.cast(PoolMsg::Fail("forced by the test".into())).unwrap();
                let start = Instant::now();
                while pair.pools[0].borrow().as_ref().is_none_or(|p| p.get_id() == pool.get_id()) {
                    assert!(start.elapsed() < Duration::from_secs(10), "the pool was not restarted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "health" => {
                // The failure detector restarts: it resumes from the resolver's state, keeps
                // judging the peer (heartbeats flow both ways again) and does not close the link.
                let health = pair.healths[0].borrow().clone().expect("a health actor");
                // The pool's restart above opened a new link, and a link coming up resets the
                // detector (a peer never heard from on it is down): wait for its first heartbeats.
                let start = Instant::now();
                loop {
                    let before = peer_status(&pair).await;
                    if before.health == Health::Healthy {
                        break;
                    }
                    assert!(start.elapsed() < Duration::from_secs(10), "west never healthy: {before:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                health.cast(HealthMsg::Fail("forced by the test".into())).unwrap();
                let start = Instant::now();
                while pair.healths[0].borrow().as_ref().is_none_or(|h| h.get_id() == health.get_id()) {
                    assert!(start.elapsed() < Duration::from_secs(10), "the health actor was not restarted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let restarted = Instant::now();
                loop {
                    let after = peer_status(&pair).await;
                    // A clock offset needs a round trip: the new monitor's heartbeat went out
                    // and west's, echoing it, came back to it.
                    let round_trip = after.clock_offset_ms.is_some() && !after.seen.is_empty();
                    if round_trip && after.health == Health::Healthy {
                        break;
                    }
                    assert!(restarted.elapsed() < Duration::from_secs(10), "never judged again: {after:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            _ => {
                let resolver = live(&pair.resolvers[0], None).await;
                resolver.cast(DcMsg::Fail("forced by the test".into())).unwrap();
                live(&pair.resolvers[0], Some(&resolver)).await;
            }
        }
        acked.extend(acknowledged_writes(&pair, &format!("after-{kind}")).await);
        for key in &acked {
            replicated(&pair.resolvers[0], key).await;
            replicated(&pair.resolvers[1], key).await;
        }
    }
    for supervisor in &pair.supervisors {
        supervisor.stop(None);
    }
}
