//! Conflict-resolution strategies.
//!
//! The key state keeps every concurrent version (see [`crate::KeyState`]); a strategy decides
//! what a read returns. Because the choice is a pure function of the set of versions, every DC
//! holding the same versions answers the same.

use crate::{DcId, Dot, Key, KeyState, Keyspace, ReadResult, ValueKind, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// How a keyspace resolves concurrent writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Highest HLC wins; equal HLCs are ordered by DC id, so every DC picks the same winner.
    Lww,
    /// The write from the DC with the highest configured priority wins, then LWW.
    Priority,
    /// Every concurrent value is kept and returned; a write carrying their context resolves them.
    Siblings,
    /// A PN-counter: concurrent adds all count.
    Counter,
    /// An observed-remove set: a concurrent add wins over a remove that did not see it.
    Set,
    /// A resolver registered under this name.
    Custom(String),
}

/// Why a strategy name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrategyError {
    /// Not one of the strategy names.
    #[error("unknown strategy {0:?}; expected lww, priority, siblings, counter, set or custom:NAME")]
    Unknown(String),
    /// `custom:NAME` with a name no resolver is registered under.
    #[error("no custom resolver named {name:?} is registered (registered: {registered})")]
    UnknownResolver {
        /// The name asked for.
        name: String,
        /// The names registered, comma-separated.
        registered: String,
    },
}

impl Strategy {
    /// Parses a strategy as written in mesh.toml.
    pub fn parse(s: &str) -> Result<Self, StrategyError> {
        Ok(match s {
            "lww" => Strategy::Lww,
            "priority" => Strategy::Priority,
            "siblings" => Strategy::Siblings,
            "counter" => Strategy::Counter,
            "set" => Strategy::Set,
            _ => match s.strip_prefix("custom:") {
                Some(name) if !name.is_empty() => Strategy::Custom(name.to_string()),
                _ => return Err(StrategyError::Unknown(s.to_string())),
            },
        })
    }

    /// The value type keyspaces with this strategy hold.
    pub fn value_kind(&self) -> ValueKind {
        match self {
            Strategy::Counter => ValueKind::Counter,
            Strategy::Set => ValueKind::Set,
            _ => ValueKind::Register,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Lww => f.write_str("lww"),
            Strategy::Priority => f.write_str("priority"),
            Strategy::Siblings => f.write_str("siblings"),
            Strategy::Counter => f.write_str("counter"),
            Strategy::Set => f.write_str("set"),
            Strategy::Custom(name) => write!(f, "custom:{name}"),
        }
    }
}

/// A custom conflict resolver.
///
/// It MUST be pure: the same versions give the same answer on every DC, every time. It receives
/// the concurrent versions (tombstones included, `value == None`) sorted by HLC then dot, and
/// returns the index of the winner. It cannot create ops or values; a resolver that needs to
/// combine values belongs in a CRDT keyspace instead.
pub trait Resolver: Send + Sync {
    /// The name used in mesh.toml as `custom:NAME`.
    fn name(&self) -> &str;
    /// The index of the winning version in `versions` (never empty, sorted by HLC then dot).
    fn resolve(&self, versions: &[Version]) -> usize;

    /// Whether the winner can depend on the versions' HLCs (beyond breaking exact ties between
    /// equal values). A DC whose clock is off refuses writes to keyspaces whose resolution
    /// orders by time (DESIGN.md, "Clock skew"), since a skewed HLC would decide who wins. The
    /// default is `true`: a resolver that ignores time must say so.
    fn orders_by_time(&self) -> bool {
        true
    }
}

/// Custom resolver `first-writer-wins`: the earliest HLC wins (ties by dot). For keys such as
/// reservations where the first claim must stand.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstWriterWins;

impl Resolver for FirstWriterWins {
    fn name(&self) -> &str {
        "first-writer-wins"
    }
    fn resolve(&self, _versions: &[Version]) -> usize {
        0
    }
}

/// Custom resolver `max-value`: the greatest value in byte order wins; a tombstone loses to any
/// value; ties by HLC then dot. For monotone values such as version strings or high-water marks.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxValue;

impl Resolver for MaxValue {
    fn name(&self) -> &str {
        "max-value"
    }
    fn orders_by_time(&self) -> bool {
        // Time only picks among equal values, which read the same.
        false
    }

    fn resolve(&self, versions: &[Version]) -> usize {
        // `max_by` returns the last of equal elements, so ties go to the higher HLC and dot.
        (0..versions.len()).max_by(|&a, &b| versions[a].value.cmp(&versions[b].value)).expect("never empty")
    }
}

