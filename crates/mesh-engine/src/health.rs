//! Health monitor: heartbeats, phi-accrual failure detection, lag and clock offset per peer.
//!
//! A machine of its own beside [`crate::node::Node`], so a runtime can run it apart from the
//! commit path (meshd runs it as the health actor; the simulator steps it beside each node).
//! The node tells it what it learns as [`crate::node::Effect::Health`] inputs
//! ([`HealthMonitor::handle`]); it judges peers, builds the heartbeats itself and hands back
//! [`HealthOutput`]s ([`HealthMonitor::poll_output`]): heartbeats to send, and verdicts the node
//! takes with [`crate::node::Node::handle_health`].
//!
//! Call order: [`HealthMonitor::handle_timeout`] whenever [`HealthMonitor::poll_timeout`] is
//! due (it sends a heartbeat on every open link and re-judges every peer), and after it and
//! after every [`HealthMonitor::handle`] drain [`HealthMonitor::poll_output`]. Read
//! [`HealthMonitor::status`] for `/v1/status`.
//!
//! The failure detector is phi accrual (Hayashibara et al.): from the recent heartbeat
//! inter-arrival times it estimates how unlikely the current silence is, as
//! `phi = -log10(P(silence at least this long))`; phi ≥ `phi_suspect` makes a peer suspect and
//! phi ≥ `phi_down` down. It adapts to each link's own jitter instead of one fixed timeout.

use crate::time::{MonoMs, WallMs};
use mesh_core::{DcId, VersionVector};
use mesh_wire::{Heartbeat, HeartbeatEcho};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tuning of a [`HealthMonitor`].
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// How often heartbeats are sent, in ms.
    pub heartbeat_interval_ms: u64,
    /// Phi at which a peer becomes suspect (5: one wrong suspicion in 100,000 judgements).
    pub phi_suspect: f64,
    /// Phi at which a peer is down.
    pub phi_down: f64,
    /// Inter-arrival samples kept per peer.
    pub samples_max: usize,
    /// Floor of the estimated standard deviation, in ms, so a very regular link does not turn a
    /// few ms of delay into a suspicion.
    pub std_dev_min_ms: f64,
    /// Silence tolerated on top of the mean interval, in ms (GC pauses, a busy peer).
    pub acceptable_pause_ms: u64,
    /// Largest clock offset tolerated, in ms (`max_clock_skew_ms`).
    pub max_clock_skew_ms: u64,
    /// Samples of this DC's applied vector kept to measure lag in time.
    pub lag_samples_max: usize,
}

impl HealthConfig {
    /// Defaults for a heartbeat period and a skew bound from mesh.toml.
    pub fn new(heartbeat_interval_ms: u64, max_clock_skew_ms: u64) -> Self {
        Self {
            heartbeat_interval_ms,
            phi_suspect: 5.0,
            phi_down: 12.0,
            samples_max: 200,
            // With the floor at one interval and one interval of pause, a peer that goes silent
            // is suspect after about 6 intervals and down after about 8 (phi 5 and 12), however
            // regular its link was: sharp enough to notice, slow enough not to flap.
            std_dev_min_ms: (heartbeat_interval_ms as f64).max(1.0),
            acceptable_pause_ms: heartbeat_interval_ms,
            max_clock_skew_ms,
            lag_samples_max: 240,
        }
    }
}

/// How a peer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Heartbeats arrive as expected.
    Healthy,
    /// Heartbeats are late enough to doubt the peer (phi ≥ `phi_suspect`).
    Suspect,
    /// The peer is considered unreachable (phi ≥ `phi_down`), or has never been heard from.
    Down,
}

