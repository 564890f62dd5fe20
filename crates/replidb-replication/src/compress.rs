//! Compression of replication frames (`--replication-compression`).
//!
//! Only the two frames that carry user data, `Records` and
//! `SnapshotChunk`, are ever compressed; everything else (handshake,
//! heartbeats, acks) is small and stays plain. The codec is negotiated per
//! stream at the handshake (see [`Offer`] and [`choose`]), so nodes with
//! different settings, and nodes that predate compression, still talk.
//!
//! # Compressed frame body
//! ```text
//! +---------------+-------------+-------------------+---------------------+
//! | marker: 0xC5  | codec: u8   | raw_len: u32 LE   | compressed bytes    |
//! +---------------+-------------+-------------------+---------------------+
//! ```
//! It takes the place of `postcard(Frame)` inside the checksummed body
//! (see [`crate::frame`]). The marker is a byte no postcard-encoded
//! [`Frame`](crate::Frame) starts with (those start with their variant
//! index, 0..=9), so it is the per-frame flag: a frame below
//! [`COMPRESS_MIN_BYTES`], or one that did not shrink, is sent plain even
//! on a compressed stream.
//!
//! # Decoding is bounded
//! `raw_len` is checked against [`RAW_BYTES_MAX`] (what a plain frame may
//! carry) before anything is allocated; LZ4 input that could not expand to
//! `raw_len` is refused outright (LZ4 expands at most
//! [`LZ4_EXPANSION_MAX`] times); zstd output is read incrementally and cut
//! at `raw_len + 1` bytes, with the decoder's window capped at
//! [`ZSTD_WINDOW_LOG_MAX`]. The output must be exactly `raw_len` bytes. A
//! peer therefore cannot make us hold more than one frame's worth of
//! memory, and a damaged payload is an error, never a panic.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::Serialize;

use crate::frame::FRAME_BYTES_MAX;

/// First byte of a compressed frame body (after the checksum).
pub const COMPRESSED_MARKER: u8 = 0xC5;

/// Bytes of a compressed frame's header: marker, codec id, `raw_len`.
pub const COMPRESSED_HEADER_BYTES: usize = 1 + 1 + 4;

/// Frames whose encoding is shorter than this go uncompressed: heartbeats
/// and one-record batches would gain nothing and cost CPU.
pub const COMPRESS_MIN_BYTES: usize = 256;

/// The most bytes a compressed frame may decompress to: exactly what a
/// plain frame's body may hold (the frame limit less its checksum), so
/// compression never lets a larger frame through than the plain path.
pub const RAW_BYTES_MAX: usize = FRAME_BYTES_MAX - 4;

/// The most an LZ4 block can expand: a match length is extended by one
/// 255 byte per input byte, so no block grows more than about 255 times.
pub const LZ4_EXPANSION_MAX: usize = 256;

/// Largest zstd window a peer's frame may ask for, as a power of two
/// (8 MiB): our encoder's level uses 2 MiB windows; a larger one is either
/// damage or an attempt to make the decoder allocate.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// zstd level the encoder uses: zstd's default, the usual balance of ratio
/// and speed for streaming data.
pub const ZSTD_LEVEL: i32 = 3;

// The declared size fits the header's u32, and a compressed frame (header
// plus payload, only ever sent when smaller than the plain body) fits the
// frame limit whatever the codec.
const _: () = assert!(RAW_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(RAW_BYTES_MAX + 4 == FRAME_BYTES_MAX);
// Compressing is tried only where the header is a small fraction of it.
const _: () = assert!(COMPRESS_MIN_BYTES > 8 * COMPRESSED_HEADER_BYTES);
// The marker is not a postcard varint a Frame's variant index could start
// with (indices below 0x80 are one byte equal to the index).
const _: () = assert!(COMPRESSED_MARKER >= 0x80);

/// A compression codec of the replication stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Frames are sent as they are.
    None,
    /// LZ4 (block format, pure Rust): cheap, a moderate ratio.
    Lz4,
    /// zstd at [`ZSTD_LEVEL`]: a better ratio for more CPU.
    Zstd,
}

impl Codec {
    /// The default setting of `--replication-compression`: LZ4 costs little
    /// CPU (hundreds of MB/s per core) and a frame that does not shrink is
    /// sent plain, so it rarely costs anything and often halves the bytes.
    pub const DEFAULT: Codec = Codec::Lz4;

    /// Every codec, in wire-id order.
    pub const ALL: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

    /// The codec's id on the wire.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    /// The codec with wire id `id`, if this build knows it.
    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The name used by the flag, `/status` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown codec name.
#[derive(Debug, thiserror::Error)]
#[error("unknown replication compression {0:?}: expected none, lz4 or zstd")]
pub struct UnknownCodec(pub String);

impl FromStr for Codec {
    type Err = UnknownCodec;
    fn from_str(s: &str) -> Result<Codec, UnknownCodec> {
        let name = s.trim();
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownCodec(s.to_string()))
    }
}

