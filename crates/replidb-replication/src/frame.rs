//! Stream frames and their codec.
//!
//! # Byte layout
//! ```text
//! +-------------+--------------+-----------------------------+
//! | len: u32 BE | crc32c: u32  | postcard(Frame)             |
//! |  (crc+body) |  LE, of body |                             |
//! +-------------+--------------+-----------------------------+
//! ```
//! The body after the checksum is either `postcard(Frame)` or, for a
//! compressed `Records` or `SnapshotChunk` frame, a compressed envelope
//! (see [`crate::compress`]) whose first byte no plain body starts with.
//!
//! `Hello` and `Welcome` carry a handshake extension *after* their postcard
//! encoding: the codecs the connecting side decodes and the codec the
//! serving side chose. Nodes that predate it ignore bytes after a frame
//! (postcard's `from_bytes` does), and a frame without it reads as "plain
//! frames only", so old and new nodes still talk, uncompressed. Every other
//! frame must end where its encoding ends.
//!
//! ```text
//! Hello extension:   [version = 1][n: u8][n codec ids][preferred codec id]
//! Welcome extension: [version = 1][chosen codec id]
//! ```
//!
//! `len` is handled by `tokio_util`'s length-delimited codec (big-endian,
//! capped at [`FRAME_BYTES_MAX`]); the checksum guards against a peer or a
//! middlebox handing us damaged bytes, which TCP's 16-bit checksum misses
//! often enough at volume. A bad checksum or an undecodable body closes the
//! stream; the follower reconnects and resumes from its flush LSN, so a
//! damaged frame costs a reconnect, never a wrong record.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use replidb_core::{Epoch, EpochHistory, Lsn, Record, Versioned};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::compress::{
    self, Codec, CompressError, Compressor, Offer, COMPRESSED_HEADER_BYTES, COMPRESSED_MARKER,
    COMPRESS_MIN_BYTES, RAW_BYTES_MAX,
};

/// Largest frame sent or accepted, in bytes (checksum and body). Every
/// record batch and snapshot chunk fits: see the assertions below.
pub const FRAME_BYTES_MAX: usize = 96 * 1024 * 1024;

/// Most records in one `Records` frame (`LeaderOptions::batch_max_records`
/// is capped here).
pub const BATCH_RECORDS_MAX: usize = 4096;

/// Most bytes of records (counted as WAL frames) after which a `Records`
/// batch takes no further record (`LeaderOptions::batch_max_bytes` is
/// capped here). A batch is therefore at most this plus one record.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most bytes of entries (counted by `replidb_storage::entry_bytes`) in one
/// snapshot chunk (`LeaderOptions::snapshot_chunk_bytes_max` is capped
/// here). A chunk is at most this, or one entry alone.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes the stream encoding of one record may take beyond its WAL frame:
/// postcard writes the LSN, epoch and HLC as varints (up to 10 + 10 + 10 + 5
/// bytes where the WAL has 8 + 8 + 8 + 4 fixed, and no 8-byte frame header).
pub const RECORD_STREAM_EXCESS_BYTES: usize = 8;

/// Bytes of a frame beyond its records or entries: checksum, variant tag,
/// vector length and the fixed fields.
pub const FRAME_OVERHEAD_BYTES: usize = 1024;

/// The most bytes one snapshot entry can count: the longest key and a value
/// as large as a whole record (values only ever come from records).
pub const SNAPSHOT_ENTRY_BYTES_MAX: usize = replidb_core::MAX_KEY_BYTES
    + replidb_wal::codec::RECORD_BYTES_MAX as usize
    + replidb_storage::ENTRY_OVERHEAD_BYTES;

/// The most bytes one WAL record can take as a frame.
const RECORD_FRAME_BYTES_MAX: usize =
    replidb_wal::codec::FRAME_HEADER_LEN + replidb_wal::codec::RECORD_BYTES_MAX as usize;

