//! [`Client`]: the typed face of API.md's HTTP endpoints.

use crate::error::{ClientError, Result};
use crate::transport::{self, Request, Response};
use crate::types::{
    ClientOptions, DeleteResult, ReadOptions, ReadResult, ScanItem, ScanPage, SiblingsWire, Txn,
    WireValue, WriteOptions, WriteResult, CONTEXT_HEADER, MIN_VERSION_HEADER, SCAN_CONTINUE_HEADER,
    SCAN_TRUNCATED_HEADER,
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
    /// `X-Replidb-Context`: the causal context of what was read or written.
    pub context: Option<String>,
    /// `X-Replidb-Min-Version`: a read-your-writes token across origins.
    pub min_version: Option<String>,
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
            context: text(CONTEXT_HEADER).filter(|s| !s.is_empty()),
            min_version: text(MIN_VERSION_HEADER).filter(|s| !s.is_empty()),
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
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &opts.token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.0))
                .map_err(|_| {
                    ClientError::InvalidInput(
                        "the token has characters an HTTP header cannot carry".into(),
                    )
                })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let tls = replidb_tls::client_config_for(opts.ca_file.as_deref(), None)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .default_headers(headers)
            // Under the nodes' default --http-header-timeout (60 s), which
            // also closes idle keep-alive connections: a pooled connection
            // is dropped here before the node closes it.
            .pool_idle_timeout(std::time::Duration::from_secs(30))
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
            .with_headers(opts.headers())?
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
            .with_headers(opts.headers())?
            .with_wait(opts.timeout_ms)
            .await?;
        let token = NodeMeta::from_headers(&resp.headers).min_version;
        let decode = || {
            resp.json::<DeleteResult>("delete response").map(|mut d| {
                d.write.min_version = token.clone();
                d
            })
        };
        match resp.status {
            s if s.is_success() => decode(),
            StatusCode::GATEWAY_TIMEOUT => match decode() {
                Ok(d) => Err(ClientError::NotCommitted(Box::new(d.write))),
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
        Ok(self.get_with_meta(key, opts).await?.0)
    }

    /// [`Client::get`], plus the serving node's headers also when the key
    /// is absent (a 404 carries a token too).
    pub(crate) async fn get_with_meta(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<(Option<ReadResult>, NodeMeta)> {
        let mut query = opts.query();
        query.push(("format", "json".to_string()));
        let url = self.url_for(&["v1", "kv", checked_key(key)?], &query)?;
        let resp = self
            .send(Method::GET, url, None)
            .with_headers(opts.headers())?
            .with_wait(opts.wait_ms)
            .await?;
        let meta = NodeMeta::from_headers(&resp.headers);
        match resp.status {
            // Only the node's own "no such key" is an absent key: a 404 for
            // the route (a --url with a path, a server that is not replidb)
            // is an error, not an empty answer.
            StatusCode::NOT_FOUND => {
                return match resp.api_error() {
                    ClientError::Api { code, .. } if code == "not_found" => Ok((None, meta)),
                    e => Err(e),
                }
            }
            StatusCode::MULTIPLE_CHOICES => return Err(siblings_error(&resp, key)),
            s if !s.is_success() => return Err(resp.api_error()),
            _ => {}
        }
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
        let result = ReadResult {
            value,
            lsn,
            value_epoch,
            node: meta.node.clone(),
            role: meta.role.clone(),
            epoch: meta.epoch,
            applied_lsn: meta.applied_lsn,
            lag_ms: meta.lag_ms,
            context: meta.context.clone(),
            min_version: meta.min_version.clone(),
        };
        Ok((Some(result), meta))
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
        Ok(self
            .scan_with_meta(prefix, None, limit, opts)
            .await?
            .0
            .items)
    }

    /// One page of keys starting with `prefix`, strictly after
    /// `start_after`: at most `limit` (server default 1000, at most
    /// 10,000), fewer when the node's byte budget per page ends it
    /// ([`ScanPage::truncated`]). [`ScanPage::next`] says where the next
    /// page starts, or that the range is done.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let mut after: Option<String> = None;
    /// loop {
    ///     let page = client.scan_page("user/", after.as_deref(), Some(500), &Default::default()).await?;
    ///     for item in &page.items {
    ///         println!("{}", item.key);
    ///     }
    ///     match page.next() {
    ///         Some(last) => after = Some(last.to_string()),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn scan_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<ScanPage> {
        Ok(self
            .scan_with_meta(prefix, start_after, limit, opts)
            .await?
            .0)
    }

    pub(crate) async fn scan_with_meta(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<(ScanPage, NodeMeta)> {
        let mut query = opts.query();
        query.push(("prefix", prefix.to_string()));
        if let Some(after) = start_after {
            query.push(("start_after", after.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        let url = self.url_for(&["v1", "kv"], &query)?;
        let resp = self
            .send(Method::GET, url, None)
            .with_headers(opts.headers())?
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
                    kind: w.kind,
                    siblings: w.siblings,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let truncated = resp
            .headers
            .get(SCAN_TRUNCATED_HEADER)
            .is_some_and(|v| v == "bytes");
        let continue_after = match resp.headers.get(SCAN_CONTINUE_HEADER) {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|e| ClientError::Decode(format!("{SCAN_CONTINUE_HEADER}: {e}")))?;
                let key = percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map_err(|e| ClientError::Decode(format!("{SCAN_CONTINUE_HEADER}: {e}")))?;
                Some(key.into_owned())
            }
        };
        let page = ScanPage {
            items,
            truncated,
            continue_after,
        };
        Ok((page, NodeMeta::from_headers(&resp.headers)))
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

    /// Add `delta` (may be negative) to the counter `key`
    /// (`POST /v1/counter/{key}`); returns the counter's value on the node
    /// that took the write, right after it. Increments made concurrently on
    /// other nodes are all counted once they have replicated.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let now = client.counter_add("visits", 1, &Default::default()).await?;
    /// println!("{now} visits");
    /// # Ok(()) }
    /// ```
    pub async fn counter_add(&self, key: &str, delta: i64, opts: &WriteOptions) -> Result<i64> {
        Ok(self.counter_add_with(key, delta, opts).await?.0)
    }

    pub(crate) async fn counter_add_with(
        &self,
        key: &str,
        delta: i64,
        opts: &WriteOptions,
    ) -> Result<(i64, WriteResult)> {
        let body = serde_json::json!({ "delta": delta });
        let (w, v) = self
            .typed_write("counter", key, Method::POST, body, opts)
            .await?;
        Ok((counter_of(&v)?, w))
    }

    /// The counter `key` (`GET /v1/counter/{key}`); 0 when absent.
    pub async fn counter(&self, key: &str, opts: &ReadOptions) -> Result<i64> {
        Ok(self.counter_with(key, opts).await?.0)
    }

    pub(crate) async fn counter_with(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<(i64, NodeMeta)> {
        let (v, meta) = self.typed_read("counter", key, opts).await?;
        Ok((counter_of(&v)?, meta))
    }

    /// Add and remove members of the set `key` (`POST /v1/set/{key}`);
    /// returns the members (sorted) on the node that took the write. A
    /// remove only removes the adds it has seen: a concurrent add wins.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let tags = client.set_update("tags", &["red"], &[], &Default::default()).await?;
    /// assert!(tags.contains(&"red".to_string()));
    /// # Ok(()) }
    /// ```
    pub async fn set_update(
        &self,
        key: &str,
        add: &[&str],
        remove: &[&str],
        opts: &WriteOptions,
    ) -> Result<Vec<String>> {
        Ok(self.set_update_with(key, add, remove, opts).await?.0)
    }

    pub(crate) async fn set_update_with(
        &self,
        key: &str,
        add: &[&str],
        remove: &[&str],
        opts: &WriteOptions,
    ) -> Result<(Vec<String>, WriteResult)> {
        let body = serde_json::json!({ "add": add, "remove": remove });
        let (w, v) = self
            .typed_write("set", key, Method::POST, body, opts)
            .await?;
        Ok((members_of(&v)?, w))
    }

    /// The members of the set `key`, sorted (`GET /v1/set/{key}`); empty
    /// when absent.
    pub async fn set_members(&self, key: &str, opts: &ReadOptions) -> Result<Vec<String>> {
        Ok(self.set_members_with(key, opts).await?.0)
    }

    pub(crate) async fn set_members_with(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<(Vec<String>, NodeMeta)> {
        let (v, meta) = self.typed_read("set", key, opts).await?;
        Ok((members_of(&v)?, meta))
    }

    /// Set fields of the map `key` (`PATCH /v1/map/{key}`); a `null` field
    /// removes it. Returns the whole map on the node that took the write.
    /// Fields edited concurrently on different nodes are all kept; the same
    /// field edited twice keeps the later one (hybrid logical clock).
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// let mut patch = serde_json::Map::new();
    /// patch.insert("name".into(), "Ada".into());
    /// patch.insert("nickname".into(), serde_json::Value::Null);
    /// let profile = client.map_patch("user:1", patch, &Default::default()).await?;
    /// assert_eq!(profile["name"], "Ada");
    /// # Ok(()) }
    /// ```
    pub async fn map_patch(
        &self,
        key: &str,
        fields: serde_json::Map<String, serde_json::Value>,
        opts: &WriteOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        Ok(self.map_patch_with(key, fields, opts).await?.0)
    }

    pub(crate) async fn map_patch_with(
        &self,
        key: &str,
        fields: serde_json::Map<String, serde_json::Value>,
        opts: &WriteOptions,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, WriteResult)> {
        if fields.is_empty() {
            return Err(ClientError::InvalidInput(
                "a map patch needs at least one field".into(),
            ));
        }
        let body = serde_json::Value::Object(fields);
        let (w, v) = self
            .typed_write("map", key, Method::PATCH, body, opts)
            .await?;
        match v.get("map") {
            Some(serde_json::Value::Object(m)) => Ok((m.clone(), w)),
            _ => Err(ClientError::Decode(format!(
                "map write response without a \"map\" object: {v}"
            ))),
        }
    }

    /// The map `key` (`GET /v1/map/{key}`); empty when absent.
    pub async fn map(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        Ok(self.map_with(key, opts).await?.0)
    }

    pub(crate) async fn map_with(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, NodeMeta)> {
        let (v, meta) = self.typed_read("map", key, opts).await?;
        match v {
            serde_json::Value::Object(m) => Ok((m, meta)),
            other => Err(ClientError::Decode(format!(
                "map read response is not an object: {other}"
            ))),
        }
    }

    /// `method /v1/{kind}/{key}` with a JSON body: the write result (with
    /// its token) and the whole JSON answer.
    async fn typed_write(
        &self,
        kind: &str,
        key: &str,
        method: Method,
        body: serde_json::Value,
        opts: &WriteOptions,
    ) -> Result<(WriteResult, serde_json::Value)> {
        let url = self.url_for(&["v1", kind, checked_key(key)?], &opts.query())?;
        let body = serde_json::to_vec(&body)
            .map_err(|e| ClientError::InvalidInput(format!("cannot encode {kind} body: {e}")))?;
        let resp = self
            .send(method, url, Some((Bytes::from(body), "application/json")))
            .with_headers(opts.headers())?
            .with_wait(opts.timeout_ms)
            .await?;
        let w = write_answer(&resp)?;
        Ok((w, resp.json(&format!("{kind} write response"))?))
    }

    /// `GET /v1/{kind}/{key}`: the JSON answer and the serving node's
    /// headers.
    async fn typed_read(
        &self,
        kind: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<(serde_json::Value, NodeMeta)> {
        let url = self.url_for(&["v1", kind, checked_key(key)?], &opts.query())?;
        let resp = self
            .send(Method::GET, url, None)
            .with_headers(opts.headers())?
            .with_wait(opts.wait_ms)
            .await?;
        let v = json_answer(&resp, &format!("{kind} read response"))?;
        Ok((v, NodeMeta::from_headers(&resp.headers)))
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
                headers: Vec::new(),
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

    /// Send these extra headers; a value that cannot be a header (a control
    /// character, non-ASCII) is refused before anything is sent.
    fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Result<Self> {
        for (name, value) in &headers {
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(ClientError::InvalidInput(format!(
                    "{name} {value:?} is not a valid header value"
                )));
            }
        }
        self.req.headers.extend(headers);
        Ok(self)
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

/// The node's own key rules, checked before a request is built: the URL
/// builder drops a `.` or `..` segment, so `get("..")` would otherwise
/// have scanned `/v1/kv`.
fn checked_key(key: &str) -> Result<&str> {
    replidb_core::validate_path_key(key).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
    Ok(key)
}

/// 2xx ⇒ the result; 504 with a write body ⇒ [`ClientError::NotCommitted`].
/// Either way the result carries the response's `X-Replidb-Min-Version`.
fn write_answer(resp: &Response) -> Result<WriteResult> {
    let decode = || {
        resp.json::<WriteResult>("write response").map(|mut w| {
            w.min_version = NodeMeta::from_headers(&resp.headers).min_version;
            w
        })
    };
    match resp.status {
        s if s.is_success() => decode(),
        StatusCode::GATEWAY_TIMEOUT => match decode() {
            Ok(w) => Err(ClientError::NotCommitted(Box::new(w))),
            // A 504 from a proxy in front of the node carries no write body.
            Err(_) => Err(resp.api_error()),
        },
        _ => Err(resp.api_error()),
    }
}

/// `"value"` of a counter answer.
fn counter_of(v: &serde_json::Value) -> Result<i64> {
    v.get("value")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| ClientError::Decode(format!("counter answer without an integer value: {v}")))
}

/// `"members"` of a set answer.
fn members_of(v: &serde_json::Value) -> Result<Vec<String>> {
    v.get("members")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .ok_or_else(|| ClientError::Decode(format!("set answer without a members list: {v}")))
}

/// A `300` answer as [`ClientError::Siblings`]; a body that does not
/// list siblings is a decode error (never a panic).
fn siblings_error(resp: &Response, key: &str) -> ClientError {
    let wire: SiblingsWire = match resp.json("siblings (300) response") {
        Ok(w) => w,
        Err(e) => return e,
    };
    let siblings = match wire
        .siblings
        .into_iter()
        .map(|s| s.decode())
        .collect::<std::result::Result<Vec<_>, _>>()
    {
        Ok(s) => s,
        Err(e) => return ClientError::Decode(e),
    };
    ClientError::Siblings {
        key: if wire.key.is_empty() {
            key.to_string()
        } else {
            wire.key
        },
        siblings,
        context: wire.context,
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
    fn keys_the_url_would_lose_are_refused() {
        for key in ["", ".", ".."] {
            assert!(
                matches!(checked_key(key), Err(ClientError::InvalidInput(_))),
                "{key:?}"
            );
        }
        assert_eq!(checked_key("a/..").ok(), Some("a/.."));
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
        assert_eq!((m.context, m.min_version), (None, None));
        h.insert("x-replidb-context", "abc=".parse().unwrap());
        h.insert("x-replidb-min-version", "n1:4,n2:0".parse().unwrap());
        let m = NodeMeta::from_headers(&h);
        assert_eq!(m.context.as_deref(), Some("abc="));
        assert_eq!(m.min_version.as_deref(), Some("n1:4,n2:0"));
    }

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Response {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn a_multi_leader_write_answer_carries_origin_and_token() {
        let body = r#"{"key":"k","lsn":42,"epoch":0,"acks":1,"w":"1","committed":true,"origin":"n1","version":{"n1":42}}"#;
        let w = write_answer(&answer(200, &[("x-replidb-min-version", "n1:42")], body)).unwrap();
        assert_eq!(w.origin.as_deref(), Some("n1"));
        assert_eq!(w.min_version.as_deref(), Some("n1:42"));
        // A single-leader answer has neither.
        let w = write_answer(&answer(200, &[], r#"{"key":"k","lsn":3}"#)).unwrap();
        assert_eq!((w.origin, w.min_version), (None, None));
        // A 504 keeps the token: the write happened.
        let e = write_answer(&answer(
            504,
            &[("x-replidb-min-version", "n2:9")],
            r#"{"key":"k","lsn":9,"committed":false,"origin":"n2"}"#,
        ))
        .unwrap_err();
        match e {
            ClientError::NotCommitted(w) => assert_eq!(w.min_version.as_deref(), Some("n2:9")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_300_becomes_siblings_with_their_context() {
        let body = r#"{"key":"cart:1","context":"ctx1","siblings":[
            {"value":"Book","origin":"n1","hlc":{"wall_ms":5,"logical":0},"version":{"n1":3}},
            {"value":"/w==","encoding":"base64","origin":"n2","hlc":{"wall_ms":6,"logical":1},"version":{"n2":4}},
            {"value":null,"deleted":true,"origin":"n3","hlc":{"wall_ms":7,"logical":0},"version":{"n3":1}}]}"#;
        let e = siblings_error(&answer(300, &[], body), "cart:1");
        assert_eq!(e.status(), Some(300));
        let ClientError::Siblings {
            key,
            siblings,
            context,
        } = e
        else {
            panic!("not siblings: {e:?}");
        };
        assert_eq!((key.as_str(), context.as_str()), ("cart:1", "ctx1"));
        assert_eq!(siblings.len(), 3);
        assert_eq!(siblings[0].as_str(), Some("Book"));
        assert_eq!(siblings[0].version.get("n1"), Some(&3));
        assert_eq!(siblings[1].value.as_deref(), Some(&[0xff][..]));
        assert_eq!(siblings[1].origin, "n2");
        assert_eq!(siblings[2].value, None, "a concurrent delete");
        // A 300 that is not a siblings document is a decode error.
        let e = siblings_error(&answer(300, &[], "<html>"), "k");
        assert!(matches!(e, ClientError::Decode(_)), "{e:?}");
    }

    #[test]
    fn typed_answers_are_decoded() {
        assert_eq!(
            counter_of(&serde_json::json!({"key":"c","value":-3})).unwrap(),
            -3
        );
        assert!(counter_of(&serde_json::json!({"value":null})).is_err());
        assert_eq!(
            members_of(&serde_json::json!({"members":["a","b"]})).unwrap(),
            vec!["a", "b"]
        );
        assert!(members_of(&serde_json::json!({"members":[1]})).is_err());
    }

    #[test]
    fn options_become_headers() {
        let w = WriteOptions {
            context: Some("ctx".into()),
            ..Default::default()
        };
        assert_eq!(w.headers(), vec![("x-replidb-context", "ctx".to_string())]);
        assert!(WriteOptions::default().headers().is_empty());
        let r = ReadOptions {
            min_version: Some("n1:1".into()),
            ..Default::default()
        };
        assert_eq!(
            r.headers(),
            vec![("x-replidb-min-version", "n1:1".to_string())]
        );
        assert!(ReadOptions::default().headers().is_empty());
    }
}
