//! The replicator actor of one peer link: it owns the link's QUIC stream and does that peer's
//! frame encoding, compression, sending and decoding, off the conflict resolver's thread (so two
//! cores work in parallel: one resolves and commits, the others frame and compress).
//!
//! What to send and when is the engine's (`mesh_engine::replicator::Replicator`, driven by the
//! resolver's `Node`); this actor only moves messages. Messages:
//! - in: [`LinkMsg::Start`] from the connection pool once it has announced the link to the
//!   resolver (so nothing read on the link reaches the resolver before the link does),
//!   [`LinkMsg::Send`] from the resolver (in order: a link keeps the order of what it is given),
//!   [`LinkMsg::Close`] from the pool, [`LinkMsg::Fail`] (an operator-forced failure, to test
//!   supervision);
//! - out: every decoded message goes to the resolver as `DcMsg::Peer`, carrying one of the
//!   link's [`INBOUND_CREDITS`]: the reader waits for a credit before it reads the next frame,
//!   so a resolver that falls behind stops the reads, QUIC's flow control stops the peer, and no
//!   message is dropped. What the resolver gives the link is bounded by the protocol itself (the
//!   replicator's window of `inflight_batches_max` batches, one snapshot chunk per request, an
//!   ack per batch received, a heartbeat per interval).
//!
//! The link ends when its stream ends, a send fails, or it is closed; the connection pool,
//! which supervises it, then reports it down to the resolver (at most once, and never for a link
//! the resolver closed itself).

use crate::metrics::Metrics;
use crate::runtime::DcMsg;
use crate::transport::{FrameReader, FrameWriter};
use mesh_core::DcId;
use mesh_wire::Message;
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Decoded messages of one link waiting in the resolver's mailbox at most.
pub const INBOUND_CREDITS: usize = 1_024;

/// Messages of a replicator actor.
pub enum LinkMsg {
    /// Start reading. The pool sends it once it has announced the link to the resolver, so the
    /// resolver hears of the link before any message that came on it.
    Start,
    /// Encode, compress and send a message to the peer.
    Send(Message),
    /// Close the connection with this QUIC error code and reason, and stop.
    Close {
        /// The application error code.
        code: u32,
        /// The reason sent to the peer.
        reason: &'static str,
    },
    /// Fail with this reason (an operator-forced failure; the link goes down and is dialed
    /// again).
    Fail(String),
}

/// What a replicator actor starts with.
pub struct LinkArgs {
    /// This DC.
    pub local: DcId,
    /// The peer.
    pub peer: DcId,
    /// The link's number, unique in this process.
    pub id: u64,
    /// The connection.
    pub connection: quinn::Connection,
    /// Frames out.
    pub writer: FrameWriter,
    /// Frames in.
    pub reader: FrameReader,
    /// Where decoded messages go.
    pub resolver: ActorRef<DcMsg>,
    /// The node's instruments.
    pub metrics: Metrics,
    /// When a message last came on the link, in ms since `origin` (read by the pool to judge a
    /// link alive).
    pub last_heard_ms: Arc<AtomicU64>,
    /// The origin of `last_heard_ms`.
    pub origin: Instant,
}

/// The replicator actor's state.
pub struct LinkState {
    peer: DcId,
    connection: quinn::Connection,
    writer: FrameWriter,
    metrics: Metrics,
    /// The link's byte counters for status, and its labels for the metrics, taken once.
    counters: Arc<crate::metrics::LinkCounter>,
    wire: [KeyValue; 2],
    raw: [KeyValue; 2],
    /// What the reader needs, until [`LinkMsg::Start`].
    unstarted: Option<Reader>,
    reader: Option<AbortOnDrop>,
}

/// The reader task, aborted when the actor's state goes, also when the actor is killed (its
/// supervisor stopped) and `post_stop` does not run.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reader {
    local: DcId,
    id: u64,
    reader: FrameReader,
    resolver: ActorRef<DcMsg>,
    last_heard_ms: Arc<AtomicU64>,
    origin: Instant,
}

