//! The proxy path: classify the request, decide its target with the
//! routing core, send it, retry once or follow a 307 when that is safe,
//! and relay the node's answer with the router's cookies added.
//!
//! Retry rules (the only places the router sends a request twice):
//! - a **connection failure** means the request never reached the node,
//!   so even a write may go again: the node is marked failed, a health
//!   round runs if it was the leader, and the request goes once more to
//!   the (possibly new) leader;
//! - any other failure of a **read** (reset, broken answer) is retried
//!   once on the leader; a write is not (it may have been applied);
//! - a **307** from a node that is no longer the leader is followed once to
//!   its `Location`, and a health round is started in the background.
//!
//! Multi-leader (see `core`): a write goes to its session's home node
//! (`X-Replidb-Home`, else the one remembered for the session, else
//! `--home`, else the least-loaded node); the node that answered becomes
//! the session's home and its `X-Replidb-Min-Version` is merged into the
//! session's token (kept per session and in the `replidb_min_version`
//! cookie). A read carries that token as `X-Replidb-Min-Version`, so the
//! node serving it waits until it has applied the session's writes. A
//! connection failure retries on another node, except for a write pinned
//! by `X-Replidb-Home`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::core::{Reason, RequestKind, Target};
use crate::error::RouterError;
use crate::request::{self, Cookies, Endpoint, ReadQuery, MIN_LSN_HEADER, MIN_VERSION_HEADER};
use crate::shared::{Counters, Shared};

/// Slack added to a request's own server-side wait (`wait_ms`,
/// `timeout_ms`) so the node's answer arrives before the router gives up.
const WAIT_SLACK: Duration = Duration::from_secs(2);
/// How long a forwarded `/admin/switchover` may take: the node's longest
/// catch-up wait (`timeout_ms` at most 60 s), its 5 s hand-over wait, and
/// slack.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(70);
/// Body limit of reads (they carry none; a small one is tolerated).
const READ_BODY_LIMIT: usize = 4096;

/// Header naming the node that answered through the router.
pub const ROUTED_TO_HEADER: &str = "x-replidb-routed-to";

/// The request as it will be sent (and possibly re-sent).
struct Outgoing {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
}

/// A node's answer and who gave it.
struct Routed {
    resp: reqwest::Response,
    /// Node id (or URL) the answer came from.
    node: String,
    /// Its index in the router's list, when it is in it.
    index: Option<usize>,
    reason: Reason,
    /// Whether the request was retried on the leader after a follower
    /// failed.
    retried_on_leader: bool,
}

enum SendError {
    /// Never reached the node: safe to retry anything.
    Connect(String),
    Timeout,
    /// Reached it, but the exchange broke: safe to retry reads only.
    Other(String),
}

/// The error after a retry on node `node` failed with `e`, the first try
/// (on `first`) having failed with `first_why`.
fn unreachable(
    node: String,
    e: String,
    outcome_unknown: bool,
    first: &str,
    first_why: &str,
) -> RouterError {
    RouterError::Unreachable {
        reason: if node == first {
            format!("{e} (tried twice)")
        } else {
            format!("{e} (after {first}: {first_why})")
        },
        node,
        outcome_unknown,
    }
}

/// GET and HEAD change nothing on a node: retried or answered 503 freely.
fn is_read_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// The fallback handler: every routable API request comes here.
pub(crate) async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    match route(&sh, req).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, RouterError::NoLeader { .. }) {
                Counters::bump(&sh.counters.no_leader);
            }
            let (_, code) = e.status_and_code();
            metrics::counter!("replidb_router_errors_total", "code" => code).increment(1);
            e.into_response()
        }
    }
}

