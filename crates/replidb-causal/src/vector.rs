//! Version vectors, dots and the tokens clients carry between requests.
//!
//! A **version vector** maps a node id to a counter. In replidb the counter
//! of node `n` is an LSN of `n`'s own log: a node's LSNs are gapless and
//! increase, so "`n`'s entry is at least 42" means "has seen `n`'s writes up
//! to its record 42". A **dot** `(origin, counter)` names one write: the
//! record `counter` of `origin`'s log. Keeping a version's dot apart from
//! its causal context is the *dotted version vector* of Preguiça et al.,
//! "Dotted Version Vectors: Logical Clocks for Optimistic Replication"
//! (2010), which Riak adopted to stop sibling explosion.

use std::collections::BTreeMap;

use base64::Engine as _;
use crdts::CvRDT;
use serde::{Deserialize, Serialize};

/// A version vector: node id → highest LSN of that node's log seen.
/// (`crdts::VClock`, a `BTreeMap` inside, so its encoding is canonical.)
pub type VersionVector = crdts::VClock<String>;

/// Most entries a client token (a causal context or a `min_version`) may
/// name. A cluster has at most this many origins (voting sets are capped at
/// 64 members); the bound keeps a hostile token from costing much to parse.
pub const TOKEN_ORIGINS_MAX: usize = 256;

/// Longest encoded token accepted, in bytes (a header or query value).
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// One write: record `counter` of `origin`'s log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that accepted the write (its `--id`).
    pub origin: String,
    /// The LSN of the write in the origin's log.
    pub counter: u64,
}

impl Dot {
    /// The dot `(origin, counter)`.
    pub fn new(origin: impl Into<String>, counter: u64) -> Self {
        Dot {
            origin: origin.into(),
            counter,
        }
    }
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.origin, self.counter)
    }
}

/// Whether `vv` has seen the write `dot`.
pub fn vector_covers(vv: &VersionVector, dot: &Dot) -> bool {
    vv.get(&dot.origin) >= dot.counter
}

/// `vv` with `dot` added (its entry raised to the dot's counter).
pub fn with_dot(vv: &VersionVector, dot: &Dot) -> VersionVector {
    let mut out = vv.clone();
    raise(&mut out, &dot.origin, dot.counter);
    out
}

/// Raise `vv[origin]` to at least `counter`.
pub fn raise(vv: &mut VersionVector, origin: &str, counter: u64) {
    if vv.get(&origin.to_string()) < counter {
        vv.dots.insert(origin.to_string(), counter);
    }
}

/// The least vector that has seen both.
pub fn join(into: &mut VersionVector, other: &VersionVector) {
    into.merge(other.clone());
}

/// A vector as a JSON object `{"n1": 42, "n2": 17}` (API responses).
pub fn vector_json(vv: &VersionVector) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = vv
        .dots
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
        .collect();
    serde_json::Value::Object(map)
}

/// Why a token from a client was refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`TOKEN_BYTES_MAX`].
    #[error("token is {len} bytes; the limit is {TOKEN_BYTES_MAX}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not base64 of an encoded vector.
    #[error("causal context is not a token this server issued: {0}")]
    BadContext(String),
    /// `min_version` not of the form `node:lsn,node:lsn`.
    #[error("min_version {0:?} is not of the form NODE:LSN[,NODE:LSN...]")]
    BadMinVersion(String),
    /// More than [`TOKEN_ORIGINS_MAX`] entries.
    #[error("token names {count} origins; the limit is {TOKEN_ORIGINS_MAX}")]
    TooManyOrigins {
        /// How many it named.
        count: usize,
    },
}

/// Encode a causal context as the opaque `X-Replidb-Context` token
/// (URL-safe base64 of the vector's canonical encoding).
pub fn encode_context(vv: &VersionVector) -> String {
    let bytes = postcard::to_stdvec(&vv.dots).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode an `X-Replidb-Context` token. The empty string is the empty
/// context (a write that has seen nothing).
pub fn decode_context(token: &str) -> Result<VersionVector, TokenError> {
    let token = token.trim();
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::TooLong { len: token.len() });
    }
    if token.is_empty() {
        return Ok(VersionVector::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| TokenError::BadContext(e.to_string()))?;
    let dots: BTreeMap<String, u64> =
        postcard::from_bytes(&bytes).map_err(|e| TokenError::BadContext(e.to_string()))?;
    if dots.len() > TOKEN_ORIGINS_MAX {
        return Err(TokenError::TooManyOrigins { count: dots.len() });
    }
    Ok(crdts::VClock { dots })
}

