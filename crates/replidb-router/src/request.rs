//! What an incoming request is, read off its method, path, query, headers
//! and cookies — pure functions, no IO.
//!
//! - [`classify`] sorts a request into an [`Endpoint`] (or refuses it).
//! - [`ReadQuery`] pulls the few query parameters routing cares about.
//! - [`Cookies`] reads the router's two cookies; [`lsn_cookie`] and
//!   [`session_cookie`] write them.
//! - [`merge_min_lsn`] and [`strip_min_lsn`] carry the LSN cookie into a
//!   read's `min_lsn`.
//! - [`min_version_cookie`] and [`header_min_version`] carry the
//!   multi-leader per-origin token.

use axum::http::{HeaderMap, Method, StatusCode};
use replidb_causal::MinVersion;

use crate::error::RouterError;

/// Name of the cookie carrying the highest LSN this client wrote or read.
pub const LSN_COOKIE: &str = "replidb_lsn";
/// Name of the cookie carrying the sticky-session id.
pub const SESSION_COOKIE: &str = "replidb_session";
/// Header naming a session explicitly (wins over the cookie).
pub const SESSION_HEADER: &str = "x-replidb-session";
/// Header carrying a read token (API.md).
pub const MIN_LSN_HEADER: &str = "x-replidb-min-lsn";
/// Name of the cookie carrying the per-origin token of a session's writes
/// (multi-leader), form-encoded (a token's commas are not cookie octets).
pub const MIN_VERSION_COOKIE: &str = "replidb_min_version";
/// Header carrying a per-origin read token (multi-leader, API.md).
pub const MIN_VERSION_HEADER: &str = "x-replidb-min-version";
/// Header naming the node a multi-leader write goes to (a node id or URL).
pub const HOME_HEADER: &str = "x-replidb-home";
/// Longest session id accepted; longer ones are ignored (not stored).
pub const SESSION_ID_MAX_BYTES: usize = 128;

/// The routable endpoints of API.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `PUT`/`DELETE /v1/kv/{key}`.
    KvWrite,
    /// `POST /v1/txn`.
    Txn,
    /// `POST /write`, `POST /write-with-quorum`.
    SeedWrite,
    /// `GET /v1/kv/{key}` and `GET /v1/kv` (scan).
    KvRead,
    /// `GET /read`, `/follower-read`, `/read-with-repair`: a node serves
    /// these only from the leader (a follower proxies them there).
    SeedRead,
    /// `POST /v1/counter/{key}`, `POST /v1/set/{key}`, `PATCH /v1/map/{key}`,
    /// and `DELETE` of each.
    TypedWrite,
    /// `GET /v1/counter|set|map/{key}`.
    TypedRead,
    /// `POST /admin/switchover`: addressed to whichever node leads, so the
    /// router forwards it to the current leader.
    Switchover,
}

impl Endpoint {
    /// Whether the endpoint writes.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Endpoint::KvWrite
                | Endpoint::Txn
                | Endpoint::SeedWrite
                | Endpoint::TypedWrite
                | Endpoint::Switchover
        )
    }

    /// Whether the endpoint reads one of the API's keys or key ranges
    /// (the reads a token applies to).
    pub fn is_token_read(self) -> bool {
        matches!(self, Endpoint::KvRead | Endpoint::TypedRead)
    }

    /// Label for metrics (`route`).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::KvWrite => "kv_write",
            Endpoint::Txn => "txn",
            Endpoint::SeedWrite => "seed_write",
            Endpoint::KvRead => "kv_read",
            Endpoint::SeedRead => "seed_read",
            Endpoint::TypedWrite => "typed_write",
            Endpoint::TypedRead => "typed_read",
            Endpoint::Switchover => "admin_switchover",
        }
    }

    /// Largest request body accepted, given the nodes' `--max-value-bytes`:
    /// the node's own limit plus room for JSON framing. Mirrors the node
    /// (`txn` takes four values' worth, at least 1 MiB).
    pub fn body_limit(self, max_value_bytes: usize) -> usize {
        const SLACK: usize = 64 * 1024;
        match self {
            Endpoint::KvWrite | Endpoint::SeedWrite | Endpoint::TypedWrite => {
                max_value_bytes + SLACK
            }
            Endpoint::Txn => max_value_bytes.saturating_mul(4).max(1 << 20) + SLACK,
            Endpoint::KvRead | Endpoint::SeedRead | Endpoint::TypedRead => 0,
            Endpoint::Switchover => SLACK,
        }
    }
}

