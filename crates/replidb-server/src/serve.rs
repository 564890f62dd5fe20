//! The HTTP listener: accept connections up to a limit, serve each with
//! hyper under header-size and header-time limits, and shut down
//! gracefully.
//!
//! Why not `axum::serve`: it offers no connection limit and no hyper
//! settings, so a client that opens connections and never finishes a
//! request (slowloris) could hold a node's memory and file descriptors
//! forever. Here:
//! - at most [`HttpLimits::connections_max`] connections are served at
//!   once; one more is answered `503 too_many_connections` and closed at
//!   once, never queued;
//! - a request head must arrive whole within
//!   [`HttpLimits::header_timeout`], which is also how long an idle
//!   keep-alive connection stays open (hyper runs one timer for both);
//! - a request head larger than [`HttpLimits::header_bytes_max`] is
//!   answered 431 by hyper;
//! - bodies are limited per endpoint (`--max-value-bytes`) and must arrive
//!   within [[`crate::api::BODY_READ_TIMEOUT`]];
//! - a write to the connection that makes no progress for
//!   [`SEND_TIMEOUT`] closes it ([`SendDeadline`], nginx's `send_timeout`):
//!   a client that stops reading an answer does not hold the answer, and
//!   what it holds (a scan slot), for as long as TCP keeps the connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Default of `--max-connections`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Default of `--http-header-timeout`: as nginx's `client_header_timeout`.
/// Our own clients drop idle pooled connections sooner
/// ([`CLIENT_POOL_IDLE_TIMEOUT`]), so they never send into a connection
/// the server is closing.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// How long replidb's own HTTP clients (node to node, router) keep an idle
/// pooled connection: well under [`HEADER_TIMEOUT_DEFAULT`].
pub const CLIENT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--max-header-bytes`: request line and headers together.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// The smallest `--max-header-bytes` accepted: hyper's read buffer cannot
/// be smaller than 8 KiB.
pub const HEADER_BYTES_MIN: usize = 8 * 1024;
/// Longest a write to a connection may wait without progress before the
/// connection is closed (nginx's `send_timeout`, same default). Progress
/// resets it: a slow reader that keeps reading is not cut off by it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection whose writes fail with `TimedOut` once one has waited
/// [`SEND_TIMEOUT`] (or `timeout`) without progress; reads are untouched.
/// Wraps the TCP or TLS stream, so it covers hyper's answers and upgraded
/// replication streams alike.
pub struct SendDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first waits; dropped when one makes progress.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> SendDeadline<T> {
    /// `inner` with writes bounded by `timeout` without progress.
    pub fn new(inner: T, timeout: Duration) -> Self {
        SendDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After the inner write answered `poll`: disarm on progress, else
    /// arm (once) and fail when the deadline passes.
    fn watch<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::task::Poll;
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer took nothing of what was sent for too long",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendDeadline<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendDeadline<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // TLS writes its close_notify here, which waits on the peer too.
        let poll = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// How long shutdown waits for open requests before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once (`--max-connections`).
    pub connections_max: usize,
    /// Time for a request head to arrive, and for an idle keep-alive
    /// connection to stay open (`--http-header-timeout`).
    pub header_timeout: Duration,
    /// Largest request head, in bytes (`--max-header-bytes`, at least
    /// [`HEADER_BYTES_MIN`]).
    pub header_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            header_timeout: HEADER_TIMEOUT_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
        }
    }
}

/// The answer to a connection past the limit, written raw: no hyper
/// connection is built for it.
fn too_many_connections() -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": "this node already serves its --max-connections; retry later",
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `app` on `listener` under `limits` until `shutdown` resolves;
/// then stop accepting and give open connections [`SHUTDOWN_GRACE`] to
/// finish. With `tls`, every connection must complete a TLS handshake
/// within the header timeout; one that speaks plain HTTP instead is
/// answered `400 tls_required` in clear text and closed.
///
/// `app` is any tower service of HTTP requests: an `axum::Router`, or a
/// node's [`crate::api::Api`].
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: HttpLimits,
    tls: Option<replidb_tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let refusal: Arc<[u8]> = too_many_connections().into();
    assert!(
        limits.header_bytes_max >= HEADER_BYTES_MIN,
        "header limit below hyper's minimum buffer"
    );
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    // HTTP/1.1 only: every client of the API speaks it, and HTTP/2 (which
    // hyper-util's automatic builder accepts from a client that opens with
    // its preface, even where TLS offers only http/1.1) is flow-controlled
    // by the client, which could stall an answer without a write ever
    // waiting on the socket, out of `SendDeadline`'s sight.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper parses a head only from its read buffer, so the buffer's
        // cap is the head's (bodies stream through it in pieces).
        .max_buf_size(limits.header_bytes_max);
    let builder = Arc::new(builder);
    // Open connections: told to finish at shutdown, and waited for.
    let closing = tokio_util::sync::CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    let service = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("replidb_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection refused: --max-connections reached");
            let refusal = refusal.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&refusal).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let service = service.clone();
        let closing = closing.clone();
        let Some(acceptor) = tls.clone() else {
            connections.spawn(async move {
                let io = TokioIo::new(SendDeadline::new(stream, SEND_TIMEOUT));
                let conn = builder.serve_connection(io, service).with_upgrades();
                if let Err(e) = until_closing(conn, &closing).await {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
                drop(permit);
            });
            continue;
        };
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            let handshake = async {
                let mut first = [0u8; 1];
                let n = stream.peek(&mut first).await?;
                if n == 0 || !replidb_tls::looks_like_tls(first[0]) {
                    let _ = stream
                        .write_all(replidb_tls::PLAIN_HTTP_TO_TLS_ANSWER)
                        .await;
                    let _ = stream.shutdown().await;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "plain HTTP on a TLS listener",
                    ));
                }
                acceptor.accept(stream).await
            };
            let tls_stream = match tokio::time::timeout(header_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    metrics::counter!("replidb_tls_handshake_failures_total").increment(1);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics::counter!("replidb_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let io = TokioIo::new(SendDeadline::new(tls_stream, SEND_TIMEOUT));
            let conn = builder.serve_connection(io, service).with_upgrades();
            if let Err(e) = until_closing(conn, &closing).await {
                tracing::debug!(%peer, error = %e, "https connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within the shutdown grace");
    }
    Ok(())
}

/// Serve `conn` to its end; once `closing` is cancelled, let it finish
/// the request in flight and close (hyper's graceful shutdown: no new
/// request is read on a keep-alive connection).
async fn until_closing<I, S, B>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    closing: &tokio_util::sync::CancellationToken,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => done,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STALL: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut conn = SendDeadline::new(near, STALL);
        let started = std::time::Instant::now();
        let err = conn.write_all(&[0u8; 8192]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= STALL, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut conn = SendDeadline::new(near, STALL);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            // Each read comes within the timeout; all of it takes longer.
            while total < 8192 {
                tokio::time::sleep(STALL / 4).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        conn.write_all(&[0u8; 8192]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 8192);
    }
}
