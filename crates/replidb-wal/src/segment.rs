//! Segment files: names, the file header, creation, and a buffered
//! sequential frame reader shared by cursors and `truncate_after`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use replidb_core::durable::TMP_SUFFIX;
use replidb_core::{Epoch, Lsn, Record};

use crate::codec::{self, DecodeError, FRAME_HEADER_LEN};
use crate::{Result, WalError};

/// Length of the header at the start of every segment file, in bytes.
///
/// ```text
/// offset  size  field
///      0     8  magic       b"RPLDBWAL"
///      8     4  version     u32 LE, currently 1
///     12     4  reserved    zero
///     16     8  generation  u64 LE, bumped by every `reset`
///     24     8  first_lsn   u64 LE, LSN of the first record (= file name)
///     32     8  prev_epoch  u64 LE, epoch of the record before first_lsn
///     40     4  crc         u32 LE, CRC-32C of bytes 0..40
///     44     4  reserved    zero
/// ```
pub const SEGMENT_HEADER_LEN: u64 = 48;

const MAGIC: [u8; 8] = *b"RPLDBWAL";
const VERSION: u32 = 1;
const EXT: &str = "wal";
const READ_CHUNK: usize = 64 * 1024;

/// File name of the segment whose first record is `first`, e.g.
/// `00000000000000000001.wal`.
pub fn segment_file_name(first: Lsn) -> String {
    format!("{:020}.{EXT}", first.0)
}

/// The first LSN encoded in a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// Wrap an io error with the path it concerns.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A corruption error at `offset` of `file`.
pub(crate) fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corruption {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The decoded fixed header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Incremented by `reset`; recovery ignores (and deletes) segments of an
    /// older generation, which makes `reset` atomic.
    pub generation: u64,
    /// LSN the first record of this segment carries.
    pub first_lsn: Lsn,
    /// Epoch of record `first_lsn - 1`, so the log knows its last epoch even
    /// when this segment holds no record (after a roll, truncate or reset).
    pub prev_epoch: Epoch,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_epoch.0.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and verify the header at the start of `buf` (the file `path`).
    pub(crate) fn decode(buf: &[u8], path: &Path) -> Result<SegmentHeader> {
        let Some(b) = buf.get(..SEGMENT_HEADER_LEN as usize) else {
            return Err(corruption(
                path,
                0,
                format!("file is {} bytes, shorter than the header", buf.len()),
            ));
        };
        if b[0..8] != MAGIC {
            return Err(corruption(path, 0, "not a replidb WAL segment (bad magic)"));
        }
        let crc = u32::from_le_bytes([b[40], b[41], b[42], b[43]]);
        if crc != crc32c::crc32c(&b[0..40]) {
            return Err(corruption(path, 0, "segment header checksum mismatch"));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(corruption(
                path,
                8,
                format!("unsupported segment version {version}"),
            ));
        }
        Ok(SegmentHeader {
            generation: codec::le_u64(&b[16..24]),
            first_lsn: Lsn(codec::le_u64(&b[24..32])),
            prev_epoch: Epoch(codec::le_u64(&b[32..40])),
        })
    }

    /// Read and verify the header of the segment file `path`.
    pub(crate) fn read_from(file: &mut File, path: &Path) -> Result<SegmentHeader> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        file.take(SEGMENT_HEADER_LEN)
            .read_to_end(&mut b)
            .map_err(io_err(path))?;
        SegmentHeader::decode(&b, path)
    }
}

/// `fsync` a directory so that entries created, renamed or removed in it
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    replidb_core::durable::sync_dir(dir).map_err(io_err(dir))
}

/// Create the segment file for `header` atomically: the header is written to
/// a temporary file which is then renamed into place, so a file with a
/// segment name always has a complete header (recovery can then treat a bad
/// header as corruption, never as a torn creation). With `durable`, the file
/// and the directory are fsynced. Returns a write handle and the path.
pub(crate) fn create_segment(
    dir: &Path,
    header: &SegmentHeader,
    durable: bool,
) -> Result<(File, PathBuf)> {
    let path = dir.join(segment_file_name(header.first_lsn));
    if durable {
        replidb_core::durable::write_atomic(&path, &header.encode()).map_err(io_err(&path))?;
    } else {
        // fsync disabled (`--fsync never`): same steps, no syncs.
        let tmp = replidb_core::durable::tmp_path(&path);
        fs::write(&tmp, header.encode()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
    }
    let file = open_write(&path)?;
    Ok((file, path))
}

/// Open an existing segment for positioned writes (not append mode: the
/// file may end in preallocated zeros that frames overwrite).
pub(crate) fn open_write(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Write `len` zero bytes into `file` at `offset` (preallocation).
pub(crate) fn write_zeros(file: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    const ZERO_CHUNK_BYTES: usize = 64 * 1024;
    static ZEROS: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK_BYTES as u64);
        file.write_all_at(&ZEROS[..n as usize], offset + done)
            .map_err(io_err(path))?;
        done += n;
    }
    Ok(())
}

/// A segment file found in the WAL directory.
pub(crate) struct DirEntry {
    /// First LSN according to the file name.
    pub first_lsn: Lsn,
    /// Full path.
    pub path: PathBuf,
}

/// List the segment files of `dir` in LSN order and delete leftover
/// temporary files from an interrupted segment creation.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(TMP_SUFFIX) && parse_segment_name(&name[..name.len() - 4]).is_some() {
            tracing::warn!(path = %path.display(), "removing unfinished segment file");
            fs::remove_file(&path).map_err(io_err(&path))?;
        } else if let Some(first_lsn) = parse_segment_name(name) {
            out.push(DirEntry { first_lsn, path });
        }
    }
    out.sort_by_key(|e| e.first_lsn);
    Ok(out)
}

