//! Query-parameter parsing. Strict on purpose: an unknown parameter name
//! (a typo such as `consistancy=strong`) is a 400, not silently ignored,
//! because ignoring it would quietly weaken what the client asked for.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use replidb_core::{Lsn, WriteConcern};

use super::{ApiError, ApiResult};

/// Parsed query parameters, in the order given, each name at most once.
///
/// A list, not a map: an endpoint takes at most a dozen names, and a
/// linear search over them is cheaper than hashing each (a hashed map was
/// ~13% of an HTTP GET's instructions under callgrind).
///
/// Names and values borrow from the query string unless decoding changed
/// them (`%XX`, `+`): a plain `?consistency=eventual` allocates nothing
/// but the list.
pub struct Params<'q>(Vec<(Cow<'q, str>, Cow<'q, str>)>);

impl<'q> Params<'q> {
    /// Parse `raw`, refusing names outside `allowed`.
    pub fn parse(raw: Option<&'q str>, allowed: &[&str]) -> ApiResult<Params<'q>> {
        let raw = raw.unwrap_or("");
        // The decoder below replaces bytes that are not UTF-8 with U+FFFD,
        // which would turn `prefix=%FF` into a prefix that matches keys
        // no byte string `FF` can start: refuse instead, as a key path is.
        // Without a `%` nothing decodes to a byte, and `raw` is UTF-8.
        if raw.contains('%')
            && percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .is_err()
        {
            return Err(ApiError::bad_request(
                "malformed query string: not UTF-8 once percent-decoded",
            ));
        }
        let pairs = pairs(raw);
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    if allowed.is_empty() {
                        format!("unknown parameter {k:?}; this endpoint takes none")
                    } else {
                        format!("unknown parameter {k:?}; allowed: {}", allowed.join(", "))
                    },
                ));
            }
            // Which of two values wins is a guess the client did not make
            // (servers differ: first, last, a list), so neither does.
            if pairs[..i].iter().any(|(earlier, _)| earlier == k) {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("parameter {k:?} is given more than once"),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The same parameters, owning their text (to outlive the query).
    pub fn into_owned(self) -> Params<'static> {
        Params(
            self.0
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
        )
    }

    /// The raw value of `name`.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// `name` parsed as `T`, with `expected` describing valid values.
    pub fn parse_as<T: FromStr>(&self, name: &str, expected: &str) -> ApiResult<Option<T>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid_param(name, v, expected)),
        }
    }
}

/// The `name=value` pairs of a query, decoded as `application/x-www-form-urlencoded`.
///
/// `form_urlencoded` (what serde_urlencoded decodes with, without the
/// serde layer, which was ~5% of an HTTP GET's instructions under
/// callgrind) scans each name and value three times, for `+`, for `%`
/// and for UTF-8, even when there is nothing to decode. A query with
/// neither `+` nor `%` (nearly every one: `consistency=eventual`) needs
/// only its splits, borrowed from `raw`; the result is the same (a unit
/// test compares both on random queries).
fn pairs(raw: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    if raw.bytes().any(|b| b == b'+' || b == b'%') {
        return form_urlencoded::parse(raw.as_bytes()).collect();
    }
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (Cow::Borrowed(name), Cow::Borrowed(value))
        })
        .collect()
}

/// Parameters a write takes.
pub const WRITE_PARAMS: &[&str] = &["w", "timeout_ms"];
/// Parameters a read takes.
pub const READ_PARAMS: &[&str] = &[
    "consistency",
    "max_staleness_ms",
    "min_lsn",
    "min_version",
    "r",
    "wait_ms",
    "fallback",
    "format",
];