/// What a node tells its health monitor ([`crate::node::Effect::Health`]).
#[derive(Debug, Clone, PartialEq)]
pub enum HealthInput {
    /// This DC's durable applied vector grew to this (only what is durable: heartbeats carry
    /// it to peers as what this DC holds).
    LocalSeen(VersionVector),
    /// A link to the peer came up (a handshake completed): a sign of life.
    LinkUp {
        /// The peer.
        peer: DcId,
        /// The link's number (the node numbers its links; a later link has a larger one).
        link: u64,
    },
    /// The peer's Hello was accepted on its link: heartbeats go to it from now on.
    LinkOpen(DcId),
    /// The peer's link closed: no more heartbeats to it until it opens again.
    LinkClosed(DcId),
    /// A heartbeat arrived from the peer.
    Heartbeat {
        /// The peer (its certificate proved it).
        from: DcId,
        /// The heartbeat.
        heartbeat: Heartbeat,
        /// When it arrived (runtime clock).
        at: MonoMs,
        /// This DC's wall clock when it arrived.
        wall: WallMs,
    },
    /// The peer durably holds `seen`: it said so itself (an Ack or a Hello), or, in
    /// [`crate::node::Node::health_state`], the node learned it (from the peer's reports, direct
    /// or relayed).
    PeerDurable {
        /// The peer.
        peer: DcId,
        /// What it holds.
        seen: VersionVector,
    },
    /// The node failed and serves nothing until its runtime restarts it: no more heartbeats,
    /// so peers judge this DC down (and relay its ops for it) rather than healthy.
    Halted,
}

/// What a monitor resumed beside a running node starts from ([`HealthMonitor::resume`],
/// [`crate::node::Node::health_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthState {
    /// The node's state as inputs: its durable vector, links up and open, what each peer is
    /// known to hold.
    pub inputs: Vec<HealthInput>,
    /// The verdicts the node holds, per peer: (health, suspected).
    pub verdicts: BTreeMap<DcId, (Health, bool)>,
    /// Whether the node holds its clock as skewed.
    pub clock_skewed: bool,
}

/// What a node takes from its health monitor ([`crate::node::Node::handle_health`]).
#[derive(Debug, Clone, PartialEq)]
pub enum HealthVerdict {
    /// How a peer is judged now.
    Peer {
        /// The peer.
        peer: DcId,
        /// Its health.
        health: Health,
        /// Whether it counts as suspected ([`HealthMonitor::suspected`]): the node relays its
        /// ops for it and starts no state transfer to it.
        suspected: bool,
    },
    /// The peer fell silent on link `link` (it was just judged down while that link was up):
    /// close that link and dial again, rather than hold it until the transport's idle timeout.
    /// A verdict reaches the node later than it was made; if the node's link to the peer is
    /// another one by then, the verdict is not about it.
    Silent {
        /// The peer.
        peer: DcId,
        /// The link it fell silent on.
        link: u64,
    },
    /// Whether this DC's clock is off against most peers ([`HealthMonitor::clock_skewed`]).
    ClockSkewed(bool),
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthOutput {
    /// Send this heartbeat to the peer (on its open link).
    Send {
        /// The peer.
        to: DcId,
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// A verdict changed (or, first thing after [`HealthMonitor::resume`], every verdict):
    /// hand it to [`crate::node::Node::handle_health`].
    Verdict(HealthVerdict),
}

/// How far a peer is behind this DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Ops this DC has applied that the peer has not (summed over origins).
    pub ops: u64,
    /// How long the oldest data this DC has and the peer lacks has waited, in ms: 0 when caught
    /// up; otherwise the time since the first tick that sampled an applied vector the peer does
    /// not cover (at most one tick late).
    pub ms: u64,
    /// The peer lacks even the oldest sample kept: `ms` is a lower bound.
    pub at_least: bool,
}

/// One peer's status.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Its health.
    pub health: Health,
    /// Its current phi (infinite before its first heartbeat).
    pub phi: f64,
    /// Its lag; `None` before its first heartbeat.
    pub lag: Option<Lag>,
    /// Its clock minus ours, in ms, from the heartbeat round trip with the least delay among
    /// the recent ones (NTP's clock filter); `None` before a round trip was measured.
    pub clock_offset_ms: Option<i64>,
    /// How far off `clock_offset_ms` may be, in ms: half that round trip's delay (a path
    /// slower one way than the other shifts the estimate by at most this much).
    pub clock_offset_error_ms: Option<u64>,
    /// When its last heartbeat arrived (runtime clock, ms).
    pub last_heartbeat_ms: Option<u64>,
    /// Its applied vector, as it last reported.
    pub seen: VersionVector,
}

