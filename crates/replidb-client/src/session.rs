//! [`Session`]: read-your-writes and monotonic reads on top of a [`Client`].
//!
//! The guarantee rides on two tokens:
//!
//! - **the LSN token** (single-leader): the highest LSN this session has
//!   seen, from a write's `lsn`, a value's `lsn` or a serving node's
//!   `X-Replidb-Lsn`. Every read presents it as `min_lsn`, and a node serves
//!   the read only once its `applied_lsn` has reached it (or falls back to
//!   the leader).
//! - **the per-origin token** (multi-leader): every node writes its own log,
//!   so one LSN says nothing about another node's writes. The session keeps
//!   origin → highest LSN seen (`n1:42,n2:17`), merged from every write's
//!   `X-Replidb-Min-Version` (`origin:lsn` of the record) and every read's
//!   (the serving node's applied position of each origin), and sends it as
//!   `X-Replidb-Min-Version` on every read: the serving node waits (up to
//!   `wait_ms`) until it has applied that much of every origin, else 503.
//!   A session that wrote on node A and reads on node B sees its write.
//!
//! Hence:
//! - **read-your-writes**: after a write, no read sees state older than it;
//! - **monotonic reads**: after seeing a state, no later read is served
//!   from an older one, even from another node.
//!
//! In a single-leader cluster the per-origin token stays empty (or is
//! ignored by the nodes), so behaviour there is the LSN token's alone.
//!
//! Both tokens only grow (`fetch_max`, a per-origin max under a mutex), so
//! concurrent calls on one session are safe; they can be carried elsewhere
//! with [`Session::token`], [`Session::min_version`] and
//! [`Session::resume`] (e.g. in a cookie) to give causal consistency
//! across processes.

use crate::client::{Client, NodeMeta};
use crate::error::{ClientError, Result};
use crate::types::{
    DeleteResult, ReadOptions, ReadResult, ScanItem, ScanPage, Txn, WriteOptions, WriteResult,
};
use replidb_causal::MinVersion;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A client that never reads older than what it has already written or seen.
///
/// ```no_run
/// # async fn demo() -> replidb_client::Result<()> {
/// use replidb_client::{Client, Session};
/// // Through a router, reads usually go to a follower...
/// let session = Session::new(Client::new("http://127.0.0.1:7100")?);
/// session.put("cart", "3 items", &Default::default()).await?;
/// // ...but this one is served only by a node that has applied the put.
/// let r = session.get("cart", &Default::default()).await?;
/// assert_eq!(r.map(|r| r.value), Some(b"3 items".to_vec()));
/// println!("token now {} / {}", session.token(), session.min_version());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    /// Highest LSN observed; `0` means "nothing seen yet" (LSNs start at 1).
    token: AtomicU64,
    /// Highest LSN observed per origin (multi-leader). A std mutex: held
    /// for a map merge, never across an `.await`.
    min_version: Mutex<MinVersion>,
}

impl Session {
    /// A fresh session (both tokens empty).
    pub fn new(client: Client) -> Self {
        Self::with_token(client, 0)
    }

    /// Resume a session from a token obtained from [`Session::token`].
    pub fn with_token(client: Client, token: u64) -> Self {
        Session {
            client,
            token: AtomicU64::new(token),
            min_version: Mutex::new(MinVersion::default()),
        }
    }

    /// Resume a session from both tokens, as [`Session::token`] and
    /// [`Session::min_version`] gave them (`min_version` may be empty).
    ///
    /// ```
    /// # let client = replidb_client::Client::new("http://127.0.0.1:7000").unwrap();
    /// let s = replidb_client::Session::resume(client, 0, "n1:42,n2:17").unwrap();
    /// assert_eq!(s.min_version(), "n1:42,n2:17");
    /// ```
    pub fn resume(client: Client, token: u64, min_version: &str) -> Result<Self> {
        let parsed = parse_min_version(min_version)?;
        let s = Self::with_token(client, token);
        *s.lock_min_version() = parsed;
        Ok(s)
    }

    /// The highest LSN this session has seen.
    pub fn token(&self) -> u64 {
        self.token.load(Ordering::Acquire)
    }

