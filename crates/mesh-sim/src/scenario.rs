//! Scenario files (`simulations/*.toml`): topology, network, disk, workload, faults, duration and
//! the bounds the checkers hold the run to. docs/simulation.md documents every field.

use mesh_core::topology::{Acks, DcConfig, KeyspaceConfig, ReplicationConfig, TopologyConfig};
use mesh_core::{builtin_resolvers, DcId, Topology};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A scenario file could not be used. Nothing ran.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown field.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the field and line).
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{path}: {field}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// One DC of the simulated topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDc {
    /// Its id.
    pub id: String,
    /// Its priority for `priority` keyspaces.
    #[serde(default)]
    pub priority: u32,
}

/// `[topology]`: DCs, replication knobs and keyspaces as in mesh.toml, without addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimTopology {
    /// The DCs.
    pub dcs: Vec<SimDc>,
    /// `[replication]` of mesh.toml.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// `[keyspaces.NAME]` of mesh.toml.
    pub keyspaces: BTreeMap<String, KeyspaceConfig>,
}

/// One directed link's own latency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLatency {
    /// Sender.
    pub from: String,
    /// Receiver.
    pub to: String,
    /// One-way latency, ms.
    pub latency_ms: u64,
    /// Jitter, ms (uniform 0..=jitter added).
    #[serde(default)]
    pub jitter_ms: u64,
}

/// `[network]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way latency of every link, ms.
    pub latency_ms: u64,
    /// Jitter added to each message, uniform in 0..=jitter_ms.
    pub jitter_ms: u64,
    /// Per-link overrides.
    pub links: Vec<LinkLatency>,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Whether messages of one link may overtake each other (else FIFO, as on a QUIC stream).
    pub reorder: bool,
    /// How long a cut link stays "connected" before both ends drop it, ms (QUIC idle timeout).
    pub idle_timeout_ms: u64,
    /// How long a dial to an unreachable DC takes to fail, ms.
    pub connect_timeout_ms: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: 10,
            jitter_ms: 2,
            links: Vec::new(),
            loss: 0.0,
            duplicate: 0.0,
            reorder: false,
            idle_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
        }
    }
}

/// `[disk]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disk {
    /// Time from a persist to its durable sync, ms (group commit: persists waiting share it).
    pub commit_latency_ms: u64,
    /// Jitter added, uniform in 0..=jitter.
    pub commit_jitter_ms: u64,
}

impl Default for Disk {
    fn default() -> Self {
        Self { commit_latency_ms: 2, commit_jitter_ms: 1 }
    }
}

/// One keyspace's share of the workload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// The keyspace.
    pub keyspace: String,
    /// Relative weight.
    pub weight: u32,
    /// Fraction of register writes that are deletes (set: removes; counters: decrements).
    #[serde(default)]
    pub delete: f64,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every key alike.
    Uniform,
    /// 80 % of writes go to 10 % of the keys (concurrent writes to the same key are common).
    Hot,
}

/// `[workload]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Client writes per second at each DC (Poisson arrivals).
    pub writes_per_s: f64,
    /// Keys per keyspace.
    pub keys: u32,
    /// How keys are chosen.
    #[serde(default = "uniform")]
    pub key_distribution: KeyDistribution,
    /// Keyspaces written.
    pub mix: Vec<Mix>,
    /// Fraction of writes sent as sync (else the keyspace's mode).
    #[serde(default)]
    pub sync_fraction: f64,
    /// Acks of those sync writes (default: the keyspace's).
    #[serde(default)]
    pub sync_acks: Option<Acks>,
    /// Fraction of siblings writes that carry the context the client just read.
    #[serde(default = "most")]
    pub read_context_fraction: f64,
    /// Writes per client request: each arrival carries 1..=`batch_max` writes (uniformly), given
    /// to the node together as the batch API does (default 1: single writes).
    #[serde(default = "one")]
    pub batch_max: u32,
}

fn one() -> u32 {
    1
}

fn uniform() -> KeyDistribution {
    KeyDistribution::Uniform
}

fn most() -> f64 {
    0.8
}

/// A fault, with when it starts and how long it lasts. (Unknown fields are refused by
/// [`FaultKind`]: serde cannot deny them on a struct that flattens another.)
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    /// What happens.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Start, seconds from the beginning.
    pub at_s: f64,
    /// Length, seconds.
    pub duration_s: f64,
}

