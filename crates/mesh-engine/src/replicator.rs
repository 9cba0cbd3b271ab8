//! The replicator of one peer link: which ops to send the peer, in which batches, and when.
//!
//! Call order (the node drives it, see [`crate::node`]):
//! - [`Replicator::handle_open`] once the peer's Hello is accepted: streaming resumes from the
//!   Hello's `seen` (never from what this DC believed before, so a peer that lost data gets it
//!   again); [`Replicator::handle_close`] when the link drops.
//! - [`Replicator::handle_peer_seen`] with every vector the peer reports durable (its acks, its
//!   heartbeats, or relayed through another DC): acknowledged batches leave the in-flight window.
//! - [`Replicator::poll_batch`] with the per-origin targets ([`targets`]) until it returns
//!   `None`; [`Replicator::handle_timeout`] when [`Replicator::poll_timeout`] is due.
//!
//! The replicator keeps no op in memory: it reads each batch through [`OpLog`] from the durable
//! log, at a cursor per origin, so a dead or slow peer's backlog stays on disk and never slows
//! writers. A batch leaves at once when nothing is in flight to the peer, else when `batch_size`
//! ops are waiting or the oldest waiting op has waited `max_delay_ms` (Nagle's rule, RFC 896,
//! with the window as the pipe: an idle link adds no delay, a busy one sends fuller batches), at
//! most `inflight_max` batches are unacknowledged, and a window whose oldest
//! batch is not acknowledged within `retransmit_ms` of its sending or of the last ack that freed a
//! batch is sent again from what the
//! peer confirmed (go-back-N: the receiver applies each origin in order, holding back a batch
//! that arrives past a gap until the gap fills, and duplicates are harmless).

use crate::commit::{LogReadError, OpLog};
use mesh_core::{DcId, Op, VersionVector};
use std::collections::{BTreeSet, VecDeque};

/// Tuning of a [`Replicator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// Most ops in one batch (`batch_size`).
    pub batch_size: usize,
    /// Most encoded op bytes in one batch, so a frame stays under `frame_bytes_max`.
    pub batch_bytes_max: usize,
    /// Longest an op waits for its batch to fill, in ms (`max_delay_ms`).
    pub max_delay_ms: u64,
    /// Most unacknowledged batches (`inflight_batches_max`).
    pub inflight_max: usize,
    /// How long a batch may stay unacknowledged before the window is sent again, in ms.
    pub retransmit_ms: u64,
}

/// Counters of one link, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicatorStats {
    /// Batches sent (retransmissions included).
    pub batches: u64,
    /// Ops sent (retransmissions included).
    pub ops: u64,
    /// Ops sent that another DC created (relayed or returned to their origin).
    pub relayed_ops: u64,
    /// Times the window was sent again after a timeout.
    pub retransmits: u64,
    /// Runtime time of the last batch sent, in ms.
    pub last_sent_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct InFlight {
    sent_ms: u64,
    /// Per origin, the last seq the batch carried.
    upto: VersionVector,
}

#[derive(Debug, Clone)]
struct Link {
    /// Per origin, the last seq sent on this link (or known to be at the peer).
    sent: VersionVector,
    inflight: VecDeque<InFlight>,
    /// When the oldest op waiting to be sent became sendable.
    waiting_since_ms: Option<u64>,
    /// Origins whose next op the log no longer holds: the peer needs a state transfer.
    compacted: BTreeSet<DcId>,
    /// Round-robin start among origins, so one busy origin cannot crowd the others out.
    turn: usize,
    /// An ack freed a batch since the last call that knew the time.
    progressed: bool,
    /// When an ack last freed a batch: the resend timer counts from there, so a slow link that
    /// keeps acknowledging (large values, a long window) is not resent to.
    progress_ms: Option<u64>,
    /// Origins the peer came to hold more of than this link sent it, since the last call that
    /// knew the time: it gets them from elsewhere (their origin, most likely).
    direct_pending: BTreeSet<DcId>,
    /// Per origin, when the peer last got its ops from elsewhere than this link.
    direct_ms: std::collections::BTreeMap<DcId, u64>,
    /// When the link opened.
    opened_ms: u64,
    /// How long the link had been closed before it opened (`None`: never open before).
    closed_for_ms: Option<u64>,
}

impl Link {
    /// Dates the progress made since the last call at `now_ms`.
    fn stamp(&mut self, now_ms: u64) {
        if std::mem::take(&mut self.progressed) {
            self.progress_ms = Some(now_ms);
        }
        for origin in std::mem::take(&mut self.direct_pending) {
            self.direct_ms.insert(origin, now_ms);
        }
    }

