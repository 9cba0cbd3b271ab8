//! Connection-pool policy: which endpoint of a peer DC to dial next, and when.
//!
//! Call order: [`DialPolicy::poll_dial`] when [`DialPolicy::poll_timeout`] is due; then exactly
//! one of [`DialPolicy::handle_connected`] or [`DialPolicy::handle_failed`] for that dial; after
//! a connection that was up is lost, [`DialPolicy::handle_failed`] again. Endpoints are tried in
//! priority order, `retry_attempts` times each before the next; delays grow exponentially from
//! `retry_delay_ms` to `retry_delay_max_ms` with jitter from the injected RNG, so DCs that lost a
//! peer together do not redial in step.

use rand::Rng;

/// A dial to make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// The `host:port` to dial.
    pub endpoint: String,
    /// Consecutive failures before this dial (0: first attempt after a success or at start).
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to dial at this time.
    Waiting { due_ms: u64 },
    /// A dial is in progress.
    Dialing,
    /// Connected since this time.
    Connected { since_ms: u64 },
}

/// The dialing policy for one peer DC. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct DialPolicy {
    endpoints: Vec<String>,
    retry_attempts: u32,
    retry_delay_ms: u64,
    retry_delay_max_ms: u64,
    /// Index of the endpoint the next dial uses.
    endpoint: usize,
    /// Failures on the current endpoint since it was chosen.
    failures_here: u32,
    /// Consecutive failures, any endpoint: drives the backoff.
    failures: u32,
    state: State,
}

impl DialPolicy {
    /// A policy for `endpoints` (preferred first, as the topology sorts them), due to dial at
    /// `now_ms`.
    ///
    /// # Panics
    /// If `endpoints` is empty or `retry_attempts` is 0: the topology validation forbids both.
    pub fn new(
        endpoints: Vec<String>,
        retry_attempts: u32,
        retry_delay_ms: u64,
        retry_delay_max_ms: u64,
        now_ms: u64,
    ) -> Self {
        assert!(!endpoints.is_empty(), "a peer DC has at least one endpoint");
        assert!(retry_attempts > 0, "retry_attempts is at least 1");
        assert!(retry_delay_ms <= retry_delay_max_ms, "the first delay is within the maximum");
        Self {
            endpoints,
            retry_attempts,
            retry_delay_ms,
            retry_delay_max_ms,
            endpoint: 0,
            failures_here: 0,
            failures: 0,
            state: State::Waiting { due_ms: now_ms },
        }
    }

    /// When the next dial is due; `None` while dialing or connected.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Waiting { due_ms } => Some(due_ms),
            State::Dialing | State::Connected { .. } => None,
        }
    }

    /// The dial to make, if one is due at `now_ms`. The policy then waits for its outcome.
    pub fn poll_dial(&mut self, now_ms: u64) -> Option<Dial> {
        match self.state {
            State::Waiting { due_ms } if due_ms <= now_ms => {
                self.state = State::Dialing;
                Some(Dial { endpoint: self.endpoints[self.endpoint].clone(), failures: self.failures })
            }
            _ => None,
        }
    }

    /// A link to the peer is up at `now_ms`: this policy's dial succeeded, or the peer dialed in
    /// (then a dial waiting or in flight is superseded). A later reconnect starts from the
    /// preferred endpoint. The backoff resets only once the connection has stayed up for
    /// `retry_delay_max_ms`, so a link that connects and is then refused (a Hello mismatch) or
    /// drops at once keeps backing off. Nothing changes if a link was already up.
    pub fn handle_connected(&mut self, now_ms: u64) {
        if self.is_connected() {
            return;
        }
        self.state = State::Connected { since_ms: now_ms };
        self.failures_here = 0;
        self.endpoint = 0;
    }

    /// The dial failed, or the connection was lost. Schedules the next dial after an
    /// exponentially growing delay with jitter drawn from `rng`, moving to the next endpoint
    /// after `retry_attempts` failures on this one. Returns when the next dial is due.
    pub fn handle_failed(&mut self, now_ms: u64, rng: &mut impl Rng) -> u64 {
        assert!(
            matches!(self.state, State::Dialing | State::Connected { .. }),
            "handle_failed follows a dial or a connection"
        );
        match self.state {
            State::Dialing => {
                self.failures += 1;
                self.failures_here += 1;
                if self.failures_here >= self.retry_attempts {
                    self.endpoint = (self.endpoint + 1) % self.endpoints.len();
                    self.failures_here = 0;
                }
            }
            State::Connected { since_ms } if now_ms.saturating_sub(since_ms) >= self.retry_delay_max_ms => {
                self.failures = 0;
            }
            // Up only briefly: count it as a failure, so a flapping link backs off.
            State::Connected { .. } => self.failures += 1,
            State::Waiting { .. } => unreachable!("asserted above"),
        }
        // A lost connection redials after the base delay (with jitter); failed dials back off.
        let exponent = self.failures.saturating_sub(1).min(32);
        let delay_ms = self.retry_delay_ms.saturating_mul(1 << exponent).min(self.retry_delay_max_ms);
        // Equal jitter: at least half the delay, so a redial storm cannot collapse to zero.
        let jittered_ms = delay_ms / 2 + rng.random_range(0..=delay_ms - delay_ms / 2);
        let due_ms = now_ms + jittered_ms;
        self.state = State::Waiting { due_ms };
        due_ms
    }

    /// Whether a dial is in progress.
    pub fn is_dialing(&self) -> bool {
        self.state == State::Dialing
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }
}

