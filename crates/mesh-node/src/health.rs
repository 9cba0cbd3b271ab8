//! The health-monitor actor of one DC: heartbeats and the failure detector, off the resolver's
//! thread. It runs the engine's [`HealthMonitor`] (the same machine the simulator steps beside
//! each node) on its own timer.
//!
//! Messages:
//! - in, from the resolver: [`HealthMsg::Reset`] when the resolver starts and after this actor
//!   restarted (a monitor resumed from the node's state, the open links and where verdicts go),
//!   then [`HealthMsg::Input`] for every `Effect::Health` in emission order, and
//!   [`HealthMsg::Open`] (the node's `LinkOpen` input together with the link to send on);
//! - in, from itself: [`HealthMsg::Tick`], armed for the monitor's next deadline;
//! - in, from the front ends: [`HealthMsg::Status`] (`/v1/status`, `INFO replication`);
//! - out: heartbeats to each open link's replicator actor (`LinkMsg::Send`), verdicts to the
//!   resolver (`DcMsg::Health`), the `mesh_peer_health`/`_phi`/`_lag*`/`_clock_offset` gauges and
//!   the `peer health` log event.
//!
//! Its mailbox holds at most what the resolver's effects and one timer produce: an input per
//! commit, link change and heartbeat received, each handled in constant time.
//! Before its first [`HealthMsg::Reset`] it has no monitor and ignores inputs: the reset carries
//! everything the inputs before it said.

use crate::link::LinkMsg;
use crate::metrics::{Metrics, PeerHealthObserved};
use crate::pool::LinkRef;
use crate::runtime::{wall, DcMsg};
use mesh_core::DcId;
use mesh_engine::health::{Health, HealthInput, HealthMonitor, HealthOutput, HealthVerdict, PeerStatus};
use mesh_engine::MonoMs;
use mesh_wire::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Messages of the health-monitor actor.
pub enum HealthMsg {
    /// Start over beside the resolver's node: its monitor
    /// (`mesh_engine::node::Node::resume_health_monitor`), the links open now, and the resolver
    /// the verdicts go to.
    Reset {
        /// The monitor.
        monitor: Box<HealthMonitor>,
        /// The open links, by peer.
        links: BTreeMap<DcId, LinkRef>,
        /// The resolver.
        resolver: ActorRef<DcMsg>,
    },
    /// An input from the node (`Effect::Health`), in emission order.
    Input(HealthInput),
    /// The node's `LinkOpen` input for `peer`, with the link its heartbeats go on.
    Open {
        /// The peer.
        peer: DcId,
        /// Its link.
        link: LinkRef,
    },
    /// The monitor may be due: the wake-up armed with this number (older ones are stale).
    Tick(u64),
    /// Every peer's status now (health, phi, lag, clock offset); empty before the first reset.
    Status(RpcReplyPort<BTreeMap<DcId, PeerStatus>>),
    /// Fail with this reason (an operator-forced failure, to test supervision).
    Fail(String),
}

/// What the health actor starts with.
#[derive(Clone)]
pub struct HealthArgs {
    /// This DC.
    pub local: DcId,
    /// The runtime clock's origin (the resolver's: both speak the same [`MonoMs`]).
    pub started: Instant,
    /// The node's instruments.
    pub metrics: Metrics,
}

/// The health actor's state.
pub struct HealthState {
    args: HealthArgs,
    /// `None` until the resolver's first reset.
    monitor: Option<HealthMonitor>,
    links: BTreeMap<DcId, LinkRef>,
    resolver: Option<ActorRef<DcMsg>>,
    /// The number of the armed wake-up.
    armed: u64,
    /// Each peer's health as last logged.
    logged: BTreeMap<DcId, Health>,
}

/// The health-monitor actor. See the module docs.
pub struct HealthActor;

impl HealthActor {
    fn now(state: &HealthState) -> MonoMs {
        MonoMs(state.args.started.elapsed().as_millis() as u64)
    }

    /// Carries out the monitor's outputs: heartbeats to the links, verdicts to the resolver.
    fn outputs(state: &mut HealthState) {
        let now = Self::now(state);
        let Some(monitor) = state.monitor.as_mut() else { return };
        while let Some(output) = monitor.poll_output() {
            match output {
                HealthOutput::Send { to, heartbeat } => {
                    if let Some(link) = state.links.get(&to) {
                        let _ = link.actor.cast(LinkMsg::Send(Message::Heartbeat(heartbeat)));
                    }
                }
                HealthOutput::Verdict(verdict) => {
                    if let HealthVerdict::Peer { peer, health, .. } = &verdict {
                        Self::log_health(&state.args, &mut state.logged, monitor, now, peer, *health);
                    }
                    if let Some(resolver) = &state.resolver {
                        let _ = resolver.cast(DcMsg::Health(verdict));
                    }
                }
            }
        }
    }