    /// When the oldest unacknowledged batch is to be resent: `retransmit_ms` after it was sent
    /// or after the last ack that freed a batch, whichever is later.
    fn resend_at(&self, retransmit_ms: u64) -> Option<u64> {
        let front = self.inflight.front()?;
        Some(front.sent_ms.max(self.progress_ms.unwrap_or(0)) + retransmit_ms)
    }
}

/// The replicator of one peer. See the module docs.
#[derive(Debug, Clone)]
pub struct Replicator {
    local: DcId,
    peer: DcId,
    config: ReplicatorConfig,
    /// What the peer holds durably, as far as this DC knows.
    peer_seen: VersionVector,
    link: Option<Link>,
    /// When the link last closed (`None`: open, or never opened).
    closed_ms: Option<u64>,
    stats: ReplicatorStats,
}

/// Why a batch could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading {origin}'s log failed: {detail}")]
pub struct LogReadFailed {
    /// The origin whose log was read.
    pub origin: DcId,
    /// The store's message.
    pub detail: String,
}

/// The relay rule (DESIGN.md, "Replication protocol"): per origin, how far this DC should bring
/// `peer`. Its own ops: everything durable here. The peer's own ops: what it lacked when its
/// Hello came (`returned`), so a DC that lost ops gets them back (whatever its health: it is
/// the one they go to). A third DC's ops: only those
/// this DC has held for the relay delay (`held_long`, see [`RelayClock`]) — the peer normally
/// has them from their origin by then, and its reports raise `peer_seen` so nothing is sent —
/// or all of them when that origin is suspect or down from here; none while the peer gets that
/// origin's ops from elsewhere (`direct`, see [`Replicator::direct_progress`]: large values on a
/// slow link take longer than the relay delay, and relaying them would send what is on its way),
/// nor in the relay delay after the link opens following an outage ([`Replicator::opened_within`]:
/// after a partition or a restart the origin streams the same backlog over its own new link, and
/// a relay started at once would race it and send every op twice).
pub fn targets(
    local: &DcId,
    peer: &DcId,
    durable: &VersionVector,
    held_long: &VersionVector,
    returned: u64,
    suspect: &BTreeSet<DcId>,
    direct: &BTreeSet<DcId>,
) -> VersionVector {
    durable
        .iter()
        .map(|(origin, seq)| {
            let upto = if origin == local {
                seq
            } else if origin == peer {
                returned.min(seq)
            } else if suspect.contains(origin) {
                seq
            } else if direct.contains(origin) {
                0
            } else {
                held_long.get(origin).min(seq)
            };
            (origin.clone(), upto)
        })
        .filter(|(_, upto)| *upto > 0)
        .collect()
}

impl Replicator {
    /// The replicator from `local` to `peer`; the link starts closed.
    pub fn new(local: DcId, peer: DcId, config: ReplicatorConfig) -> Self {
        assert!(config.batch_size > 0 && config.inflight_max > 0, "batch_size and inflight_max are positive");
        Self {
            local,
            peer,
            config,
            peer_seen: VersionVector::new(),
            link: None,
            closed_ms: None,
            stats: ReplicatorStats::default(),
        }
    }

    /// The peer.
    pub fn peer(&self) -> &DcId {
        &self.peer
    }

    /// What the peer holds durably, as far as this DC knows.
    pub fn peer_seen(&self) -> &VersionVector {
        &self.peer_seen
    }

    /// Counters.
    pub fn stats(&self) -> ReplicatorStats {
        self.stats
    }

    /// Whether the link is open.
    pub fn is_open(&self) -> bool {
        self.link.is_some()
    }

    /// Origins whose ops the peer needs but the log no longer holds (state transfer needed).
    pub fn compacted(&self) -> Vec<DcId> {
        self.link.as_ref().map(|l| l.compacted.iter().cloned().collect()).unwrap_or_default()
    }

    /// The origins whose ops the peer got from elsewhere than this link within `within_ms`
    /// before `now_ms` (as of the last call that knew the time): its own link to them works, so
    /// relaying them would only send what is already on its way.
    pub fn direct_progress(&self, now_ms: u64, within_ms: u64) -> BTreeSet<DcId> {
        let Some(link) = &self.link else { return BTreeSet::new() };
        link.direct_ms.iter().filter(|(_, t)| now_ms < **t + within_ms).map(|(o, _)| o.clone()).collect()
    }

    /// Whether the link opened less than `within_ms` before `now_ms` after being closed for at
    /// least `within_ms` (or at start). Until then, whether the peer gets a third DC's ops from
    /// elsewhere is not known: after an outage its links to the others usually open at the same
    /// moment (the peer came back from a partition or a restart), and a relay started at once
    /// would race the origins' own streams and send the backlog twice. A link that was down for
    /// less (a flap) relays at once, as before it dropped: a link that keeps flapping must not
    /// stop relaying altogether. `false` while the link is closed.
    pub fn opened_within(&self, now_ms: u64, within_ms: u64) -> bool {
        self.opened_wait_ends(within_ms).is_some_and(|end| now_ms < end)
    }

