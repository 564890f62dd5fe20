//! `replidb playground` as a user runs it: a real process with real
//! children. The README's tour says to `kill -9` a follower and restart it
//! by hand; the playground must survive that and say how.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_for, wait_until, BIN};

/// The playground process; SIGTERM'd (then killed) on drop.
struct Playground {
    child: Child,
    /// Everything it printed, stdout and stderr interleaved by line.
    out: Arc<Mutex<Vec<String>>>,
}

impl Playground {
    fn start(base_port: u16) -> Playground {
        Playground::start_with(base_port, &[])
    }

    fn start_with(base_port: u16, extra: &[&str]) -> Playground {
        let mut child = Command::new(BIN)
            .args(["playground", "--base-port", &base_port.to_string()])
            .args(["--lag", "10ms..50ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn playground");
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        Playground { child, out }
    }

    fn output(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// The first printed line containing `needle`, and the line after it.
    fn line_after(&self, needle: &str) -> Option<(String, Option<String>)> {
        let out = self.output();
        let i = out.iter().position(|l| l.contains(needle))?;
        Some((out[i].clone(), out.get(i + 1).cloned()))
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own, unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free base port: the dashboard takes `base - 2`, the router
/// `base - 1`, the nodes `base..base + 3`.
fn free_ports() -> u16 {
    common::free_port_run(6) + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_leaves_the_playground_running_and_says_how_to_restart_it() {
    let base = free_ports();
    let mut pg = Playground::start(base);
    let http = common::http();
    let router = format!("http://127.0.0.1:{}", base - 1);
    let follower = format!("http://127.0.0.1:{}", base + 1);

    // The banner names each node's pid.
    let pid: i32 = wait_for(
        "the banner lists n2's pid",
        Duration::from_secs(60),
        async || {
            let (line, _) = pg.line_after("  n2  follower")?;
            line.rsplit("pid ").next()?.trim().parse().ok()
        },
    )
    .await;
    // SAFETY: kill(2) on a grandchild the playground started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let restart = wait_for(
        "the playground reports n2 down with a restart command",
        Duration::from_secs(10),
        async || match pg.line_after("n2 DOWN") {
            Some((_, Some(cmd))) => Some(cmd.trim().to_string()),
            _ => None,
        },
    )
    .await;
    assert!(
        restart.contains(" server ") && restart.contains("--id n2"),
        "{restart}"
    );
    assert!(
        pg.child.try_wait().expect("try_wait").is_none(),
        "the playground exited: {:#?}",
        pg.output()
    );
    // The rest of the cluster still works through the router.
    let r = http
        .put(format!("{router}/v1/kv/after-kill"))
        .body("still here")
        .send()
        .await
        .expect("router answers");
    assert_eq!(r.status(), 200);

    // The printed command brings n2 back, with its data, and the
    // playground notices.
    let mut by_hand = run_printed(&restart);
    wait_until(
        "n2 has the write made while it was down",
        Duration::from_secs(30),
        async || match http
            .get(format!("{follower}/v1/kv/after-kill?min_lsn=1"))
            .send()
            .await
        {
            Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|t| t == "still here"),
            Err(_) => false,
        },
    )
    .await;
    wait_until(
        "the playground sees n2 back",
        Duration::from_secs(10),
        async || pg.line_after("n2 is back").is_some(),
    )
    .await;
    assert!(pg.child.try_wait().expect("try_wait").is_none());
    let _ = by_hand.kill();
    let _ = by_hand.wait();
}

/// After a switchover the restart command printed for a killed node
/// follows the new leader: the one it was first started with is now a
/// follower, which refuses its stream (421), so the README's "run that
/// line and watch it catch up" would leave it behind for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switchover_the_printed_restart_follows_the_new_leader() {
    let base = free_ports();
    let mut pg = Playground::start(base);
    let http = common::http();
    let control = format!("http://127.0.0.1:{}", base - 2);
    let router = format!("http://127.0.0.1:{}", base - 1);
    let new_leader = format!("http://127.0.0.1:{}", base + 1);
    let n3 = format!("http://127.0.0.1:{}", base + 2);
    let pid: i32 = wait_for(
        "the banner lists n3's pid",
        Duration::from_secs(60),
        async || {
            let (line, _) = pg.line_after("  n3  follower")?;
            line.rsplit("pid ").next()?.trim().parse().ok()
        },
    )
    .await;
    let r = http
        .post(format!("{control}/playground/switchover?to=n2"))
        .send()
        .await
        .expect("control API answers");
    assert!(r.status().is_success(), "{:?}", r.text().await);

    // SAFETY: kill(2) on a grandchild the playground started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let restart = wait_for(
        "the playground reports n3 down with a restart command",
        Duration::from_secs(10),
        async || match pg.line_after("n3 DOWN") {
            Some((_, Some(cmd))) => Some(cmd.trim().to_string()),
            _ => None,
        },
    )
    .await;
    assert!(
        restart.contains(&format!("--follow {new_leader} ")),
        "the restart command does not follow n2: {restart}"
    );
    let r = http
        .put(format!("{router}/v1/kv/while-down"))
        .body("written on n2")
        .send()
        .await
        .expect("router answers");
    assert_eq!(r.status(), 200);

    let mut by_hand = run_printed(&restart);
    wait_until(
        "n3 streams from n2 and has the write",
        Duration::from_secs(30),
        async || match http
            .get(format!(
                "{n3}/v1/kv/while-down?min_lsn=1&wait_ms=0&fallback=error"
            ))
            .send()
            .await
        {
            Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|t| t == "written on n2"),
            Err(_) => false,
        },
    )
    .await;
    assert!(pg.child.try_wait().expect("try_wait").is_none());
    let _ = by_hand.kill();
    let _ = by_hand.wait();
}

