//! Framing of one log record, independent of files.
//!
//! A frame is self-delimiting and self-checking, so the same code serves the
//! writer, crash recovery (which must tell a torn tail from damage) and the
//! replication stream (which may ship frames verbatim one day).
//!
//! ```text
//! offset  size  field
//!      0     4  len      u32 LE: payload length in bytes (28 ..= RECORD_BYTES_MAX)
//!      4     4  crc      u32 LE: CRC-32C of the payload bytes
//!      8     8  lsn      u64 LE  ┐
//!     16     8  epoch    u64 LE  │
//!     24     8  wall_ms  u64 LE  │ payload (len bytes)
//!     32     4  logical  u32 LE  │
//!     36     …  op       postcard encoding of `Op`, exactly to the end
//! ```
//!
//! The fixed fields come first, outside postcard, so tools (and recovery's
//! scan for a later valid frame) can read the LSN without a decoder.

use replidb_core::{Epoch, Hlc, Lsn, Op, Record};

use crate::{Result, WalError};

/// Bytes before the payload: `len` and `crc`.
pub const FRAME_HEADER_LEN: usize = 8;

/// Bytes of the fixed payload fields (lsn, epoch, wall_ms, logical) that
/// precede the postcard-encoded `Op`; no valid payload is shorter.
pub const FIXED_PAYLOAD_LEN: usize = 28;

/// Largest payload accepted, in bytes. A corrupt length field can therefore
/// never make a reader allocate more than this.
pub const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Bytes a record's payload may need beyond its keys and values: the fixed
/// fields, postcard's enum tags and length prefixes, per key-value pair
/// (an upper bound).
pub const RECORD_OVERHEAD_BYTES: usize = FIXED_PAYLOAD_LEN + 64;

// Limits that must fit inside each other: the largest transaction a node
// can be configured to accept (TXN_VALUES_MAX values of VALUE_BYTES_MAX,
// each with a key of MAX_KEY_BYTES) is one record and must fit one record.
const _: () = assert!(
    replidb_core::TXN_VALUES_MAX
        * (replidb_core::VALUE_BYTES_MAX + replidb_core::MAX_KEY_BYTES + RECORD_OVERHEAD_BYTES)
        <= RECORD_BYTES_MAX as usize
);

/// Why a byte buffer does not hold a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload does not match its CRC-32C: a torn write or damaged bytes.
    #[error("record checksum mismatch")]
    BadChecksum,
    /// The length field is shorter than the fixed fields or above
    /// [`RECORD_BYTES_MAX`] (zero-filled tails land here with length 0).
    #[error("implausible record length {0}")]
    BadLength(u32),
    /// The checksum matched but the payload is not a record. This was written
    /// that way, so it is never mistaken for a torn tail.
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Append one framed record to `out`.
///
/// On error `out` is left as it was. Fails only if the payload would exceed
/// [`RECORD_BYTES_MAX`] (or postcard refuses the `Op`).
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.extend_from_slice(&rec.lsn.0.to_le_bytes());
    out.extend_from_slice(&rec.epoch.0.to_le_bytes());
    out.extend_from_slice(&rec.hlc.wall_ms.to_le_bytes());
    out.extend_from_slice(&rec.hlc.logical.to_le_bytes());
    if let Err(e) = postcard::to_io(&rec.op, &mut *out) {
        out.truncate(start);
        return Err(WalError::Encode(e.to_string()));
    }
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    let len = match u32::try_from(payload_len) {
        Ok(len) if len <= RECORD_BYTES_MAX => len,
        _ => {
            out.truncate(start);
            return Err(WalError::Encode(format!(
                "record at LSN {} is {payload_len} bytes; the limit is {RECORD_BYTES_MAX}",
                rec.lsn
            )));
        }
    };
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decode the frame at the start of `buf`.
///
/// `Ok(None)` means the buffer ends before the frame does (read more bytes,
/// or at the end of a file: a partial write). `Ok(Some((rec, n)))` consumed
/// `n` bytes. Never panics, whatever the bytes.
pub fn decode_record(buf: &[u8]) -> std::result::Result<Option<(Record, usize)>, DecodeError> {
    let Some(len) = frame_payload_len(buf)? else {
        return Ok(None);
    };
    let total = FRAME_HEADER_LEN + len as usize;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..total) else {
        return Ok(None);
    };
    if crc32c::crc32c(payload) != le_u32(&buf[4..8]) {
        return Err(DecodeError::BadChecksum);
    }
    let (fixed, rest) = payload.split_at(FIXED_PAYLOAD_LEN);
    let (op, trailing) =
        postcard::take_from_bytes::<Op>(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the operation",
            trailing.len()
        )));
    }
    let rec = Record {
        lsn: Lsn(le_u64(&fixed[0..8])),
        epoch: Epoch(le_u64(&fixed[8..16])),
        hlc: Hlc {
            wall_ms: le_u64(&fixed[16..24]),
            logical: le_u32(&fixed[24..28]),
        },
        op,
    };
    Ok(Some((rec, total)))
}