// Limits that must fit inside the limits around them. A failure here is a
// build error, not a follower retrying a snapshot forever.
// The largest value a node accepts, with its key and record overhead, fits
// a batch: a batch never has to carry it alone because of its size.
const _: () = assert!(
    replidb_core::VALUE_BYTES_MAX
        + replidb_core::MAX_KEY_BYTES
        + replidb_wal::codec::RECORD_OVERHEAD_BYTES
        <= BATCH_BYTES_MAX
);
// A full batch plus the record that crossed the byte limit (the largest
// record the WAL holds), with every record's encoding excess, fits a frame.
const _: () = assert!(
    BATCH_BYTES_MAX
        + RECORD_FRAME_BYTES_MAX
        + (BATCH_RECORDS_MAX + 1) * RECORD_STREAM_EXCESS_BYTES
        + FRAME_OVERHEAD_BYTES
        <= FRAME_BYTES_MAX
);
// A full snapshot chunk fits a frame, and so does the largest entry alone.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX + FRAME_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(SNAPSHOT_ENTRY_BYTES_MAX + FRAME_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
// A frame length fits the u32 length prefix.
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// Every message of the replication protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Follower → leader, first frame: who I am and where my log ends.
    Hello {
        /// Follower id.
        node_id: String,
        /// URL clients can reach the follower at.
        addr: String,
        /// Highest epoch the follower has seen.
        epoch: Epoch,
        /// Follower's flush LSN.
        flush_lsn: Lsn,
        /// Follower's applied LSN.
        applied_lsn: Lsn,
        /// Epoch of the follower's record at `flush_lsn`.
        last_epoch: Epoch,
        /// The follower's epoch history.
        history: EpochHistory,
        /// The topology and conflict policies the sender runs with
        /// (empty for single-leader; `multi-leader;*=lww,...` otherwise).
        /// The leader refuses a peer whose fingerprint differs from its own:
        /// nodes that resolve conflicts differently would never converge.
        topology: String,
        /// The codecs the sender decodes and its preference. Travels in the
        /// handshake extension after the postcard body (see the module
        /// docs), not in it: nodes that predate compression ignore it.
        #[serde(skip)]
        compression: Offer,
    },
    /// Follower → leader: positions after an fsync or an apply.
    Ack {
        /// Durably written.
        flush_lsn: Lsn,
        /// Applied to the table.
        applied_lsn: Lsn,
        /// The follower's own apply-lag estimate in ms (informational: the
        /// leader measures lag on its own clock).
        lag_ms: u64,
        /// The `sent_mono_ms` of the newest leader frame the follower had
        /// received when it sent this ack (0: none yet). The leader credits
        /// the follower's contact at *that* time, on its own clock, never
        /// at the time it reads the ack: acks that sat in a socket while
        /// the leader was paused prove nothing about now.
        echo_mono_ms: u64,
    },
    /// Leader → follower: accepted; records follow from `start_lsn`.
    Welcome {
        /// Leader id.
        leader_id: String,
        /// Leader's epoch.
        epoch: Epoch,
        /// Leader's epoch history.
        history: EpochHistory,
        /// First LSN the leader will send (after a snapshot, if one comes).
        start_lsn: Lsn,
        /// The codec the leader will compress `Records` and `SnapshotChunk`
        /// frames with. In the handshake extension, like `Hello`'s offer;
        /// absent (a leader that predates compression) reads as none.
        #[serde(skip, default = "codec_none")]
        compression: Codec,
    },
    /// Leader → follower: your log has records mine does not; keep only
    /// up to `common_lsn` and reconnect.
    Diverged {
        /// Last LSN both logs agree on.
        common_lsn: Lsn,
        /// Leader's epoch.
        epoch: Epoch,
    },
    /// Leader → follower: refused (stale epoch or bad request).
    Refused {
        /// Why.
        reason: String,
        /// The refusing node's epoch.
        epoch: Epoch,
    },
    /// Leader → follower: a table snapshot at `lsn` follows.
    SnapshotBegin {
        /// The snapshot's LSN.
        lsn: Lsn,
    },
    /// A slice of the snapshot, keys ascending.
    SnapshotChunk {
        /// Entries.
        entries: Vec<(String, Versioned)>,
    },
    /// End of the snapshot; streaming continues at `lsn + 1`.
    SnapshotEnd {
        /// The snapshot's LSN.
        lsn: Lsn,
    },
    /// Leader → follower: a batch of consecutive records.
    Records {
        /// The records, gapless.
        records: Vec<Record>,
        /// Leader's last LSN at send time.
        last_lsn: Lsn,
        /// Leader's commit LSN.
        commit_lsn: Lsn,
        /// How long ago, on the leader's monotonic clock, the first record
        /// of the batch became durable there. An age, not a timestamp: the
        /// follower subtracts it from its own monotonic clock, so no two
        /// nodes' clocks are ever compared.
        first_age_ms: u64,
        /// When `last_lsn` is past the batch: the age of the first record
        /// after the batch (the oldest one the follower has not received);
        /// else 0.
        behind_age_ms: u64,
        /// The leader's monotonic clock when it sent this frame, echoed
        /// back in acks (check-quorum, leadership confirmation).
        sent_mono_ms: u64,
    },
    /// Leader → follower on an idle stream.
    Heartbeat {
        /// Leader's last LSN.
        last_lsn: Lsn,
        /// Leader's commit LSN.
        commit_lsn: Lsn,
        /// Age, on the leader's monotonic clock, of the oldest record this
        /// follower has not acknowledged as applied (0 when it has them
        /// all): the follower's apply lag as the leader sees it.
        lacking_age_ms: u64,
        /// Leader's epoch.
        epoch: Epoch,
        /// URLs of the cluster's nodes as the leader knows them (itself and
        /// its followers), so a follower promoted later can tell them.
        peers: Vec<String>,
        /// The leader's monotonic clock when it sent this frame, echoed
        /// back in acks (check-quorum, leadership confirmation).
        sent_mono_ms: u64,
    },
}

