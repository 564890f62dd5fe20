//! Lag in time, measured on one clock.
//!
//! Lag in records is a subtraction of LSNs; lag in time must not be a
//! subtraction of two nodes' wall clocks, which can be seconds (or, on a
//! broken machine, minutes) apart. So:
//!
//! - The leader remembers, on its **monotonic** clock, when each LSN became
//!   durable ([`DurableTimes`]). A follower's lag, as the leader reports it,
//!   is the age of the oldest record the follower has not acknowledged as
//!   applied: `now − durable_at(applied + 1)`, both readings on the leader.
//! - Frames to a follower carry *ages* (durations on the leader's monotonic
//!   clock), never timestamps. The follower subtracts an age from its own
//!   monotonic reading at receipt ([`LeaderAges`]), which translates "when
//!   the leader made it durable" into its own clock, off by at most the
//!   one-way network delay.
//!
//! Both structures are bounded: when full they merge their oldest entries,
//! always keeping the *earlier* time, so a merge can make a lag read
//! larger than it is (by at most the gap between the merged entries), never
//! smaller. Bounded-staleness reads depend on that direction.

use std::collections::VecDeque;

use replidb_core::Lsn;

/// Most entries [`DurableTimes`] keeps (16 bytes each).
pub const DURABLE_TIMES_ENTRIES_MAX: usize = 4096;

/// Most entries [`LeaderAges`] keeps (16 bytes each).
pub const LEADER_AGES_ENTRIES_MAX: usize = 1024;

/// When each LSN became durable on the leader, on its monotonic clock.
///
/// An entry `(lsn, t)` says: every record up to `lsn` (and after the
/// previous entry) was durable by `t`.
#[derive(Debug)]
pub struct DurableTimes {
    entries: VecDeque<(Lsn, u64)>,
    entries_max: usize,
}

impl DurableTimes {
    /// Empty, holding at most `entries_max` entries (at least 2).
    pub fn new(entries_max: usize) -> Self {
        DurableTimes {
            entries: VecDeque::new(),
            entries_max: entries_max.max(2),
        }
    }

    /// Record that everything up to `lsn` is durable at `mono_ms`. Ignored
    /// unless `lsn` is past the last recorded one (the first reader of a
    /// new flush position records it; the others are late).
    pub fn note(&mut self, lsn: Lsn, mono_ms: u64) {
        if self.entries.back().is_some_and(|(last, _)| *last >= lsn) {
            return;
        }
        if self.entries.len() >= self.entries_max {
            self.thin();
        }
        self.entries.push_back((lsn, mono_ms));
    }

    /// Forget everything after `lsn` (the log was cut back: those LSNs will
    /// be reused by other records).
    pub fn truncate_after(&mut self, lsn: Lsn) {
        while self.entries.back().is_some_and(|(last, _)| *last > lsn) {
            self.entries.pop_back();
        }
    }

    /// When record `lsn` was durable by, or `None` if it is not recorded as
    /// durable yet. Records older than the first entry answer the first
    /// entry's time: older than that is not known, only "at least".
    pub fn durable_at(&self, lsn: Lsn) -> Option<u64> {
        let i = self.entries.partition_point(|(l, _)| *l < lsn);
        self.entries.get(i).map(|(_, t)| *t)
    }

    /// Age of record `lsn` at `now_mono_ms`: 0 if it is not durable yet.
    pub fn age_ms(&self, lsn: Lsn, now_mono_ms: u64) -> u64 {
        self.durable_at(lsn)
            .map_or(0, |t| now_mono_ms.saturating_sub(t))
    }

    /// Halve the older half by merging neighbours: resolution degrades for
    /// old records (which only a far-behind follower asks about), and each
    /// merged pair keeps the later LSN with the earlier time.
    fn thin(&mut self) {
        let half = self.entries.len() / 2;
        let old: Vec<(Lsn, u64)> = self.entries.drain(..half).collect();
        for pair in old.chunks(2).rev() {
            let lsn = pair[pair.len() - 1].0;
            self.entries.push_front((lsn, pair[0].1));
        }
    }
}

