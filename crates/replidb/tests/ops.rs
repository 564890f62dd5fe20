//! Operations, end to end with real processes: `/health` flips with the
//! leader's presence, metrics move with writes and lag, logs are logfmt or
//! JSON with the debug events the README promises, and the files in
//! `deploy/` pass promtool and query only metrics that nodes (and the
//! router) really export.

mod common;
mod router_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cli, http, wait_for, wait_until, Cluster, Node};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// GET `url` → (status, JSON body).
async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

async fn metrics_text(url: &str) -> String {
    let r = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    r.text().await.expect("metrics body")
}

/// The value of the sample `name{labels}` exactly (labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Metric names that have at least one sample.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `replidb_*` identifier in `text` (PromQL in rules and dashboard).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("replidb_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's `prometheus` package (scripts/test.sh does)")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_pass_promtool_and_query_only_exported_metrics() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);

    let c = Cluster::start(1, &[], &[]).await;
    for i in 0..5 {
        c.leader.put(&format!("k{i}"), "v").await;
    }
    // One stale read, so the counter has moved at least once somewhere.
    let (status, _) = c.followers[0].get_raw("k0", "min_lsn=999&wait_ms=1").await;
    assert!(status == 200 || status == 404 || status == 503, "{status}");
    let mut exported = exported_names(&metrics_text(&c.leader.url()).await);
    exported.extend(exported_names(&metrics_text(&c.followers[0].url()).await));

    // Every name API.md lists, on a plain leader + follower.
    for name in [
        "replidb_replication_lag_seconds",
        "replidb_replication_lag_records",
        "replidb_replication_changes_applied_total",
        "replidb_replication_follower_connected",
        "replidb_replication_sync_errors_total",
        "replidb_replication_last_sync_timestamp_seconds",
        "replidb_replication_sync_duration_seconds_bucket",
        "replidb_replication_batch_size_bucket",
        "replidb_replication_changes_pending",
        "replidb_replication_active_followers",
        "replidb_wal_fsync_duration_seconds_bucket",
        "replidb_http_requests_total",
        "replidb_http_request_duration_seconds_bucket",
        "replidb_stale_reads_total",
        "replidb_failovers_total",
        "replidb_rollback_records_total",
    ] {
        assert!(
            exported.contains(name),
            "API.md metric {name} is not exported"
        );
    }

    // The router, when this binary has one.
    let has_router = cli(&["router", "--help"]).0 == 0;
    let _router = if has_router {
        let nodes = [c.leader.url(), c.followers[0].url()];
        let r = router_common::Router::start(&nodes, &["--health-interval", "100ms"]).await;
        let answer = r.get("/v1/kv/k0", &[]).await;
        assert_eq!(answer.status, 200, "read through the router");
        exported.extend(exported_names(&metrics_text(&r.url()).await));
        Some(r)
    } else {
        None
    };

    let mut referenced = BTreeSet::new();
    for file in ["prometheus/alerts.yml", "grafana/replidb.json"] {
        let text = std::fs::read_to_string(deploy_dir().join(file)).expect("deploy file");
        referenced.extend(referenced_names(&text));
    }
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| !exported.contains(*n))
        .filter(|n| has_router || !n.starts_with("replidb_router_"))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ queries metrics nothing exports: {missing:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_when_the_leader_stops_and_recovers_when_it_returns() {
    let mut leader = Node::start("n1", &[]).await;
    let follower = Node::start(
        "n2",
        &[
            "--follow",
            &leader.url(),
            "--health-max-lag",
            "500ms",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "200ms",
        ],
    )
    .await;
    let health = |q: &str| format!("{}/health{q}", follower.url());
    wait_until("follower healthy", WAIT, async || {
        get_json(&health("")).await.0 == 200
    })
    .await;

    // Patroni-style filters.
    let (s, body) = get_json(&health("?role=follower&max_lag_ms=5000")).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get_json(&health("?role=leader")).await;
    assert_eq!(s, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("not leader"),
        "{body}"
    );
    let (s, body) = get_json(&format!("{}/health?role=leader", leader.url())).await;
    assert_eq!((s, body["role"].as_str()), (200, Some("leader")), "{body}");
    let (s, _) = get_json(&health("?role=primary")).await;
    assert_eq!(s, 400, "an unknown role is a bad request");

    leader.stop().await;
    let body = wait_for("follower unhealthy", WAIT, async || {
        let (s, body) = get_json(&health("")).await;
        (s == 503).then_some(body)
    })
    .await;
    assert_eq!(body["healthy"], false);
    let why = body["error"].as_str().unwrap_or("");
    assert!(why.contains("disconnected from leader"), "{body}");

    leader.restart().await;
    wait_until("follower healthy again", WAIT, async || {
        get_json(&health("")).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_applied_counts_writes_and_lag_rises_with_a_delay() {
    let c = Cluster::start_with(2, &[], |i| {
        if i == 1 {
            vec!["--replication-delay".into(), "2s".into()]
        } else {
            Vec::new()
        }
    })
    .await;
    let (prompt, slow) = (&c.followers[0], &c.followers[1]);
    let applied =
        |id: &str| format!("replidb_replication_changes_applied_total{{node_id=\"{id}\"}}");
    // Registered at zero before anything happened.
    assert_eq!(
        sample(&metrics_text(&prompt.url()).await, &applied("n2")),
        Some(0.0)
    );

    let mut last = 0;
    for i in 0..7 {
        last = c.leader.put(&format!("k{i}"), "v").await["lsn"]
            .as_u64()
            .unwrap_or(0);
    }
    wait_until("n2 counts 7 applied changes", WAIT, async || {
        sample(&metrics_text(&prompt.url()).await, &applied("n2")) == Some(7.0)
    })
    .await;

    // n3 holds the writes for 2s: its lag gauge climbs while they wait.
    let lag = "replidb_replication_lag_seconds{node_id=\"n3\"}";
    let seen = wait_for("n3 lag above 0.5s", WAIT, async || {
        let text = metrics_text(&slow.url()).await;
        let pending = sample(&text, &applied("n3")).unwrap_or(0.0) < 7.0;
        sample(&text, lag).filter(|l| pending && *l > 0.5)
    })
    .await;
    assert!(seen < 10.0, "lag {seen}");
    wait_until(
        "n3 applies everything and its lag returns to 0",
        WAIT,
        async || {
            let text = metrics_text(&slow.url()).await;
            sample(&text, &applied("n3")) == Some(7.0) && sample(&text, lag) == Some(0.0)
        },
    )
    .await;
    let s = slow.status().await;
    assert_eq!(s["applied_lsn"].as_u64(), Some(last));
}

/// A `replidb server` with `RUST_LOG` set, killed on drop (the harness's
/// nodes inherit the test's environment, which has no RUST_LOG).
struct LoggedNode {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedNode {
    async fn start(id: &str, args: &[&str]) -> LoggedNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = common::free_port();
        let log = dir.path().join("node.log");
        let child = Command::new(common::BIN)
            .args([
                "server",
                "--id",
                id,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env(
                "RUST_LOG",
                "info,replidb_server=debug,replidb_replication=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .expect("spawn replidb server");
        let node = LoggedNode {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let status = format!("{}/status", node.url);
        wait_until(&format!("{id} answers"), WAIT, async || {
            http().get(&status).send().await.is_ok()
        })
        .await;
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_logfmt_or_json_and_never_carry_values() {
    let leader = LoggedNode::start("n1", &[]).await;
    let follower =
        LoggedNode::start("n2", &["--follow", &leader.url, "--log-format", "json"]).await;
    let marker = "SECRET-VALUE-".repeat(1000);
    let mut last = 0;
    for key in ["a", "b", "c"] {
        let r = http()
            .put(format!("{}/v1/kv/{key}", leader.url))
            .body(marker.clone())
            .send()
            .await
            .expect("put");
        let body: Value = r.json().await.expect("write answer");
        last = body["lsn"].as_u64().unwrap_or(0);
    }
    let applied = format!("{}/v1/kv/c?min_lsn={last}&fallback=error", follower.url);
    wait_until(
        "follower applied the writes",
        WAIT,
        async || matches!(http().get(&applied).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    let (leader_log, follower_log) = (leader.log(), follower.log());
    // The leader writes one line per persisted write, logfmt.
    let persisted: Vec<&str> = leader_log
        .lines()
        .filter(|l| l.contains("msg=\"write persisted\""))
        .collect();
    assert_eq!(persisted.len(), 3, "{leader_log}");
    assert!(persisted[2].starts_with("ts="), "{}", persisted[2]);
    for field in ["level=debug", "node_id=n1", "key=c", &format!("lsn={last}")] {
        assert!(
            persisted[2].contains(field),
            "{field} missing: {}",
            persisted[2]
        );
    }
    // The follower logs applied batches, as JSON objects.
    wait_until("follower logged an applied batch", WAIT, async || {
        follower.log().contains("applied batch")
    })
    .await;
    let follower_log = follower_log + &follower.log();
    let batch: Value = follower_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "applied batch")
        .expect("an applied-batch JSON line");
    for field in ["node_id", "from", "to", "lag_ms"] {
        assert!(!batch[field].is_null(), "{field} missing: {batch}");
    }
    assert_eq!(batch["node_id"], "n2");
    // LSNs are numbers in JSON, as in every other line.
    assert!(
        batch["from"].is_u64() && batch["to"].is_u64(),
        "LSNs as numbers: {batch}"
    );
    for line in follower_log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert!(
        !leader_log.contains("SECRET-VALUE"),
        "a value reached the leader's log"
    );
    assert!(
        !follower_log.contains("SECRET-VALUE"),
        "a value reached the follower's log"
    );
}

/// A single-leader node's URL is on disk (its voting set, its epoch's
/// leader) and in its peers' files, so the same data directory started
/// under another URL — here the same address spelled `localhost` — was a
/// second member: a former leader followed its own old URL. It is now
/// refused at start with what to do, and starts again as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_the_url_it_was_first_started_under() {
    let mut node = Node::start("n1", &[]).await;
    let put = node
        .http()
        .put(node.at("/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    node.stop().await;
    let url = node.url();
    let port = url.rsplit(':').next().expect("a port").to_string();
    let renamed = format!("http://localhost:{port}");
    let out = tokio::task::spawn_blocking({
        let dir = node.data_dir();
        move || {
            let mut child = Command::new(common::BIN)
                .args(["server", "--id", "n1", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir)
                .args(["--advertise-url", &renamed])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run replidb server");
            // A refusal is immediate; a node that starts keeps running.
            let deadline = std::time::Instant::now() + WAIT;
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().expect("output")
        }
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "started under a new URL: {stderr}"
    );
    assert!(
        stderr.contains(&format!("--advertise-url {url}")) && stderr.contains("/admin/forget"),
        "{stderr}"
    );
    node.restart().await;
    let got = node
        .http()
        .get(node.at("/v1/kv/k"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 200);
    let status: Value = node
        .http()
        .get(node.at("/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["role"], "leader", "{status}");
}
