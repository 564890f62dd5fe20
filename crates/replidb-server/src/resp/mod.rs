//! The Redis protocol listener (`--resp-listen HOST:PORT`): RESP2, and
//! RESP3 after `HELLO 3`, so that Redis clients, `redis-cli` and
//! `redis-benchmark` work against a node.
//!
//! The protocol is only a driver of the one node core: writes take the
//! HTTP API's write path ([`crate::api::propose`]: leader check, epoch
//! fencing, group commit, the node's default write concern) and reads its
//! read path ([`crate::api::plan`] at the node's default consistency). The
//! codec (framing, limits) is the `replidb-resp` crate.
//!
//! - `conn`: one connection: read, decode every complete request (so
//!   pipelining works), execute in order, write the answers in one go.
//! - `commands`: the command table (name, arity, flags, docs) that
//!   dispatch, `COMMAND`, `COMMAND DOCS` and arity errors share.
//! - `session`: connection-level commands (`PING`, `HELLO`, `AUTH`,
//!   `CLIENT`, `SELECT`, `QUIT`, `CONFIG GET`).
//! - `keys`: the data commands and their mapping onto the write and read
//!   paths.
//! - `scan`: `SCAN` (cursors over key order), `DBSIZE`; `glob`: `MATCH`.
//! - `replication`: `INFO`, `ROLE`, `WAIT`.
//!
//! # The mapping
//! - A follower answers reads from its table and refuses writes with
//!   `-READONLY ... leader: <url>`, naming the leader's HTTP URL (nodes do
//!   not know each other's Redis ports).
//! - `INCR`/`INCRBY`/`DECR`/`DECRBY`, `SET` with `NX`/`XX`/`GET` and `DEL`
//!   are compare-and-set loops: read the key's LSN, propose the write on
//!   the condition that the LSN is unchanged, retry on a failed condition.
//!   Concurrent increments from any number of connections (or HTTP
//!   transactions) never lose an update.
//! - `MSET` is one `Op::Batch`: all keys or none.
//! - `WAIT n timeout` waits until `n` followers (the leader not counted, as
//!   Redis counts replicas) hold this connection's last write durably, and
//!   answers how many do; offsets in `INFO` and `ROLE` are LSNs.
//!
//! # Invariants
//! - Nothing a client sends can panic the node or make it allocate without
//!   bound: requests are limited by [`RESP_ARGS_MAX`], the node's
//!   `--max-value-bytes` per argument, [`frame_bytes_max`] per request and
//!   [`RESP_INLINE_BYTES_MAX`] per inline line, answers by
//!   [`RESP_REPLY_BYTES_MAX`], connections by [`RESP_CONNECTIONS_MAX`].
//!   A request past a limit gets `-ERR Protocol error: ...` and the
//!   connection is closed (as Redis does: where the next request starts is
//!   unknown).
//! - Answers go out in request order, each exactly once.
//!
//! # Left out
//! Expiry (`EX`/`PX`/`EXPIRE`: keys never expire, so those options are
//! refused), other data types, transactions (`MULTI` answers `OK`, every
//! command until `EXEC`/`DISCARD` is refused and `EXEC` answers
//! `EXECABORT`, so no client's transaction runs in part), pub/sub,
//! scripting, databases other than 0, and forwarding a follower's writes to
//! the leader.

mod commands;
mod conn;
mod error;
mod glob;
mod keys;
mod replication;
mod scan;
mod session;

pub use conn::RESP_AUTH_TIMEOUT_MS;
pub use error::{RespError, RespResult};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replidb_resp::Limits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::ServerError;

/// Most arguments in one request (command name included). `MSET` and
/// `DEL` are further limited by [`crate::api::TXN_OPS_MAX`] keys, like an
/// HTTP transaction.
pub const RESP_ARGS_MAX: usize = 4096;
/// Longest inline request (a line typed into telnet), Redis' own limit.
pub const RESP_INLINE_BYTES_MAX: usize = 64 * 1024;
/// Bytes of a request beyond its values: room for [`RESP_ARGS_MAX`] keys
/// of the longest size with their headers.
pub const RESP_FRAME_SLACK_BYTES: usize = 5 * 1024 * 1024;
/// Most connections at once; one more is answered `-ERR max number of
/// clients reached` and closed.
pub const RESP_CONNECTIONS_MAX: usize = 1024;
/// Bytes read from a socket at a time.
pub const RESP_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Answers of a pipeline are written once this many bytes have collected
/// (or when no complete request is left), so a long pipeline of large
/// values does not hold everything in memory.
pub const RESP_FLUSH_BYTES: usize = 64 * 1024;
/// Largest answer built in memory (an `MGET` of many large values);
/// larger is refused with `-ERR`.
pub const RESP_REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long shutdown waits for open connections to finish their current
/// command.
pub const RESP_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

// Every key of a request of RESP_ARGS_MAX arguments, at the longest key
// size plus its `$len\r\n...\r\n` framing, fits the slack.
const _: () = assert!(RESP_ARGS_MAX * (replidb_core::MAX_KEY_BYTES + 16) <= RESP_FRAME_SLACK_BYTES);
// The largest request (an MSET at the largest configurable value size)
// must fit one WAL record, with the record's per-key overhead.
const _: () = assert!(
    replidb_core::TXN_VALUES_MAX * replidb_core::VALUE_BYTES_MAX
        + RESP_FRAME_SLACK_BYTES
        + RESP_ARGS_MAX * replidb_wal::codec::RECORD_OVERHEAD_BYTES
        <= replidb_wal::codec::RECORD_BYTES_MAX as usize
);
const _: () = assert!(RESP_INLINE_BYTES_MAX <= RESP_FRAME_SLACK_BYTES);
// Shutdown takes every connection slot at once (`acquire_many` counts in u32).
const _: () = assert!(RESP_CONNECTIONS_MAX <= u32::MAX as usize);

