//! [`Client`]: the typed face of API.md's HTTP endpoints.

use crate::error::{ClientError, Result};
use crate::transport::{self, Request, Response};
use crate::types::{
    ClientOptions, DeleteResult, ReadOptions, ReadResult, ScanItem, Txn, WireValue, WriteOptions,
    WriteResult,
};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use std::sync::Arc;
use std::time::Duration;

/// Slack added to the server-side wait (`timeout_ms`, `wait_ms`) when sizing
/// the HTTP timeout, so the server's answer (e.g. a 504 with `acks`) arrives
/// before the client gives up.
const SERVER_WAIT_SLACK: Duration = Duration::from_secs(1);

/// An async client for one replidb node or router.
///
/// Cheap to clone: clones share one connection pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), replidb_client::ClientError> {
/// use replidb_client::{Client, Consistency, ReadOptions, WriteOptions};
/// let client = Client::new("http://127.0.0.1:7000")?;
/// let w = client.put("greeting", "hello", &WriteOptions::default()).await?;
/// let opts = ReadOptions { min_lsn: Some(w.lsn), ..ReadOptions::with(Consistency::Eventual) };
/// if let Some(r) = client.get("greeting", &opts).await? {
///     println!("{:?} from {:?}", r.as_str(), r.node);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    opts: ClientOptions,
}

/// Facts about the serving node, taken from the `X-Replidb-*` headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeMeta {
    pub node: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub applied_lsn: Option<u64>,
    pub lag_ms: Option<u64>,
}

impl NodeMeta {
    fn from_headers(h: &HeaderMap) -> Self {
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
        };
        let num = |name: &str| text(name).and_then(|s| s.parse::<u64>().ok());
        NodeMeta {
            node: text("x-replidb-node"),
            role: text("x-replidb-role"),
            epoch: num("x-replidb-epoch"),
            applied_lsn: num("x-replidb-lsn"),
            // A lag estimate may be fractional; whole milliseconds suffice.
            lag_ms: text("x-replidb-lag-ms")
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v.round() as u64),
        }
    }
}