/// Two links to one peer at once (both DCs dialed while neither had a link, or a peer that
/// restarted dialed in while this DC still holds its old, now dead, connection): whether to keep
/// the link already up (`true`) or replace it with the new one. A live link dialed by the DC
/// with the lower id wins, so both ends of a simultaneous dial keep the same connection; a link
/// that is no longer `alive` (nothing heard on it lately, and not just opened) is replaced, and
/// so is one dialed by the same DC as the new one (that DC dialed again: it restarted or lost
/// its end). `existing_dialed_by` and `new_dialed_by` name the DC that dialed each link.
pub fn keep_existing_link(
    existing_dialed_by: &mesh_core::DcId,
    new_dialed_by: &mesh_core::DcId,
    alive: bool,
) -> bool {
    alive && existing_dialed_by < new_dialed_by
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy(now_ms: u64) -> DialPolicy {
        DialPolicy::new(vec!["a:1".into(), "b:1".into()], 2, 100, 1_000, now_ms)
    }

    #[test]
    fn the_first_dial_is_due_at_once_and_uses_the_preferred_endpoint() {
        let mut p = policy(50);
        assert_eq!(p.poll_timeout(), Some(50));
        assert_eq!(p.poll_dial(49), None);
        assert_eq!(p.poll_dial(50), Some(Dial { endpoint: "a:1".into(), failures: 0 }));
        assert_eq!(p.poll_timeout(), None, "no second dial while one is in flight");
        assert_eq!(p.poll_dial(1_000), None);
    }

    #[test]
    fn a_link_the_peer_dialed_in_supersedes_a_waiting_or_running_dial() {
        // Waiting to dial when the peer dials in: no dial is due any more.
        let mut p = policy(0);
        p.handle_connected(0);
        assert!(p.is_connected());
        assert_eq!(p.poll_dial(10), None);
        // Dialing when the peer dials in, then the dial also succeeds: still one link, no panic.
        let mut p = policy(0);
        p.poll_dial(0).unwrap();
        p.handle_connected(5);
        p.handle_connected(6);
        assert!(p.is_connected() && !p.is_dialing());
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_rotate_endpoints() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = policy(0);
        let mut now = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let dial = p.poll_dial(now).expect("due");
            let due = p.handle_failed(now, &mut rng);
            seen.push((dial.endpoint, due - now));
            now = due;
        }
        let endpoints: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(endpoints, ["a:1", "a:1", "b:1", "b:1", "a:1", "a:1"], "retry_attempts = 2 per endpoint");
        // Delays: base 100 doubling to the 1,000 cap, each within [half, full].
        for (i, (_, delay)) in seen.iter().enumerate() {
            let full = (100u64 << i).min(1_000);
            assert!(
                (full / 2..=full).contains(delay),
                "attempt {i}: delay {delay} outside [{}, {full}]",
                full / 2
            );
        }
    }

    #[test]
    fn a_success_resets_the_backoff_and_the_endpoint() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = policy(0);
        let mut now = 0;
        for _ in 0..3 {
            p.poll_dial(now).unwrap();
            now = p.handle_failed(now, &mut rng);
        }
        let dial = p.poll_dial(now).unwrap();
        assert_eq!(dial, Dial { endpoint: "b:1".into(), failures: 3 });
        p.handle_connected(now);
        assert!(p.is_connected());
        // The connection stayed up long enough, then was lost: the redial comes after the base
        // delay, at the preferred endpoint.
        now += 1_000;
        let due = p.handle_failed(now, &mut rng);
        assert!((50..=100).contains(&(due - now)));
        assert_eq!(p.poll_dial(due), Some(Dial { endpoint: "a:1".into(), failures: 0 }));
    }

    #[test]
    fn a_link_that_drops_right_after_connecting_keeps_backing_off() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = policy(0);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            p.poll_dial(now).unwrap();
            p.handle_connected(now);
            let due = p.handle_failed(now + 5, &mut rng);
            delays.push(due - (now + 5));
            now = due;
        }
        assert!(delays[4] >= 500, "still redialling every {delays:?} ms");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let schedule = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut p = policy(0);
            let mut now = 0;
            (0..8)
                .map(|_| {
                    p.poll_dial(now).unwrap();
                    now = p.handle_failed(now, &mut rng);
                    now
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(3), schedule(3));
        assert_ne!(schedule(3), schedule(4));
    }

    #[test]
    fn of_two_live_links_both_ends_keep_the_one_the_lower_dc_dialed_and_a_dead_or_redialed_one_goes() {
        let (a, b) = (mesh_core::DcId::new("a").unwrap(), mesh_core::DcId::new("b").unwrap());
        // A simultaneous dial: a keeps its own (existing a-dialed, new b-dialed), b replaces its
        // own with a's (existing b-dialed, new a-dialed): both end on the link a dialed.
        assert!(super::keep_existing_link(&a, &b, true));
        assert!(!super::keep_existing_link(&b, &a, true));
        // The existing link is silent: replaced whoever dialed it.
        assert!(!super::keep_existing_link(&a, &b, false));
        // The same DC dialed again (it restarted, or lost its end): replaced.
        assert!(!super::keep_existing_link(&b, &b, true));
        assert!(!super::keep_existing_link(&a, &a, true));
    }
}