fn codec_none() -> Codec {
    Codec::None
}

impl Frame {
    /// Whether this kind of frame may travel compressed: only those that
    /// carry user data in bulk.
    pub fn compressible(&self) -> bool {
        matches!(self, Frame::Records { .. } | Frame::SnapshotChunk { .. })
    }

    /// The variant's name, for errors and logs: never the contents, which
    /// for records and snapshot chunks are user values.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Ack { .. } => "ack",
            Frame::Welcome { .. } => "welcome",
            Frame::Diverged { .. } => "diverged",
            Frame::Refused { .. } => "refused",
            Frame::SnapshotBegin { .. } => "snapshot_begin",
            Frame::SnapshotChunk { .. } => "snapshot_chunk",
            Frame::SnapshotEnd { .. } => "snapshot_end",
            Frame::Records { .. } => "records",
            Frame::Heartbeat { .. } => "heartbeat",
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Transport failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The checksum did not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The body did not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A compressed body was refused (damaged, oversized, or a codec that
    /// was not negotiated).
    #[error("compressed frame: {0}")]
    Compressed(#[from] CompressError),
}

/// Version of the handshake extension after `Hello` and `Welcome`.
pub const HANDSHAKE_EXTENSION_VERSION: u8 = 1;

/// Most codec ids a `Hello` may list.
pub const HELLO_CODECS_MAX: usize = 16;

/// Counters of what one stream sent: bytes as plain frames would have
/// taken, and bytes actually sent.
#[derive(Clone, Debug)]
struct SendStats {
    uncompressed: metrics::Counter,
    sent: metrics::Counter,
}

/// Codec for [`Frame`]s over any byte stream.
///
/// By default it sends every frame plain and refuses compressed ones; a
/// stream switches on compression after its handshake with
/// [`FrameCodec::set_send`] (the serving side) and [`FrameCodec::set_accept`]
/// (the connecting side).
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    compressor: Compressor,
    /// Codecs incoming compressed frames may use (never `None`).
    accept: Vec<Codec>,
    stats: Option<SendStats>,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("send", &self.compressor.codec())
            .field("accept", &self.accept)
            .finish()
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .max_frame_length(FRAME_BYTES_MAX)
                .new_codec(),
            compressor: Compressor::new(Codec::None),
            accept: Vec::new(),
            stats: None,
        }
    }
}

impl FrameCodec {
    /// A codec that decodes compressed frames of every codec (tests, and
    /// observers of a stream such as the simulator's fault injector).
    pub fn accepting_all() -> FrameCodec {
        let mut c = FrameCodec::default();
        c.set_accept(&Codec::ALL);
        c
    }

    /// Compress outgoing `Records` and `SnapshotChunk` frames with `codec`
    /// from now on, counting bytes in
    /// `replidb_replication_bytes_uncompressed_total` and
    /// `replidb_replication_bytes_sent_total` labelled with `node_id` and
    /// the codec.
    pub fn set_send(&mut self, codec: Codec, node_id: &str) {
        self.compressor = Compressor::new(codec);
        self.stats = Some(SendStats {
            uncompressed: metrics::counter!("replidb_replication_bytes_uncompressed_total", "node_id" => node_id.to_string(), "codec" => codec.name()),
            sent: metrics::counter!("replidb_replication_bytes_sent_total", "node_id" => node_id.to_string(), "codec" => codec.name()),
        });
    }

