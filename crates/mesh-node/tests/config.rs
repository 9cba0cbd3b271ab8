//! mesh.toml through the `config` crate: the repository's file loads, `MESH__…` variables
//! override it, and mistakes name their field.

use mesh_node::config;
use std::path::PathBuf;

/// Environment variables are process-wide: tests that load configuration take turns.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo_mesh_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../mesh.toml")
}

#[test]
fn the_repository_mesh_toml_loads_and_environment_variables_override_it() {
    let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let loaded = config::load(&repo_mesh_toml()).unwrap();
    assert_eq!(loaded.topology.dcs.len(), 3);
    assert_eq!(loaded.topology.config.replication.batch_size, 1000);
    // One process, one variable at a time: set, load, unset.
    std::env::set_var("MESH__REPLICATION__BATCH_SIZE", "250");
    std::env::set_var("MESH__NODE__API_TOKEN", "from-env");
    let overridden = config::load(&repo_mesh_toml());
    std::env::remove_var("MESH__REPLICATION__BATCH_SIZE");
    std::env::remove_var("MESH__NODE__API_TOKEN");
    let overridden = overridden.unwrap();
    assert_eq!(overridden.topology.config.replication.batch_size, 250);
    assert_eq!(overridden.topology.config.node.api_token, "from-env");
    let us_east = overridden.dc("us-east").unwrap();
    assert!(overridden.path_for("data/{dc}", &us_east).ends_with("data/us-east"));
}

#[test]
fn mistakes_name_their_field() {
    let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    let base = std::fs::read_to_string(repo_mesh_toml()).unwrap();
    std::fs::write(&path, base.replace("batch_size = 1000", "batch_size = 0")).unwrap();
    let e = config::load(&path).unwrap_err().to_string();
    assert!(e.contains("replication.batch_size"), "{e}");
    std::fs::write(&path, base.replace("batch_size = 1000", "batch_sise = 10")).unwrap();
    let e = config::load(&path).unwrap_err().to_string();
    assert!(e.contains("batch_sise"), "{e}");
    let loaded = config::load(&repo_mesh_toml()).unwrap();
    let e = loaded.dc("mars").unwrap_err().to_string();
    assert!(e.contains("mars") && e.contains("us-east"), "{e}");
    let e = config::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
    assert!(e.contains("missing.toml"), "{e}");
}
