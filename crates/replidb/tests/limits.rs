//! Listener limits end to end: a node cannot be exhausted by a client that
//! opens connections and never finishes a request. Raw sockets, because
//! the point is to misbehave as an HTTP library would not.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{wait_until, Node};

fn connect(url: &str) -> TcpStream {
    let s = TcpStream::connect(url.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Everything the server sends until it closes (or the read times out).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_at_once_and_slots_come_back() {
    let node = Node::start("n1", &["--max-connections", "8"]).await;
    let url = node.url();
    let held = tokio::task::spawn_blocking(move || {
        // Open connections that never send a byte until one is refused.
        let mut held = Vec::new();
        let refused = loop {
            let mut s = connect(&url);
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => break String::from_utf8_lossy(&buf[..n]).into_owned(),
                _ => held.push(s),
            }
            assert!(held.len() <= 8, "more than --max-connections were accepted");
        };
        // The harness's own keep-alive connection (from waiting for the
        // node to start) may hold a slot too.
        assert!(
            (7..=8).contains(&held.len()),
            "{} held: --max-connections are served, no more, no fewer",
            held.len()
        );
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("too_many_connections"), "{refused}");
        held
    })
    .await
    .unwrap();
    drop(held);
    // The slots are free again once the idle connections are gone.
    wait_until("a new request is served", Duration::from_secs(10), async || {
        matches!(node.http().get(node.at("/health")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn a_request_head_that_trickles_is_cut_off_and_an_oversized_one_refused() {
    let node = Node::start(
        "n1",
        &["--http-header-timeout", "1s", "--max-header-bytes", "8192"],
    )
    .await;
    let url = node.url();
    tokio::task::spawn_blocking(move || {
        // Slowloris: half a request head, then silence.
        let mut s = connect(&url);
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
            .unwrap();
        let started = Instant::now();
        let _ = read_all(&mut s);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the connection was held {took:?}"
        );

        // An idle keep-alive connection is closed after the same time.
        let mut s = connect(&url);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let answer = read_all(&mut s);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A head larger than --max-header-bytes.
        let mut s = connect(&url);
        let big = "x".repeat(20_000);
        let _ = s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        );
        let answer = read_all(&mut s);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    })
    .await
    .unwrap();
    // The node still serves.
    assert_eq!(node.status().await["id"], "n1");
}

#[test]
fn bad_limits_are_refused_at_start() {
    for (flag, value, needle) in [
        ("--max-connections", "0", "max_connections"),
        ("--max-header-bytes", "100", "max_header_bytes"),
        ("--http-header-timeout", "0s", "http_header_timeout"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, _out, err) = common::cli(&[
            "server",
            "--id",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(needle), "{flag} {value}: {err}");
    }
}

/// Every page of `GET /v1/kv?prefix=...` from `node`, each after the key
/// the one before names in `X-Replidb-Scan-Continue-After`, until a page
/// names none.
/// Returns the keys and, for each page, (entries, cut by bytes).
async fn page_through(
    node: &Node,
    prefix: &str,
    limit: usize,
) -> (Vec<String>, Vec<(usize, bool)>) {
    let mut keys = Vec::new();
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let q = format!("/v1/kv?prefix={prefix}&limit={limit}&start_after={after}");
        let r = node.http().get(node.at(&q)).send().await.expect("scan");
        let status = r.status();
        if status != 200 {
            panic!("{q}: {status} {}", r.text().await.unwrap_or_default());
        }
        let cut = r
            .headers()
            .get("x-replidb-scan-truncated")
            .is_some_and(|v| v == "bytes");
        let continue_after = r
            .headers()
            .get("x-replidb-scan-continue-after")
            .map(|v| v.to_str().expect("ASCII").to_string());
        assert!(
            !cut || continue_after.is_some(),
            "a cut page names where to go on"
        );
        let body: serde_json::Value = r.json().await.expect("json");
        let page: Vec<String> = body
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| e["key"].as_str().unwrap_or_default().to_string())
            .collect();
        let next = headers_next(&continue_after);
        pages.push((page.len(), cut));
        keys.extend(page.iter().cloned());
        match next {
            Some(key) => after = key,
            None => return (keys, pages),
        }
    }
}

/// The decoded `X-Replidb-Scan-Continue-After`, percent-encoded again for
/// the next request's query.
fn headers_next(value: &Option<String>) -> Option<String> {
    value.as_ref().map(|v| {
        let key = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .expect("a UTF-8 key");
        percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC).to_string()
    })
}

/// A scan page stops once its keys and values pass `--scan-page-bytes`
/// (16 MiB by default), whatever `limit` asks: ten thousand values of up
/// to 8 MiB each were held in one answer. A page cut short says so, and
/// paging on after its last key lists every key exactly once — on a
/// single node, and on a leaderless ring where the answering node gathers
/// a page from every member.
#[tokio::test]
async fn a_scan_of_large_values_is_paged_by_bytes_and_loses_nothing() {
    const VALUE_BYTES: usize = 40_000;
    let value = "v".repeat(VALUE_BYTES);
    let want: Vec<String> = (0..6).map(|i| format!("big{i}")).collect();
    let one = Node::start("n1", &["--scan-page-bytes", "100000"]).await;
    let ring = common::start_peered(
        3,
        &[
            "--topology",
            "leaderless",
            "--replicas",
            "2",
            "--scan-page-bytes",
            "100000",
        ],
    )
    .await;
    for node in [&one, &ring[0]] {
        for k in &want {
            let r = node
                .http()
                .put(node.at(&format!("/v1/kv/{k}?w=all")))
                .body(value.clone())
                .send()
                .await
                .expect("put");
            let status = r.status();
            assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
        }
        let (keys, pages) = page_through(node, "big", 100).await;
        assert_eq!(keys, want, "pages {pages:?}");
        // 100,000 bytes are reached at the third value.
        assert_eq!(pages[0], (3, true), "pages {pages:?}");
    }
    // On the ring, from a node that holds only some of the keys itself.
    let (keys, _) = page_through(&ring[2], "big", 100).await;
    assert_eq!(keys, want);
}

/// A deleted key of a causal topology stays in the table as a tombstone:
/// a page examines it but does not list it, so a page may be shorter than
/// `limit` (or empty) and still not be the end. Clients took a short page
/// for the end and missed every key after it; a page now names where the
/// next one starts, and the CLI lists every key.
#[tokio::test]
async fn paging_goes_on_past_pages_shortened_by_deleted_keys() {
    let node = Node::start("m1", &["--topology", "multi-leader"]).await;
    let keys: Vec<String> = ('a'..='l').map(|c| format!("t{c}")).collect();
    for k in &keys {
        let r = node
            .http()
            .put(node.at(&format!("/v1/kv/{k}")))
            .body("v")
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }
    for k in ["tc", "td", "te"] {
        let r = node
            .http()
            .delete(node.at(&format!("/v1/kv/{k}")))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), 200);
    }
    let want: Vec<String> = keys
        .iter()
        .filter(|k| !["tc", "td", "te"].contains(&k.as_str()))
        .cloned()
        .collect();
    let (listed, pages) = page_through(&node, "t", 3).await;
    assert_eq!(listed, want, "pages {pages:?}");
    // [ta tb tc] lists two, [td te tf] one: short pages that go on.
    assert_eq!(pages[0], (2, false), "pages {pages:?}");
    assert_eq!(pages[1], (1, false), "pages {pages:?}");
    let url = node.url();
    let (code, out, err) =
        common::cli(&["scan", "t", "--limit", "5", "--url", &url, "--no-session"]);
    assert_eq!(code, 0, "{err}");
    let cli_keys: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(
        cli_keys,
        want[..5].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// The node speaks HTTP/1.1 only. hyper-util's automatic builder served
/// HTTP/2 to a client that opened with its preface, whose flow control
/// lets a client stall an answer (and its scan slot) without a write ever
/// waiting on the socket, where the send timeout would see it.
#[tokio::test]
async fn http2_with_prior_knowledge_is_not_served() {
    let node = Node::start("n1", &[]).await;
    let mut s = connect(&node.url());
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("send the preface");
    let answer = read_all(&mut s);
    // An HTTP/2 server answers with a SETTINGS frame (binary, type 4 at
    // byte 3); an HTTP/1.1 one with a status line, or closes.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
}
