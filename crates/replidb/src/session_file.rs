//! The command line's read-your-writes token, kept between invocations.
//!
//! `replidb put k v` then `replidb get k` are two processes; through the
//! router the `get` usually reaches a follower that has not applied the
//! `put` yet. So the client commands (`put`, `del`, `get`, `scan`) run as
//! one [`Session`] per cluster URL whose tokens live in a small file:
//!
//! - `$XDG_STATE_HOME/replidb/sessions.json`, or
//!   `~/.local/state/replidb/sessions.json` without `XDG_STATE_HOME`;
//! - one entry per `--url` value: the highest LSN seen (sent as `min_lsn`)
//!   and, in the multi-leader topology, the per-origin token (sent as
//!   `X-Replidb-Min-Version`);
//! - at most [`ENTRIES_MAX`] entries, the least recently used dropped.
//!
//! `--no-session` or `REPLIDB_NO_SESSION=1` turns it off (nothing read,
//! nothing written). The file is a convenience: one that cannot be read,
//! parsed or written is ignored (reported with `RUST_LOG=debug`), never a
//! reason for a command to fail.
//!
//! Two commands running at once both merge into the file (tokens only
//! grow), so neither loses the other's write token. A token the cluster has
//! never reached (the cluster was recreated with the same URL) is dropped
//! by the command that finds it refused (`client_cmd`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use replidb_client::{Client, Session};
use serde::{Deserialize, Serialize};

/// Most cluster URLs remembered.
pub const ENTRIES_MAX: usize = 64;

/// The environment variable that disables the file when set to anything
/// but `0` or the empty string.
pub const DISABLE_ENV: &str = "REPLIDB_NO_SESSION";

/// One cluster's tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Highest LSN seen (`min_lsn` of later reads).
    #[serde(default)]
    pub lsn: u64,
    /// Per-origin token `origin:lsn,...` (multi-leader), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub min_version: String,
    /// When this entry was last written, in ms since the Unix epoch (for
    /// dropping the least recently used).
    #[serde(default)]
    pub updated_ms: u64,
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FileDoc {
    #[serde(default)]
    clusters: BTreeMap<String, Entry>,
}

/// The tokens of one cluster URL, loaded from the file (or none when the
/// file is disabled or unusable).
#[derive(Debug)]
pub struct SessionFile {
    /// `None` when disabled or no state directory is known.
    path: Option<PathBuf>,
    url: String,
    loaded: Entry,
}

impl SessionFile {
    /// The tokens for `url`; `disabled` is `--no-session`.
    pub fn open(url: &str, disabled: bool) -> SessionFile {
        let off = disabled || std::env::var(DISABLE_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        let path = if off { None } else { default_path() };
        let loaded = path
            .as_deref()
            .and_then(|p| read_doc(p).clusters.remove(url))
            .unwrap_or_default();
        SessionFile {
            path,
            url: url.to_string(),
            loaded,
        }
    }

    /// Whether a token was loaded (a read then presents it).
    pub fn has_token(&self) -> bool {
        self.loaded.lsn > 0 || !self.loaded.min_version.is_empty()
    }

    /// The loaded LSN token (0: none).
    pub fn lsn(&self) -> u64 {
        self.loaded.lsn
    }

    /// A session on `client` carrying the loaded tokens. A stored
    /// per-origin token that does not parse is dropped.
    pub fn session(&self, client: Client) -> Session {
        match Session::resume(client.clone(), self.loaded.lsn, &self.loaded.min_version) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring the saved min_version token");
                Session::with_token(client, self.loaded.lsn)
            }
        }
    }

    /// Store `session`'s tokens, merged with what the file holds now
    /// (another command may have written since) unless `replace`, which
    /// overwrites (after a token was found to be from an older cluster).
    pub fn save(&self, session: &Session, replace: bool) {
        let Some(path) = &self.path else { return };
        let mut doc = read_doc(path);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut entry = Entry {
            lsn: session.token(),
            min_version: session.min_version(),
            updated_ms: now,
        };
        if !replace {
            if let Some(old) = doc.clusters.get(&self.url) {
                entry.lsn = entry.lsn.max(old.lsn);
                entry.min_version = merge_min_version(&old.min_version, &entry.min_version);
            }
        }
        doc.clusters.insert(self.url.clone(), entry);
        while doc.clusters.len() > ENTRIES_MAX {
            let oldest = doc
                .clusters
                .iter()
                .min_by_key(|(_, e)| e.updated_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => doc.clusters.remove(&k),
                None => break,
            };
        }
        if let Err(e) = write_doc(path, &doc) {
            tracing::debug!(path = %path.display(), error = %e, "cannot save the session token");
        }
    }
}

/// `$XDG_STATE_HOME/replidb/sessions.json`, else
/// `$HOME/.local/state/replidb/sessions.json`; `None` without either.
pub fn default_path() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let base = match nonempty("XDG_STATE_HOME") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(nonempty("HOME")?)
            .join(".local")
            .join("state"),
    };
    Some(base.join("replidb").join("sessions.json"))
}

/// The union of two per-origin tokens, each origin's highest LSN; an
/// unparsable side counts as empty.
fn merge_min_version(a: &str, b: &str) -> String {
    let parse = |s: &str| replidb_causal::MinVersion::parse(s).unwrap_or_default();
    let mut m = parse(a);
    m.merge(&parse(b));
    m.to_string()
}

fn read_doc(path: &Path) -> FileDoc {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::debug!(path = %path.display(), error = %e, "ignoring an unreadable session file");
            FileDoc::default()
        }),
        Err(_) => FileDoc::default(),
    }
}

/// Write through a temporary file and a rename, so a reader never sees
/// half a file.
fn write_doc(path: &Path, doc: &FileDoc) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".sessions.json.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_merge_by_origin() {
        assert_eq!(merge_min_version("n1:4,n2:9", "n1:7"), "n1:7,n2:9");
        assert_eq!(merge_min_version("", ""), "");
        assert_eq!(merge_min_version("garbage", "n3:1"), "n3:1");
    }

    #[test]
    fn an_unwritable_directory_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        // A path below a regular file cannot be created.
        let path = blocker.join("replidb").join("sessions.json");
        assert!(write_doc(&path, &FileDoc::default()).is_err());
        let f = SessionFile {
            path: Some(path),
            url: "http://x".into(),
            loaded: Entry::default(),
        };
        let client = Client::new("http://127.0.0.1:1").unwrap();
        f.save(&f.session(client), false); // must not panic
    }
}