/// Whether a raw path has a `.` or `..` segment, in any spelling the
/// WHATWG URL parser (and so the router's HTTP client) treats as one
/// (`%2e` in either case for a dot).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

/// Sort a request into an endpoint: 404 for paths the router does not
/// route (`/internal/*` and the `/admin/*` calls that address one node;
/// `/admin/switchover` is the leader's, so it is routed), 400
/// `invalid_key` for an empty key, 405 for a known path with the wrong
/// method.
pub fn classify(method: &Method, path: &str) -> Result<Endpoint, RouterError> {
    let wrong = || RouterError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    };
    let kv_key = path.strip_prefix("/v1/kv/").is_some_and(|k| !k.is_empty());
    let typed = ["counter", "set", "map"].into_iter().find(|t| {
        path.strip_prefix("/v1/")
            .and_then(|rest| rest.strip_prefix(t))
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|k| !k.is_empty())
    });
    if (kv_key || typed.is_some()) && has_dot_segment(path) {
        return Err(RouterError::DotSegment {
            path: path.to_string(),
        });
    }
    if let Some(t) = typed {
        let write = if t == "map" {
            Method::PATCH
        } else {
            Method::POST
        };
        return match method {
            m if *m == Method::GET => Ok(Endpoint::TypedRead),
            m if *m == write || *m == Method::DELETE => Ok(Endpoint::TypedWrite),
            _ => Err(wrong()),
        };
    }
    let empty_key = path == "/v1/kv/"
        || ["counter", "set", "map"]
            .iter()
            .any(|t| path.strip_prefix("/v1/").and_then(|r| r.strip_prefix(t)) == Some("/"));
    if empty_key {
        return Err(RouterError::EmptyKey);
    }
    match path {
        _ if kv_key => match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::KvRead),
            Method::PUT | Method::DELETE => Ok(Endpoint::KvWrite),
            _ => Err(wrong()),
        },
        "/v1/kv" => only(method, Method::GET, Endpoint::KvRead).ok_or_else(wrong),
        "/v1/txn" => only(method, Method::POST, Endpoint::Txn).ok_or_else(wrong),
        "/write" | "/write-with-quorum" => {
            only(method, Method::POST, Endpoint::SeedWrite).ok_or_else(wrong)
        }
        "/read" | "/follower-read" | "/read-with-repair" => {
            only(method, Method::GET, Endpoint::SeedRead).ok_or_else(wrong)
        }
        "/admin/switchover" => only(method, Method::POST, Endpoint::Switchover).ok_or_else(wrong),
        // A node has these; they address one node, so the router says
        // where to send them instead of pretending they do not exist.
        _ if NODE_ONLY_PREFIXES.iter().any(|p| path.starts_with(p)) => {
            Err(RouterError::NotRouted {
                path: path.to_string(),
            })
        }
        _ => Err(RouterError::NoRoute {
            path: path.to_string(),
        }),
    }
}

/// Paths a node serves that the router does not route (they address one
/// node): answered 404 `not_found` with a pointer, where any other
/// unknown path is the nodes' 404 `no_route`.
const NODE_ONLY_PREFIXES: &[&str] = &[
    "/admin/",
    "/internal/",
    "/v1/conflicts",
    "/openapi.json",
    "/v1/replication",
];