    /// The codec outgoing frames are compressed with.
    pub fn send_codec(&self) -> Codec {
        self.compressor.codec()
    }

    /// Accept incoming compressed frames of these codecs only (the one the
    /// handshake chose); any other is a protocol error.
    pub fn set_accept(&mut self, codecs: &[Codec]) {
        self.accept = codecs
            .iter()
            .copied()
            .filter(|c| *c != Codec::None)
            .collect();
    }
}

/// Encode one frame body, plain: checksum then postcard (and the handshake
/// extension for `Hello` and `Welcome`).
pub fn encode_body(frame: &Frame) -> Result<Bytes, FrameError> {
    encode_body_with(frame, &mut Compressor::new(Codec::None)).map(|(body, _)| body)
}

/// `frame`'s postcard encoding followed by its handshake extension, if it
/// has one.
fn plain_bytes(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut body = postcard::to_stdvec(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    match frame {
        Frame::Hello { compression, .. } => {
            let ids: Vec<u8> = compression
                .decodes
                .iter()
                .take(HELLO_CODECS_MAX)
                .map(|c| c.id())
                .collect();
            body.push(HANDSHAKE_EXTENSION_VERSION);
            body.push(ids.len() as u8);
            body.extend_from_slice(&ids);
            body.push(compression.prefer.id());
        }
        Frame::Welcome { compression, .. } => {
            body.push(HANDSHAKE_EXTENSION_VERSION);
            body.push(compression.id());
        }
        _ => {}
    }
    Ok(body)
}

/// Encode one frame body, compressing it with `compressor` when it may be
/// and it pays: `(body, bytes of the body had it been sent plain)`.
fn encode_body_with(
    frame: &Frame,
    compressor: &mut Compressor,
) -> Result<(Bytes, usize), FrameError> {
    let plain = plain_bytes(frame)?;
    let plain_len = 4 + plain.len();
    let mut payload = None;
    if frame.compressible() && plain.len() >= COMPRESS_MIN_BYTES {
        if let Some(packed) = compressor.compress(&plain)? {
            // Incompressible data (random bytes, already compressed
            // values) goes plain rather than grow.
            if packed.len() + COMPRESSED_HEADER_BYTES < plain.len() {
                let mut out = Vec::with_capacity(COMPRESSED_HEADER_BYTES + packed.len());
                out.push(COMPRESSED_MARKER);
                out.push(compressor.codec().id());
                // Fits: a plain frame is at most RAW_BYTES_MAX (asserted
                // in `compress`), checked again by the length codec.
                out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
                payload = Some(out);
            }
        }
    }
    let payload = payload.unwrap_or(plain);
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    out.put_u32_le(crc32c::crc32c(&payload));
    out.put_slice(&payload);
    Ok((out.freeze(), plain_len))
}

/// Decode one plain frame body produced by [`encode_body`].
pub fn decode_body(buf: BytesMut) -> Result<Frame, FrameError> {
    decode_body_accepting(buf, &[])
}

/// Decode one frame body, accepting compressed bodies of `accept` only.
fn decode_body_accepting(mut buf: BytesMut, accept: &[Codec]) -> Result<Frame, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Malformed("short frame".into()));
    }
    let crc = buf.get_u32_le();
    if crc32c::crc32c(&buf) != crc {
        return Err(FrameError::Checksum);
    }
    if buf.first() == Some(&COMPRESSED_MARKER) {
        return decode_compressed(&buf, accept);
    }
    let (mut frame, rest) = postcard::take_from_bytes::<Frame>(&buf)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    match &mut frame {
        Frame::Hello { compression, .. } => *compression = hello_extension(rest)?,
        Frame::Welcome { compression, .. } => *compression = welcome_extension(rest)?,
        other if !rest.is_empty() => {
            return Err(FrameError::Malformed(format!(
                "{} bytes after a {} frame",
                rest.len(),
                other.kind()
            )))
        }
        _ => {}
    }
    Ok(frame)
}

