//! One client connection: read what arrives, decode every complete
//! request in it, execute them in order, and write the answers back
//! together — which is all pipelining needs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use replidb_core::Lsn;
use replidb_resp::{encode, CommandDecoder, Protocol, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{commands, Shared, RESP_FLUSH_BYTES, RESP_READ_CHUNK_BYTES};

/// What the server remembers about one connection.
#[derive(Debug)]
pub(crate) struct Session {
    /// Connection id (`CLIENT ID`, `HELLO`).
    pub id: u64,
    /// The peer's address (`CLIENT INFO`).
    pub peer: SocketAddr,
    /// RESP2 until `HELLO 3`.
    pub proto: Protocol,
    /// `CLIENT SETNAME`.
    pub name: Option<String>,
    /// LSN of this connection's last write: what `WAIT` waits for.
    pub last_write: Lsn,
    /// Set by `QUIT`: answer, then close.
    pub closing: bool,
    /// `CLIENT SETINFO LIB-NAME` and `LIB-VER` (shown by `CLIENT INFO`).
    pub lib_name: Option<String>,
    /// See `lib_name`.
    pub lib_ver: Option<String>,
    /// `MULTI` was sent and no `EXEC`/`DISCARD` followed yet: every other
    /// command is refused, so a client's transaction never runs in part.
    pub in_refused_multi: bool,
    /// The token this connection authenticated with (`AUTH`, `HELLO …
    /// AUTH`); `None` until then. Ignored when the node runs without
    /// `--auth-file`.
    pub token: Option<SessionToken>,
}

/// A connection's token: its name and roles as of the token file's
/// `generation`, and the secret's digest to check them again after a
/// reload (`None` for the `default` user of a node without tokens).
#[derive(Debug)]
pub(crate) struct SessionToken {
    pub name: String,
    pub roles: std::collections::BTreeSet<crate::auth::Role>,
    pub digest: Option<[u8; 32]>,
    pub generation: u64,
}

/// Serve one connection until the client leaves, a protocol error, or
/// `stop` (the current command finishes first).
/// The stream is plain TCP or TLS over it (`--tls-cert`).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        peer,
        proto: Protocol::Resp2,
        name: None,
        last_write: Lsn::ZERO,
        closing: false,
        lib_name: None,
        lib_ver: None,
        in_refused_multi: false,
        token: None,
    };
    if let Err(e) = run(&shared, &mut stream, &mut session, &stop).await {
        tracing::debug!(peer = %peer, error = %e, "redis protocol connection ended");
    }
    shared.clients.fetch_sub(1, Ordering::Relaxed);
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    session: &mut Session,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    // One registration for the connection's life: a fresh `cancelled()`
    // per read would add and remove a waiter on the listener's shared
    // token (a lock every connection contends on) twice per request.
    let stop = stop.child_token();
    let mut stopped = std::pin::pin!(stop.cancelled());
    let auth_deadline = shared
        .node
        .auth
        .is_some()
        .then(|| tokio::time::Instant::now() + Duration::from_millis(RESP_AUTH_TIMEOUT_MS));
    let mut decoder = CommandDecoder::new(shared.limits);
    let mut input = BytesMut::with_capacity(RESP_READ_CHUNK_BYTES);
    let mut output = BytesMut::with_capacity(RESP_READ_CHUNK_BYTES);
    loop {
        // Everything complete in the buffer, in order.
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(args)) => {
                    if looks_like_http(&args) {
                        // What Redis does too: a browser tricked into
                        // posting to this port sends an HTTP head first,
                        // and closing there stops the commands a form
                        // body could carry after it.
                        tracing::warn!("an HTTP request on the Redis port (a cross-protocol attack?); connection closed");
                        return stream.write_all(&output).await;
                    }
                    let reply = commands::execute(shared, session, &args).await;
                    encode(&reply, session.proto, &mut output);
                    if session.closing {
                        return stream.write_all(&output).await;
                    }
                    if output.len() >= RESP_FLUSH_BYTES {
                        stream.write_all(&output).await?;
                        output.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reply = Value::Error(format!("ERR Protocol error: {e}"));
                    encode(&reply, session.proto, &mut output);
                    stream.write_all(&output).await?;
                    // The client is usually still sending the request that
                    // broke a limit: closing with its bytes unread makes
                    // the kernel reset the connection, and a reset can
                    // discard the error before the client reads it.
                    return linger_close(stream).await;
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        input.reserve(RESP_READ_CHUNK_BYTES);
        // On a node with tokens, a connection that has not authenticated
        // by `auth_deadline` is closed: otherwise anyone who can reach the
        // port could hold every connection slot with idle sockets.
        let unauthenticated = auth_deadline.filter(|_| session.token.is_none());
        let read = tokio::select! {
            _ = &mut stopped => return Ok(()),
            () = sleep_until_or_never(unauthenticated) => {
                tracing::debug!("a Redis-protocol connection did not authenticate in time; closed");
                return Ok(());
            }
            r = stream.read_buf(&mut input) => r?,
        };
        if read == 0 {
            return Ok(());
        }
    }
}

/// With `--auth-file`, how long a new connection may take to
/// authenticate (`AUTH` or `HELLO … AUTH`) before it is closed.
pub const RESP_AUTH_TIMEOUT_MS: u64 = 10_000;

/// Sleep until `deadline`, or forever without one.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How long a connection closed for a protocol error keeps reading (and
/// discarding) what the client still sends, so that its error arrives
/// instead of a reset ([`linger_close`]); nginx's `lingering_close`.
pub const RESP_LINGER_MS: u64 = 2_000;
/// At most this much is read and discarded while lingering.
pub const RESP_LINGER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Send FIN, then read and discard until the client closes too, for at
/// most [`RESP_LINGER_MS`] and [`RESP_LINGER_BYTES_MAX`].
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    stream.shutdown().await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(RESP_LINGER_MS);
    let mut sink = vec![0u8; RESP_READ_CHUNK_BYTES];
    let mut discarded = 0usize;
    while discarded < RESP_LINGER_BYTES_MAX {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
    Ok(())
}

/// Answer a connection over [`super::RESP_CONNECTIONS_MAX`] the way Redis
/// does, and close it.
pub(crate) async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}

/// What a plain-text client on a TLS listener reads before the connection
/// closes: a Redis error it can show, not a hang or a garbled handshake.
pub(crate) const PLAIN_TO_TLS_ANSWER: &[u8] =
    b"-ERR this port requires TLS (redis-cli --tls --cacert FILE)\r\n";

/// Whether a request's first word is `POST` or `Host:`: an HTTP request
/// head read as Redis inline commands.
fn looks_like_http(args: &[bytes::Bytes]) -> bool {
    args.first().is_some_and(|name| {
        name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:")
    })
}
