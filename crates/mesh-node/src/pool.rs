//! The connection-pool actor of one DC: dials, accepted connections and the lifecycle of every
//! link. It supervises one replicator actor ([`crate::link::LinkActor`]) per link.
//!
//! When and where to dial, and which of two links to keep, are the engine's rules
//! (`mesh_engine::pool::DialPolicy` drives the resolver's `Effect::Dial`;
//! [`mesh_engine::pool::keep_existing_link`] settles two links at once); this actor carries them
//! out. Messages:
//! - in: [`PoolMsg::Dial`] and [`PoolMsg::Close`] from the resolver (its `Effect::Dial` and
//!   `Effect::Close`), [`PoolMsg::Accepted`] from the accept loop, [`PoolMsg::Attach`] from a
//!   resolver that (re)started, [`PoolMsg::Links`] and [`PoolMsg::Fail`] for tests and operators;
//! - out, to the resolver, in the order that keeps its view exact: `DcMsg::LinkDown` for a link
//!   that ended (before `DcMsg::Connected` for the link that replaces it), `DcMsg::Connected`,
//!   `DcMsg::DialSuperseded` and `DcMsg::DialFailed`, so each dial reports exactly one outcome
//!   (`Effect::Dial`'s contract). A link the resolver closed is not reported down.
//!
//! A resolver that restarts announces itself ([`PoolMsg::Attach`]): the links announced to the
//! one before are closed, since the new resolver's node starts without links. When the pool
//! itself restarts, its links end with it and the supervisor tells the resolver
//! (`DcMsg::PoolRestarted`), which counts them down and every dial as failed.

use crate::link::{LinkActor, LinkArgs, LinkMsg};
use crate::metrics::Metrics;
use crate::runtime::DcMsg;
use crate::transport::{self, Link};
use mesh_core::{DcId, Topology};
use mesh_wire::CodecConfig;
use opentelemetry::KeyValue;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a dial may take, resolution and handshake included.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The last link number given, in this process (so a restarted pool never reuses one, and the
/// resolver's filter on link numbers keeps rejecting a dead link's late messages).
static LAST_LINK: AtomicU64 = AtomicU64::new(0);

/// A link as the resolver holds it.
#[derive(Clone)]
pub struct LinkRef {
    /// The link's number, unique in this process.
    pub id: u64,
    /// Its replicator actor.
    pub actor: ActorRef<LinkMsg>,
}

/// Messages of the connection pool.
pub enum PoolMsg {
    /// Dial `peer` at `endpoint` for `resolver` (`Effect::Dial`); the outcome goes to it.
    Dial {
        /// The peer.
        peer: DcId,
        /// `host:port`.
        endpoint: String,
        /// Who asked.
        resolver: ActorRef<DcMsg>,
    },
    /// A dial finished.
    Dialed {
        /// The peer.
        peer: DcId,
        /// Who asked.
        resolver: ActorRef<DcMsg>,
        /// The link, or why not.
        result: Result<Box<Link>, String>,
    },
    /// The accept loop accepted a link.
    Accepted(Box<Link>),
    /// Close link `link` to `peer` (`Effect::Close`) if it is still the one up; it is not
    /// reported down.
    Close {
        /// The peer.
        peer: DcId,
        /// The link the resolver closed (a later one to the same peer stays).
        link: u64,
        /// Why, for the log.
        reason: &'static str,
    },
    /// A resolver started: links go to it from now on.
    Attach(ActorRef<DcMsg>),
    /// The live links' replicator actors, by peer.
    Links(RpcReplyPort<Vec<(DcId, ActorRef<LinkMsg>)>>),
    /// Fail with this reason (an operator-forced restart).
    Fail(String),
}

/// What the pool starts with.
#[derive(Clone)]
pub struct PoolArgs {
    /// This DC.
    pub local: DcId,
    /// The topology (the heartbeat interval judges a link alive).
    pub topology: Arc<Topology>,
    /// The QUIC endpoint.
    pub endpoint: quinn::Endpoint,
    /// Frame limits.
    pub codec: CodecConfig,
    /// The node's instruments.
    pub metrics: Metrics,
    /// The resolver at the pool's start, if one runs.
    pub resolver: Option<ActorRef<DcMsg>>,
}

struct PoolLink {
    id: u64,
    actor: ActorRef<LinkMsg>,
    connection: quinn::Connection,
    dialed: bool,
    opened: Instant,
    last_heard_ms: Arc<AtomicU64>,
    /// The resolver it was announced to.
    resolver: ActorRef<DcMsg>,
}

/// The pool's state.
pub struct PoolState {
    args: PoolArgs,
    resolver: Option<ActorRef<DcMsg>>,
    links: BTreeMap<DcId, PoolLink>,
    /// The actors of links this pool ended itself, until they stop: their end is not reported
    /// (again).
    ending: BTreeSet<ractor::ActorId>,
    origin: Instant,
}

/// The connection-pool actor. See the module docs.
pub struct PoolActor;

async fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = endpoint.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint}: no address"))
}

