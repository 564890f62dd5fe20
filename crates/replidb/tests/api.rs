//! Single-node contract tests (API.md, issue "foundation"): the `/v1`
//! key-value API, transactions, validation and error shapes, the seed
//! endpoints on one node, operations endpoints, clean shutdown and the CLI
//! client. Every test starts its own `replidb server` process.

mod common;

use std::time::{Duration, Instant};

use common::{cli, Node};
use serde_json::{json, Value};

/// Assert `resp` is a JSON error `{"error":{"code","message"}}` with
/// `status`; when `code` is given, the code must match. Returns the body.
async fn assert_json_error(
    resp: reqwest::Response,
    status: u16,
    code: Option<&str>,
    what: &str,
) -> Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{what}: status; body {text}");
    assert!(
        ctype.starts_with("application/json"),
        "{what}: content-type {ctype:?}; body {text}"
    );
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let err = &body["error"];
    assert!(
        err["code"].is_string(),
        "{what}: error.code missing: {text}"
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error.message missing: {text}"
    );
    if let Some(code) = code {
        assert_eq!(err["code"], code, "{what}: error code; body {text}");
    }
    body
}

/// Standard base64 (with padding), to compare with `"encoding":"base64"`.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn assert_write_answer(v: &Value, key: Option<&str>, what: &str) -> u64 {
    for field in ["lsn", "epoch", "acks"] {
        assert!(
            v[field].as_u64().is_some(),
            "{what}: {field} missing in {v}"
        );
    }
    assert!(v.get("w").is_some(), "{what}: w missing in {v}");
    assert_eq!(v["committed"], true, "{what}: {v}");
    assert!(v["acks"].as_u64().unwrap() >= 1, "{what}: {v}");
    if let Some(key) = key {
        assert_eq!(v["key"], key, "{what}: {v}");
    }
    v["lsn"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_round_trip() {
    let node = Node::start("n1", &[]).await;
    let http = node.http();

    // PUT with a raw body; the answer is the write's JSON.
    let w1 = node.put("greeting", "hello world").await;
    let lsn1 = assert_write_answer(&w1, Some("greeting"), "first put");
    assert_eq!(w1["committed"], true);

    // GET returns exactly the raw bytes.
    let (status, body) = node.get_raw("greeting", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"hello world");

    // format=json returns the version.
    let v = node.get_json("/v1/kv/greeting?format=json").await;
    assert_eq!(v["key"], "greeting");
    assert_eq!(v["value"], "hello world");
    assert_eq!(v["lsn"], lsn1);
    assert_eq!(v["epoch"], w1["epoch"]);
    assert!(
        v.get("encoding").is_none() || v["encoding"] != "base64",
        "{v}"
    );

    // Overwrite: a later, higher LSN.
    let w2 = node.put("greeting", "bonjour").await;
    let lsn2 = assert_write_answer(&w2, Some("greeting"), "overwrite");
    assert!(lsn2 > lsn1, "LSNs increase: {lsn1} then {lsn2}");
    assert_eq!(
        node.get_raw("greeting", "").await,
        (200, b"bonjour".to_vec())
    );

    // A value that is not UTF-8 round-trips raw, and is base64 in JSON.
    let binary: Vec<u8> = vec![0xff, 0x00, 0xfe, 0x80, b'a', 0xc3, 0x28, 0x01, 0x02];
    node.put("bin", binary.clone()).await;
    assert_eq!(node.get_raw("bin", "").await, (200, binary.clone()));
    let v = node.get_json("/v1/kv/bin?format=json").await;
    assert_eq!(v["encoding"], "base64", "{v}");
    assert_eq!(v["value"], base64(&binary), "{v}");

    // The empty value is a value, not an absence.
    node.put("empty", Vec::<u8>::new()).await;
    assert_eq!(node.get_raw("empty", "").await, (200, Vec::new()));

    // DELETE an existing key: existed:true, then GET is a 404 JSON error.
    let r = http
        .delete(node.at("/v1/kv/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_write_answer(&d, Some("greeting"), "delete");
    assert_eq!(d["existed"], true, "{d}");
    assert!(d["lsn"].as_u64().unwrap() > lsn2);
    let r = http.get(node.at("/v1/kv/greeting")).send().await.unwrap();
    assert_json_error(r, 404, Some("not_found"), "GET after delete").await;
    let r = http
        .get(node.at("/v1/kv/greeting?format=json"))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 404, Some("not_found"), "GET json after delete").await;

    // DELETE of an absent key is idempotent: 200, existed:false.
    for _ in 0..2 {
        let r = http
            .delete(node.at("/v1/kv/never-written"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let d: Value = r.json().await.unwrap();
        assert_eq!(d["existed"], false, "{d}");
        assert_eq!(d["committed"], true, "{d}");
    }

    // Keys with slashes and escapes are keys like any other.
    node.put("dir/sub/leaf", "deep").await;
    assert_eq!(
        node.get_raw("dir/sub/leaf", "").await,
        (200, b"deep".to_vec())
    );
    node.put("sp%20ace", "spaced").await;
    assert_eq!(
        node.get_raw("sp%20ace", "").await,
        (200, b"spaced".to_vec())
    );
    let v = node.get_json("/v1/kv/sp%20ace?format=json").await;
    assert_eq!(v["key"], "sp ace", "percent-decoded key: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_is_ordered_and_honours_prefix_and_limit() {
    let node = Node::start("n1", &[]).await;
    // Written out of order on purpose.
    let keys = [
        "user/c", "user/a", "other/x", "user/b", "userz", "user/aa", "a-first",
    ];
    for (i, k) in keys.iter().enumerate() {
        node.put(k, format!("v{i}")).await;
    }
    let all = node.get_json("/v1/kv?prefix=").await;
    let all_keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(all_keys, sorted, "scan of everything is in key order");
    for e in all.as_array().unwrap() {
        for f in ["key", "value", "lsn", "epoch"] {
            assert!(e.get(f).is_some(), "scan entry lacks {f}: {e}");
        }
        let i = keys.iter().position(|k| *k == e["key"]).unwrap();
        assert_eq!(e["value"], format!("v{i}"));
    }
    // Without any parameter: everything too.
    assert_eq!(node.get_json("/v1/kv").await, all);

    let users = node.get_json("/v1/kv?prefix=user/").await;
    let got: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["user/a", "user/aa", "user/b", "user/c"]);

    let first2 = node.get_json("/v1/kv?prefix=user/&limit=2").await;
    let got: Vec<&str> = first2
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["user/a", "user/aa"]);

    let none = node.get_json("/v1/kv?prefix=nothing-here").await;
    assert_eq!(none, json!([]));

    // Deleted keys disappear from scans.
    node.http()
        .delete(node.at("/v1/kv/user/aa"))
        .send()
        .await
        .unwrap();
    let users = node.get_json("/v1/kv?prefix=user/").await;
    let got: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["user/a", "user/b", "user/c"]);

    for bad in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999",
    ] {
        let r = node
            .http()
            .get(node.at(&format!("/v1/kv?{bad}")))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("scan {bad}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_applies_all_or_nothing_under_conditions() {
    let node = Node::start("n1", &[]).await;
    let http = node.http();
    let a = node.put("acct/a", "100").await["lsn"].as_u64().unwrap();

    // Success: condition on an existing version and on an absent key.
    let body = json!({
        "if": [{"key": "acct/a", "lsn": a}, {"key": "acct/b", "lsn": 0}],
        "ops": [
            {"op": "put", "key": "acct/a", "value": "60"},
            {"op": "put", "key": "acct/b", "value": "40"},
            {"op": "delete", "key": "acct/none"},
        ]
    });
    let r = http
        .post(node.at("/v1/txn"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["committed"], true, "{t}");
    let txn_lsn = t["lsn"].as_u64().unwrap();
    assert!(txn_lsn > a);
    // Both puts carry the transaction's single LSN.
    let va = node.get_json("/v1/kv/acct/a?format=json").await;
    let vb = node.get_json("/v1/kv/acct/b?format=json").await;
    assert_eq!(
        (va["value"].as_str(), va["lsn"].as_u64()),
        (Some("60"), Some(txn_lsn))
    );
    assert_eq!(
        (vb["value"].as_str(), vb["lsn"].as_u64()),
        (Some("40"), Some(txn_lsn))
    );

    // Failure: the stale condition (old LSN of acct/a) fails → 409, and
    // none of the ops is applied, not even the first.
    let before = node.status().await["applied_lsn"].as_u64().unwrap();
    let body = json!({
        "if": [{"key": "acct/a", "lsn": a}],
        "ops": [
            {"op": "put", "key": "acct/c", "value": "should not exist"},
            {"op": "delete", "key": "acct/b"},
        ]
    });
    let r = http
        .post(node.at("/v1/txn"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_json_error(r, 409, None, "txn with failed condition").await;
    let r = http.get(node.at("/v1/kv/acct/c")).send().await.unwrap();
    assert_eq!(r.status(), 404, "op of a failed txn must not be applied");
    assert_eq!(node.get_raw("acct/b", "").await, (200, b"40".to_vec()));
    assert_eq!(
        node.status().await["applied_lsn"].as_u64().unwrap(),
        before,
        "a failed transaction writes nothing"
    );

    // "lsn":0 means absent: fails for an existing key.
    let body = json!({"if": [{"key": "acct/b", "lsn": 0}], "ops": [{"op": "put", "key": "acct/b", "value": "x"}]});
    let r = http
        .post(node.at("/v1/txn"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_json_error(r, 409, None, "lsn:0 on an existing key").await;
    assert_eq!(node.get_raw("acct/b", "").await, (200, b"40".to_vec()));

    // A txn without conditions, with a base64 value.
    let body = json!({"ops": [{"op": "put", "key": "bin", "value": "/wD+", "encoding": "base64"}]});
    let r = http
        .post(node.at("/v1/txn"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(node.get_raw("bin", "").await, (200, vec![0xff, 0x00, 0xfe]));

    // Malformed transactions are 400s.
    for (what, bad) in [
        ("no ops", json!({"ops": []})),
        (
            "unknown op",
            json!({"ops": [{"op": "frobnicate", "key": "k"}]}),
        ),
        (
            "put without value",
            json!({"ops": [{"op": "put", "key": "k"}]}),
        ),
        (
            "unknown field",
            json!({"ops": [{"op": "put", "key": "k", "value": "v"}], "iff": []}),
        ),
        (
            "condition lsn not a number",
            json!({"if": [{"key": "k", "lsn": "x"}], "ops": [{"op": "delete", "key": "k"}]}),
        ),
        (
            "bad base64",
            json!({"ops": [{"op": "put", "key": "k", "value": "!!!", "encoding": "base64"}]}),
        ),
        (
            "key too long",
            json!({"ops": [{"op": "put", "key": "k".repeat(1025), "value": "v"}]}),
        ),
    ] {
        let r = http
            .post(node.at("/v1/txn"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("txn {what}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replidb_headers_on_v1_and_seed_responses() {
    let node = Node::start("n1", &[]).await;
    let http = node.http();
    let w = node.put("h", "v").await;
    let lsn = w["lsn"].as_u64().unwrap();

    let check = |r: &reqwest::Response, what: &str, want_lsn: Option<u64>| {
        let h = r.headers();
        let get = |n: &str| {
            h.get(n)
                .unwrap_or_else(|| panic!("{what}: header {n} missing; headers {h:?}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(get("x-replidb-node"), "n1", "{what}");
        assert_eq!(get("x-replidb-role"), "leader", "{what}");
        assert!(
            get("x-replidb-epoch").parse::<u64>().unwrap() >= 1,
            "{what}"
        );
        let got_lsn: u64 = get("x-replidb-lsn").parse().unwrap();
        if let Some(want) = want_lsn {
            assert_eq!(got_lsn, want, "{what}: X-Replidb-Lsn");
        }
        assert_eq!(get("x-replidb-lag-ms"), "0", "{what}: lag on the leader");
    };

    let r = http.get(node.at("/v1/kv/h")).send().await.unwrap();
    check(&r, "GET", Some(lsn));
    let r = http.get(node.at("/v1/kv/missing")).send().await.unwrap();
    check(&r, "GET 404", Some(lsn));
    let r = http.get(node.at("/v1/kv?prefix=")).send().await.unwrap();
    check(&r, "scan", Some(lsn));
    let r = http
        .put(node.at("/v1/kv/h2"))
        .body("x")
        .send()
        .await
        .unwrap();
    check(&r, "PUT", Some(lsn + 1));
    let r = http.delete(node.at("/v1/kv/h2")).send().await.unwrap();
    check(&r, "DELETE", Some(lsn + 2));
    let r = http
        .post(node.at("/v1/txn"))
        .json(&json!({"ops": [{"op": "put", "key": "t", "value": "1"}]}))
        .send()
        .await
        .unwrap();
    check(&r, "txn", Some(lsn + 3));
    let r = http
        .put(node.at("/v1/kv/h?w=banana"))
        .body("x")
        .send()
        .await
        .unwrap();
    check(&r, "PUT 400", None);
    let r = http
        .post(node.at("/write"))
        .json(&json!({"key": "s", "value": "1"}))
        .send()
        .await
        .unwrap();
    check(&r, "/write", Some(lsn + 4));
    let r = http.get(node.at("/read?key=s")).send().await.unwrap();
    check(&r, "/read", Some(lsn + 4));
    let r = http
        .post(node.at("/write-with-quorum"))
        .json(&json!({"key": "s", "value": "2", "w": 1}))
        .send()
        .await
        .unwrap();
    check(&r, "/write-with-quorum", Some(lsn + 5));
    let r = http
        .get(node.at("/read-with-repair?key=s"))
        .send()
        .await
        .unwrap();
    check(&r, "/read-with-repair", None);

    // The request-side token header is honoured like min_lsn: satisfied
    // at once here, and a malformed one is a 400.
    let r = http
        .get(node.at("/v1/kv/h"))
        .header("X-Replidb-Min-Lsn", lsn.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(node.at("/v1/kv/h"))
        .header("X-Replidb-Min-Lsn", "abc")
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, None, "malformed X-Replidb-Min-Lsn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_endpoints_on_a_single_node() {
    let node = Node::start("n1", &[]).await;
    let http = node.http();
    let r = http
        .post(node.at("/write"))
        .json(&json!({"key": "s1", "value": "one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let w: Value = r.json().await.unwrap();
    assert!(w["lsn"].as_u64().is_some(), "{w}");
    let v = node.get_json("/read?key=s1").await;
    assert_eq!(v["value"], "one", "{v}");
    assert_eq!(v["lsn"], w["lsn"], "{v}");
    let r = http.get(node.at("/read?key=absent")).send().await.unwrap();
    assert_json_error(r, 404, Some("not_found"), "/read of an absent key").await;
    let r = http
        .get(node.at("/follower-read?key=s1&replica=1"))
        .send()
        .await
        .unwrap();
    // Not `not_found`, which means an absent key to clients (the CLI said
    // "key not found"); replica numbers start at 1.
    assert_json_error(
        r,
        404,
        Some("no_such_follower"),
        "/follower-read without followers",
    )
    .await;
    let r = http
        .get(node.at("/follower-read?key=s1&replica=0"))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, Some("invalid_parameter"), "replica=0").await;
    let v = node.get_json("/read-with-repair?key=s1").await;
    assert_eq!(v["value"], "one", "{v}");
    assert_eq!(v["repaired"], json!([]), "{v}");
    let r = http
        .post(node.at("/write-with-quorum"))
        .json(&json!({"key": "s2", "value": "two", "w": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!(q["committed"], true, "{q}");
    // Malformed seed bodies are 400 JSON errors.
    for (path, bad) in [
        ("/write", "{not json"),
        ("/write", "{\"key\": \"k\"}"),
        ("/write", "[]"),
        ("/write", ""),
        ("/write-with-quorum", "{\"key\":\"k\",\"value\":\"v\"}"),
        (
            "/write-with-quorum",
            "{\"key\":\"k\",\"value\":\"v\",\"w\":\"banana\"}",
        ),
    ] {
        let r = http
            .post(node.at(path))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("POST {path} {bad:?}")).await;
    }
    for path in [
        "/read",
        "/read?key=",
        "/follower-read?replica=1",
        "/read-with-repair",
    ] {
        let r = http.get(node.at(path)).send().await.unwrap();
        let s = r.status().as_u16();
        assert!((400..500).contains(&s), "GET {path}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_a_json_4xx_never_a_500() {
    let node = Node::start("n1", &["--max-value-bytes", "1000"]).await;
    let http = node.http();

    // Keys: 1024 bytes is the largest allowed, 1025 is a 400.
    let k1024 = "k".repeat(1024);
    let k1025 = "k".repeat(1025);
    node.put(&k1024, "ok").await;
    assert_eq!(node.get_raw(&k1024, "").await, (200, b"ok".to_vec()));
    let r = http
        .put(node.at(&format!("/v1/kv/{k1025}")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, None, "PUT 1025-byte key").await;
    let r = http
        .get(node.at(&format!("/v1/kv/{k1025}")))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, None, "GET 1025-byte key").await;
    let r = http
        .delete(node.at(&format!("/v1/kv/{k1025}")))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, None, "DELETE 1025-byte key").await;
    let r = http
        .post(node.at("/write"))
        .json(&json!({"key": k1025, "value": "v"}))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, None, "/write 1025-byte key").await;
    // A key that is not UTF-8 (percent-encoded 0xFF).
    let r = http
        .put(node.at("/v1/kv/bad%FFkey"))
        .body("v")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert!(s == 400, "non-UTF-8 key: {s} {}", r.text().await.unwrap());

    // Values: exactly the limit is fine, one byte more is a 413.
    node.put("big-ok", vec![b'x'; 1000]).await;
    let r = http
        .put(node.at("/v1/kv/too-big"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_json_error(
        r,
        413,
        Some("value_too_large"),
        "PUT over --max-value-bytes",
    )
    .await;
    let r = http
        .put(node.at("/v1/kv/much-too-big"))
        .body(vec![b'x'; 3 << 20])
        .send()
        .await;
    // The server may answer before reading the whole body (and then close
    // the connection); if we get an answer it must be the 413.
    if let Ok(r) = r {
        // The body was not read to its end, so the connection cannot be
        // reused; the answer must say so or the client's next request on
        // the pooled connection fails (a CI flake before this header).
        assert_eq!(
            r.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "a 413 closes the connection"
        );
        assert_json_error(r, 413, Some("value_too_large"), "PUT of 3 MiB").await;
    }
    let r = http
        .post(node.at("/write"))
        .json(&json!({"key": "tb", "value": "x".repeat(1001)}))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 413, Some("value_too_large"), "/write over the limit").await;
    let r = http
        .post(node.at("/v1/txn"))
        .json(&json!({"ops": [{"op": "put", "key": "tb", "value": "x".repeat(1001)}]}))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 413, Some("value_too_large"), "txn value over the limit").await;
    for k in ["too-big", "much-too-big", "tb"] {
        assert_eq!(
            node.get_raw(k, "").await.0,
            404,
            "{k} must not have been written"
        );
    }

    // Malformed JSON bodies.
    for (path, body) in [
        ("/v1/txn", "{"),
        ("/v1/txn", "not json at all"),
        ("/v1/txn", "{\"ops\": 5}"),
        ("/v1/txn", ""),
        ("/write", "{\"key\": 1, \"value\": \"v\"}"),
        ("/write", "\u{0}\u{1}garbage"),
    ] {
        let r = http
            .post(node.at(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("POST {path} {body:?}")).await;
    }

    // Bad parameter values and unknown parameter names.
    let bad_writes = [
        "w=banana",
        "w=0",
        "w=",
        "w=-1",
        "timeout_ms=-1",
        "timeout_ms=abc",
        "timeout_ms=99999999999999999999",
        "consistancy=strong",
        "W=1",
        // Found by trying it as a new user: the last of two values won.
        "w=1&w=all",
    ];
    for q in bad_writes {
        let r = http
            .put(node.at(&format!("/v1/kv/p?{q}")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("PUT ?{q}")).await;
        let r = http
            .delete(node.at(&format!("/v1/kv/p?{q}")))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("DELETE ?{q}")).await;
        let r = http
            .post(node.at(&format!("/v1/txn?{q}")))
            .json(&json!({"ops": [{"op": "put", "key": "p", "value": "v"}]}))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("txn ?{q}")).await;
    }
    assert_eq!(
        node.get_raw("p", "").await.0,
        404,
        "no rejected write was applied"
    );
    let bad_reads = [
        "consistency=weird",
        "consistency=",
        "consistency=bounded",
        "consistency=bounded&max_staleness_ms=soon",
        "min_lsn=-1",
        "min_lsn=x",
        "wait_ms=-5",
        "fallback=maybe",
        "format=xml",
        "unknown=1",
        "w=1",
        "consistency=strong&consistency=eventual",
        // A staleness bound beside another level used to be ignored.
        "consistency=eventual&max_staleness_ms=100",
        "consistency=strong&max_staleness_ms=100",
        // Another topology's parameters, which this node would ignore.
        "r=all",
        "min_version=n1:5",
    ];
    node.put("r", "v").await;
    // Alone, a staleness bound asks for a bounded read.
    assert_eq!(
        node.get_raw("r", "max_staleness_ms=100").await,
        (200, b"v".to_vec())
    );
    for q in bad_reads {
        let r = http
            .get(node.at(&format!("/v1/kv/r?{q}")))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("GET ?{q}")).await;
        let r = http
            .get(node.at(&format!("/v1/kv?prefix=r&{q}")))
            .send()
            .await
            .unwrap();
        assert_json_error(r, 400, None, &format!("scan ?{q}")).await;
    }

    // Found by a new user: `/status?foo=1` and `/metrics?foo=1` answered
    // as if the parameter meant something.
    for path in ["/status?pretty=1", "/metrics?name=x"] {
        let r = http.get(node.at(path)).send().await.unwrap();
        assert_json_error(r, 400, Some("unknown_parameter"), path).await;
    }

    // Unknown routes are JSON 404s, wrong methods are 4xx.
    let r = http.get(node.at("/v2/nothing")).send().await.unwrap();
    assert_json_error(r, 404, None, "unknown route").await;
    let r = http
        .post(node.at("/v1/kv/r"))
        .body("v")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert!((400..500).contains(&s), "POST /v1/kv/r: {s}");

    // After all that, the node is alive and well.
    assert_eq!(node.get_raw("r", "").await, (200, b"v".to_vec()));
    let r = http.get(node.at("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics() {
    let node = Node::start("n1", &[]).await;
    node.put("m", "1").await;
    node.get_raw("m", "").await;

    let r = node.http().get(node.at("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    for f in [
        "healthy",
        "role",
        "lag_seconds",
        "last_sync",
        "error",
        "outbox_drift",
    ] {
        assert!(h.get(f).is_some(), "/health lacks {f}: {h}");
    }
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["role"], "leader", "{h}");

    let s = node.status().await;
    for f in [
        "id",
        "role",
        "epoch",
        "leader",
        "last_lsn",
        "flush_lsn",
        "applied_lsn",
        "commit_lsn",
        "changes_applied",
        "connected",
        "error_count",
        "last_error",
        "fsync",
        "followers",
    ] {
        assert!(s.get(f).is_some(), "/status lacks {f}: {s}");
    }
    assert_eq!(s["id"], "n1");
    assert_eq!(s["role"], "leader");
    assert_eq!(s["fsync"], "always", "fsync defaults to always: {s}");
    assert_eq!(s["last_lsn"], 1, "{s}");
    assert_eq!(s["flush_lsn"], 1, "{s}");
    assert_eq!(s["applied_lsn"], 1, "{s}");
    assert_eq!(s["commit_lsn"], 1, "a lone leader is its own majority: {s}");
    assert_eq!(s["followers"], json!([]), "{s}");
    assert!(s["epoch"].as_u64().unwrap() >= 1, "{s}");

    let r = node.http().get(node.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for name in [
        "replidb_wal_fsync_duration_seconds",
        "replidb_http_requests_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("replidb_http_requests_total{") && l.contains("status=\"200\"")),
        "replidb_http_requests_total has a status label:\n{text}"
    );

    // fsync=never is reported loudly.
    let lax = Node::start("n9", &["--fsync", "never"]).await;
    let fsync = lax.status().await["fsync"].as_str().unwrap().to_string();
    assert!(
        fsync.starts_with("never"),
        "fsync=never is reported: {fsync:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_data_survives() {
    let mut node = Node::start("n1", &[]).await;
    let mut last = 0;
    for i in 0..50 {
        last = node
            .put(&format!("keep/{i:02}"), format!("value-{i}"))
            .await["lsn"]
            .as_u64()
            .unwrap();
    }
    node.http()
        .delete(node.at("/v1/kv/keep/07"))
        .send()
        .await
        .unwrap();
    last += 1;

    let started = Instant::now();
    let status = node.stop().await;
    let took = started.elapsed();
    assert!(status.success(), "SIGTERM exit status: {status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    node.restart().await;
    let s = node.status().await;
    assert_eq!(s["applied_lsn"], last, "{s}");
    assert_eq!(s["last_lsn"], last, "{s}");
    for i in 0..50 {
        let (status, body) = node.get_raw(&format!("keep/{i:02}"), "").await;
        if i == 7 {
            assert_eq!(status, 404, "deleted key stays deleted");
        } else {
            assert_eq!(
                (status, body),
                (200, format!("value-{i}").into_bytes()),
                "keep/{i:02}"
            );
        }
    }
    // The log continues without a gap.
    let w = node.put("after-restart", "x").await;
    assert_eq!(w["lsn"], last + 1, "{w}");

    // Shutdown is prompt also with an idle keep-alive connection open.
    let started = Instant::now();
    assert!(node.stop().await.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_commands_and_exit_codes() {
    let node = Node::start("n1", &[]).await;
    let url = node.url();
    let u = url.as_str();

    let (code, out, err) = cli(&["--url", u, "put", "cli/a", "alpha"]);
    assert_eq!(code, 0, "put: {err}");
    let w: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("put prints JSON ({e}): {out}"));
    assert_eq!(w["committed"], true, "{w}");
    assert_eq!(w["key"], "cli/a");
    cli(&["--url", u, "put", "cli/b", "beta"]);
    cli(&["--url", u, "put", "other", "gamma"]);

    // Value as raw bytes (no newline when stdout is not a terminal);
    // `--url` after the subcommand works too.
    let (code, out, err) = cli(&["--url", u, "get", "cli/a"]);
    assert_eq!((code, out.as_str()), (0, "alpha"), "get: {err}");
    let (code, out, _) = cli(&["get", "cli/b", "--url", u]);
    assert_eq!((code, out.as_str()), (0, "beta"));
    // Read options are accepted.
    let (code, out, err) = cli(&["--url", u, "get", "cli/a", "--consistency", "leader"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "alpha"),
        "get --consistency: {err}"
    );

    let (code, out, err) = cli(&["--url", u, "scan", "cli/"]);
    assert_eq!(code, 0, "scan: {err}");
    assert_eq!(out, "cli/a\talpha\ncli/b\tbeta\n");

    let (code, out, err) = cli(&["--url", u, "status"]);
    assert_eq!(code, 0, "status: {err}");
    let s: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status prints JSON ({e}): {out}"));
    assert_eq!(s["id"], "n1");
    assert_eq!(s["role"], "leader");

    let (code, out, err) = cli(&["--url", u, "del", "cli/a"]);
    assert_eq!(code, 0, "del: {err}");
    let d: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(d["existed"], true, "{d}");
    let (code, out, _) = cli(&["--url", u, "del", "cli/a"]);
    assert_eq!(code, 0, "del of an absent key succeeds");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["existed"],
        false
    );

    // Runtime errors: exit 1 and one line on stderr.
    let one_line = |err: &str, what: &str| {
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: stderr is one line: {err:?}"
        );
        assert!(!err.trim().is_empty(), "{what}: stderr says why");
    };
    let (code, out, err) = cli(&["--url", u, "get", "cli/a"]);
    assert_eq!(code, 1, "get of a missing key: out {out:?} err {err:?}");
    assert!(
        out.is_empty(),
        "nothing on stdout for a missing key: {out:?}"
    );
    one_line(&err, "get missing");
    let (code, _, err) = cli(&["--url", "http://127.0.0.1:1", "get", "x"]);
    assert_eq!(code, 1, "unreachable node: {err}");
    one_line(&err, "unreachable");
    // A server-side refusal (key too long) is a runtime error too.
    let long = "k".repeat(1025);
    let (code, _, err) = cli(&["--url", u, "put", &long, "v"]);
    assert_ne!(code, 0, "put of a too-long key fails: {err}");
    one_line(&err, "key too long");

    // Usage errors: exit 2 and one line on stderr.
    for args in [
        vec!["--url", u, "get", "--bogus", "x"],
        vec!["--url", u, "put", "only-key"],
        vec!["--url", u, "frobnicate"],
        vec!["--url", "not a url", "get", "x"],
        vec!["--url", u, "get", "x", "--consistency", "weird"],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        one_line(&err, &format!("{args:?}"));
    }
}

/// Compare-and-set through `/v1/txn` conditions is atomic under concurrency
/// (conditions are checked against writes earlier in the same group
/// commit): concurrent increments of one counter never lose an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_set_loses_no_increment() {
    const CLIENTS: usize = 8;
    const INCREMENTS: usize = 25;
    let node = Node::start("n1", &[]).await;
    node.put("counter", "0").await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = node.url();
            tokio::spawn(async move {
                let http = common::http();
                let (mut done, mut conflicts) = (0, 0);
                while done < INCREMENTS {
                    let cur: Value = http
                        .get(format!("{url}/v1/kv/counter?format=json"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let n: u64 = cur["value"].as_str().unwrap().parse().unwrap();
                    let body = json!({
                        "if": [{"key": "counter", "lsn": cur["lsn"]}],
                        "ops": [{"op": "put", "key": "counter", "value": (n + 1).to_string()}]
                    });
                    let r = http
                        .post(format!("{url}/v1/txn"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        200 => done += 1,
                        409 => conflicts += 1,
                        s => panic!("txn answered {s}: {}", r.text().await.unwrap()),
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("client");
    }
    println!("{conflicts} conflicts");
    let (status, body) = node.get_raw("counter", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        (CLIENTS * INCREMENTS).to_string(),
        "every successful compare-and-set is one increment"
    );
}
