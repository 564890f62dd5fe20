//! Single-key requests answered on the connection itself, without hyper.
//!
//! Why: `GET`, `PUT` and `DELETE /v1/kv/{key}` are nearly every request a
//! busy node serves, and under callgrind hyper's HTTP/1 connection (its
//! dispatcher, buffered IO, parser and encoder) cost more instructions per
//! eventual read than the read itself (ARCHITECTURE.md, "Where the time
//! goes"). Here a connection starts in a loop of its own that parses a
//! request head with `httparse` (the parser hyper uses), builds the same
//! `http::Request`, calls the same service, and writes the answer as
//! hyper would.
//!
//! What is answered here, and nothing else: an HTTP/1.1 `GET`, `PUT` or
//! `DELETE` of a path `/v1/kv/{key}` with a non-empty key, whose head (at
//! most [`HEADERS_MAX`] headers) and whole body are already read, with no
//! `Transfer-Encoding`, `Expect` or `Upgrade` header, at most one
//! `Content-Length` of plain digits, and a `Connection` header naming only
//! `keep-alive` or `close`. From the first request that is anything else
//! (another path, HTTP/1.0, a body still on its way, a head hyper must
//! judge because it is malformed, too large or has too many headers) the
//! connection, with the bytes already read, is handed to hyper for the
//! rest of its life ([`Ended::HandOff`], [`Prefixed`]). So every rule
//! hyper enforces still holds, this loop only answers requests hyper would
//! have accepted, and it writes what hyper would have written (a test
//! compares both on the wire).
//!
//! Limits, as hyper's: a head must arrive within the header timeout, which
//! is also how long an idle connection waits for its next request; the
//! buffer never holds more than the header limit plus one read
//! ([`READ_BYTES`]) before the connection is handed off; a request whose
//! body is not already here goes to hyper, which streams it under the
//! endpoint's own limit and timeout.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use futures::future::{BoxFuture, Either};
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower_service::Service;

/// Most headers a request served here may have; a request with more goes
/// to hyper (whose limit is 100).
pub const HEADERS_MAX: usize = 32;
/// Most headers hyper takes in a request (its default); more are
/// answered 431.
pub const HYPER_HEADERS_MAX: usize = 100;
/// Free room kept in the read buffer before each read, in bytes.
pub const READ_BYTES: usize = 16 * 1024;
/// An answer is written out whenever this many bytes of it are buffered.
pub const WRITE_CHUNK_BYTES: usize = 64 * 1024;
/// Longest target `http::Uri` takes, in bytes (hyper answers 414 past it).
const URI_BYTES_MAX: usize = u16::MAX as usize - 1;
/// The path prefix of a single-key request.
const KV_PREFIX: &str = "/v1/kv/";

/// How the loop ended.
pub enum Ended {
    /// The peer closed, asked to close, was idle past the header timeout,
    /// or the server is shutting down.
    Closed,
    /// Hand the connection to hyper, replaying these bytes first.
    HandOff(BytesMut),
}

/// A request parsed from the buffer.
// One per request, matched at once: boxing the request would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Not all of the head has arrived.
    Partial,
    /// Not one this loop answers: hyper takes the connection.
    HandOff,
    /// A head over the header limit (or with more headers than hyper
    /// takes): answered 431 as hyper answers it, and the connection closed.
    TooLarge,
    /// Answer it here; `close` if the client asked to close afterwards.
    Direct {
        request: Request<Full<Bytes>>,
        close: bool,
    },
    /// Answered by the [`Shortcut`]: the head is in the output buffer,
    /// through `content-length`; this is the body.
    Answered { body: Bytes, close: bool },
    /// Being written by the [`Shortcut`]: its answer comes from `answer`.
    Writing {
        answer: BoxFuture<'static, Written>,
        close: bool,
    },
}

