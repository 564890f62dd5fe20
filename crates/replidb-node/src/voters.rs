//! The voting set: the members whose majority commits a write and elects
//! or confirms a leader, kept durably so that a restarted or newly promoted
//! node never computes a majority from "the followers that happen to have
//! reconnected" (a promoted node with no peers yet would otherwise count a
//! majority of one).
//!
//! Members are identified by the URL peers reach them at. A node learns
//! the set from its own leader's sessions (leader) or from the peer list
//! in every heartbeat (follower), and keeps the union in `members.json` in
//! its data directory, written atomically. The set only shrinks by an
//! operator's `POST /admin/forget`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most members a voting set holds: far above any real cluster, a bound
/// on what a peer's heartbeat can make this node store.
pub const VOTERS_MAX: usize = 64;

/// The durable voting set of one node.
#[derive(Debug)]
pub struct VotingSet {
    /// `members.json`, or `None` to keep the set in memory only.
    path: Option<PathBuf>,
    urls: Mutex<BTreeSet<String>>,
}

impl VotingSet {
    /// The set stored at `dir/members.json` (empty if absent or
    /// unreadable: a damaged file only loses what the next heartbeat
    /// teaches again, and is logged).
    pub fn load(dir: Option<&Path>) -> VotingSet {
        let path = dir.map(|d| d.join("members.json"));
        let urls = match path.as_deref().map(std::fs::read) {
            Some(Ok(bytes)) => match serde_json::from_slice::<Vec<String>>(&bytes) {
                Ok(v) => v.into_iter().take(VOTERS_MAX).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "members.json is unreadable; relearning the voting set");
                    BTreeSet::new()
                }
            },
            _ => BTreeSet::new(),
        };
        VotingSet {
            path,
            urls: Mutex::new(urls),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members, in URL order.
    pub fn urls(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Add `urls` (empty strings ignored, at most [`VOTERS_MAX`] in all);
    /// persist when the set grew. Returns whether it grew.
    pub fn learn<I: IntoIterator<Item = String>>(&self, urls: I) -> bool {
        let mut set = self.lock();
        let before = set.len();
        for u in urls {
            if !u.is_empty() && set.len() < VOTERS_MAX {
                set.insert(u);
            }
        }
        let grew = set.len() > before;
        if grew {
            self.persist(&set);
        }
        grew
    }

    /// Remove `url`; persist. Returns whether it was a member.
    pub fn forget(&self, url: &str) -> bool {
        let mut set = self.lock();
        let removed = set.remove(url);
        if removed {
            self.persist(&set);
        }
        removed
    }

    fn persist(&self, set: &BTreeSet<String>) {
        let Some(path) = &self.path else {
            return;
        };
        let v: Vec<&String> = set.iter().collect();
        let written = serde_json::to_vec_pretty(&v)
            .map_err(std::io::Error::other)
            .and_then(|bytes| replidb_core::durable::write_atomic(path, &bytes));
        if let Err(e) = written {
            // The set is also in memory and relearned from peers: a failed
            // write weakens only what a restart remembers.
            tracing::error!(error = %e, path = %path.display(), "cannot store the voting set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_only_shrinks_by_forget() {
        let dir = tempfile::tempdir().unwrap();
        let v = VotingSet::load(Some(dir.path()));
        assert!(v.learn(["http://a".to_string(), "http://b".into(), String::new()]));
        assert!(!v.learn(["http://a".to_string()]));
        let v = VotingSet::load(Some(dir.path()));
        assert_eq!(v.urls(), vec!["http://a", "http://b"]);
        assert!(v.forget("http://a"));
        let v = VotingSet::load(Some(dir.path()));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn is_bounded() {
        let v = VotingSet::load(None);
        v.learn((0..1000).map(|i| format!("http://n{i}")));
        assert_eq!(v.len(), VOTERS_MAX);
    }
}
