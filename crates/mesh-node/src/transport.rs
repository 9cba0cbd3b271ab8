//! The QUIC transport: one endpoint per node, one connection per peer DC, and on it one
//! bidirectional stream carrying mesh-wire frames in order. The dialer opens the stream; both
//! sides then send their Hello first (the node's engine does).

use crate::tls::{self, Material, TlsError};
use mesh_core::DcId;
use mesh_wire::{Codec, CodecConfig, Decoded, Message};
use std::net::SocketAddr;

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
}

/// Binds the node's QUIC endpoint at `listen`: it accepts peers presenting a certificate of the
/// mesh CA, and dials with this DC's certificate.
pub fn endpoint(listen: SocketAddr, material: &Material) -> Result<quinn::Endpoint, LinkError> {
    let mut endpoint = quinn::Endpoint::server(material.server_config()?, listen)
        .map_err(|e| LinkError::Connection(format!("binding {listen}: {e}")))?;
    endpoint.set_default_client_config(material.client_config()?);
    Ok(endpoint)
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
    Link::new(peer.clone(), connection, stream, codec)
}

/// Accepts the next incoming connection whose certificate names one of `candidates`.
pub async fn accept<'a>(
    incoming: quinn::Incoming,
    candidates: impl IntoIterator<Item = &'a DcId>,
    codec: &CodecConfig,
) -> Result<Link, LinkError> {
    let connection = incoming.await.map_err(|e| LinkError::Connection(e.to_string()))?;
    let Some(peer) = tls::peer_dc(&connection, candidates) else {
        connection.close(1u32.into(), b"unknown peer");
        return Err(LinkError::UnknownPeer);
    };
    let stream = connection.accept_bi().await.map_err(|e| LinkError::Stream(e.to_string()))?;
    Link::new(peer, connection, stream, codec)
}

impl Link {
    /// The link to `peer` over `connection`'s bidirectional `stream`.
    fn new(
        peer: DcId,
        connection: quinn::Connection,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        codec: &CodecConfig,
    ) -> Result<Self, LinkError> {
        Ok(Link {
            peer,
            connection,
            writer: FrameWriter::new(send, codec)?,
            reader: FrameReader::new(recv, codec)?,
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
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, codec: &CodecConfig) -> Result<Self, LinkError> {
        let codec = Codec::new(codec.clone()).map_err(|e| LinkError::Connection(e.to_string()))?;
        Ok(Self { recv, codec, buf: Vec::new() })
    }

    /// The next message; `Ok(None)` when the peer finished the stream.
    pub async fn next(&mut self) -> Result<Option<Message>, LinkError> {
        loop {
            if !self.buf.is_empty() {
                match self.codec.decode(&self.buf)? {
                    Decoded::Frame { message, info } => {
                        self.buf.drain(..info.frame_bytes);
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