    /// The per-origin token, `origin:lsn,...` in origin order (empty when
    /// nothing multi-leader has been seen).
    pub fn min_version(&self) -> String {
        self.lock_min_version().to_string()
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Raise the token to at least `lsn`.
    pub fn observe(&self, lsn: u64) {
        self.token.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Raise the per-origin token to cover `min_version` (`n1:42,...`).
    pub fn observe_min_version(&self, min_version: &str) -> Result<()> {
        let parsed = parse_min_version(min_version)?;
        self.lock_min_version().merge(&parsed);
        Ok(())
    }

    /// [`Client::put`], remembering the write's LSN and origin token. A
    /// write that was not committed in time still happened, so its tokens
    /// are remembered too.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let r = self.client.put(key, value, opts).await;
        self.observe_write(r)
    }

    /// [`Client::delete`], remembering the write's tokens.
    pub async fn delete(&self, key: &str, opts: &WriteOptions) -> Result<DeleteResult> {
        match self.client.delete(key, opts).await {
            Ok(d) => {
                self.observe_written(&d.write);
                Ok(d)
            }
            Err(e) => Err(self.observe_error(e)),
        }
    }

    /// [`Client::txn`], remembering the write's LSN.
    pub async fn txn(&self, txn: &Txn) -> Result<WriteResult> {
        let r = self.client.txn(txn).await;
        self.observe_write(r)
    }

    /// [`Client::get`] with `min_lsn` raised to the session token and the
    /// per-origin token sent. A `300` is returned as
    /// [`ClientError::Siblings`], as from the client.
    pub async fn get(&self, key: &str, opts: &ReadOptions) -> Result<Option<ReadResult>> {
        let (r, meta) = self
            .client
            .get_with_meta(key, &self.read_opts(opts)?)
            .await?;
        if let Some(r) = &r {
            self.observe(r.lsn.unwrap_or(0).max(r.applied_lsn.unwrap_or(0)));
        }
        self.observe_read(&meta);
        Ok(r)
    }

    /// [`Client::scan`] with `min_lsn` raised to the session token.
    pub async fn scan(
        &self,
        prefix: &str,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<Vec<ScanItem>> {
        Ok(self.scan_page(prefix, None, limit, opts).await?.items)
    }

    /// [`Client::scan_page`] with `min_lsn` raised to the session token.
    pub async fn scan_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<ScanPage> {
        let (page, meta) = self
            .client
            .scan_with_meta(prefix, start_after, limit, &self.read_opts(opts)?)
            .await?;
        let newest = page.items.iter().map(|i| i.lsn).max().unwrap_or(0);
        self.observe(newest.max(meta.applied_lsn.unwrap_or(0)));
        self.observe_read(&meta);
        Ok(page)
    }

    /// [`Client::counter_add`], remembering the write's tokens.
    pub async fn counter_add(&self, key: &str, delta: i64, opts: &WriteOptions) -> Result<i64> {
        let r = self.client.counter_add_with(key, delta, opts).await;
        self.observe_typed_write(r)
    }

    /// [`Client::counter`] with the session's tokens.
    pub async fn counter(&self, key: &str, opts: &ReadOptions) -> Result<i64> {
        let r = self.client.counter_with(key, &self.read_opts(opts)?).await;
        self.observe_typed_read(r)
    }

    /// [`Client::set_update`], remembering the write's tokens.
    pub async fn set_update(
        &self,
        key: &str,
        add: &[&str],
        remove: &[&str],
        opts: &WriteOptions,
    ) -> Result<Vec<String>> {
        let r = self.client.set_update_with(key, add, remove, opts).await;
        self.observe_typed_write(r)
    }

    /// [`Client::set_members`] with the session's tokens.
    pub async fn set_members(&self, key: &str, opts: &ReadOptions) -> Result<Vec<String>> {
        let r = self
            .client
            .set_members_with(key, &self.read_opts(opts)?)
            .await;
        self.observe_typed_read(r)
    }

    /// [`Client::map_patch`], remembering the write's tokens.
    pub async fn map_patch(
        &self,
        key: &str,
        fields: serde_json::Map<String, serde_json::Value>,
        opts: &WriteOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let r = self.client.map_patch_with(key, fields, opts).await;
        self.observe_typed_write(r)
    }

    /// [`Client::map`] with the session's tokens.
    pub async fn map(
        &self,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let r = self.client.map_with(key, &self.read_opts(opts)?).await;
        self.observe_typed_read(r)
    }

    /// `opts` with both tokens applied. A caller may ask for more than the
    /// tokens, never for less.
    fn read_opts(&self, opts: &ReadOptions) -> Result<ReadOptions> {
        let token = self.token();
        let mut o = opts.clone();
        o.min_lsn = match o.min_lsn {
            Some(n) => Some(n.max(token)),
            None if token > 0 => Some(token),
            None => None,
        };
        let mut want = parse_min_version(o.min_version.as_deref().unwrap_or(""))?;
        want.merge(&self.lock_min_version());
        o.min_version = (!want.is_empty()).then(|| want.to_string());
        Ok(o)
    }

    fn observe_write(&self, r: Result<WriteResult>) -> Result<WriteResult> {
        match r {
            Ok(w) => {
                self.observe_written(&w);
                Ok(w)
            }
            Err(e) => Err(self.observe_error(e)),
        }
    }

    fn observe_typed_write<T>(&self, r: Result<(T, WriteResult)>) -> Result<T> {
        match r {
            Ok((v, w)) => {
                self.observe_written(&w);
                Ok(v)
            }
            Err(e) => Err(self.observe_error(e)),
        }
    }

    fn observe_typed_read<T>(&self, r: Result<(T, NodeMeta)>) -> Result<T> {
        let (v, meta) = r?;
        self.observe_read(&meta);
        Ok(v)
    }

    fn observe_written(&self, w: &WriteResult) {
        self.observe(w.lsn);
        if let Some(t) = &w.min_version {
            self.merge_from_server(t);
        }
    }

    fn observe_read(&self, meta: &NodeMeta) {
        if let Some(t) = &meta.min_version {
            self.merge_from_server(t);
        }
    }

    fn observe_error(&self, e: ClientError) -> ClientError {
        if let ClientError::NotCommitted(w) = &e {
            self.observe_written(w);
        }
        e
    }

    /// Merge a token a server sent. One that does not parse is skipped
    /// (logged): the read or write itself succeeded, and failing it would
    /// only hide that.
    fn merge_from_server(&self, token: &str) {
        match MinVersion::parse(token) {
            Ok(t) => self.lock_min_version().merge(&t),
            Err(e) => {
                tracing::warn!(%token, error = %e, "ignoring a malformed X-Replidb-Min-Version")
            }
        }
    }

    fn lock_min_version(&self) -> std::sync::MutexGuard<'_, MinVersion> {
        // Plain data, updated by merges only: a poisoned lock still holds a
        // valid token.
        self.min_version.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_min_version(s: &str) -> Result<MinVersion> {
    MinVersion::parse(s)
        .map_err(|e| ClientError::InvalidInput(format!("invalid min_version {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(Client::new("http://127.0.0.1:9").unwrap())
    }

    #[test]
    fn the_origin_token_merges_per_origin_and_never_goes_back() {
        let s = session();
        assert_eq!(s.min_version(), "");
        s.merge_from_server("n1:42");
        s.merge_from_server("n2:17,n1:40");
        assert_eq!(s.min_version(), "n1:42,n2:17");
        s.merge_from_server("n1:43,n2:0,n3:5");
        assert_eq!(s.min_version(), "n1:43,n2:17,n3:5");
        s.merge_from_server("garbage");
        assert_eq!(
            s.min_version(),
            "n1:43,n2:17,n3:5",
            "malformed input is skipped"
        );
    }

    #[test]
    fn writes_and_uncommitted_writes_feed_both_tokens() {
        let s = session();
        let w = WriteResult {
            key: "k".into(),
            lsn: 7,
            epoch: 0,
            acks: 1,
            w: "1".into(),
            committed: true,
            origin: Some("n2".into()),
            min_version: Some("n2:7".into()),
        };
        s.observe_written(&w);
        let late = WriteResult {
            lsn: 9,
            origin: Some("n1".into()),
            min_version: Some("n1:9".into()),
            committed: false,
            ..w
        };
        let e = s.observe_error(ClientError::NotCommitted(Box::new(late)));
        assert!(matches!(e, ClientError::NotCommitted(_)));
        assert_eq!((s.token(), s.min_version().as_str()), (9, "n1:9,n2:7"));
    }

    #[test]
    fn reads_send_the_higher_of_the_callers_and_the_sessions_token() {
        let s = Session::resume(Client::new("http://127.0.0.1:9").unwrap(), 3, "n1:5").unwrap();
        let o = s.read_opts(&ReadOptions::default()).unwrap();
        assert_eq!(o.min_lsn, Some(3));
        assert_eq!(o.min_version.as_deref(), Some("n1:5"));
        let asked = ReadOptions {
            min_version: Some("n1:2,n2:8".into()),
            ..Default::default()
        };
        let o = s.read_opts(&asked).unwrap();
        assert_eq!(o.min_version.as_deref(), Some("n1:5,n2:8"));
        let bad = ReadOptions {
            min_version: Some("n1".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.read_opts(&bad),
            Err(ClientError::InvalidInput(_))
        ));
        // Nothing seen: nothing sent (single-leader requests stay as they were).
        let fresh = session().read_opts(&ReadOptions::default()).unwrap();
        assert_eq!((fresh.min_lsn, fresh.min_version), (None, None));
    }

    #[test]
    fn resume_refuses_a_malformed_token() {
        let c = Client::new("http://127.0.0.1:9").unwrap();
        assert!(Session::resume(c.clone(), 0, "").is_ok());
        assert!(matches!(
            Session::resume(c, 0, "n1:x"),
            Err(ClientError::InvalidInput(_))
        ));
    }
}