fn only(method: &Method, want: Method, e: Endpoint) -> Option<Endpoint> {
    (*method == want).then_some(e)
}

/// The query parameters routing looks at. Anything unparsable is left
/// for the node to refuse with its own 400.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// `consistency=strong|leader` makes a read leader-only.
    pub leader_only: bool,
    /// `min_lsn`, if present and a number.
    pub min_lsn: Option<u64>,
    /// The longest server-side wait asked for (`wait_ms`, `timeout_ms`).
    pub server_wait_ms: Option<u64>,
}

impl ReadQuery {
    /// Parse `query` (without the `?`).
    pub fn parse(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
        let mut q = ReadQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "consistency" => q.leader_only = matches!(v.as_str(), "strong" | "leader"),
                "min_lsn" => q.min_lsn = v.trim().parse().ok(),
                "wait_ms" | "timeout_ms" => {
                    let ms = v.trim().parse::<u64>().ok();
                    q.server_wait_ms = q.server_wait_ms.max(ms);
                }
                _ => {}
            }
        }
        q
    }
}

/// The router's cookies on a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cookies {
    /// `replidb_lsn`, if present and a number.
    pub lsn: Option<u64>,
    /// `replidb_session`, if present and well-formed.
    pub session: Option<String>,
    /// `replidb_min_version`, if present and a valid token.
    pub min_version: Option<MinVersion>,
}