impl PoolActor {
    /// Ends `peer`'s link on purpose and stops its actor. `replaced`: a newer link to the same
    /// peer replaces it (both DCs dialed at once, normal at start, or the peer came back), and the
    /// resolver hears it down now, before the replacement's `Connected`; otherwise the resolver
    /// closed it itself, or is gone, and hears nothing.
    fn end(state: &mut PoolState, peer: &DcId, reason: &'static str, replaced: bool) {
        let Some(link) = state.links.remove(peer) else { return };
        if replaced {
            link.connection.close(3u32.into(), reason.as_bytes());
            Self::report_down(&state.args, peer, &link, reason, false);
        }
        state.ending.insert(link.actor.get_id());
        let _ = link.actor.cast(LinkMsg::Close { code: 3, reason });
    }

    /// Logs `link` to `peer` down for `reason` and tells the resolver it was announced to;
    /// `lost` counts it in `links_lost` (a link that ended by itself, not one replaced).
    fn report_down(args: &PoolArgs, peer: &DcId, link: &PoolLink, reason: &str, lost: bool) {
        if lost {
            args.metrics.links.peer(peer.as_str()).links_lost.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(dc = %args.local, %peer, %reason, "link down");
        let _ = link.resolver.cast(DcMsg::LinkDown { peer: peer.clone(), link: link.id });
    }

    /// A new link (dialed for `resolver`, or accepted): kept, or refused for the one up.
    async fn connected(
        myself: &ActorRef<PoolMsg>,
        state: &mut PoolState,
        link: Link,
        resolver: ActorRef<DcMsg>,
    ) {
        let Link { peer, connection, writer, reader, dialed } = link;
        if let Some(old) = state.links.get(&peer) {
            // Two links at once: both DCs dialed, or the peer restarted and dialed in while the
            // old connection is still open here. A link heard from (or opened) within two
            // heartbeats is alive.
            let window =
                Duration::from_millis(2 * state.args.topology.config.replication.heartbeat_interval_ms);
            let heard = Duration::from_millis(old.last_heard_ms.load(Ordering::Relaxed));
            let alive =
                state.origin.elapsed().saturating_sub(heard) < window || old.opened.elapsed() < window;
            let local = &state.args.local;
            let dialer = |dialed: bool| if dialed { local.clone() } else { peer.clone() };
            if mesh_engine::pool::keep_existing_link(&dialer(old.dialed), &dialer(dialed), alive) {
                tracing::debug!(dc = %local, %peer, "second link refused: one is up (both DCs dialed)");
                connection.close(3u32.into(), b"duplicate");
                let labels = [KeyValue::new("peer", peer.to_string()), KeyValue::new("reason", "duplicate")];
                state.args.metrics.links_refused.add(1, &labels);
                if dialed {
                    let _ = resolver.cast(DcMsg::DialSuperseded(peer));
                }
                return;
            }
            Self::end(state, &peer, "replaced", true);
        }
        let id = LAST_LINK.fetch_add(1, Ordering::Relaxed) + 1;
        let last_heard_ms = Arc::new(AtomicU64::new(state.origin.elapsed().as_millis() as u64));
        let args = LinkArgs {
            local: state.args.local.clone(),
            peer: peer.clone(),
            id,
            connection: connection.clone(),
            writer,
            reader,
            resolver: resolver.clone(),
            metrics: state.args.metrics.clone(),
            last_heard_ms: last_heard_ms.clone(),
            origin: state.origin,
        };
        let actor = match Actor::spawn_linked(None, LinkActor, args, myself.get_cell()).await {
            Ok((actor, _)) => actor,
            Err(e) => {
                tracing::error!(dc = %state.args.local, %peer, error = %e, "starting a link actor failed");
                connection.close(4u32.into(), b"internal error");
                if dialed {
                    let _ = resolver.cast(DcMsg::DialFailed(peer));
                }
                return;
            }
        };
        tracing::info!(dc = %state.args.local, %peer, dialed, "link up");
        let link_ref = LinkRef { id, actor: actor.clone() };
        if resolver.cast(DcMsg::Connected { peer: peer.clone(), link: link_ref }).is_err() {
            // That resolver is gone; the one after it starts without links.
            actor.stop(Some("no resolver".into()));
            return;
        }
        let _ = actor.cast(LinkMsg::Start);
        let opened = Instant::now();
        let link = PoolLink { id, actor, connection, dialed, opened, last_heard_ms, resolver };
        state.links.insert(peer, link);
    }
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let resolver = args.resolver.clone();
        Ok(PoolState {
            args,
            resolver,
            links: BTreeMap::new(),
            ending: BTreeSet::new(),

            origin: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Dial { peer, endpoint, resolver } => {
                let me = myself.clone();
                let (ep, codec) = (state.args.endpoint.clone(), state.args.codec.clone());
                tokio::spawn(async move {
                    let dialed = async {
                        let address = resolve(&endpoint).await?;
                        transport::dial(&ep, address, &peer, &codec).await.map_err(|e| e.to_string())
                    };
                    let result = match tokio::time::timeout(DIAL_TIMEOUT, dialed).await {
                        Ok(result) => result.map(Box::new),
                        Err(_) => Err(format!("no link within {DIAL_TIMEOUT:?}")),
                    };
                    if let Err(ractor::MessagingErr::SendErr(PoolMsg::Dialed { resolver, peer, .. })) =
                        me.cast(PoolMsg::Dialed { peer, resolver, result })
                    {
                        // The pool stopped meanwhile: the dial still reports an outcome.
                        let _ = resolver.cast(DcMsg::DialFailed(peer));
                    }
                });
            }
            PoolMsg::Dialed { peer, resolver, result } => match result {
                // A dial of a resolver that has been replaced: nobody waits for it, and its link
                // must not replace the current resolver's.
                Ok(link) if state.resolver.as_ref().is_none_or(|r| r.get_id() != resolver.get_id()) => {
                    link.connection.close(4u32.into(), b"restarting");
                }
                Ok(link) => Self::connected(&myself, state, *link, resolver).await,
                Err(e) => {
                    tracing::debug!(dc = %state.args.local, %peer, error = %e, "dial failed");
                    let _ = resolver.cast(DcMsg::DialFailed(peer));
                }
            },
            PoolMsg::Accepted(link) => match state.resolver.clone() {
                Some(resolver) => Self::connected(&myself, state, *link, resolver).await,
                None => link.connection.close(4u32.into(), b"starting"),
            },
            PoolMsg::Close { peer, link, reason } => {
                if state.links.get(&peer).is_some_and(|l| l.id == link) {
                    tracing::info!(dc = %state.args.local, %peer, reason, "link closed");
                    Self::end(state, &peer, "closed", false);
                }
            }
            PoolMsg::Attach(resolver) => {
                let stale: Vec<DcId> = state
                    .links
                    .iter()
                    .filter(|(_, l)| l.resolver.get_id() != resolver.get_id())
                    .map(|(p, _)| p.clone())
                    .collect();
                for peer in stale {
                    // The resolver they were announced to is gone: nobody to report to.
                    Self::end(state, &peer, "restarting", false);
                }
                state.resolver = Some(resolver);
            }
            PoolMsg::Links(reply) => {
                let links = state.links.iter().map(|(p, l)| (p.clone(), l.actor.clone())).collect();
                let _ = reply.send(links);
            }
            PoolMsg::Fail(reason) => return Err(reason.into()),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, e) => (cell, Some(e.to_string())),
            _ => return Ok(()),
        };
        if let Some(reason) = &failure {
            tracing::warn!(dc = %state.args.local, %reason, "link actor failed; the link goes down and is dialed again");
        }
        let id = cell.get_id();
        if state.ending.remove(&id) {
            return Ok(());
        }
        // A link that ended by itself (its stream ended, a send failed, or its actor failed).
        let Some(peer) = state.links.iter().find(|(_, l)| l.actor.get_id() == id).map(|(p, _)| p.clone())
        else {
            return Ok(());
        };
        let link = state.links.remove(&peer).expect("found");
        link.connection.close(0u32.into(), b"");
        let reason = link.connection.close_reason().map_or("the stream ended".to_string(), |r| r.to_string());
        Self::report_down(&state.args, &peer, &link, &reason, true);
        Ok(())
    }
}
