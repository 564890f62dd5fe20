//! Opening a WAL directory: verify every segment and cut a torn tail.
//!
//! The torn-tail rule: in the **last** segment, a frame that is partial or
//! fails its checks at offset `X` is a torn tail only if no byte offset after
//! `X` begins a frame that has a plausible length, an LSN in the range a
//! later record of this log could carry, and a matching checksum. Then the
//! file is cut at `X`. If such a frame exists, bytes that were once durable
//! were damaged and opening fails with `Corruption` at `X`: silently dropping
//! acknowledged records would be worse than refusing to start. Anywhere
//! other than the last segment, any bad frame is `Corruption`, because a
//! segment is synced before the next one is created.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use replidb_core::{Epoch, Lsn};

use crate::codec::{self, DecodeError, FIXED_PAYLOAD_LEN, FRAME_HEADER_LEN};
use crate::segment::{self, corruption, io_err, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::Result;

/// A segment as the writer tracks it.
#[derive(Clone, Debug)]
pub(crate) struct SegMeta {
    /// LSN of the first record (the file name).
    pub first_lsn: Lsn,
    /// Full path of the file.
    pub path: PathBuf,
    /// Size in bytes, header included (for the active segment, including
    /// frames still buffered in memory).
    pub bytes: u64,
}

/// What recovery found.
pub(crate) struct Recovered {
    /// Live segments in LSN order; never empty.
    pub segments: Vec<SegMeta>,
    /// Generation of the live segments.
    pub generation: u64,
    /// LSN of the last valid record, or `first_lsn - 1`.
    pub last_lsn: Lsn,
    /// Epoch of the last valid record, or the newest header's `prev_epoch`.
    pub last_epoch: Epoch,
    /// Bytes cut off the last segment.
    pub truncated_bytes: u64,
}

/// Recover the log in `dir` (created if missing). With `durable`, repairs
/// are fsynced.
pub(crate) fn recover(dir: &Path, durable: bool) -> Result<Recovered> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let entries = segment::list_segments(dir)?;
    if entries.is_empty() {
        let header = SegmentHeader {
            generation: 0,
            first_lsn: Lsn(1),
            prev_epoch: Epoch(0),
        };
        let (_, path) = segment::create_segment(dir, &header, durable)?;
        return Ok(Recovered {
            segments: vec![SegMeta {
                first_lsn: header.first_lsn,
                path,
                bytes: SEGMENT_HEADER_LEN,
            }],
            generation: 0,
            last_lsn: Lsn(0),
            last_epoch: Epoch(0),
            truncated_bytes: 0,
        });
    }

    // Headers first: the highest generation wins; older ones are leftovers
    // of an interrupted reset.
    let mut headers = Vec::with_capacity(entries.len());
    for e in &entries {
        let mut f = fs::File::open(&e.path).map_err(io_err(&e.path))?;
        let h = SegmentHeader::read_from(&mut f, &e.path)?;
        if h.first_lsn != e.first_lsn {
            return Err(corruption(
                &e.path,
                24,
                format!(
                    "header says the segment starts at LSN {}, the name says {}",
                    h.first_lsn, e.first_lsn
                ),
            ));
        }
        headers.push(h);
    }
    let generation = headers.iter().map(|h| h.generation).max().unwrap_or(0);
    let mut removed_stale = false;
    let mut live = Vec::new();
    for (e, h) in entries.into_iter().zip(headers) {
        if h.generation < generation {
            tracing::warn!(path = %e.path.display(), "removing segment left over from a reset");
            fs::remove_file(&e.path).map_err(io_err(&e.path))?;
            removed_stale = true;
        } else {
            live.push((e, h));
        }
    }
    if removed_stale && durable {
        segment::sync_dir(dir)?;
    }

    let mut segments = Vec::with_capacity(live.len());
    let mut truncated_bytes = 0;
    let mut expected = live[0].1.first_lsn;
    let mut last_epoch = live[0].1.prev_epoch;
    let n = live.len();
    for (i, (e, h)) in live.into_iter().enumerate() {
        if h.first_lsn != expected {
            return Err(corruption(
                &e.path,
                24,
                format!(
                    "segment starts at LSN {} but the previous segment ends before {expected}",
                    h.first_lsn
                ),
            ));
        }
        let bytes = fs::read(&e.path).map_err(io_err(&e.path))?;
        let scan = scan_segment(&e.path, &bytes, h.first_lsn, i + 1 == n)?;
        if scan.valid_len < bytes.len() as u64 {
            // Zeros after the last frame are preallocated space (or a write
            // that never reached the disk): cut, but not reported as torn.
            let after = &bytes[scan.valid_len as usize..];
            let cut = after
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |i| i as u64 + 1);
            if cut > 0 {
                tracing::warn!(
                    path = %e.path.display(),
                    offset = scan.valid_len,
                    bytes = cut,
                    "truncating torn tail of the WAL"
                );
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&e.path)
                .map_err(io_err(&e.path))?;
            f.set_len(scan.valid_len).map_err(io_err(&e.path))?;
            if durable {
                f.sync_data().map_err(io_err(&e.path))?;
            }
            truncated_bytes += cut;
        }
        expected = Lsn(expected.0 + scan.records);
        last_epoch = scan.last_epoch.unwrap_or(h.prev_epoch);
        segments.push(SegMeta {
            first_lsn: h.first_lsn,
            path: e.path,
            bytes: scan.valid_len,
        });
    }
    Ok(Recovered {
        segments,
        generation,
        last_lsn: expected.prev(),
        last_epoch,
        truncated_bytes,
    })
}

