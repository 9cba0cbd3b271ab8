//! The Redis protocol front end of one DC (RESP2 and RESP3): Redis clients, `redis-cli` and
//! `redis-benchmark` talk to mesh unchanged. docs/resp.md lists every command, its mapping onto
//! the keyspace's strategy, the key rule and the differences from Redis.
//!
//! Frames are decoded and encoded by the `redis-protocol` crate. Each connection is one task
//! that repeats: read what the socket has, take up to `resp.max_pipeline` complete commands,
//! hand them to the DC actor grouped (a run of writes as one `WriteBatch`, so one group commit;
//! a run of reads as one `Read`), and write every answer back, in order, before reading again.
//! A client that does not read its answers is therefore not read either (its own backpressure)
//! and holds nothing of anyone else's; an unfinished command longer than
//! `resp.max_request_bytes` is refused and the connection closed, so a client's buffer here is
//! bounded.
//!
//! Keys: the part before the first `:` names the keyspace (`users:alice` is key `alice` of
//! keyspace `users`); a key whose prefix names no keyspace goes whole to `resp.default_keyspace`
//! when one is configured.

use crate::http::{dot_text, write_error};
use crate::runtime::{call, CallError, DcMsg, DcStatus, ReadAnswer, WriteDone, WriteResult};
use bytes::{Bytes, BytesMut};
use mesh_core::topology::RespSettings;
use mesh_core::{DcId, Key, Keyspace, OpKind, ReadValue, Topology, ValueKind, VersionVector};
use mesh_engine::node::{NodeWriteError, WriteOptions};
use mesh_engine::resolver::{WriteRequest, WriteSummary};
use mesh_engine::sync::SyncOutcome;
use ractor::ActorRef;
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a group of writes may wait for the DC (sync writes wait up to their timeout).
const WRITE_WAIT: Duration = Duration::from_secs(60);
/// How long a read or a status request may wait for the DC.
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long, and how many bytes at most, input is discarded after a protocol error ([`linger`]).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 64 << 20;
/// Replies are written to the socket as soon as this many bytes of them are ready.
const FLUSH_BYTES: usize = 1 << 20;
/// Most keys one read of the DC takes (a run of reads is cut there).
const READ_RUN_KEYS: usize = 64;
/// Most keys (or key-value pairs) of one MGET, EXISTS, DEL or MSET.
const KEYS_PER_COMMAND_MAX: usize = 1_024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

/// What every connection of one DC's RESP front end shares.
pub struct RespServer {
    dc: watch::Receiver<Option<ActorRef<DcMsg>>>,
    token: String,
    topology: Arc<Topology>,
    local: DcId,
    settings: RespSettings,
    default_keyspace: Option<Keyspace>,
    connections: AtomicUsize,
    next_client: AtomicU64,
    started: Instant,
}

impl RespServer {
    /// A front end for DC `local`, reaching its live actor through `dc`; clients authenticate
    /// with `token` (the API token).
    pub fn new(
        dc: watch::Receiver<Option<ActorRef<DcMsg>>>,
        token: String,
        topology: Arc<Topology>,
        local: DcId,
    ) -> Arc<Self> {
        let settings = topology.config.resp.clone();
        let default_keyspace = settings
            .default_keyspace
            .as_ref()
            .map(|k| Keyspace::new(k.clone()).expect("validated with the topology"));
        Arc::new(Self {
            dc,
            token,
            topology,
            local,
            settings,
            default_keyspace,
            connections: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            started: Instant::now(),
        })
    }

    /// Accepts connections on `listener` until the task is dropped; each connection runs as its
    /// own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let _ = socket.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                if server.connections.fetch_add(1, Ordering::SeqCst) >= server.settings.max_connections {
                    server.connections.fetch_sub(1, Ordering::SeqCst);
                    let mut socket = socket;
                    let _ = socket.write_all(b"-ERR max number of clients reached\r\n").await;
                    return;
                }
                let id = server.next_client.fetch_add(1, Ordering::Relaxed);
                let _ = Connection::new(server.clone(), id).run(socket).await;
                server.connections.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// A reply, encoded as RESP2 or RESP3 by the connection's protocol.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(&'static str),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
    /// RESP3 map; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 set; an array in RESP2.
    Set(Vec<Reply>),
}

impl Reply {
    fn ok() -> Self {
        Reply::Simple("OK")
    }

    fn text(s: impl Into<String>) -> Self {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// An error reply: `code` is its first word (`ERR`, `WRONGTYPE`, …), as Redis writes them.
    fn err(code: &str, message: impl std::fmt::Display) -> Self {
        // Client bytes end up in messages (keys, commands); a CR or LF would end the error
        // line early and forge the next reply, so they become spaces, as Redis does.
        let text = format!("{code} {message}").replace(['\r', '\n'], " ");
        Reply::Error(text)
    }

    fn wrong_type(keyspace: &Keyspace, kind: ValueKind) -> Self {
        Reply::err(
            "WRONGTYPE",
            format!(
                "Operation against a key holding the wrong kind of value (keyspace '{keyspace}' holds {})",
                kind_name(kind)
            ),
        )
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.clone().into()),
            Reply::Int(i) => Frame2::Integer(*i),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Nil => Frame2::Null,
            Reply::Array(items) | Reply::Set(items) => {
                Frame2::Array(items.iter().map(Reply::to_resp2).collect())
            }
            Reply::Map(pairs) => {
                Frame2::Array(pairs.iter().flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()]).collect())
            }
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
            Reply::Simple(s) => {
                Frame3::SimpleString { data: Bytes::from_static(s.as_bytes()), attributes: None }
            }
            Reply::Error(e) => Frame3::SimpleError { data: e.clone().into(), attributes: None },
            Reply::Int(i) => Frame3::Number { data: *i, attributes: None },
            Reply::Bulk(b) => Frame3::BlobString { data: b.clone(), attributes: None },
            Reply::Nil => Frame3::Null,
            Reply::Array(items) => {
                Frame3::Array { data: items.iter().map(Reply::to_resp3).collect(), attributes: None }
            }
            Reply::Set(items) => {
                Frame3::Set { data: items.iter().map(Reply::to_resp3).collect(), attributes: None }
            }
            Reply::Map(pairs) => Frame3::Map {
                data: pairs.iter().map(|(k, v)| (k.to_resp3(), v.to_resp3())).collect(),
                attributes: None,
            },
        }
    }
}

fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Register => "registers (GET/SET)",
        ValueKind::Counter => "counters (INCR/DECR/GET)",
        ValueKind::Set => "sets (SADD/SREM/SMEMBERS)",
    }
}

/// One command of the table: Redis' `COMMAND` fields (name, arity: exact when positive, at least
/// its absolute value when negative, flags, first and last key position, key step) and a
/// summary for `COMMAND DOCS`.
struct CommandSpec {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    summary: &'static str,
) -> CommandSpec {
    CommandSpec { name, arity, flags, keys, summary }
}

const W: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["fast", "no-auth", "loading", "stale"];
const A: &[&str] = &["loading", "stale"];