    /// Logs a peer's health when it changed since last logged (the verdict a monitor starts
    /// with, down until a first heartbeat, is where the log starts).
    fn log_health(
        args: &HealthArgs,
        logged: &mut BTreeMap<DcId, Health>,
        monitor: &HealthMonitor,
        now: MonoMs,
        peer: &DcId,
        health: Health,
    ) {
        match logged.insert(peer.clone(), health) {
            Some(before) if before != health => {
                let phi =
                    monitor.status(peer, now).map_or(-1.0, |s| if s.phi.is_finite() { s.phi } else { -1.0 });
                tracing::info!(dc = %args.local, %peer, ?health, phi, "peer health");
            }
            _ => {}
        }
    }

    /// Publishes every peer's health, phi, lag and clock offset to the gauges.
    fn observe(state: &HealthState) {
        let Some(monitor) = &state.monitor else { return };
        let now = Self::now(state);
        let peers = monitor
            .peers()
            .filter_map(|peer| {
                let s = monitor.status(peer, now)?;
                Some(PeerHealthObserved {
                    peer: peer.to_string(),
                    health: match s.health {
                        Health::Healthy => 0,
                        Health::Suspect => 1,
                        Health::Down => 2,
                    },
                    phi: Some(s.phi).filter(|p| p.is_finite()),
                    lag_ops: s.lag.map_or(0, |l| l.ops),
                    lag_seconds: s.lag.map_or(0.0, |l| l.ms as f64 / 1000.0),
                    clock_offset_seconds: s.clock_offset_ms.map(|ms| ms as f64 / 1000.0),
                })
            })
            .collect();
        state.args.metrics.observe_health(peers);
    }

    /// Arms a wake-up for the monitor's next deadline.
    fn arm(myself: &ActorRef<HealthMsg>, state: &mut HealthState) {
        let Some(due) = state.monitor.as_ref().and_then(HealthMonitor::poll_timeout) else { return };
        state.armed += 1;
        let number = state.armed;
        let due = state.args.started + Duration::from_millis(due.ms());
        myself.send_after(due.saturating_duration_since(Instant::now()), move || HealthMsg::Tick(number));
    }
}

impl Actor for HealthActor {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        Ok(HealthState {
            args,
            monitor: None,
            links: BTreeMap::new(),
            resolver: None,
            armed: 0,
            logged: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Self::now(state);
        match msg {
            HealthMsg::Reset { monitor, links, resolver } => {
                // Transitions are logged against what was logged before (a resolver restart
                // does not log its peers again), or from the verdicts the monitor starts with.
                for peer in monitor.peers() {
                    if let Some(health) = monitor.health(peer).filter(|_| !state.logged.contains_key(peer)) {
                        state.logged.insert(peer.clone(), health);
                    }
                }
                state.monitor = Some(*monitor);
                state.links = links;
                state.resolver = Some(resolver);
                Self::arm(&myself, state);
            }
            HealthMsg::Input(input) => {
                if let HealthInput::LinkClosed(peer) = &input {
                    state.links.remove(peer);
                }
                if let Some(monitor) = state.monitor.as_mut() {
                    monitor.handle(now, input);
                }
            }
            HealthMsg::Open { peer, link } => {
                state.links.insert(peer.clone(), link);
                if let Some(monitor) = state.monitor.as_mut() {
                    monitor.handle(now, HealthInput::LinkOpen(peer));
                }
            }
            HealthMsg::Tick(number) => {
                if number != state.armed {
                    return Ok(());
                }
                if let Some(monitor) = state.monitor.as_mut() {
                    monitor.handle_timeout(now, wall());
                }
                Self::outputs(state);
                Self::observe(state);
                Self::arm(&myself, state);
                return Ok(());
            }
            HealthMsg::Status(reply) => {
                let statuses = state
                    .monitor
                    .as_ref()
                    .map(|m| m.peers().filter_map(|p| Some((p.clone(), m.status(p, now)?))).collect())
                    .unwrap_or_default();
                let _ = reply.send(statuses);
            }
            HealthMsg::Fail(reason) => return Err(reason.into()),
        }
        Self::outputs(state);
        Ok(())
    }
}
