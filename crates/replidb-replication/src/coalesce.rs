//! Group commit on a follower: `Records` frames that are already decoded
//! or waiting in the receive buffer when one arrives are appended together,
//! in one writer round and one fsync.
//!
//! A leader under load sends a frame per group commit of its own. A
//! follower that appended them one at a time, each waiting for its own
//! fsync, needed one round per leader round: with its disk no faster than
//! the leader's it fell behind, and frames queued in the socket while the
//! visibility of a write (and the ack a `w=majority` write waits for) grew
//! with the queue. Taking what is already there costs no waiting, keeps
//! the frames' order, and is bounded like a single frame.

use crate::frame::{Frame, BATCH_BYTES_MAX, BATCH_RECORDS_MAX};
use crate::Result;

/// Most records appended in one coalesced round: one frame's limit, so a
/// coalesced batch holds no more than the largest single frame may.
pub const COALESCED_RECORDS_MAX: usize = BATCH_RECORDS_MAX;

/// Most payload bytes (`Op::size_bytes`) in one coalesced round; as
/// [`COALESCED_RECORDS_MAX`], one frame's limit.
pub const COALESCED_BYTES_MAX: usize = BATCH_BYTES_MAX;

/// Payload bytes of a `Records` frame's records (0 for any other frame).
fn payload_bytes(frame: &Frame) -> usize {
    match frame {
        Frame::Records { records, .. } => records.iter().map(|r| r.op.size_bytes()).sum(),
        _ => 0,
    }
}

fn record_count(frame: &Frame) -> usize {
    match frame {
        Frame::Records { records, .. } => records.len(),
        _ => 0,
    }
}

/// Gather `first` (a `Records` frame) and the `Records` frames that
/// `ready` yields right away, in order, while they fit in
/// [`COALESCED_RECORDS_MAX`] and [`COALESCED_BYTES_MAX`] (`first` is always
/// taken: it fits one frame's limits by itself).
///
/// `ready` returns `None` when nothing more is available without waiting.
/// Returns the frames to append as one batch and what stopped the
/// gathering, if it must be handled next: another kind of frame, a
/// `Records` frame that did not fit, or a receive error (handled after the
/// batch, so records received before it are not dropped).
pub fn gather(
    first: Frame,
    mut ready: impl FnMut() -> Option<Result<Frame>>,
) -> (Vec<Frame>, Option<Result<Frame>>) {
    debug_assert!(matches!(first, Frame::Records { .. }));
    let mut records = record_count(&first);
    let mut bytes = payload_bytes(&first);
    let mut frames = vec![first];
    while let Some(next) = ready() {
        let frame = match next {
            Ok(f @ Frame::Records { .. }) => f,
            other => return (frames, Some(other)),
        };
        let (n, b) = (record_count(&frame), payload_bytes(&frame));
        if records + n > COALESCED_RECORDS_MAX || bytes + b > COALESCED_BYTES_MAX {
            return (frames, Some(Ok(frame)));
        }
        records += n;
        bytes += b;
        frames.push(frame);
    }
    (frames, None)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use replidb_core::{Lsn, Op, Record};

    use super::*;
    use crate::ReplicationError;

    fn records(from: u64, n: u64, value_bytes: usize) -> Frame {
        let records = (from..from + n)
            .map(|l| Record {
                lsn: Lsn(l),
                epoch: replidb_core::Epoch(1),
                hlc: Default::default(),
                op: Op::Put {
                    key: format!("k{l}"),
                    value: vec![b'v'; value_bytes],
                },
            })
            .collect();
        Frame::Records {
            records,
            last_lsn: Lsn(from + n - 1),
            commit_lsn: Lsn::ZERO,
            first_age_ms: 0,
            behind_age_ms: 0,
            sent_mono_ms: 0,
        }
    }

    fn heartbeat() -> Frame {
        Frame::Heartbeat {
            last_lsn: Lsn(9),
            commit_lsn: Lsn::ZERO,
            lacking_age_ms: 0,
            epoch: replidb_core::Epoch(1),
            peers: Vec::new(),
            sent_mono_ms: 0,
        }
    }

    fn lsns(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .flat_map(|f| match f {
                Frame::Records { records, .. } => records.iter().map(|r| r.lsn.0).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn source(frames: Vec<Result<Frame>>) -> impl FnMut() -> Option<Result<Frame>> {
        let mut q: VecDeque<_> = frames.into();
        move || q.pop_front()
    }

    #[test]
    fn frames_already_received_are_appended_together_in_order() {
        let (batch, next) = gather(
            records(1, 2, 4),
            source(vec![Ok(records(3, 3, 4)), Ok(records(6, 1, 4))]),
        );
        assert_eq!(lsns(&batch), vec![1, 2, 3, 4, 5, 6]);
        assert!(next.is_none());
    }

    #[test]
    fn another_kind_of_frame_ends_the_batch_and_comes_next() {
        let (batch, next) = gather(
            records(1, 2, 4),
            source(vec![Ok(heartbeat()), Ok(records(3, 1, 4))]),
        );
        assert_eq!(lsns(&batch), vec![1, 2]);
        assert!(matches!(next, Some(Ok(Frame::Heartbeat { .. }))));
    }

    #[test]
    fn a_receive_error_comes_after_the_records_before_it() {
        let (batch, next) = gather(
            records(1, 2, 4),
            source(vec![
                Ok(records(3, 1, 4)),
                Err(ReplicationError::Protocol(
                    "leader closed the stream".into(),
                )),
            ]),
        );
        assert_eq!(lsns(&batch), vec![1, 2, 3]);
        assert!(matches!(next, Some(Err(_))));
    }

    #[test]
    fn a_batch_stays_within_one_frames_limits() {
        let half = COALESCED_RECORDS_MAX as u64 / 2;
        let (batch, next) = gather(
            records(1, half, 1),
            source(vec![
                Ok(records(half + 1, half, 1)),
                Ok(records(2 * half + 1, 1, 1)),
            ]),
        );
        assert_eq!(lsns(&batch).len(), COALESCED_RECORDS_MAX);
        match next {
            Some(Ok(Frame::Records { records, .. })) => assert_eq!(records[0].lsn.0, 2 * half + 1),
            _ => panic!("the frame that did not fit must come next"),
        }
        // Bytes too: two frames of more than half the byte limit each.
        let big = COALESCED_BYTES_MAX / 2 + 1;
        let (batch, next) = gather(records(1, 1, big), source(vec![Ok(records(2, 1, big))]));
        assert_eq!(lsns(&batch), vec![1]);
        assert!(matches!(next, Some(Ok(Frame::Records { .. }))));
    }
}
