//! Where a follower's stream starts: the pure decision the leader makes on a
//! `Hello`, kept free of IO so it can be tested exhaustively.

use replidb_core::{EpochHistory, Lsn};

/// What the leader does with a connecting follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartDecision {
    /// The follower's log is a prefix of ours: stream from this LSN.
    Stream(Lsn),
    /// The follower is a prefix, but we no longer hold the records it needs:
    /// send a snapshot first.
    Snapshot,
    /// The follower has records we do not: it must drop everything after
    /// this LSN (the last one both logs agree on).
    Diverged(Lsn),
}

/// The follower's side of the comparison.
#[derive(Clone, Debug)]
pub struct LogPosition<'a> {
    /// Highest LSN durably in the log.
    pub last_lsn: Lsn,
    /// The log's epoch history.
    pub history: &'a EpochHistory,
}

/// Decide how to start streaming to `follower` from a leader whose log spans
/// `leader_first..=leader.last_lsn`.
///
/// Two logs agree on a record when it has the same LSN and the same epoch:
/// only one leader writes in an epoch, so equal `(lsn, epoch)` means equal
/// record, and then every earlier record is equal too (log matching, as in
/// Raft).
pub fn decide_start(
    follower: &LogPosition<'_>,
    leader: &LogPosition<'_>,
    leader_first: Lsn,
) -> StartDecision {
    let f_last = follower.last_lsn;
    let matched = f_last == Lsn::ZERO
        || (f_last <= leader.last_lsn
            && follower.history.epoch_at(f_last).is_some()
            && follower.history.epoch_at(f_last) == leader.history.epoch_at(f_last));
    if matched {
        let next = f_last.next();
        return if next < leader_first {
            StartDecision::Snapshot
        } else {
            StartDecision::Stream(next)
        };
    }
    StartDecision::Diverged(common_prefix(follower, leader))
}

/// The last LSN both logs agree on: for the newest epoch both histories
/// contain, the shorter of the two runs of that epoch.
fn common_prefix(follower: &LogPosition<'_>, leader: &LogPosition<'_>) -> Lsn {
    for &(epoch, f_start) in follower.history.entries.iter().rev() {
        let Some(&(_, l_start)) = leader.history.entries.iter().find(|(e, _)| *e == epoch) else {
            continue;
        };
        let f_end = follower
            .history
            .end_of(epoch)
            .unwrap_or(follower.last_lsn.next());
        let l_end = leader
            .history
            .end_of(epoch)
            .unwrap_or(leader.last_lsn.next());
        let start = f_start.max(l_start);
        let end = f_end.min(l_end);
        if end > start {
            return end.prev();
        }
        // The epoch is in both histories but neither wrote in it where the
        // other did: agreement ends before it.
        return start.prev().min(follower.last_lsn);
    }
    Lsn::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;
    use replidb_core::Epoch;

    fn hist(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory {
            entries: entries.iter().map(|&(e, l)| (Epoch(e), Lsn(l))).collect(),
        }
    }

    fn pos(last: u64, h: &EpochHistory) -> LogPosition<'_> {
        LogPosition {
            last_lsn: Lsn(last),
            history: h,
        }
    }

    #[test]
    fn empty_follower_streams_from_one_or_snapshots() {
        let f = hist(&[]);
        let l = hist(&[(1, 1)]);
        assert_eq!(
            decide_start(&pos(0, &f), &pos(10, &l), Lsn(1)),
            StartDecision::Stream(Lsn(1))
        );
        assert_eq!(
            decide_start(&pos(0, &f), &pos(10, &l), Lsn(5)),
            StartDecision::Snapshot
        );
    }

    #[test]
    fn prefix_follower_streams_from_next() {
        let f = hist(&[(1, 1)]);
        let l = hist(&[(1, 1), (2, 8)]);
        assert_eq!(
            decide_start(&pos(5, &f), &pos(10, &l), Lsn(1)),
            StartDecision::Stream(Lsn(6))
        );
        // Caught up exactly.
        let f2 = hist(&[(1, 1), (2, 8)]);
        assert_eq!(
            decide_start(&pos(10, &f2), &pos(10, &l), Lsn(1)),
            StartDecision::Stream(Lsn(11))
        );
    }

    #[test]
    fn old_leader_with_extra_tail_diverges_at_epoch_end() {
        // Old leader wrote 1..=12 in epoch 1; the new leader took over at
        // 9 (it had 1..=8) in epoch 2.
        let old = hist(&[(1, 1)]);
        let new = hist(&[(1, 1), (2, 9)]);
        assert_eq!(
            decide_start(&pos(12, &old), &pos(20, &new), Lsn(1)),
            StartDecision::Diverged(Lsn(8))
        );
        // Even if the new leader has written less than the old one had.
        assert_eq!(
            decide_start(&pos(12, &old), &pos(10, &new), Lsn(1)),
            StartDecision::Diverged(Lsn(8))
        );
    }

    #[test]
    fn follower_ahead_in_same_epoch_diverges_at_leader_end() {
        let h = hist(&[(1, 1)]);
        assert_eq!(
            decide_start(&pos(12, &h), &pos(10, &h), Lsn(1)),
            StartDecision::Diverged(Lsn(10))
        );
    }

    #[test]
    fn no_common_epoch_means_start_over() {
        let f = hist(&[(3, 1)]);
        let l = hist(&[(1, 1), (2, 4)]);
        assert_eq!(
            decide_start(&pos(5, &f), &pos(10, &l), Lsn(1)),
            StartDecision::Diverged(Lsn(0))
        );
    }
}