/// Every command this front end answers.
const COMMANDS: &[CommandSpec] = &[
    spec("ping", -1, C, (0, 0, 0), "Returns PONG, or the argument."),
    spec("echo", 2, A, (0, 0, 0), "Returns the argument."),
    spec("quit", -1, C, (0, 0, 0), "Closes the connection after answering OK."),
    spec(
        "hello",
        -1,
        C,
        (0, 0, 0),
        "Chooses RESP2 or RESP3, optionally authenticates; returns server facts.",
    ),
    spec("auth", -2, C, (0, 0, 0), "Authenticates the connection with the node's API token."),
    spec("select", 2, A, (0, 0, 0), "Selects database 0 (the only one)."),
    spec("client", -2, A, (0, 0, 0), "CLIENT ID, SETNAME, GETNAME, SETINFO."),
    spec("command", -1, A, (0, 0, 0), "Describes the commands (COUNT, DOCS, INFO, LIST)."),
    spec("info", -1, A, (0, 0, 0), "Server, clients, replication (a line per peer DC) and mesh sections."),
    spec("dbsize", 1, R, (0, 0, 0), "Number of keys this DC holds."),
    spec("config", -2, A, (0, 0, 0), "CONFIG GET of the parameters clients probe (save, appendonly, ...)."),
    spec("get", 2, R, (1, 1, 1), "Reads a register (or a counter's value)."),
    spec("mget", -2, R, (1, -1, 1), "Reads several registers."),
    spec("set", -3, W, (1, 1, 1), "Writes a register (no options)."),
    spec("mset", -3, W, (1, -1, 2), "Writes several registers, committed together."),
    spec("del", -2, &["write"], (1, -1, 1), "Deletes registers; returns how many had a value."),
    spec("exists", -2, R, (1, -1, 1), "How many of the keys hold a value."),
    spec("incr", 2, W, (1, 1, 1), "Adds 1 to a counter; returns its value here."),
    spec("incrby", 3, W, (1, 1, 1), "Adds to a counter; returns its value here."),
    spec("decr", 2, W, (1, 1, 1), "Subtracts 1 from a counter; returns its value here."),
    spec("decrby", 3, W, (1, 1, 1), "Subtracts from a counter; returns its value here."),
    spec("sadd", -3, W, (1, 1, 1), "Adds members to a set; returns how many were new here."),
    spec(
        "srem",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "Removes members from a set; returns how many were present here.",
    ),
    spec("smembers", 2, &["readonly"], (1, 1, 1), "A set's members."),
    spec("sismember", 3, R, (1, 1, 1), "Whether a member is in a set."),
    spec("scard", 2, R, (1, 1, 1), "A set's size."),
    spec(
        "wait",
        3,
        &[],
        (0, 0, 0),
        "Waits until N other DCs durably hold this connection's writes; returns how many do.",
    ),
    spec(
        "mesh.get",
        2,
        R,
        (1, 1, 1),
        "Every concurrent value of a register with the context that supersedes them.",
    ),
    spec(
        "mesh.put",
        4,
        W,
        (1, 1, 1),
        "Writes a register with a context from MESH.GET, resolving its siblings.",
    ),
];

fn command_spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// RESP version of a connection's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Resp2,
    Resp3,
}

/// How a write command's reply comes from its writes' results.
#[derive(Debug, Clone, Copy)]
enum WriteReply {
    /// `+OK` when every write was taken (SET, MSET, MESH.PUT).
    Ok,
    /// The sum of what the writes report ([`WriteSummary`]): INCR's value here after it,
    /// the members SADD/SREM changed, the keys DEL found with a value.
    Sum,
}

/// How a group of reads' answers make the command's reply.
#[derive(Debug, Clone)]
enum ReadReply {
    Get,
    MGet,
    Exists,
    SMembers,
    SIsMember(Bytes),
    SCard,
    MeshGet,
}

/// One command, ready to run.
enum Step {
    /// Its answer is known already.
    Done(Reply),
    /// Writes to commit; answered from their results.
    Write(Vec<WriteRequest>, WriteReply),
    /// Keys to read; answered from their states.
    Read(Vec<(Keyspace, Key)>, ReadReply),
    /// `WAIT replicas timeout_ms`.
    Wait { replicas: usize, timeout_ms: u64 },
    /// `INFO` with these sections (lower case; empty: every one).
    Info(Vec<String>),
    /// `DBSIZE`.
    DbSize,
}

/// One client connection.
struct Connection {
    server: Arc<RespServer>,
    id: u64,
    name: Option<Bytes>,
    authenticated: bool,
    proto: Proto,
    /// The highest seq of this DC among the writes this connection made (for WAIT).
    last_seq: u64,
    quit: bool,
}

impl Connection {
    fn new(server: Arc<RespServer>, id: u64) -> Self {
        Self { server, id, name: None, authenticated: false, proto: Proto::Resp2, last_seq: 0, quit: false }
    }