/// Result of verifying one segment's frames.
struct Scan {
    records: u64,
    last_epoch: Option<Epoch>,
    /// Bytes of header plus valid frames; less than the file for a torn tail.
    valid_len: u64,
}

/// Verify every frame of `bytes` (the whole file `path`), expecting LSNs
/// from `first`. See the module docs for the torn-tail rule.
fn scan_segment(path: &Path, bytes: &[u8], first: Lsn, is_last: bool) -> Result<Scan> {
    let mut off = SEGMENT_HEADER_LEN as usize;
    let mut expected = first;
    let mut last_epoch = None;
    while off < bytes.len() {
        let problem = match codec::decode_record(&bytes[off..]) {
            Ok(Some((rec, n))) => {
                if rec.lsn != expected {
                    return Err(corruption(
                        path,
                        off as u64,
                        format!("record has LSN {}, expected {expected}", rec.lsn),
                    ));
                }
                off += n;
                last_epoch = Some(rec.epoch);
                expected = Lsn(expected
                    .0
                    .checked_add(1)
                    .ok_or_else(|| corruption(path, off as u64, "LSN overflow"))?);
                continue;
            }
            // The checksum matched, so this was written as is: not torn.
            Err(DecodeError::Malformed(m)) => return Err(corruption(path, off as u64, m)),
            Ok(None) => "incomplete record".to_string(),
            Err(e) => e.to_string(),
        };
        if !is_last {
            return Err(corruption(path, off as u64, problem));
        }
        if let Some((at, lsn)) = find_valid_frame(bytes, off + 1, expected) {
            return Err(corruption(
                path,
                off as u64,
                format!("{problem}, but a valid record (LSN {lsn}) follows at offset {at}"),
            ));
        }
        return Ok(Scan {
            records: expected.0 - first.0,
            last_epoch,
            valid_len: off as u64,
        });
    }
    Ok(Scan {
        records: expected.0 - first.0,
        last_epoch,
        valid_len: off as u64,
    })
}

/// The first offset at or after `start` where a checksum-valid frame begins
/// whose LSN a record at or after `expected` could carry. Cheap filters on
/// the length and LSN fields come before the checksum so that scanning a
/// long garbage tail stays linear in practice.
fn find_valid_frame(bytes: &[u8], start: usize, expected: Lsn) -> Option<(usize, Lsn)> {
    let min_frame = (FRAME_HEADER_LEN + FIXED_PAYLOAD_LEN) as u64;
    let max_lsn = expected
        .0
        .saturating_add((bytes.len() as u64).saturating_sub(start as u64) / min_frame + 1);
    (start..bytes.len()).find_map(|at| {
        let rest = &bytes[at..];
        let len = codec::frame_payload_len(rest).ok()??;
        if rest.len() < FRAME_HEADER_LEN + len as usize {
            return None;
        }
        let lsn = codec::peek_lsn(rest)?;
        if lsn < expected || lsn.0 > max_lsn {
            return None;
        }
        match codec::decode_record(rest) {
            Ok(Some((rec, _))) => Some((at, rec.lsn)),
            _ => None,
        }
    })
}