/// The kinds of fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultKind {
    /// Splits the DCs into groups that cannot reach each other.
    Partition {
        /// The groups; DCs not listed form one more group.
        groups: Vec<Vec<String>>,
    },
    /// Cuts single links; `oneway` cuts only from → to.
    Cut {
        /// The links, as `[from, to]` pairs.
        links: Vec<[String; 2]>,
        /// Only the given direction.
        #[serde(default)]
        oneway: bool,
    },
    /// Cuts the links and heals them again every `period_ms`, for the duration.
    Flap {
        /// The links, as `[from, to]` pairs (both directions).
        links: Vec<[String; 2]>,
        /// Half of one cut-heal cycle, ms.
        period_ms: u64,
    },
    /// Kills a DC (power loss: a random prefix of its unsynced commits survives) and restarts it
    /// after the duration.
    Crash {
        /// The DC.
        dc: String,
    },
    /// Kills a DC and replaces its disk with an empty one (an operator replacing a failed
    /// disk), then restarts it after the duration.
    DiskLost {
        /// The DC.
        dc: String,
    },
    /// Moves a DC's wall clock by `offset_ms` for the duration.
    Skew {
        /// The DC.
        dc: String,
        /// Offset, ms (negative: behind).
        offset_ms: i64,
    },
}

/// `[check]`: the bounds the checkers hold the run to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Check {
    /// After each heal (the end of a fault), every DC holds every op that existed at the heal
    /// within this many seconds.
    pub convergence_bound_s: f64,
    /// While two DCs are connected through working links, an op held by one for this long is
    /// held by the other.
    pub lag_bound_s: f64,
    /// Check deliveries per op ≤ 1.1 × (N − 1) (only meaningful without faults).
    pub deliveries: bool,
    /// Check deliveries per op ≤ this bound, for a scenario with faults: after a heal each
    /// origin streams its backlog to the DC that was cut off, and a relay of the same ops by a
    /// third DC would cross it again (DESIGN.md, "Replication protocol").
    pub deliveries_max: Option<f64>,
}

impl Default for Check {
    fn default() -> Self {
        Self { convergence_bound_s: 10.0, lag_bound_s: 10.0, deliveries: false, deliveries_max: None }
    }
}

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Its name.
    pub name: String,
    /// What it proves.
    #[serde(default)]
    pub description: String,
    /// How long the workload runs, seconds.
    pub duration_s: f64,
    /// Quiet time after the workload, before the final checks, seconds.
    #[serde(default = "settle")]
    pub settle_s: f64,
    /// DCs and keyspaces.
    pub topology: SimTopology,
    /// Links.
    #[serde(default)]
    pub network: Network,
    /// Commits.
    #[serde(default)]
    pub disk: Disk,
    /// Client writes.
    pub workload: Workload,
    /// Faults.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Bounds.
    #[serde(default)]
    pub check: Check,
}

fn settle() -> f64 {
    20.0
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// As written.
    pub file: ScenarioFile,
    /// The topology every DC runs.
    pub topology: Topology,
    /// DC ids in file order.
    pub dcs: Vec<DcId>,
}

fn ms(s: f64) -> u64 {
    (s * 1_000.0).round() as u64
}

