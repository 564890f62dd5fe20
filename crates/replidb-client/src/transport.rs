//! One HTTP exchange with retries and leader redirects.
//!
//! Kept apart from [`Client`](crate::Client)'s API methods so that the only
//! place deciding "send again?" is here:
//! - **retry** (same URL) after a connection error, which means the request
//!   never reached a server, so even a write cannot be applied twice; and
//!   after a 503 when the caller allows it (a node without its lease, a
//!   follower that could not reach `min_lsn`): the node refused the request.
//!   Timeouts are *not* retried: the server may have applied the write.
//! - **redirect** on 307/308 to `Location`, resending the same method and
//!   body. reqwest's own policy is disabled because it may drop a PUT body.

use crate::error::{ClientError, Result};
use crate::types::ClientOptions;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use std::time::Duration;

/// A fully read response.
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// True when the server labelled the body as JSON.
    pub fn is_json(&self) -> bool {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"))
    }

    /// Decode the body as `T`, naming what was expected on failure.
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Decode(format!(
                "{what}: {e} (HTTP {}, body {:?})",
                self.status.as_u16(),
                preview(&self.body)
            ))
        })
    }

    /// Turn a non-success answer into [`ClientError::Api`], using the
    /// `{"error":{"code","message"}}` body when there is one.
    pub fn api_error(&self) -> ClientError {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Detail,
        }
        #[derive(serde::Deserialize)]
        struct Detail {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let status = self.status.as_u16();
        match serde_json::from_slice::<Envelope>(&self.body) {
            Ok(Envelope { error }) => ClientError::Api {
                status,
                code: if error.code.is_empty() {
                    format!("http_{status}")
                } else {
                    error.code
                },
                message: error.message,
            },
            Err(_) => ClientError::Api {
                status,
                code: format!("http_{status}"),
                message: if self.body.is_empty() {
                    self.status
                        .canonical_reason()
                        .unwrap_or("unexpected status")
                        .to_string()
                } else {
                    preview(&self.body)
                },
            },
        }
    }
}

/// The first bytes of a body, for error messages (a wrong URL may return a
/// whole HTML page).
fn preview(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut s = text.trim().replace('\n', " ");
    if body.len() > MAX {
        s.push('…');
    }
    s
}