/// Largest request in bytes for a node accepting values of
/// `max_value_bytes`: as many values as an HTTP transaction may carry,
/// plus the keys and framing.
pub fn frame_bytes_max(max_value_bytes: usize) -> usize {
    replidb_core::TXN_VALUES_MAX * max_value_bytes + RESP_FRAME_SLACK_BYTES
}

/// The codec limits of a node: a bulk argument may be as large as the
/// whole request may be, so that a value over `--max-value-bytes` (which
/// the commands that write values check) or a key over
/// [`replidb_core::MAX_KEY_BYTES`] is answered with a command error and
/// the connection stays open, as a client library expects of a refused
/// value; only a request past [`frame_bytes_max`] is a protocol error,
/// which closes the connection. The bound on a connection's buffer is the
/// request's either way.
pub fn limits(max_value_bytes: usize) -> Limits {
    Limits {
        args_max: RESP_ARGS_MAX,
        bulk_bytes_max: frame_bytes_max(max_value_bytes),
        inline_bytes_max: RESP_INLINE_BYTES_MAX,
        frame_bytes_max: frame_bytes_max(max_value_bytes),
        depth_max: 1,
    }
}

/// What every connection of one listener shares.
pub(crate) struct Shared {
    /// The node the commands drive.
    pub node: Arc<Node>,
    /// Codec limits from the node's configuration.
    pub limits: Limits,
    /// The address this listener bound (for `INFO`).
    pub addr: SocketAddr,
    /// When the listener started (for `INFO` uptime).
    pub started: Instant,
    /// Open connections (for `INFO clients`).
    pub clients: AtomicUsize,
    /// The next connection id (`CLIENT ID`, `HELLO`).
    pub next_client_id: AtomicU64,
    /// `SCAN` cursors in flight; a std mutex because it is held only for a
    /// map operation, never across an await.
    pub cursors: Mutex<scan::Cursors>,
}

/// A bound Redis-protocol listener, not yet serving.
pub struct RespListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl RespListener {
    /// Bind `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<RespListener, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Startup(format!("redis protocol listener: {e}")))?;
        Ok(RespListener { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `node` in the background until [`RespHandle::stop`] or the
    /// node's shutdown.
    /// With `tls` (the node's `--tls-cert`), every connection must complete
    /// a TLS handshake within the node's header timeout; a plain-text
    /// client is answered `conn::PLAIN_TO_TLS_ANSWER` and closed.
    pub fn serve(self, node: Arc<Node>, tls: Option<replidb_tls::TlsAcceptor>) -> RespHandle {
        let stop = node.shutdown.child_token();
        let slots = Arc::new(Semaphore::new(RESP_CONNECTIONS_MAX));
        let shared = Arc::new(Shared {
            limits: limits(node.config.max_value_bytes),
            addr: self.addr,
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            cursors: Mutex::new(scan::Cursors::new()),
            node,
        });
        tracing::info!(node_id = %shared.node.config.id, addr = %self.addr, "serving redis protocol");
        tokio::spawn(accept_loop(
            self.listener,
            shared,
            slots.clone(),
            stop.clone(),
            tls,
        ));
        RespHandle { stop, slots }
    }
}

/// A serving listener.
pub struct RespHandle {
    stop: CancellationToken,
    /// Connection slots: when all are back, every connection has ended.
    slots: Arc<Semaphore>,
}

impl RespHandle {
    /// Stop accepting, ask every connection to end after its current
    /// command, and wait for them (at most [`RESP_SHUTDOWN_WAIT`]), so the
    /// engine is not shut down under a command still writing.
    pub async fn stop(self) {
        self.stop.cancel();
        // Every slot back means every connection has ended.
        let all = RESP_CONNECTIONS_MAX as u32;
        let drained = tokio::time::timeout(RESP_SHUTDOWN_WAIT, self.slots.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!("redis protocol connections still busy at shutdown");
        }
    }
}

/// The TLS handshake of one connection, bounded by `timeout`; `None` (and
/// the connection closed) when it fails, times out, or the client speaks
/// plain RESP.
async fn tls_handshake(
    acceptor: replidb_tls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<replidb_tls::ServerTlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let handshake = async {
        let mut first = [0u8; 1];
        let n = stream.peek(&mut first).await?;
        if n == 0 || !replidb_tls::looks_like_tls(first[0]) {
            let _ = stream.write_all(conn::PLAIN_TO_TLS_ANSWER).await;
            let _ = stream.shutdown().await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "plain RESP on a TLS listener",
            ));
        }
        acceptor.accept(stream).await
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "redis protocol TLS handshake failed");
            metrics::counter!("replidb_tls_handshake_failures_total").increment(1);
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "redis protocol TLS handshake timed out");
            metrics::counter!("replidb_tls_handshake_failures_total").increment(1);
            None
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    tls: Option<replidb_tls::TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning on the error.
                tracing::warn!(error = %e, "redis protocol accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let shared = shared.clone();
                let stop = stop.clone();
                // Answers are batched per read already; Nagle would only
                // add latency.
                let _ = stream.set_nodelay(true);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => conn::serve(shared, stream, peer, stop).await,
                        Some(acceptor) => {
                            let timeout = shared.node.config.http_limits.header_timeout;
                            if let Some(s) = tls_handshake(acceptor, stream, peer, timeout).await {
                                conn::serve(shared, s, peer, stop).await;
                            }
                        }
                    }
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(conn::refuse(stream));
            }
        }
    }
}
