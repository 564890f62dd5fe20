//! Pieces the stream tests share: a stream that breaks after a byte budget,
//! and an engine with tiny WAL segments.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use replidb_core::SystemClock;
use replidb_engine::{Engine, EngineOptions};
use replidb_storage::Backend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that fails once `left` bytes have passed: reads always count,
/// writes only with `cut_writes`. The read that crosses the budget delivers
/// the bytes before it and no more — a truncated frame.
pub struct CutStream {
    pub inner: tokio::io::DuplexStream,
    pub left: usize,
    pub cut_writes: bool,
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "injected cut")
}

impl AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(cut()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = buf.filled().len() - before;
            if n > self.left {
                buf.set_filled(before + self.left);
                self.left = 0;
            } else {
                self.left -= n;
            }
        }
        r
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut_writes {
            if self.left < data.len() {
                self.left = 0;
                return Poll::Ready(Err(cut()));
            }
            self.left -= data.len();
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An engine in `dir` with 2 KiB WAL segments, so retention can drop what a
/// lagging follower still needs.
pub async fn engine(dir: &std::path::Path, id: &str, backend: Backend) -> Arc<Engine> {
    let mut o = EngineOptions::new(dir, id);
    o.backend = backend;
    o.wal.segment_bytes = 2048;
    Engine::open(o, Arc::new(SystemClock)).await.unwrap()
}
