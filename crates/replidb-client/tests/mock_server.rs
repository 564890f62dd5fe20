//! The client against a tiny in-process axum server that speaks just enough
//! of API.md: a "leader" that stores values, and a "follower" that answers
//! every write with a 307 to the leader.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use replidb_client::{
    Client, ClientError, ClientOptions, Consistency, ReadOptions, Session, Txn, WriteConcern,
    WriteOptions,
};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Leader {
    lsn: AtomicU64,
    data: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    /// `/status` answers 503 this many times before succeeding.
    unavailable: AtomicU32,
    /// Every `min_lsn` a read presented, in order.
    min_lsns: Mutex<Vec<Option<u64>>>,
}

type Shared = Arc<Leader>;

fn headers(lsn: u64) -> [(&'static str, String); 5] {
    [
        ("x-replidb-node", "leader-1".into()),
        ("x-replidb-role", "leader".into()),
        ("x-replidb-epoch", "3".into()),
        ("x-replidb-lsn", lsn.to_string()),
        ("x-replidb-lag-ms", "0".into()),
    ]
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn put_kv(
    State(s): State<Shared>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if body.len() > 16 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", "too big");
    }
    let lsn = s.lsn.fetch_add(1, Ordering::SeqCst) + 1;
    s.data
        .lock()
        .unwrap()
        .insert(key.clone(), (body.to_vec(), lsn));
    let w = q.get("w").cloned().unwrap_or_else(|| "1".into());
    let committed = w != "all";
    let status = if committed {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let body =
        json!({"key": key, "lsn": lsn, "epoch": 3, "acks": 1, "w": w, "committed": committed});
    (status, headers(lsn), Json(body)).into_response()
}

async fn get_kv(
    State(s): State<Shared>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let min_lsn = q.get("min_lsn").and_then(|v| v.parse().ok());
    s.min_lsns.lock().unwrap().push(min_lsn);
    let applied = s.lsn.load(Ordering::SeqCst);
    let Some((value, lsn)) = s.data.lock().unwrap().get(&key).cloned() else {
        return error(StatusCode::NOT_FOUND, "not_found", "key not found");
    };
    let body = match String::from_utf8(value) {
        Ok(text) => json!({"key": key, "value": text, "lsn": lsn, "epoch": 3}),
        Err(e) => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
            json!({"key": key, "value": b64, "encoding": "base64", "lsn": lsn, "epoch": 3})
        }
    };
    (headers(applied), Json(body)).into_response()
}

async fn scan(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let items: Vec<_> = s
        .data
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, (v, lsn))| json!({"key": k, "value": String::from_utf8_lossy(v), "lsn": lsn, "epoch": 3}))
        .collect();
    (headers(s.lsn.load(Ordering::SeqCst)), Json(items)).into_response()
}

async fn txn(State(s): State<Shared>, Json(t): Json<serde_json::Value>) -> Response {
    for cond in t["if"].as_array().into_iter().flatten() {
        let key = cond["key"].as_str().unwrap_or_default();
        let want = cond["lsn"].as_u64().unwrap_or(0);
        let have = s.data.lock().unwrap().get(key).map_or(0, |(_, l)| *l);
        if want != have {
            return error(StatusCode::CONFLICT, "condition_failed", "lsn mismatch");
        }
    }
    let lsn = s.lsn.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"lsn": lsn, "epoch": 3, "acks": 1, "w": 1, "committed": true})).into_response()
}

async fn status(State(s): State<Shared>) -> Response {
    let left = s.unavailable.load(Ordering::SeqCst);
    if left > 0 {
        s.unavailable.store(left - 1, Ordering::SeqCst);
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no lease");
    }
    Json(json!({"id": "leader-1", "role": "leader"})).into_response()
}

async fn health() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"healthy": false, "role": "follower", "error": "disconnected"})),
    )
        .into_response()
}

/// Serve `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn leader() -> (String, Shared) {
    let state = Shared::default();
    let app = Router::new()
        .route("/v1/kv/{key}", put(put_kv).get(get_kv))
        .route("/v1/kv", get(scan))
        .route("/v1/txn", post(txn))
        .route("/status", get(status))
        .route("/health", get(health))
        .with_state(state.clone());
    (serve(app).await, state)
}

/// A follower: every write is a 307 to the same path on `leader`.
async fn follower(leader: String) -> String {
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        let leader = leader.clone();
        async move {
            let loc = format!(
                "{leader}{}",
                uri.path_and_query().map_or("", |p| p.as_str())
            );
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, loc.parse().unwrap());
            (StatusCode::TEMPORARY_REDIRECT, h)
        }
    });
    serve(app).await
}