/// What the connecting side says in its `Hello`: which codecs it can
/// decode, and which it would prefer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Codecs the connecting side decodes (`None` is always implied).
    pub decodes: Vec<Codec>,
    /// The connecting side's own setting (informational: the serving side
    /// sends with its own setting when it can).
    pub prefer: Codec,
}

impl Default for Offer {
    /// What a node that predates compression offers: plain frames only.
    fn default() -> Self {
        Offer {
            decodes: Vec::new(),
            prefer: Codec::None,
        }
    }
}

impl Offer {
    /// A node of this build: it decodes every codec, and prefers `prefer`.
    pub fn all(prefer: Codec) -> Offer {
        Offer {
            decodes: Codec::ALL.to_vec(),
            prefer,
        }
    }

    /// Whether the connecting side can decode `codec`.
    pub fn can_decode(&self, codec: Codec) -> bool {
        codec == Codec::None || self.decodes.contains(&codec)
    }
}

/// The serving side's choice: its own setting if the other side decodes
/// it, else none.
pub fn choose(own: Codec, offer: &Offer) -> Codec {
    if offer.can_decode(own) {
        own
    } else {
        Codec::None
    }
}

/// Why a compressed payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The header names a codec this build does not know.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// A codec this side did not agree to at the handshake.
    #[error("codec {0} was not negotiated on this stream")]
    NotNegotiated(Codec),
    /// The header is cut short.
    #[error("compressed frame shorter than its header")]
    ShortHeader,
    /// The declared size is over the limit (or impossible for the input).
    #[error("declared uncompressed size {declared} bytes exceeds {max_bytes} bytes")]
    TooLarge {
        /// Declared uncompressed bytes.
        declared: usize,
        /// The bound it broke.
        max_bytes: usize,
    },
    /// The payload did not decompress to exactly the declared size.
    #[error("payload decompressed to {actual} bytes, header said {declared}")]
    LengthMismatch {
        /// Declared uncompressed bytes.
        declared: usize,
        /// What came out (at most `declared + 1`: decoding stops there).
        actual: usize,
    },
    /// The codec refused the payload.
    #[error("corrupt {codec} payload: {reason}")]
    Corrupt {
        /// The codec.
        codec: Codec,
        /// What the codec said.
        reason: String,
    },
    /// The encoder failed (zstd context allocation).
    #[error("{codec} encoder failed: {reason}")]
    Encoder {
        /// The codec.
        codec: Codec,
        /// What the codec said.
        reason: String,
    },
}

/// A reusable compressor for one codec (zstd keeps its context between
/// frames, which matters for the many mid-sized batches of a busy stream).
pub struct Compressor {
    codec: Codec,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("codec", &self.codec)
            .finish()
    }
}

impl Compressor {
    /// A compressor for `codec`.
    pub fn new(codec: Codec) -> Compressor {
        Compressor { codec, zstd: None }
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// `raw` compressed with this codec (no header). `None` for
    /// [`Codec::None`].
    pub fn compress(&mut self, raw: &[u8]) -> Result<Option<Vec<u8>>, CompressError> {
        match self.codec {
            Codec::None => Ok(None),
            Codec::Lz4 => Ok(Some(lz4_flex::block::compress(raw))),
            Codec::Zstd => {
                let encoder_error = |e: std::io::Error| CompressError::Encoder {
                    codec: Codec::Zstd,
                    reason: e.to_string(),
                };
                if self.zstd.is_none() {
                    self.zstd =
                        Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(encoder_error)?);
                }
                match self.zstd.as_mut() {
                    Some(z) => z.compress(raw).map(Some).map_err(encoder_error),
                    None => Ok(None),
                }
            }
        }
    }
}