/// Sequential, buffered reader of the frames of one segment file.
///
/// Keeps the file handle and a byte position so that successive reads are
/// cheap; reads in chunks of at least 64 KiB.
pub(crate) struct SegReader {
    file: File,
    path: PathBuf,
    /// Bytes read from the file, starting at file offset `buf_off`.
    buf: Vec<u8>,
    buf_off: u64,
    /// Consumed bytes of `buf`.
    pos: usize,
    /// File offset treated as the end of the file (frames end before it;
    /// what follows may be preallocated zeros).
    end: u64,
}

impl SegReader {
    /// Open `path`, verify its header announces `first_lsn`, and position at
    /// the first frame.
    pub(crate) fn open(path: &Path, first_lsn: Lsn) -> Result<(SegReader, SegmentHeader)> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let header = SegmentHeader::read_from(&mut file, path)?;
        if header.first_lsn != first_lsn {
            return Err(corruption(
                path,
                24,
                format!(
                    "header says the segment starts at LSN {}, the name says {first_lsn}",
                    header.first_lsn
                ),
            ));
        }
        let reader = SegReader {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            buf_off: SEGMENT_HEADER_LEN,
            pos: 0,
            end: u64::MAX,
        };
        Ok((reader, header))
    }

    /// Treat file offset `end` as the end of the file, so that
    /// [`SegReader::next_record`] returns `Ok(None)` there instead of
    /// reading preallocated zeros as a damaged frame.
    pub(crate) fn set_end(&mut self, end: u64) {
        self.end = end;
    }

    /// The file this reader reads.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// File offset of the next unconsumed byte.
    pub(crate) fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Forget bytes read ahead but not consumed. Bytes past the flushed LSN
    /// may belong to a write in progress; dropping them means they are read
    /// again, complete, next time.
    pub(crate) fn discard_read_ahead(&mut self) {
        self.buf_off += self.pos as u64;
        self.buf.clear();
        self.pos = 0;
    }

    /// Make at least `n` unconsumed bytes available. Returns false if the
    /// file ends first.
    fn fill(&mut self, n: usize) -> Result<bool> {
        if self.buf.len() - self.pos >= n {
            return Ok(true);
        }
        self.buf.drain(..self.pos);
        self.buf_off += self.pos as u64;
        self.pos = 0;
        let end = self.buf_off + self.buf.len() as u64;
        self.file
            .seek(SeekFrom::Start(end))
            .map_err(io_err(&self.path))?;
        let want = ((n - self.buf.len()).max(READ_CHUNK) as u64).min(self.end.saturating_sub(end));
        (&mut self.file)
            .take(want)
            .read_to_end(&mut self.buf)
            .map_err(io_err(&self.path))?;
        Ok(self.buf.len() >= n)
    }

    /// Skip the next frame, which must carry `expected`, without verifying
    /// its checksum (seeking only needs the length chain; records that are
    /// returned are always fully verified).
    pub(crate) fn skip_frame(&mut self, expected: Lsn) -> Result<()> {
        let off = self.offset();
        if !self.fill(FRAME_HEADER_LEN + 8)? {
            return Err(corruption(
                &self.path,
                off,
                format!("segment ends before record {expected}"),
            ));
        }
        let rest = &self.buf[self.pos..];
        let len = codec::frame_payload_len(rest)
            .map_err(|e| corruption(&self.path, off, e.to_string()))?
            .unwrap_or(0);
        if codec::peek_lsn(rest) != Some(expected) {
            return Err(corruption(
                &self.path,
                off,
                format!("expected record {expected} while seeking"),
            ));
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() - self.pos >= total {
            self.pos += total;
        } else {
            // Jump over a large record without reading it.
            self.buf_off = off + total as u64;
            self.buf.clear();
            self.pos = 0;
        }
        Ok(())
    }

    /// Read and verify the next frame. `Ok(None)` at a clean end of file;
    /// a partial or damaged frame is `Corruption` (callers only read records
    /// known to be completely written).
    pub(crate) fn next_record(&mut self) -> Result<Option<(Record, usize)>> {
        let off = self.offset();
        if !self.fill(FRAME_HEADER_LEN)? {
            if self.buf.len() == self.pos {
                return Ok(None);
            }
            return Err(corruption(&self.path, off, "partial record header"));
        }
        let bad = |e: DecodeError| corruption(&self.path, off, e.to_string());
        let len = codec::frame_payload_len(&self.buf[self.pos..])
            .map_err(bad)?
            .unwrap_or(0);
        let total = FRAME_HEADER_LEN + len as usize;
        if !self.fill(total)? {
            return Err(corruption(&self.path, off, "partial record"));
        }
        match codec::decode_record(&self.buf[self.pos..]) {
            Ok(Some((rec, n))) => {
                self.pos += n;
                Ok(Some((rec, n)))
            }
            Ok(None) => Err(corruption(&self.path, off, "partial record")),
            Err(e) => Err(corruption(&self.path, off, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_file_name(Lsn(42));
        assert_eq!(name, "00000000000000000042.wal");
        assert_eq!(parse_segment_name(&name), Some(Lsn(42)));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.wal.tmp"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            generation: 3,
            first_lsn: Lsn(77),
            prev_epoch: Epoch(5),
        };
        let mut b = h.encode();
        let p = Path::new("x.wal");
        assert_eq!(SegmentHeader::decode(&b, p).unwrap(), h);
        b[30] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&b, p),
            Err(WalError::Corruption { offset: 0, .. })
        ));
        assert!(SegmentHeader::decode(&b[..10], p).is_err());
    }
}
