//! Which URL a single-leader node's data directory belongs to.
//!
//! A single-leader cluster keeps members' URLs on disk: each node's voting
//! set (`members.json`) and the leader of its epoch (`meta.json`). A node
//! restarted on the same data directory under another URL — another port,
//! or the same address spelled another way (`localhost` for `127.0.0.1`)
//! — would be a second member to everyone: a phantom voter that raises the
//! majority, and a former leader that "follows" its own old URL. So the
//! first start records the URL the node advertises (`identity.json`), and
//! a later start that advertises another is refused with what to do,
//! before anything is announced or written.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// The file, in the data directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// Longest identity file read; it holds one URL and one id.
const IDENTITY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// What `identity.json` holds.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    /// The URL this node advertises to its peers.
    advertise_url: String,
    /// Its `--id` when it was recorded (for the error message only).
    id: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// Check that `data_dir` belongs to the node advertising `url`, recording
/// it on first use (a data directory from before this file, too). A node
/// that has never been in a cluster (`in_a_cluster` false: no epoch yet)
/// may change it: nobody knows it by the old one (a typo corrected).
///
/// # Errors
/// [`ServerError::Startup`] when the directory was recorded under another
/// URL and the node has been in a cluster (with the two ways out), or the
/// file cannot be read or written.
pub fn settle(data_dir: &Path, url: &str, id: &str, in_a_cluster: bool) -> Result<(), ServerError> {
    let file = path(data_dir);
    let io = |e: std::io::Error| ServerError::Startup(format!("{}: {e}", file.display()));
    match std::fs::metadata(&file) {
        Ok(m) if m.len() > IDENTITY_FILE_BYTES_MAX => {
            return Err(ServerError::Startup(format!(
                "{}: {} bytes, more than an identity file holds ({IDENTITY_FILE_BYTES_MAX})",
                file.display(),
                m.len()
            )));
        }
        Ok(_) => {
            let bytes = std::fs::read(&file).map_err(io)?;
            let recorded: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                ServerError::Startup(format!("{}: not an identity file: {e}", file.display()))
            })?;
            if recorded.advertise_url == url {
                return Ok(());
            }
            if in_a_cluster {
                return Err(ServerError::Startup(format!(
                "{dir} belongs to the node that advertised {old} (id {old_id}), and this node advertises {url}: \
                 its peers, voting set and epoch leader know it by {old}, so under {url} it would be a second member. \
                 Start it with --advertise-url {old} (it may listen anywhere), or, to rename it, \
                 remove it from the cluster (POST /admin/forget {{\"member\": \"{old}\"}} on the leader) \
                 and start it with an empty --data-dir",
                dir = data_dir.display(),
                old = recorded.advertise_url,
                old_id = recorded.id,
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let identity = Identity {
        advertise_url: url.to_string(),
        id: id.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&identity)
        .map_err(|e| ServerError::Startup(format!("{}: {e}", file.display())))?;
    replidb_core::durable::write_atomic(&file, &bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_url_is_recorded_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        settle(dir.path(), "http://127.0.0.1:7001", "n1", true).unwrap();
        settle(dir.path(), "http://127.0.0.1:7001", "n1", true).unwrap();
        let e = settle(dir.path(), "http://localhost:7001", "n1", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--advertise-url http://127.0.0.1:7001") && e.contains("/admin/forget"),
            "{e}"
        );
        // Refused, not overwritten: the recorded URL still wins.
        settle(dir.path(), "http://127.0.0.1:7001", "n1", true).unwrap();
    }

    #[test]
    fn a_node_never_in_a_cluster_may_change_its_url() {
        let dir = tempfile::tempdir().unwrap();
        settle(dir.path(), "http://127.0.0.1:7001", "n1", false).unwrap();
        settle(dir.path(), "http://127.0.0.1:7002", "n1", false).unwrap();
        // The new one is recorded.
        let e = settle(dir.path(), "http://127.0.0.1:7001", "n1", true).unwrap_err();
        assert!(
            e.to_string()
                .contains("--advertise-url http://127.0.0.1:7002"),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        let e = settle(dir.path(), "http://127.0.0.1:7001", "n1", true).unwrap_err();
        assert!(e.to_string().contains("not an identity file"), "{e}");
    }
}