/// The read parameters a node of `topology` takes: [`READ_PARAMS`] but
/// another topology's own (`r`, the leaderless read quorum; `min_version`,
/// the multi-leader token), which this node would otherwise silently
/// ignore, leaving the read weaker than asked. Static lists: a request
/// allocates none.
pub fn read_params_for(topology: crate::config::Topology) -> &'static [&'static str] {
    use crate::config::Topology;
    const COMMON: &[&str] = &[
        "consistency",
        "max_staleness_ms",
        "min_lsn",
        "wait_ms",
        "fallback",
        "format",
    ];
    const LEADERLESS: &[&str] = &[
        "consistency",
        "max_staleness_ms",
        "min_lsn",
        "r",
        "wait_ms",
        "fallback",
        "format",
    ];
    const MULTI_LEADER: &[&str] = &[
        "consistency",
        "max_staleness_ms",
        "min_lsn",
        "min_version",
        "wait_ms",
        "fallback",
        "format",
    ];
    match topology {
        Topology::Leaderless => LEADERLESS,
        Topology::MultiLeader => MULTI_LEADER,
        Topology::SingleLeader => COMMON,
    }
}

/// The write parameters a node of `topology` takes: [`WRITE_PARAMS`], and
/// on a multi-leader node `min_version` (the read-your-writes token a
/// write waits for, as `X-Replidb-Min-Version`).
pub fn write_params_for(topology: crate::config::Topology) -> &'static [&'static str] {
    use crate::config::Topology;
    match topology {
        Topology::MultiLeader => &["w", "timeout_ms", "min_version"],
        Topology::SingleLeader | Topology::Leaderless => WRITE_PARAMS,
    }
}

/// Longest write-concern wait a request may ask for: a request must not
/// hold a connection (and its waiter) open indefinitely.
pub const TIMEOUT_MS_MAX: u64 = 600_000;
/// Longest `min_lsn` wait a read may ask for.
pub const WAIT_MS_MAX: u64 = 60_000;

/// The duration parameter `name` in milliseconds, if given; 400 above
/// `max_ms`.
pub(crate) fn ms_param(p: &Params<'_>, name: &str, max_ms: u64) -> ApiResult<Option<Duration>> {
    p.parse_as::<u64>(name, "milliseconds")?
        .map(|ms| bounded_ms(p, name, ms, max_ms))
        .transpose()
}

fn bounded_ms(p: &Params<'_>, name: &str, ms: u64, max: u64) -> ApiResult<Duration> {
    if ms > max {
        return Err(ApiError::invalid_param(
            name,
            p.str(name).unwrap_or_default(),
            &format!("milliseconds, at most {max}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A write's durability request.
#[derive(Clone, Copy, Debug)]
pub struct WriteOpts {
    /// Write concern.
    pub w: WriteConcern,
    /// How long to wait for it.
    pub timeout: Duration,
}

impl WriteOpts {
    /// From `w` and `timeout_ms`, with the node's defaults.
    pub fn from_params(
        p: &Params<'_>,
        default_w: WriteConcern,
        default_timeout: Duration,
    ) -> ApiResult<Self> {
        let w = p
            .parse_as::<WriteConcern>("w", "1, a number of nodes, \"majority\" or \"all\"")?
            .unwrap_or(default_w);
        let timeout = ms_param(p, "timeout_ms", TIMEOUT_MS_MAX)?.unwrap_or(default_timeout);
        Ok(WriteOpts { w, timeout })
    }
}

/// Read consistency levels (API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable, from the leader.
    Strong,
    /// The leader's current state.
    Leader,
    /// Whatever the serving node has.
    Eventual,
    /// A follower within `max_staleness_ms`.
    Bounded,
}

impl Consistency {
    /// The name the query uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Leader => "leader",
            Consistency::Eventual => "eventual",
            Consistency::Bounded => "bounded",
        }
    }
}

impl FromStr for Consistency {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "strong" => Ok(Consistency::Strong),
            "leader" => Ok(Consistency::Leader),
            "eventual" => Ok(Consistency::Eventual),
            "bounded" => Ok(Consistency::Bounded),
            _ => Err(()),
        }
    }
}

/// What to do when a follower cannot serve a read fresh enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Ask the leader.
    Leader,
    /// Answer 503.
    Error,
}

impl FromStr for Fallback {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "leader" => Ok(Fallback::Leader),
            "error" => Ok(Fallback::Error),
            _ => Err(()),
        }
    }
}