/// A read-your-writes token across origins: origin → lowest LSN of that
/// origin's log a read must reflect (`min_version=n1:42,n2:17`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinVersion(pub BTreeMap<String, u64>);

impl MinVersion {
    /// Parse `n1:42,n2:17` (empty string: no requirement).
    pub fn parse(s: &str) -> Result<MinVersion, TokenError> {
        if s.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLong { len: s.len() });
        }
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (node, lsn) = part
                .rsplit_once(':')
                .ok_or_else(|| TokenError::BadMinVersion(s.to_string()))?;
            let lsn: u64 = lsn
                .parse()
                .map_err(|_| TokenError::BadMinVersion(s.to_string()))?;
            if node.is_empty() {
                return Err(TokenError::BadMinVersion(s.to_string()));
            }
            let e = out.entry(node.to_string()).or_insert(0);
            *e = (*e).max(lsn);
            if out.len() > TOKEN_ORIGINS_MAX {
                return Err(TokenError::TooManyOrigins { count: out.len() });
            }
        }
        Ok(MinVersion(out))
    }

    /// Raise this token to cover `origin`'s record `lsn`.
    pub fn observe(&mut self, origin: &str, lsn: u64) {
        let e = self.0.entry(origin.to_string()).or_insert(0);
        *e = (*e).max(lsn);
    }

    /// Raise this token to cover everything `other` covers.
    pub fn merge(&mut self, other: &MinVersion) {
        for (o, l) in &other.0 {
            self.observe(o, *l);
        }
    }

    /// Whether `applied` (origin → applied LSN) satisfies the token; if
    /// not, the first origin that is behind, with what was asked and what
    /// is applied.
    pub fn unmet(&self, applied: &BTreeMap<String, u64>) -> Option<(String, u64, u64)> {
        self.0.iter().find_map(|(o, want)| {
            let have = applied.get(o).copied().unwrap_or(0);
            (have < *want).then(|| (o.clone(), *want, have))
        })
    }

    /// Whether there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|l| *l == 0)
    }
}

impl std::fmt::Display for MinVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (o, l) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{o}:{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_and_rejects_garbage() {
        let mut vv = VersionVector::new();
        raise(&mut vv, "n1", 42);
        raise(&mut vv, "n2", 7);
        let t = encode_context(&vv);
        assert_eq!(decode_context(&t).unwrap(), vv);
        assert_eq!(decode_context("").unwrap(), VersionVector::new());
        assert!(decode_context("!!!").is_err());
        assert!(decode_context(&"A".repeat(TOKEN_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn min_version_parses_merges_and_checks() {
        let mut m = MinVersion::parse("n1:42, n2:17,n1:3").unwrap();
        assert_eq!(m.to_string(), "n1:42,n2:17");
        assert!(MinVersion::parse("n1").is_err());
        assert!(MinVersion::parse(":4").is_err());
        assert!(MinVersion::parse("n1:x").is_err());
        m.observe("n3", 5);
        let applied: BTreeMap<String, u64> =
            [("n1".into(), 42), ("n2".into(), 16)].into_iter().collect();
        assert_eq!(m.unmet(&applied), Some(("n2".into(), 17, 16)));
        let applied: BTreeMap<String, u64> =
            [("n1".into(), 50), ("n2".into(), 17), ("n3".into(), 5)]
                .into_iter()
                .collect();
        assert_eq!(m.unmet(&applied), None);
    }

    #[test]
    fn covers_and_with_dot() {
        let vv = with_dot(&VersionVector::new(), &Dot::new("a", 3));
        assert!(vector_covers(&vv, &Dot::new("a", 3)));
        assert!(vector_covers(&vv, &Dot::new("a", 1)));
        assert!(!vector_covers(&vv, &Dot::new("a", 4)));
        assert!(!vector_covers(&vv, &Dot::new("b", 1)));
    }
}