/// Custom resolvers by name.
#[derive(Clone, Default)]
pub struct ResolverRegistry {
    resolvers: BTreeMap<String, Arc<dyn Resolver>>,
}

impl ResolverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `resolver` under its name, replacing any resolver of that name.
    pub fn register(&mut self, resolver: Arc<dyn Resolver>) {
        self.resolvers.insert(resolver.name().to_string(), resolver);
    }

    /// The resolver registered as `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Resolver>, StrategyError> {
        self.resolvers.get(name).cloned().ok_or_else(|| StrategyError::UnknownResolver {
            name: name.to_string(),
            registered: self.resolvers.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

impl fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.resolvers.keys()).finish()
    }
}

/// The resolvers mesh ships: `first-writer-wins` and `max-value`.
pub fn builtin_resolvers() -> ResolverRegistry {
    let mut r = ResolverRegistry::new();
    r.register(Arc::new(FirstWriterWins));
    r.register(Arc::new(MaxValue));
    r
}

/// A record of one resolution of concurrent writes, for logs, metrics and the conflict API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The keyspace of the key.
    pub keyspace: Keyspace,
    /// The key.
    pub key: Key,
    /// The strategy that resolved it, as written in mesh.toml.
    pub strategy: String,
    /// The competing versions, sorted by HLC then dot (each carries its origin and HLC).
    pub versions: Vec<Version>,
    /// The winning version; `None` when the strategy keeps every version (siblings).
    pub winner: Option<Dot>,
}

/// Everything needed to resolve reads of one keyspace: its strategy, the DC priorities, and the
/// custom resolver if the strategy names one.
#[derive(Clone)]
pub struct KeyspaceRules {
    strategy: Strategy,
    priorities: Arc<BTreeMap<DcId, u32>>,
    resolver: Option<Arc<dyn Resolver>>,
}

impl fmt::Debug for KeyspaceRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyspaceRules").field("strategy", &self.strategy).finish()
    }
}

