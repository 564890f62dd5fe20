//! Node metadata that must survive restarts: the current epoch and the epoch
//! history. Written atomically (temp file, fsync, rename, fsync directory).

use replidb_core::{Epoch, EpochHistory};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

use crate::{EngineError, Result};

/// Durable per-node metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Highest epoch this node has seen (invariant 3: it never acts on a
    /// lower one).
    pub epoch: Epoch,
    /// Where each epoch starts in this node's log.
    pub history: EpochHistory,
    /// URL of the node that leads `epoch`, as this node last learned it:
    /// its own URL once it leads it, the leader's once it follows it;
    /// empty when unknown (a new epoch heard of without its leader, or a
    /// file written before this field). Written in the same atomic update
    /// as the epoch, so a node restarted after stepping down knows it no
    /// longer leads: a static node started without `--follow` follows the
    /// recorded leader instead of leading an epoch another node won.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub leader: String,
}

pub(crate) fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta.json")
}

pub(crate) fn load(dir: &Path) -> Result<Option<NodeMeta>> {
    let path = meta_path(dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EngineError::Meta {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::Meta {
            path,
            reason: e.to_string(),
        }),
    }
}

pub(crate) fn store(dir: &Path, meta: &NodeMeta) -> Result<()> {
    let path = meta_path(dir);
    let err = |e: std::io::Error| EngineError::Meta {
        path: path.clone(),
        reason: e.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| EngineError::Meta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    replidb_core::durable::write_atomic(&path, &bytes).map_err(err)
}