/// The labels of a link's byte counts on the wire and before compression
/// (`mesh_bytes_sent_total` and `mesh_bytes_received_total`).
fn byte_labels(peer: &DcId) -> ([KeyValue; 2], [KeyValue; 2]) {
    let peer = KeyValue::new("peer", peer.to_string());
    ([peer.clone(), KeyValue::new("kind", "wire")], [peer, KeyValue::new("kind", "raw")])
}

/// The replicator actor of one link. See the module docs.
pub struct LinkActor;

impl LinkActor {
    /// The reader task: decodes frames and hands each to the resolver with a credit.
    fn read(myself: ActorRef<LinkMsg>, peer: DcId, metrics: Metrics, r: Reader) -> JoinHandle<()> {
        let Reader { local, id, mut reader, resolver, last_heard_ms, origin } = r;
        let credits = Arc::new(Semaphore::new(INBOUND_CREDITS));
        tokio::spawn(async move {
            let (wire, raw) = byte_labels(&peer);
            let reason = loop {
                let Ok(credit) = credits.clone().acquire_owned().await else { break "closed".to_string() };
                let message = match reader.next().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break "the peer ended the stream".to_string(),
                    Err(e) => break e.to_string(),
                };
                last_heard_ms.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
                let (wire_bytes, raw_bytes) = reader.take_counts();
                if matches!(message, Message::SnapshotChunk(_)) {
                    metrics.transfer_bytes.add(wire_bytes, &[KeyValue::new("direction", "received")]);
                }
                metrics.bytes_received.add(wire_bytes, &wire);
                metrics.bytes_received.add(raw_bytes, &raw);
                let message = DcMsg::Peer { peer: peer.clone(), link: id, message, credit: Some(credit) };
                if resolver.cast(message).is_err() {
                    break "the resolver stopped".to_string();
                }
            };
            tracing::debug!(dc = %local, %peer, %reason, "link reader ended");
            myself.stop(Some(reason));
        })
    }
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        let LinkArgs {
            local,
            peer,
            id,
            connection,
            writer,
            reader,
            resolver,
            metrics,
            last_heard_ms,
            origin,
        } = args;
        let unstarted = Some(Reader { local, id, reader, resolver, last_heard_ms, origin });
        let counters = metrics.links.peer(peer.as_str());
        let (wire, raw) = byte_labels(&peer);
        Ok(LinkState { peer, connection, writer, metrics, counters, wire, raw, unstarted, reader: None })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LinkMsg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        state.reader = None;
        state.connection.close(0u32.into(), b"");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LinkMsg::Start => {
                if let Some(reader) = state.unstarted.take() {
                    let task = Self::read(myself, state.peer.clone(), state.metrics.clone(), reader);
                    state.reader = Some(AbortOnDrop(task));
                }
            }
            LinkMsg::Send(message) => match state.writer.send(&message).await {
                Ok((wire_bytes, raw_bytes)) => {
                    let metrics = &state.metrics;
                    if matches!(message, Message::SnapshotChunk(_)) {
                        metrics.transfer_bytes.add(wire_bytes as u64, &[KeyValue::new("direction", "sent")]);
                    }
                    metrics.bytes_sent.add(wire_bytes as u64, &state.wire);
                    metrics.bytes_sent.add(raw_bytes as u64, &state.raw);
                    state.counters.wire_bytes.fetch_add(wire_bytes as u64, Ordering::Relaxed);
                    state.counters.raw_bytes.fetch_add(raw_bytes as u64, Ordering::Relaxed);
                }
                Err(e) => myself.stop(Some(format!("sending failed: {e}"))),
            },
            LinkMsg::Close { code, reason } => {
                state.connection.close(code.into(), reason.as_bytes());
                myself.stop(Some(reason.to_string()));
            }
            LinkMsg::Fail(reason) => {
                state.reader = None;
                state.connection.close(4u32.into(), b"link actor failed");
                return Err(reason.into());
            }
        }
        Ok(())
    }
}