impl KeyspaceRules {
    /// Rules for `strategy`; a custom strategy's resolver is looked up in `resolvers`.
    pub fn new(
        strategy: Strategy,
        priorities: Arc<BTreeMap<DcId, u32>>,
        resolvers: &ResolverRegistry,
    ) -> Result<Self, StrategyError> {
        let resolver = match &strategy {
            Strategy::Custom(name) => Some(resolvers.get(name)?),
            _ => None,
        };
        Ok(Self { strategy, priorities, resolver })
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// Whether a register write without a client context adds a sibling instead of superseding
    /// the serving DC's versions.
    pub fn contextless_write_is_new_sibling(&self) -> bool {
        self.strategy == Strategy::Siblings
    }

    /// Whether the winner of concurrent writes can depend on their HLCs: lww, priority (ties
    /// between equal priorities), and custom resolvers that declare it
    /// ([`Resolver::orders_by_time`]). A DC with a skewed clock refuses writes to these.
    pub fn orders_by_time(&self) -> bool {
        match &self.strategy {
            Strategy::Lww | Strategy::Priority => true,
            Strategy::Custom(_) => self.resolver.as_ref().is_none_or(|r| r.orders_by_time()),
            Strategy::Siblings | Strategy::Counter | Strategy::Set => false,
        }
    }

    fn priority(&self, dc: &DcId) -> u32 {
        self.priorities.get(dc).copied().unwrap_or(0)
    }

    /// The index of the winning version among `versions`, or `None` when the strategy keeps
    /// them all (siblings) or there are none. Independent of the order of `versions`.
    pub fn winner(&self, versions: &[Version]) -> Option<usize> {
        if versions.is_empty() {
            return None;
        }
        let lww_key = |v: &Version| (v.hlc, v.dot.origin.clone(), v.dot.seq);
        match &self.strategy {
            Strategy::Lww => (0..versions.len()).max_by_key(|&i| lww_key(&versions[i])),
            Strategy::Priority => (0..versions.len())
                .max_by_key(|&i| (self.priority(&versions[i].dot.origin), lww_key(&versions[i]))),
            Strategy::Custom(_) => {
                let mut order: Vec<usize> = (0..versions.len()).collect();
                order.sort_by_key(|&i| (versions[i].hlc, versions[i].dot.clone()));
                let sorted: Vec<Version> = order.iter().map(|&i| versions[i].clone()).collect();
                let resolver = self.resolver.as_ref().expect("custom rules hold their resolver");
                let pick = resolver.resolve(&sorted);
                assert!(
                    pick < sorted.len(),
                    "resolver {} returned index {pick} of {}",
                    resolver.name(),
                    sorted.len()
                );
                Some(order[pick])
            }
            Strategy::Siblings | Strategy::Counter | Strategy::Set => None,
        }
    }

    /// The versions a read returns: the winner alone, or every version for siblings.
    pub fn choose(&self, versions: &[Version]) -> Vec<Version> {
        match self.winner(versions) {
            Some(i) => vec![versions[i].clone()],
            None => versions.to_vec(),
        }
    }

    /// Reads `state` under these rules.
    pub fn read(&self, state: &KeyState) -> ReadResult {
        state.read_with(|versions| self.choose(versions))
    }

    /// The conflict record for concurrent `versions` of a key (two or more).
    pub fn conflict(&self, keyspace: &Keyspace, key: &Key, versions: &[Version]) -> Conflict {
        assert!(versions.len() >= 2, "a conflict needs two versions");
        let winner = self.winner(versions).map(|i| versions[i].dot.clone());
        let mut versions = versions.to_vec();
        versions.sort_by_key(|v| (v.hlc, v.dot.clone()));
        Conflict {
            keyspace: keyspace.clone(),
            key: key.clone(),
            strategy: self.strategy.to_string(),
            versions,
            winner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hlc;
    use serde_bytes::ByteBuf;

    fn v(dc: &str, seq: u64, ms: u64, value: Option<&str>) -> Version {
        Version {
            dot: Dot::new(DcId::new(dc).unwrap(), seq),
            hlc: Hlc::new(ms, 0),
            value: value.map(|s| ByteBuf::from(s.as_bytes().to_vec())),
        }
    }

    fn rules(s: &str) -> KeyspaceRules {
        let prio: BTreeMap<DcId, u32> =
            [(DcId::new("a").unwrap(), 1), (DcId::new("b").unwrap(), 3), (DcId::new("c").unwrap(), 2)].into();
        KeyspaceRules::new(Strategy::parse(s).unwrap(), Arc::new(prio), &builtin_resolvers()).unwrap()
    }

    #[test]
    fn strategies_parse_as_written_in_mesh_toml() {
        for s in ["lww", "priority", "siblings", "counter", "set", "custom:max-value"] {
            assert_eq!(Strategy::parse(s).unwrap().to_string(), s);
        }
        assert!(matches!(Strategy::parse("custom:"), Err(StrategyError::Unknown(_))));
        assert!(matches!(Strategy::parse("newest"), Err(StrategyError::Unknown(_))));
        let err =
            KeyspaceRules::new(Strategy::parse("custom:nope").unwrap(), Arc::default(), &builtin_resolvers())
                .unwrap_err();
        assert!(err.to_string().contains("first-writer-wins, max-value"), "{err}");
    }

    #[test]
    fn lww_picks_the_highest_hlc_and_breaks_ties_by_dc_id() {
        let r = rules("lww");
        assert_eq!(r.winner(&[v("a", 1, 5, Some("x")), v("b", 1, 9, Some("y"))]), Some(1));
        assert_eq!(r.winner(&[v("b", 1, 5, Some("x")), v("a", 1, 5, Some("y"))]), Some(0));
        assert_eq!(r.winner(&[v("a", 1, 5, Some("y")), v("b", 1, 5, Some("x"))]), Some(1));
    }

    #[test]
    fn priority_picks_the_highest_priority_dc_before_the_latest_write() {
        let r = rules("priority");
        assert_eq!(
            r.winner(&[v("a", 1, 99, Some("x")), v("b", 1, 1, Some("y")), v("c", 1, 50, None)]),
            Some(1)
        );
    }

    #[test]
    fn custom_resolvers_see_versions_in_hlc_order() {
        let first = rules("custom:first-writer-wins");
        assert_eq!(first.winner(&[v("a", 1, 9, Some("x")), v("b", 1, 2, Some("y"))]), Some(1));
        let max = rules("custom:max-value");
        assert_eq!(
            max.winner(&[v("a", 1, 9, Some("b")), v("b", 1, 2, Some("c")), v("c", 1, 3, None)]),
            Some(1)
        );
    }

    #[test]
    fn siblings_keep_every_version() {
        let r = rules("siblings");
        let versions = [v("a", 1, 9, Some("x")), v("b", 1, 2, Some("y"))];
        assert_eq!(r.winner(&versions), None);
        assert_eq!(r.choose(&versions), versions.to_vec());
        let c = r.conflict(&Keyspace::new("k").unwrap(), &Key::new("k").unwrap(), &versions);
        assert_eq!(c.winner, None);
        assert_eq!(c.versions[0].dot.origin.as_str(), "b", "sorted by HLC");
    }
}
