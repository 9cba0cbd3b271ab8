//! The topology schema: the shipped mesh.toml is valid and shows every strategy; bad input fails
//! with a message naming the field; the fingerprint changes with what resolution depends on and
//! only with that.

use mesh_core::topology::{Acks, AcksName, Mode, TopologyConfig};
use mesh_core::{builtin_resolvers, Keyspace, Strategy, Topology};

const MESH_TOML: &str = include_str!("../../../mesh.toml");

fn parse(text: &str) -> TopologyConfig {
    toml::from_str(text).expect("valid TOML")
}

fn topology(text: &str) -> Result<Topology, String> {
    Topology::new(parse(text), &builtin_resolvers()).map_err(|e| e.to_string())
}

#[test]
fn the_shipped_mesh_toml_is_valid_and_shows_every_strategy() {
    let t = topology(MESH_TOML).unwrap();
    let ids: Vec<&str> = t.dcs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["us-east", "us-west", "eu-central"]);
    assert!(t.dcs.iter().all(|d| d.listen.ip().is_loopback() && d.api.ip().is_loopback()));
    let strategies: Vec<String> = t.keyspaces.values().map(|k| k.rules.strategy().to_string()).collect();
    for s in ["lww", "priority", "siblings", "counter", "set", "custom:first-writer-wins", "custom:max-value"]
    {
        assert!(strategies.iter().any(|x| x == s), "mesh.toml lacks a {s} keyspace");
    }
    let reservations = t.keyspace(&Keyspace::new("reservations").unwrap()).unwrap();
    assert!(reservations.critical);
    assert!(reservations.write_once, "reservations refuse a second PUT to a taken key");
    assert_eq!(reservations.mode, Mode::Hybrid);
    assert_eq!(t.config.replication.sync_acks, Acks::Named(AcksName::Quorum));
    assert_eq!(t.dcs[0].endpoints[0].address, "127.0.0.1:7101", "endpoints default to listen");
    assert!(t.dcs.iter().all(|d| d.resp.is_some_and(|r| r.ip().is_loopback())), "every DC speaks RESP");
}

#[test]
fn the_benchmark_topology_is_valid_and_declares_redis_benchmarks_keyspaces() {
    let t = topology(include_str!("../../../benches/mesh.toml")).unwrap();
    for (name, strategy) in [("key", "lww"), ("counter", "counter")] {
        let ks = t.keyspace(&Keyspace::new(name).unwrap()).unwrap();
        assert_eq!(ks.rules.strategy().to_string(), strategy);
    }
}

fn with(replace: &str, by: &str) -> String {
    assert!(MESH_TOML.contains(replace), "mesh.toml no longer contains {replace:?}");
    MESH_TOML.replacen(replace, by, 1)
}

#[test]
fn bad_config_fails_with_a_message_naming_the_field() {
    let cases = [
        (with("id = \"us-west\"", "id = \"us-east\""), "dcs[1].id: duplicate datacenter id"),
        (with("id = \"us-west\"", "id = \"US West\""), "dcs[1].id: datacenter id"),
        (
            with("listen = \"127.0.0.1:7102\"", "listen = \"127.0.0.1:99999\""),
            "dcs[1].listen: \"127.0.0.1:99999\" is not a socket address",
        ),
        (
            with("api = \"127.0.0.1:8102\"", "api = \"127.0.0.1:7101\""),
            "dcs[1].api: 127.0.0.1:7101 is already used by dcs[0].listen",
        ),
        (
            with("resp = \"127.0.0.1:6102\"", "resp = \"127.0.0.1:8101\""),
            "dcs[1].resp: 127.0.0.1:8101 is already used by dcs[0].api",
        ),
        (
            format!("{MESH_TOML}\n[resp]\ndefault_keyspace = \"nope\"\n"),
            "resp.default_keyspace: \"nope\" is not a keyspace of this file",
        ),
        (
            format!("{MESH_TOML}\n[resp]\nmax_connections = 0\n"),
            "resp.max_connections: must be greater than 0",
        ),
        (
            format!("{MESH_TOML}\n[resp]\nmax_request_bytes = 1000\n"),
            "resp.max_request_bytes: must hold a command with the largest value",
        ),
        (with("strategy = \"lww\"", "strategy = \"newest\""), "keyspaces.users.strategy: unknown strategy"),
        (
            with("strategy = \"custom:max-value\"", "strategy = \"custom:median\""),
            "keyspaces.versions.strategy: no custom resolver named \"median\"",
        ),
        (
            with("sync_acks = \"quorum\"          #", "sync_acks = 4 #"),
            "replication.sync_acks: 4 is more than the 3 active datacenters",
        ),
        (with("batch_size = 1000", "batch_size = 0"), "replication.batch_size: must be greater than 0"),
        (
            with("compression_level = 3", "compression_level = 40"),
            "replication.compression_level: 40 is outside 1..=22",
        ),
        (with("[keyspaces.users]", "[keyspaces.Users]"), "keyspaces.Users: keyspace"),
        (
            with("strategy = \"lww\"", "strategy = \"lww\"\nsiblings_max = 3"),
            "keyspaces.users.siblings_max: only applies to siblings keyspaces",
        ),
        (
            with("strategy = \"counter\"", "strategy = \"counter\"\nwrite_once = true"),
            "keyspaces.page_views.write_once: only applies to register keyspaces",
        ),
    ];
    for (text, expected) in cases {
        let err = topology(&text).unwrap_err();
        assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
    }
}

