//! The operations the coordinator needs from etcd, behind a trait, so the
//! same election, lease and fencing loop runs against the real etcd
//! ([`EtcdClient`]) or a simulated one (crate `replidb-sim`).

use crate::etcd::{Compare, EtcdClient, KeyValue, LeaseId, TxnOp};
use crate::{BoxFuture, Result};

/// A key-value store with etcd's semantics: leases that expire `ttl`
/// seconds after the last keep-alive and take their keys with them, a
/// revision counter (`create_revision`, `mod_revision`), and
/// compare-and-swap transactions.
pub trait CoordStore: Send + Sync + 'static {
    /// Grant a lease of `ttl_s` seconds; returns `(id, granted ttl)`.
    fn grant(&self, ttl_s: i64) -> BoxFuture<'_, Result<(LeaseId, i64)>>;
    /// Renew a lease; `Ok(None)` if it has expired.
    fn keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Option<i64>>>;
    /// Revoke a lease (its keys vanish at once).
    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>>;
    /// Put `key = value` (under `lease`, if given).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<()>>;
    /// Get one key.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;
    /// Every key under `prefix`, in key order.
    fn get_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>>>;
    /// Run `success` if every comparison holds; whether it did.
    fn txn<'a>(
        &'a self,
        compare: &'a [Compare],
        success: &'a [TxnOp],
    ) -> BoxFuture<'a, Result<bool>>;
}

impl CoordStore for EtcdClient {
    fn grant(&self, ttl_s: i64) -> BoxFuture<'_, Result<(LeaseId, i64)>> {
        Box::pin(EtcdClient::grant(self, ttl_s))
    }

    fn keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Option<i64>>> {
        Box::pin(EtcdClient::keepalive(self, id))
    }

    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(EtcdClient::revoke(self, id))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(EtcdClient::put(self, key, value, lease))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(EtcdClient::get(self, key))
    }

    fn get_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>>> {
        Box::pin(EtcdClient::get_prefix(self, prefix))
    }

    fn txn<'a>(
        &'a self,
        compare: &'a [Compare],
        success: &'a [TxnOp],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(EtcdClient::txn(self, compare, success))
    }
}