/// A compressed body (checksum already checked): header, bounded
/// decompression, then a plain frame of a compressible kind that fills the
/// decompressed bytes exactly.
fn decode_compressed(body: &[u8], accept: &[Codec]) -> Result<Frame, FrameError> {
    let Some(header) = body.get(..COMPRESSED_HEADER_BYTES) else {
        return Err(CompressError::ShortHeader.into());
    };
    let codec = Codec::from_id(header[1]).ok_or(CompressError::UnknownCodec(header[1]))?;
    if !accept.contains(&codec) {
        return Err(CompressError::NotNegotiated(codec).into());
    }
    let raw_len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let raw = compress::decompress(
        codec,
        &body[COMPRESSED_HEADER_BYTES..],
        raw_len,
        RAW_BYTES_MAX,
    )?;
    let (frame, rest) = postcard::take_from_bytes::<Frame>(&raw)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after a compressed {} frame",
            rest.len(),
            frame.kind()
        )));
    }
    if !frame.compressible() {
        return Err(FrameError::Malformed(format!(
            "a {} frame arrived compressed; only records and snapshot chunks are",
            frame.kind()
        )));
    }
    Ok(frame)
}

/// The offer after a `Hello`'s postcard body; none (a node that predates
/// compression) offers plain frames only. Unknown codec ids are skipped: a
/// newer node may decode codecs this one does not know.
fn hello_extension(rest: &[u8]) -> Result<Offer, FrameError> {
    let Some((&version, rest)) = rest.split_first() else {
        return Ok(Offer::default());
    };
    let bad = |what: &str| FrameError::Malformed(format!("hello extension: {what}"));
    if version != HANDSHAKE_EXTENSION_VERSION {
        return Err(bad(&format!("unknown version {version}")));
    }
    let Some((&n, rest)) = rest.split_first() else {
        return Err(bad("no codec count"));
    };
    let n = usize::from(n);
    if n > HELLO_CODECS_MAX {
        return Err(bad(&format!("{n} codecs, at most {HELLO_CODECS_MAX}")));
    }
    match rest {
        [ids @ .., prefer] if ids.len() == n => Ok(Offer {
            decodes: ids.iter().filter_map(|&id| Codec::from_id(id)).collect(),
            prefer: Codec::from_id(*prefer).unwrap_or(Codec::None),
        }),
        _ => Err(bad("wrong length")),
    }
}

