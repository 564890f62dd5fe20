//! The URL a node sends a client's request on to (the leader for a
//! relayed read or a forwarded write, a key's replica in the leaderless
//! topology, a 307's `Location`), built so that it names exactly the
//! resource the client named.
//!
//! A URL parser removes dot segments from a path (`/v1/kv/z/../victim` is
//! `/v1/kv/victim` to it, and so are `%2e` spellings, RFC 3986 §5.2.4 and
//! the WHATWG URL standard alike). A node that relayed the client's path
//! as written therefore read, wrote or deleted *another* key than the one
//! the client named, and because it relays with its own peer token, a
//! client with only the `read` role reached `/internal/digest` as
//! `/v1/kv/x/../../../internal/digest` (found by a new user). Here a path
//! the parser would change is sent with the `/` inside its key as `%2F`
//! (the receiving node decodes the key as before, so it is the same key),
//! which leaves no dot segment to remove; and a path the parser would
//! still change (a key that is itself `.` or `..`) is refused instead of
//! sent. Other paths are sent as written.

use axum::http::StatusCode;

use super::ApiError;

/// Paths whose rest is one key that may hold `/` (the router's `{*key}`
/// routes).
const KEY_PATH_PREFIXES: [&str; 4] = ["/v1/kv/", "/v1/counter/", "/v1/set/", "/v1/map/"];

/// `base` (a node's URL, no path) joined with the client's
/// `path_and_query`: as written when a URL parser keeps that path, else
/// with the `/` inside the key sent as `%2F`.
///
/// # Errors
/// 400 `invalid_key` when neither names the client's path (a key that is
/// a dot segment cannot be sent in a URL; the message says to ask the
/// node that holds it directly, or to use the Redis protocol); 500 when
/// `base` is not a URL.
pub(crate) fn relay_url(base: &str, path_and_query: &str) -> Result<reqwest::Url, ApiError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    for path in [
        std::borrow::Cow::Borrowed(path),
        escape_key_slashes(path).into(),
    ] {
        let mut text = format!("{}{path}", base.trim_end_matches('/'));
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        let url = reqwest::Url::parse(&text)
            .map_err(|e| ApiError::internal(format!("cannot relay to {base}: {e}")))?;
        // The parser may percent-encode a character the client sent raw
        // (the same path once decoded); anything else, it changed the path.
        if decoded(url.path()) == decoded(&path) {
            return Ok(url);
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        format!(
            "{path:?} cannot be sent on to another node: a URL parser would make it another path (a key that is `.` or `..`); ask the node that holds it directly, or use the Redis protocol"
        ),
    ))
}

/// `path` with every `/` inside the key of a key path written `%2F`.
fn escape_key_slashes(path: &str) -> String {
    for prefix in KEY_PATH_PREFIXES {
        if let Some(key) = path.strip_prefix(prefix) {
            return format!("{prefix}{}", key.replace('/', "%2F"));
        }
    }
    path.to_string()
}

fn decoded(path: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::relay_url;

    fn path_and_query(relayed: &str) -> String {
        let url = relay_url("http://10.0.0.1:7001", relayed).unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    #[test]
    fn a_relayed_key_is_the_key_the_client_named() {
        assert_eq!(
            path_and_query("/v1/kv/z/../victim?w=1"),
            "/v1/kv/z%2F..%2Fvictim?w=1"
        );
        assert_eq!(
            path_and_query("/v1/kv/x/../../../internal/digest?consistency=strong"),
            "/v1/kv/x%2F..%2F..%2F..%2Finternal%2Fdigest?consistency=strong"
        );
        assert_eq!(path_and_query("/v1/kv/a/./b"), "/v1/kv/a%2F.%2Fb");
        assert_eq!(
            path_and_query("/v1/kv/z/%2e%2e/v2"),
            "/v1/kv/z%2F%2e%2e%2Fv2"
        );
        assert_eq!(
            path_and_query("/v1/counter/q/../cnt"),
            "/v1/counter/q%2F..%2Fcnt"
        );
        assert_eq!(path_and_query("/v1/set/s/.."), "/v1/set/s%2F..");
        assert_eq!(path_and_query("/v1/map/m/."), "/v1/map/m%2F.");
        // Paths a parser keeps are sent as they came.
        assert_eq!(path_and_query("/v1/kv/a/b?w=1"), "/v1/kv/a/b?w=1");
        assert_eq!(path_and_query("/v1/kv/a%2Fb"), "/v1/kv/a%2Fb");
        assert_eq!(path_and_query("/v1/kv/a..b/.c"), "/v1/kv/a..b/.c");
        assert_eq!(
            path_and_query("/v1/kv/k?format=json"),
            "/v1/kv/k?format=json"
        );
        assert_eq!(path_and_query("/v1/txn"), "/v1/txn");
        assert_eq!(path_and_query("/read?key=a/../b"), "/read?key=a/../b");
    }

    #[test]
    fn a_path_the_parser_would_change_is_refused_not_sent() {
        for path in [
            "/v1/kv/..",
            "/v1/kv/.",
            "/v1/kv/%2e%2E",
            "/v1/kv/.%2e?w=1",
            "/v1/counter/..",
            "/v1/txn/../admin/promote",
        ] {
            let e = relay_url("http://10.0.0.1:7001", path).unwrap_err();
            assert_eq!(e.code, "invalid_key", "{path}");
        }
    }
}
