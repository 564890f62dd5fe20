//! A small client for etcd's v3 JSON gateway (etcd 3.4 and newer).
//!
//! Why not the `etcd-client` crate: it is gRPC through tonic and needs
//! `protoc` plus the protobuf include files at build time, which a fresh
//! machine does not have. The JSON gateway offers everything a coordinator
//! needs over plain HTTP: leases, puts, ranges and compare-and-swap
//! transactions. Keys and values travel base64-encoded; 64-bit numbers
//! travel as JSON strings.
//!
//! Endpoints are tried in order; the first that answers is used.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{CoordinatorError, Result};

/// A lease id.
pub type LeaseId = i64;

/// One key as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision that last modified it.
    pub mod_revision: i64,
    /// Attached lease (0 = none).
    pub lease: LeaseId,
}

impl KeyValue {
    /// Put `key` into an in-memory key space at `revision` the way etcd
    /// does: the first put of a key sets its `create_revision`, every put
    /// its `mod_revision` and lease (`None`: no lease). For in-memory etcd
    /// stand-ins (the simulator's, tests').
    pub fn put_into(
        kvs: &mut std::collections::BTreeMap<String, KeyValue>,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        revision: i64,
    ) {
        let create_revision = kvs
            .get(key)
            .map(|kv| kv.create_revision)
            .unwrap_or(revision);
        kvs.insert(
            key.to_string(),
            KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: revision,
                lease: lease.unwrap_or(0),
            },
        );
    }
}

/// A comparison in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key's value equals these bytes.
    ValueEquals(String, Vec<u8>),
    /// The key was last modified at this revision (0 = absent).
    ModRevision(String, i64),
}

/// An operation in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Put `key = value`, optionally under a lease.
    Put(String, Vec<u8>, Option<LeaseId>),
    /// Delete `key`.
    Delete(String),
}

/// The gateway client.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// etcd encodes int64 as strings; accept both.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl EtcdClient {
    /// A client for `endpoints` (e.g. `http://127.0.0.1:2379`, or
    /// `https://…` verified with the PEM CA file `ca`).
    pub fn new(
        endpoints: Vec<String>,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(CoordinatorError::Config("no etcd endpoints given".into()));
        }
        let tls = replidb_tls::client_config_for(ca, None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(timeout)
            .build()
            .map_err(|e| CoordinatorError::Config(format!("http client: {e}")))?;
        Ok(EtcdClient {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http,
        })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let mut last = String::new();
        for ep in &self.endpoints {
            let url = format!("{ep}{path}");
            match self.http.post(&url).json(&body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let v: Value = resp
                        .json()
                        .await
                        .map_err(|e| CoordinatorError::Etcd(format!("{url}: bad answer: {e}")))?;
                    if let Some(msg) = v.get("error").or_else(|| v.get("message")) {
                        if !status.is_success() || v.get("code").is_some() {
                            return Err(CoordinatorError::Etcd(format!(
                                "{url}: {}",
                                msg.as_str().unwrap_or("error")
                            )));
                        }
                    }
                    return Ok(v);
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(CoordinatorError::Unreachable(last))
    }

    /// Grant a lease of `ttl_s` seconds; returns `(id, granted ttl)` (etcd
    /// may raise a TTL to its minimum).
    pub async fn grant(&self, ttl_s: i64) -> Result<(LeaseId, i64)> {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl_s})).await?;
        let id = int(&v["ID"]);
        if id == 0 {
            return Err(CoordinatorError::Etcd(format!("lease grant failed: {v}")));
        }
        Ok((id, int(&v["TTL"])))
    }

    /// Renew a lease; `Ok(None)` if it has expired.
    pub async fn keepalive(&self, id: LeaseId) -> Result<Option<i64>> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        let ttl = int(&v["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Revoke a lease (its keys vanish at once).
    pub async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
            .map(drop)
    }

    /// Put `key = value` (under `lease`, if given).
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<()> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        self.call("/v3/kv/put", body).await.map(drop)
    }

    /// Get one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let v = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(parse_kvs(&v).into_iter().next())
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
            )
            .await?;
        Ok(parse_kvs(&v))
    }

    /// Delete one key.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .await
            .map(drop)
    }

    /// Run `success` if every comparison holds, else nothing; returns
    /// whether it succeeded.
    pub async fn txn(&self, compare: &[Compare], success: &[TxnOp]) -> Result<bool> {
        let cmp: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => json!({"key": b64(k.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
                Compare::ValueEquals(k, v) => json!({"key": b64(k.as_bytes()), "target": "VALUE", "result": "EQUAL", "value": b64(v)}),
                Compare::ModRevision(k, r) => json!({"key": b64(k.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()}),
            })
            .collect();
        let ops: Vec<Value> = success
            .iter()
            .map(|op| match op {
                TxnOp::Put(k, v, lease) => {
                    let mut p = json!({"key": b64(k.as_bytes()), "value": b64(v)});
                    if let Some(l) = lease {
                        p["lease"] = json!(l.to_string());
                    }
                    json!({"request_put": p})
                }
                TxnOp::Delete(k) => json!({"request_delete_range": {"key": b64(k.as_bytes())}}),
            })
            .collect();
        let v = self
            .call("/v3/kv/txn", json!({"compare": cmp, "success": ops}))
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }
}

fn parse_kvs(v: &Value) -> Vec<KeyValue> {
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| KeyValue {
                    key: String::from_utf8_lossy(&unb64(&kv["key"])).into_owned(),
                    value: unb64(&kv["value"]),
                    create_revision: int(&kv["create_revision"]),
                    mod_revision: int(&kv["mod_revision"]),
                    lease: int(&kv["lease"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The smallest key greater than every key with this prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/c/members/"), b"/c/members0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn parses_gateway_answers() {
        let v: Value = serde_json::from_str(
            r#"{"kvs":[{"key":"L2MvbGVhZGVy","create_revision":"2","mod_revision":"3","version":"1","value":"bjE=","lease":"77"}],"count":"1"}"#,
        )
        .unwrap();
        let kvs = parse_kvs(&v);
        assert_eq!(
            kvs,
            vec![KeyValue {
                key: "/c/leader".into(),
                value: b"n1".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                lease: 77
            }]
        );
        assert_eq!(int(&json!("12")), 12);
        assert_eq!(int(&json!(5)), 5);
        assert_eq!(int(&json!(null)), 0);
    }
}
