//! Loading mesh.toml for a node: the file through the `config` crate, then `MESH__…`
//! environment overrides (`MESH__REPLICATION__BATCH_SIZE=500`, `MESH__NODE__API_TOKEN=…`), then
//! the topology's validation, which names the field at fault.

use mesh_core::{builtin_resolvers, DcId, Topology, TopologyConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the configuration cannot be used. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable, malformed, or has a field of the wrong type.
    #[error("{path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// The loader's message.
        message: String,
    },
    /// The topology is invalid (the message names the field).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The problem.
        source: mesh_core::TopologyError,
    },
    /// The DC asked for is not in the topology.
    #[error("{path}: no DC {dc:?} in dcs (known: {known})")]
    UnknownDc {
        /// The file.
        path: String,
        /// The DC asked for.
        dc: String,
        /// The DCs there are.
        known: String,
    },
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The topology.
    pub topology: Arc<Topology>,
    /// The directory of mesh.toml: relative paths are relative to it.
    pub base_dir: PathBuf,
    /// The file.
    pub path: PathBuf,
}

/// Loads and validates `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let shown = path.display().to_string();
    let load_err = |e: config::ConfigError| ConfigError::Load { path: shown.clone(), message: e.to_string() };
    let settings = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
        .add_source(
            config::Environment::with_prefix("MESH").prefix_separator("__").separator("__").try_parsing(true),
        )
        .build()
        .map_err(load_err)?;
    let raw: TopologyConfig = settings.try_deserialize().map_err(load_err)?;
    let topology = Topology::new(raw, &builtin_resolvers())
        .map_err(|source| ConfigError::Invalid { path: shown.clone(), source })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Loaded { topology: Arc::new(topology), base_dir, path: path.to_path_buf() })
}

impl Loaded {
    /// The DC named `dc`, checked against the topology.
    pub fn dc(&self, dc: &str) -> Result<DcId, ConfigError> {
        let unknown = || ConfigError::UnknownDc {
            path: self.path.display().to_string(),
            dc: dc.to_owned(),
            known: self.topology.dcs.iter().map(|d| d.id.to_string()).collect::<Vec<_>>().join(", "),
        };
        let id = DcId::new(dc).map_err(|_| unknown())?;
        self.topology.dc(&id).map(|d| d.id.clone()).ok_or_else(unknown)
    }

    /// A `[node]` path for `dc`: `{dc}` replaced, relative to mesh.toml's directory.
    pub fn path_for(&self, template: &str, dc: &DcId) -> PathBuf {
        let p = PathBuf::from(template.replace("{dc}", dc.as_str()));
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}
