//! A scenario file with a mistake is refused with a message naming the field.

use mesh_sim::Scenario;

const BASE: &str = r#"
name = "t"
duration_s = 10
[topology]
dcs = [{ id = "a" }, { id = "b" }]
[topology.keyspaces.users]
strategy = "lww"
[workload]
writes_per_s = 10
keys = 5
mix = [{ keyspace = "users", weight = 1 }]
"#;

fn error(extra: &str) -> String {
    Scenario::parse("t.toml", &format!("{BASE}{extra}")).expect_err("refused").to_string()
}

#[test]
fn the_base_scenario_is_valid() {
    let s = Scenario::parse("t.toml", BASE).unwrap();
    assert_eq!(s.dcs.len(), 2);
}

#[test]
fn a_fault_naming_an_unknown_dc_is_refused() {
    let e = error("[[faults]]\nkind = \"crash\"\ndc = \"zz\"\nat_s = 1\nduration_s = 1\n");
    assert!(e.contains("faults[0].dc") && e.contains("zz"), "{e}");
}

#[test]
fn a_fault_outlasting_the_workload_is_refused() {
    let e = error("[[faults]]\nkind = \"crash\"\ndc = \"a\"\nat_s = 5\nduration_s = 6\n");
    assert!(e.contains("faults[0]") && e.contains("duration_s"), "{e}");
}

#[test]
fn an_unknown_field_is_refused() {
    let e = error("[network]\nlatency = 3\n");
    assert!(e.contains("latency"), "{e}");
}

#[test]
fn an_unknown_fault_field_is_refused() {
    let e = error("[[faults]]\nkind = \"crash\"\ndc = \"a\"\nat_s = 1\nduration_s = 1\nkeep = 2\n");
    assert!(e.contains("keep"), "{e}");
}

#[test]
fn a_bad_probability_is_refused() {
    let e = error("[network]\nloss = 1.5\n");
    assert!(e.contains("network.loss"), "{e}");
}

#[test]
fn an_invalid_topology_names_its_field() {
    let text = BASE.replace("strategy = \"lww\"", "strategy = \"nope\"");
    let e = Scenario::parse("t.toml", &text).expect_err("refused").to_string();
    assert!(e.contains("topology.keyspaces.users.strategy"), "{e}");
}