    /// When the wait of [`Replicator::opened_within`] ends (or ended) for the open link, in ms;
    /// `None` when the link is closed or opened after a flap (no wait).
    pub fn opened_wait_ends(&self, within_ms: u64) -> Option<u64> {
        let link = self.link.as_ref()?;
        link.closed_for_ms.is_none_or(|down| down >= within_ms).then_some(link.opened_ms + within_ms)
    }

    /// Batches sent and not acknowledged.
    pub fn inflight(&self) -> usize {
        self.link.as_ref().map_or(0, |l| l.inflight.len())
    }

    /// The link opened at `now_ms` and the peer's Hello reported `hello_seen`: streaming
    /// resumes there.
    pub fn handle_open(&mut self, now_ms: u64, hello_seen: &VersionVector) {
        // Not joined with what was known: a peer that restarted with less (a disk that lost
        // acknowledged data) must get it again.
        self.peer_seen = hello_seen.clone();
        self.link = Some(Link {
            sent: hello_seen.clone(),
            inflight: VecDeque::new(),
            waiting_since_ms: None,
            compacted: BTreeSet::new(),
            turn: 0,
            progressed: false,
            progress_ms: None,
            direct_pending: BTreeSet::new(),
            direct_ms: std::collections::BTreeMap::new(),
            opened_ms: now_ms,
            closed_for_ms: self.closed_ms.take().map(|closed| now_ms.saturating_sub(closed)),
        });
    }

    /// The link dropped at `now_ms`; whatever was in flight is sent again from the next Hello.
    pub fn handle_close(&mut self, now_ms: u64) {
        if self.link.take().is_some() {
            self.closed_ms = Some(now_ms);
        }
    }

    /// The peer is known to hold `seen` durably.
    pub fn handle_peer_seen(&mut self, seen: &VersionVector) {
        let before = self.peer_seen.clone();
        self.peer_seen.join(seen);
        if let Some(link) = &mut self.link {
            for (origin, seq) in seen.iter() {
                if seq > before.get(origin) && seq > link.sent.get(origin) {
                    link.direct_pending.insert(origin.clone());
                }
            }
            // An origin the peer moved on in (a state transfer) is read again from there.
            link.compacted.retain(|origin| self.peer_seen.get(origin) == before.get(origin));
            while link.inflight.front().is_some_and(|b| self.peer_seen.dominates(&b.upto)) {
                link.inflight.pop_front();
                link.progressed = true;
            }
        }
    }

    /// When [`Replicator::handle_timeout`] or [`Replicator::poll_batch`] next has work.
    pub fn poll_timeout(&self) -> Option<u64> {
        let link = self.link.as_ref()?;
        let retransmit = link.resend_at(self.config.retransmit_ms);
        // A full window sends nothing until an ack (which the node acts on at once) frees it.
        let window_open = link.inflight.len() < self.config.inflight_max;
        let delay = if link.inflight.is_empty() { 0 } else { self.config.max_delay_ms };
        let flush = link.waiting_since_ms.filter(|_| window_open).map(|t| t + delay);
        retransmit.into_iter().chain(flush).min()
    }