/// The playground's dashboard watches from the start, not from the first
/// page: a switchover made from a shell before anyone opened the page is
/// on its timeline when the page opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_before_the_page_opens_is_on_the_timeline() {
    let base = free_ports();
    let pg = Playground::start(base);
    let http = common::http();
    let dashboard = format!("http://127.0.0.1:{}", base - 2);
    let router = format!("http://127.0.0.1:{}", base - 1);
    let n1 = format!("http://127.0.0.1:{base}");
    wait_until("the banner", Duration::from_secs(60), async || {
        pg.line_after("  n3  follower").is_some()
    })
    .await;
    // Nothing but the dashboard's poller asks a node for /health: once n1
    // counts such a request, the poller has seen n1 leading.
    wait_until(
        "the dashboard polls without a page",
        Duration::from_secs(10),
        async || {
            let Ok(r) = http.get(format!("{n1}/metrics")).send().await else {
                return false;
            };
            r.text().await.is_ok_and(|m| {
                m.lines().any(|l| {
                    l.starts_with("replidb_http_requests_total")
                        && l.contains("route=\"/health\"")
                        && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
                })
            })
        },
    )
    .await;
    let (code, out, err) = common::cli(&["admin", "switchover", "--to", "n2", "--url", &router]);
    assert_eq!(code, 0, "{out} {err}");
    wait_until(
        "the timeline shows the switchover to n2",
        Duration::from_secs(10),
        async || {
            let Ok(r) = http
                .get(format!("{dashboard}/dashboard/state"))
                .send()
                .await
            else {
                return false;
            };
            let doc: serde_json::Value = r.json().await.unwrap_or_default();
            doc["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "switchover" && e["node"] == "n2")
            })
        },
    )
    .await;
}

/// The dashboard's document of one playground, once.
async fn dashboard_state(http: &reqwest::Client, dashboard: &str) -> serde_json::Value {
    match http
        .get(format!("{dashboard}/dashboard/state"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Whether the timeline holds an event of `kind` whose text has `needle`.
fn has_event(doc: &serde_json::Value, kind: &str, needle: &str) -> bool {
    doc["events"].as_array().is_some_and(|e| {
        e.iter()
            .any(|e| e["kind"] == kind && e["text"].as_str().is_some_and(|t| t.contains(needle)))
    })
}

/// Multi-leader: two writes of one key on two nodes at once (300 ms
/// apart on the wire) are a conflict each node resolves, and the
/// dashboard shows each node's count and the conflicts on its timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_leader_conflicts_show_on_the_dashboard() {
    let base = free_ports();
    let pg = Playground::start_with(
        base,
        &["--topology", "multi-leader", "--link-delay", "300ms"],
    );
    let http = common::http();
    let dashboard = format!("http://127.0.0.1:{}", base - 2);
    wait_until("the banner", Duration::from_secs(60), async || {
        pg.line_after("dashboard:").is_some()
            && dashboard_state(&http, &dashboard).await["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3)
    })
    .await;
    let (a, b) = tokio::join!(
        http.put(format!("http://127.0.0.1:{base}/v1/kv/c"))
            .body("a")
            .send(),
        http.put(format!("http://127.0.0.1:{}/v1/kv/c", base + 1))
            .body("b")
            .send(),
    );
    assert_eq!(a.expect("n1 answers").status(), 200);
    assert_eq!(b.expect("n2 answers").status(), 200);
    wait_until(
        "every node's conflict on the timeline and in its row",
        Duration::from_secs(15),
        async || {
            let doc = dashboard_state(&http, &dashboard).await;
            ["n1", "n2", "n3"].iter().all(|id| {
                has_event(&doc, "conflict", &format!("{id} resolved"))
                    && doc["nodes"].as_array().is_some_and(|n| {
                        n.iter()
                            .any(|n| n["id"] == *id && n["conflicts"]["lww"].as_u64() >= Some(1))
                    })
            })
        },
    )
    .await;
}

/// Leaderless on five nodes: the dashboard shows each node's share of the
/// ring; with a replica down, quorum writes leave hints, which show as
/// pending and on the timeline, and are delivered once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_ring_and_hints_show_on_the_dashboard() {
    let base = common::free_port_run(8) + 2;
    let pg = Playground::start_with(base, &["--topology", "leaderless", "--nodes", "5"]);
    let http = common::http();
    let dashboard = format!("http://127.0.0.1:{}", base - 2);
    wait_until(
        "five nodes on the ring",
        Duration::from_secs(60),
        async || {
            pg.line_after("dashboard:").is_some()
                && dashboard_state(&http, &dashboard).await["nodes"]
                    .as_array()
                    .is_some_and(|n| {
                        n.len() == 5
                            && n.iter()
                                .all(|n| n["ring"]["share_held"].as_f64() > Some(0.0))
                    })
        },
    )
    .await;
    let kill = http
        .post(format!("{dashboard}/playground/nodes/n5/kill"))
        .send()
        .await
        .expect("control API answers");
    assert_eq!(kill.status(), 200);
    wait_until("n5 down", Duration::from_secs(10), async || {
        has_event(&dashboard_state(&http, &dashboard).await, "down", "n5")
    })
    .await;
    // Twenty keys: some of them are n5's to hold.
    for i in 0..20 {
        let r = http
            .put(format!("http://127.0.0.1:{base}/v1/kv/h{i}?w=2"))
            .body("v")
            .send()
            .await
            .expect("n1 answers");
        assert_eq!(r.status(), 200, "h{i}");
    }
    wait_until(
        "hints pending and on the timeline",
        Duration::from_secs(10),
        async || {
            let doc = dashboard_state(&http, &dashboard).await;
            has_event(&doc, "hint", "more hint")
                && doc["nodes"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n["ring"]["hints_pending"].as_u64() > Some(0))
                })
        },
    )
    .await;
    let restart = http
        .post(format!("{dashboard}/playground/nodes/n5/restart"))
        .send()
        .await
        .expect("control API answers");
    assert_eq!(restart.status(), 200);
    wait_until(
        "the hints delivered, on the timeline",
        Duration::from_secs(30),
        async || {
            has_event(
                &dashboard_state(&http, &dashboard).await,
                "hint",
                "delivered",
            )
        },
    )
    .await;
}