async fn route(sh: &Shared, req: Request) -> Result<Response, RouterError> {
    let (parts, body) = req.into_parts();
    let endpoint = request::classify(&parts.method, parts.uri.path())?;
    let limit = match endpoint.body_limit(sh.config.max_value_bytes) {
        0 => READ_BODY_LIMIT,
        n => n,
    };
    let body = read_body(body, limit).await.map_err(|e| match e {
        RouterError::BodyTooLarge { limit, .. } => RouterError::BodyTooLarge {
            limit,
            is_value: endpoint == Endpoint::KvWrite && parts.method == Method::PUT,
        },
        e => e,
    })?;
    let cookies = Cookies::parse(&parts.headers);
    let session = request::session_of(&parts.headers, &cookies);
    let query = ReadQuery::parse(parts.uri.query());

    let mut out = Outgoing {
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        headers: forwardable(&parts.headers),
        body,
        timeout: sh.config.request_timeout.max(
            Duration::from_millis(query.server_wait_ms.unwrap_or(0)).saturating_add(WAIT_SLACK),
        ),
    };
    if endpoint == Endpoint::Switchover {
        // The leader waits up to the body's timeout_ms for the target to
        // catch up, then hands over: allow the longest it may take.
        out.timeout = out.timeout.max(SWITCHOVER_TIMEOUT);
        let routed = dispatch(sh, &RequestKind::Write { home: None }, &out, None).await?;
        count(sh, endpoint, &routed);
        return Ok(relay_plain(routed));
    }
    // Sessions' homes and min_version tokens are multi-leader's; a
    // leaderless request is routed to any node and passed through as is.
    let (multi, leaderless) = {
        let st = sh.state();
        (st.multi_leader() && !st.leaderless(), st.leaderless())
    };
    let mut pinned = None;
    let kind = if endpoint.is_write() {
        let home = if multi {
            let (home, pin) = home_of(sh, &parts.headers, session.as_deref())?;
            pinned = pin;
            home
        } else {
            None
        };
        RequestKind::Write { home }
    } else {
        if leaderless {
            // Nothing to add: W + R > N is what makes a read fresh.
        } else if endpoint.is_token_read() && multi {
            apply_min_version_token(sh, &mut out, &cookies, session.as_deref());
        } else if endpoint.is_token_read() {
            apply_cookie_token(
                sh,
                &mut out,
                parts.uri.path(),
                parts.uri.query(),
                &query,
                &cookies,
            );
        }
        let wrote_at = session
            .as_deref()
            .and_then(|s| sh.sessions().wrote_at(s, Instant::now()));
        RequestKind::Read {
            leader_only: query.leader_only || endpoint == Endpoint::SeedRead,
            session_wrote_at: wrote_at,
        }
    };
    let routed = dispatch(sh, &kind, &out, pinned).await?;
    count(sh, endpoint, &routed);
    if leaderless {
        // No cookies: a node's LSN means nothing on the others.
        return Ok(relay_plain(routed));
    }
    Ok(relay(sh, endpoint, routed, &cookies, session, multi))
}

/// Multi-leader: where a write goes, as `(home, pinned)`. `X-Replidb-Home`
/// pins it (no other node will do; an unknown name is a 400); else the
/// session's remembered home, else `--home`, is preferred while healthy.
fn home_of(
    sh: &Shared,
    headers: &HeaderMap,
    session: Option<&str>,
) -> Result<(Option<usize>, Option<usize>), RouterError> {
    if let Some(name) = request::home_header(headers) {
        let index = sh.state().index_of_name(&name);
        return match index {
            Some(i) => Ok((Some(i), Some(i))),
            None => Err(RouterError::UnknownHome {
                name,
                nodes: sh.config.nodes.join(","),
            }),
        };
    }
    let remembered = session.and_then(|s| sh.homes().get(s)).and_then(|h| h.node);
    let default = || {
        let name = sh.config.home.as_deref()?;
        sh.state().index_of_name(name)
    };
    Ok((remembered.or_else(default), None))
}

/// Multi-leader: raise the read's `X-Replidb-Min-Version` to the session's
/// token (remembered per session, and the `replidb_min_version` cookie), so
/// the serving node waits until it has applied the session's writes. A
/// token in the query is merged by the node itself.
fn apply_min_version_token(
    sh: &Shared,
    out: &mut Outgoing,
    cookies: &Cookies,
    session: Option<&str>,
) {
    let explicit = request::header_min_version(&out.headers);
    if explicit.is_none() && out.headers.contains_key(MIN_VERSION_HEADER) {
        // Malformed: leave it for the node to refuse.
        return;
    }
    let mut token = explicit.clone().unwrap_or_default();
    if let Some(c) = &cookies.min_version {
        token.merge(c);
    }
    if let Some(h) = session.and_then(|s| sh.homes().get(s)) {
        token.merge(&h.token);
    }
    if token.is_empty() || Some(&token) == explicit.as_ref() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&token.to_string()) {
        Counters::bump(&sh.counters.min_version_reads);
        out.headers.insert(MIN_VERSION_HEADER, v);
    }
}

