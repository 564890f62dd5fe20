//! The replication stream over turmoil's simulated TCP.
//!
//! - [`SimTransport`] is the follower's [`Transport`]: it connects to the
//!   leader's host name (`http://leader:7000` → `leader:7000`) with
//!   `turmoil::net::TcpStream` and runs the real [`client_handshake`].
//! - [`serve_replication`] is the leader's side of the HTTP upgrade: an
//!   accept loop that reads the request head, answers `101`, and hands the
//!   stream to the real [`Leader::serve`].
//! - [`FaultIo`] sits under the follower's frame decoder while a
//!   `delay` fault is active on its link. TCP never duplicates bytes, so
//!   duplication is injected one level up: a whole `Records` or `Heartbeat`
//!   frame is delivered twice (the follower must skip records it has), and
//!   now and then the stream is cut mid-run so the follower reconnects and
//!   the leader replays from the follower's flush LSN.
//! - [`SimTransport`]'s probe answers as a real kernel would: a crashed
//!   host refuses connections. turmoil drops a SYN on a partitioned link
//!   exactly as it drops one to a port nobody listens on (both read as
//!   "connection refused"), so the probe does not ask the network: it
//!   asks which hosts are running, and a partition (or a host that is up)
//!   proves nothing, as a timeout proves nothing on a real network.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_replication::transport::{
    client_handshake, host_port, BoxFuture, BoxIo, REPLICATION_PATH, UPGRADE_PROTOCOL,
};
use replidb_replication::{Frame, FrameCodec, Leader, Reach, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::Decoder;

/// Port every simulated node listens on.
pub const PORT: u16 = 7000;

/// Probability that a frame is delivered twice while duplication is on.
const DUP_PROBABILITY: f64 = 0.3;
/// Probability that the stream is cut after a frame while duplication is on.
const CUT_PROBABILITY: f64 = 0.02;

/// Per-link fault switches, flipped by the fault schedule.
#[derive(Debug, Default)]
pub struct LinkFaults {
    /// Duplicate frames and cut streams on this follower's link.
    pub duplicate: AtomicBool,
    /// Frames delivered twice so far.
    pub duplicated: AtomicU64,
    /// Streams cut so far.
    pub cuts: AtomicU64,
}

/// The follower's transport: simulated TCP plus the fault layer.
pub struct SimTransport {
    faults: Arc<LinkFaults>,
    rng: Mutex<StdRng>,
    /// Which hosts run, for [`Transport::probe`]; weak, because the
    /// registry holds the nodes that hold this transport.
    hosts: Weak<crate::cluster::Shared>,
}

impl SimTransport {
    /// A transport whose fault layer draws from `seed`; its probes know
    /// nothing (see [`SimTransport::with_hosts`]).
    pub fn new(faults: Arc<LinkFaults>, seed: u64) -> Self {
        SimTransport {
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            hosts: Weak::new(),
        }
    }

    /// Probes answer from the run's registry of running hosts: a host
    /// that is not running (crashed, not yet restarted) refuses.
    pub fn with_hosts(mut self, shared: &Arc<crate::cluster::Shared>) -> Self {
        self.hosts = Arc::downgrade(shared);
        self
    }
}

impl Transport for SimTransport {
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let addr = host_port(url)?;
            let mut stream = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            client_handshake(&mut stream, &addr, None).await?;
            let seed = self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .random::<u64>();
            Ok(Box::new(FaultIo::new(stream, self.faults.clone(), seed)) as BoxIo)
        })
    }

    fn probe<'a>(&'a self, url: &'a str, _timeout: Duration) -> BoxFuture<'a, Reach> {
        Box::pin(async move {
            let Some(shared) = self.hosts.upgrade() else {
                return Reach::Unknown;
            };
            let Ok(addr) = host_port(url) else {
                return Reach::Unknown;
            };
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
            // A crashed host's kernel would answer a SYN with a reset. (A
            // real one behind a partition too would time out instead; the
            // simulation is more generous with proof there, never wrong:
            // the process is gone either way.)
            if shared.node(host).is_none() {
                Reach::Refused
            } else {
                Reach::Unknown
            }
        })
    }
}

/// Accept replication streams on `0.0.0.0:PORT` and serve each with the
/// real leader code: the leader `current` returns when the stream arrives,
/// or `503` when this node does not lead. Runs until the host stops.
pub async fn serve_replication<F>(current: F) -> io::Result<()>
where
    F: Fn() -> Option<Arc<Leader>> + Send + Sync + 'static,
{
    let current = Arc::new(current);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let current = current.clone();
        tokio::spawn(async move {
            let answer: &[u8] = match read_upgrade(&mut stream).await {
                Ok(()) => match current() {
                    Some(leader) => {
                        if accept_upgrade(&mut stream).await.is_ok() {
                            leader.serve(Box::new(stream)).await;
                        }
                        return;
                    }
                    None => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                },
                Err(_) => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            };
            let _ = stream.write_all(answer).await;
        });
    }
}

