//! Safety edges of the single-leader topology with real processes: a
//! fenced old leader that wakes up with requests queued, compare-and-set
//! answers racing a write, a switchover whose client goes away, write
//! concerns no cluster can meet, and nodes that relay to each other.

mod common;

use common::signal;

use std::time::{Duration, Instant};

use common::{wait_for, wait_until, Cluster, Node};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// These tests start three processes each; on two shared cores several at
/// once starve each other past the leader's check-quorum window.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The leader's check-quorum window (`LeaderOptions::check_quorum`).
const CHECK_QUORUM: Duration = Duration::from_millis(3000);

/// A raw HTTP/1.1 answer: status, lower-cased head, body.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
    at: Instant,
}

/// Send `request` (a complete HTTP/1.1 request with `Connection: close`)
/// to `addr` (`host:port`) over a plain socket and tell `sent` once it is written, then
/// read the answer. A stopped process's kernel still accepts and buffers
/// the connection, so this queues a request on a node frozen by SIGSTOP,
/// and `sent` says when it is queued (reqwest cannot tell us that).
async fn queued(addr: String, request: String, sent: mpsc::UnboundedSender<()>) -> RawAnswer {
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("send request");
    s.flush().await.expect("flush");
    let _ = sent.send(());
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("read answer");
    let at = Instant::now();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    RawAnswer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
        at,
    }
}

fn addr(node: &Node) -> String {
    node.url().trim_start_matches("http://").to_string()
}

fn raw_put(node: &Node, key: &str, query: &str, value: &str) -> String {
    format!(
        "PUT /v1/kv/{key}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{value}",
        addr(node),
        value.len()
    )
}

fn raw_get(node: &Node, key: &str, query: &str) -> String {
    format!(
        "GET /v1/kv/{key}?{query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr(node)
    )
}