/// Serve `io`'s requests with `service` until the connection ends or one
/// must be handed to hyper. `header_timeout` and `header_bytes_max` are
/// the listener's limits; once `closing` is cancelled the request in
/// flight is answered with `connection: close` and the connection ends,
/// as hyper's graceful shutdown does.
///
/// Errors: the connection's own (a read or write that failed or timed
/// out, an answer body that failed); the caller only logs them.
pub async fn serve<T, S>(
    io: &mut T,
    service: &mut S,
    header_timeout: Duration,
    header_bytes_max: usize,
    closing: &tokio_util::sync::CancellationToken,
) -> std::io::Result<Ended>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Full<Bytes>>, Response = Response, Error = Infallible> + Shortcut,
{
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let cancelled = closing.cancelled();
    tokio::pin!(cancelled);
    // One timer per connection, pushed forward lazily: a request only moves
    // `deadline`, and the timer is re-armed when it fires early. Arming a
    // timer per request showed in profiles.
    let mut deadline = tokio::time::Instant::now() + header_timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        let (pending, close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, header_bytes_max, service, &mut out) {
                    Parsed::Direct { request, close } => break (Pending::Call(request), close),
                    Parsed::Writing { answer, close } => break (Pending::Write(answer), close),
                    Parsed::Answered { body, close } => {
                        let close = close || closing.is_cancelled();
                        if send_answered(io, &mut out, body, close).await? {
                            return Ok(Ended::Closed);
                        }
                        deadline = tokio::time::Instant::now() + header_timeout;
                        continue;
                    }
                    Parsed::HandOff => return Ok(Ended::HandOff(buf)),
                    Parsed::TooLarge => return too_large(io).await,
                    Parsed::Partial if buf.len() >= header_bytes_max => return too_large(io).await,
                    Parsed::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < READ_BYTES {
                buf.reserve(READ_BYTES);
            }
            let read = tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => read?,
                // No request is read whole yet: nothing to answer.
                () = &mut cancelled => return Ok(Ended::Closed),
                () = &mut timer => {
                    if tokio::time::Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    return Ok(Ended::Closed);
                }
            };
            if read == 0 {
                return Ok(Ended::Closed);
            }
        };
        let call = match pending {
            Pending::Call(request) => {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .unwrap_or_else(|never| match never {});
                Either::Left(service.call(request).map(|answered| match answered {
                    Ok(response) => Written::Response(response),
                    Err(never) => match never {},
                }))
            }
            Pending::Write(answer) => Either::Right(answer),
        };
        tokio::pin!(call);
        // As hyper: a client that goes away while its request is being
        // served drops the handler (a write waiting for its concern, a read
        // waiting for a token) instead of holding it, and its connection
        // slot, to the end. What arrives meanwhile is the next request's.
        let answer = loop {
            if buf.capacity() - buf.len() < READ_BYTES && buf.len() < header_bytes_max {
                buf.reserve(READ_BYTES);
            }
            tokio::select! {
                biased;
                answered = &mut call => break answered,
                read = io.read_buf(&mut buf), if buf.len() < header_bytes_max => match read {
                    Ok(0) | Err(_) => return Ok(Ended::Closed),
                    Ok(_) => {}
                },
            }
        };
        let close = close || closing.is_cancelled();
        let closed = match answer {
            Written::Response(response) => {
                let close = write_response(io, &mut out, response, close).await?;
                if close {
                    io.shutdown().await?;
                } else {
                    trim(&mut out);
                }
                close
            }
            Written::Head { head, body } => {
                out = head;
                send_answered(io, &mut out, body, close).await?
            }
        };
        if closed {
            return Ok(Ended::Closed);
        }
        deadline = tokio::time::Instant::now() + header_timeout;
    }
}

