//! The `etcd` host and the nodes' client for it, over turmoil's TCP.
//!
//! The coordinator reaches the simulated etcd the way it reaches the real
//! one: over the (simulated) network, one request at a time with a 500 ms
//! timeout. A partition between a node and the `etcd` host therefore cuts
//! that node off from its lease exactly as in reality: its keep-alives time
//! out, its write deadline passes, and etcd expires its lease on etcd's own
//! clock.
//!
//! The wire is one line of JSON per request and per answer
//! ([`Request`]/[`Response`]) on a long-lived connection. A partition drops
//! segments silently, so the client drops its connection after any error or
//! timeout and reconnects for the next request; a request whose answer was
//! lost may still have been applied, as with any remote store.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_coordinator::etcd::{Compare, KeyValue, LeaseId, TxnOp};
use replidb_coordinator::{BoxFuture, CoordStore, CoordinatorError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use turmoil::net::{TcpListener, TcpStream};

use crate::cluster::{EventKind, Shared};
use crate::coordinator::{EtcdState, Expired, Request, Response};

/// Host name of the simulated etcd.
pub const ETCD: &str = "etcd";
/// Port it listens on.
pub const ETCD_PORT: u16 = 2379;
/// How long one request may take (the real client's HTTP timeout).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest request line the host accepts.
const MAX_LINE: usize = 1 << 20;

/// The `etcd` host's software: answer requests against `state`, which
/// outlives the host (etcd is never crashed, but its state must not depend
/// on that).
pub(crate) async fn etcd_host(
    shared: Arc<Shared>,
    state: Arc<Mutex<EtcdState>>,
) -> turmoil::Result {
    let listener = TcpListener::bind(("0.0.0.0", ETCD_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(shared.clone(), state.clone(), stream));
    }
}

async fn serve(shared: Arc<Shared>, state: Arc<Mutex<EtcdState>>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => return,
            Ok(_) => {}
        }
        // A line cut by a partition is not JSON: drop the connection.
        let Ok(req) = serde_json::from_str::<Request>(&line) else {
            return;
        };
        let now = shared.now();
        let resp = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            for e in st.expire(now) {
                story_of_expiry(&shared, &e);
            }
            let revoking = match &req {
                Request::Revoke(id) => Some(st.keys_under(*id)),
                _ => None,
            };
            let resp = st.apply(req, now);
            if let (Some(keys), Response::Done) = (revoking, &resp) {
                story_of_revoke(&shared, &keys);
            }
            resp
        };
        let Ok(mut out) = serde_json::to_vec(&resp) else {
            return;
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// "lease of n1 expired", stamped when it was due.
fn story_of_expiry(shared: &Shared, e: &Expired) {
    let node = e
        .keys
        .iter()
        .find_map(|k| k.split_once("/members/").map(|(_, id)| id.to_string()));
    let Some(node) = node else {
        return;
    };
    let leader = e.keys.iter().any(|k| k.ends_with("/leader"));
    shared.event_at(e.at_ms, EventKind::LeaseExpired { node, leader });
}

/// "lease of n1 revoked": a lease that carried a node's member record.
fn story_of_revoke(shared: &Shared, keys: &[String]) {
    let Some(node) = keys
        .iter()
        .find_map(|k| k.split_once("/members/").map(|(_, id)| id.to_string()))
    else {
        return;
    };
    let leader = keys.iter().any(|k| k.ends_with("/leader"));
    shared.event(EventKind::LeaseRevoked { node, leader });
}

type Conn = BufReader<TcpStream>;

/// A node's client for the `etcd` host: the simulation's [`CoordStore`].
pub struct SimEtcdClient {
    addr: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Default for SimEtcdClient {
    fn default() -> Self {
        SimEtcdClient::new()
    }
}

impl SimEtcdClient {
    /// A client of `etcd:2379`.
    pub fn new() -> Self {
        SimEtcdClient {
            addr: format!("{ETCD}:{ETCD_PORT}"),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn call(&self, req: Request) -> replidb_coordinator::Result<Response> {
        let mut slot = self.conn.lock().await;
        let outcome =
            tokio::time::timeout(CALL_TIMEOUT, exchange(&mut slot, &self.addr, &req)).await;
        match outcome {
            Ok(Ok(Response::Error(msg))) => Err(CoordinatorError::Etcd(msg)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                *slot = None;
                Err(CoordinatorError::Unreachable(format!("{}: {e}", self.addr)))
            }
            Err(_) => {
                *slot = None;
                Err(CoordinatorError::Unreachable(format!(
                    "{}: no answer in {}ms",
                    self.addr,
                    CALL_TIMEOUT.as_millis()
                )))
            }
        }
    }
}

async fn exchange(slot: &mut Option<Conn>, addr: &str, req: &Request) -> io::Result<Response> {
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(BufReader::new(TcpStream::connect(addr).await?)),
    };
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    conn.get_mut().write_all(&out).await?;
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "etcd closed the connection",
        ));
    }
    Ok(serde_json::from_str(&line)?)
}

fn unexpected(r: Response) -> CoordinatorError {
    CoordinatorError::Etcd(format!("unexpected answer {r:?}"))
}

impl CoordStore for SimEtcdClient {
    fn grant(&self, ttl_s: i64) -> BoxFuture<'_, replidb_coordinator::Result<(LeaseId, i64)>> {
        Box::pin(async move {
            match self.call(Request::Grant(ttl_s)).await? {
                Response::Granted(id, ttl) => Ok((id, ttl)),
                r => Err(unexpected(r)),
            }
        })
    }

    fn keepalive(&self, id: LeaseId) -> BoxFuture<'_, replidb_coordinator::Result<Option<i64>>> {
        Box::pin(async move {
            match self.call(Request::KeepAlive(id)).await? {
                Response::KeptAlive(ttl) => Ok(ttl),
                r => Err(unexpected(r)),
            }
        })
    }

    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, replidb_coordinator::Result<()>> {
        Box::pin(async move {
            match self.call(Request::Revoke(id)).await? {
                Response::Done => Ok(()),
                r => Err(unexpected(r)),
            }
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, replidb_coordinator::Result<()>> {
        Box::pin(async move {
            match self
                .call(Request::Put(key.to_string(), value.to_vec(), lease))
                .await?
            {
                Response::Done => Ok(()),
                r => Err(unexpected(r)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, replidb_coordinator::Result<Option<KeyValue>>> {
        Box::pin(async move {
            match self.call(Request::Get(key.to_string())).await? {
                Response::Value(v) => Ok(v),
                r => Err(unexpected(r)),
            }
        })
    }

    fn get_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, replidb_coordinator::Result<Vec<KeyValue>>> {
        Box::pin(async move {
            match self.call(Request::GetPrefix(prefix.to_string())).await? {
                Response::Values(v) => Ok(v),
                r => Err(unexpected(r)),
            }
        })
    }

    fn txn<'a>(
        &'a self,
        compare: &'a [Compare],
        success: &'a [TxnOp],
    ) -> BoxFuture<'a, replidb_coordinator::Result<bool>> {
        Box::pin(async move {
            match self
                .call(Request::Txn(compare.to_vec(), success.to_vec()))
                .await?
            {
                Response::Txn(ok) => Ok(ok),
                r => Err(unexpected(r)),
            }
        })
    }
}