#[test]
fn unknown_fields_are_refused_rather_than_ignored() {
    let err = toml::from_str::<TopologyConfig>(&with("batch_size = 1000", "batch_sise = 1000")).unwrap_err();
    assert!(err.to_string().contains("batch_sise"), "{err}");
}

#[test]
fn the_fingerprint_follows_strategies_priorities_and_types_only() {
    let base = topology(MESH_TOML).unwrap().fingerprint();
    assert_eq!(topology(MESH_TOML).unwrap().fingerprint(), base, "stable");
    let changed = [
        with("strategy = \"lww\"", "strategy = \"priority\""),
        with("priority = 20", "priority = 21"),
        with("[keyspaces.tags]\nstrategy = \"set\"", "[keyspaces.tags]\nstrategy = \"counter\""),
        with("[keyspaces.users]", "[keyspaces.accounts]\nstrategy = \"lww\"\n\n[keyspaces.users]"),
    ];
    for text in changed {
        assert_ne!(topology(&text).unwrap().fingerprint(), base);
    }
    let unchanged = [
        with("batch_size = 1000", "batch_size = 500"),
        with("api = \"127.0.0.1:8102\"", "api = \"127.0.0.1:9102\""),
    ];
    for text in unchanged {
        assert_eq!(topology(&text).unwrap().fingerprint(), base, "local knobs do not change resolution");
    }
    assert_eq!(Strategy::parse("counter").unwrap().value_kind(), mesh_core::ValueKind::Counter);
}

#[test]
fn an_empty_api_token_is_refused_by_name() {
    let mut config = parse(include_str!("../../../mesh.toml"));
    config.node.api_token = " ".into();
    let e = mesh_core::Topology::new(config, &mesh_core::builtin_resolvers()).unwrap_err();
    assert_eq!(e.field, "node.api_token");
}

#[test]
fn a_bad_otlp_endpoint_or_interval_is_refused_by_name() {
    for (endpoint, interval, field) in [
        ("127.0.0.1:4318", 10_000, "node.otlp_endpoint"),
        ("https://collector:4318/v1/metrics", 10_000, "node.otlp_endpoint"),
        ("http://127.0.0.1:4318/v1/metrics", 0, "node.otlp_interval_ms"),
    ] {
        let mut config = parse(include_str!("../../../mesh.toml"));
        config.node.otlp_endpoint = endpoint.into();
        config.node.otlp_interval_ms = interval;
        let e = mesh_core::Topology::new(config, &mesh_core::builtin_resolvers()).unwrap_err();
        assert_eq!(e.field, field, "{endpoint} {interval}");
    }
}

#[test]
fn a_checkpoint_below_1024_keys_or_a_cache_below_16_mib_is_refused_by_name() {
    let mut config = parse(include_str!("../../../mesh.toml"));
    config.node.checkpoint_keys = 1_023;
    let e = mesh_core::Topology::new(config.clone(), &mesh_core::builtin_resolvers()).unwrap_err();
    assert_eq!(e.field, "node.checkpoint_keys");
    config.node.checkpoint_keys = 1_024;
    mesh_core::Topology::new(config.clone(), &mesh_core::builtin_resolvers()).unwrap();
    config.node.cache_mib = 8;
    let e = mesh_core::Topology::new(config, &mesh_core::builtin_resolvers()).unwrap_err();
    assert_eq!(e.field, "node.cache_mib");
}

#[test]
fn the_node_section_does_not_change_the_fingerprint() {
    let a = parse(include_str!("../../../mesh.toml"));
    let mut b = a.clone();
    b.node.data_dir = "/elsewhere/{dc}".into();
    b.node.api_token = "another".into();
    let fp = |c| mesh_core::Topology::new(c, &mesh_core::builtin_resolvers()).unwrap().fingerprint();
    assert_eq!(fp(a), fp(b));
}
