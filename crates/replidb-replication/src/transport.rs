//! The network, behind a narrow trait.
//!
//! The protocol only needs "a bidirectional byte stream to the node at this
//! URL". [`Transport`] provides it; [`TcpTransport`] does so over tokio TCP
//! and an HTTP/1.1 upgrade on the node's one port, a simulation can provide
//! it over a simulated network. The upgrade handshake ([`client_handshake`])
//! is written against any `AsyncRead + AsyncWrite`, so it runs unchanged on
//! either.
//!
//! The upgrade: `GET /v1/replication HTTP/1.1` with `Connection: Upgrade`
//! and `Upgrade: replidb-repl/1`; the server answers
//! `101 Switching Protocols`, after which both sides speak
//! [`Frame`](crate::Frame)s.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol name in the `Upgrade` header.
pub const UPGRADE_PROTOCOL: &str = "replidb-repl/1";
/// Path of the replication endpoint.
pub const REPLICATION_PATH: &str = "/v1/replication";

/// Header (lower case) with the answering node's epoch on a `421` to the
/// upgrade; its `Location` names the leader's replication endpoint.
pub const LEADER_EPOCH_HEADER: &str = "x-replidb-epoch";

/// A `421 not_leader` answer to the upgrade that named the leader: the
/// node dialled follows `leader` (a base URL, `http://host:port`), as it
/// learned in `epoch`. Carried inside the `io::Error` (kind
/// `ConnectionRefused`) that [`Transport::connect`] returns; find it with
/// [`NotLeader::of`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replication upgrade refused: {status_line}; the leader is {leader} (epoch {epoch})")]
pub struct NotLeader {
    /// The leader's base URL.
    pub leader: String,
    /// The epoch of the node that answered.
    pub epoch: replidb_core::Epoch,
    /// The answer's status line.
    pub status_line: String,
}

impl NotLeader {
    /// The hint inside a connect error, if it is one.
    pub fn of(e: &io::Error) -> Option<&NotLeader> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<NotLeader>())
    }

    /// Read the hint from a response head (`text`, status line first);
    /// `None` unless it is a 421 with both a `Location` under
    /// [`REPLICATION_PATH`] and an epoch header.
    fn parse(text: &str) -> Option<NotLeader> {
        let mut lines = text.lines();
        let status_line = lines.next()?.trim();
        if status_line.split_whitespace().nth(1) != Some("421") {
            return None;
        }
        let (mut location, mut epoch) = (None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("location") {
                location = value.strip_suffix(REPLICATION_PATH).map(str::to_string);
            } else if name.eq_ignore_ascii_case(LEADER_EPOCH_HEADER) {
                epoch = value.parse::<u64>().ok().map(replidb_core::Epoch);
            }
        }
        let leader = location.filter(|l| host_port(l).is_ok())?;
        Some(NotLeader {
            leader,
            epoch: epoch?,
            status_line: status_line.to_string(),
        })
    }
}

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed stream.
pub type BoxIo = Box<dyn Io>;

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens replication streams to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Connect to the node at `url` (e.g. `http://127.0.0.1:7001`) and
    /// complete the upgrade handshake.
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>>;

    /// One bare connect to the listening address of `url`, with no
    /// handshake: [`Reach::Refused`] only when the other end's kernel
    /// actively refused it (nothing listens on that port). The coordinator
    /// takes two refusals as proof that a leader's process is gone.
    ///
    /// The default knows nothing ([`Reach::Unknown`]), which never proves
    /// anything: a transport that cannot tell a refusal from a lost packet
    /// must not claim one.
    fn probe<'a>(&'a self, _url: &'a str, _timeout: Duration) -> BoxFuture<'a, Reach> {
        Box::pin(async { Reach::Unknown })
    }
}

