//! The hint store (hinted handoff, Dynamo §4.6): a write meant for a
//! replica that did not answer is kept here, on another node, with the name
//! of its owner, until the owner answers again. Hints are durable (one file
//! each, written atomically and fsynced) and bounded in count and bytes, so
//! a long outage fills a limit, not the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most hints a node keeps.
pub const HINTS_MAX: usize = 10_000;
/// Most bytes of hints a node keeps.
pub const HINT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// One hint: the state to give `owner` for `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The replica that should have it (its URL).
    pub owner: String,
    /// The key.
    pub key: String,
    /// The encoded operand (a `replidb_causal::Operand::State`), base64.
    pub operand_b64: String,
}

impl Hint {
    /// A hint for `owner` carrying `operand`.
    pub fn new(owner: &str, key: &str, operand: &[u8]) -> Hint {
        Hint {
            owner: owner.trim_end_matches('/').to_string(),
            key: key.to_string(),
            operand_b64: base64::engine::general_purpose::STANDARD.encode(operand),
        }
    }

    /// The operand bytes.
    pub fn operand(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.operand_b64)
            .unwrap_or_default()
    }
}

/// Why a hint was not stored.
#[derive(Debug, thiserror::Error)]
pub enum HintError {
    /// [`HINTS_MAX`] or [`HINT_BYTES_MAX`] reached.
    #[error("hint store is full ({count} hints, {bytes} bytes)")]
    Full {
        /// Hints held.
        count: usize,
        /// Bytes held.
        bytes: u64,
    },
    /// The file system failed.
    #[error("hint store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Hints in a directory, one file per hint (`<seq>.hint`, JSON).
pub struct HintStore {
    dir: PathBuf,
    /// seq → (hint, size in bytes), mirrors the directory.
    held: Mutex<BTreeMap<u64, (Hint, u64)>>,
}

impl HintStore {
    /// Open (creating) the store in `dir`, loading what a previous run left.
    /// Unreadable files are skipped with a warning (a torn write cannot
    /// happen: files are renamed into place).
    pub fn open(dir: &Path) -> Result<HintStore, HintError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HintError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut held = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(seq) = name
                .strip_suffix(".hint")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            match std::fs::read(&path).map(|b| (serde_json::from_slice::<Hint>(&b), b.len())) {
                Ok((Ok(h), len)) => {
                    held.insert(seq, (h, len as u64));
                }
                _ => tracing::warn!(path = %path.display(), "unreadable hint skipped"),
            }
        }
        Ok(HintStore {
            dir: dir.to_path_buf(),
            held: Mutex::new(held),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Hint, u64)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store a hint durably.
    pub fn put(&self, hint: Hint) -> Result<(), HintError> {
        let bytes = serde_json::to_vec(&hint).unwrap_or_default();
        let mut held = self.lock();
        let used: u64 = held.values().map(|(_, n)| *n).sum();
        if held.len() >= HINTS_MAX || used + bytes.len() as u64 > HINT_BYTES_MAX {
            return Err(HintError::Full {
                count: held.len(),
                bytes: used,
            });
        }
        let seq = held.keys().next_back().map(|s| s + 1).unwrap_or(1);
        let path = self.dir.join(format!("{seq:020}.hint"));
        replidb_core::durable::write_atomic(&path, &bytes).map_err(|source| HintError::Io {
            path: path.clone(),
            source,
        })?;
        held.insert(seq, (hint, bytes.len() as u64));
        Ok(())
    }

    /// Every hint held, oldest first, with its id.
    pub fn list(&self) -> Vec<(u64, Hint)> {
        self.lock()
            .iter()
            .map(|(s, (h, _))| (*s, h.clone()))
            .collect()
    }

    /// Forget a delivered hint.
    pub fn remove(&self, id: u64) -> Result<(), HintError> {
        let path = self.dir.join(format!("{id:020}.hint"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(HintError::Io { path, source }),
        }
        self.lock().remove(&id);
        Ok(())
    }

    /// How many hints are waiting.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// How many hints are waiting per owner, counted without copying them
    /// (`/status` asks every second or so; the store may hold 256 MiB).
    pub fn pending_by_owner(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by = std::collections::BTreeMap::new();
        for (h, _) in self.lock().values() {
            *by.entry(h.owner.clone()).or_default() += 1;
        }
        by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_survive_a_reopen_and_are_removed_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        s.put(Hint::new("http://a/", "k1", b"one")).unwrap();
        s.put(Hint::new("http://b", "k2", b"two")).unwrap();
        drop(s);
        let s = HintStore::open(dir.path()).unwrap();
        let l = s.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].1.owner, "http://a");
        assert_eq!(l[0].1.operand(), b"one");
        s.remove(l[0].0).unwrap();
        assert_eq!(HintStore::open(dir.path()).unwrap().pending(), 1);
    }
}