    async fn run(mut self, mut socket: TcpStream) -> std::io::Result<()> {
        let settings = self.server.settings.clone();
        let mut input = BytesMut::with_capacity(READ_CHUNK);
        let mut output = BytesMut::new();
        let mut framer = Framer::default();
        loop {
            // Take the complete commands buffered, up to a pipeline's worth.
            let mut commands = Vec::new();
            let mut broken = None;
            while commands.len() < settings.max_pipeline {
                match framer.next(&input, &settings) {
                    Ok(Some(len)) => {
                        let mut command = input.split_to(len);
                        match redis_protocol::resp2::decode::decode_bytes_mut(&mut command) {
                            Ok(Some((frame, _, _))) => commands.push(frame),
                            Ok(None) => unreachable!("the framer found a whole command"),
                            Err(e) => {
                                broken = Some(format!("Protocol error: {}", e.details()));
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(message) => {
                        broken = Some(format!("Protocol error: {message}"));
                        break;
                    }
                }
            }
            if !commands.is_empty() {
                self.handle(commands, &mut socket, &mut output).await?;
            }
            if let Some(message) = &broken {
                // As Redis does: say why, then close (the stream cannot be resynchronised).
                encode(&mut output, self.proto, &Reply::err("ERR", message));
                self.quit = true;
            }
            flush(&mut socket, &mut output).await?;
            if self.quit {
                socket.shutdown().await?;
                if broken.is_some() {
                    linger(&mut socket).await;
                }
                return Ok(());
            }
            // More complete commands may be buffered beyond one pipeline's worth.
            if commands_pending(&mut framer, &input, &settings) {
                continue;
            }
            input.reserve(READ_CHUNK);
            if socket.read_buf(&mut input).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Runs a pipeline's commands in order, writing their replies into `output` (and to the
    /// socket whenever it holds more than [`FLUSH_BYTES`], so replies never pile up). Each
    /// command is planned when its turn comes, so AUTH, HELLO and QUIT act in pipeline order;
    /// consecutive writes go to the DC as one batch, consecutive reads as one read (at most
    /// [`READ_RUN_KEYS`] keys).
    async fn handle(
        &mut self,
        frames: Vec<Frame2>,
        socket: &mut TcpStream,
        output: &mut BytesMut,
    ) -> std::io::Result<()> {
        let mut run: Vec<(Proto, Step)> = Vec::new();
        for frame in frames {
            // Nothing after QUIT runs.
            if self.quit {
                break;
            }
            let step = self.plan(frame);
            let keys = |run: &[(Proto, Step)]| {
                run.iter()
                    .map(|(_, s)| if let Step::Read(keys, _) = s { keys.len() } else { 0 })
                    .sum::<usize>()
            };
            let joins = run.last().is_some_and(|(_, last)| match (last, &step) {
                (Step::Write(..), Step::Write(..)) => true,
                (Step::Read(..), Step::Read(..)) => keys(&run) < READ_RUN_KEYS,
                _ => false,
            });
            if !joins && !run.is_empty() {
                self.run_steps(std::mem::take(&mut run), socket, output).await?;
            }
            run.push((self.proto, step));
        }
        if !run.is_empty() {
            self.run_steps(run, socket, output).await?;
        }
        Ok(())
    }

    /// Runs one run of steps of one kind and encodes their replies.
    async fn run_steps(
        &mut self,
        mut steps: Vec<(Proto, Step)>,
        socket: &mut TcpStream,
        output: &mut BytesMut,
    ) -> std::io::Result<()> {
        let mut replies: Vec<Option<Reply>> = vec![None; steps.len()];
        match &steps[0].1 {
            Step::Write(..) => self.run_writes(&mut steps, &mut replies).await,
            Step::Read(..) => self.run_reads(&mut steps, &mut replies).await,
            _ => {
                for ((_, step), slot) in steps.iter().zip(replies.iter_mut()) {
                    *slot = Some(self.run_one(step, socket).await);
                }
            }
        }
        for ((proto, _), reply) in steps.iter().zip(replies) {
            encode(output, *proto, &reply.expect("every step answered"));
        }
        if output.len() >= FLUSH_BYTES {
            flush(socket, output).await?;
        }
        Ok(())
    }

    /// A step that is neither a write nor a read.
    async fn run_one(&self, step: &Step, socket: &mut TcpStream) -> Reply {
        match step {
            Step::Done(reply) => reply.clone(),
            Step::Wait { replicas, timeout_ms } => {
                // A client that goes away stops waiting (and frees its connection slot).
                tokio::select! {
                    reply = self.wait(*replicas, *timeout_ms) => reply,
                    () = closed(socket) => Reply::err("ERR", "the client went away"),
                }
            }
            Step::Info(sections) => self.info(sections).await,
            Step::DbSize => match self.ask(DcMsg::KeyCount, READ_WAIT).await {
                Ok(Ok(n)) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Ok(Err(e)) => Reply::err("ERR", format!("storage: {e}")),
                Err(reply) => reply,
            },
            Step::Write(..) | Step::Read(..) => {
                unreachable!("runs of writes and reads go to the DC together")
            }
        }
    }

    /// Asks the DC actor; an error reply when it cannot answer.
    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> DcMsg,
        timeout: Duration,
    ) -> Result<T, Reply> {
        call(&self.server.dc, build, timeout).await.map_err(|e| match e {
            CallError::Starting => Reply::err("LOADING", e),
            CallError::Unavailable(_) => Reply::err("ERR", e),
        })
    }

    /// A run of write steps: their writes as one `WriteBatch` (one group commit), then each
    /// step's reply from its writes' results.
    async fn run_writes(&mut self, steps: &mut [(Proto, Step)], replies: &mut [Option<Reply>]) {
        let mut writes = Vec::new();
        let mut sizes = Vec::with_capacity(steps.len());
        for (_, step) in steps.iter_mut() {
            if let Step::Write(requests, _) = step {
                sizes.push(requests.len());
                writes.extend(std::mem::take(requests).into_iter().map(|w| (w, WriteOptions::default())));
            }
        }
        let results = match self.ask(|reply| DcMsg::WriteBatch { writes, reply }, WRITE_WAIT).await {
            Ok(results) => results,
            Err(reply) => {
                replies.iter_mut().for_each(|r| *r = Some(reply.clone()));
                return;
            }
        };
        let mut results = results.into_iter();
        for (((_, step), size), slot) in steps.iter().zip(sizes).zip(replies.iter_mut()) {
            let Step::Write(_, how) = step else { unreachable!("a run of writes") };
            let mine: Vec<WriteResult> = results.by_ref().take(size).collect();
            *slot = Some(self.write_reply(*how, mine));
        }
    }

    /// The reply of one write command from its writes' results: the first refusal or timeout
    /// if any (saying how many of its writes were taken), else what `how` asks for.
    fn write_reply(&mut self, how: WriteReply, results: Vec<WriteResult>) -> Reply {
        let total = results.len();
        let mut failure = None;
        let (mut taken, mut sum) = (0usize, 0i64);
        for result in results {
            match result {
                Ok(WriteDone { dot, outcome, summary }) => {
                    taken += 1;
                    if dot.origin == self.server.local {
                        self.last_seq = self.last_seq.max(dot.seq);
                    }
                    if let SyncOutcome::TimedOut { confirmed, required, .. } = &outcome {
                        failure.get_or_insert_with(|| {
                            Reply::err(
                                "TIMEOUT",
                                format!(
                                    "write {} committed here, but only {} of the {required} DCs required confirmed in time; it still replicates",
                                    dot_text(&dot),
                                    confirmed.len()
                                ),
                            )
                        });
                    }
                    sum = sum.saturating_add(match summary {
                        Some(WriteSummary::Counter(value)) => value,
                        Some(WriteSummary::Members(n)) => i64::try_from(n).unwrap_or(i64::MAX),
                        Some(WriteSummary::Delete { existed }) => i64::from(existed),
                        Some(WriteSummary::Put) | None => 0,
                    });
                }
                Err(e) => {
                    failure.get_or_insert_with(|| refusal(e));
                }
            }
        }
        if let Some(Reply::Error(message)) = failure {
            return Reply::Error(if total > 1 {
                format!("{message} ({taken} of {total} writes taken)")
            } else {
                message
            });
        }
        match how {
            WriteReply::Ok => Reply::ok(),
            WriteReply::Sum => Reply::Int(sum),
        }
    }

    /// A run of read steps: one `Read` for all their keys, then each step's reply.
    async fn run_reads(&mut self, steps: &mut [(Proto, Step)], replies: &mut [Option<Reply>]) {
        let mut keys = Vec::new();
        let mut sizes = Vec::with_capacity(steps.len());
        for (_, step) in steps.iter_mut() {
            if let Step::Read(ks, _) = step {
                sizes.push(ks.len());
                keys.extend(std::mem::take(ks));
            }
        }
        let asked: Vec<(Keyspace, Key)> = keys.clone();
        let answers = match self.ask(|reply| DcMsg::Read { keys, reply }, READ_WAIT).await {
            Ok(answers) => answers,
            Err(reply) => {
                replies.iter_mut().for_each(|r| *r = Some(reply.clone()));
                return;
            }
        };
        let mut answers = answers.into_iter().zip(asked);
        for (((_, step), size), slot) in steps.iter().zip(sizes).zip(replies.iter_mut()) {
            let Step::Read(_, how) = step else { unreachable!("a run of reads") };
            let mine: Vec<(ReadAnswer, (Keyspace, Key))> = answers.by_ref().take(size).collect();
            *slot = Some(read_reply(how, mine));
        }
    }

    /// `WAIT replicas timeout`: other DCs holding every write of this connection.
    async fn wait(&self, replicas: usize, timeout_ms: u64) -> Reply {
        // Redis' 0 means no timeout.
        let timeout_ms = if timeout_ms == 0 { u64::MAX } else { timeout_ms };
        let seq = self.last_seq;
        if seq == 0 {
            // Nothing written on this connection: every connected peer holds all of it (Redis
            // answers with its connected replicas at once).
            return match self.ask(DcMsg::Status, READ_WAIT).await {
                Ok(status) => Reply::Int(status.peers.iter().filter(|p| p.connected).count() as i64),
                Err(reply) => reply,
            };
        }
        let wait = Duration::from_millis(timeout_ms).saturating_add(READ_WAIT);
        match self.ask(|reply| DcMsg::Wait { seq, replicas, timeout_ms, reply }, wait).await {
            Ok(Ok(SyncOutcome::Done { confirmed, .. } | SyncOutcome::TimedOut { confirmed, .. })) => {
                let others = confirmed.iter().filter(|dc| **dc != self.server.local).count();
                Reply::Int(i64::try_from(others).unwrap_or(i64::MAX))
            }
            Ok(Err(e)) => refusal(e),
            Err(reply) => reply,
        }
    }

    /// `INFO`: the sections asked for, from the DC's status.
    async fn info(&self, sections: &[String]) -> Reply {
        let status = match self.ask(DcMsg::Status, READ_WAIT).await {
            Ok(status) => status,
            Err(reply) => return reply,
        };
        let all =
            sections.is_empty() || sections.iter().any(|s| s == "all" || s == "everything" || s == "default");
        let wants = |name: &str| all || sections.iter().any(|s| s == name);
        let mut text = String::new();
        if wants("server") {
            text.push_str(&self.info_server());
        }
        if wants("clients") {
            text.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.server.connections.load(Ordering::Relaxed),
                self.server.settings.max_connections
            ));
        }
        if wants("replication") {
            text.push_str(&info_replication(&status));
        }
        if wants("mesh") {
            text.push_str(&self.info_mesh(&status));
        }
        Reply::text(text)
    }

    fn info_server(&self) -> String {
        let me = self.server.topology.dc(&self.server.local).expect("the local DC is in the topology");
        format!(
            "# Server\r\nredis_version:7.0.0\r\nmesh_version:{}\r\nredis_mode:standalone\r\nos:{}\r\n\
             process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            me.resp.map_or(0, |a| a.port()),
            self.server.started.elapsed().as_secs(),
        )
    }

    fn info_mesh(&self, status: &DcStatus) -> String {
        let topology = &self.server.topology;
        let me = topology.dc(&self.server.local).expect("the local DC is in the topology");
        let keyspaces: Vec<String> =
            topology.keyspaces.values().map(|k| format!("{}={}", k.name, k.rules.strategy())).collect();
        let conflicts: u64 = status.conflicts.values().sum();
        format!(
            "# Mesh\r\nmesh_dc:{}\r\nmesh_region:{}\r\nmesh_ready:{}\r\nmesh_seen:{}\r\nmesh_keyspaces:{}\r\n\
             mesh_default_keyspace:{}\r\nmesh_conflicts:{conflicts}\r\nmesh_topology_fingerprint:{:016x}\r\n\r\n",
            status.dc,
            me.region,
            u8::from(status.ready),
            serde_json::to_string(&status.seen).unwrap_or_default(),
            keyspaces.join(","),
            self.server.default_keyspace.as_ref().map_or("", |k| k.as_str()),
            topology.fingerprint(),
        )
    }
}
impl Connection {
    /// Turns one request frame into a step; connection commands (AUTH, HELLO, SELECT, CLIENT)
    /// take effect here, in pipeline order.
    fn plan(&mut self, frame: Frame2) -> Step {
        let args = match frame {
            Frame2::Array(items) if !items.is_empty() => {
                let mut args = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Frame2::BulkString(b) | Frame2::SimpleString(b) => args.push(b),
                        Frame2::Integer(i) => args.push(Bytes::from(i.to_string())),
                        _ => {
                            return Step::Done(Reply::err(
                                "ERR",
                                "Protocol error: a command is an array of bulk strings",
                            ))
                        }
                    }
                }
                args
            }
            _ => {
                return Step::Done(Reply::err("ERR", "Protocol error: a command is an array of bulk strings"))
            }
        };
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(spec) = command_spec(&name) else {
            let shown: Vec<String> =
                args[1..].iter().take(3).map(|a| format!("'{}'", String::from_utf8_lossy(a))).collect();
            return Step::Done(Reply::err(
                "ERR",
                format!(
                    "unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(&args[0]),
                    shown.join(" ")
                ),
            ));
        };
        let n = args.len() as i64;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            return Step::Done(Reply::err("ERR", format!("wrong number of arguments for '{name}' command")));
        }
        if !self.authenticated && !matches!(name.as_str(), "hello" | "auth" | "ping" | "quit") {
            return Step::Done(Reply::err("NOAUTH", "Authentication required."));
        }
        let many = matches!(name.as_str(), "mget" | "exists" | "del" | "mset");
        if many && args.len() - 1 > KEYS_PER_COMMAND_MAX * if name == "mset" { 2 } else { 1 } {
            return Step::Done(Reply::err(
                "ERR",
                format!("at most {KEYS_PER_COMMAND_MAX} keys per '{name}' command; split it (a pipeline costs no more)"),
            ));
        }
        match self.plan_command(&name, &args[1..]) {
            Ok(step) => step,
            Err(reply) => Step::Done(reply),
        }
    }

    fn plan_command(&mut self, name: &str, args: &[Bytes]) -> Result<Step, Reply> {
        let done = |r: Reply| Ok(Step::Done(r));
        match name {
            "ping" => done(match args {
                [] => Reply::Simple("PONG"),
                [message] => Reply::Bulk(message.clone()),
                _ => return Err(Reply::err("ERR", "wrong number of arguments for 'ping' command")),
            }),
            "echo" => done(Reply::Bulk(args[0].clone())),
            "quit" => {
                self.quit = true;
                done(Reply::ok())
            }
            "auth" => done(self.auth(args)),
            "hello" => done(self.hello(args)),
            "select" => done(if args[0].as_ref() == b"0" {
                Reply::ok()
            } else {
                Reply::err(
                    "ERR",
                    "DB index is out of range (mesh has database 0 only; keyspaces are key prefixes)",
                )
            }),
            "client" => done(self.client(args)),
            "command" => done(command_reply(args)),
            "config" => done(config_reply(args, &self.server.settings)),
            "info" => {
                Ok(Step::Info(args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect()))
            }
            "dbsize" => Ok(Step::DbSize),
            "wait" => {
                let replicas = usize::try_from(integer(&args[0])?)
                    .map_err(|_| Reply::err("ERR", "numreplicas must be 0 or more"))?;
                let timeout_ms = u64::try_from(integer(&args[1])?)
                    .map_err(|_| Reply::err("ERR", "timeout is negative"))?;
                Ok(Step::Wait { replicas, timeout_ms })
            }
            "get" => self.read(&args[..1], &[ValueKind::Register, ValueKind::Counter], ReadReply::Get),
            "mget" => {
                self.read(args, &[ValueKind::Register, ValueKind::Counter, ValueKind::Set], ReadReply::MGet)
            }
            "exists" => {
                self.read(args, &[ValueKind::Register, ValueKind::Counter, ValueKind::Set], ReadReply::Exists)
            }
            "smembers" => self.read(args, &[ValueKind::Set], ReadReply::SMembers),
            "sismember" => self.read(&args[..1], &[ValueKind::Set], ReadReply::SIsMember(args[1].clone())),
            "scard" => self.read(args, &[ValueKind::Set], ReadReply::SCard),
            "mesh.get" => self.read(args, &[ValueKind::Register], ReadReply::MeshGet),
            "set" => {
                if let Some(option) = args.get(2) {
                    return Err(Reply::err(
                        "ERR",
                        format!(
                            "SET option '{}' is not supported by mesh (no expiry, and NX/XX/GET cannot be honoured across DCs; see a keyspace's write_once)",
                            String::from_utf8_lossy(option)
                        ),
                    ));
                }
                self.write(&args[0], OpKind::Put(args[1].to_vec()), None, WriteReply::Ok)
            }
            "mset" => {
                if !args.len().is_multiple_of(2) {
                    return Err(Reply::err("ERR", "wrong number of arguments for 'mset' command"));
                }
                let mut writes = Vec::with_capacity(args.len() / 2);
                for pair in args.chunks(2) {
                    writes.push(self.write_request(&pair[0], OpKind::Put(pair[1].to_vec()), None)?);
                }
                Ok(Step::Write(writes, WriteReply::Ok))
            }
            "del" => {
                let writes = args
                    .iter()
                    .map(|key| self.write_request(key, OpKind::Delete, None))
                    .collect::<Result<_, _>>()?;
                Ok(Step::Write(writes, WriteReply::Sum))
            }
            "incr" => self.write(&args[0], OpKind::CounterAdd(1), None, WriteReply::Sum),
            "decr" => self.write(&args[0], OpKind::CounterAdd(-1), None, WriteReply::Sum),
            "incrby" => self.write(&args[0], OpKind::CounterAdd(integer(&args[1])?), None, WriteReply::Sum),
            "decrby" => {
                let by = integer(&args[1])?
                    .checked_neg()
                    .ok_or_else(|| Reply::err("ERR", "decrement would overflow"))?;
                self.write(&args[0], OpKind::CounterAdd(by), None, WriteReply::Sum)
            }
            "sadd" | "srem" => {
                let members: Vec<ByteBuf> = args[1..].iter().map(|m| ByteBuf::from(m.to_vec())).collect();
                let kind = if name == "sadd" { OpKind::SetAdd(members) } else { OpKind::SetRemove(members) };
                self.write(&args[0], kind, None, WriteReply::Sum)
            }
            "mesh.put" => {
                let context: VersionVector = serde_json::from_slice(&args[2]).map_err(|e| {
                    Reply::err("ERR", format!("the context is not one MESH.GET returned: {e}"))
                })?;
                self.write(&args[0], OpKind::Put(args[1].to_vec()), Some(context), WriteReply::Ok)
            }
            other => unreachable!("command {other} is in the table but not planned"),
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Reply {
        let (user, password) = match args {
            [password] => (None, password),
            [user, password] => (Some(user), password),
            _ => return Reply::err("ERR", "syntax error"),
        };
        if user.is_some_and(|u| u.as_ref() != b"default") || password.as_ref() != self.server.token.as_bytes()
        {
            return Reply::err("WRONGPASS", "invalid username-password pair or user is disabled.");
        }
        self.authenticated = true;
        Reply::ok()
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        if let Some(version) = args.first() {
            proto = match version.as_ref() {
                b"2" => Proto::Resp2,
                b"3" => Proto::Resp3,
                _ => return Reply::err("NOPROTO", "unsupported protocol version"),
            };
        }
        let mut rest = args.iter().skip(1);
        let mut name = None;
        while let Some(option) = rest.next() {
            match option.to_ascii_lowercase().as_slice() {
                b"auth" => {
                    let (Some(user), Some(password)) = (rest.next(), rest.next()) else {
                        return Reply::err("ERR", "syntax error in HELLO option 'auth'");
                    };
                    let reply = self.auth(&[user.clone(), password.clone()]);
                    if reply != Reply::ok() {
                        return reply;
                    }
                }
                b"setname" => {
                    let Some(n) = rest.next() else {
                        return Reply::err("ERR", "syntax error in HELLO option 'setname'");
                    };
                    name = Some(n.clone());
                }
                _ => {
                    return Reply::err(
                        "ERR",
                        format!("syntax error in HELLO option '{}'", String::from_utf8_lossy(option)),
                    )
                }
            }
        }
        if !self.authenticated {
            return Reply::err(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        self.proto = proto;
        if name.is_some() {
            self.name = name;
        }
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("mesh")),
            (Reply::text("version"), Reply::text(env!("CARGO_PKG_VERSION"))),
            (Reply::text("proto"), Reply::Int(if proto == Proto::Resp3 { 3 } else { 2 })),
            (Reply::text("id"), Reply::Int(i64::try_from(self.id).unwrap_or(i64::MAX))),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(vec![])),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        match (sub.as_str(), &args[1..]) {
            ("id", []) => Reply::Int(i64::try_from(self.id).unwrap_or(i64::MAX)),
            ("setname", [name]) => {
                if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Reply::err("ERR", "Client names cannot contain spaces, newlines or special characters.");
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Reply::ok()
            }
            ("getname", []) => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            // Client libraries announce themselves (redis-py, redis-rs); nothing to keep.
            ("setinfo", [_, _]) => Reply::ok(),
            _ => Reply::err(
                "ERR",
                format!("unknown subcommand or wrong number of arguments for 'CLIENT|{}' (mesh has ID, SETNAME, GETNAME, SETINFO)", sub.to_uppercase()),
            ),
        }
    }

    /// The keyspace and key a Redis key names (module docs).
    fn route(&self, raw: &Bytes) -> Result<(Keyspace, Key), Reply> {
        let text = std::str::from_utf8(raw).map_err(|_| Reply::err("ERR", "mesh keys are UTF-8 text"))?;
        let topology = &self.server.topology;
        let prefixed = text.split_once(':').and_then(|(prefix, rest)| {
            Keyspace::new(prefix).ok().filter(|ks| topology.keyspace(ks).is_some()).map(|ks| (ks, rest))
        });
        let (keyspace, key) = match (prefixed, &self.server.default_keyspace) {
            (Some((ks, rest)), _) => (ks, rest),
            (None, Some(default)) => (default.clone(), text),
            (None, None) => {
                let prefix = text.split_once(':').map_or(text, |(p, _)| p);
                let known: Vec<&str> = topology.keyspaces.keys().map(|k| k.as_str()).collect();
                return Err(Reply::err(
                    "ERR",
                    format!(
                        "unknown keyspace '{prefix}': a key is keyspace:key with one of {} (or set resp.default_keyspace)",
                        known.join(", ")
                    ),
                ));
            }
        };
        let key = Key::new(key).map_err(|e| Reply::err("ERR", e))?;
        Ok((keyspace, key))
    }

    /// The keyspace's value kind, refused with WRONGTYPE unless one of `kinds`.
    fn kind_of(&self, keyspace: &Keyspace, kinds: &[ValueKind]) -> Result<ValueKind, Reply> {
        let kind =
            self.server.topology.keyspace(keyspace).expect("routed to a keyspace of the topology").kind;
        if kinds.contains(&kind) {
            Ok(kind)
        } else {
            Err(Reply::wrong_type(keyspace, kind))
        }
    }

    fn read(&self, keys: &[Bytes], kinds: &[ValueKind], how: ReadReply) -> Result<Step, Reply> {
        let mut routed = Vec::with_capacity(keys.len());
        for key in keys {
            let (keyspace, key) = self.route(key)?;
            self.kind_of(&keyspace, kinds)?;
            routed.push((keyspace, key));
        }
        Ok(Step::Read(routed, how))
    }

    fn write_request(
        &self,
        key: &Bytes,
        kind: OpKind,
        context: Option<VersionVector>,
    ) -> Result<WriteRequest, Reply> {
        let (keyspace, key) = self.route(key)?;
        self.kind_of(&keyspace, &[kind.value_kind()])?;
        Ok(WriteRequest {
            request: mesh_engine::sync::RequestId::default(),
            keyspace,
            key,
            kind,
            context,
            idempotency_key: None,
        })
    }

    fn write(
        &self,
        key: &Bytes,
        kind: OpKind,
        context: Option<VersionVector>,
        how: WriteReply,
    ) -> Result<Step, Reply> {
        Ok(Step::Write(vec![self.write_request(key, kind, context)?], how))
    }
}

/// A RESP error for a refused write: the HTTP API's stable code as the error's first word where
/// Redis has one (`LOADING`, `WRONGTYPE`, `BUSY`), else `ERR code: message`.
fn refusal(e: NodeWriteError) -> Reply {
    let error = write_error(e);
    match error.1 {
        "starting" => Reply::err("LOADING", error.2),
        "busy" => Reply::err("BUSY", error.2),
        "wrong_type" => Reply::err("WRONGTYPE", error.2),
        code => Reply::err("ERR", format!("{code}: {}", error.2)),
    }
}

fn integer(arg: &Bytes) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::err("ERR", "value is not an integer or out of range"))
}

