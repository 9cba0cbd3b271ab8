//! Sync tracker: which writes wait for acknowledgements from other DCs, and when they are done.
//!
//! Call order: after a write's local durable commit (`committed(id)` from the store), call
//! [`SyncTracker::handle_committed`] with the mode the write resolved to ([`resolve_mode`]) and
//! its deadline, counted from when the request arrived (`sync_timeout_ms` after it). Every time this DC learns a DC's durable vector, directly from an Ack or
//! relayed in a heartbeat's known vectors, call [`SyncTracker::handle_durable`]. Call
//! [`SyncTracker::handle_timeout`] when [`SyncTracker::poll_timeout`] is due. Drain
//! [`SyncTracker::poll_outcome`] and reply to the client: an async write is done at once; a sync
//! write once `acks` DCs (this one included) cover its dot, or, at its deadline, with the
//! partial result (committed here, which DCs confirmed). A write is never rolled back: a timed
//! out write still replicates.
//!
//! A DC counts only once its reported vector covers the dot. Vectors travel only after the
//! commit that produced them (DESIGN.md, "Durability rules"), so a count is a durable copy.

use mesh_core::topology::{Acks, Mode};
use mesh_core::{DcId, Dot, VersionVector};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Resolves the mode of one write: a critical keyspace is always sync; otherwise the request's
/// override, else the keyspace's mode; `hybrid` with no override means async (sync is asked
/// for per request).
pub fn resolve_mode(keyspace_mode: Mode, critical: bool, request: Option<Mode>) -> Mode {
    if critical {
        return Mode::Sync;
    }
    match request.unwrap_or(keyspace_mode) {
        Mode::Hybrid => Mode::Async,
        mode => mode,
    }
}

/// Identifies a client request; the runtime assigns it, unique among its requests in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a write finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Enough DCs hold the write durably (for async: this DC).
    Done {
        /// The request.
        request: RequestId,
        /// The DCs known to hold it durably when it was decided, in id order.
        confirmed: Vec<DcId>,
    },
    /// The deadline passed first. The write is committed here and still replicates.
    TimedOut {
        /// The request.
        request: RequestId,
        /// The DCs known to hold it durably, in id order (this DC included).
        confirmed: Vec<DcId>,
        /// How many were required.
        required: usize,
    },
}

#[derive(Debug, Clone)]
struct Waiting {
    dot: Dot,
    required: usize,
    deadline_ms: u64,
}

/// Tracks sync writes of one DC. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct SyncTracker {
    local: DcId,
    /// Active DCs (this one included): the base for quorum and all, and the DCs that count.
    active: BTreeSet<DcId>,
    /// Per DC, the highest vector known durable there.
    durable: BTreeMap<DcId, VersionVector>,
    waiting: BTreeMap<RequestId, Waiting>,
    deadlines: BTreeSet<(u64, RequestId)>,
    outcomes: VecDeque<SyncOutcome>,
    /// Most writes waiting at once; more are refused by the caller before they are written.
    waiting_max: usize,
}

impl SyncTracker {
    /// A tracker for DC `local` among the `active` DCs, holding at most `waiting_max` writes.
    pub fn new(local: DcId, active: impl IntoIterator<Item = DcId>, waiting_max: usize) -> Self {
        let mut active: BTreeSet<DcId> = active.into_iter().collect();
        active.insert(local.clone());
        Self {
            local,
            active,
            durable: BTreeMap::new(),
            waiting: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outcomes: VecDeque::new(),
            waiting_max,
        }
    }

    /// Whether another sync write can wait now; when not, the caller refuses the request
    /// before writing it (bounded memory, and no write the client was told failed).
    pub fn has_room(&self) -> bool {
        self.waiting.len() < self.waiting_max
    }

    /// The DCs whose known durable vector covers `dot`, this DC always included (it committed).
    fn confirmed(&self, dot: &Dot) -> Vec<DcId> {
        self.active
            .iter()
            .filter(|dc| **dc == self.local || self.durable.get(*dc).is_some_and(|v| v.covers(dot)))
            .cloned()
            .collect()
    }

    /// The write of `request`, named `dot`, is durable here. `mode` is its resolved mode
    /// ([`resolve_mode`]); a sync write waits for `acks` DCs until `deadline_ms` (runtime clock;
    /// the request's arrival plus `sync_timeout_ms`, so time spent before the commit counts).
    ///
    /// A sync write that finds the waiting set full is answered at once with the partial result.
    ///
    /// # Panics
    /// If a request id is reused while it waits.
    pub fn handle_committed(
        &mut self,
        request: RequestId,
        dot: Dot,
        mode: Mode,
        acks: Acks,
        deadline_ms: u64,
    ) {
        assert_eq!(dot.origin, self.local, "only this DC's own writes are tracked");
        // Never clamped down to the DCs there are: a write that asks for more than can answer
        // times out with the partial result rather than being reported done.
        let required = match mode {
            Mode::Sync => acks.required(self.active.len()).max(1),
            Mode::Async | Mode::Hybrid => 1,
        };
        let confirmed = self.confirmed(&dot);
        if confirmed.len() >= required {
            self.outcomes.push_back(SyncOutcome::Done { request, confirmed });
            return;
        }
        if !self.has_room() {
            // More sync writes committed than may wait (several passed has_room while their
            // commits were in flight): answer this one at once with what is known.
            self.outcomes.push_back(SyncOutcome::TimedOut { request, confirmed, required });
            return;
        }
        let previous = self.waiting.insert(request, Waiting { dot, required, deadline_ms });
        assert!(previous.is_none(), "request id {request} reused while waiting");
        self.deadlines.insert((deadline_ms, request));
    }

    /// DC `dc` is known to have durably applied everything `vector` covers.
    pub fn handle_durable(&mut self, dc: &DcId, vector: &VersionVector) {
        if !self.active.contains(dc) || *dc == self.local {
            return;
        }
        self.durable.entry(dc.clone()).or_default().join(vector);
        let done: Vec<(RequestId, Vec<DcId>)> = self
            .waiting
            .iter()
            .map(|(r, w)| (*r, self.confirmed(&w.dot), w.required))
            .filter(|(_, confirmed, required)| confirmed.len() >= *required)
            .map(|(r, confirmed, _)| (r, confirmed))
            .collect();
        for (request, confirmed) in done {
            let w = self.waiting.remove(&request).expect("listed above");
            self.deadlines.remove(&(w.deadline_ms, request));
            self.outcomes.push_back(SyncOutcome::Done { request, confirmed });
        }
    }

    /// The earliest deadline of a waiting write.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Times out every write whose deadline is at or before `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, request)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let w = self.waiting.remove(&request).expect("every deadline has its write");
            let confirmed = self.confirmed(&w.dot);
            self.outcomes.push_back(SyncOutcome::TimedOut { request, confirmed, required: w.required });
        }
    }

    /// The next finished write.
    pub fn poll_outcome(&mut self) -> Option<SyncOutcome> {
        self.outcomes.pop_front()
    }

    /// Writes waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}