/// A read's freshness request.
#[derive(Clone, Copy, Debug)]
pub struct ReadOpts {
    /// Requested level; `None` = the node's default.
    pub consistency: Option<Consistency>,
    /// For `bounded`.
    pub max_staleness_ms: Option<u64>,
    /// Token: serve only state at least this new.
    pub min_lsn: Option<Lsn>,
    /// How long to wait for `min_lsn`.
    pub wait: Duration,
    /// What to do when too stale.
    pub fallback: Fallback,
    /// `format=json`.
    pub json: bool,
}

impl ReadOpts {
    /// A read that names nothing: the node's default consistency, no
    /// token, a 1 s wait, fallback to the leader, the raw value (what
    /// [`ReadOpts::from_params`] gives for an empty query).
    pub const DEFAULT: ReadOpts = ReadOpts {
        consistency: None,
        max_staleness_ms: None,
        min_lsn: None,
        wait: Duration::from_millis(1000),
        fallback: Fallback::Leader,
        json: false,
    };

    /// From the query and the `X-Replidb-Min-Lsn` header.
    pub fn from_params(p: &Params<'_>, headers: &HeaderMap) -> ApiResult<Self> {
        let consistency =
            p.parse_as::<Consistency>("consistency", "strong, leader, eventual or bounded")?;
        let max_staleness_ms = p.parse_as::<u64>("max_staleness_ms", "milliseconds")?;
        // A staleness bound alone asks for a bounded read; beside another
        // level it would be silently ignored, so it is refused.
        let consistency = match (consistency, max_staleness_ms) {
            (Some(Consistency::Bounded), None) => {
                return Err(ApiError::bad_request(
                    "consistency=bounded needs max_staleness_ms",
                ))
            }
            (None, Some(_)) => Some(Consistency::Bounded),
            (Some(c), Some(_)) if c != Consistency::Bounded => {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!(
                        "max_staleness_ms applies to consistency=bounded only (alone, it means bounded); this read asks for consistency={}",
                        c.as_str()
                    ),
                ))
            }
            (c, _) => c,
        };
        // Both may be present (a proxy adds the header to a client's
        // query), and the header more than once: the stricter, higher
        // token wins (the first alone could weaken read-your-writes).
        let mut min_lsn = p.parse_as::<u64>("min_lsn", "an LSN (unsigned integer)")?;
        // A name built at compile time: a `&str` is parsed into a header
        // name on every lookup (~400 instructions per read under
        // callgrind, on every Redis-protocol GET too).
        const MIN_LSN_HEADER: axum::http::HeaderName =
            axum::http::HeaderName::from_static("x-replidb-min-lsn");
        for h in headers.get_all(MIN_LSN_HEADER) {
            let s = h.to_str().unwrap_or("");
            let from_header: u64 = s
                .trim()
                .parse()
                .map_err(|_| ApiError::invalid_param("X-Replidb-Min-Lsn", s, "an LSN"))?;
            min_lsn = Some(min_lsn.unwrap_or(0).max(from_header));
        }
        let wait = match p.parse_as::<u64>("wait_ms", "milliseconds")? {
            Some(ms) => bounded_ms(p, "wait_ms", ms, WAIT_MS_MAX)?,
            None => ReadOpts::DEFAULT.wait,
        };
        let fallback = p
            .parse_as::<Fallback>("fallback", "leader or error")?
            .unwrap_or(ReadOpts::DEFAULT.fallback);
        let json = match p.str("format") {
            None | Some("raw") => false,
            Some("json") => true,
            Some(other) => return Err(ApiError::invalid_param("format", other, "json or raw")),
        };
        Ok(ReadOpts {
            consistency,
            max_staleness_ms,
            min_lsn: min_lsn.map(Lsn),
            wait,
            fallback,
            json,
        })
    }
}

// What the strict parser above accepts, as the OpenAPI document describes
// it. Handlers take the raw query and parse it with [`Params`] (unknown
// names are refused, which a typed extractor would not do); these structs
// only describe it, and a test keeps their names equal to the lists above.

/// `consistency=`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the query; `Consistency` parses it
#[schema(rename_all = "lowercase")]
pub enum ConsistencyParam {
    /// Linearizable: the leader serves only state durable on a majority.
    Strong,
    /// The leader's state (default on the leader).
    Leader,
    /// Whatever the serving node has (default on a follower).
    Eventual,
    /// A follower within `max_staleness_ms`.
    Bounded,
}

