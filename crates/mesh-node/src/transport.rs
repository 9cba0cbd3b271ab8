//! The QUIC transport: one endpoint per node, one connection per peer DC, and on it one
//! bidirectional stream carrying mesh-wire frames in order. The dialer opens the stream; both
//! sides then send their Hello first (the node's engine does).

use crate::tls::{self, Material, TlsError};
use mesh_core::DcId;
use mesh_wire::{Codec, CodecConfig, Decoded, Message};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A link could not be set up, or broke. The connection is closed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The QUIC endpoint or connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer's certificate names no DC of the topology (or another DC than dialed).
    #[error("the peer's certificate names no DC of this topology")]
    UnknownPeer,
    /// The stream ended or broke.
    #[error("stream: {0}")]
    Stream(String),
    /// A frame could not be decoded: the stream is out of step.
    #[error("bad frame: {0}")]
    Frame(#[from] mesh_wire::DecodeError),
    /// A message could not be framed.
    #[error("cannot frame a message: {0}")]
    Encode(#[from] mesh_wire::EncodeError),
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed: a certificate the mesh CA did not issue, or none.
    #[error("TLS handshake: {0}")]
    Handshake(String),
}

/// Whether a connection failed in its TLS handshake (a TLS alert, QUIC's crypto error codes
/// 0x100–0x1ff), as opposed to timing out or being closed (a pause, a restart, a duplicate).
fn tls_failure(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

/// Binds the node's QUIC endpoint at `listen` for the default heartbeat interval (250 ms); see
/// [`endpoint_for`].
pub fn endpoint(listen: SocketAddr, material: &Material) -> Result<quinn::Endpoint, LinkError> {
    endpoint_for(listen, material, 250)
}

/// Binds the node's QUIC endpoint at `listen`: it accepts peers presenting a certificate of the
/// mesh CA, and dials with this DC's certificate. Connections follow the heartbeat: a keep-alive
/// every `heartbeat_interval_ms` and an idle timeout of [`idle_timeout_ms`], so a peer that
/// died, or a path that stopped carrying packets, ends its connection within seconds (quinn's
/// default is 30 s without keep-alives) and the link is dialed again.
pub fn endpoint_for(
    listen: SocketAddr,
    material: &Material,
    heartbeat_interval_ms: u64,
) -> Result<quinn::Endpoint, LinkError> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(heartbeat_interval_ms.max(1))));
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(idle_timeout_ms(heartbeat_interval_ms)))
        .map_err(|e| LinkError::Connection(format!("idle timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    let transport = Arc::new(transport);
    let mut server = material.server_config()?;
    server.transport_config(transport.clone());
    let mut client = material.client_config()?;
    client.transport_config(transport);
    let mut endpoint = quinn::Endpoint::server(server, listen)
        .map_err(|e| LinkError::Connection(format!("binding {listen}: {e}")))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The QUIC idle timeout for a heartbeat interval, in ms: eight intervals, at least one second.
/// The failure detector usually closes a silent link first (a peer judged down); this bounds
/// what it cannot see, such as a handshake that never completes.
pub fn idle_timeout_ms(heartbeat_interval_ms: u64) -> u64 {
    heartbeat_interval_ms.saturating_mul(8).max(1_000)
}

/// An open link to a peer DC.
#[derive(Debug)]
pub struct Link {
    /// The peer, as its certificate proves.
    pub peer: DcId,
    /// The connection (closing it ends the link).
    pub connection: quinn::Connection,
    /// Frames out.
    pub writer: FrameWriter,
    /// Frames in.
    pub reader: FrameReader,
    /// Whether this DC dialed it (rather than accepted it).
    pub dialed: bool,
}

/// Dials `peer` at `address`; its certificate must name `peer`.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    address: SocketAddr,
    peer: &DcId,
    codec: &CodecConfig,
) -> Result<Link, LinkError> {
    let connecting =
        endpoint.connect(address, peer.as_str()).map_err(|e| LinkError::Connection(e.to_string()))?;
    let connection = connecting.await.map_err(|e| LinkError::Connection(e.to_string()))?;
    // rustls checked the certificate against the name dialed; check it again the same way the
    // accepting side does, so both ends derive identity alike.
    if tls::peer_dc(&connection, [peer]).is_none() {
        connection.close(1u32.into(), b"unknown peer");
        return Err(LinkError::UnknownPeer);
    }
    let stream = connection.open_bi().await.map_err(|e| LinkError::Stream(e.to_string()))?;
    Link::new(peer.clone(), connection, stream, codec, true)
}

/// Accepts the next incoming connection whose certificate names one of `candidates`.
pub async fn accept<'a>(
    incoming: quinn::Incoming,
    candidates: impl IntoIterator<Item = &'a DcId>,
    codec: &CodecConfig,
) -> Result<Link, LinkError> {
    let connection = incoming.await.map_err(|e| {
        if tls_failure(&e) {
            LinkError::Handshake(e.to_string())
        } else {
            LinkError::Connection(e.to_string())
        }
    })?;
    let Some(peer) = tls::peer_dc(&connection, candidates) else {
        connection.close(1u32.into(), b"unknown peer");
        return Err(LinkError::UnknownPeer);
    };
    let stream = connection.accept_bi().await.map_err(|e| LinkError::Stream(e.to_string()))?;
    Link::new(peer, connection, stream, codec, false)
}

impl Link {
    /// The link to `peer` over `connection`'s bidirectional `stream`.
    fn new(
        peer: DcId,
        connection: quinn::Connection,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        codec: &CodecConfig,
        dialed: bool,
    ) -> Result<Self, LinkError> {
        Ok(Link {
            peer,
            connection,
            writer: FrameWriter::new(send, codec)?,
            reader: FrameReader::new(recv, codec)?,
            dialed,
        })
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    codec: Codec,
    buf: Vec<u8>,
}

impl FrameWriter {
    fn new(send: quinn::SendStream, codec: &CodecConfig) -> Result<Self, LinkError> {
        let codec = Codec::new(codec.clone()).map_err(|e| LinkError::Connection(e.to_string()))?;
        Ok(Self { send, codec, buf: Vec::new() })
    }

    /// Frames and sends `message`; returns the frame's (wire, raw) byte counts.
    pub async fn send(&mut self, message: &Message) -> Result<(usize, usize), LinkError> {
        self.buf.clear();
        let info = self.codec.encode_into(message, &mut self.buf)?;
        self.send.write_all(&self.buf).await.map_err(|e| LinkError::Stream(e.to_string()))?;
        Ok((info.frame_bytes, info.raw_bytes))
    }
}

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    codec: Codec,
    buf: Vec<u8>,
    /// Frame bytes read (as on the wire) and their decompressed size, since the last
    /// [`FrameReader::take_counts`].
    counts: (u64, u64),
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, codec: &CodecConfig) -> Result<Self, LinkError> {
        let codec = Codec::new(codec.clone()).map_err(|e| LinkError::Connection(e.to_string()))?;
        Ok(Self { recv, codec, buf: Vec::new(), counts: (0, 0) })
    }

    /// Frame bytes read as on the wire, and before compression, since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.counts)
    }

    /// The next message; `Ok(None)` when the peer finished the stream.
    pub async fn next(&mut self) -> Result<Option<Message>, LinkError> {
        loop {
            if !self.buf.is_empty() {
                match self.codec.decode(&self.buf)? {
                    Decoded::Frame { message, info } => {
                        self.buf.drain(..info.frame_bytes);
                        self.counts.0 += info.frame_bytes as u64;
                        self.counts.1 += info.raw_bytes as u64;
                        return Ok(Some(message));
                    }
                    Decoded::Skipped { bytes_consumed, .. } => {
                        self.buf.drain(..bytes_consumed);
                        continue;
                    }
                    Decoded::NeedMore { .. } => {}
                }
            }
            let mut chunk = [0u8; 64 << 10];
            match self.recv.read(&mut chunk).await.map_err(|e| LinkError::Stream(e.to_string()))? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(LinkError::Stream("the stream ended inside a frame".into())),
            }
        }
    }
}
