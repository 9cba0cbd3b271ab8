//! The DC actor under its supervisor: when it fails, a new one starts from the store, and every
//! write acknowledged before is still there.

use mesh_core::{builtin_resolvers, DcId, Key, Keyspace, OpKind, ReadValue, Topology};
use mesh_engine::node::WriteOptions;
use mesh_engine::resolver::WriteRequest;
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
    let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, (args, tx)).await.unwrap();
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
