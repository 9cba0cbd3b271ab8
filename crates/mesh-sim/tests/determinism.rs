//! The same seed gives the same run in two separate processes (same trace hash and output);
//! different seeds give different runs.

use std::process::Command;

fn replay(seed: u64) -> String {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../../simulations/crash-restart.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_meshsim"))
        .args(["replay", scenario, "--seed", &seed.to_string()])
        .output()
        .expect("meshsim runs");
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn hash_line(output: &str) -> &str {
    output.lines().last().expect("a summary line")
}

#[test]
fn one_seed_replays_identically_in_two_processes() {
    let first = replay(17);
    let second = replay(17);
    assert!(hash_line(&first).contains("trace hash"), "{}", hash_line(&first));
    assert_eq!(hash_line(&first), hash_line(&second));
    assert!(first == second, "the traces of two replays of seed 17 differ");
}

#[test]
fn different_seeds_give_different_runs() {
    assert_ne!(hash_line(&replay(17)), hash_line(&replay(18)));
}