impl Cookies {
    /// Read every `Cookie` header; malformed values are ignored (a cookie
    /// is user input, and a bad one must not fail the request).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut c = Cookies::default();
        let all = headers
            .get_all(axum::http::header::COOKIE)
            .into_iter()
            .filter_map(|v| v.to_str().ok());
        for pair in all.flat_map(|h| h.split(';')) {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim() {
                LSN_COOKIE => {
                    if let Ok(n) = value.parse::<u64>() {
                        c.lsn = c.lsn.max(Some(n));
                    }
                }
                SESSION_COOKIE if valid_session_id(value) => c.session = Some(value.to_string()),
                MIN_VERSION_COOKIE => {
                    if let Some(t) = decode_min_version_cookie(value) {
                        c.min_version
                            .get_or_insert_with(MinVersion::default)
                            .merge(&t);
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// The session a request belongs to: the `X-Replidb-Session` header, else
/// the `replidb_session` cookie. Ids that are too long or carry odd bytes
/// are ignored.
pub fn session_of(headers: &HeaderMap, cookies: &Cookies) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| valid_session_id(s))
        .map(str::to_string)
        .or_else(|| cookies.session.clone())
}

/// 1..=128 bytes of `[A-Za-z0-9._:-]`.
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SESSION_ID_MAX_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The `X-Replidb-Min-Lsn` header, if present and a number.
pub fn header_min_lsn(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(MIN_LSN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The token a read is sent with: the highest of the LSN cookie, the
/// explicit `min_lsn` and the explicit header. Returns the token and
/// whether the cookie raised it above what the client asked for.
pub fn merge_min_lsn(
    cookie: Option<u64>,
    query: Option<u64>,
    header: Option<u64>,
) -> (Option<u64>, bool) {
    let explicit = query.max(header);
    let merged = explicit.max(cookie);
    (merged, merged > explicit)
}

/// `query` without its `min_lsn` parameters (the token then travels in
/// the header, which the node reads only when the query has none).
pub fn strip_min_lsn(query: &str) -> String {
    query
        .split('&')
        .filter(|piece| {
            let name = piece.split_once('=').map_or(*piece, |(n, _)| n);
            name != "min_lsn" && !piece.is_empty()
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The LSN cookie's new value after a node answered, or `None` to leave it.
///
/// - A write (200, or 504: it happened even though its concern timed out)
///   moves the token to the write's LSN: read-your-writes.
/// - A read that a node served (200, or 404: "absent" is state too) moves
///   it to the applied LSN of the state it was served from: the next read,
///   perhaps on a follower further behind, then waits for that state, so
///   reads through one cookie jar never go back in time (monotonic reads).
///
/// The token only grows, and is only re-sent when it grows.
pub fn advanced_lsn_cookie(
    is_write: bool,
    status: StatusCode,
    cookie: Option<u64>,
    served_lsn: Option<u64>,
) -> Option<u64> {
    let served = if is_write {
        status.is_success() || status == StatusCode::GATEWAY_TIMEOUT
    } else {
        status.is_success() || status == StatusCode::NOT_FOUND
    };
    let lsn = served_lsn.filter(|_| served)?;
    match cookie {
        Some(c) if c >= lsn && !is_write => None,
        Some(c) => Some(c.max(lsn)),
        None => Some(lsn),
    }
}

/// `Set-Cookie` value for the LSN token.
pub fn lsn_cookie(lsn: u64) -> String {
    format!("{LSN_COOKIE}={lsn}; Path=/; HttpOnly; SameSite=Lax")
}

/// `Set-Cookie` value for the per-origin token.
pub fn min_version_cookie(token: &MinVersion) -> String {
    let encoded = serde_urlencoded::to_string([("v", token.to_string())]).unwrap_or_default();
    let value = encoded.strip_prefix("v=").unwrap_or("");
    format!("{MIN_VERSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax")
}

fn decode_min_version_cookie(value: &str) -> Option<MinVersion> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={value}")).ok()?;
    let (_, token) = pairs.into_iter().next()?;
    MinVersion::parse(&token).ok()
}

/// The request's `X-Replidb-Min-Version`, if present and valid (an invalid
/// one is left for the node to refuse with its own 400).
pub fn header_min_version(headers: &HeaderMap) -> Option<MinVersion> {
    headers
        .get(MIN_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| MinVersion::parse(s).ok())
}

/// The request's `X-Replidb-Home`, trimmed, if present and not empty.
pub fn home_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(HOME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `Set-Cookie` value for a session id.
pub fn session_cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_and_writes_advance_the_lsn_cookie_never_back() {
        let ok = StatusCode::OK;
        // Writes: to the write's LSN, also after a 504; never backwards.
        assert_eq!(advanced_lsn_cookie(true, ok, None, Some(5)), Some(5));
        assert_eq!(advanced_lsn_cookie(true, ok, Some(9), Some(5)), Some(9));
        let timeout = StatusCode::GATEWAY_TIMEOUT;
        assert_eq!(
            advanced_lsn_cookie(true, timeout, Some(1), Some(5)),
            Some(5)
        );
        // Reads: to the served state's LSN, 404 included; unchanged (no
        // Set-Cookie) when not newer.
        assert_eq!(advanced_lsn_cookie(false, ok, Some(3), Some(7)), Some(7));
        let absent = StatusCode::NOT_FOUND;
        assert_eq!(advanced_lsn_cookie(false, absent, None, Some(7)), Some(7));
        assert_eq!(advanced_lsn_cookie(false, ok, Some(7), Some(7)), None);
        assert_eq!(advanced_lsn_cookie(false, ok, Some(9), Some(7)), None);
        // Failed answers, or no LSN: nothing was served.
        let busy = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(advanced_lsn_cookie(false, busy, Some(1), Some(7)), None);
        assert_eq!(
            advanced_lsn_cookie(true, StatusCode::CONFLICT, None, Some(7)),
            None
        );
        assert_eq!(advanced_lsn_cookie(false, ok, Some(1), None), None);
    }

    #[test]
    fn endpoints_are_classified_as_api_md_lists_them() {
        let ok = |m: Method, p: &str| classify(&m, p).unwrap();
        assert_eq!(ok(Method::PUT, "/v1/kv/a/b"), Endpoint::KvWrite);
        assert_eq!(ok(Method::DELETE, "/v1/kv/a"), Endpoint::KvWrite);
        assert_eq!(ok(Method::GET, "/v1/kv/a"), Endpoint::KvRead);
        assert_eq!(ok(Method::GET, "/v1/kv"), Endpoint::KvRead);
        assert_eq!(ok(Method::POST, "/v1/txn"), Endpoint::Txn);
        assert_eq!(ok(Method::POST, "/write-with-quorum"), Endpoint::SeedWrite);
        assert_eq!(ok(Method::GET, "/read-with-repair"), Endpoint::SeedRead);
        assert!(ok(Method::POST, "/write").is_write());
        assert!(matches!(
            classify(&Method::POST, "/v1/kv/a"),
            Err(RouterError::MethodNotAllowed { .. })
        ));
        assert_eq!(ok(Method::POST, "/v1/counter/c"), Endpoint::TypedWrite);
        assert_eq!(ok(Method::GET, "/v1/counter/c"), Endpoint::TypedRead);
        assert_eq!(ok(Method::POST, "/v1/set/s/x"), Endpoint::TypedWrite);
        assert_eq!(ok(Method::PATCH, "/v1/map/m"), Endpoint::TypedWrite);
        assert_eq!(ok(Method::GET, "/v1/map/m"), Endpoint::TypedRead);
        assert_eq!(ok(Method::DELETE, "/v1/counter/c"), Endpoint::TypedWrite);
        assert_eq!(ok(Method::DELETE, "/v1/map/m"), Endpoint::TypedWrite);
        assert!(matches!(
            classify(&Method::POST, "/v1/map/m"),
            Err(RouterError::MethodNotAllowed { .. })
        ));
        assert_eq!(ok(Method::POST, "/admin/switchover"), Endpoint::Switchover);
        for p in [
            "/v1/kv/..",
            "/v1/kv/%2e%2E",
            "/v1/kv/.",
            "/v1/kv/a/../b",
            "/v1/set/%2e",
        ] {
            let e = classify(&Method::GET, p).unwrap_err();
            assert_eq!(e.status_and_code().1, "invalid_key", "{p}");
        }
        assert_eq!(ok(Method::GET, "/v1/kv/..."), Endpoint::KvRead);
        assert_eq!(ok(Method::GET, "/v1/kv/a%2F.."), Endpoint::KvRead);
        for p in ["/v1/kv/", "/v1/counter/", "/v1/map/"] {
            assert!(
                matches!(classify(&Method::PUT, p), Err(RouterError::EmptyKey)),
                "{p}"
            );
        }
        for p in ["/admin/promote", "/internal/digest", "/v1/conflicts"] {
            assert!(matches!(
                classify(&Method::POST, p),
                Err(RouterError::NotRouted { .. })
            ));
        }
        // Paths no node has either: the node's own 404 `no_route`.
        for p in ["/nope", "/v1/counters/x", "/v1/nope"] {
            let e = classify(&Method::POST, p).expect_err(p);
            assert!(matches!(e, RouterError::NoRoute { .. }), "{p}: {e:?}");
            assert_eq!(e.status_and_code().1, "no_route", "{p}");
        }
    }

    #[test]
    fn read_query_finds_leader_only_levels_tokens_and_waits() {
        let q = ReadQuery::parse(Some("consistency=strong&min_lsn=7&wait_ms=300"));
        assert_eq!(
            q,
            ReadQuery {
                leader_only: true,
                min_lsn: Some(7),
                server_wait_ms: Some(300)
            }
        );
        assert!(!ReadQuery::parse(Some("consistency=bounded&max_staleness_ms=5")).leader_only);
        assert!(ReadQuery::parse(Some("consistency=leader")).leader_only);
        assert_eq!(ReadQuery::parse(Some("min_lsn=x")).min_lsn, None);
        assert_eq!(ReadQuery::parse(Some("%%%")), ReadQuery::default());
    }

    #[test]
    fn cookies_are_read_leniently() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; replidb_lsn=42; replidb_session=s-1"),
        );
        h.append("cookie", HeaderValue::from_static("replidb_lsn=40"));
        let c = Cookies::parse(&h);
        assert_eq!(c.lsn, Some(42), "the highest of duplicates");
        assert_eq!(c.session.as_deref(), Some("s-1"));
        let mut bad = HeaderMap::new();
        bad.insert(
            "cookie",
            HeaderValue::from_static("replidb_lsn=-3; replidb_session=a b"),
        );
        assert_eq!(Cookies::parse(&bad), Cookies::default());
    }

    #[test]
    fn the_session_header_wins_over_the_cookie() {
        let mut h = HeaderMap::new();
        let cookies = Cookies {
            session: Some("from-cookie".into()),
            ..Default::default()
        };
        assert_eq!(session_of(&h, &cookies).as_deref(), Some("from-cookie"));
        h.insert(SESSION_HEADER, HeaderValue::from_static("from-header"));
        assert_eq!(session_of(&h, &cookies).as_deref(), Some("from-header"));
        let long = "x".repeat(SESSION_ID_MAX_BYTES + 1);
        assert!(!valid_session_id(&long));
    }

    #[test]
    fn cookie_min_lsn_merges_with_explicit_tokens() {
        assert_eq!(merge_min_lsn(None, None, None), (None, false));
        assert_eq!(merge_min_lsn(Some(9), None, None), (Some(9), true));
        assert_eq!(merge_min_lsn(Some(9), Some(12), None), (Some(12), false));
        assert_eq!(merge_min_lsn(Some(9), Some(3), Some(5)), (Some(9), true));
        assert_eq!(merge_min_lsn(None, Some(3), Some(5)), (Some(5), false));
        assert_eq!(merge_min_lsn(Some(5), None, Some(5)), (Some(5), false));
    }

    #[test]
    fn min_lsn_is_stripped_from_the_query_and_nothing_else() {
        assert_eq!(
            strip_min_lsn("consistency=eventual&min_lsn=3&format=json"),
            "consistency=eventual&format=json"
        );
        assert_eq!(strip_min_lsn("min_lsn=3"), "");
        assert_eq!(strip_min_lsn("min_lsnx=1&&a"), "min_lsnx=1&a");
    }

    #[test]
    fn the_min_version_cookie_round_trips_and_merges() {
        let t = MinVersion::parse("n1:42,n2:17").unwrap();
        let set = min_version_cookie(&t);
        assert!(
            set.starts_with("replidb_min_version=n1%3A42%2Cn2%3A17;"),
            "{set}"
        );
        let value = set.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_str(value).unwrap());
        h.append(
            "cookie",
            HeaderValue::from_static("replidb_min_version=n1%3A50%2Cn3%3A1"),
        );
        assert_eq!(
            Cookies::parse(&h).min_version.unwrap().to_string(),
            "n1:50,n2:17,n3:1"
        );
        let mut bad = HeaderMap::new();
        bad.insert("cookie", HeaderValue::from_static("replidb_min_version=n1"));
        assert_eq!(Cookies::parse(&bad).min_version, None);
    }

    #[test]
    fn min_version_and_home_headers_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!((header_min_version(&h), home_header(&h)), (None, None));
        h.insert(MIN_VERSION_HEADER, HeaderValue::from_static("n2:3"));
        h.insert(HOME_HEADER, HeaderValue::from_static(" n2 "));
        assert_eq!(header_min_version(&h).unwrap().to_string(), "n2:3");
        assert_eq!(home_header(&h).as_deref(), Some("n2"));
    }

    #[test]
    fn cookies_carry_the_attributes() {
        assert_eq!(
            lsn_cookie(5),
            "replidb_lsn=5; Path=/; HttpOnly; SameSite=Lax"
        );
        assert!(session_cookie("abc").starts_with("replidb_session=abc;"));
    }
}