/// Raise the read's token to the LSN cookie: the follower then waits for
/// (or falls back from) the client's own last write. The token travels in
/// `X-Replidb-Min-Lsn`, since a `min_lsn` in the query would win over it.
fn apply_cookie_token(
    sh: &Shared,
    out: &mut Outgoing,
    path: &str,
    raw_query: Option<&str>,
    query: &ReadQuery,
    cookies: &Cookies,
) {
    let header = request::header_min_lsn(&out.headers);
    let (merged, raised) = request::merge_min_lsn(cookies.lsn, query.min_lsn, header);
    let Some(token) = merged.filter(|_| raised) else {
        return;
    };
    Counters::bump(&sh.counters.cookie_waits);
    metrics::counter!("replidb_router_cookie_waits_total").increment(1);
    let rest = request::strip_min_lsn(raw_query.unwrap_or(""));
    out.path_and_query = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    out.headers.insert(MIN_LSN_HEADER, HeaderValue::from(token));
}

/// Pick the target (or take the pinned one), send, and apply the retry
/// rules of the module docs.
async fn dispatch(
    sh: &Shared,
    kind: &RequestKind,
    out: &Outgoing,
    pinned: Option<usize>,
) -> Result<Routed, RouterError> {
    let (index, reason) = match pinned {
        Some(i) => (i, Reason::Home),
        None => match sh.choose(kind) {
            Target::Node { index, reason } => (index, reason),
            Target::NoLeader => {
                // Perhaps a failover just happened: look once more.
                sh.refresh_now().await;
                match sh.choose(kind) {
                    Target::Node { index, reason } => (index, reason),
                    Target::NoLeader => return Err(no_leader(sh)),
                }
            }
        },
    };
    let (name, url) = sh.node(index).ok_or_else(|| no_leader(sh))?;
    let err = match send_to(sh, index, &url, out).await {
        Ok(resp) => return follow_redirect(sh, resp, name, index, reason, out).await,
        Err(e) => e,
    };
    let is_read = matches!(kind, RequestKind::Read { .. });
    let why = match err {
        SendError::Connect(why) if pinned.is_none() => why,
        SendError::Other(why) if is_read => why,
        SendError::Connect(why) => {
            // Pinned by X-Replidb-Home: no other node will do.
            sh.state().record_failure(index, why.clone());
            return Err(RouterError::Unreachable {
                node: name,
                reason: why,
                outcome_unknown: false,
            });
        }
        SendError::Other(why) => {
            return Err(RouterError::Unreachable {
                node: name,
                reason: why,
                outcome_unknown: true,
            })
        }
        SendError::Timeout => {
            return Err(RouterError::Timeout {
                node: name,
                timeout_ms: out.timeout.as_millis() as u64,
            })
        }
    };
    tracing::debug!(node = %name, error = %why, "request failed; retrying once");
    let (was_leader, multi) = {
        let mut st = sh.state();
        st.record_failure(index, why.clone());
        (
            st.leader() == Some(index) || reason != Reason::Follower,
            st.multi_leader(),
        )
    };
    if was_leader && !multi {
        sh.refresh_now().await;
    }
    Counters::bump(&sh.counters.retries);
    let target = if multi {
        // Every node writes and serves reads: any other one will do, and a
        // write there makes it the session's new home.
        let retry_kind = match kind {
            RequestKind::Write { .. } => RequestKind::Write { home: None },
            read => *read,
        };
        sh.choose_avoiding(&retry_kind, index)
    } else {
        // Retry on the leader: it can serve every read, and writes need it.
        let retry_kind = match kind {
            RequestKind::Write { home } => RequestKind::Write { home: *home },
            RequestKind::Read { .. } => RequestKind::Read {
                leader_only: true,
                session_wrote_at: None,
            },
        };
        sh.choose(&retry_kind)
    };
    let Target::Node {
        index: next,
        reason: next_reason,
    } = target
    else {
        return Err(no_leader(sh));
    };
    let reason = if multi { next_reason } else { reason };
    let (lname, lurl) = sh.node(next).ok_or_else(|| no_leader(sh))?;
    match send_to(sh, next, &lurl, out).await {
        Ok(resp) => {
            let mut r = follow_redirect(sh, resp, lname, next, reason, out).await?;
            r.retried_on_leader = reason == Reason::Follower;
            Ok(r)
        }
        Err(SendError::Timeout) => Err(RouterError::Timeout {
            node: lname,
            timeout_ms: out.timeout.as_millis() as u64,
        }),
        Err(SendError::Connect(e)) => {
            sh.state().record_failure(next, e.clone());
            Err(unreachable(lname, e, false, &name, &why))
        }
        Err(SendError::Other(e)) => {
            sh.state().record_failure(next, e.clone());
            let outcome_unknown = !is_read_method(&out.method);
            Err(unreachable(lname, e, outcome_unknown, &name, &why))
        }
    }
}