/// `fallback=`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum FallbackParam {
    /// Relay the read to the leader (default).
    Leader,
    /// Answer 503 with `Retry-After`.
    Error,
}

/// `format=`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum FormatParam {
    /// `{"key","value","lsn","epoch"}` (and the causal fields).
    Json,
    /// The raw value (default).
    Raw,
}

/// The query of a read ([`READ_PARAMS`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ReadQuery {
    /// `strong`, `leader`, `eventual` or `bounded` (default `eventual` on a
    /// follower, `leader` on the leader). `bounded` needs `max_staleness_ms`.
    #[param(inline)]
    consistency: Option<ConsistencyParam>,
    /// For `bounded`: the most lag a follower may serve with.
    max_staleness_ms: Option<u64>,
    /// Serve only state at least this new (a read-your-writes token; or the
    /// `X-Replidb-Min-Lsn` header).
    min_lsn: Option<u64>,
    /// Multi-leader: `origin:lsn,...`, wait until this node has applied
    /// that much of each origin (or the `X-Replidb-Min-Version` header).
    min_version: Option<String>,
    /// Leaderless: how many replicas answer, `1..=N`, `quorum` or `all`.
    #[param(pattern = "^([1-9][0-9]*|majority|all|quorum)$")]
    r: Option<String>,
    /// How long to wait for `min_lsn` / `min_version` (default 1000).
    #[param(maximum = 60000)]
    wait_ms: Option<u64>,
    /// What a follower does when it cannot serve fresh enough.
    #[param(inline)]
    fallback: Option<FallbackParam>,
    /// `json` for a JSON answer instead of the raw value.
    #[param(inline)]
    format: Option<FormatParam>,
}

/// The query of a write ([`WRITE_PARAMS`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WriteQuery {
    /// Write concern: `1`, a number of nodes, `majority` or `all`
    /// (leaderless: `1..=N`, `quorum` or `all` replicas of the key).
    /// Default from the node's configuration, normally `1`.
    #[param(pattern = "^([1-9][0-9]*|majority|all|quorum)$")]
    w: Option<String>,
    /// How long to wait for the write concern (default 5000).
    #[param(maximum = 600000)]
    timeout_ms: Option<u64>,
}

/// The query of a scan: a read's, plus these.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ScanQuery {
    /// Only keys starting with this.
    prefix: Option<String>,
    /// Most items (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u64>,
    /// Start after this key (paging).
    start_after: Option<String>,
}

#[cfg(test)]
mod doc_tests {
    use super::*;
    use utoipa::IntoParams;

    fn names<T: IntoParams>() -> Vec<String> {
        let mut v: Vec<String> = T::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        v.sort();
        v
    }