fn fast() -> ClientOptions {
    ClientOptions {
        retries: 3,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[tokio::test]
async fn put_through_a_follower_follows_the_307_with_its_body() {
    let (leader_url, state) = leader().await;
    let client = Client::with_options(&follower(leader_url).await, fast()).unwrap();
    let w = client
        .put("a/b c", "hello", &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (w.key.as_str(), w.lsn, w.epoch, w.committed),
        ("a/b c", 1, 3, true)
    );
    // The body survived the redirect, and the odd key its encoding.
    let stored = state.data.lock().unwrap().get("a/b c").cloned();
    assert_eq!(stored, Some((b"hello".to_vec(), 1)));
}

#[tokio::test]
async fn redirect_loops_are_cut_short() {
    let client = Client::with_options(&follower_of_self_url().await, fast()).unwrap();
    let err = client.put("x", "v", &WriteOptions::default()).await;
    assert!(
        matches!(err, Err(ClientError::TooManyRedirects { .. })),
        "{err:?}"
    );
}

/// A server whose every answer is a 307 to itself.
async fn follower_of_self_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let loc = format!("{url}/v1/kv/x");
    let app = Router::new().fallback(move || {
        let loc = loc.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, loc)]) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_503_is_retried_until_the_node_answers() {
    let (url, state) = leader().await;
    state.unavailable.store(2, Ordering::SeqCst);
    let client = Client::with_options(&url, fast()).unwrap();
    let s = client.status().await.unwrap();
    assert_eq!(s["role"], "leader");
}

#[tokio::test]
async fn a_503_past_the_retry_budget_is_an_api_error() {
    let (url, state) = leader().await;
    state.unavailable.store(10, Ordering::SeqCst);
    let client = Client::with_options(&url, fast()).unwrap();
    let err = client.status().await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.code(), Some("unavailable"));
    // One try plus three retries.
    assert_eq!(state.unavailable.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::with_options(&format!("http://127.0.0.1:{port}"), fast()).unwrap();
    let err = client.status().await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn json_errors_become_api_errors() {
    let (url, _) = leader().await;
    let client = Client::with_options(&url, fast()).unwrap();
    let err = client
        .put("k", vec![b'x'; 100], &WriteOptions::default())
        .await
        .unwrap_err();
    match err {
        ClientError::Api {
            status,
            code,
            message,
        } => assert_eq!(
            (status, code.as_str(), message.as_str()),
            (413, "value_too_large", "too big")
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn unmet_write_concern_is_an_error_carrying_the_result() {
    let (url, _) = leader().await;
    let client = Client::with_options(&url, fast()).unwrap();
    let opts = WriteOptions {
        w: Some(WriteConcern::All),
        timeout_ms: Some(10),
        ..Default::default()
    };
    match client.put("k", "v", &opts).await {
        Err(ClientError::NotCommitted(w)) => {
            assert_eq!(
                (w.lsn, w.acks, w.w.as_str(), w.committed),
                (1, 1, "all", false)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn binary_values_round_trip_through_base64_and_absent_keys_are_none() {
    let (url, _) = leader().await;
    let client = Client::with_options(&url, fast()).unwrap();
    client
        .put("bin", vec![0u8, 159, 146, 150], &WriteOptions::default())
        .await
        .unwrap();
    let r = client
        .get("bin", &ReadOptions::with(Consistency::Eventual))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.value, vec![0u8, 159, 146, 150]);
    assert_eq!(r.lsn, Some(1));
    assert_eq!(r.node.as_deref(), Some("leader-1"));
    assert_eq!(
        (r.epoch, r.applied_lsn, r.lag_ms),
        (Some(3), Some(1), Some(0))
    );
    assert!(client
        .get("missing", &ReadOptions::default())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn scan_txn_and_health() {
    let (url, _) = leader().await;
    let client = Client::with_options(&url, fast()).unwrap();
    for k in ["u/1", "u/2", "v/1"] {
        client.put(k, k, &WriteOptions::default()).await.unwrap();
    }
    let items = client
        .scan("u/", None, &ReadOptions::default())
        .await
        .unwrap();
    let keys: Vec<_> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["u/1", "u/2"]);
    assert_eq!(items[1].value, b"u/2");

    let ok = client.txn(&Txn::new().when("u/1", 1).put("u/3", "x")).await;
    assert_eq!(ok.unwrap().lsn, 4);
    let conflict = client
        .txn(&Txn::new().when_absent("u/1").delete("u/1"))
        .await;
    assert!(matches!(conflict, Err(ClientError::ConditionFailed { .. })));

    // An unhealthy node's 503 is an answer, not an error.
    assert_eq!(client.health().await.unwrap()["healthy"], false);
}

#[tokio::test]
async fn session_token_grows_and_is_sent_as_min_lsn() {
    let (url, state) = leader().await;
    let session = Session::new(Client::with_options(&url, fast()).unwrap());
    assert_eq!(session.token(), 0);
    session
        .get("nothing", &ReadOptions::default())
        .await
        .unwrap();
    session
        .put("a", "1", &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(session.token(), 1);
    session.get("a", &ReadOptions::default()).await.unwrap();
    // Someone else writes; reading shows a node at LSN 3, which the token
    // adopts (monotonic reads), and a stale caller-supplied min_lsn loses.
    let other = Client::with_options(&url, fast()).unwrap();
    other.put("b", "2", &WriteOptions::default()).await.unwrap();
    other.put("c", "3", &WriteOptions::default()).await.unwrap();
    session.get("a", &ReadOptions::default()).await.unwrap();
    assert_eq!(session.token(), 3);
    let stale = ReadOptions {
        min_lsn: Some(2),
        ..Default::default()
    };
    session.get("a", &stale).await.unwrap();
    session
        .scan("", None, &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        *state.min_lsns.lock().unwrap(),
        vec![None, Some(1), Some(1), Some(3)]
    );
}