/// Counts a request in flight to node `index` while alive (also when the
/// request is dropped half-way because the client went away).
struct InFlight<'a> {
    sh: &'a Shared,
    index: usize,
}

impl<'a> InFlight<'a> {
    fn begin(sh: &'a Shared, index: usize) -> Self {
        sh.state().begin_request(index);
        InFlight { sh, index }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sh.state().end_request(self.index);
    }
}

/// [`send`] to node `index` at base `url`, counted in flight.
async fn send_to(
    sh: &Shared,
    index: usize,
    url: &str,
    out: &Outgoing,
) -> Result<reqwest::Response, SendError> {
    let _in_flight = InFlight::begin(sh, index);
    send(sh, &format!("{url}{}", out.path_and_query), out).await
}

/// A 307 means the node we took for the leader is not (any more): follow
/// it once, believe it, and refresh in the background.
async fn follow_redirect(
    sh: &Shared,
    resp: reqwest::Response,
    name: String,
    sent_to: usize,
    reason: Reason,
    out: &Outgoing,
) -> Result<Routed, RouterError> {
    let routed = |resp, node, index| Routed {
        resp,
        node,
        index,
        reason,
        retried_on_leader: false,
    };
    if resp.status() != StatusCode::TEMPORARY_REDIRECT {
        return Ok(routed(resp, name, Some(sent_to)));
    }
    let Some(mut next) = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|loc| resp.url().join(loc).ok())
        .filter(|u| u.scheme() == "http")
    else {
        return Ok(routed(resp, name, Some(sent_to)));
    };
    if next.query().is_none() {
        next.set_query(resp.url().query());
    }
    let origin = next.origin().ascii_serialization();
    let index = {
        let mut st = sh.state();
        let i = st.index_of_url(&origin);
        if let Some(i) = i {
            st.hint_leader(i);
        }
        i
    };
    Counters::bump(&sh.counters.redirects_followed);
    tracing::info!(from = %name, to = %origin, "write redirected; following and refreshing the leader");
    let node = index.and_then(|i| sh.node(i)).map_or(origin, |(n, _)| n);
    let resp = match send(sh, next.as_str(), out).await {
        Ok(r) => r,
        Err(SendError::Timeout) => {
            return Err(RouterError::Timeout {
                node,
                timeout_ms: out.timeout.as_millis() as u64,
            })
        }
        Err(SendError::Connect(e)) => {
            return Err(RouterError::Unreachable {
                node,
                reason: e,
                outcome_unknown: false,
            })
        }
        Err(SendError::Other(e)) => {
            return Err(RouterError::Unreachable {
                node,
                reason: e,
                outcome_unknown: !is_read_method(&out.method),
            })
        }
    };
    Ok(routed(resp, node, index))
}

async fn send(sh: &Shared, url: &str, out: &Outgoing) -> Result<reqwest::Response, SendError> {
    sh.http
        .request(out.method.clone(), url)
        .headers(out.headers.clone())
        .body(out.body.clone())
        .timeout(out.timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                SendError::Timeout
            } else if e.is_connect() {
                SendError::Connect(format!("cannot connect to {url}"))
            } else {
                SendError::Other(e.to_string())
            }
        })
}

fn no_leader(sh: &Shared) -> RouterError {
    RouterError::NoLeader {
        nodes: sh.config.nodes.join(","),
    }
}

/// Request headers passed to nodes: content type, accept, the client's
/// `Authorization` (nodes with `--auth-file` check it; the router adds no
/// credentials of its own), tracing ids and every `X-Replidb-*`. Cookies
/// stay with the router.
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n.starts_with("x-replidb-")
            || matches!(
                n,
                "content-type"
                    | "accept"
                    | "authorization"
                    | "x-request-id"
                    | "traceparent"
                    | "tracestate"
            )
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not relayed.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn count(sh: &Shared, endpoint: Endpoint, r: &Routed) {
    let c = &sh.counters;
    let served_by = r
        .resp
        .headers()
        .get("x-replidb-role")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let target = match r.reason {
        Reason::Write => {
            Counters::bump(&c.writes);
            "leader"
        }
        Reason::Follower => {
            Counters::bump(&c.reads_to_followers);
            if r.retried_on_leader || served_by == "leader" {
                Counters::bump(&c.fallbacks);
                metrics::counter!("replidb_router_fallbacks_total").increment(1);
            }
            "follower"
        }
        Reason::Home | Reason::NewHome => {
            Counters::bump(&c.writes);
            if r.reason == Reason::Home {
                Counters::bump(&c.home_writes);
            } else {
                Counters::bump(&c.new_homes);
            }
            "home"
        }
        Reason::AnyNode => {
            Counters::bump(&c.reads_any_node);
            "any"
        }
        Reason::Sticky | Reason::LeaderRequested | Reason::NoEligibleFollower => {
            Counters::bump(&c.reads_to_leader);
            if r.reason == Reason::Sticky {
                Counters::bump(&c.sticky_hits);
                metrics::counter!("replidb_router_sticky_hits_total").increment(1);
            }
            if r.reason == Reason::NoEligibleFollower {
                Counters::bump(&c.no_eligible_follower);
            }
            "leader"
        }
    };
    metrics::counter!("replidb_router_requests_total", "route" => endpoint.label(), "target" => target)
        .increment(1);
}

