//! The fixed frame header and its checksum.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MESH"
//!      4     1  protocol major
//!      5     1  protocol minor
//!      6     1  flags (bit 0: body is zstd-compressed; other bits MUST be 0)
//!      7     1  reserved, MUST be 0
//!      8     4  body_len: bytes of body after the header (u32 LE)
//!     12     4  raw_len: bytes of the MessagePack body once decompressed (u32 LE)
//!     16     4  crc32c over bytes 0..16 of the header, then the body (u32 LE)
//!     20     …  body
//! ```

use crate::message::ProtocolVersion;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"MESH";

/// Bytes of the fixed header that precedes every body.
pub const HEADER_BYTES: usize = 20;

/// Flag bit: the body is a zstd frame that inflates to exactly `raw_len` bytes.
pub const FLAG_ZSTD: u8 = 0b0000_0001;

/// Every flag bit this version understands; a frame with another bit set is refused.
pub(crate) const FLAGS_KNOWN: u8 = FLAG_ZSTD;

/// Bytes of the header the checksum covers (everything before the checksum itself).
pub(crate) const CHECKSUMMED_HEADER_BYTES: usize = 16;

/// The fixed header of one frame, as read from or written to the wire. Parsing checks only the
/// layout; [`crate::Codec`] checks versions, flags and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The sender's protocol version.
    pub version: ProtocolVersion,
    /// Flag bits ([`FLAG_ZSTD`]).
    pub flags: u8,
    /// The reserved byte (0 in every valid frame).
    pub reserved: u8,
    /// Bytes of body following the header.
    pub body_len: u32,
    /// Bytes of MessagePack once the body is decompressed (equal to `body_len` when the body is
    /// not compressed).
    pub raw_len: u32,
    /// CRC-32C of header bytes 0..16 followed by the body.
    pub checksum: u32,
}

impl FrameHeader {
    /// Reads the header fields from the first [`HEADER_BYTES`] bytes, or `None` when `magic`
    /// does not match [`MAGIC`].
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Option<Self> {
        if bytes[0..4] != MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Some(Self {
            version: ProtocolVersion { major: bytes[4], minor: bytes[5] },
            flags: bytes[6],
            reserved: bytes[7],
            body_len: u32_at(8),
            raw_len: u32_at(12),
            checksum: u32_at(16),
        })
    }

    /// Whether the body is zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// The header's bytes; the checksum field is written as it is held.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version.major;
        out[5] = self.version.minor;
        out[6] = self.flags;
        out[7] = self.reserved;
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// The checksum this header must carry for `body`: CRC-32C over header bytes 0..16, then the
    /// body. Covering the header catches a flipped length or flag, not only a damaged body.
    pub fn checksum_for(&self, body: &[u8]) -> u32 {
        let header = self.to_bytes();
        let crc = crc32c::crc32c(&header[..CHECKSUMMED_HEADER_BYTES]);
        crc32c::crc32c_append(crc, body)
    }

    /// A header for `body` with its checksum filled in. `raw_len` is the decompressed length
    /// (the body's own length when it is not compressed). Used by the encoder, and by tests and
    /// fuzzers that need frames whose checksum is right but whose body is arbitrary.
    ///
    /// # Panics
    /// If `body` is longer than `u32::MAX` bytes (the codec's limits keep it far below).
    pub fn seal(version: ProtocolVersion, flags: u8, body: &[u8], raw_len: u32) -> Self {
        let body_len = u32::try_from(body.len()).expect("a body longer than u32::MAX bytes cannot be framed");
        let mut header = Self { version, flags, reserved: 0, body_len, raw_len, checksum: 0 };
        header.checksum = header.checksum_for(body);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTOCOL_VERSION;

    #[test]
    fn a_header_reads_back_what_was_written() {
        // Proves the byte layout is symmetric: every field lands at its documented offset and
        // parses back unchanged.
        let header = FrameHeader::seal(PROTOCOL_VERSION, FLAG_ZSTD, b"body", 1234);
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..4], b"MESH");
        assert_eq!(bytes[6], FLAG_ZSTD);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 1234);
        assert_eq!(FrameHeader::parse(&bytes), Some(header));
    }

    #[test]
    fn the_checksum_covers_the_lengths_in_the_header() {
        // Proves a flipped length changes the checksum, so it cannot pass as a valid frame.
        let header = FrameHeader::seal(PROTOCOL_VERSION, 0, b"body", 4);
        let longer = FrameHeader { body_len: 5, ..header };
        assert_ne!(header.checksum_for(b"body"), longer.checksum_for(b"body"));
    }
}
