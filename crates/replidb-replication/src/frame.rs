//! Stream frames and their codec.
//!
//! # Byte layout
//! ```text
//! +-------------+--------------+-----------------------------+
//! | len: u32 BE | crc32c: u32  | postcard(Frame)             |
//! |  (crc+body) |  LE, of body |                             |
//! +-------------+--------------+-----------------------------+
//! ```
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

impl Frame {
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
}

/// Codec for [`Frame`]s over any byte stream.
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .max_frame_length(FRAME_BYTES_MAX)
                .new_codec(),
        }
    }
}

/// Encode one frame body: checksum then postcard.
pub fn encode_body(frame: &Frame) -> Result<Bytes, FrameError> {
    let body = postcard::to_stdvec(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32_le(crc32c::crc32c(&body));
    out.put_slice(&body);
    Ok(out.freeze())
}

/// Decode one frame body produced by [`encode_body`].
pub fn decode_body(mut buf: BytesMut) -> Result<Frame, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Malformed("short frame".into()));
    }
    let crc = buf.get_u32_le();
    if crc32c::crc32c(&buf) != crc {
        return Err(FrameError::Checksum);
    }
    postcard::from_bytes(&buf).map_err(|e| FrameError::Malformed(e.to_string()))
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.inner.decode(src)? {
            Some(body) => decode_body(body).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = encode_body(&frame)?;
        self.inner.encode(body, dst)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use replidb_core::{Hlc, Op};

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
