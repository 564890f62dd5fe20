//! Rollback files: records a rewind removed, as JSON lines under
//! `rollback/` in the data directory. Nothing leaves a log without a trace.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use replidb_core::{Epoch, Op, Record};
use serde::Serialize;

use crate::{ReplicationError, Result};

#[derive(Serialize)]
struct Line<'a> {
    lsn: u64,
    epoch: u64,
    hlc_ms: u64,
    op: &'static str,
    key: &'a str,
    /// UTF-8 text when the value is valid UTF-8, else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    /// Position inside an atomic batch, if the record was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_index: Option<usize>,
}

fn value_field(v: &[u8]) -> (Option<String>, Option<&'static str>) {
    match std::str::from_utf8(v) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (
            Some(base64::engine::general_purpose::STANDARD.encode(v)),
            Some("base64"),
        ),
    }
}

/// A rollback file being written: records are appended in chunks as the
/// rewind reads them (memory stays at one chunk, whatever the divergent
/// tail's length), then [`RollbackFile::finish`] makes them durable.
///
/// The file is opened for appending and never truncated: a rewind retried
/// after a crash, in the same millisecond or not, adds to what an earlier
/// attempt wrote instead of destroying it.
pub struct RollbackFile {
    out: replidb_core::durable::DurableAppend,
    records: u64,
}

impl RollbackFile {
    /// Open `rollback/rollback-epoch{new_epoch}-{now_ms}.jsonl` under `dir`
    /// (`now_ms` is wall time: only a name for people to read).
    pub fn create(dir: &Path, new_epoch: Epoch, now_ms: u64) -> Result<RollbackFile> {
        let folder = dir.join("rollback");
        let io = |e: std::io::Error| ReplicationError::Io(format!("{}: {e}", folder.display()));
        std::fs::create_dir_all(&folder).map_err(io)?;
        let path = folder.join(format!("rollback-epoch{}-{now_ms}.jsonl", new_epoch.0));
        let out = replidb_core::durable::DurableAppend::open(&path)
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", path.display())))?;
        Ok(RollbackFile { out, records: 0 })
    }

    /// Append `records` as JSON lines (not yet durable).
    pub fn append(&mut self, records: &[Record]) -> Result<()> {
        let out = encode_lines(records);
        self.out
            .append(&out)
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", self.out.path().display())))?;
        self.records += records.len() as u64;
        Ok(())
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// fsync the file and its directory; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        let path = self.out.path().to_path_buf();
        self.out
            .finish()
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

/// Write `records` to a rollback file and make it durable; returns its path.
pub fn write(dir: &Path, new_epoch: Epoch, records: &[Record], now_ms: u64) -> Result<PathBuf> {
    let mut f = RollbackFile::create(dir, new_epoch, now_ms)?;
    f.append(records)?;
    f.finish()
}

/// JSON lines for `records`, one per leaf operation.
fn encode_lines(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for rec in records {
        let mut i = 0usize;
        let batched = matches!(rec.op, Op::Batch(_));
        rec.op.for_each_leaf(&mut |leaf| {
            let (op, key, (value, encoding)) = match leaf {
                Op::Put { key, value } => ("put", key.as_str(), value_field(value)),
                Op::Delete { key } => ("delete", key.as_str(), (None, None)),
                // A causal write's operand, base64 like any binary value.
                Op::Merge { key, operand } => ("merge", key.as_str(), value_field(operand)),
                Op::Batch(_) => return,
            };
            let line = Line {
                lsn: rec.lsn.0,
                epoch: rec.epoch.0,
                hlc_ms: rec.hlc.wall_ms,
                op,
                key,
                value,
                encoding,
                batch_index: batched.then_some(i),
            };
            if let Ok(s) = serde_json::to_string(&line) {
                out.extend_from_slice(s.as_bytes());
                out.push(b'\n');
            }
            i += 1;
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use replidb_core::{Hlc, Lsn};

    fn put(lsn: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            hlc: Hlc::default(),
            op: Op::Put {
                key: format!("k{lsn}"),
                value: b"v".to_vec(),
            },
        }
    }

    #[test]
    fn a_retried_rewind_with_the_same_name_keeps_earlier_lines() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), Epoch(2), &[put(1), put(2)], 42).unwrap();
        // Same epoch, same millisecond: the same file name.
        let mut again = RollbackFile::create(dir.path(), Epoch(2), 42).unwrap();
        again.append(&[put(3)]).unwrap();
        again.append(&[put(4)]).unwrap();
        assert_eq!(again.records(), 2);
        let second = again.finish().unwrap();
        assert_eq!(first, second);
        let text = std::fs::read_to_string(&first).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