/// A playground that stops while one of its nodes is dead exits non-zero
/// and names the node, so a script sees the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_a_dead_node_exits_non_zero_and_names_it() {
    let base = free_ports();
    let mut pg = Playground::start(base);
    let pid: i32 = wait_for(
        "the banner lists n3's pid",
        Duration::from_secs(60),
        async || {
            let (line, _) = pg.line_after("  n3  follower")?;
            line.rsplit("pid ").next()?.trim().parse().ok()
        },
    )
    .await;
    // SAFETY: kill(2) on a grandchild the playground started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_until(
        "the playground reports n3 down",
        Duration::from_secs(10),
        async || pg.line_after("n3 DOWN").is_some(),
    )
    .await;
    // SAFETY: kill(2) on our own, unreaped child.
    assert_eq!(
        unsafe { libc::kill(pg.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = wait_for(
        "the playground exits",
        Duration::from_secs(30),
        async || pg.child.try_wait().ok().flatten(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{:#?}", pg.output());
    wait_until("the error names n3", Duration::from_secs(5), async || {
        pg.output()
            .iter()
            .any(|l| l.starts_with("error:") && l.contains("n3") && l.contains("died"))
    })
    .await;
}

/// `--tls`: every URL printed is https, the curl lines carry the throwaway
/// CA, and a client that trusts it writes through the router and reads
/// from a follower; plain HTTP is told to use https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_everything_is_https_and_the_curl_lines_carry_the_ca() {
    let base = free_ports();
    let pg = Playground::start_with(base, &["--tls"]);
    let ca = wait_for(
        "the banner prints curl lines with --cacert",
        Duration::from_secs(60),
        async || {
            let (line, _) = pg.line_after("curl --cacert ")?;
            let path = line.split("--cacert ").nth(1)?.split_whitespace().next()?;
            Some(std::path::PathBuf::from(path))
        },
    )
    .await;
    let (router_line, _) = pg.line_after("  router ").expect("router line");
    let router = format!("https://127.0.0.1:{}", base - 1);
    assert!(router_line.contains(&router), "{router_line}");

    let config = replidb_tls::client_config(&ca, None).expect("the printed CA loads");
    let https = common::http_builder()
        .tls_backend_preconfigured((*config).clone())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = https
        .put(format!("{router}/v1/kv/secret?w=all"))
        .body("over tls")
        .send()
        .await
        .expect("the router answers over TLS");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let follower = format!("https://127.0.0.1:{}", base + 1);
    let r = https
        .get(format!("{follower}/v1/kv/secret?min_lsn=1"))
        .send()
        .await
        .expect("a follower answers over TLS");
    assert_eq!(r.text().await.expect("body"), "over tls");

    let plain = common::http()
        .get(format!("http://127.0.0.1:{}/status", base))
        .send()
        .await
        .expect("an answer");
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.is_ok_and(|t| t.contains("tls_required")));
}

/// Run a restart command the playground printed, as a user pastes it
/// (without its trailing `&`).
fn run_printed(restart: &str) -> std::process::Child {
    Command::new("sh")
        .args([
            "-c",
            &format!("exec {}", restart.trim_end_matches('&').trim()),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("run the restart command")
}