impl Scenario {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: p.clone(), source })?;
        Self::parse(&p, &text)
    }

    /// Parses and validates `text`; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text)
            .map_err(|e| ScenarioError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |field: &str, problem: String| ScenarioError::Invalid {
            path: path.into(),
            field: field.into(),
            problem,
        };
        let dcs = file
            .topology
            .dcs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // Addresses are names only: the simulator opens no socket.
                let port = 20_000 + i;
                DcConfig {
                    id: d.id.clone(),
                    region: String::new(),
                    priority: d.priority,
                    active: true,
                    listen: format!("127.0.0.1:{port}"),
                    api: format!("127.0.0.1:{}", port + 1_000),
                    resp: None,
                    endpoints: Vec::new(),
                }
            })
            .collect();
        let config = TopologyConfig {
            replication: file.topology.replication.clone(),
            dcs,
            keyspaces: file.topology.keyspaces.clone(),
            node: Default::default(),
            resp: Default::default(),
        };
        let topology = Topology::new(config, &builtin_resolvers())
            .map_err(|e| invalid(&format!("topology.{}", e.field), e.problem))?;
        let ids: Vec<DcId> = topology.dcs.iter().map(|d| d.id.clone()).collect();
        let known = |name: &str, field: &str| {
            if ids.iter().any(|d| d.as_str() == name) {
                Ok(())
            } else {
                Err(invalid(field, format!("{name:?} is not a DC of the topology")))
            }
        };
        let probability = |x: f64, field: &str| {
            if (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(invalid(field, format!("{x} is not a probability")))
            }
        };
        if file.duration_s.is_nan() || file.duration_s <= 0.0 {
            return Err(invalid("duration_s", "must be positive".into()));
        }
        if file.settle_s.is_nan() || file.settle_s < 0.0 {
            return Err(invalid("settle_s", "must not be negative".into()));
        }
        probability(file.network.loss, "network.loss")?;
        probability(file.network.duplicate, "network.duplicate")?;
        if file.network.loss >= 1.0 {
            return Err(invalid("network.loss", "a link that loses everything never converges".into()));
        }
        for (i, l) in file.network.links.iter().enumerate() {
            known(&l.from, &format!("network.links[{i}].from"))?;
            known(&l.to, &format!("network.links[{i}].to"))?;
        }
        let w = &file.workload;
        if w.writes_per_s.is_nan() || w.writes_per_s < 0.0 {
            return Err(invalid("workload.writes_per_s", "must not be negative".into()));
        }
        if w.batch_max == 0 {
            return Err(invalid("workload.batch_max", "must be at least 1".into()));
        }
        if w.keys == 0 {
            return Err(invalid("workload.keys", "must be at least 1".into()));
        }
        probability(w.sync_fraction, "workload.sync_fraction")?;
        probability(w.read_context_fraction, "workload.read_context_fraction")?;
        if w.mix.is_empty() || w.mix.iter().all(|m| m.weight == 0) {
            return Err(invalid("workload.mix", "needs a keyspace with a positive weight".into()));
        }
        for (i, m) in w.mix.iter().enumerate() {
            if !topology.keyspaces.keys().any(|k| k.as_str() == m.keyspace) {
                return Err(invalid(
                    &format!("workload.mix[{i}].keyspace"),
                    format!("no keyspace {:?}", m.keyspace),
                ));
            }
            probability(m.delete, &format!("workload.mix[{i}].delete"))?;
        }
        for (i, f) in file.faults.iter().enumerate() {
            if f.at_s.is_nan() || f.duration_s.is_nan() || f.at_s < 0.0 || f.duration_s <= 0.0 {
                return Err(invalid(&format!("faults[{i}]"), "needs at_s >= 0 and duration_s > 0".into()));
            }
            if f.at_s + f.duration_s > file.duration_s {
                let problem =
                    "must end by duration_s, so the final checks see every DC up and every link healed";
                return Err(invalid(&format!("faults[{i}]"), problem.into()));
            }
            match &f.kind {
                FaultKind::Partition { groups } => {
                    for g in groups {
                        for dc in g {
                            known(dc, &format!("faults[{i}].groups"))?;
                        }
                    }
                }
                FaultKind::Cut { links, .. } | FaultKind::Flap { links, .. } => {
                    for [a, b] in links {
                        known(a, &format!("faults[{i}].links"))?;
                        known(b, &format!("faults[{i}].links"))?;
                    }
                    if let FaultKind::Flap { period_ms: 0, .. } = f.kind {
                        return Err(invalid(&format!("faults[{i}].period_ms"), "must be positive".into()));
                    }
                }
                FaultKind::Crash { dc } | FaultKind::DiskLost { dc } | FaultKind::Skew { dc, .. } => {
                    known(dc, &format!("faults[{i}].dc"))?
                }
            }
        }
        Ok(Self { file, topology, dcs: ids })
    }

    /// The workload's length, ms.
    pub fn duration_ms(&self) -> u64 {
        ms(self.file.duration_s)
    }

    /// The whole run, workload and settling, ms.
    pub fn end_ms(&self) -> u64 {
        ms(self.file.duration_s + self.file.settle_s)
    }

    /// A fault's start and end, ms.
    pub fn fault_window_ms(&self, fault: &Fault) -> (u64, u64) {
        (ms(fault.at_s), ms(fault.at_s + fault.duration_s))
    }

    /// The convergence bound, ms.
    pub fn convergence_bound_ms(&self) -> u64 {
        ms(self.file.check.convergence_bound_s)
    }

    /// The lag bound, ms.
    pub fn lag_bound_ms(&self) -> u64 {
        ms(self.file.check.lag_bound_s)
    }
}