/// Items 3 and 5 of the reliability issue: the leader is frozen, an
/// operator promotes n2, writes and a strong read queue up on the frozen
/// node, and it wakes. Every queued write must be refused at once (307 or
/// 503, not accepted and not a 504 after its timeout), none of them may
/// ever be appended or visible anywhere, and the strong read must not
/// return the value n2 has since replaced while claiming to lead.
///
/// It found two faults, both fixed: check-quorum credited acknowledgements
/// at the time they were read, so acks that followers sent just before the
/// freeze, buffered by the kernel, made the woken leader look in contact
/// and it accepted a `w=1` write in epoch 1 (now acks echo the send time
/// of the newest leader frame they answer, and only that counts); and a
/// fence cut off half-way left the woken node in the leader role at epoch
/// 2 forever (`/admin/fence` now finishes on its own task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_fenced_leader_refuses_queued_writes_and_strong_reads() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    let (n1, n2, n3) = (
        &cluster.leader,
        &cluster.followers[0],
        &cluster.followers[1],
    );
    n1.put_q("s", "w=all", "old").await;
    for i in 0..5 {
        n1.put_q(&format!("base{i}"), "w=all", "b").await;
    }

    signal(n1, libc::SIGSTOP);
    let stopped = Instant::now();
    let body = n2.promote().await;
    assert_eq!(body["promoted"], true, "{body}");
    assert_eq!(body["epoch"], 2, "{body}");
    // Point n3 at n2 explicitly: whether n2 had learned n3's address from
    // heartbeats is not what this test is about.
    let r = n3
        .http()
        .post(n3.at("/admin/follow"))
        .json(&json!({"leader": n2.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let http = common::http();
    wait_until(
        "n2 commits a majority write",
        Duration::from_secs(15),
        async || {
            matches!(
                http.put(n2.at("/v1/kv/s?w=majority&timeout_ms=500")).body("new").send().await,
                Ok(r) if r.status() == 200
            )
        },
    )
    .await;

    // Queue writes and a strong read on the frozen old leader.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
    let queued_writes = 6;
    let mut writes = Vec::new();
    for i in 0..queued_writes {
        let req = raw_put(
            n1,
            &format!("q{i}"),
            "w=1&timeout_ms=10000",
            &format!("stale-{i}"),
        );
        let sent = sent_tx.clone();
        writes.push(tokio::spawn(queued(addr(n1), req, sent)));
    }
    let strong_req = raw_get(n1, "s", "consistency=strong&format=json");
    let strong = tokio::spawn(queued(addr(n1), strong_req, sent_tx.clone()));
    for _ in 0..=queued_writes {
        tokio::time::timeout(Duration::from_secs(10), sent_rx.recv())
            .await
            .expect("requests queued on the frozen node")
            .expect("sender alive");
    }

    // The old leader can only know it is cut off once its check-quorum
    // window has passed without acknowledgements from a majority: keep it
    // frozen past that bound. (Woken earlier, it may still accept a `w=1`
    // write in its old epoch, which it later rewinds into `rollback/`;
    // nothing short of a lease prevents that, and no majority write can
    // be acknowledged that way.)
    tokio::time::sleep_until((stopped + CHECK_QUORUM + Duration::from_millis(500)).into()).await;
    signal(n1, libc::SIGCONT);
    let woke = Instant::now();
    // Collect every answer before judging any, so a failure reports them
    // all (and the strong read is not cut off by an early panic).
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.unwrap());
    }
    let s = strong.await.unwrap();
    let summary: Vec<(u16, Duration, &str)> = answers
        .iter()
        .map(|a| (a.status, a.at.duration_since(woke), a.body.as_str()))
        .collect();
    eprintln!(
        "queued writes answered {summary:?}; strong read {} {}",
        s.status, s.body
    );
    for a in &answers {
        let took = a.at.duration_since(woke);
        assert!(
            a.status == 307 || a.status == 503,
            "a queued write on the fenced old leader answered {} after {took:?}: {}",
            a.status,
            a.body
        );
        assert!(
            took < Duration::from_secs(3),
            "a queued write was refused only after {took:?} (status {})",
            a.status
        );
    }
    match s.status {
        503 => {}
        200 => {
            let v: Value = serde_json::from_str(&s.body).expect("strong read JSON");
            assert_eq!(
                v["value"], "new",
                "a strong read on the deposed leader returned replaced state: {} {}",
                s.head, s.body
            );
        }
        other => panic!("strong read on the woken old leader: {other} {}", s.body),
    }

    // No queued write is visible anywhere, not even eventually on n1.
    let check_absent = async |stage: &str| {
        for n in [n1, n2, n3] {
            for i in 0..queued_writes {
                let (status, body) = n.get_raw(&format!("q{i}"), "consistency=eventual").await;
                assert_eq!(
                    status,
                    404,
                    "{stage}: refused write q{i} is visible on {}: {}",
                    n.id,
                    String::from_utf8_lossy(&body)
                );
            }
        }
    };
    check_absent("at wake-up").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = n1.try_status().await;
        if st
            .as_ref()
            .is_some_and(|s| s["role"] == "follower" && s["epoch"] == 2 && s["connected"] == true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader does not follow n2 in epoch 2 within 15 s: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n2.put_q("after", "w=all", "z").await;
    common::wait_converged(n2, [n1, n3].into_iter(), Duration::from_secs(20)).await;
    check_absent("after convergence").await;
    // Every node tells the same epoch history, and every record of epoch 2
    // the old leader holds came from n2 (equal digests at equal LSNs).
    let history = n2.status().await["epoch_history"].clone();
    for n in [n1, n3] {
        assert_eq!(
            n.status().await["epoch_history"],
            history,
            "{} disagrees on the epoch history",
            n.id
        );
    }
    let scan = n1.get_json("/v1/kv?consistency=eventual").await;
    let on_n2 = n2.get_json("/v1/kv?consistency=eventual").await;
    assert_eq!(scan, on_n2, "the old leader's table differs from n2's");
    assert!(
        !n1.data_dir().join("rollback").exists()
            || std::fs::read_dir(n1.data_dir().join("rollback"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "the old leader appended something it then had to roll back"
    );
}

/// Item 4: a failed compare-and-set racing a `w=majority` write on the
/// same key must name only committed state: the LSN its 409 reports is the
/// racing write's, and a strong read right after sees it (or newer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compare_and_set_names_only_committed_state() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, &[], &[]).await;
    let n1 = &cluster.leader;
    let http = n1.http().clone();
    let first = n1.put_q("cas", "w=majority", "v0").await;
    let mut current = first["lsn"].as_u64().unwrap();
    let (mut lost, mut won) = (0, 0);
    let started = Instant::now();
    for i in 0..400 {
        let put = http
            .put(n1.at("/v1/kv/cas?w=majority"))
            .body(format!("p{i}"))
            .send();
        let txn = http
            .post(n1.at("/v1/txn?w=majority"))
            .json(&json!({
                "if": [{"key": "cas", "lsn": current}],
                "ops": [{"op": "put", "key": "cas-side", "value": format!("t{i}")}],
            }))
            .send();
        let (put, txn) = tokio::join!(put, txn);
        let (put, txn) = (put.unwrap(), txn.unwrap());
        assert_eq!(put.status(), 200);
        let put: Value = put.json().await.unwrap();
        let put_lsn = put["lsn"].as_u64().unwrap();
        match txn.status().as_u16() {
            200 => won += 1,
            409 => {
                lost += 1;
                let body: Value = txn.json().await.unwrap();
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                let found: u64 = msg
                    .rsplit("found ")
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or_else(|| panic!("409 does not name the current lsn: {body}"));
                // The only other writer of `cas` is the racing PUT.
                assert_eq!(found, put_lsn, "try {i}: 409 named lsn {found}: {body}");
                let r = http
                    .get(n1.at("/v1/kv/cas?consistency=strong&format=json"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "try {i}: strong read after the 409");
                let v: Value = r.json().await.unwrap();
                let seen = v["lsn"].as_u64().unwrap();
                assert!(
                    seen >= found,
                    "try {i}: the 409 named lsn {found}, a strong read right after saw {seen}"
                );
            }
            other => panic!(
                "try {i}: txn answered {other}: {}",
                txn.text().await.unwrap()
            ),
        }
        current = put_lsn;
    }
    eprintln!(
        "400 compare-and-set races in {:?}: {lost} failed with 409, {won} won",
        started.elapsed()
    );
    assert!(lost > 0, "no try lost the race: the test exercised nothing");
}

/// Item 9: a switchover whose client disconnects must not leave the
/// leader paused; `timeout_ms` has a cap; a timed-out switchover resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_switchover_request_does_not_leave_writes_paused() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, &[], &[]).await;
    let (n1, n2) = (&cluster.leader, &cluster.followers[0]);
    let http = n1.http().clone();
    // n2 is frozen: it cannot catch up, so a switchover to it waits.
    signal(n2, libc::SIGSTOP);
    for i in 0..5 {
        n1.put_q(&format!("k{i}"), "w=majority", "v").await;
    }

    // A client that gives up after 1 s on a switchover allowed 30 s.
    let impatient = common::http_builder()
        .no_proxy()
        .timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let sw = {
        let url = n1.at("/admin/switchover");
        tokio::spawn(async move {
            impatient
                .post(url)
                .json(&json!({"to": "n2", "timeout_ms": 30_000}))
                .send()
                .await
        })
    };
    // While the request lives, writes pause.
    let write_status = async || {
        let r = http
            .put(n1.at("/v1/kv/probe?timeout_ms=500"))
            .body("p")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    };
    wait_until(
        "writes pause for the switchover",
        Duration::from_secs(1),
        async || write_status().await == (503, "switchover_in_progress".to_string()),
    )
    .await;
    assert!(
        sw.await.unwrap().is_err(),
        "the impatient client should have timed out"
    );
    let gone = Instant::now();
    let resumed = wait_until(
        "writes resume once the switchover's client is gone",
        Duration::from_secs(3),
        async || write_status().await.0 == 200,
    )
    .await;
    eprintln!(
        "writes resumed {:?} after the switchover's client left ({resumed:?} polling)",
        gone.elapsed()
    );

    let too_long = http
        .post(n1.at("/admin/switchover"))
        .json(&json!({"to": "n2", "timeout_ms": 60_001}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
    let body = too_long.text().await.unwrap();
    assert!(body.contains("60000"), "the 400 names the limit: {body}");

    // A switchover that times out answers 504 and resumes writes.
    let started = Instant::now();
    let r = http
        .post(n1.at("/admin/switchover"))
        .json(&json!({"to": "n2", "timeout_ms": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504, "{}", r.text().await.unwrap_or_default());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(write_status().await.0, 200, "writes resume after a timeout");

    signal(n2, libc::SIGCONT);
    // Once n2 can catch up, the switchover succeeds.
    let r = wait_for(
        "a switchover to n2 succeeds",
        Duration::from_secs(20),
        async || {
            let r = http
                .post(n1.at("/admin/switchover"))
                .json(&json!({"to": "n2", "timeout_ms": 2000}))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(r)
        },
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["switched_to"], "n2", "{body}");
    assert_eq!(n2.status().await["role"], "leader");
}

/// Item 12 (a): a numeric `w` above the voters is a 400 at once, on every
/// endpoint that takes `w`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_concern_above_the_voters_is_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, &[], &[]).await;
    let n1 = &cluster.leader;
    let http = n1.http().clone();
    let started = Instant::now();
    let r = http
        .put(n1.at("/v1/kv/k?w=5&timeout_ms=10000"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "w_exceeds_voters", "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(n1.get_raw("k", "").await.0, 404, "nothing was written");

    let r = http
        .delete(n1.at("/v1/kv/k?w=4&timeout_ms=10000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(n1.at("/v1/txn?w=4&timeout_ms=10000"))
        .json(&json!({"ops": [{"op": "put", "key": "t", "value": "1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(n1.at("/write-with-quorum"))
        .json(&json!({"key": "seed", "value": "v", "w": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "w_exceeds_voters", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // w equal to the voters is fine.
    let w = n1.put_q("k", "w=3", "v").await;
    assert_eq!(w["committed"], true, "{w}");
}

/// Item 12 (b): two nodes that each think the other leads do not bounce a
/// request between them until it times out: past the hop limit it is a
/// 508 `proxy_loop`, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pointing_at_each_other_stop_relaying() {
    let _serial = SERIAL.lock().await;
    let n1 = Node::start("n1", &["--forward-writes"]).await;
    let n2 = Node::start("n2", &["--follow", &n1.url(), "--forward-writes"]).await;
    let r = n1
        .http()
        .post(n1.at("/admin/follow"))
        .json(&json!({"leader": n2.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    wait_until("n1 follows n2", Duration::from_secs(10), async || {
        n1.try_status()
            .await
            .is_some_and(|s| s["role"] == "follower" && s["leader"] == n2.url().as_str())
    })
    .await;
    let http = n1.http().clone();
    for (what, req) in [
        (
            "strong read",
            http.get(n1.at("/v1/kv/k?consistency=strong")),
        ),
        ("forwarded write", http.put(n1.at("/v1/kv/k")).body("v")),
        ("seed read", http.get(n2.at("/read?key=k"))),
    ] {
        let started = Instant::now();
        let r = req.send().await.unwrap();
        let took = started.elapsed();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 508, "{what}: {body}");
        assert_eq!(body["error"]["code"], "proxy_loop", "{what}: {body}");
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    }
}

/// Item 10 of the reliability issue: the voting set is durable, so a node
/// promoted before its peers reconnect never counts a majority of one.
/// n2 learns the three members from heartbeats, restarts (forgetting
/// everything in memory), the leader is gone and n3 is frozen; a forced
/// promote of n2 must still need two acknowledgements for `w=majority`:
/// with only itself it answers 504 with `acks: 1`, never 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_node_counts_its_majority_over_the_durable_voting_set() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    cluster.leader.put_q("before", "w=all", "x").await;
    let leader_url = cluster.leader.url();
    wait_until(
        "n2 knows all three members",
        Duration::from_secs(10),
        async || {
            let s = cluster.followers[0].status().await;
            s["voting_set"].as_array().is_some_and(|v| v.len() == 3)
        },
    )
    .await;
    cluster.leader.kill9();
    cluster.followers[0].kill9();
    cluster.followers[0].restart().await;
    signal(&cluster.followers[1], libc::SIGSTOP);
    let n2 = &cluster.followers[0];
    let http = common::http_builder().build().expect("http client");
    // Without force, a majority must answer: only n2 can.
    let r = http
        .post(format!("{}/admin/promote", n2.url()))
        .send()
        .await
        .expect("promote");
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
    let r = http
        .post(format!("{}/admin/promote?force=true", n2.url()))
        .send()
        .await
        .expect("forced promote");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let r = http
        .put(format!(
            "{}/v1/kv/lonely?w=majority&timeout_ms=500",
            n2.url()
        ))
        .body("x")
        .send()
        .await
        .expect("put");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert!(
        status == 504 && body["acks"] == 1 && body["committed"] == false,
        "a majority of one acknowledged a w=majority write: {status} {body}"
    );
    let s = n2.status().await;
    assert_eq!(s["voters"], 3, "{s}");
    assert!(s["voting_set"]
        .as_array()
        .is_some_and(|v| v.iter().any(|u| *u == json!(leader_url))));
    signal(&cluster.followers[1], libc::SIGCONT);
}

/// Found by trying it as a new user: a follower that knows no leader (an
/// etcd member before any election) answered writes with a 307 to a
/// relative URL — itself — so clients looped; it must be a 503 with
/// `Retry-After`. And an announced epoch near `u64::MAX` was accepted by
/// `/admin/fence`, after which the next promote's `epoch + 1` wrapped and
/// two nodes led at once: an epoch too far ahead is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_is_a_503_and_absurd_epochs_are_refused() {
    let _serial = SERIAL.lock().await;
    // An etcd nobody answers: the node waits as a follower of nobody.
    let lonely = Node::start(
        "lonely",
        &[
            "--coordinator",
            "etcd",
            "--etcd",
            "http://127.0.0.1:9",
            "--cluster",
            "none",
        ],
    )
    .await;
    let http = common::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .put(lonely.at("/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_leader", "{body}");

    let cluster = Cluster::start(1, &[], &[]).await;
    let r = http
        .post(cluster.leader.at("/admin/fence"))
        .json(&json!({"epoch": u64::MAX, "leader": cluster.followers[0].url()}))
        .send()
        .await
        .expect("fence");
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap_or_default());
    assert_eq!(cluster.leader.status().await["role"], "leader");
}

/// Found by trying it as a new user: `POST /admin/forget` of a member
/// that was still running took it out of the voting set while its stream
/// went on, so it received every write yet no longer counted, and the
/// majority was computed over fewer members than the cluster had. Forget
/// is for members gone for good: a connected one is a 409
/// `member_connected`; once it is stopped and shows `disconnected`, its
/// id is enough; an unknown member is a 404 that lists the voting set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_member_that_is_gone_can_be_forgotten() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, &[], &[]).await;
    cluster.leader.put_q("k", "w=all", "v").await;
    let n1 = &cluster.leader;
    let n3_url = cluster.followers[1].url();
    let forget = async |member: &str| {
        let r = n1
            .http()
            .post(n1.at("/admin/forget"))
            .json(&json!({ "member": member }))
            .send()
            .await
            .expect("forget");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("json"))
    };

    let (status, body) = forget("n3").await;
    assert_eq!(status, 409, "a streaming member was forgotten: {body}");
    assert_eq!(body["error"]["code"], "member_connected", "{body}");
    let (status, body) = forget(&n3_url).await;
    assert_eq!(status, 409, "by URL too: {body}");
    let voters = n1.status().await["voting_set"].clone();
    assert!(
        voters.as_array().is_some_and(|v| v.len() == 3),
        "the refused forget changed the voting set: {voters}"
    );

    cluster.followers[1].kill9();
    wait_until(
        "n1 sees n3 disconnected",
        Duration::from_secs(30),
        async || {
            n1.status().await["followers"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|r| r["id"] == "n3" && r["state"] == "disconnected")
            })
        },
    )
    .await;
    let (status, body) = forget("n3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forgotten"], n3_url.as_str(), "{body}");
    assert!(
        body["voting_set"].as_array().is_some_and(|v| v.len() == 2),
        "{body}"
    );
    // A majority of the two that remain still needs n2.
    let w = n1.put_q("after", "w=majority", "v").await;
    assert_eq!(w["acks"], 2, "{w}");
    // The leader relays it: n2, promoted later, must not count n3 either
    // (its voting set only grew from heartbeats, so it kept n3 for good).
    let n2 = &cluster.followers[0];
    wait_until("n2 forgets n3 too", Duration::from_secs(10), async || {
        n2.status().await["voting_set"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && !v.iter().any(|u| u == n3_url.as_str()))
    })
    .await;
    // And keeps it forgotten across its next refreshes: a negative, so it
    // is watched for a while, ten heartbeat intervals (the refresh period).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = n2.status().await["voting_set"].clone();
    assert!(!v.to_string().contains(&n3_url), "n2 learned n3 back: {v}");
    // A relayed forget from an epoch that is not the follower's is refused.
    let r = n2
        .http()
        .post(n2.at("/admin/forget"))
        .json(&json!({"member": n1.url(), "epoch": 99}))
        .send()
        .await
        .expect("forget");
    assert_eq!(r.status(), 409);

    let (status, body) = forget("n9").await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&cluster.followers[0].url()),
        "the 404 should list the voting set: {message}"
    );
}
