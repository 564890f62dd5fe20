//! Causality for replidb's multi-leader and leaderless topologies.
//!
//! - [`vector`]: version vectors, dots, the causal-context and
//!   `min_version` tokens clients carry.
//! - [`policy`]: conflict policies per key prefix.
//! - [`version`]: a plain key's versions and their merge (dotted version
//!   vectors; `lww` on `(hlc, origin)` or `siblings`).
//! - [`state`]: every kind of causal key (plain, counter, set, map), the
//!   operand a write logs, and [`merge`], the one function every node runs
//!   to apply a write — local or from a peer, in any order, any number of
//!   times — so that replicas converge (DESIGN.md, invariant 8).
//!
//! CRDT merge logic comes from the `crdts` crate (a port of riak_dt):
//! `PNCounter`, `Orswot`, `LWWReg`, `VClock`.

pub mod policy;
pub mod state;
pub mod vector;
pub mod version;

use replidb_core::Hlc;
use serde::{Deserialize, Serialize};

pub use policy::{Policy, PolicyError, PolicySet};
pub use state::{
    merge, prepare, CausalWrite, DecodeError, KeyKind, KeyState, Merged, Operand, PrepareError,
    WriteStamp,
};
pub use vector::{Dot, MinVersion, TokenError, VersionVector};
pub use version::{Register, Version, SIBLINGS_MAX};

/// One conflict a policy resolved, as the conflict log keeps it
/// (`GET /v1/conflicts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The key.
    pub key: String,
    /// `lww`, or `type` for a clash of key kinds.
    pub policy: String,
    /// HLC time of the kept version.
    pub at: Hlc,
    /// The versions involved, the kept one first.
    pub versions: Vec<ConflictVersion>,
    /// The dot of the version kept (`None` for a type clash).
    pub kept: Option<Dot>,
}

/// A version as the conflict log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictVersion {
    /// The value (`None`: a delete).
    pub value: Option<Vec<u8>>,
    /// The node that wrote it.
    pub origin: String,
    /// Its HLC time.
    pub hlc: Hlc,
    /// Its version vector (context plus dot).
    pub version: VersionVector,
}

impl Conflict {
    /// Encode for the conflict log.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decode from the conflict log.
    pub fn decode(bytes: &[u8]) -> Result<Conflict, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }
}