/// A request being served: by the service, or by the [`Shortcut`].
// One per request, matched at once (as `Parsed`).
#[allow(clippy::large_enum_variant)]
enum Pending {
    Call(Request<Full<Bytes>>),
    Write(BoxFuture<'static, Written>),
}

/// Send a [`Shortcut`]'s answer: its head is in `out` through
/// `content-length`; end it as hyper would and send it with `body`.
/// Whether the connection is now closed (`close`).
async fn send_answered<T>(
    io: &mut T,
    out: &mut Vec<u8>,
    body: Bytes,
    close: bool,
) -> std::io::Result<bool>
where
    T: AsyncWrite + Unpin,
{
    finish_head(out, close);
    if out.len() + body.len() > WRITE_CHUNK_BYTES {
        io.write_all(out).await?;
        io.write_all(&body).await?;
    } else {
        out.extend_from_slice(&body);
        io.write_all(out).await?;
    }
    io.flush().await?;
    if close {
        io.shutdown().await?;
        return Ok(true);
    }
    trim(out);
    Ok(false)
}

/// Answer a head over the limit as hyper does (431, no body, then close),
/// and end the connection: read what the client still sends for a moment
/// (at most [`LINGER_BYTES_MAX`]) so that closing with unread input does
/// not reset the connection before the answer is read.
async fn too_large<T>(io: &mut T) -> std::io::Result<Ended>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n",
    );
    finish_head(&mut out, false);
    io.write_all(&out).await?;
    io.flush().await?;
    io.shutdown().await?;
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    while drained < LINGER_BYTES_MAX {
        tokio::select! {
            read = io.read(&mut sink) => match read {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            },
            () = &mut linger => break,
        }
    }
    Ok(Ended::Closed)
}

/// How long a refused connection is read from before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read from a refused connection before it is closed.
pub const LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Give back an output buffer a large answer grew: idle connections hold
/// it (thousands of them may).
fn trim(out: &mut Vec<u8>) {
    const KEPT_BYTES: usize = 4 * 1024;
    if out.capacity() > KEPT_BYTES {
        *out = Vec::with_capacity(1024);
    }
}