/// What a bare connect ([`Transport::probe`]) to a node's listening
/// address found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Something accepted the connection: a process listens there.
    Accepted,
    /// The connection was refused (`ECONNREFUSED`): no process listens
    /// on that port.
    Refused,
    /// Timed out, unreachable, a bad URL, or any other error: proves
    /// nothing (a partition or an overloaded host looks like this).
    Unknown,
}

impl Reach {
    /// Classify a connect's outcome: only `ConnectionRefused` is a
    /// refusal.
    pub fn of<T>(outcome: &io::Result<T>) -> Reach {
        match outcome {
            Ok(_) => Reach::Accepted,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(_) => Reach::Unknown,
        }
    }
}

/// `host:port` of an `http://host:port[/...]` or `https://…` URL.
pub fn host_port(url: &str) -> io::Result<String> {
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else {
        return Err(invalid(format!(
            "unsupported url {url:?}: expected http://host:port or https://host:port"
        )));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid(format!("url {url:?} has no host")));
    }
    Ok(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Real TCP, with TLS for `https://` URLs.
#[derive(Clone, Default)]
pub struct TcpTransport {
    /// Secret sent as `Authorization: Bearer …` in the upgrade request, when
    /// the cluster runs with tokens (a node's `--peer-token-file`).
    bearer: Option<std::sync::Arc<str>>,
    /// TLS for `https://` URLs (the CA of `--tls-ca`, and this node's
    /// certificate for mutual TLS); `None` refuses `https://` URLs.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl TcpTransport {
    /// A transport that presents `secret` to the nodes it connects to.
    pub fn with_bearer(secret: Option<String>) -> TcpTransport {
        TcpTransport {
            bearer: secret.map(std::sync::Arc::from),
            tls: None,
        }
    }

    /// This transport, reaching `https://` URLs with `config`.
    pub fn with_tls(mut self, config: Option<std::sync::Arc<rustls::ClientConfig>>) -> Self {
        self.tls = config;
        self
    }
}

impl std::fmt::Debug for TcpTransport {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Transport for TcpTransport {
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let addr = host_port(url)?;
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            // Records are small and latency matters more than packet count.
            stream.set_nodelay(true)?;
            if !url.starts_with("https://") {
                client_handshake(&mut stream, &addr, self.bearer.as_deref()).await?;
                return Ok(Box::new(stream) as BoxIo);
            }
            let config = self.tls.clone().ok_or_else(|| {
                invalid(format!(
                    "{url} is https but this node has no --tls-ca to verify it with"
                ))
            })?;
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| invalid(format!("{url}: {e}")))?;
            let mut tls = replidb_tls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS to {url}: {e}")))?;
            client_handshake(&mut tls, &addr, self.bearer.as_deref()).await?;
            Ok(Box::new(tls) as BoxIo)
        })
    }

    fn probe<'a>(&'a self, url: &'a str, timeout: Duration) -> BoxFuture<'a, Reach> {
        Box::pin(async move {
            let Ok(addr) = host_port(url) else {
                return Reach::Unknown;
            };
            // The TCP handshake alone: a refusal comes from the peer's
            // kernel before any TLS or HTTP, so neither is needed (and a
            // refused upgrade, which `connect` also reports as
            // `ConnectionRefused`, must not count here).
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(outcome) => Reach::of(&outcome),
                Err(_) => Reach::Unknown,
            }
        })
    }
}