    fn sorted(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn documented_query_parameters_are_the_ones_the_parser_accepts() {
        assert_eq!(names::<ReadQuery>(), sorted(READ_PARAMS));
        assert_eq!(names::<WriteQuery>(), sorted(WRITE_PARAMS));
        assert_eq!(
            names::<ScanQuery>(),
            sorted(&["prefix", "limit", "start_after"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis protocol's reads use [`ReadOpts::DEFAULT`] for the
    /// options an HTTP read without parameters gets.
    #[test]
    fn the_default_read_is_an_empty_query() {
        let p = Params::parse(None, READ_PARAMS).unwrap();
        let parsed = ReadOpts::from_params(&p, &HeaderMap::new()).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", ReadOpts::DEFAULT));
    }

    /// The borrowed split gives what `form_urlencoded` gives, on queries
    /// built from the characters that matter to both (`&`, `=`, `+`, `%`,
    /// hex digits, multi-byte UTF-8), from a fixed-seed generator.
    #[test]
    fn the_fast_split_decodes_as_form_urlencoded_does() {
        const ALPHABET: &[&str] = &[
            "&", "=", "+", "%", "2", "B", "f", "a", "é", "x", "%2", "%zz",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let raw: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let want: Vec<(Cow<'_, str>, Cow<'_, str>)> =
                form_urlencoded::parse(raw.as_bytes()).collect();
            assert_eq!(pairs(&raw), want, "{raw:?}");
        }
    }

    fn refused(raw: &str) -> ApiError {
        match Params::parse(Some(raw), READ_PARAMS) {
            Ok(_) => panic!("{raw:?} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn each_topology_takes_the_common_parameters_and_only_its_own() {
        use crate::config::Topology;
        for (t, own) in [
            (Topology::SingleLeader, None),
            (Topology::MultiLeader, Some("min_version")),
            (Topology::Leaderless, Some("r")),
        ] {
            let mut expected: Vec<&str> = READ_PARAMS
                .iter()
                .copied()
                .filter(|n| !["r", "min_version"].contains(n) || Some(*n) == own)
                .collect();
            let mut got = read_params_for(t).to_vec();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "{t:?}");
        }
        assert_eq!(write_params_for(Topology::SingleLeader), WRITE_PARAMS);
        assert!(write_params_for(Topology::MultiLeader).contains(&"min_version"));
    }

    #[test]
    fn plus_and_percent_decode_as_in_forms() {
        let p = Params::parse(Some("fallback=a+b%2Bc&format="), READ_PARAMS).expect("valid");
        assert_eq!(p.str("fallback"), Some("a b+c"));
        assert_eq!(p.str("format"), Some(""));
    }

    #[test]
    fn names_are_found_decoded_and_absent_ones_are_none() {
        let p = Params::parse(
            Some("consistency=eventual&min_lsn=7&fallback=le%61der"),
            READ_PARAMS,
        )
        .expect("valid query");
        assert_eq!(p.str("consistency"), Some("eventual"));
        assert_eq!(
            p.parse_as::<u64>("min_lsn", "an LSN").expect("number"),
            Some(7)
        );
        assert_eq!(p.str("fallback"), Some("leader"));
        assert_eq!(p.str("wait_ms"), None);
        assert!(Params::parse(None, READ_PARAMS)
            .expect("empty")
            .str("r")
            .is_none());
    }

    #[test]
    fn a_value_that_is_not_utf8_once_decoded_is_a_400() {
        for raw in ["prefix=%FF", "consistency=%C3", "x%FE=1"] {
            let e = refused(raw);
            assert_eq!(e.status.as_u16(), 400, "{raw}: {}", e.message);
        }
        // Multi-byte UTF-8, percent-encoded, is fine.
        let p = Params::parse(Some("fallback=%C3%A9"), READ_PARAMS).expect("valid UTF-8");
        assert_eq!(p.str("fallback"), Some("é"));
    }

    #[test]
    fn a_repeated_min_lsn_header_asks_for_the_highest() {
        let p = Params::parse(Some("min_lsn=5"), READ_PARAMS).expect("valid");
        for order in [["1", "99"], ["99", "1"]] {
            let mut headers = HeaderMap::new();
            for v in order {
                headers.append("x-replidb-min-lsn", v.parse().expect("header value"));
            }
            let opts = ReadOpts::from_params(&p, &headers).expect("valid");
            assert_eq!(opts.min_lsn, Some(Lsn(99)), "{order:?}");
        }
    }

    #[test]
    fn an_unknown_or_repeated_name_is_a_400() {
        let e = refused("consistency=eventual&colour=blue");
        assert_eq!((e.status.as_u16(), e.code), (400, "unknown_parameter"));
        // Repeated, even with the same value, and not only when adjacent.
        for raw in ["r=1&r=1", "min_lsn=1&consistency=eventual&min_lsn=2"] {
            let e = refused(raw);
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_parameter"),
                "{raw}"
            );
            assert!(e.message.contains("more than once"), "{}", e.message);
        }
        // A known name with a bad value parses, and fails where it is read.
        let p = Params::parse(Some("min_lsn=x"), READ_PARAMS).expect("known name");
        let e = p
            .parse_as::<u64>("min_lsn", "an LSN")
            .expect_err("not a number");
        assert_eq!(e.status.as_u16(), 400, "{}", e.message);
    }
}
