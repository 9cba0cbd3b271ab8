//! Codec settings and limits.

use crate::frame::HEADER_BYTES;
use mesh_core::topology::ReplicationConfig;
use mesh_core::VALUE_BYTES_MAX;

/// Smallest allowed `raw_bytes_max`: one op carrying a value of [`VALUE_BYTES_MAX`] bytes, with
/// room for its key, metadata and the batch around it, must fit in one frame.
pub const RAW_BYTES_MIN: usize = VALUE_BYTES_MAX + (64 << 10);

/// How a [`crate::Codec`] encodes, and the limits it enforces on both sides of the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    /// Whether bodies are zstd-compressed when that makes them smaller. Decoding accepts
    /// compressed frames either way.
    pub compression_enabled: bool,
    /// zstd level (see [`zstd::compression_level_range`]; 1 to 22 in mesh.toml, 3 by default).
    pub compression_level: i32,
    /// Largest encoded frame, header included, in bytes; a larger frame is refused as soon as
    /// its header is read.
    pub frame_bytes_max: usize,
    /// Largest MessagePack body once decompressed, in bytes; a larger one is refused before it
    /// is inflated.
    pub raw_bytes_max: usize,
    /// Most ops in one batch (mesh.toml `batch_size`).
    pub batch_ops_max: usize,
    /// Most key states in one snapshot chunk.
    pub snapshot_entries_max: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            compression_enabled: true,
            compression_level: 3,
            frame_bytes_max: 16 << 20,
            raw_bytes_max: 16 << 20,
            batch_ops_max: 10_000,
            snapshot_entries_max: 10_000,
        }
    }
}

impl CodecConfig {
    /// The codec settings of a topology's `[replication]` table: its compression switch and
    /// level, `batch_size` as the op bound, and `frame_bytes_max` as both the frame and the
    /// decompressed-body limit.
    pub fn from_replication(replication: &ReplicationConfig) -> Result<Self, ConfigError> {
        let frame_bytes_max = replication.frame_bytes_max as usize;
        let config = Self {
            compression_enabled: replication.compression_enabled,
            compression_level: replication.compression_level,
            frame_bytes_max,
            raw_bytes_max: frame_bytes_max.saturating_sub(HEADER_BYTES),
            batch_ops_max: replication.batch_size as usize,
            ..Self::default()
        };
        config.check()?;
        Ok(config)
    }

    /// Checks the settings are usable: a known zstd level, limits large enough for one
    /// maximal op and small enough for the header's 32-bit lengths, non-zero counts.
    pub fn check(&self) -> Result<(), ConfigError> {
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.compression_level) {
            return Err(ConfigError::CompressionLevel {
                level: self.compression_level,
                min: *levels.start(),
                max: *levels.end(),
            });
        }
        let field_max = u32::MAX as usize;
        if self.raw_bytes_max < RAW_BYTES_MIN || self.raw_bytes_max > field_max {
            return Err(ConfigError::Limit {
                field: "raw_bytes_max",
                value: self.raw_bytes_max,
                min: RAW_BYTES_MIN,
                max: field_max,
            });
        }
        let frame_min = RAW_BYTES_MIN + HEADER_BYTES;
        let frame_max = field_max + HEADER_BYTES;
        if self.frame_bytes_max < frame_min || self.frame_bytes_max > frame_max {
            return Err(ConfigError::Limit {
                field: "frame_bytes_max",
                value: self.frame_bytes_max,
                min: frame_min,
                max: frame_max,
            });
        }
        if self.batch_ops_max == 0 {
            return Err(ConfigError::Limit { field: "batch_ops_max", value: 0, min: 1, max: usize::MAX });
        }
        if self.snapshot_entries_max == 0 {
            return Err(ConfigError::Limit {
                field: "snapshot_entries_max",
                value: 0,
                min: 1,
                max: usize::MAX,
            });
        }
        Ok(())
    }
}

/// Why codec settings were refused. No codec is created when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The zstd level is outside the range the linked zstd supports.
    #[error("compression_level {level} is outside {min}..={max}")]
    CompressionLevel {
        /// The level asked for.
        level: i32,
        /// Lowest supported level.
        min: i32,
        /// Highest supported level.
        max: i32,
    },
    /// A limit is outside its allowed range.
    #[error("{field} = {value} is outside {min}..={max}")]
    Limit {
        /// The setting's name.
        field: &'static str,
        /// Its value.
        value: usize,
        /// Smallest allowed value.
        min: usize,
        /// Largest allowed value.
        max: usize,
    },
    /// zstd could not create a compression or decompression context (out of memory).
    #[error("zstd context: {0}")]
    Zstd(String),
}