/// What to send.
pub(crate) struct Request {
    pub method: Method,
    pub url: Url,
    pub body: Option<(Bytes, &'static str)>,
    /// Extra request headers (tokens, causal context), resent on every
    /// retry and redirect.
    pub headers: Vec<(&'static str, String)>,
    pub timeout: Duration,
    /// Retry a 503? False where 503 is itself an answer (`/health`) or where
    /// the operation is not safe to repeat (admin actions).
    pub retry_503: bool,
}

/// Send `req`, retrying and following redirects as the module explains.
pub(crate) async fn execute(
    http: &reqwest::Client,
    opts: &ClientOptions,
    req: Request,
) -> Result<Response> {
    let mut url = req.url.clone();
    let mut hops = 0;
    loop {
        let resp = send_with_retries(http, opts, &req, &url).await?;
        if !matches!(
            resp.status,
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        ) {
            return Ok(resp);
        }
        let next = redirect_target(&url, &resp.headers)?;
        hops += 1;
        if hops > opts.max_redirects {
            return Err(ClientError::TooManyRedirects {
                last: next.to_string(),
            });
        }
        tracing::debug!(from = %url, to = %next, "following redirect");
        url = next;
    }
}

/// The URL a 307 points at. A relative `Location` is resolved against the
/// current URL; a `Location` without a query keeps ours, so `w=majority`
/// survives a redirect from a server that only rewrote the host.
fn redirect_target(current: &Url, headers: &HeaderMap) -> Result<Url> {
    let loc = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ClientError::Decode("redirect without a Location header".into()))?;
    let mut next = current.join(loc).map_err(|e| ClientError::InvalidUrl {
        url: loc.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(ClientError::InvalidUrl {
            url: loc.to_string(),
            reason: "redirect to a non-HTTP URL".into(),
        });
    }
    if next.query().is_none() {
        next.set_query(current.query());
    }
    Ok(next)
}

async fn send_with_retries(
    http: &reqwest::Client,
    opts: &ClientOptions,
    req: &Request,
    url: &Url,
) -> Result<Response> {
    let mut attempt = 0u32;
    let mut url = url.clone();
    loop {
        let outcome = send_once(http, req, &url).await;
        let (retryable, move_on) = match &outcome {
            Err(ClientError::Connect { .. }) => (true, true),
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE && req.retry_503 => {
                (true, not_leading_any_more(r))
            }
            _ => (false, false),
        };
        if !retryable || attempt >= opts.retries {
            return outcome;
        }
        if move_on {
            if let Some(next) = next_node(&url, &opts.failover_urls) {
                tracing::debug!(from = %url, to = %next, "trying another node");
                url = next;
            }
        }
        let delay = backoff(opts, attempt);
        tracing::debug!(%url, attempt, ?delay, "retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// A 503 that means "this node no longer leads" (rather than "wait").
fn not_leading_any_more(r: &Response) -> bool {
    let text = String::from_utf8_lossy(&r.body);
    text.contains("\"fenced\"") || text.contains("\"stale_leader\"")
}

/// The same path and query on the node after `current` in `nodes`
/// (cyclically; the first one if `current` is none of them).
fn next_node(current: &Url, nodes: &[String]) -> Option<Url> {
    let parsed: Vec<Url> = nodes.iter().filter_map(|n| Url::parse(n).ok()).collect();
    if parsed.is_empty() {
        return None;
    }
    let same = |u: &Url| {
        u.host_str() == current.host_str()
            && u.port_or_known_default() == current.port_or_known_default()
    };
    let pos = parsed.iter().position(same);
    let target = &parsed[pos.map(|i| (i + 1) % parsed.len()).unwrap_or(0)];
    let mut next = current.clone();
    next.set_scheme(target.scheme()).ok()?;
    next.set_host(target.host_str()).ok()?;
    next.set_port(target.port()).ok()?;
    Some(next)
}

async fn send_once(http: &reqwest::Client, req: &Request, url: &Url) -> Result<Response> {
    let mut builder = http
        .request(req.method.clone(), url.clone())
        .timeout(req.timeout);
    for (name, value) in &req.headers {
        builder = builder.header(*name, value.as_str());
    }
    if let Some((body, content_type)) = &req.body {
        // Bytes clones share the buffer: resending after a redirect or a
        // retry costs no copy.
        builder = builder
            .header(CONTENT_TYPE, *content_type)
            .body(body.clone());
    }
    let resp = builder.send().await.map_err(|e| classify(e, url))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| classify(e, url))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn classify(e: reqwest::Error, url: &Url) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout {
            url: url.to_string(),
        }
    } else if e.is_connect() {
        ClientError::Connect {
            url: url.to_string(),
            source: e,
        }
    } else {
        ClientError::Transport(e)
    }
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped, then a random
/// point in its upper half so that many clients retrying together spread out.
pub(crate) fn backoff(opts: &ClientOptions, attempt: u32) -> Duration {
    use rand::Rng as _;
    let exp = opts
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let capped = exp.min(opts.backoff_max);
    let half = capped / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_node_cycles_through_the_cluster() {
        let nodes = vec![
            "http://127.0.0.1:7001".to_string(),
            "http://127.0.0.1:7002".to_string(),
        ];
        let u = Url::parse("http://127.0.0.1:7001/v1/kv/a?w=majority").unwrap();
        let n = next_node(&u, &nodes).unwrap();
        assert_eq!(n.as_str(), "http://127.0.0.1:7002/v1/kv/a?w=majority");
        let back = next_node(&n, &nodes).unwrap();
        assert_eq!(back.port(), Some(7001));
        let other = Url::parse("http://127.0.0.1:9/x").unwrap();
        assert_eq!(next_node(&other, &nodes).unwrap().port(), Some(7001));
        assert!(next_node(&u, &[]).is_none());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let opts = ClientOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Default::default()
        };
        let d0 = backoff(&opts, 0);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d2 = backoff(&opts, 2);
        assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
        let d30 = backoff(&opts, 30);
        assert!(d30 >= Duration::from_millis(500) && d30 <= Duration::from_millis(1000));
    }

    #[test]
    fn redirect_keeps_query_when_location_has_none() {
        let cur = Url::parse("http://f1:7001/v1/kv/a?w=majority").unwrap();
        let mut h = HeaderMap::new();
        h.insert(LOCATION, "http://l:7000/v1/kv/a".parse().unwrap());
        let next = redirect_target(&cur, &h).unwrap();
        assert_eq!(next.as_str(), "http://l:7000/v1/kv/a?w=majority");
        h.insert(LOCATION, "/v1/kv/a?w=1".parse().unwrap());
        let next = redirect_target(&cur, &h).unwrap();
        assert_eq!(next.as_str(), "http://f1:7001/v1/kv/a?w=1");
    }

    #[test]
    fn error_envelope_is_mapped() {
        let r = Response {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                br#"{"error":{"code":"value_too_large","message":"value is 2 MiB"}}"#,
            ),
        };
        match r.api_error() {
            ClientError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (413, "value_too_large"));
                assert_eq!(message, "value is 2 MiB");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