impl Client {
    /// A client for the node or router at `url`, with default options.
    ///
    /// ```no_run
    /// let client = replidb_client::Client::new("http://127.0.0.1:7000").unwrap();
    /// ```
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, ClientOptions::default())
    }

    /// A client with explicit [`ClientOptions`].
    pub fn with_options(url: &str, opts: ClientOptions) -> Result<Self> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let base = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// URL"));
        }
        let http = reqwest::Client::builder()
            // Redirects are followed by hand (see transport.rs).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.timeout)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Client {
            inner: Arc::new(Inner { http, base, opts }),
        })
    }

    /// The base URL this client talks to.
    pub fn url(&self) -> &Url {
        &self.inner.base
    }

    /// Write `value` under `key` (`PUT /v1/kv/{key}`).
    ///
    /// A write whose concern was not met in time returns
    /// [`ClientError::NotCommitted`], with the LSN and ack count.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let r = client.put("k", b"v".to_vec(), &replidb_client::WriteOptions::majority()).await?;
    /// assert!(r.committed);
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let url = self.url_for(&["v1", "kv", checked_key(key)?], &opts.query())?;
        let body = Bytes::from(value.into());
        let resp = self
            .send(Method::PUT, url, Some((body, "application/octet-stream")))
            .with_wait(opts.timeout_ms)
            .await?;
        write_answer(&resp)
    }

    /// Delete `key` (`DELETE /v1/kv/{key}`); succeeds whether or not it
    /// existed, and says which.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let d = client.delete("k", &Default::default()).await?;
    /// println!("existed: {}", d.existed);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str, opts: &WriteOptions) -> Result<DeleteResult> {
        let url = self.url_for(&["v1", "kv", checked_key(key)?], &opts.query())?;
        let resp = self
            .send(Method::DELETE, url, None)
            .with_wait(opts.timeout_ms)
            .await?;
        match resp.status {
            s if s.is_success() => resp.json("delete response"),
            StatusCode::GATEWAY_TIMEOUT => match resp.json::<DeleteResult>("delete response") {
                Ok(d) => Err(ClientError::NotCommitted(d.write)),
                Err(_) => Err(resp.api_error()),
            },
            _ => Err(resp.api_error()),
        }
    }

    /// Read `key` (`GET /v1/kv/{key}?format=json`); `Ok(None)` when absent.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// use replidb_client::{Consistency, ReadOptions};
    /// match client.get("k", &ReadOptions::with(Consistency::Strong)).await? {
    ///     Some(r) => println!("{} bytes at lsn {:?}", r.value.len(), r.lsn),
    ///     None => println!("absent"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &str, opts: &ReadOptions) -> Result<Option<ReadResult>> {
        let mut query = opts.query();
        query.push(("format", "json".to_string()));
        let url = self.url_for(&["v1", "kv", checked_key(key)?], &query)?;
        let resp = self
            .send(Method::GET, url, None)
            .with_wait(opts.wait_ms)
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(resp.api_error());
        }
        let meta = NodeMeta::from_headers(&resp.headers);
        // A server that ignores `format=json` sends the raw value: accept it
        // rather than mis-decode it, just without the value's LSN.
        let (value, lsn, value_epoch) = if resp.is_json() {
            let wire: WireValue = resp.json("read response")?;
            (
                wire.bytes().map_err(ClientError::Decode)?,
                wire.lsn,
                wire.epoch,
            )
        } else {
            (resp.body.to_vec(), None, None)
        };
        Ok(Some(ReadResult {
            value,
            lsn,
            value_epoch,
            node: meta.node,
            role: meta.role,
            epoch: meta.epoch,
            applied_lsn: meta.applied_lsn,
            lag_ms: meta.lag_ms,
        }))
    }

    /// List keys starting with `prefix`, in key order (`GET /v1/kv`).
    /// `limit` of `None` uses the server default (1000).
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// for item in client.scan("user/", Some(10), &Default::default()).await? {
    ///     println!("{} = {:?}", item.key, String::from_utf8_lossy(&item.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn scan(
        &self,
        prefix: &str,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<Vec<ScanItem>> {
        Ok(self.scan_with_meta(prefix, limit, opts).await?.0)
    }

    pub(crate) async fn scan_with_meta(
        &self,
        prefix: &str,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<(Vec<ScanItem>, NodeMeta)> {
        let mut query = opts.query();
        query.push(("prefix", prefix.to_string()));
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        let url = self.url_for(&["v1", "kv"], &query)?;
        let resp = self
            .send(Method::GET, url, None)
            .with_wait(opts.wait_ms)
            .await?;
        if !resp.status.is_success() {
            return Err(resp.api_error());
        }
        let wire: ScanWire = resp.json("scan response")?;
        let items = match wire {
            ScanWire::List(v) | ScanWire::Wrapped { items: v } => v,
        };
        let items = items
            .into_iter()
            .map(|w| {
                Ok(ScanItem {
                    value: w.bytes().map_err(ClientError::Decode)?,
                    lsn: w.lsn.unwrap_or(0),
                    epoch: w.epoch.unwrap_or(0),
                    key: w.key,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((items, NodeMeta::from_headers(&resp.headers)))
    }

    /// Apply a [`Txn`] atomically (`POST /v1/txn`). A failed condition is
    /// [`ClientError::ConditionFailed`] and writes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// use replidb_client::Txn;
    /// let r = client.txn(&Txn::new().when_absent("lock").put("lock", "me")).await?;
    /// println!("took the lock at lsn {}", r.lsn);
    /// # Ok(()) }
    /// ```
    pub async fn txn(&self, txn: &Txn) -> Result<WriteResult> {
        let body = serde_json::to_vec(txn)
            .map_err(|e| ClientError::InvalidInput(format!("cannot encode transaction: {e}")))?;
        let url = self.url_for(&["v1", "txn"], &[])?;
        let resp = self
            .send(
                Method::POST,
                url,
                Some((Bytes::from(body), "application/json")),
            )
            .await?;
        if resp.status == StatusCode::CONFLICT {
            let message = match resp.api_error() {
                ClientError::Api { message, .. } => message,
                other => other.to_string(),
            };
            return Err(ClientError::ConditionFailed { message });
        }
        write_answer(&resp)
    }

    /// The node's `/status` document.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let s = client.status().await?;
    /// println!("role {} at lsn {}", s["role"], s["applied_lsn"]);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<serde_json::Value> {
        let url = self.url_for(&["status"], &[])?;
        let resp = self.send(Method::GET, url, None).await?;
        json_answer(&resp, "status")
    }

    /// The node's `/health` document. An unhealthy node answers 503 with the
    /// same document; that is returned as `Ok` (look at `"healthy"`).
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let h = client.health().await?;
    /// assert_eq!(h["healthy"], true);
    /// # Ok(()) }
    /// ```
    pub async fn health(&self) -> Result<serde_json::Value> {
        let url = self.url_for(&["health"], &[])?;
        let resp = self.send(Method::GET, url, None).no_retry_503().await?;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE && resp.is_json() {
            if let Ok(v) = resp.json::<serde_json::Value>("health") {
                if v.get("healthy").is_some() {
                    return Ok(v);
                }
            }
        }
        json_answer(&resp, "health")
    }

    /// The node's Prometheus text from `/metrics`.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let text = client.metrics().await?;
    /// # Ok(()) }
    /// ```
    pub async fn metrics(&self) -> Result<String> {
        let url = self.url_for(&["metrics"], &[])?;
        let resp = self.send(Method::GET, url, None).await?;
        if !resp.status.is_success() {
            return Err(resp.api_error());
        }
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }

    /// `POST /admin/promote`: make this node the leader (static coordinator).
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// println!("{}", client.promote().await?);
    /// # Ok(()) }
    /// ```
    pub async fn promote(&self) -> Result<serde_json::Value> {
        self.admin("promote", serde_json::json!({})).await
    }

    /// `POST /admin/switchover {"to"}`: hand leadership to node `to` without
    /// losing writes.
    pub async fn switchover(&self, to: &str) -> Result<serde_json::Value> {
        self.admin("switchover", serde_json::json!({ "to": to }))
            .await
    }

    /// `POST /admin/follow {"leader"}`: re-point this node at `leader`.
    pub async fn follow(&self, leader: &str) -> Result<serde_json::Value> {
        self.admin("follow", serde_json::json!({ "leader": leader }))
            .await
    }

    async fn admin(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let url = self.url_for(&["admin", action], &[])?;
        let body = Bytes::from(body.to_string());
        let resp = self
            .send(Method::POST, url, Some((body, "application/json")))
            .no_retry_503()
            .await?;
        if resp.status.is_success() && resp.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        json_answer(&resp, action)
    }

    /// `base` + path segments (each percent-encoded, so a key may contain
    /// `/`, `?` or spaces) + query.
    fn url_for(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ClientError::InvalidUrl {
                    url: self.inner.base.to_string(),
                    reason: "cannot be a base URL".into(),
                })?;
            path.pop_if_empty().extend(segments);
        }
        url.set_query(None);
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn send(&self, method: Method, url: Url, body: Option<(Bytes, &'static str)>) -> Pending<'_> {
        Pending {
            client: self,
            req: Request {
                method,
                url,
                body,
                timeout: self.inner.opts.timeout,
                retry_503: true,
            },
        }
    }
}

/// A request being configured; `.await` sends it.
struct Pending<'a> {
    client: &'a Client,
    req: Request,
}

impl<'a> Pending<'a> {
    /// Give the server room to wait `ms` on its side before answering.
    fn with_wait(mut self, ms: Option<u64>) -> Self {
        if let Some(ms) = ms {
            let needed = Duration::from_millis(ms).saturating_add(SERVER_WAIT_SLACK);
            self.req.timeout = self.req.timeout.max(needed);
        }
        self
    }

    fn no_retry_503(mut self) -> Self {
        self.req.retry_503 = false;
        self
    }
}

impl<'a> std::future::IntoFuture for Pending<'a> {
    type Output = Result<Response>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'a>>;
    fn into_future(self) -> Self::IntoFuture {
        let inner = &self.client.inner;
        Box::pin(transport::execute(&inner.http, &inner.opts, self.req))
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ScanWire {
    List(Vec<WireValue>),
    // Tolerated in case a server wraps the list; the contract says a list.
    Wrapped { items: Vec<WireValue> },
}

fn checked_key(key: &str) -> Result<&str> {
    if key.is_empty() {
        return Err(ClientError::InvalidInput("key must not be empty".into()));
    }
    Ok(key)
}

/// 2xx ⇒ the result; 504 with a write body ⇒ [`ClientError::NotCommitted`].
fn write_answer(resp: &Response) -> Result<WriteResult> {
    match resp.status {
        s if s.is_success() => resp.json("write response"),
        StatusCode::GATEWAY_TIMEOUT => match resp.json::<WriteResult>("write response") {
            Ok(w) => Err(ClientError::NotCommitted(w)),
            // A 504 from a proxy in front of the node carries no write body.
            Err(_) => Err(resp.api_error()),
        },
        _ => Err(resp.api_error()),
    }
}

fn json_answer(resp: &Response, what: &str) -> Result<serde_json::Value> {
    if !resp.status.is_success() {
        return Err(resp.api_error());
    }
    resp.json(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        let c = Client::new("http://127.0.0.1:7000").unwrap();
        let url = c
            .url_for(&["v1", "kv", "a b/c?d"], &[("w", "majority".into())])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7000/v1/kv/a%20b%2Fc%3Fd?w=majority"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            Client::new("127.0.0.1:7000"),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Client::new("ftp://x"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn node_meta_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-replidb-node", "n2".parse().unwrap());
        h.insert("x-replidb-lsn", "17".parse().unwrap());
        h.insert("x-replidb-lag-ms", "12.6".parse().unwrap());
        let m = NodeMeta::from_headers(&h);
        assert_eq!(m.node.as_deref(), Some("n2"));
        assert_eq!(m.applied_lsn, Some(17));
        assert_eq!(m.lag_ms, Some(13));
        assert_eq!(m.epoch, None);
    }
}
