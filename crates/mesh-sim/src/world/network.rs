//! The simulated network: which links are cut, which connections are open and whose process owns
//! each end, dials, and the delivery of framed messages over a link (latency and jitter per link,
//! loss, duplication, FIFO order unless the scenario reorders). Partitions are network state
//! here, counted cuts of directed links; [`super::faults`] decides when links are cut and healed.

use super::{Event, World};
use mesh_engine::{MonoMs, WallMs};
use mesh_wire::{Codec, Message};
use rand::Rng;
use std::collections::BTreeMap;

/// The state of the links between the DCs.
pub(super) struct Network {
    /// Directed cuts, counted (overlapping faults).
    cuts: BTreeMap<(usize, usize), u32>,
    /// Open connections by (lower, higher) DC index.
    conns: BTreeMap<(usize, usize), u64>,
    /// Per connection, the process incarnations of its (lower, higher) ends when it opened: a
    /// restarted process does not own its old connections, which stay half-open at the peer.
    conn_ends: BTreeMap<u64, [u32; 2]>,
    next_conn: u64,
    /// Per directed link, the latest delivery time scheduled (FIFO links).
    last_delivery: BTreeMap<(usize, usize), u64>,
    /// Frames every message sent, as the wire would.
    codec: Codec,
}

impl Network {
    /// A network with every link up and no connection open, framing with `codec`.
    pub(super) fn new(codec: Codec) -> Self {
        Self {
            cuts: BTreeMap::new(),
            conns: BTreeMap::new(),
            conn_ends: BTreeMap::new(),
            next_conn: 1,
            last_delivery: BTreeMap::new(),
            codec,
        }
    }
}

impl World {
    pub(crate) fn cut(&self, from: usize, to: usize) -> bool {
        self.network.cuts.get(&(from, to)).is_some_and(|n| *n > 0)
    }

    /// Whether `a` and `b` are linked now: both alive and no cut either way.
    pub(crate) fn linked(&self, a: usize, b: usize) -> bool {
        self.dcs[a].alive() && self.dcs[b].alive() && !self.cut(a, b) && !self.cut(b, a)
    }

    /// One-way latency and jitter of the directed link, ms (its override, else the default).
    fn link(&self, from: usize, to: usize) -> (u64, u64) {
        let net = &self.scenario.file.network;
        net.links
            .iter()
            .find(|l| l.from == self.dcs[from].id.as_str() && l.to == self.dcs[to].id.as_str())
            .map_or((net.latency_ms, net.jitter_ms), |l| (l.latency_ms, l.jitter_ms))
    }

    /// `dc`'s node dials `peer`: the dial completes after a round trip if the link is up, else
    /// fails at the connect timeout.
    pub(super) fn dial(&mut self, dc: usize, peer: usize) {
        let up = self.dcs[peer].alive() && !self.cut(dc, peer) && !self.cut(peer, dc);
        let net = &self.scenario.file.network;
        let delay = if up { 2 * self.link(dc, peer).0 } else { net.connect_timeout_ms };
        let incarnation = self.dcs[dc].incarnation;
        self.schedule(self.now_ms + delay.max(1), Event::DialDone { dc, peer, incarnation });
    }

    /// `dc`'s node closes its connection to `peer`, if there is one.
    pub(super) fn request_close(&mut self, dc: usize, peer: usize) {
        if let Some(&conn) = self.network.conns.get(&(dc.min(peer), dc.max(peer))) {
            self.schedule(self.now_ms, Event::Close { a: dc, b: peer, conn });
        }
    }