/// What a follower knows about how old the records it lacks are, translated
/// to its own monotonic clock.
///
/// An entry `(lsn, t)` says: while records up to `lsn` are not all
/// applied, something unapplied became durable on the leader by local
/// time `t`, so the apply lag is at least `now − t`.
#[derive(Debug)]
pub struct LeaderAges {
    entries: VecDeque<(Lsn, u64)>,
    entries_max: usize,
}

impl LeaderAges {
    /// Empty, holding at most `entries_max` entries (at least 2).
    pub fn new(entries_max: usize) -> Self {
        LeaderAges {
            entries: VecDeque::new(),
            entries_max: entries_max.max(2),
        }
    }

    /// Note that records up to `until` include one that was `age_ms` old
    /// on the leader when a frame received at local `received_mono_ms` said
    /// so.
    pub fn note(&mut self, until: Lsn, age_ms: u64, received_mono_ms: u64) {
        if self.entries.len() >= self.entries_max {
            // Merge the two oldest: the later LSN, the earlier time.
            if let (Some(a), Some(b)) = (self.entries.pop_front(), self.entries.pop_front()) {
                self.entries.push_front((a.0.max(b.0), a.1.min(b.1)));
            }
        }
        self.entries
            .push_back((until, received_mono_ms.saturating_sub(age_ms)));
    }

    /// Forget everything (a snapshot replaces the log we were behind on).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The apply lag at `now_mono_ms` given everything up to `applied` is
    /// applied: the age of the oldest entry still covering unapplied
    /// records, or 0.
    pub fn lag_ms(&mut self, applied: Lsn, now_mono_ms: u64) -> u64 {
        self.entries.retain(|(until, _)| *until > applied);
        self.entries
            .iter()
            .map(|(_, t)| now_mono_ms.saturating_sub(*t))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_times_answer_the_first_entry_covering_an_lsn() {
        let mut d = DurableTimes::new(16);
        d.note(Lsn(3), 100);
        d.note(Lsn(3), 150); // late reader: ignored
        d.note(Lsn(7), 200);
        assert_eq!(d.durable_at(Lsn(1)), Some(100));
        assert_eq!(d.durable_at(Lsn(3)), Some(100));
        assert_eq!(d.durable_at(Lsn(4)), Some(200));
        assert_eq!(d.durable_at(Lsn(8)), None);
        assert_eq!(d.age_ms(Lsn(5), 1_200), 1_000);
        assert_eq!(d.age_ms(Lsn(9), 1_200), 0);
        d.truncate_after(Lsn(5));
        assert_eq!(d.durable_at(Lsn(4)), None);
    }

    #[test]
    fn thinning_bounds_memory_and_only_overestimates_age() {
        let mut d = DurableTimes::new(8);
        for i in 1..=1000u64 {
            d.note(Lsn(i), i * 10);
            assert!(d.entries.len() <= 8);
        }
        for i in 1..=1000u64 {
            let t = d.durable_at(Lsn(i)).unwrap();
            assert!(t <= i * 10, "lsn {i}: time {t} is later than the truth");
        }
        // The newest entries keep full resolution.
        assert_eq!(d.durable_at(Lsn(1000)), Some(10_000));
    }

    #[test]
    fn leader_ages_report_the_oldest_unapplied() {
        let mut a = LeaderAges::new(4);
        // A batch up to 10 whose first record was 300 ms old at receipt.
        a.note(Lsn(10), 300, 1_000);
        a.note(Lsn(20), 50, 1_100);
        assert_eq!(a.lag_ms(Lsn(5), 1_200), 500);
        assert_eq!(a.lag_ms(Lsn(10), 1_200), 150);
        assert_eq!(a.lag_ms(Lsn(20), 1_200), 0);
        for i in 0..100u64 {
            a.note(Lsn(100 + i), 0, 2_000 + i);
            assert!(a.entries.len() <= 4);
        }
        assert_eq!(a.lag_ms(Lsn(50), 3_000), 1_000);
    }
}