/// Read the upgrade request head.
async fn read_upgrade(stream: &mut turmoil::net::TcpStream) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte: the follower speaks only after our answer, but we must
    // not swallow anything that belongs to the frame stream.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad upgrade request",
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let wanted = format!("GET {REPLICATION_PATH} ");
    let upgrade = format!("upgrade: {UPGRADE_PROTOCOL}");
    if !text.starts_with(&wanted) || !text.to_ascii_lowercase().contains(&upgrade) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a replication upgrade",
        ));
    }
    Ok(())
}

/// Answer `101 Switching Protocols`.
async fn accept_upgrade(stream: &mut turmoil::net::TcpStream) -> io::Result<()> {
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {UPGRADE_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    stream.flush().await
}

/// A stream that, while its link's `duplicate` switch is on, delivers some
/// incoming `Records`/`Heartbeat` frames twice and sometimes ends the
/// stream after a frame. Writes pass through untouched.
pub struct FaultIo<S> {
    inner: S,
    faults: Arc<LinkFaults>,
    rng: StdRng,
    /// Bytes read from `inner`, not yet split into frames.
    incoming: BytesMut,
    /// Whole frames ready for the reader.
    ready: BytesMut,
    /// The stream was cut: every read answers end-of-file.
    cut: bool,
}

impl<S> FaultIo<S> {
    /// Wrap `inner` (already past the upgrade handshake).
    pub fn new(inner: S, faults: Arc<LinkFaults>, seed: u64) -> Self {
        FaultIo {
            inner,
            faults,
            rng: StdRng::seed_from_u64(seed),
            incoming: BytesMut::new(),
            ready: BytesMut::new(),
            cut: false,
        }
    }

    /// Move whole frames from `incoming` to `ready`, applying faults.
    fn split_frames(&mut self) {
        loop {
            if self.incoming.len() < 4 {
                return;
            }
            let len = u32::from_be_bytes([
                self.incoming[0],
                self.incoming[1],
                self.incoming[2],
                self.incoming[3],
            ]) as usize;
            if self.incoming.len() < 4 + len {
                return;
            }
            let frame = self.incoming.split_to(4 + len);
            let active = self.faults.duplicate.load(Ordering::Relaxed);
            let (dup, cut) = if active {
                let repeatable = matches!(
                    FrameCodec::accepting_all().decode(&mut frame.clone()),
                    Ok(Some(Frame::Records { .. } | Frame::Heartbeat { .. }))
                );
                let dup = repeatable && self.rng.random_bool(DUP_PROBABILITY);
                (dup, self.rng.random_bool(CUT_PROBABILITY))
            } else {
                (false, false)
            };
            self.ready.extend_from_slice(&frame);
            if dup {
                self.ready.extend_from_slice(&frame);
                self.faults.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            if cut {
                self.faults.cuts.fetch_add(1, Ordering::Relaxed);
                self.cut = true;
                self.incoming.clear();
                return;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.cut {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // End of stream: hand over any partial frame as is.
                        let rest = this.incoming.split();
                        this.ready.extend_from_slice(&rest);
                        this.cut = true;
                        continue;
                    }
                    this.incoming.extend_from_slice(rb.filled());
                    this.split_frames();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use replidb_core::Lsn;
    use tokio_util::codec::Framed;

    fn records(n: u64) -> Frame {
        Frame::Records {
            records: Vec::new(),
            last_lsn: Lsn(n),
            commit_lsn: Lsn(n),
            first_age_ms: n,
            behind_age_ms: 0,
            sent_mono_ms: n,
        }
    }

    async fn deliver(active: bool, seed: u64) -> Vec<Frame> {
        let (a, b) = tokio::io::duplex(1 << 16);
        let faults = Arc::new(LinkFaults::default());
        faults.duplicate.store(active, Ordering::Relaxed);
        let mut tx = Framed::new(a, FrameCodec::default());
        for n in 0..40 {
            tx.send(records(n)).await.unwrap();
        }
        drop(tx);
        let mut rx = Framed::new(FaultIo::new(b, faults, seed), FrameCodec::default());
        let mut seen = Vec::new();
        while let Some(Ok(f)) = rx.next().await {
            seen.push(f);
        }
        seen
    }

    #[tokio::test]
    async fn healthy_links_pass_frames_through() {
        let seen = deliver(false, 1).await;
        assert_eq!(seen, (0..40).map(records).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn faulty_links_duplicate_whole_frames_in_order_or_cut() {
        for seed in 0..20 {
            let seen = deliver(true, seed).await;
            // Never reordered, never damaged: each frame is the previous
            // one again or the next one.
            let mut expect = 0u64;
            for f in &seen {
                if *f == records(expect) {
                    expect += 1;
                } else {
                    assert_eq!(*f, records(expect - 1), "seed {seed}");
                }
            }
            assert!(
                seen.len() as u64 > expect || expect < 40,
                "seed {seed}: no fault at all"
            );
        }
    }
}
