//! Who should lead: a pure function over what members published, so the
//! rules can be tested without etcd.
//!
//! Rules (Patroni-like, tightened for `w=majority`):
//! 1. Only with a **quorum** of the registered members alive: then any
//!    majority that acknowledged a write shares a member with the alive set,
//!    and the alive member with the longest log holds that write.
//! 2. Logs are ranked by their last record's **position** `(epoch, lsn)`,
//!    epoch first (Raft's up-to-date rule, §5.4.1; PostgreSQL timelines),
//!    never by LSN alone: a deposed leader's unacknowledged tail can be
//!    longer than the committed history of a later epoch that replaced it
//!    (`replidb simulate --seed 359 --faults all` lost a `w=majority` write
//!    that way). The best-ranked log holds every acknowledged write: a
//!    write is acknowledged only on a majority, whose logs then rank at
//!    least as high as its position, and the alive quorum meets that
//!    majority.
//! 3. Eligible: healthy, with the best position among the alive members
//!    (a member whose tail diverges ranks below the committed history and
//!    is never eligible until it rewinds), within `max_lag_records` of it
//!    (only matters for ties in epoch), and whose `flush_lsn` reaches the
//!    highest `commit_lsn` any member has seen in that epoch.
//! 4. During a planned switchover, only the named target, and only if it
//!    holds the best position.
//! 5. Ties go to the smallest id, so every member computes the same winner.

use replidb_core::{Epoch, Lsn, Position};
use serde::{Deserialize, Serialize};

/// What a member publishes about itself (its etcd member key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: String,
    /// Node URL.
    pub url: String,
    /// `leader` or `follower`.
    pub role: String,
    /// Highest epoch seen.
    pub epoch: u64,
    /// Durable log end.
    pub flush_lsn: u64,
    /// Epoch of the record at `flush_lsn` (0 for an empty log). Members
    /// that predate this field publish nothing and rank as epoch 0.
    #[serde(default)]
    pub last_epoch: u64,
    /// Applied position.
    pub applied_lsn: u64,
    /// Highest commit LSN the member has seen (its own, or a leader's).
    pub commit_lsn: u64,
    /// Whether the member considers itself able to lead.
    pub healthy: bool,
}

/// Why no winner could be chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoWinner {
    /// Fewer alive members than a quorum of registered ones.
    NoQuorum {
        /// Alive.
        alive: usize,
        /// Needed.
        needed: usize,
    },
    /// Nobody passed the eligibility rules.
    NoEligible,
}

/// Pick the member that should lead.
pub fn choose<'a>(
    alive: &'a [MemberInfo],
    registered: usize,
    max_lag_records: u64,
    switchover_target: Option<&str>,
) -> Result<&'a MemberInfo, NoWinner> {
    let needed = registered.max(alive.len()) / 2 + 1;
    if alive.len() < needed {
        return Err(NoWinner::NoQuorum {
            alive: alive.len(),
            needed,
        });
    }
    // The best log among every alive member, healthy or not: a sick member
    // with the best log must make the others wait, not lose its records.
    let Some(best) = alive.iter().map(position_of).max() else {
        return Err(NoWinner::NoEligible);
    };
    let committed = alive
        .iter()
        .filter(|m| Epoch(m.last_epoch) == best.epoch)
        .map(|m| m.commit_lsn)
        .max()
        .unwrap_or(0);
    alive
        .iter()
        .filter(|m| m.healthy)
        .filter(|m| position_of(m).epoch == best.epoch)
        .filter(|m| m.flush_lsn >= committed)
        .filter(|m| best.lsn.0.saturating_sub(m.flush_lsn) <= max_lag_records)
        .filter(|m| switchover_target.is_none_or(|t| t == m.id && position_of(m) == best))
        .max_by(|a, b| {
            position_of(a)
                .cmp(&position_of(b))
                .then_with(|| b.id.cmp(&a.id))
        })
        .ok_or(NoWinner::NoEligible)
}

/// A member's log end as a [`Position`] `(last_epoch, flush_lsn)`.
pub fn position_of(m: &MemberInfo) -> Position {
    Position::new(Epoch(m.last_epoch), Lsn(m.flush_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, flush: u64, commit: u64) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            url: format!("http://{id}"),
            role: "follower".into(),
            epoch: 1,
            flush_lsn: flush,
            last_epoch: 1,
            applied_lsn: flush,
            commit_lsn: commit,
            healthy: true,
        }
    }

    #[test]
    fn longest_log_wins_ties_to_smallest_id() {
        let a = [m("n3", 10, 5), m("n2", 12, 5), m("n4", 12, 5)];
        assert_eq!(choose(&a, 4, 1000, None).unwrap().id, "n2");
    }

    #[test]
    fn needs_a_quorum_of_registered_members() {
        let a = [m("n2", 10, 5)];
        assert_eq!(
            choose(&a, 3, 1000, None),
            Err(NoWinner::NoQuorum {
                alive: 1,
                needed: 2
            })
        );
        // A fresh single-node cluster elects itself.
        assert_eq!(choose(&a, 1, 1000, None).unwrap().id, "n2");
    }

    #[test]
    fn members_missing_committed_records_are_not_eligible() {
        let mut short = m("n1", 8, 5);
        short.healthy = true;
        let a = [short, m("n2", 9, 9)];
        // n2 saw commit 9; n1 (flush 8) lacks it even though its id sorts first.
        assert_eq!(choose(&a, 3, 1000, None).unwrap().id, "n2");
        let lagging = [m("n1", 100, 0), m("n2", 10, 0)];
        assert_eq!(choose(&lagging, 2, 5, None).unwrap().id, "n1");
    }

    #[test]
    fn switchover_names_the_winner() {
        let a = [m("n2", 10, 5), m("n3", 10, 5)];
        assert_eq!(choose(&a, 3, 1000, Some("n3")).unwrap().id, "n3");
        assert_eq!(choose(&a, 3, 1000, Some("n9")), Err(NoWinner::NoEligible));
    }

    /// Regression for `replidb simulate --seed 359 --faults all` and the
    /// etcd scenario of the reliability issue: n1's unacknowledged epoch-1
    /// tail ends at LSN 15; n3 holds the `w=majority` writes of epoch 2 up
    /// to LSN 8. Ranking by LSN alone elected n1 and rewound the
    /// acknowledged writes.
    #[test]
    fn later_epoch_beats_longer_log() {
        let mut old = m("n1", 15, 5);
        old.last_epoch = 1;
        let mut new = m("n3", 8, 8);
        new.last_epoch = 2;
        let a = [old.clone(), new.clone()];
        assert_eq!(choose(&a, 3, 1000, None).unwrap().id, "n3");
        // The divergent node is not eligible even as a switchover target,
        // and a lag limit measured from its longer log does not exclude n3.
        assert_eq!(choose(&a, 3, 1000, Some("n1")), Err(NoWinner::NoEligible));
        assert_eq!(choose(&a, 3, 0, None).unwrap().id, "n3");
        // If the only member with the best log is sick, nobody wins.
        let mut sick = new;
        sick.healthy = false;
        assert_eq!(
            choose(&[old, sick], 3, 1000, None),
            Err(NoWinner::NoEligible)
        );
    }

    #[test]
    fn unhealthy_members_never_win() {
        let mut sick = m("n1", 50, 0);
        sick.healthy = false;
        let a = [sick, m("n2", 40, 0)];
        assert_eq!(choose(&a, 2, 1000, None).unwrap().id, "n2");
    }
}
