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

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub mod direct;
mod send_deadline;

pub use send_deadline::SendDeadline;

/// Default of `--max-connections`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;

/// How long shutdown waits for open requests before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
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

/// What [`serve`] runs: a tower service of a node's (or the router's)
/// HTTP requests, whose bodies come from hyper or, for requests
/// [`direct`]'s loop answers, whole; with the [`direct::Shortcut`] it
/// takes. An `axum::Router` and a node's [`crate::api::Api`] are.
pub trait HttpApp:
    tower_service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + tower_service::Service<
        hyper::Request<Full<Bytes>>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + direct::Shortcut
    + Clone
    + Send
    + 'static
{
}

impl<S> HttpApp for S where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + tower_service::Service<
            hyper::Request<Full<Bytes>>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + direct::Shortcut
        + Clone
        + Send
        + 'static
{
}

/// Who parses a connection's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// hyper, every request.
    Hyper,
    /// [`direct`] answers single-key requests (`GET`, `PUT`, `DELETE
    /// /v1/kv/{key}`) that have arrived whole; hyper serves a connection
    /// from its first other request on.
    DirectSingleKey,
}

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
    framing: Framing,
    tls: Option<replidb_tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: HttpApp + Sync,
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
        let app = app.clone();
        let closing = closing.clone();
        let Some(acceptor) = tls.clone() else {
            connections.spawn(async move {
                let io = SendDeadline::new(stream, SEND_TIMEOUT);
                if let Err(e) = connection(io, app, framing, &builder, limits, &closing).await {
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
            let io = SendDeadline::new(tls_stream, SEND_TIMEOUT);
            if let Err(e) = connection(io, app, framing, &builder, limits, &closing).await {
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

/// Serve one connection to its end: first [`direct`]'s loop under
/// [`Framing::DirectSingleKey`], then hyper with what that loop read.
async fn connection<I, S>(
    mut io: I,
    mut app: S,
    framing: Framing,
    builder: &hyper::server::conn::http1::Builder,
    limits: HttpLimits,
    closing: &tokio_util::sync::CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: HttpApp,
{
    let read = match framing {
        Framing::Hyper => Bytes::new(),
        Framing::DirectSingleKey => {
            match direct::serve(
                &mut io,
                &mut app,
                limits.header_timeout,
                limits.header_bytes_max,
                closing,
            )
            .await?
            {
                direct::Ended::Closed => return Ok(()),
                direct::Ended::HandOff(read) => read.freeze(),
            }
        }
    };
    let io = TokioIo::new(direct::Prefixed::new(read, io));
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(app))
        .with_upgrades();
    until_closing(conn, closing).await?;
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
    // The connection first: one handed over by `direct` holds a request's
    // bytes hyper has not read yet, and a graceful shutdown before hyper
    // reads them would close it without an answer.
    tokio::select! {
        biased;
        done = conn.as_mut() => done,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
