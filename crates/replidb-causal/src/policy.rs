//! Conflict policies per key prefix (`--conflict-policy 'PREFIX=POLICY,...'`).

use serde::{Deserialize, Serialize};

/// How concurrent versions of a plain key are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Last writer wins on `(hlc, origin)`; every loser goes to the
    /// conflict log.
    Lww,
    /// Keep every concurrent version (Riak's `allow_mult`, CouchDB's
    /// `_conflicts`) until a write carrying their context replaces them.
    Siblings,
}

impl Policy {
    /// `lww` or `siblings`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::Siblings => "siblings",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "lww" => Ok(Policy::Lww),
            "siblings" => Ok(Policy::Siblings),
            other => Err(PolicyError::UnknownPolicy(other.to_string())),
        }
    }
}

/// Why a `--conflict-policy` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not `lww` or `siblings`.
    #[error("unknown conflict policy {0:?}: expected lww or siblings")]
    UnknownPolicy(String),
    /// An entry without `=`.
    #[error("conflict policy entry {0:?} is not PREFIX=POLICY")]
    BadEntry(String),
    /// The same prefix twice.
    #[error("prefix {0:?} is given two conflict policies")]
    Duplicate(String),
    /// More than [`POLICY_PREFIXES_MAX`] entries.
    #[error("{0} conflict policy prefixes; the limit is {POLICY_PREFIXES_MAX}")]
    TooMany(usize),
}

/// Most prefixes a policy set may name.
pub const POLICY_PREFIXES_MAX: usize = 256;

/// Policies by key prefix; the longest matching prefix wins, `*` (the empty
/// prefix) is the default, and without it the default is `lww`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    /// `(prefix, policy)`, longest prefix first.
    entries: Vec<(String, Policy)>,
}

impl Default for PolicySet {
    fn default() -> Self {
        PolicySet {
            entries: vec![(String::new(), Policy::Lww)],
        }
    }
}

impl std::str::FromStr for PolicySet {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicySet::parse(s)
    }
}

impl PolicySet {
    /// Parse `PREFIX=POLICY,...` (`*` is the empty prefix).
    pub fn parse(spec: &str) -> Result<PolicySet, PolicyError> {
        let mut entries: Vec<(String, Policy)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (prefix, policy) = part
                .rsplit_once('=')
                .ok_or_else(|| PolicyError::BadEntry(part.to_string()))?;
            let prefix = match prefix.trim() {
                "*" => String::new(),
                p => p.strip_suffix('*').unwrap_or(p).to_string(),
            };
            let policy: Policy = policy.parse()?;
            if entries.iter().any(|(p, _)| *p == prefix) {
                return Err(PolicyError::Duplicate(prefix));
            }
            entries.push((prefix, policy));
            if entries.len() > POLICY_PREFIXES_MAX {
                return Err(PolicyError::TooMany(entries.len()));
            }
        }
        if !entries.iter().any(|(p, _)| p.is_empty()) {
            entries.push((String::new(), Policy::Lww));
        }
        // Longest first, then by name, so equal sets compare equal.
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(PolicySet { entries })
    }

    /// The policy for `key`.
    pub fn policy_for(&self, key: &str) -> Policy {
        self.entries
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, pol)| *pol)
            .unwrap_or(Policy::Lww)
    }

    /// A canonical text form (`*=lww,user:=siblings`), equal for equal
    /// sets: peers compare it at the handshake.
    pub fn fingerprint(&self) -> String {
        let mut parts: Vec<String> = self
            .entries
            .iter()
            .map(|(p, pol)| {
                let p = if p.is_empty() { "*" } else { p.as_str() };
                format!("{p}={pol}")
            })
            .collect();
        parts.sort();
        parts.join(",")
    }

    /// `(prefix, policy)` pairs, longest prefix first (`""` is the default).
    pub fn entries(&self) -> &[(String, Policy)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_default_is_lww() {
        let p = PolicySet::parse("cart:=siblings, cart:vip:=lww").unwrap();
        assert_eq!(p.policy_for("cart:1"), Policy::Siblings);
        assert_eq!(p.policy_for("cart:vip:1"), Policy::Lww);
        assert_eq!(p.policy_for("user:1"), Policy::Lww);
        let q = PolicySet::parse("*=siblings").unwrap();
        assert_eq!(q.policy_for("x"), Policy::Siblings);
    }

    #[test]
    fn fingerprints_match_for_equal_sets_only() {
        let a = PolicySet::parse("a=siblings,b=lww").unwrap();
        let b = PolicySet::parse("b=lww, a=siblings, *=lww").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = PolicySet::parse("a=lww").unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(PolicySet::default().fingerprint(), "*=lww");
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(PolicySet::parse("a=maybe").is_err());
        assert!(PolicySet::parse("a").is_err());
        assert!(PolicySet::parse("a=lww,a=siblings").is_err());
    }
}