/// Phi-accrual failure detector for one peer.
#[derive(Debug, Clone)]
struct PhiAccrual {
    intervals_ms: VecDeque<u64>,
    last_ms: Option<u64>,
}

impl PhiAccrual {
    fn heartbeat(&mut self, now_ms: u64, config: &HealthConfig) {
        match self.last_ms {
            Some(last) => self.intervals_ms.push_back(now_ms.saturating_sub(last)),
            None => {
                // Bootstrap with the expected interval, spread by a quarter, until real samples
                // replace it.
                let i = config.heartbeat_interval_ms;
                self.intervals_ms.push_back(i - i / 4);
                self.intervals_ms.push_back(i + i / 4);
            }
        }
        while self.intervals_ms.len() > config.samples_max {
            self.intervals_ms.pop_front();
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));
    }

    fn phi(&self, now_ms: u64, config: &HealthConfig) -> f64 {
        let Some(last) = self.last_ms else { return f64::INFINITY };
        let n = self.intervals_ms.len() as f64;
        let mean = self.intervals_ms.iter().sum::<u64>() as f64 / n;
        let variance = self.intervals_ms.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let std_dev = variance.sqrt().max(config.std_dev_min_ms);
        let silence = now_ms.saturating_sub(last) as f64;
        // The logistic approximation of the normal CDF used by Akka and Cassandra.
        let y = (silence - (mean + config.acceptable_pause_ms as f64)) / std_dev;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if y > 0.0 { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
        -p_later.max(f64::MIN_POSITIVE).log10()
    }
}

#[derive(Debug, Clone)]
struct Peer {
    detector: PhiAccrual,
    health: Health,
    /// `health` was judged on heartbeats of the detector's current run: false from the first
    /// heartbeat (or a link coming up) after silence until the next tick, so a peer that just
    /// showed life is not suspected on a verdict its silence earned.
    judged_alive_run: bool,
    seen: VersionVector,
    known: BTreeMap<DcId, VersionVector>,
    /// Its last heartbeat: its `wall_ms`, and when it arrived (runtime clock), to echo back.
    last_heard: Option<(u64, u64)>,
    /// Recent round trips, oldest first.
    clock_samples: VecDeque<ClockSample>,
    /// After [`HealthMonitor::resume`], the verdict the node held, kept until this monitor has
    /// evidence of its own: the peer's first heartbeat, or its own judgement of a peer it has a
    /// detector for as down.
    prior: Option<(Health, bool)>,
    /// The link up to it, as the node numbered it (`None`: none up).
    link: Option<u64>,
}

/// One heartbeat round trip: the offset it implies and its delay.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    offset_ms: i64,
    delay_ms: u64,
}

/// Round trips kept per peer; the one with the least delay gives the offset (RFC 5905 keeps 8).
const CLOCK_SAMPLES_MAX: usize = 8;

/// The health monitor of one DC. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    config: HealthConfig,
    peers: BTreeMap<DcId, Peer>,
    local_seen: VersionVector,
    /// (runtime ms, this DC's applied vector then), oldest first.
    history: VecDeque<(u64, VersionVector)>,
    next_tick_ms: u64,
    last_tick_ms: u64,
    /// Peers whose link is open: heartbeats go to them.
    open: BTreeSet<DcId>,
    /// The verdicts last handed out, to hand out changes only.
    reported: BTreeMap<DcId, (Health, bool)>,
    reported_skew: bool,
    /// After [`HealthMonitor::resume`], the node's clock verdict, kept until a round trip is
    /// measured.
    skew_prior: Option<bool>,
    /// The node failed: no heartbeats go out.
    halted: bool,
    outputs: VecDeque<HealthOutput>,
}