/// One key's value as GET returns it: a register's single value, a counter's value as text;
/// `Err` for siblings (several values).
fn single_value(read: &mesh_core::ReadResult, keyspace: &Keyspace, key: &Key) -> Result<Reply, Reply> {
    match &read.value {
        ReadValue::Register(versions) => match versions.as_slice() {
            [] => Ok(Reply::Nil),
            [one] => Ok(one.value.as_ref().map_or(Reply::Nil, |v| Reply::Bulk(Bytes::copy_from_slice(v)))),
            many => Err(Reply::err(
                "SIBLINGS",
                format!(
                    "key '{keyspace}:{key}' has {} concurrent values: MESH.GET returns them with their context, MESH.PUT key value context resolves them",
                    many.len()
                ),
            )),
        },
        ReadValue::Counter(_) if !exists(read) => Ok(Reply::Nil),
        ReadValue::Counter(n) => Ok(Reply::text(n.to_string())),
        ReadValue::Set(_) => Ok(Reply::Nil),
    }
}

/// Whether a key exists as Redis sees it: it holds a value, and (for a counter, which reads 0
/// before any add) it was ever written.
fn exists(read: &mesh_core::ReadResult) -> bool {
    read.value.is_present() && !read.context.is_empty()
}

/// The reply of one read command from its keys' answers.
fn read_reply(how: &ReadReply, answers: Vec<(ReadAnswer, (Keyspace, Key))>) -> Reply {
    let mut reads = Vec::with_capacity(answers.len());
    for (answer, (keyspace, key)) in answers {
        match answer {
            Ok(Some(read)) => reads.push((read, keyspace, key)),
            Ok(None) => return Reply::err("ERR", format!("unknown keyspace '{keyspace}'")),
            Err(e) => return Reply::err("ERR", format!("storage: {e}")),
        }
    }
    let first = || reads.first().expect("a read command names a key");
    let result = match how {
        ReadReply::Get => {
            let (read, keyspace, key) = first();
            single_value(read, keyspace, key)
        }
        ReadReply::MGet => {
            reads.iter().map(|(r, ks, k)| single_value(r, ks, k)).collect::<Result<_, _>>().map(Reply::Array)
        }
        ReadReply::Exists => Ok(Reply::Int(reads.iter().filter(|(r, _, _)| exists(r)).count() as i64)),
        ReadReply::SMembers => match &first().0.value {
            ReadValue::Set(members) => {
                Ok(Reply::Set(members.iter().map(|m| Reply::Bulk(Bytes::copy_from_slice(m))).collect()))
            }
            _ => unreachable!("checked: a set keyspace"),
        },
        ReadReply::SIsMember(member) => match &first().0.value {
            ReadValue::Set(members) => {
                Ok(Reply::Int(i64::from(members.binary_search_by(|m| m.as_slice().cmp(member)).is_ok())))
            }
            _ => unreachable!("checked: a set keyspace"),
        },
        ReadReply::SCard => match &first().0.value {
            ReadValue::Set(members) => Ok(Reply::Int(members.len() as i64)),
            _ => unreachable!("checked: a set keyspace"),
        },
        ReadReply::MeshGet => {
            let (read, _, _) = first();
            let ReadValue::Register(versions) = &read.value else {
                unreachable!("checked: a register keyspace")
            };
            let values = versions
                .iter()
                .filter_map(|v| v.value.as_ref().map(|b| Reply::Bulk(Bytes::copy_from_slice(b))))
                .collect();
            Ok(Reply::Array(vec![
                Reply::text(serde_json::to_string(&read.context).unwrap_or_default()),
                Reply::Array(values),
            ]))
        }
    };
    result.unwrap_or_else(|e| e)
}

