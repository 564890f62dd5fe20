//! The sticky-session map: session id → when it last wrote. Bounded: an
//! entry older than the window is useless and is purged; past `cap`
//! entries the oldest one is evicted (that session merely loses its
//! stickiness; its LSN cookie still gives read-your-writes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Recent writers, by session id.
#[derive(Debug)]
pub struct SessionMap {
    entries: HashMap<String, Instant>,
    window: Duration,
    cap: usize,
}

impl SessionMap {
    /// An empty map keeping writes for `window`, at most `cap` sessions.
    pub fn new(window: Duration, cap: usize) -> Self {
        SessionMap {
            entries: HashMap::new(),
            window,
            cap: cap.max(1),
        }
    }

    /// Session `id` wrote at `now`.
    pub fn record_write(&mut self, id: &str, now: Instant) {
        if self.window.is_zero() {
            return;
        }
        if let Some(t) = self.entries.get_mut(id) {
            *t = now;
            return;
        }
        if self.entries.len() >= self.cap {
            self.purge(now);
        }
        if self.entries.len() >= self.cap {
            // Still full of live sessions: drop the oldest writer. O(cap),
            // only when the map is full of sessions inside the window.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(id.to_string(), now);
    }

    /// When session `id` last wrote, if that is within the window.
    pub fn wrote_at(&self, id: &str, now: Instant) -> Option<Instant> {
        self.entries
            .get(id)
            .copied()
            .filter(|t| now.saturating_duration_since(*t) < self.window)
    }

    /// Forget every session whose last write is outside the window.
    pub fn purge(&mut self, now: Instant) {
        let window = self.window;
        self.entries
            .retain(|_, t| now.saturating_duration_since(*t) < window);
    }

    /// Sessions tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_write_is_remembered_for_the_window_only() {
        let mut m = SessionMap::new(100 * MS, 10);
        let t0 = Instant::now();
        m.record_write("s", t0);
        assert_eq!(m.wrote_at("s", t0 + 99 * MS), Some(t0));
        assert_eq!(m.wrote_at("s", t0 + 100 * MS), None);
        assert_eq!(m.wrote_at("other", t0), None);
        m.record_write("s", t0 + 50 * MS);
        assert!(
            m.wrote_at("s", t0 + 120 * MS).is_some(),
            "a new write extends it"
        );
        m.purge(t0 + 200 * MS);
        assert!(m.is_empty());
    }

    #[test]
    fn the_map_never_exceeds_its_cap() {
        let mut m = SessionMap::new(1000 * MS, 3);
        let t0 = Instant::now();
        for i in 0..3u32 {
            m.record_write(&format!("s{i}"), t0 + i * MS);
        }
        m.record_write("s3", t0 + 3 * MS);
        assert_eq!(m.len(), 3);
        assert_eq!(m.wrote_at("s0", t0 + 4 * MS), None, "the oldest went");
        assert!(m.wrote_at("s3", t0 + 4 * MS).is_some());
        // Expired entries go first, before any live one.
        m.record_write("s4", t0 + 1002 * MS);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_zero_window_tracks_nothing() {
        let mut m = SessionMap::new(Duration::ZERO, 3);
        m.record_write("s", Instant::now());
        assert!(m.is_empty());
    }
}