/// Answers a service can give from a request head alone, before an
/// `http::Request` or a `Response` is built for it: the most frequent
/// requests of all, a read of a value in a node's table and a plain write
/// on the leader, cost less than building those (under callgrind, the
/// types and the edge around a durable `PUT` were ~11 k of its ~35 k
/// instructions).
pub trait Shortcut {
    /// For a `GET` of `target` (origin form, as sent, made only of
    /// characters a URI may hold) with `headers` and no body: write the
    /// answer's status line and headers, through `content-length` but
    /// without `connection` and `date`, into `out` (empty) and return its
    /// body, which must not be empty; or return `None`, with `out` left
    /// empty, to have the request served the general way. An answer given
    /// here must be the one the general way would give, byte for byte.
    fn get(
        &mut self,
        target: &str,
        headers: &[httparse::Header<'_>],
        out: &mut Vec<u8>,
    ) -> Option<Bytes> {
        let _ = (target, headers, out);
        None
    }

    /// For a `PUT` or `DELETE` of `target` (as for [`Shortcut::get`])
    /// with `headers` and the whole `body`: a future that gives the answer,
    /// or `None` to have the request served the general way (the decision
    /// is taken here, before anything is written). The future's answer
    /// must be the one the general way would give, byte for byte. `out` is
    /// the connection's empty output buffer, which the future may take and
    /// give back as [`Written::Head`].
    fn write(
        &mut self,
        method: &Method,
        target: &str,
        headers: &[httparse::Header<'_>],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<BoxFuture<'static, Written>> {
        let _ = (method, target, headers, body, out);
        None
    }
}

/// The answer of a [`Shortcut::write`].
pub enum Written {
    /// The status line and headers through `content-length` (without
    /// `connection` and `date`, as [`Shortcut::get`] writes them), and
    /// the body.
    Head { head: Vec<u8>, body: Bytes },
    /// An answer to be written as hyper would write it.
    Response(Response),
}

/// The router of `replidb router` takes no shortcut.
impl Shortcut for axum::Router {}

/// Parse the request at the front of `buf`; for [`Parsed::Direct`] and
/// [`Parsed::Answered`], take its bytes out of `buf`. `shortcut` may answer
/// a `GET` into `out`, or take a `PUT` or `DELETE` ([`Parsed::Writing`]).
fn parse(
    buf: &mut BytesMut,
    header_bytes_max: usize,
    shortcut: &mut impl Shortcut,
    out: &mut Vec<u8>,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // More headers than this loop takes: hyper takes up to 100 and
        // answers 431 past them; its header timeout would start again at
        // a hand-off, so a head within its limit is handed over whole.
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = [httparse::EMPTY_HEADER; HYPER_HEADERS_MAX];
            return match httparse::Request::new(&mut many).parse(buf) {
                Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
                Ok(httparse::Status::Partial) => Parsed::Partial,
                // The size limit holds for these heads too: hyper would
                // pass one that arrived whole.
                Ok(httparse::Status::Complete(n)) if n > header_bytes_max => Parsed::TooLarge,
                _ => Parsed::HandOff,
            };
        }
        Err(_) => return Parsed::HandOff,
    };
    // hyper's limit, checked exactly: hyper itself checks its buffer only
    // while a head is incomplete, so a head that arrives in one read may
    // pass it by up to a read's size.
    if head_len > header_bytes_max {
        return Parsed::TooLarge;
    }
    if head.version != Some(1) {
        return Parsed::HandOff;
    }
    let method = match head.method {
        Some("GET") => Method::GET,
        Some("PUT") => Method::PUT,
        Some("DELETE") => Method::DELETE,
        _ => return Parsed::HandOff,
    };
    let Some(target) = head.path else {
        return Parsed::HandOff;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path.strip_prefix(KV_PREFIX).is_none_or(str::is_empty) {
        return Parsed::HandOff;
    }
    let mut content_length = None;
    let mut close = false;
    for header in head.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (content_length, digits(header.value)) {
                (None, Some(n)) => content_length = Some(n),
                _ => return Parsed::HandOff,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::HandOff;
        } else if name.eq_ignore_ascii_case("connection") {
            // hyper reads the tokens of a visible-ASCII value only.
            if !header
                .value
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
            {
                return Parsed::HandOff;
            }
            let Ok(value) = std::str::from_utf8(header.value) else {
                return Parsed::HandOff;
            };
            for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case("keep-alive")) {
                    return Parsed::HandOff;
                }
            }
        }
        // A name `HeaderName::from_bytes` refuses as too long; hyper
        // answers 431.
        if name.len() >= 1 << 16 {
            return Parsed::HandOff;
        }
        // What `HeaderValue::from_bytes` refuses; hyper answers 400.
        if !header
            .value
            .iter()
            .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
        {
            return Parsed::HandOff;
        }
    }
    let body_len = content_length.unwrap_or(0);
    if buf.len() - head_len < body_len {
        // The body is still on its way: hyper reads it under the
        // endpoint's limit and timeout.
        return Parsed::HandOff;
    }
    // Only what `http::Uri` would take reaches a shortcut: characters it
    // takes as they are, and a length under its limit (hyper answers 414
    // past it).
    let shortcut_target = target.len() <= URI_BYTES_MAX && target.bytes().all(uri_char);
    if method == Method::GET && body_len == 0 && shortcut_target {
        out.clear();
        if let Some(body) = shortcut.get(target, head.headers, out) {
            debug_assert!(
                !body.is_empty(),
                "an empty body is answered the general way"
            );
            buf.advance(head_len);
            return Parsed::Answered { body, close };
        }
        debug_assert!(out.is_empty(), "a declined shortcut wrote nothing");
    } else if method != Method::GET && shortcut_target {
        out.clear();
        let body = &buf[head_len..head_len + body_len];
        if let Some(answer) = shortcut.write(&method, target, head.headers, body, out) {
            buf.advance(head_len + body_len);
            return Parsed::Writing { answer, close };
        }
    }
    let Ok(uri) = Uri::try_from(target) else {
        return Parsed::HandOff;
    };
    let mut map = HeaderMap::with_capacity(head.headers.len());
    for header in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Parsed::HandOff;
        };
        map.append(name, value);
    }
    buf.advance(head_len);
    let body = buf.split_to(body_len).freeze();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Parsed::Direct { request, close }
}