/// The node's answer, streamed through, plus `X-Replidb-Routed-To` and,
/// after a write, the token and session cookies.
fn relay(
    sh: &Shared,
    endpoint: Endpoint,
    r: Routed,
    cookies: &Cookies,
    session: Option<String>,
    multi: bool,
) -> Response {
    let status = r.resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in r.resp.headers() {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&r.node) {
        headers.insert(ROUTED_TO_HEADER, v);
    }
    // A write that timed out on its concern (504) still happened on the
    // leader: the client must still read it back, as `Session` does.
    let wrote =
        endpoint.is_write() && (status.is_success() || status == StatusCode::GATEWAY_TIMEOUT);
    if multi {
        if wrote {
            remember_write(sh, &r, &mut headers, cookies, session);
        }
        return streamed(r.resp, status, headers);
    }
    if let Some(token) = request::advanced_lsn_cookie(
        endpoint.is_write(),
        status,
        cookies.lsn,
        served_lsn(&headers),
    ) {
        set_cookie(&mut headers, &request::lsn_cookie(token));
    }
    if wrote && !sh.config.sticky_window.is_zero() {
        let id = session.unwrap_or_else(|| {
            let id = format!("{:032x}", rand::random::<u128>());
            set_cookie(&mut headers, &request::session_cookie(&id));
            id
        });
        sh.sessions().record_write(&id, Instant::now());
    }
    streamed(r.resp, status, headers)
}

/// The node's answer with `X-Replidb-Routed-To` and nothing else added
/// (no token or session cookies: not a key-value request).
fn relay_plain(r: Routed) -> Response {
    let status = r.resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in r.resp.headers() {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&r.node) {
        headers.insert(ROUTED_TO_HEADER, v);
    }
    streamed(r.resp, status, headers)
}

fn streamed(from: reqwest::Response, status: StatusCode, headers: HeaderMap) -> Response {
    let mut resp = Response::new(Body::from_stream(from.bytes_stream()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Multi-leader: after a write (200, or 504: it happened), the node that
/// took it becomes the session's home and its `X-Replidb-Min-Version` joins
/// the session's token, remembered per session and sent back in the
/// `replidb_min_version` cookie. A request without a session gets one
/// (`replidb_session` cookie).
fn remember_write(
    sh: &Shared,
    r: &Routed,
    headers: &mut HeaderMap,
    cookies: &Cookies,
    session: Option<String>,
) {
    let written = request::header_min_version(headers).unwrap_or_default();
    let id = session.unwrap_or_else(|| {
        let id = format!("{:032x}", rand::random::<u128>());
        set_cookie(headers, &request::session_cookie(&id));
        id
    });
    let mut token = cookies.min_version.clone().unwrap_or_default();
    match r.index {
        Some(i) => token.merge(&sh.homes().record_write(&id, i, &written)),
        None => token.merge(&written),
    }
    if !token.is_empty() {
        set_cookie(headers, &request::min_version_cookie(&token));
    }
}

/// The node's `X-Replidb-Lsn`: the write's LSN, or the applied LSN of the
/// state a read was served from.
fn served_lsn(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-replidb-lsn")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

fn set_cookie(headers: &mut HeaderMap, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.append(axum::http::header::SET_COOKIE, v);
    }
}

/// Read the body up to `limit` bytes (413 beyond).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, RouterError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return RouterError::BodyTooLarge {
                    limit,
                    is_value: false,
                };
            }
            source = s.source();
        }
        RouterError::BadBody(e.to_string())
    })
}
