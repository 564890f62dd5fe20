//! [`Session`]: read-your-writes and monotonic reads on top of a [`Client`].
//!
//! The guarantee rides on one number, the *token*: the highest LSN this
//! session has seen, from a write's `lsn`, a value's `lsn` or a serving
//! node's `X-Replidb-Lsn`. Every read presents it as `min_lsn`, and a node
//! serves the read only once its `applied_lsn` has reached it (or falls back
//! to the leader). Hence:
//! - **read-your-writes**: after a write at LSN n, no read sees state older
//!   than n;
//! - **monotonic reads**: after seeing a node at LSN n, no later read is
//!   served from an older state, even from another follower.
//!
//! The token only grows (`fetch_max`), so concurrent calls on one session are
//! safe; it can be carried elsewhere with [`Session::token`] and
//! [`Session::with_token`] (e.g. in a cookie) to give causal consistency
//! across processes.

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::types::{
    DeleteResult, ReadOptions, ReadResult, ScanItem, Txn, WriteOptions, WriteResult,
};
use std::sync::atomic::{AtomicU64, Ordering};

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
/// println!("token now {}", session.token());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    /// Highest LSN observed; `0` means "nothing seen yet" (LSNs start at 1).
    token: AtomicU64,
}

impl Session {
    /// A fresh session (token 0).
    pub fn new(client: Client) -> Self {
        Self::with_token(client, 0)
    }

    /// Resume a session from a token obtained from [`Session::token`].
    pub fn with_token(client: Client, token: u64) -> Self {
        Session {
            client,
            token: AtomicU64::new(token),
        }
    }

    /// The highest LSN this session has seen.
    pub fn token(&self) -> u64 {
        self.token.load(Ordering::Acquire)
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Raise the token to at least `lsn`.
    pub fn observe(&self, lsn: u64) {
        self.token.fetch_max(lsn, Ordering::AcqRel);
    }

    /// [`Client::put`], remembering the write's LSN. A write that was not
    /// committed in time still happened on the leader, so its LSN is
    /// remembered too.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let r = self.client.put(key, value, opts).await;
        self.observe_write(r)
    }

    /// [`Client::delete`], remembering the write's LSN.
    pub async fn delete(&self, key: &str, opts: &WriteOptions) -> Result<DeleteResult> {
        match self.client.delete(key, opts).await {
            Ok(d) => {
                self.observe(d.write.lsn);
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

    /// [`Client::get`] with `min_lsn` raised to the session token.
    pub async fn get(&self, key: &str, opts: &ReadOptions) -> Result<Option<ReadResult>> {
        let r = self.client.get(key, &self.read_opts(opts)).await?;
        if let Some(r) = &r {
            self.observe(r.lsn.unwrap_or(0).max(r.applied_lsn.unwrap_or(0)));
        }
        Ok(r)
    }

    /// [`Client::scan`] with `min_lsn` raised to the session token.
    pub async fn scan(
        &self,
        prefix: &str,
        limit: Option<usize>,
        opts: &ReadOptions,
    ) -> Result<Vec<ScanItem>> {
        let (items, meta) = self
            .client
            .scan_with_meta(prefix, limit, &self.read_opts(opts))
            .await?;
        let newest = items.iter().map(|i| i.lsn).max().unwrap_or(0);
        self.observe(newest.max(meta.applied_lsn.unwrap_or(0)));
        Ok(items)
    }

    fn read_opts(&self, opts: &ReadOptions) -> ReadOptions {
        let token = self.token();
        let mut o = opts.clone();
        // A caller may ask for more than the token, never for less.
        o.min_lsn = match o.min_lsn {
            Some(n) => Some(n.max(token)),
            None if token > 0 => Some(token),
            None => None,
        };
        o
    }

    fn observe_write(&self, r: Result<WriteResult>) -> Result<WriteResult> {
        match r {
            Ok(w) => {
                self.observe(w.lsn);
                Ok(w)
            }
            Err(e) => Err(self.observe_error(e)),
        }
    }

    fn observe_error(&self, e: ClientError) -> ClientError {
        if let ClientError::NotCommitted(w) = &e {
            self.observe(w.lsn);
        }
        e
    }
}