    /// Sends the window again if its oldest batch has waited for its ack `retransmit_ms` since
    /// it was sent or since the last ack that freed a batch, whichever is later.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let Some(link) = &mut self.link else { return };
        link.stamp(now_ms);
        if link.resend_at(self.config.retransmit_ms).is_some_and(|t| t <= now_ms) {
            link.inflight.clear();
            link.sent = self.peer_seen.clone();
            self.stats.retransmits += 1;
        }
    }

    /// The next batch to send at `now_ms`, if one is due, bringing the peer towards `targets`
    /// (per origin, the last seq to send; see [`targets`]). `Ok(None)` when nothing is due: the
    /// window is full, nothing is waiting, or a partial batch has not waited `max_delay_ms`.
    pub fn poll_batch(
        &mut self,
        now_ms: u64,
        targets: &VersionVector,
        log: &impl OpLog,
    ) -> Result<Option<Vec<Op>>, LogReadFailed> {
        let Some(link) = &mut self.link else { return Ok(None) };
        link.stamp(now_ms);
        if link.inflight.len() >= self.config.inflight_max {
            return Ok(None);
        }
        let mut waiting: Vec<(DcId, u64, u64)> = Vec::new();
        let mut waiting_ops = 0u64;
        for (origin, upto) in targets.iter() {
            let from = link.sent.get(origin).max(self.peer_seen.get(origin));
            if upto > from && !link.compacted.contains(origin) {
                waiting.push((origin.clone(), from, upto));
                waiting_ops += upto - from;
            }
        }
        if waiting.is_empty() {
            link.waiting_since_ms = None;
            return Ok(None);
        }
        let since = *link.waiting_since_ms.get_or_insert(now_ms);
        // An idle link sends at once (the group commit already gathered what came together);
        // while batches are in flight, a partial batch waits up to `max_delay_ms` to fill, so
        // a busy link sends fewer, fuller batches (Nagle's rule, with the window as the pipe).
        let idle = link.inflight.is_empty();
        if !idle && waiting_ops < self.config.batch_size as u64 && now_ms < since + self.config.max_delay_ms {
            return Ok(None);
        }
        let start = link.turn % waiting.len();
        link.turn = link.turn.wrapping_add(1);
        waiting.rotate_left(start);
        let mut ops: Vec<Op> = Vec::new();
        let mut bytes = 0usize;
        let mut upto_sent = VersionVector::new();
        for (origin, from, upto) in waiting {
            let room = self.config.batch_size - ops.len();
            if room == 0 || bytes >= self.config.batch_bytes_max {
                break;
            }
            let want = usize::try_from(upto - from).unwrap_or(usize::MAX).min(room);
            let page = match log.read_ops(&origin, from, want, self.config.batch_bytes_max - bytes) {
                Ok(page) => page,
                Err(LogReadError::Compacted { .. }) => Vec::new(),
                Err(LogReadError::Store(e)) => {
                    return Err(LogReadFailed { origin: origin.clone(), detail: e.to_string() })
                }
            };
            if page.is_empty() {
                // The log has nothing after `from` although this DC holds later ops durably:
                // they were compacted away; the peer needs a state transfer for this origin.
                link.compacted.insert(origin);
                continue;
            }
            for op in page {
                assert_eq!(op.dot.origin, origin, "the log returned another origin's op");
                if op.dot.seq > upto {
                    break;
                }
                // An estimate (payload plus typical metadata); the log bounds each page exactly.
                bytes += op.kind.payload_bytes() + 64;
                if op.dot.origin != self.local {
                    self.stats.relayed_ops += 1;
                }
                upto_sent.raise(&origin, op.dot.seq);
                link.sent.raise(&origin, op.dot.seq);
                ops.push(op);
            }
        }
        if ops.is_empty() {
            return Ok(None);
        }
        link.waiting_since_ms = None;
        link.inflight.push_back(InFlight { sent_ms: now_ms, upto: upto_sent });
        self.stats.batches += 1;
        self.stats.ops += ops.len() as u64;
        self.stats.last_sent_ms = Some(now_ms);
        Ok(Some(ops))
    }
}

/// When this DC came to hold each origin's ops, coarsely, to apply the relay delay: an op is
/// relayed only once this DC has held it for `relay_delay_ms` (and the peer still lacks it).
#[derive(Debug, Clone)]
pub struct RelayClock {
    relay_delay_ms: u64,
    /// (time, durable vector then), oldest first; samples closer than a sixteenth of the delay
    /// are merged into the later one, so the list stays short at any write rate.
    samples: VecDeque<(u64, VersionVector)>,
    /// The newest vector held for at least the delay.
    held_long: VersionVector,
}

impl RelayClock {
    /// A clock for `relay_delay_ms`; `durable` was held since long before.
    pub fn new(relay_delay_ms: u64, durable: VersionVector) -> Self {
        Self { relay_delay_ms, samples: VecDeque::new(), held_long: durable }
    }

    /// This DC's durable vector is `durable` at `now_ms`.
    pub fn record(&mut self, now_ms: u64, durable: &VersionVector) {
        let step = (self.relay_delay_ms / 16).max(1);
        match self.samples.back_mut() {
            // Merging into the newer sample delays those ops' relay by at most one step.
            Some((t, v)) if now_ms < *t + step => v.join(durable),
            _ => self.samples.push_back((now_ms, durable.clone())),
        }
        self.advance(now_ms);
    }

    fn advance(&mut self, now_ms: u64) {
        while self.samples.front().is_some_and(|(t, _)| t + self.relay_delay_ms <= now_ms) {
            let (_, v) = self.samples.pop_front().expect("checked");
            self.held_long.join(&v);
        }
    }

    /// Per origin, the ops held for at least the relay delay at `now_ms`.
    pub fn held_long(&mut self, now_ms: u64) -> &VersionVector {
        self.advance(now_ms);
        &self.held_long
    }

    /// Per origin, the ops held for at least the relay delay as of the last call that advanced
    /// the clock (a view for status; replication uses [`RelayClock::held_long`]).
    pub fn held_long_now(&self) -> &VersionVector {
        &self.held_long
    }

    /// When the next sample becomes old enough to relay.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.samples.front().map(|(t, _)| t + self.relay_delay_ms)
    }
}