    pub(super) fn send(&mut self, from: usize, to: usize, message: Message) {
        let Some(&conn) = self.network.conns.get(&(from.min(to), from.max(to))) else { return };
        self.stats.messages += 1;
        match self.network.codec.encode(&message) {
            Ok(frame) => {
                self.stats.wire_bytes += frame.len() as u64;
                // The frame's bytes, so the trace hash sees message contents, not only kinds.
                self.hasher.update(&frame);
            }
            Err(e) => {
                let detail = format!(
                    "{} -> {}: the message cannot be framed: {e}",
                    self.dcs[from].id, self.dcs[to].id
                );
                self.history.violation("wire", self.now_ms, detail);
                return;
            }
        }
        let net = self.scenario.file.network.clone();
        if net.loss > 0.0 && self.rng.random_bool(net.loss) {
            return;
        }
        let copies = if net.duplicate > 0.0 && self.rng.random_bool(net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (latency, jitter) = self.link(from, to);
            let mut at = self.now_ms + latency + self.rng.random_range(0..=jitter);
            if !net.reorder {
                let last = self.network.last_delivery.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            self.schedule(
                at.max(self.now_ms + 1),
                Event::Deliver { from, to, conn, message: message.clone() },
            );
        }
    }

    /// Whether `dc`'s current process owns connection `conn` (is alive and opened it or
    /// accepted it, rather than inheriting it from a crashed process).
    fn owns(&self, dc: usize, conn: u64) -> bool {
        let Some(ends) = self.network.conn_ends.get(&conn) else { return false };
        let (lo, hi) = self.conn_key(conn).unwrap_or((usize::MAX, usize::MAX));
        let end = if dc == lo {
            ends[0]
        } else if dc == hi {
            ends[1]
        } else {
            return false;
        };
        self.dcs[dc].alive() && self.dcs[dc].incarnation == end
    }

    /// The DC pair of an open connection.
    fn conn_key(&self, conn: u64) -> Option<(usize, usize)> {
        self.network.conns.iter().find(|(_, c)| **c == conn).map(|(k, _)| *k)
    }

    pub(super) fn deliver(&mut self, from: usize, to: usize, conn: u64, message: Message) {
        if self.network.conns.get(&(from.min(to), from.max(to))) != Some(&conn) || self.cut(from, to) {
            return;
        }
        if !self.owns(to, conn) {
            return; // A process that restarted knows nothing of its old connections.
        }
        let kind = match &message {
            Message::Hello(_) => 10,
            Message::Batch(b) => {
                self.stats.ops_delivered += b.ops.len() as u64;
                11
            }
            Message::Ack(_) => 12,
            Message::Heartbeat(_) => 13,
            Message::SnapshotRequest(_) => 14,
            Message::SnapshotChunk(_) => 15,
        };
        self.hash(&[5, from as u64, to as u64, kind]);
        if self.options.trace {
            let what = match &message {
                Message::Batch(b) => {
                    let first = b.ops.first().map(|op| format!("{:?}", op.dot)).unwrap_or_default();
                    format!("batch of {} ops from {first}", b.ops.len())
                }
                Message::Hello(h) => format!("hello seen {:?}", h.seen),
                Message::Ack(a) => format!("ack {:?}", a.seen),
                Message::Heartbeat(_) => "heartbeat".into(),
                Message::SnapshotRequest(_) | Message::SnapshotChunk(_) => "snapshot".into(),
            };
            self.note(format!("deliver {} -> {} {what}", self.dcs[from].id, self.dcs[to].id));
        }
        let wall = WallMs(self.wall_ms(to));
        let now = MonoMs(self.now_ms);
        let from_id = self.dcs[from].id.clone();
        let d = &mut self.dcs[to];
        let Some(node) = d.node.as_mut() else { return };
        node.handle_message(now, wall, &from_id, message, &d.store);
        self.after(to);
    }

    pub(super) fn dial_done(&mut self, dc: usize, peer: usize, incarnation: u32) {
        if self.dcs[dc].incarnation != incarnation || !self.dcs[dc].alive() {
            return;
        }
        let up = self.dcs[peer].alive() && !self.cut(dc, peer) && !self.cut(peer, dc);
        let key = (dc.min(peer), dc.max(peer));
        let peer_id = self.dcs[peer].id.clone();
        let dc_id = self.dcs[dc].id.clone();
        if let Some(&old) = self.network.conns.get(&key).filter(|_| up) {
            // A connection one end's process no longer owns (it restarted) is half-open: the new
            // dial replaces it, as the node's runtime replaces a link it no longer hears from
            // (mesh_engine::pool::keep_existing_link).
            if !self.owns(dc, old) || !self.owns(peer, old) {
                self.close(dc, peer, None);
            }
        }
        if !up || self.network.conns.contains_key(&key) {
            let now = MonoMs(self.now_ms);
            if let Some(node) = self.dcs[dc].node.as_mut() {
                node.handle_dial_failed(now, &peer_id);
            }
            self.after(dc);
            return;
        }
        let conn = self.network.next_conn;
        self.network.next_conn += 1;
        self.network.conns.insert(key, conn);
        self.network.conn_ends.insert(conn, [self.dcs[key.0].incarnation, self.dcs[key.1].incarnation]);
        self.hash(&[7, dc as u64, peer as u64, conn]);
        if self.options.trace {
            self.note(format!("connect {dc_id} {peer_id}"));
        }
        let now = MonoMs(self.now_ms);
        for (a, b) in [(dc, &peer_id), (peer, &dc_id)] {
            if let Some(node) = self.dcs[a].node.as_mut() {
                node.handle_connected(now, b);
            }
            self.after(a);
        }
    }

    /// The idle timeout of connection `conn` between `a` and `b` ran out: it closes if the link
    /// is cut or an end's process no longer owns it, and is still the open one.
    pub(super) fn idle_close(&mut self, a: usize, b: usize, conn: u64) {
        let cut = self.cut(a, b) || self.cut(b, a);
        let dead = !self.owns(a, conn) || !self.owns(b, conn);
        if (cut || dead) && self.network.conns.get(&(a.min(b), a.max(b))) == Some(&conn) {
            self.close(a, b, None);
        }
    }

    /// `a`'s node closed connection `conn` to `b` (`Effect::Close`), if it is still the open
    /// one: only `b` hears of it, as the effect's contract says.
    pub(super) fn close_if_open(&mut self, a: usize, b: usize, conn: u64) {
        if self.network.conns.get(&(a.min(b), a.max(b))) == Some(&conn) {
            self.close(a, b, Some(a));
        }
    }

    /// Closes the connection between `a` and `b`; each end whose process owns it hears so, but
    /// `closer`, whose node closed it.
    fn close(&mut self, a: usize, b: usize, closer: Option<usize>) {
        let Some(conn) = self.network.conns.get(&(a.min(b), a.max(b))).copied() else { return };
        let owners = [self.owns(a, conn), self.owns(b, conn)];
        self.network.conns.remove(&(a.min(b), a.max(b)));
        self.network.conn_ends.remove(&conn);
        self.hash(&[8, a as u64, b as u64]);
        if self.options.trace {
            self.note(format!("disconnect {} {}", self.dcs[a].id, self.dcs[b].id));
        }
        let now = MonoMs(self.now_ms);
        for ((x, y), owner) in [(a, b), (b, a)].into_iter().zip(owners) {
            if !owner || closer == Some(x) {
                continue;
            }
            let other = self.dcs[y].id.clone();
            if let Some(node) = self.dcs[x].node.as_mut() {
                node.handle_disconnected(now, &other);
            }
            self.after(x);
        }
    }

    /// Cuts (`cut`) or heals (`!cut`) directed links, and lets the connections across a cut
    /// time out.
    pub(super) fn cut_links(&mut self, links: &[(usize, usize)], cut: bool) {
        for &(a, b) in links {
            let n = self.network.cuts.entry((a, b)).or_insert(0);
            if cut {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            if cut {
                if let Some(&conn) = self.network.conns.get(&(a.min(b), a.max(b))) {
                    let at = self.now_ms + self.scenario.file.network.idle_timeout_ms;
                    self.schedule(at, Event::IdleClose { a, b, conn });
                }
            }
        }
    }

    /// `dc`'s process died: its peers notice when their connections to it idle out.
    pub(super) fn idle_out_connections_of(&mut self, dc: usize) {
        let idle = self.scenario.file.network.idle_timeout_ms;
        let conns: Vec<((usize, usize), u64)> = self
            .network
            .conns
            .iter()
            .filter(|((a, b), _)| *a == dc || *b == dc)
            .map(|(k, c)| (*k, *c))
            .collect();
        for ((a, b), conn) in conns {
            self.schedule(self.now_ms + idle, Event::IdleClose { a, b, conn });
        }
    }
}