/// A character of an origin-form target that `http::Uri` takes as it is
/// (RFC 3986's unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`): a
/// target made only of these reaches a [`Shortcut`] without being parsed
/// into a `Uri`.
fn uri_char(b: u8) -> bool {
    // A table: a scan of the list per byte cost ~1,200 instructions per
    // request under callgrind.
    const TABLE: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let others = b"-._~!$&'()*+,;=:@/?%";
        let mut i = 0;
        while i < others.len() {
            table[others[i] as usize] = true;
            i += 1;
        }
        table
    };
    TABLE[usize::from(b)]
}

/// A `Content-Length` value: ASCII digits only (as hyper's parser
/// requires), at most `usize`.
fn digits(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Write `response` as hyper's HTTP/1.1 server encodes it: the status
/// line, the headers in the map's order (a `connection` header's values
/// on one line, with `close` added when `close` asks for it, or a
/// `connection: close` line after the others), a `content-length` from
/// the body's exact size where the map has none (chunked when the size is
/// not known), `date` where the map has none, and the body. Whether the
/// connection must close after it: `close`, or a handler's
/// `connection: close` (a 413 or a 408 sets it).
async fn write_response<T>(
    io: &mut T,
    out: &mut Vec<u8>,
    response: Response,
    close: bool,
) -> std::io::Result<bool>
where
    T: AsyncWrite + Unpin,
{
    use hyper::body::Body as _;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    // Our single-key handlers answer neither; hyper would drop the body.
    debug_assert!(
        !(status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED),
        "status {status} is not answered directly"
    );
    out.clear();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // hyper takes a body that has ended for none: its `content-length`
    // header is skipped and written as `0` after the others.
    let empty = body.is_end_stream();
    let exact = body.size_hint().exact();
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut wrote_connection = false;
    let handler_closes = parts.headers.get_all(CONNECTION).iter().any(names_close);
    for (name, value) in &parts.headers {
        debug_assert!(
            name != TRANSFER_ENCODING && name != TRAILER,
            "{name} is not written by a single-key handler"
        );
        if name == CONNECTION {
            // hyper writes every value on one line, and adds `close` to
            // them when the connection is to close and none says so.
            if !wrote_connection {
                wrote_connection = true;
                out.extend_from_slice(b"connection: ");
                for (i, value) in parts.headers.get_all(CONNECTION).iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(value.as_bytes());
                }
                if close && !handler_closes {
                    out.extend_from_slice(b", close");
                }
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if name == CONTENT_LENGTH {
            if empty {
                continue;
            }
            wrote_len = true;
        } else if name == DATE {
            wrote_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let mut chunked = false;
    if !wrote_len {
        match (empty, exact) {
            (true, _) => out.extend_from_slice(b"content-length: 0\r\n"),
            (false, Some(len)) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            (false, None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    while let Some(frame) = if empty { None } else { body.frame().await } {
        let frame = frame.map_err(std::io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            // Trailers: none from these handlers, and hyper sends them
            // only when the answer names them.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            // Upper-case hex, as hyper writes chunk sizes.
            out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() > WRITE_CHUNK_BYTES {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await?;
    io.flush().await?;
    Ok(close || handler_closes)
}

/// Whether a `Connection` value names `close` (hyper's reading: visible
/// ASCII, comma-separated tokens, any case).
fn names_close(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
    })
}

/// End a [`Shortcut`]'s head as hyper would: `connection: close` when the
/// connection ends with this answer, `date`, the blank line.
fn finish_head(out: &mut Vec<u8>, close: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Append the current time as an HTTP date (RFC 9110 IMF-fixdate), cached
/// per second per thread as hyper does. Wall-clock time: it is what the
/// header means, and nothing measures an interval with it.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

/// A connection whose first reads replay bytes already read from it: how
/// hyper is handed a connection this loop has started.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, read from after `prefix`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio_util::sync::CancellationToken;

    /// Answers every request with its target.
    struct Echo;

    impl Service<Request<Full<Bytes>>> for Echo {
        type Response = Response;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
            std::future::ready(Ok(Response::new(axum::body::Body::from(
                req.uri().to_string(),
            ))))
        }
    }

    impl Shortcut for Echo {}

    const GET: &[u8] = b"GET /v1/kv/k HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn uri_chars_are_the_listed_ones() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
            assert_eq!(uri_char(b), listed, "{b}");
        }
    }

    #[test]
    fn a_content_length_is_plain_digits() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(digits(b"1024"), Some(1024));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"0x1",
            b"1,1",
            b"99999999999999999999999",
        ] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_is_closed_a_header_timeout_after_its_last_answer() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let timeout = Duration::from_millis(300);
        let server = tokio::spawn(async move {
            let closing = CancellationToken::new();
            let ended = serve(&mut near, &mut Echo, timeout, 8192, &closing).await;
            (matches!(ended, Ok(Ended::Closed)), Instant::now())
        });
        let mut answer = [0u8; 4096];
        let mut last_answer = Instant::now();
        // Requests closer together than the timeout, over longer than it:
        // each answer pushes the deadline on.
        for _ in 0..4 {
            tokio::time::sleep(timeout / 2).await;
            far.write_all(GET).await.unwrap();
            let n = far.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
            last_answer = Instant::now();
        }
        let (closed, at) = server.await.unwrap();
        assert!(closed);
        let idle = at - last_answer;
        assert!(idle >= timeout, "closed {idle:?} after the last answer");
        assert!(idle < timeout * 3, "closed {idle:?} after the last answer");
        assert_eq!(far.read(&mut answer).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn another_kind_of_request_hands_over_every_byte_read() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let sent: &[u8] = b"POST /v1/kv/k HTTP/1.1\r\nContent-Length: 1\r\n\r\nvGET /";
        far.write_all(GET).await.unwrap();
        far.write_all(sent).await.unwrap();
        let closing = CancellationToken::new();
        let ended = serve(&mut near, &mut Echo, Duration::from_secs(5), 8192, &closing)
            .await
            .unwrap();
        let Ended::HandOff(read) = ended else {
            panic!("not handed off")
        };
        assert_eq!(&read[..], sent);
        let mut answer = vec![0u8; 4096];
        let n = far.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].ends_with(b"\r\n\r\n/v1/kv/k"),
            "{:?}",
            &answer[..n]
        );
        // hyper reads the same bytes first, then the connection.
        let mut prefixed = Prefixed::new(read.freeze(), near);
        far.write_all(b"more").await.unwrap();
        let mut replayed = vec![0u8; sent.len() + 4];
        prefixed.read_exact(&mut replayed).await.unwrap();
        assert_eq!(&replayed[..sent.len()], sent);
        assert_eq!(&replayed[sent.len()..], b"more");
    }

    #[tokio::test]
    async fn shutdown_ends_an_idle_connection_and_closes_after_the_request_in_flight() {
        let (mut near, _far) = tokio::io::duplex(64 * 1024);
        let closing = CancellationToken::new();
        closing.cancel();
        let mut echo = Echo;
        let ended = serve(
            &mut near,
            &mut echo,
            Duration::from_secs(60),
            8192,
            &closing,
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(matches!(ended, Ok(Ok(Ended::Closed))));

        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(GET).await.unwrap();
        let ended = serve(
            &mut near,
            &mut echo,
            Duration::from_secs(60),
            8192,
            &closing,
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(matches!(ended, Ok(Ok(Ended::Closed))));
        let mut answer = Vec::new();
        far.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    }

    /// Serve `near` with `service` on a task of its own (a header timeout
    /// of 60 s, an 8 KiB head limit) until `closing` is cancelled.
    fn spawn_serve<S>(
        mut near: tokio::io::DuplexStream,
        mut service: S,
        closing: CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<Ended>>
    where
        S: Service<Request<Full<Bytes>>, Response = Response, Error = Infallible>
            + Shortcut
            + Send
            + 'static,
        S::Future: Send,
    {
        tokio::spawn(async move {
            serve(
                &mut near,
                &mut service,
                Duration::from_secs(60),
                8192,
                &closing,
            )
            .await
        })
    }

    /// Never answers.
    struct Stuck;

    impl Service<Request<Full<Bytes>>> for Stuck {
        type Response = Response;
        type Error = Infallible;
        type Future = std::future::Pending<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            std::future::pending()
        }
    }

    impl Shortcut for Stuck {}

    #[tokio::test]
    async fn a_client_that_goes_away_drops_its_request() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(GET).await.unwrap();
        let server = spawn_serve(near, Stuck, CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "the request is being served");
        drop(far);
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(Ended::Closed)))));
    }

    #[tokio::test]
    async fn a_head_with_more_headers_than_the_loop_takes_is_handed_over_whole() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut head = b"GET /v1/kv/k HTTP/1.1\r\n".to_vec();
        for i in 0..HEADERS_MAX + 8 {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        let server = spawn_serve(near, Echo, CancellationToken::new());
        far.write_all(&head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Not handed over before the head is whole: hyper's header
        // timeout would start again from the hand-off.
        assert!(!server.is_finished());
        far.write_all(b"\r\n").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
        let Ok(Ok(Ok(Ended::HandOff(read)))) = ended else {
            panic!("not handed off")
        };
        head.extend_from_slice(b"\r\n");
        assert_eq!(&read[..], &head[..]);
    }

    #[tokio::test]
    async fn shutdown_closes_a_connection_between_requests_even_with_a_head_begun() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let server = spawn_serve(near, Echo, stop.clone());
        far.write_all(GET).await.unwrap();
        let mut answer = [0u8; 4096];
        let n = far.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
        far.write_all(b"GET /v1/kv/k HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(Ended::Closed)))));
    }

    #[test]
    fn connection_values_are_read_as_hyper_reads_them() {
        assert!(names_close(&HeaderValue::from_static("close")));
        assert!(names_close(&HeaderValue::from_static("keep-alive, Close")));
        assert!(!names_close(&HeaderValue::from_static("keep-alive")));
        assert!(!names_close(&HeaderValue::from_static("closed")));
    }

    #[tokio::test]
    async fn shutdown_closes_a_connection_whose_first_head_is_begun() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let server = spawn_serve(near, Echo, stop.clone());
        far.write_all(b"GET /v1/kv/k HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(Ended::Closed)))));
    }

    /// The answer to `sent` on a fresh connection with an 8 KiB head limit.
    async fn answer_to(sent: Vec<u8>) -> String {
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        let server = spawn_serve(near, Echo, CancellationToken::new());
        far.write_all(&sent).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(server.await, Ok(Ok(Ended::Closed))));
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn heads_past_hypers_limits_are_refused_431_at_once() {
        // Complete, over the size limit, in one read.
        let mut big = b"GET /v1/kv/k HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        big.extend_from_slice(b"\r\n\r\n");
        // More headers than hyper takes, the head not finished.
        let mut many = b"GET /v1/kv/k HTTP/1.1\r\n".to_vec();
        for i in 0..HYPER_HEADERS_MAX + 1 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        // More headers than this loop takes (but fewer than hyper's
        // limit), complete, over the size limit: not handed to hyper,
        // which would pass a head that arrived whole.
        let mut wide = b"GET /v1/kv/k HTTP/1.1\r\n".to_vec();
        for i in 0..HEADERS_MAX + 8 {
            wide.extend_from_slice(format!("X-H{i}: {}\r\n", "w".repeat(300)).as_bytes());
        }
        wide.extend_from_slice(b"\r\n");
        for sent in [big, many, wide] {
            let answer = answer_to(sent).await;
            assert!(
                answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: "),
                "{answer}"
            );
            assert!(answer.ends_with("\r\n\r\n"), "{answer}");
        }
    }
}