/// Send the upgrade request (with `Authorization: Bearer {bearer}` when
/// given) and read the `101` answer. Any other answer is an error carrying
/// its status line, e.g. `HTTP/1.1 401 Unauthorized`.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    bearer: Option<&str>,
) -> io::Result<()> {
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {REPLICATION_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n{auth}\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    // Read the response head byte by byte: the server sends nothing after
    // it until we speak, so we must not read past the blank line.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade response head too long",
            ));
        }
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during upgrade",
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    if let Some(hint) = NotLeader::parse(&text) {
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, hint));
    }
    if !status_line.contains(" 101") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("replication upgrade refused: {status_line}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:7001").unwrap(),
            "127.0.0.1:7001"
        );
        assert_eq!(host_port("http://h:1/x/y").unwrap(), "h:1");
        assert_eq!(host_port("http://h").unwrap(), "h:80");
        assert_eq!(host_port("https://h:1").unwrap(), "h:1");
        assert_eq!(host_port("https://h").unwrap(), "h:443");
        assert!(host_port("ftp://h:1").is_err());
        assert!(host_port("http://").is_err());
    }

    #[test]
    fn a_421_naming_the_leader_is_a_hint() {
        let head = "HTTP/1.1 421 Misdirected Request\r\ncontent-type: application/json\r\nLocation: http://h:2/v1/replication\r\nX-Replidb-Epoch: 7\r\n\r\n";
        let hint = NotLeader::parse(head).unwrap();
        assert_eq!(hint.leader, "http://h:2");
        assert_eq!(hint.epoch, replidb_core::Epoch(7));
        let e = io::Error::new(io::ErrorKind::ConnectionRefused, hint.clone());
        assert_eq!(NotLeader::of(&e), Some(&hint));
        assert!(e.to_string().contains("the leader is http://h:2"));
        // Without an epoch, a location elsewhere, or another status: no hint.
        assert!(
            NotLeader::parse("HTTP/1.1 421 M\r\nLocation: http://h:2/v1/replication\r\n\r\n")
                .is_none()
        );
        assert!(NotLeader::parse(
            "HTTP/1.1 421 M\r\nLocation: http://h:2/x\r\nX-Replidb-Epoch: 1\r\n\r\n"
        )
        .is_none());
        assert!(NotLeader::parse(
            "HTTP/1.1 307 T\r\nLocation: http://h:2/v1/replication\r\nX-Replidb-Epoch: 1\r\n\r\n"
        )
        .is_none());
        assert!(NotLeader::parse(
            "HTTP/1.1 421 M\r\nLocation: ftp://h/v1/replication\r\nX-Replidb-Epoch: 1\r\n\r\n"
        )
        .is_none());
        assert!(NotLeader::of(&io::Error::other("x")).is_none());
    }

    #[tokio::test]
    async fn probe_tells_a_refusal_from_a_listener() {
        let t = TcpTransport::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let timeout = Duration::from_millis(500);
        assert_eq!(t.probe(&url, timeout).await, Reach::Accepted);
        drop(listener);
        assert_eq!(t.probe(&url, timeout).await, Reach::Refused);
        assert_eq!(t.probe("ftp://x:1", timeout).await, Reach::Unknown);
    }

    #[test]
    fn only_connection_refused_is_a_refusal() {
        let err = |k| Err::<(), _>(io::Error::new(k, "x"));
        assert_eq!(Reach::of(&Ok(())), Reach::Accepted);
        assert_eq!(
            Reach::of(&err(io::ErrorKind::ConnectionRefused)),
            Reach::Refused
        );
        for k in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::ConnectionReset,
        ] {
            assert_eq!(Reach::of(&err(k)), Reach::Unknown, "{k:?}");
        }
    }

    #[tokio::test]
    async fn handshake_accepts_101_and_refuses_others() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let n = b.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(head.contains("Upgrade: replidb-repl/1"));
            assert!(head.contains("Authorization: Bearer s3cret\r\n"));
            b.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: replidb-repl/1\r\n\r\nX")
                .await
                .unwrap();
            b
        });
        client_handshake(&mut a, "h:1", Some("s3cret"))
            .await
            .unwrap();
        // The byte after the head is left for the protocol.
        let mut x = [0u8; 1];
        a.read_exact(&mut x).await.unwrap();
        assert_eq!(&x, b"X");
        server.await.unwrap();

        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let _ = b.read(&mut buf).await;
            let _ = b.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        });
        let err = client_handshake(&mut a, "h:1", None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
