//! The story's vocabulary: every event a run records, and how each one
//! reads as a line.

use std::fmt::Write as _;

/// Something worth a line in the story. Times are ms since the run began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The leader made a write durable and applied it.
    Persisted {
        /// The node that took it.
        node: String,
        /// Its epoch (shown only with an elected leader).
        epoch: Option<u64>,
        /// Key written.
        key: String,
        /// Value written.
        value: String,
        /// Its LSN.
        lsn: u64,
        /// Requested write concern.
        majority: bool,
    },
    /// A `w=majority` wait ended.
    MajorityAck {
        /// The leader that waited.
        node: String,
        /// The write's LSN.
        lsn: u64,
        /// Nodes holding it durably.
        acks: usize,
        /// Nodes needed.
        needed: usize,
        /// Voting nodes.
        voters: usize,
        /// Whether the concern was met in time.
        met: bool,
        /// How long the client waited.
        waited_ms: u64,
    },
    /// A follower applied records.
    Applied {
        /// Follower.
        node: String,
        /// First LSN of the batch.
        from: u64,
        /// Last LSN of the batch.
        to: u64,
        /// Keys it wrote (first few).
        keys: Vec<String>,
        /// Smallest persist→apply lag in the batch.
        lag_min: u64,
        /// Largest persist→apply lag in the batch.
        lag_max: u64,
    },
    /// A client read on a follower.
    Read(ReadEvent),
    /// A fault began or ended.
    Fault(String),
    /// A restarted node came back.
    Recovered {
        /// Node.
        node: String,
        /// Its flush LSN after recovery.
        flush: u64,
        /// Its applied LSN after recovery.
        applied: u64,
    },
    /// Every follower holds the leader's log and state.
    Converged {
        /// The common LSN.
        lsn: u64,
    },
    /// etcd dropped a node's session lease and the keys under it.
    LeaseExpired {
        /// Whose lease.
        node: String,
        /// The leader key went with it.
        leader: bool,
    },
    /// A member revoked a node's session lease (a node that stops, a
    /// leader that steps down, or a follower that proved the leader's
    /// process gone): etcd dropped the keys under it at once.
    LeaseRevoked {
        /// Whose lease.
        node: String,
        /// The leader key went with it.
        leader: bool,
    },
    /// A node won the election's compare-and-swap and now leads.
    Elected {
        /// Winner.
        node: String,
        /// Its new epoch.
        epoch: u64,
        /// Its log end when it took over.
        flush: u64,
    },
    /// A leader stopped accepting writes: its write deadline passed or the
    /// coordinator took it away.
    Fenced {
        /// Node.
        node: String,
        /// The epoch it led.
        epoch: u64,
    },
    /// A fenced leader renewed its lease in time and writes again.
    Unfenced {
        /// Node.
        node: String,
        /// The epoch it leads.
        epoch: u64,
    },
    /// A node re-pointed to the leader the coordinator names.
    Following {
        /// Node.
        node: String,
        /// Its new leader.
        leader: String,
        /// The leader's epoch.
        epoch: u64,
        /// It led until now.
        stepped_down: bool,
    },
    /// A node's log had records the leader lacks: they went to `rollback/`.
    Rewound {
        /// Node.
        node: String,
        /// Records removed.
        records: u64,
    },
    /// The client found no writable leader and waited for one.
    LeaderWait {
        /// How long.
        waited_ms: u64,
        /// Who took the next write.
        node: String,
        /// Its epoch.
        epoch: u64,
    },
    /// A write failed on a node (it crashed or lost its lease meanwhile);
    /// the client retries it on whoever leads next.
    WriteFailed {
        /// Node.
        node: String,
        /// Key.
        key: String,
        /// Why.
        why: String,
    },
}

impl EventKind {
    /// Lines printed even when the story is elided.
    pub(crate) fn always_shown(&self) -> bool {
        !matches!(
            self,
            EventKind::Persisted { .. }
                | EventKind::MajorityAck { .. }
                | EventKind::Applied { .. }
                | EventKind::Read(_)
        )
    }
}

/// What one follower read saw; the read-your-writes costs are computed
/// from these afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadEvent {
    /// Follower asked.
    pub node: String,
    /// Key read.
    pub key: String,
    /// LSN of the client's own latest write of this key.
    pub expected: u64,
    /// The client's session token: the LSN of its latest write of any key.
    pub token: u64,
    /// When the client last wrote (ms).
    pub last_write_ms: u64,
    /// LSN of the version the follower returned (0 = absent); `None` if
    /// the follower was down.
    pub seen: Option<u64>,
    /// Value returned, if any.
    pub value: Option<String>,
    /// Follower's applied LSN at the read.
    pub applied: u64,
}

