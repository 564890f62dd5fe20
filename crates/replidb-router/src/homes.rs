//! The multi-leader session map: session id → its *home* node (where its
//! writes go) and the per-origin token of its writes (what its reads wait
//! for). Bounded: past `cap` sessions the least recently used one is
//! evicted (that session's next write picks a new home; a client keeping
//! the `replidb_min_version` cookie keeps read-your-writes, one relying on
//! the `X-Replidb-Session` header alone loses its token).
//!
//! Recency is a counter bumped on every use, not a clock: the map stays a
//! plain data structure that unit tests drive directly.

use std::collections::HashMap;

use replidb_causal::MinVersion;

/// What the router remembers of one multi-leader session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Home {
    /// The node its writes go to (index into the router's nodes), once it
    /// has written.
    pub node: Option<usize>,
    /// Per origin, the highest LSN among the session's writes.
    pub token: MinVersion,
}

/// Sessions by id.
#[derive(Debug)]
pub struct HomeMap {
    entries: HashMap<String, (Home, u64)>,
    cap: usize,
    /// Bumped on every use; an entry's copy says how recently it was used.
    clock: u64,
}

impl HomeMap {
    /// An empty map of at most `cap` sessions.
    pub fn new(cap: usize) -> Self {
        HomeMap {
            entries: HashMap::new(),
            cap: cap.max(1),
            clock: 0,
        }
    }

    /// What is remembered of session `id` (and mark it used).
    pub fn get(&mut self, id: &str) -> Option<Home> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(id).map(|(h, used)| {
            *used = clock;
            h.clone()
        })
    }

    /// Session `id` wrote on node `node`, which answered `token`: `node`
    /// becomes its home and the token is merged into its own. Returns the
    /// session's token after the merge.
    pub fn record_write(&mut self, id: &str, node: usize, token: &MinVersion) -> MinVersion {
        self.clock += 1;
        if !self.entries.contains_key(id) && self.entries.len() >= self.cap {
            // O(cap), only when full.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        let (home, used) = self.entries.entry(id.to_string()).or_default();
        home.node = Some(node);
        home.token.merge(token);
        *used = self.clock;
        home.token.clone()
    }

    /// Sessions remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> MinVersion {
        MinVersion::parse(s).unwrap()
    }

    #[test]
    fn a_write_sets_the_home_and_merges_the_token() {
        let mut m = HomeMap::new(10);
        assert_eq!(m.get("s"), None);
        assert_eq!(m.record_write("s", 1, &t("n2:5")), t("n2:5"));
        assert_eq!(m.record_write("s", 1, &t("n2:4,n1:3")), t("n1:3,n2:5"));
        let h = m.get("s").unwrap();
        assert_eq!(h.node, Some(1));
        assert_eq!(h.token.to_string(), "n1:3,n2:5");
        // Re-homed after a failover: the token keeps the old home's writes.
        m.record_write("s", 2, &t("n3:1"));
        let h = m.get("s").unwrap();
        assert_eq!(
            (h.node, h.token.to_string()),
            (Some(2), "n1:3,n2:5,n3:1".into())
        );
    }

    #[test]
    fn the_least_recently_used_session_goes_first() {
        let mut m = HomeMap::new(2);
        m.record_write("a", 0, &t("n1:1"));
        m.record_write("b", 0, &t("n1:2"));
        m.get("a");
        m.record_write("c", 0, &t("n1:3"));
        assert_eq!(m.len(), 2);
        assert!(m.get("b").is_none(), "b was used least recently");
        assert!(m.get("a").is_some() && m.get("c").is_some());
    }
}
