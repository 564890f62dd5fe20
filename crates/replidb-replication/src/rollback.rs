//! Rollback files: records a rewind removed, as JSON lines under
//! `rollback/` in the data directory. Nothing leaves a log without a trace.

use std::io::Write;
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

/// Write `records` to a new rollback file and fsync it; returns its path.
pub fn write(dir: &Path, new_epoch: Epoch, records: &[Record], now_ms: u64) -> Result<PathBuf> {
    let folder = dir.join("rollback");
    let io = |e: std::io::Error| ReplicationError::Io(format!("{}: {e}", folder.display()));
    std::fs::create_dir_all(&folder).map_err(io)?;
    let path = folder.join(format!("rollback-epoch{}-{now_ms}.jsonl", new_epoch.0));
    let mut out = Vec::new();
    for rec in records {
        let mut i = 0usize;
        let batched = matches!(rec.op, Op::Batch(_));
        rec.op.for_each_leaf(&mut |leaf| {
            let (op, key, (value, encoding)) = match leaf {
                Op::Put { key, value } => ("put", key.as_str(), value_field(value)),
                Op::Delete { key } => ("delete", key.as_str(), (None, None)),
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
    let mut f = std::fs::File::create(&path).map_err(io)?;
    f.write_all(&out).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(path)
}