/// One line of the story.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// ms since the run began.
    pub t_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

pub(crate) fn line(k: &EventKind) -> String {
    match k {
        EventKind::Persisted {
            node,
            epoch,
            key,
            value,
            lsn,
            majority,
        } => format!(
            "{node:<8} persisted {key}={value:?} at lsn {lsn}{} (w={})",
            epoch.map(|e| format!(" epoch {e}")).unwrap_or_default(),
            if *majority { "majority" } else { "1" }
        ),
        EventKind::MajorityAck {
            node,
            lsn,
            acks,
            needed,
            voters,
            met,
            waited_ms,
        } => format!(
            "{node:<8} w=majority for lsn {lsn}: durable on {acks} of {voters} nodes ({needed} needed) after {waited_ms}ms{}",
            if *met { ", acknowledged" } else { ", NOT met in time (504)" }
        ),
        EventKind::Applied {
            node,
            from,
            to,
            keys,
            lag_min,
            lag_max,
        } => {
            let lsns = if from == to {
                format!("lsn {to}")
            } else {
                format!("lsn {from}..{to}")
            };
            let mut ks = keys.iter().take(3).cloned().collect::<Vec<_>>().join(",");
            if keys.len() > 3 {
                let _ = write!(ks, ",+{}", keys.len() - 3);
            }
            let lag = if lag_min == lag_max {
                format!("lag_ms={lag_max}")
            } else {
                format!("lag_ms={lag_min}..{lag_max}")
            };
            format!("{node:<8} applied {lsns} ({ks}) {lag}")
        }
        EventKind::Read(r) => read_line(r),
        EventKind::Fault(s) => format!("fault    {s}"),
        EventKind::Recovered {
            node,
            flush,
            applied,
        } => format!("{node:<8} restarted: recovered flush lsn {flush}, applied lsn {applied}"),
        EventKind::Converged { lsn } => {
            format!("cluster  converged: every follower applied lsn {lsn} with the leader's digest")
        }
        EventKind::LeaseExpired { node, leader } => format!(
            "etcd     lease of {node} expired{}",
            if *leader {
                ": the leader key is free"
            } else {
                ""
            }
        ),
        EventKind::LeaseRevoked { node, leader } => format!(
            "etcd     lease of {node} revoked{}",
            if *leader {
                ": the leader key is free"
            } else {
                ""
            }
        ),
        EventKind::Elected { node, epoch, flush } => {
            format!("{node:<8} won election epoch {epoch} (log ends at lsn {flush}), leading")
        }
        EventKind::Fenced { node, epoch } => {
            format!("{node:<8} fenced (lease lost) — refusing writes in epoch {epoch}")
        }
        EventKind::Unfenced { node, epoch } => {
            format!("{node:<8} renewed its lease in time: accepting writes again in epoch {epoch}")
        }
        EventKind::Following {
            node,
            leader,
            epoch,
            stepped_down,
        } => format!(
            "{node:<8} {}follows {leader} (epoch {epoch})",
            if *stepped_down { "steps down, " } else { "" }
        ),
        EventKind::Rewound { node, records } => format!(
            "{node:<8} rewound {records} record{} to rollback file",
            if *records == 1 { "" } else { "s" }
        ),
        EventKind::LeaderWait {
            waited_ms,
            node,
            epoch,
        } => format!("client   waited {waited_ms}ms for a writable leader: {node} (epoch {epoch})"),
        EventKind::WriteFailed { node, key, why } => {
            format!("client   write of {key} on {node} failed ({why}); retrying on the leader")
        }
    }
}

fn read_line(r: &ReadEvent) -> String {
    let head = format!("client   read {} on {}: ", r.key, r.node);
    match (r.seen, &r.value) {
        (None, _) => format!("{head}unavailable ({} is down)", r.node),
        (Some(0), _) | (_, None) => format!(
            "{head}miss, not propagated yet ({} applied lsn {}, the write is lsn {})",
            r.node, r.applied, r.expected
        ),
        (Some(seen), Some(v)) if seen < r.expected => format!(
            "{head}stale {v:?} (lsn {seen}; the client wrote lsn {})",
            r.expected
        ),
        (Some(seen), Some(v)) => format!("{head}served {v:?} (lsn {seen})"),
    }
}