impl HealthMonitor {
    /// A monitor of `peers` (every other DC), all down until heard from, whose first tick is due
    /// at `now`. Its verdicts start as a new node's do (down, not suspected), so only changes
    /// are handed out.
    pub fn new(peers: impl IntoIterator<Item = DcId>, config: HealthConfig, now: MonoMs) -> Self {
        let now_ms = now.0;
        assert!(config.heartbeat_interval_ms > 0, "heartbeat_interval_ms is validated > 0");
        assert!(config.phi_suspect < config.phi_down, "suspect comes before down");
        let peers: BTreeMap<DcId, Peer> = peers
            .into_iter()
            .map(|dc| {
                let peer = Peer {
                    detector: PhiAccrual { intervals_ms: VecDeque::new(), last_ms: None },
                    health: Health::Down,
                    judged_alive_run: false,
                    seen: VersionVector::new(),
                    known: BTreeMap::new(),
                    last_heard: None,
                    clock_samples: VecDeque::new(),
                    prior: None,
                    link: None,
                };
                (dc, peer)
            })
            .collect();
        let reported: BTreeMap<DcId, (Health, bool)> =
            peers.keys().map(|dc| (dc.clone(), (Health::Down, false))).collect();
        Self {
            config,
            peers,
            local_seen: VersionVector::new(),
            history: VecDeque::new(),
            next_tick_ms: now_ms,
            last_tick_ms: now_ms,
            open: BTreeSet::new(),
            reported,
            reported_skew: false,
            skew_prior: None,
            halted: false,
            outputs: VecDeque::new(),
        }
    }

    /// A monitor started again beside a node that kept running (the runtime's health monitor
    /// restarted; [`crate::node::Node::health_state`] gives `state`). It knows no history: it
    /// keeps the node's verdicts until it has evidence of its own (a peer's first heartbeat, or
    /// its own judgement of a peer as down), and the node's clock verdict until it measures a
    /// round trip. A peer with a link up, or that the node did not hold as down, counts as heard
    /// from at `now` and is judged afresh from there, so a silent one is still judged down in
    /// time; a peer the node held as down stays so (and as suspected, if it was) until heard.
    pub fn resume(
        peers: impl IntoIterator<Item = DcId>,
        config: HealthConfig,
        now: MonoMs,
        state: HealthState,
    ) -> Self {
        let mut monitor = Self::new(peers, config, now);
        for (dc, p) in &mut monitor.peers {
            p.prior = state.verdicts.get(dc).copied();
            if p.prior.is_some_and(|(health, _)| health != Health::Down) {
                p.detector.heartbeat(now.0, &monitor.config);
                p.health = Health::Healthy;
            }
        }
        monitor.reported = state.verdicts;
        monitor.skew_prior = Some(state.clock_skewed);
        monitor.reported_skew = state.clock_skewed;
        for input in state.inputs {
            if let HealthInput::LinkUp { peer, .. } = &input {
                if let Some(p) = monitor.peers.get_mut(peer).filter(|p| p.detector.last_ms.is_none()) {
                    p.detector.heartbeat(now.0, &monitor.config);
                    p.health = Health::Healthy;
                }
            }
            monitor.apply(now, input);
        }
        monitor.report();
        monitor
    }

    /// The peers it judges.
    pub fn peers(&self) -> impl Iterator<Item = &DcId> {
        self.peers.keys()
    }

    /// When [`HealthMonitor::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<MonoMs> {
        Some(MonoMs(self.next_tick_ms))
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<HealthOutput> {
        self.outputs.pop_front()
    }

    /// Takes what the node learned at `now` (runtime clock).
    pub fn handle(&mut self, now: MonoMs, input: HealthInput) {
        self.apply(now, input);
        self.report();
    }