/// Decompress `payload` of `codec`, which must come to exactly `declared`
/// bytes, never more than `max_bytes`.
pub fn decompress(
    codec: Codec,
    payload: &[u8],
    declared: usize,
    max_bytes: usize,
) -> Result<Vec<u8>, CompressError> {
    if declared > max_bytes {
        return Err(CompressError::TooLarge {
            declared,
            max_bytes,
        });
    }
    let corrupt = |reason: String| CompressError::Corrupt { codec, reason };
    let out = match codec {
        Codec::None => return Err(CompressError::NotNegotiated(Codec::None)),
        Codec::Lz4 => {
            // No LZ4 block of this size can expand this far: refuse before
            // allocating `declared` bytes for it.
            let possible = payload.len().saturating_mul(LZ4_EXPANSION_MAX);
            if declared > possible {
                return Err(CompressError::TooLarge {
                    declared,
                    max_bytes: possible,
                });
            }
            let mut out = vec![0u8; declared];
            let n = lz4_flex::block::decompress_into(payload, &mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            out.truncate(n);
            out
        }
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| corrupt(e.to_string()))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(e.to_string()))?;
            // Grow with what actually comes out, and stop one byte past the
            // declared size: a lie about the size costs at most that.
            let mut out = Vec::new();
            decoder
                .take(declared as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            out
        }
    };
    if out.len() != declared {
        return Err(CompressError::LengthMismatch {
            declared,
            actual: out.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compressible(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"{\"user\":\"alice\",\"n\":12}"[i % 23])
            .collect()
    }

    #[test]
    fn names_parse_and_print() {
        for c in Codec::ALL {
            assert_eq!(c.name().parse::<Codec>().unwrap(), c);
            assert_eq!(Codec::from_id(c.id()), Some(c));
        }
        assert_eq!("ZSTD".parse::<Codec>().unwrap(), Codec::Zstd);
        assert!("gzip".parse::<Codec>().is_err());
        assert_eq!(Codec::from_id(9), None);
    }

    #[test]
    fn choice_is_own_setting_when_decodable_else_none() {
        assert_eq!(choose(Codec::Zstd, &Offer::all(Codec::None)), Codec::Zstd);
        assert_eq!(choose(Codec::Lz4, &Offer::default()), Codec::None);
        assert_eq!(choose(Codec::None, &Offer::all(Codec::Zstd)), Codec::None);
        let lz4_only = Offer {
            decodes: vec![Codec::Lz4],
            prefer: Codec::Lz4,
        };
        assert_eq!(choose(Codec::Zstd, &lz4_only), Codec::None);
        assert_eq!(choose(Codec::Lz4, &lz4_only), Codec::Lz4);
    }

    #[test]
    fn compressible_data_shrinks() {
        let raw = compressible(64 * 1024);
        for codec in [Codec::Lz4, Codec::Zstd] {
            let packed = Compressor::new(codec).compress(&raw).unwrap().unwrap();
            assert!(packed.len() * 10 < raw.len(), "{codec}: {}", packed.len());
            let back = decompress(codec, &packed, raw.len(), RAW_BYTES_MAX).unwrap();
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn declared_size_over_the_limit_is_refused_before_decoding() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let raw = compressible(4096);
            let packed = Compressor::new(codec).compress(&raw).unwrap().unwrap();
            let err = decompress(codec, &packed, RAW_BYTES_MAX + 1, RAW_BYTES_MAX).unwrap_err();
            assert!(matches!(err, CompressError::TooLarge { .. }), "{err}");
        }
        // LZ4: 10 bytes cannot become 1 MiB.
        let err = decompress(Codec::Lz4, &[0u8; 10], 1 << 20, RAW_BYTES_MAX).unwrap_err();
        assert!(matches!(err, CompressError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_lie_about_the_size_is_an_error() {
        let raw = compressible(10_000);
        for codec in [Codec::Lz4, Codec::Zstd] {
            let packed = Compressor::new(codec).compress(&raw).unwrap().unwrap();
            for declared in [raw.len() - 1, raw.len() + 1, 300] {
                let err = decompress(codec, &packed, declared, RAW_BYTES_MAX).unwrap_err();
                assert!(
                    matches!(
                        err,
                        CompressError::LengthMismatch { .. } | CompressError::Corrupt { .. }
                    ),
                    "{codec} {declared}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_declared_size() {
        // 64 MiB of zeros compress to a few kB; declared small, the decoder
        // must stop after declared + 1 bytes instead of inflating it all.
        let zeros = vec![0u8; 64 << 20];
        let packed = zstd::bulk::compress(&zeros, 1).unwrap();
        assert!(packed.len() < 1 << 20);
        let err = decompress(Codec::Zstd, &packed, 1000, RAW_BYTES_MAX).unwrap_err();
        assert!(
            matches!(err, CompressError::LengthMismatch { actual: 1001, .. }),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn round_trip_every_codec(
            raw in proptest::collection::vec(any::<u8>(), 0..4096),
            repeat in 1usize..8,
        ) {
            let raw: Vec<u8> = raw.iter().copied().cycle().take(raw.len() * repeat).collect();
            for codec in [Codec::Lz4, Codec::Zstd] {
                let packed = Compressor::new(codec).compress(&raw).unwrap().unwrap();
                let back = decompress(codec, &packed, raw.len(), RAW_BYTES_MAX).unwrap();
                prop_assert_eq!(&back, &raw);
            }
        }

        #[test]
        fn damaged_payload_never_panics(
            raw in proptest::collection::vec(any::<u8>(), 1..2048),
            flip in any::<usize>(),
            declared_delta in -2i64..2,
        ) {
            for codec in [Codec::Lz4, Codec::Zstd] {
                let mut packed = Compressor::new(codec).compress(&raw).unwrap().unwrap();
                let i = flip % packed.len();
                packed[i] ^= 0x5A;
                let declared = (raw.len() as i64 + declared_delta).max(0) as usize;
                // An error or (rarely, a flip the codec cannot notice) bytes
                // of exactly the declared length: never a panic.
                if let Ok(out) = decompress(codec, &packed, declared, RAW_BYTES_MAX) {
                    prop_assert_eq!(out.len(), declared);
                }
            }
        }
    }
}