/// The codec after a `Welcome`'s postcard body; none from a leader that
/// predates compression.
fn welcome_extension(rest: &[u8]) -> Result<Codec, FrameError> {
    match rest {
        [] => Ok(Codec::None),
        [HANDSHAKE_EXTENSION_VERSION, id] => Codec::from_id(*id)
            .ok_or_else(|| FrameError::Malformed(format!("welcome names unknown codec {id}"))),
        _ => Err(FrameError::Malformed(format!(
            "welcome extension of {} bytes",
            rest.len()
        ))),
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.inner.decode(src)? {
            Some(body) => decode_body_accepting(body, &self.accept).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (body, plain_len) = encode_body_with(&frame, &mut self.compressor)?;
        if let Some(stats) = &self.stats {
            // Both counts include the 4-byte length prefix.
            stats.uncompressed.increment(4 + plain_len as u64);
            stats.sent.increment(4 + body.len() as u64);
        }
        self.inner.encode(body, dst)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use replidb_core::{Hlc, Op};

    proptest! {
        #[test]
        fn compressed_round_trip(n in 0u64..40, value in proptest::collection::vec(any::<u8>(), 0..64), codec in 0usize..3) {
            let codec = Codec::ALL[codec];
            let frame = records_frame(n, value);
            let mut buf = wire(&frame, codec);
            let mut rx = FrameCodec::default();
            rx.set_accept(&[codec]);
            prop_assert_eq!(rx.decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }
    }

    fn records_frame(n: u64, value: Vec<u8>) -> Frame {
        Frame::Records {
            records: (1..=n)
                .map(|i| Record {
                    lsn: Lsn(i),
                    epoch: Epoch(1),
                    hlc: Hlc {
                        wall_ms: i,
                        logical: 0,
                    },
                    op: Op::Put {
                        key: format!("k{i}"),
                        value: value.clone(),
                    },
                })
                .collect(),
            last_lsn: Lsn(n),
            commit_lsn: Lsn(n / 2),
            first_age_ms: 7,
            behind_age_ms: 0,
            sent_mono_ms: 9,
        }
    }

    proptest! {
        #[test]
        fn round_trip(n in 0u64..20, value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let frame = records_frame(n, value);
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            codec.encode(frame.clone(), &mut buf).unwrap();
            let back = codec.decode(&mut buf).unwrap();
            prop_assert_eq!(back, Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn flipped_bit_never_yields_a_frame(n in 1u64..5, bit in 0usize..4096) {
            let frame = records_frame(n, b"v".to_vec());
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            codec.encode(frame, &mut buf).unwrap();
            // Flip a bit after the 4-byte length prefix.
            let idx = 4 + (bit / 8) % (buf.len() - 4);
            buf[idx] ^= 1 << (bit % 8);
            prop_assert!(codec.decode(&mut buf).is_err());
        }
    }

    fn compressible_frame() -> Frame {
        records_frame(50, br#"{"user":"alice","cart":[1,2,3],"ok":true}"#.to_vec())
    }

    fn wire(frame: &Frame, send: Codec) -> BytesMut {
        let mut codec = FrameCodec::default();
        codec.set_send(send, "test");
        let mut buf = BytesMut::new();
        codec.encode(frame.clone(), &mut buf).unwrap();
        buf
    }

    fn hello(compression: Offer) -> Frame {
        Frame::Hello {
            node_id: "n2".into(),
            addr: "http://n2".into(),
            epoch: Epoch(3),
            flush_lsn: Lsn(9),
            applied_lsn: Lsn(8),
            last_epoch: Epoch(3),
            history: EpochHistory::default(),
            topology: String::new(),
            compression,
        }
    }

    fn welcome(compression: Codec) -> Frame {
        Frame::Welcome {
            leader_id: "n1".into(),
            epoch: Epoch(3),
            history: EpochHistory::default(),
            start_lsn: Lsn(10),
            compression,
        }
    }

    /// The encoding a node that predates compression produces: postcard
    /// only, no handshake extension.
    fn old_wire(frame: &Frame) -> BytesMut {
        let body = postcard::to_stdvec(frame).unwrap();
        let mut out = BytesMut::new();
        out.put_u32((body.len() + 4) as u32);
        out.put_u32_le(crc32c::crc32c(&body));
        out.put_slice(&body);
        out
    }

    #[test]
    fn compressed_frames_round_trip_and_shrink() {
        let frame = compressible_frame();
        let plain = wire(&frame, Codec::None).len();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let mut buf = wire(&frame, codec);
            assert!(buf.len() * 4 < plain, "{codec}: {} of {plain}", buf.len());
            assert_eq!(buf[8], COMPRESSED_MARKER);
            let mut rx = FrameCodec::default();
            rx.set_accept(&[codec]);
            assert_eq!(rx.decode(&mut buf).unwrap(), Some(frame.clone()));
        }
    }

    #[test]
    fn small_and_control_frames_stay_plain() {
        let small = records_frame(1, b"v".to_vec());
        let beat = Frame::Heartbeat {
            last_lsn: Lsn(1),
            commit_lsn: Lsn(1),
            lacking_age_ms: 0,
            epoch: Epoch(1),
            peers: vec!["x".repeat(400)],
            sent_mono_ms: 1,
        };
        for frame in [small, beat] {
            let buf = wire(&frame, Codec::Zstd);
            assert_ne!(buf[8], COMPRESSED_MARKER, "{}", frame.kind());
            // Plain frames decode without any codec negotiated.
            let mut b = buf.clone();
            assert_eq!(FrameCodec::default().decode(&mut b).unwrap(), Some(frame));
        }
    }

    #[test]
    fn incompressible_batches_go_plain() {
        let mut noise = vec![0u8; 4096];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let frame = records_frame(1, noise);
        let buf = wire(&frame, Codec::Lz4);
        assert_ne!(buf[8], COMPRESSED_MARKER);
    }

    #[test]
    fn a_codec_not_negotiated_is_refused() {
        let mut buf = wire(&compressible_frame(), Codec::Zstd);
        let mut rx = FrameCodec::default();
        rx.set_accept(&[Codec::Lz4]);
        let err = rx.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Compressed(CompressError::NotNegotiated(Codec::Zstd))
            ),
            "{err}"
        );
        let mut buf = wire(&compressible_frame(), Codec::Lz4);
        assert!(FrameCodec::default().decode(&mut buf).is_err());
    }

    /// Rewrite the compressed frame's declared size and fix its checksum,
    /// as a hostile peer would.
    fn with_declared(mut buf: BytesMut, declared: u32) -> BytesMut {
        buf[10..14].copy_from_slice(&declared.to_le_bytes());
        let crc = crc32c::crc32c(&buf[8..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    #[test]
    fn oversized_or_lying_compressed_frames_are_clean_errors() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let buf = wire(&compressible_frame(), codec);
            let raw = u32::from_le_bytes([buf[10], buf[11], buf[12], buf[13]]);
            for declared in [u32::MAX, (RAW_BYTES_MAX + 1) as u32, raw - 1, raw + 1] {
                let mut b = with_declared(buf.clone(), declared);
                let err = FrameCodec::accepting_all().decode(&mut b).unwrap_err();
                assert!(
                    matches!(err, FrameError::Compressed(_)),
                    "{codec} {declared}: {err}"
                );
            }
            // A damaged payload with a valid checksum: an error, or (a flip
            // the codec cannot notice) a records frame all the same.
            let mut b = buf.clone();
            let mid = 14 + (b.len() - 14) / 2;
            b[mid] ^= 0xFF;
            let mut b = with_declared(b, raw);
            match FrameCodec::accepting_all().decode(&mut b) {
                Err(_) | Ok(Some(Frame::Records { .. })) => {}
                Ok(other) => panic!("{codec}: {other:?}"),
            }
        }
    }

    #[test]
    fn compressed_control_frames_are_refused() {
        // A heartbeat compressed by hand: never sent that way, so refused.
        let beat = Frame::Heartbeat {
            last_lsn: Lsn(1),
            commit_lsn: Lsn(1),
            lacking_age_ms: 0,
            epoch: Epoch(1),
            peers: vec!["y".repeat(500)],
            sent_mono_ms: 1,
        };
        let raw = postcard::to_stdvec(&beat).unwrap();
        let packed = lz4_flex::block::compress(&raw);
        let mut body = vec![COMPRESSED_MARKER, Codec::Lz4.id()];
        body.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        body.extend_from_slice(&packed);
        let mut buf = BytesMut::new();
        buf.put_u32((body.len() + 4) as u32);
        buf.put_u32_le(crc32c::crc32c(&body));
        buf.put_slice(&body);
        let err = FrameCodec::accepting_all().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn handshake_extension_round_trips() {
        for frame in [
            hello(Offer::all(Codec::Zstd)),
            hello(Offer::default()),
            welcome(Codec::Lz4),
            welcome(Codec::None),
        ] {
            let mut buf = wire(&frame, Codec::None);
            assert_eq!(FrameCodec::default().decode(&mut buf).unwrap(), Some(frame));
        }
    }

    #[test]
    fn nodes_that_predate_compression_still_talk() {
        // An old node's hello and welcome (no extension) read as plain only.
        let mut old_hello = old_wire(&hello(Offer::all(Codec::Zstd)));
        match FrameCodec::default().decode(&mut old_hello).unwrap() {
            Some(Frame::Hello { compression, .. }) => {
                assert_eq!(compression, Offer::default());
                assert_eq!(compress::choose(Codec::Zstd, &compression), Codec::None);
            }
            other => panic!("{other:?}"),
        }
        let mut old_welcome = old_wire(&welcome(Codec::Zstd));
        assert!(matches!(
            FrameCodec::default().decode(&mut old_welcome).unwrap(),
            Some(Frame::Welcome {
                compression: Codec::None,
                ..
            })
        ));
        // An old node decodes ours with postcard's `from_bytes`, which
        // ignores the extension after the body.
        for frame in [hello(Offer::all(Codec::Lz4)), welcome(Codec::Lz4)] {
            let buf = wire(&frame, Codec::Lz4);
            let old_view: Frame = postcard::from_bytes(&buf[8..]).unwrap();
            let expected: Frame = postcard::from_bytes(&old_wire(&frame)[8..]).unwrap();
            assert_eq!(old_view, expected);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = old_wire(&records_frame(1, b"v".to_vec()));
        buf.put_u8(0);
        let len = (buf.len() - 4) as u32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&buf[8..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(FrameCodec::default().decode(&mut buf).is_err());
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut codec = FrameCodec::default();
        let mut full = BytesMut::new();
        codec
            .encode(records_frame(3, b"abc".to_vec()), &mut full)
            .unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert!(codec.decode(&mut part).unwrap().is_none());
    }
}
