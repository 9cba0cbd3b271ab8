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

/// Issues development certificates (`[node.tls]` paths) for every DC that lacks one, and the CA
/// if it is missing. Returns a line per thing generated.
pub fn ensure_dev_certs(loaded: &Loaded) -> Result<Vec<String>, String> {
    use crate::tls;
    let mut done = Vec::new();
    let settings = &loaded.topology.config.node.tls;
    let any = loaded.topology.dcs.first().map(|d| d.id.clone()).ok_or("no DC")?;
    let ca_cert = loaded.path_for(&settings.ca_cert, &any);
    let ca_key = loaded.path_for(&settings.ca_key, &any);
    let ca = if ca_cert.exists() && ca_key.exists() {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        tls::Pem { cert: read(&ca_cert)?, key: read(&ca_key)? }
    } else {
        let ca = tls::generate_ca().map_err(|e| e.to_string())?;
        tls::write(&ca_cert, &ca.cert, false).map_err(|e| e.to_string())?;
        tls::write(&ca_key, &ca.key, true).map_err(|e| e.to_string())?;
        done.push(format!("generated a development CA at {}", ca_cert.display()));
        ca
    };
    for dc in &loaded.topology.dcs {
        let (cert, key) = (loaded.path_for(&settings.cert, &dc.id), loaded.path_for(&settings.key, &dc.id));
        if !(cert.exists() && key.exists()) {
            let issued = tls::issue(&ca, &dc.id).map_err(|e| e.to_string())?;
            tls::write(&cert, &issued.cert, false).map_err(|e| e.to_string())?;
            tls::write(&key, &issued.key, true).map_err(|e| e.to_string())?;
            done.push(format!("issued {}'s certificate at {}", dc.id, cert.display()));
        }
    }
    Ok(done)
}
