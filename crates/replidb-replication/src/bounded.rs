//! Sending and receiving frames with a deadline. Every step of a stream is
//! bounded: a peer that stopped reading (paused, cut off) must not hold a
//! sender forever, where no idle timeout on receive could fire, and a peer
//! that stopped sending must be noticed (`replidb simulate --seed 487
//! --faults all` found a follower stuck on an unanswered connect).

use std::time::Duration;

use futures::{SinkExt, StreamExt};

use crate::frame::{Frame, FrameError};
use crate::{ReplicationError, Result};

/// Send `frame` to `peer` (named in the error), giving up after `timeout`.
pub(crate) async fn send_within<S>(
    sink: &mut S,
    frame: Frame,
    timeout: Duration,
    peer: &str,
) -> Result<()>
where
    S: futures::Sink<Frame, Error = FrameError> + Unpin,
{
    let kind = frame.kind();
    match tokio::time::timeout(timeout, sink.send(frame)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(ReplicationError::Protocol(format!(
            "{peer} did not take a {kind} frame within {timeout:?}"
        ))),
    }
}

/// The next frame from `peer` (named in the error), if one comes within
/// `timeout`.
pub(crate) async fn recv_within<S>(stream: &mut S, timeout: Duration, peer: &str) -> Result<Frame>
where
    S: futures::Stream<Item = std::result::Result<Frame, FrameError>> + Unpin,
{
    match tokio::time::timeout(timeout, stream.next()).await {
        Err(_) => Err(ReplicationError::Protocol(format!(
            "no frame from {peer} in {timeout:?}"
        ))),
        Ok(None) => Err(ReplicationError::Protocol(format!(
            "{peer} closed the stream"
        ))),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(f))) => Ok(f),
    }
}

/// [`send_within`] from a leader to the follower it streams to.
pub(crate) async fn send_within_follower<S>(
    sink: &mut S,
    frame: Frame,
    timeout: Duration,
) -> Result<()>
where
    S: futures::Sink<Frame, Error = FrameError> + Unpin,
{
    send_within(sink, frame, timeout, "follower").await
}
