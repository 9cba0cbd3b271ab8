//! Fuzzes the frame decoder: it must never panic, whatever the bytes, and any message it accepts
//! must be valid and survive a re-encode unchanged.
//!
//! Raw bytes alone rarely get past the magic and the checksum, so the input also says how to
//! wrap them: as-is, or sealed in a correct header as a plain body, a zstd-compressed body, or a
//! body that claims to be zstd with an arbitrary announced length.
//!
//! Run: `cargo +nightly fuzz run decode` from the workspace root (see docs/wire-format.md).
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mesh_wire::{Codec, CodecConfig, Decoded, FrameHeader, FLAG_ZSTD, PROTOCOL_VERSION};

/// How the fuzzer's bytes reach the decoder.
#[derive(Debug, Arbitrary)]
enum Input {
    /// A byte stream, fed to the streaming decoder in two reads split at `split`.
    Stream { bytes: Vec<u8>, split: u16 },
    /// A body behind a correct header and checksum, uncompressed.
    PlainBody(Vec<u8>),
    /// A body compressed with zstd, behind a correct header and checksum.
    CompressedBody(Vec<u8>),
    /// Bytes flagged as zstd with an arbitrary announced inflated length.
    ClaimedZstd { bytes: Vec<u8>, raw_len: u32 },
}

fn sealed(flags: u8, body: &[u8], raw_len: u32) -> Vec<u8> {
    let mut frame = FrameHeader::seal(PROTOCOL_VERSION, flags, body, raw_len).to_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

fn check(codec: &mut Codec, bytes: &[u8]) {
    let Ok(Decoded::Frame { message, info }) = codec.decode(bytes) else { return };
    assert!(info.frame_bytes <= bytes.len());
    assert!(message.validate(codec.config()).is_ok(), "an accepted message is valid");
    let again = codec.encode(&message).expect("an accepted message re-encodes");
    assert_eq!(codec.decode_frame(&again).expect("the re-encoded frame decodes"), Some(message));
}

fuzz_target!(|input: Input| {
    let mut codec = Codec::new(CodecConfig::default()).expect("default settings are valid");
    match input {
        Input::Stream { bytes, split } => {
            let split = usize::from(split).min(bytes.len());
            // A prefix either asks for more, fails, or is a whole frame on its own.
            let _ = codec.decode(&bytes[..split]);
            check(&mut codec, &bytes);
        }
        Input::PlainBody(body) => {
            let raw_len = body.len() as u32;
            check(&mut codec, &sealed(0, &body, raw_len));
        }
        Input::CompressedBody(body) => {
            let packed = zstd::bulk::compress(&body, 1).expect("zstd compresses any input");
            check(&mut codec, &sealed(FLAG_ZSTD, &packed, body.len() as u32));
        }
        Input::ClaimedZstd { bytes, raw_len } => {
            check(&mut codec, &sealed(FLAG_ZSTD, &bytes, raw_len));
        }
    }
});