/// `INFO replication`: every DC takes writes; a line per peer DC with its link, health and lag.
fn info_replication(status: &DcStatus) -> String {
    let mut text = format!(
        "# Replication\r\nrole:master\r\nmesh_mode:active-active\r\nconnected_peers:{}\r\n",
        status.peers.iter().filter(|p| p.connected).count()
    );
    for (i, peer) in status.peers.iter().enumerate() {
        let health =
            peer.status.as_ref().map_or("unknown".to_string(), |s| format!("{:?}", s.health).to_lowercase());
        let lag = peer.status.as_ref().and_then(|s| s.lag);
        text.push_str(&format!(
            "peer{i}:dc={},state={},health={health},lag_ops={},lag_seconds={},queued_ops={},regressed={}\r\n",
            peer.dc,
            if peer.connected { "online" } else { "disconnected" },
            lag.map_or("unknown".to_string(), |l| l.ops.to_string()),
            lag.map_or("unknown".to_string(), |l| format!("{:.3}", l.ms as f64 / 1000.0)),
            peer.queued_ops,
            u8::from(peer.regressed),
        ));
    }
    text.push_str("\r\n");
    text
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS [name…]`, `COMMAND LIST`.
fn command_reply(args: &[Bytes]) -> Reply {
    let info = |c: &CommandSpec| {
        Reply::Array(vec![
            Reply::text(c.name),
            Reply::Int(c.arity),
            Reply::Set(c.flags.iter().map(|f| Reply::Simple(f)).collect()),
            Reply::Int(c.keys.0),
            Reply::Int(c.keys.1),
            Reply::Int(c.keys.2),
            Reply::Set(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    };
    let docs = |c: &CommandSpec| {
        (
            Reply::text(c.name),
            Reply::Map(vec![
                (Reply::text("summary"), Reply::text(c.summary)),
                (Reply::text("since"), Reply::text("1.0.0")),
                (Reply::text("group"), Reply::text("generic")),
            ]),
        )
    };
    let named = |names: &[Bytes]| -> Vec<Option<&'static CommandSpec>> {
        names.iter().map(|n| command_spec(&String::from_utf8_lossy(n).to_ascii_lowercase())).collect()
    };
    let sub = args.first().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
    match sub.as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some("count") => Reply::Int(COMMANDS.len() as i64),
        Some("list") => Reply::Array(COMMANDS.iter().map(|c| Reply::text(c.name)).collect()),
        Some("info") => {
            Reply::Array(named(&args[1..]).into_iter().map(|c| c.map_or(Reply::Nil, info)).collect())
        }
        Some("docs") if args.len() == 1 => Reply::Map(COMMANDS.iter().map(docs).collect()),
        Some("docs") => Reply::Map(named(&args[1..]).into_iter().flatten().map(docs).collect()),
        Some(other) => Reply::err("ERR", format!("unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// `CONFIG GET parameter…`: the parameters clients probe, with what mesh does in their place
/// (every write is fsynced before its answer). `CONFIG SET` and others are refused.
fn config_reply(args: &[Bytes], settings: &RespSettings) -> Reply {
    let sub = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    if sub != "get" || args.len() < 2 {
        return Reply::err(
            "ERR",
            format!(
                "CONFIG {} is not supported by mesh (CONFIG GET only; configure mesh.toml)",
                sub.to_uppercase()
            ),
        );
    }
    let parameters = [
        ("save", String::new()),
        ("appendonly", "yes".to_string()),
        ("appendfsync", "always".to_string()),
        ("databases", "1".to_string()),
        ("maxclients", settings.max_connections.to_string()),
        ("proto-max-bulk-len", mesh_core::VALUE_BYTES_MAX.to_string()),
        ("client-query-buffer-limit", settings.max_request_bytes.to_string()),
    ];
    let mut pairs = Vec::new();
    for (name, value) in parameters {
        if args[1..].iter().any(|pattern| {
            wildmatch::WildMatch::new(&String::from_utf8_lossy(pattern).to_ascii_lowercase()).matches(name)
        }) {
            pairs.push((Reply::text(name), Reply::text(value)));
        }
    }
    Reply::Map(pairs)
}

/// Writes what `output` holds to the socket.
async fn flush(socket: &mut TcpStream, output: &mut BytesMut) -> std::io::Result<()> {
    if !output.is_empty() {
        socket.write_all(output).await?;
        output.clear();
        if output.capacity() > FLUSH_BYTES * 4 {
            *output = BytesMut::new();
        }
    }
    Ok(())
}

/// Resolves once the client closed its side (or the socket failed); never while it only sent
/// more commands (those wait in the socket for their turn).
async fn closed(socket: &TcpStream) {
    let mut probe = [0u8; 1];
    match socket.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Where each command of the input ends, found without decoding it: Redis' request shape (an
/// array of bulk strings, what Redis' own request parser accepts and every client sends) and
/// this front end's limits are checked on the headers as they arrive, and bulk payloads are
/// skipped by their length. Only a whole command within the limits is handed to
/// `redis-protocol` to decode. That decoder recurses per nested array without a depth bound
/// and reparses an unfinished frame from its start on every read; the framer keeps both off
/// client input (a 4 KB nest of arrays would overflow the stack, a trickled 8 MB command would
/// cost quadratic time). State carries over between reads.
#[derive(Debug, Default)]
struct Framer {
    /// Bytes of the current command checked so far.
    at: usize,
    /// Elements still expected (`None`: the array header is not read yet).
    left: Option<u64>,
}

/// Longest header line (`*N` or `$N`), CRLF included.
const HEADER_BYTES_MAX: usize = 32;
/// Most arguments of one command.
const ARGS_MAX: u64 = 1 << 20;
/// Longest argument: the largest value, and room for the longest key with its keyspace.
const BULK_BYTES_MAX: u64 = (mesh_core::VALUE_BYTES_MAX + 1024) as u64;

impl Framer {
    /// `Ok(Some(len))`: the first `len` bytes of `input` are one whole command (the framer is
    /// then ready for the next one); `Ok(None)`: more input is needed; `Err`: the stream is
    /// not a Redis request within the limits.
    fn next(&mut self, input: &[u8], settings: &RespSettings) -> Result<Option<usize>, String> {
        loop {
            if self.left == Some(0) {
                let len = self.at;
                *self = Framer::default();
                return Ok(Some(len));
            }
            if self.at > settings.max_request_bytes {
                return Err(format!(
                    "a command longer than {} bytes (resp.max_request_bytes)",
                    settings.max_request_bytes
                ));
            }
            let rest = &input[self.at.min(input.len())..];
            let Some(end) = rest.iter().take(HEADER_BYTES_MAX).position(|b| *b == b'\n') else {
                if rest.len() >= HEADER_BYTES_MAX {
                    return Err("a header line longer than 32 bytes".into());
                }
                return Ok(None);
            };
            let line = &rest[..end];
            let (kind, number) = match line {
                [kind, digits @ .., b'\r'] => {
                    (*kind, std::str::from_utf8(digits).ok().and_then(|d| d.parse::<i64>().ok()))
                }
                _ => (0, None),
            };
            match (self.left, kind, number) {
                (None, b'*', Some(n)) if (1..=ARGS_MAX as i64).contains(&n) => {
                    self.left = Some(n as u64);
                    self.at += end + 1;
                }
                (None, b'*', _) => return Err("invalid multibulk length".into()),
                (None, _, _) => {
                    return Err(
                        "a command is an array of bulk strings (inline commands are not supported)".into()
                    )
                }
                (Some(left), b'$', Some(n)) if (0..=BULK_BYTES_MAX as i64).contains(&n) => {
                    let payload = end + 1 + n as usize + 2;
                    if rest.len() < payload {
                        // Wait for the payload; a command that will not fit is refused now.
                        if self.at + payload > settings.max_request_bytes + HEADER_BYTES_MAX {
                            self.at += payload;
                            continue;
                        }
                        return Ok(None);
                    }
                    if &rest[payload - 2..payload] != b"\r\n" {
                        return Err("a bulk string not ended by CRLF".into());
                    }
                    self.at += payload;
                    self.left = Some(left - 1);
                }
                (Some(_), b'$', _) => return Err("invalid bulk length".into()),
                (Some(_), _, _) => return Err("a command is an array of bulk strings".into()),
            }
        }
    }
}

/// After an error reply to a broken stream: discards what the client still sends, for a
/// moment, so that closing with unread input (a TCP reset) does not destroy the reply before
/// the client reads it.
async fn linger(socket: &mut TcpStream) {
    let mut sink = vec![0u8; READ_CHUNK];
    let drain = async {
        let mut discarded = 0usize;
        while discarded < LINGER_BYTES_MAX {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Whether `input` holds a whole command (or a broken one) the framer has not handed out yet.
fn commands_pending(framer: &mut Framer, input: &BytesMut, settings: &RespSettings) -> bool {
    // The framer's progress is kept: the command it finds here is handed out next time.
    let found = framer.next(input, settings);
    if let Ok(Some(len)) = found {
        // Give the command back to the next round's loop, which takes it from the start.
        framer.at = len;
        framer.left = Some(0);
    }
    !matches!(found, Ok(None))
}

fn encode(output: &mut BytesMut, proto: Proto, reply: &Reply) {
    let encoded = match proto {
        Proto::Resp2 => redis_protocol::resp2::encode::extend_encode(output, &reply.to_resp2(), false),
        Proto::Resp3 => {
            redis_protocol::resp3::encode::complete::extend_encode(output, &reply.to_resp3(), false)
        }
    };
    encoded.expect("a reply built here encodes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(extra: &str) -> Arc<RespServer> {
        let text = format!("{}\n{extra}", include_str!("../../../mesh.toml"));
        let config: mesh_core::TopologyConfig = toml::from_str(&text).unwrap();
        let topology = Arc::new(Topology::new(config, &mesh_core::builtin_resolvers()).unwrap());
        let (_, dc) = watch::channel(None);
        RespServer::new(dc, "t".into(), topology, DcId::new("us-east").unwrap())
    }

    fn args(words: &[&str]) -> Frame2 {
        Frame2::Array(
            words.iter().map(|w| Frame2::BulkString(Bytes::copy_from_slice(w.as_bytes()))).collect(),
        )
    }

    #[test]
    fn every_command_of_the_table_is_planned_at_its_arity() {
        let mut connection = Connection::new(server(""), 1);
        connection.authenticated = true;
        for spec in COMMANDS {
            let mut words = vec![spec.name.to_string()];
            // Keys where the command takes them, numbers elsewhere (WAIT, INCRBY's amount).
            let key = match spec.name {
                "incr" | "incrby" | "decr" | "decrby" => "page_views:k",
                "sadd" | "srem" | "smembers" | "sismember" | "scard" => "tags:k",
                _ => "users:k",
            };
            for i in 1..spec.arity.unsigned_abs() {
                words.push(if i == 1 && spec.keys.0 == 1 { key.into() } else { "1".into() });
            }
            if spec.name == "mesh.put" {
                words[3] = "{}".into();
            }
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let step = connection.plan(args(&words));
            if let Step::Done(Reply::Error(e)) = step {
                let arity = format!("wrong number of arguments for '{}' command", spec.name);
                assert!(!e.contains(&arity) && !e.contains("unknown command"), "{}: {e}", spec.name);
            }
        }
    }

    #[test]
    fn keys_route_by_their_prefix_else_to_the_default_keyspace() {
        let connection = Connection::new(server(""), 1);
        let route = |k: &str| connection.route(&Bytes::copy_from_slice(k.as_bytes()));
        let (ks, key) = route("users:alice:1").unwrap();
        assert_eq!((ks.as_str(), key.as_str()), ("users", "alice:1"));
        let Err(Reply::Error(e)) = route("key:1") else { panic!("key is no keyspace of mesh.toml") };
        assert!(e.starts_with("ERR unknown keyspace 'key'"), "{e}");
        let Err(Reply::Error(e)) = route("plain") else { panic!("no prefix, no default") };
        assert!(e.starts_with("ERR unknown keyspace 'plain'"), "{e}");
        let with_default = Connection::new(server("[resp]\ndefault_keyspace = \"users\"\n"), 1);
        let (ks, key) = with_default.route(&Bytes::from_static(b"key:1")).unwrap();
        assert_eq!((ks.as_str(), key.as_str()), ("users", "key:1"), "the whole key goes to the default");
    }

    #[test]
    fn commands_before_auth_are_refused_but_ping_and_auth_work() {
        let mut connection = Connection::new(server(""), 1);
        let Step::Done(Reply::Error(e)) = connection.plan(args(&["GET", "users:a"])) else { panic!() };
        assert!(e.starts_with("NOAUTH"));
        assert!(matches!(connection.plan(args(&["PING"])), Step::Done(Reply::Simple("PONG"))));
        let Step::Done(Reply::Error(e)) = connection.plan(args(&["AUTH", "wrong"])) else { panic!() };
        assert!(e.starts_with("WRONGPASS"));
        assert!(matches!(connection.plan(args(&["AUTH", "default", "t"])), Step::Done(Reply::Simple("OK"))));
        assert!(matches!(connection.plan(args(&["GET", "users:a"])), Step::Read(..)));
    }

    #[test]
    fn the_framer_finds_whole_commands_and_refuses_what_is_not_a_flat_request() {
        let settings = RespSettings::default();
        let next = |input: &[u8]| Framer::default().next(input, &settings);
        assert_eq!(next(b"*1\r\n$4\r\nPING\r\n*1\r\n"), Ok(Some(14)));
        assert_eq!(next(b"*2\r\n$3\r\nGET\r\n$5\r\nusers"), Ok(None));
        assert!(next(b"*1\r\n*1\r\n*1\r\n").unwrap_err().contains("array of bulk strings"));
        assert!(next(b"PING\r\n").unwrap_err().contains("array of bulk strings"));
        assert!(next(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$600000000\r\n").unwrap_err().contains("bulk length"));
        assert!(next(b"*0\r\n").unwrap_err().contains("multibulk length"));
        // Progress carries over: the second read resumes where the first stopped.
        let mut framer = Framer::default();
        let whole = b"*2\r\n$3\r\nGET\r\n$7\r\nusers:a\r\n";
        assert_eq!(framer.next(&whole[..12], &settings), Ok(None));
        assert_eq!(framer.next(whole, &settings), Ok(Some(whole.len())));
        // Many values that will not fit in max_request_bytes are refused at their header.
        let small = RespSettings { max_request_bytes: 2 << 20, ..RespSettings::default() };
        let mut big = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
        for _ in 0..2 {
            big.extend_from_slice(format!("${}\r\n", 1 << 20).as_bytes());
            big.extend(vec![b'x'; 1 << 20]);
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(format!("${}\r\n", 1 << 20).as_bytes());
        assert!(Framer::default().next(&big, &small).unwrap_err().contains("max_request_bytes"));
    }

    #[test]
    fn error_replies_cannot_carry_a_line_break_from_client_input() {
        let Reply::Error(e) = Reply::err("ERR", "unknown keyspace 'x\r\n$3\r\nbad'") else { panic!() };
        assert!(!e.contains('\r') && !e.contains('\n'), "{e:?}");
    }
}