/// The payload length announced by the frame header at the start of `buf`,
/// checked for plausibility. `Ok(None)` if fewer than 8 bytes are present.
pub(crate) fn frame_payload_len(buf: &[u8]) -> std::result::Result<Option<u32>, DecodeError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = le_u32(&header[0..4]);
    if len > RECORD_BYTES_MAX || (len as usize) < FIXED_PAYLOAD_LEN {
        return Err(DecodeError::BadLength(len));
    }
    Ok(Some(len))
}

/// The LSN field of the frame at the start of `buf`, without checking the
/// checksum. `None` if the buffer is too short to hold it.
pub(crate) fn peek_lsn(buf: &[u8]) -> Option<Lsn> {
    buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + 8)
        .map(|b| Lsn(le_u64(b)))
}

/// Little-endian u32 from the first 4 bytes; callers guarantee the length.
fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 from the first 8 bytes; callers guarantee the length.
pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(lsn: u64, op: Op) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(3),
            hlc: Hlc {
                wall_ms: 1_700_000_000_000,
                logical: 7,
            },
            op,
        }
    }

    #[test]
    fn layout_matches_the_documentation() {
        let r = rec(
            0x0102_0304_0506_0708,
            Op::Delete {
                key: "k".to_string(),
            },
        );
        let mut out = vec![0xAA]; // existing content must be kept
        encode_record(&r, &mut out).unwrap();
        let frame = &out[1..];
        let len = le_u32(&frame[0..4]) as usize;
        assert_eq!(frame.len(), FRAME_HEADER_LEN + len);
        assert_eq!(le_u32(&frame[4..8]), crc32c::crc32c(&frame[8..]));
        assert_eq!(le_u64(&frame[8..16]), 0x0102_0304_0506_0708);
        assert_eq!(le_u64(&frame[16..24]), 3);
        assert_eq!(le_u64(&frame[24..32]), 1_700_000_000_000);
        assert_eq!(le_u32(&frame[32..36]), 7);
        assert_eq!(peek_lsn(frame), Some(r.lsn));
        assert_eq!(out[0], 0xAA);
        assert_eq!(decode_record(frame).unwrap(), Some((r, frame.len())));
    }

    #[test]
    fn zeros_and_huge_lengths_are_bad_lengths() {
        assert_eq!(decode_record(&[0u8; 64]), Err(DecodeError::BadLength(0)));
        let mut b = vec![0xFF; 16];
        b[4..].fill(0);
        assert_eq!(decode_record(&b), Err(DecodeError::BadLength(u32::MAX)));
        assert_eq!(decode_record(&[0u8; 7]), Ok(None));
    }

    #[test]
    fn oversized_record_is_refused_and_buffer_kept() {
        let big = rec(
            1,
            Op::Put {
                key: "k".into(),
                value: vec![0; RECORD_BYTES_MAX as usize],
            },
        );
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode_record(&big, &mut out),
            Err(WalError::Encode(_))
        ));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn trailing_bytes_with_valid_crc_are_malformed() {
        let mut out = vec![];
        encode_record(&rec(1, Op::Delete { key: "a".into() }), &mut out).unwrap();
        out.push(0);
        let len = (out.len() - FRAME_HEADER_LEN) as u32;
        out[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_record(&out),
            Err(DecodeError::Malformed(_))
        ));
    }
}