    fn apply(&mut self, now: MonoMs, input: HealthInput) {
        match input {
            HealthInput::LocalSeen(seen) => self.local_seen.join(&seen),
            HealthInput::LinkUp { peer, link } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.link = Some(link);
                }
                self.handle_link_up(&peer, now.0);
            }
            HealthInput::LinkOpen(peer) => {
                if self.peers.contains_key(&peer) {
                    self.open.insert(peer);
                }
            }
            HealthInput::LinkClosed(peer) => {
                self.open.remove(&peer);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.link = None;
                }
            }
            HealthInput::Heartbeat { from, heartbeat, at, wall } => {
                self.handle_heartbeat(at, wall, &from, &heartbeat);
            }
            HealthInput::PeerDurable { peer, seen } => self.handle_peer_durable(&peer, &seen),
            HealthInput::Halted => self.halted = true,
        }
    }

    /// Hands out the verdicts that changed since last reported.
    fn report(&mut self) {
        for dc in self.peers.keys() {
            let verdict = self.verdict(dc);
            if self.reported.get(dc) != Some(&verdict) {
                self.reported.insert(dc.clone(), verdict);
                let (health, suspected) = verdict;
                let verdict = HealthVerdict::Peer { peer: dc.clone(), health, suspected };
                self.outputs.push_back(HealthOutput::Verdict(verdict));
            }
        }
        let skewed = self.clock_skewed();
        if skewed != self.reported_skew {
            self.reported_skew = skewed;
            self.outputs.push_back(HealthOutput::Verdict(HealthVerdict::ClockSkewed(skewed)));
        }
    }

    /// `peer` said itself (in an Ack) that it holds `seen` durably: lag is measured against the
    /// newest word from the peer, not only its last heartbeat (so a caught-up peer reads 0 at
    /// once, not a heartbeat later).
    fn handle_peer_durable(&mut self, peer: &DcId, seen: &VersionVector) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.seen.join(seen);
        }
    }

    /// Runs a tick if one is due at `now` (`wall` is this DC's wall clock): sends a heartbeat
    /// on every open link, samples this DC's applied vector for lag and re-judges every peer.
    pub fn handle_timeout(&mut self, now: MonoMs, wall: WallMs) {
        let now_ms = now.0;
        if now_ms < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now_ms + self.config.heartbeat_interval_ms;
        self.last_tick_ms = now_ms;
        if !self.open.is_empty() && !self.halted {
            let known = self.known();
            for peer in &self.open {
                let echo = self.echo(peer, now_ms);
                let heartbeat =
                    Heartbeat { seen: self.local_seen.clone(), known: known.clone(), wall_ms: wall.0, echo };
                self.outputs.push_back(HealthOutput::Send { to: peer.clone(), heartbeat });
            }
        }
        if self.history.back().is_none_or(|(_, v)| *v != self.local_seen) {
            self.history.push_back((now_ms, self.local_seen.clone()));
            while self.history.len() > self.config.lag_samples_max {
                self.history.pop_front();
            }
        }
        for (dc, peer) in &mut self.peers {
            peer.judged_alive_run = peer.detector.last_ms.is_some();
            let phi = peer.detector.phi(now_ms, &self.config);
            let to = if phi >= self.config.phi_down {
                Health::Down
            } else if phi >= self.config.phi_suspect {
                Health::Suspect
            } else {
                Health::Healthy
            };
            if let Some(link) = peer.link.filter(|_| to == Health::Down && peer.health != Health::Down) {
                let silent = HealthVerdict::Silent { peer: dc.clone(), link };
                self.outputs.push_back(HealthOutput::Verdict(silent));
            }
            peer.health = to;
            if to == Health::Down && peer.detector.last_ms.is_some() {
                peer.prior = None;
            }
        }
        self.report();
    }

    /// A heartbeat from `from` arrived at `now` (runtime clock), when this DC's wall clock read
    /// `local_wall`. Changes nothing when `from` is not a peer.
    ///
    /// Clock offset, after NTP (RFC 5905, section 8): the heartbeat echoes this DC's last one
    /// (sent at `t1` by our clock), held `held` ms at the peer, and was sent at `t3` by the peer's
    /// clock; it arrives at `t4` by ours. The round trip's delay is `(t4 − t1) − held` and the
    /// offset `((t3 − held − t1) + (t3 − t4)) / 2`, off by at most half the delay. Time a
    /// heartbeat spends queued (a busy or paused process, a full link) adds to the delay, so the
    /// sample with the least delay of the recent ones is the one believed.
    fn handle_heartbeat(&mut self, now: MonoMs, local_wall: WallMs, from: &DcId, heartbeat: &Heartbeat) {
        let (now_ms, local_wall_ms) = (now.0, local_wall.0);
        let Some(peer) = self.peers.get_mut(from) else { return };
        if peer.detector.phi(now_ms, &self.config) >= self.config.phi_down {
            // Back from an outage: the silence says nothing about the link's normal rhythm, and
            // as one huge sample it would blind the detector to the next failure for a long time.
            peer.detector = PhiAccrual { intervals_ms: VecDeque::new(), last_ms: None };
        }
        if peer.detector.last_ms.is_none() {
            peer.judged_alive_run = false;
        }
        peer.detector.heartbeat(now_ms, &self.config);
        peer.prior = None;
        peer.seen.join(&heartbeat.seen);
        for (dc, vv) in &heartbeat.known {
            peer.known.entry(dc.clone()).or_default().join(vv);
        }
        peer.last_heard = Some((heartbeat.wall_ms, now_ms));
        if let Some(echo) = heartbeat.echo {
            let [t1, t3, t4, held] = [echo.wall_ms, heartbeat.wall_ms, local_wall_ms, echo.held_ms]
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
            let delay_ms = u64::try_from(t4.saturating_sub(t1).saturating_sub(held)).unwrap_or(0);
            let offset_ms = (t3.saturating_sub(held).saturating_sub(t1) + t3.saturating_sub(t4)) / 2;
            peer.clock_samples.push_back(ClockSample { offset_ms, delay_ms });
            while peer.clock_samples.len() > CLOCK_SAMPLES_MAX {
                peer.clock_samples.pop_front();
            }
        }
    }

    /// A link to `peer` came up at `now_ms`. A completed handshake is a sign of life, and the
    /// silence before it says nothing of the new link's rhythm: a peer heard from before starts
    /// afresh from now, so a link just re-established is not judged down on the old silence.
    fn handle_link_up(&mut self, peer: &DcId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(peer).filter(|p| p.detector.last_ms.is_some()) {
            p.detector = PhiAccrual { intervals_ms: VecDeque::new(), last_ms: None };
            p.detector.heartbeat(now_ms, &self.config);
            p.judged_alive_run = false;
        }
    }

    /// The echo for the next heartbeat to `peer` at `now_ms`: its last heartbeat and how long
    /// this DC has held it. `None` before one arrived.
    fn echo(&self, peer: &DcId, now_ms: u64) -> Option<HeartbeatEcho> {
        let (wall_ms, heard_ms) = self.peers.get(peer)?.last_heard?;
        Some(HeartbeatEcho { wall_ms, held_ms: now_ms.saturating_sub(heard_ms) })
    }

    /// The vectors this DC knows of every DC (its peers' reports and what they relayed), for the
    /// heartbeat it sends, so acks and lag can travel any path.
    pub fn known(&self) -> BTreeMap<DcId, VersionVector> {
        let mut known: BTreeMap<DcId, VersionVector> = BTreeMap::new();
        for (dc, peer) in &self.peers {
            known.entry(dc.clone()).or_default().join(&peer.seen);
            for (other, vv) in &peer.known {
                known.entry(other.clone()).or_default().join(vv);
            }
        }
        known
    }

    /// Whether `peer` was heard from and is now judged suspect or down on what was heard (a
    /// peer never heard from since this DC started is not suspected: at start every peer is
    /// "down" until its first heartbeat, and treating that as an outage would relay everything at
    /// once; nor is one whose first heartbeat after silence, or whose new link, came since the
    /// last tick, until the tick judges it).
    pub fn suspected(&self, peer: &DcId) -> bool {
        self.peers.contains_key(peer) && self.verdict(peer).1
    }

    /// (health, suspected) of a peer of this monitor: its own judgement, or the node's until it
    /// has evidence of its own (see [`HealthMonitor::resume`]).
    fn verdict(&self, peer: &DcId) -> (Health, bool) {
        let p = &self.peers[peer];
        p.prior.unwrap_or_else(|| {
            let suspected = p.detector.last_ms.is_some() && p.judged_alive_run && p.health != Health::Healthy;
            (p.health, suspected)
        })
    }

    /// How `peer` is judged (as of the last tick), or `None` if it is not a peer. Cheaper than
    /// [`HealthMonitor::status`], which also measures lag.
    pub fn health(&self, peer: &DcId) -> Option<Health> {
        self.peers.contains_key(peer).then(|| self.verdict(peer).0)
    }

    /// The status of `peer` at `now`, or `None` if it is not a peer.
    pub fn status(&self, peer: &DcId, now: MonoMs) -> Option<PeerStatus> {
        let now_ms = now.0;
        let p = self.peers.get(peer)?;
        let heard = p.detector.last_ms.is_some();
        Some(PeerStatus {
            health: self.verdict(peer).0,
            phi: p.detector.phi(now_ms, &self.config),
            lag: heard.then(|| self.lag(&p.seen, now_ms)),
            clock_offset_ms: best_sample(p).map(|c| c.offset_ms),
            clock_offset_error_ms: best_sample(p).map(|c| c.delay_ms / 2),
            last_heartbeat_ms: p.detector.last_ms,
            seen: p.seen.clone(),
        })
    }

    fn lag(&self, peer_seen: &VersionVector, now_ms: u64) -> Lag {
        let ops = self.local_seen.iter().map(|(dc, seq)| seq.saturating_sub(peer_seen.get(dc))).sum();
        if peer_seen.dominates(&self.local_seen) {
            return Lag { ops, ms: 0, at_least: false };
        }
        // Samples are taken only when the applied vector changed, so the first one the peer does
        // not cover is when the oldest data it lacks arrived here (to within a tick).
        match self.history.iter().position(|(_, v)| !peer_seen.dominates(v)) {
            Some(i) => {
                let (t, _) = &self.history[i];
                let full = self.history.len() >= self.config.lag_samples_max;
                Lag { ops, ms: now_ms.saturating_sub(*t), at_least: i == 0 && full }
            }
            // The peer covers every sample: what it lacks arrived after the last tick.
            None => Lag { ops, ms: now_ms.saturating_sub(self.last_tick_ms), at_least: false },
        }
    }

    /// Whether this DC's clock is off by more than `max_clock_skew_ms` against most peers that
    /// have a measured offset: it must then refuse writes whose resolution orders by time
    /// (DESIGN.md, "Clock skew"). A peer counts against this DC only with evidence: its offset
    /// is beyond the bound even after allowing for the measurement's error.
    pub fn clock_skewed(&self) -> bool {
        let samples: Vec<ClockSample> = self.peers.values().filter_map(best_sample).collect();
        if samples.is_empty() {
            return self.skew_prior.unwrap_or(false);
        }
        let beyond = samples
            .iter()
            .filter(|c| {
                c.offset_ms.unsigned_abs().saturating_sub(c.delay_ms / 2) > self.config.max_clock_skew_ms
            })
            .count();
        !samples.is_empty() && beyond * 2 > samples.len()
    }
}

/// The recent round trip with the least delay (the earliest of equals), NTP's clock filter.
fn best_sample(peer: &Peer) -> Option<ClockSample> {
    peer.clock_samples.iter().copied().min_by_key(|c| c.delay_ms)
}
