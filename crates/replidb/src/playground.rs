//! `replidb playground`: a local cluster in one command.
//!
//! Each node is a child process running `replidb server` (this same
//! binary), and a `replidb router` child listens on the port below the
//! leader's (7000 by default) in front of them, so the playground behaves
//! like a real deployment: you can `kill -9` a follower and watch the
//! router stop sending it reads and the follower catch up, or read
//! `/metrics` per node.
//! Data lives in a temporary directory (or `--data-dir`), removed on exit
//! unless `--keep`. Ctrl-C or SIGTERM stops every node with SIGTERM and
//! waits for it.
//!
//! A node that dies (`kill -9` is part of the tour) does not stop the
//! playground: it says the node is down and prints the exact command that
//! restarts it (same flags, same data directory, log appended), then notices
//! when it answers again. A node restarted by hand is not the playground's
//! child, so on exit the playground leaves it running and keeps the data
//! directory it uses.
//!
//! It also serves a live dashboard with controls (kill, restart, pause,
//! lag, cut a link, switch over, write and read everywhere), each an HTTP
//! endpoint of its own: see `control.rs`. Its URL is the first line printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use replidb_core::DurationRange;
use tokio::process::{Child, Command};

mod control;

/// `replidb playground` arguments.
#[derive(Debug, Args)]
pub struct PlaygroundArgs {
    /// Nodes in all: one leader and N-1 followers.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Artificial apply lag of the followers (`DUR` or `DUR..DUR`).
    #[arg(long, default_value = "100ms..500ms")]
    pub lag: String,
    /// Port of the leader; followers take the next ones, the router the
    /// one before.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Keep data here instead of a temporary directory [default: none: a
    /// temporary directory, removed on exit unless --keep]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra flags passed to every `replidb server` (e.g.
    /// `--default-w=majority`) [default: none]
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the temporary data directory on exit.
    #[arg(long)]
    pub keep: bool,
    /// single-leader (a leader, followers and a router), multi-leader
    /// (every node writes; keys under `cart:` keep siblings) or leaderless
    /// (quorums on a ring).
    #[arg(long, default_value = "single-leader")]
    pub topology: String,
    /// Multi-leader: artificial delay between every pair of nodes
    /// (`DUR` or `DUR..DUR`), as if they were regions apart.
    #[arg(long, default_value = "0ms")]
    pub link_delay: String,
    /// Port of the dashboard and of the `/playground/*` control API
    /// (default: two below `--base-port`, or any free port if that one
    /// is taken).
    #[arg(long)]
    pub dashboard_port: Option<u16>,
    /// Serve HTTPS everywhere (nodes, router, replication) with a
    /// throwaway CA and certificates written under the data directory;
    /// the curl lines printed carry `--cacert`.
    #[arg(long)]
    pub tls: bool,
}

/// The throwaway certificates of `--tls`: one per node (`n1`, ...) and one
/// for the router (the last), all signed by `ca`.
struct PlaygroundTls {
    certs: replidb_tls::throwaway::Generated,
}

impl PlaygroundTls {
    /// Certificates for `nodes` nodes and the router, under `root/tls`.
    fn generate(root: &Path, nodes: u16) -> anyhow::Result<PlaygroundTls> {
        let mut names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
        names.push("router".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let certs = replidb_tls::throwaway::generate(&root.join("tls"), &names)
            .context("cannot make the playground's certificates")?;
        Ok(PlaygroundTls { certs })
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca` for certificate `i` (the
    /// router's is `nodes`).
    fn flags(&self, i: usize) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.certs.cert(i).display().to_string(),
            "--tls-key".into(),
            self.certs.key(i).display().to_string(),
            "--tls-ca".into(),
            self.certs.ca.display().to_string(),
        ]
    }
}

/// `http` or `https`.
fn scheme(tls: Option<&PlaygroundTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// An HTTP client for the playground's own requests to its children,
/// trusting the throwaway CA under `--tls`.
fn http_client(tls: Option<&PlaygroundTls>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(t) = tls {
        let config = replidb_tls::client_config(&t.certs.ca, None)?;
        builder = builder.tls_backend_preconfigured((*config).clone());
    }
    Ok(builder.build()?)
}

/// The policies the multi-leader playground runs with: `cart:` keys keep
/// siblings, every other key is last-writer-wins.
const PLAYGROUND_POLICIES: &str = "*=lww,cart:=siblings";

/// `println!` into a `String` (the banners are built whole, then printed
/// with `--cacert` added to their curl lines under `--tls`).
macro_rules! say {
    ($out:ident, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// One child of the playground: a node or the router.
struct NodeProc {
    id: String,
    url: String,
    /// `None` once it exited; it may then run again, started by hand.
    child: Option<Child>,
    /// The full command line, to tell the user how to restart it.
    argv: Vec<String>,
    /// Where its stderr goes (appended to on a restart by hand).
    log: PathBuf,
    /// Whether it answered the last time the playground looked.
    up: bool,
    /// How it exited, if it died while the playground ran.
    died: Option<String>,
}

impl NodeProc {
    /// Spawn `exe argv...` with stderr to `log`.
    fn spawn(
        id: &str,
        url: &str,
        exe: &Path,
        argv: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<NodeProc> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {id}"))?;
        let mut full = vec![exe.display().to_string()];
        full.extend(argv);
        Ok(NodeProc {
            id: id.to_string(),
            url: url.to_string(),
            child: Some(child),
            argv: full,
            log,
            up: true,
            died: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap_or(0)
    }

    /// The shell command that starts it again as it was started.
    fn restart_command(&self) -> String {
        let words: Vec<String> = self.argv.iter().map(|a| shell_quote(a)).collect();
        format!(
            "{} 2>>{} &",
            words.join(" "),
            shell_quote(&self.log.display().to_string())
        )
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run the playground until Ctrl-C or SIGTERM.
pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        return Err(crate::UsageError("--nodes must be at least 1".into()).into());
    }
    let lag: DurationRange = args
        .lag
        .parse()
        .map_err(|e| crate::UsageError(format!("--lag: {e}")))?;
    let (tmp, root) = match &args.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("replidb-playground-")
                .tempdir()?;
            let root = t.path().to_path_buf();
            (Some(t), root)
        }
    };
    let multi = match args.topology.as_str() {
        "single-leader" => false,
        "multi-leader" | "leaderless" => true,
        other => {
            return Err(crate::UsageError(format!(
            "--topology {other:?}: the playground runs single-leader, multi-leader or leaderless"
        ))
            .into())
        }
    };
    let link: DurationRange = args
        .link_delay
        .parse()
        .map_err(|e| crate::UsageError(format!("--link-delay: {e}")))?;
    let exe = std::env::current_exe().context("cannot find the replidb binary")?;
    let tls = if args.tls {
        Some(PlaygroundTls::generate(&root, args.nodes)?)
    } else {
        None
    };
    let tls = tls.as_ref();
    let curl = match tls {
        Some(t) => format!(
            "curl --cacert {} ",
            shell_quote(&t.certs.ca.display().to_string())
        ),
        None => "curl ".to_string(),
    };
    let mut nodes: Vec<NodeProc> = Vec::new();
    if multi {
        let started = start_all(&exe, &root, &args, &lag, tls, &mut nodes).await;
        if let Err(e) = started {
            stop_all(&mut nodes).await;
            return Err(e);
        }
        let procs: control::Procs = std::sync::Arc::new(tokio::sync::Mutex::new(nodes));
        let dashboard = match serve_dashboard(&procs, &args, tls).await {
            Ok(d) => d,
            Err(e) => {
                stop_all(&mut procs.lock().await).await;
                return Err(e);
            }
        };
        println!("dashboard: {dashboard}\n");
        {
            let nodes = procs.lock().await;
            let banner = if args.topology == "leaderless" {
                leaderless_banner(&nodes, &root, &link)
            } else {
                multi_banner(&nodes, &root, &link)
            };
            print!("{}", banner.replace("curl ", &curl));
        }
        tokio::select! {
            _ = crate::server_cmd::shutdown_signal() => {}
            never = watch_children(procs.clone(), http_client(tls, Duration::from_millis(500))?, !multi) => match never {},
        }
        let mut nodes = procs.lock().await;
        eprintln!(
            "stopping {}...",
            replidb_core::text::count(nodes.len() as u64, "process", "processes")
        );
        stop_all(&mut nodes).await;
        if args.keep {
            if let Some(t) = tmp {
                eprintln!("data kept in {}", t.keep().display());
            }
        }
        return still_down(&nodes);
    }
    let started = start_all(&exe, &root, &args, &lag, tls, &mut nodes).await;
    if let Err(e) = started {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    if let Err(e) = start_router(&exe, &root, &args, tls, &mut nodes).await {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    let procs: control::Procs = std::sync::Arc::new(tokio::sync::Mutex::new(nodes));
    let dashboard = match serve_dashboard(&procs, &args, tls).await {
        Ok(d) => d,
        Err(e) => {
            stop_all(&mut procs.lock().await).await;
            return Err(e);
        }
    };
    println!("dashboard: {dashboard}\n");
    print!(
        "{}",
        banner(&procs.lock().await, &root, &lag).replace("curl ", &curl)
    );
    tokio::select! {
        _ = crate::server_cmd::shutdown_signal() => {}
        never = watch_children(procs.clone(), http_client(tls, Duration::from_millis(500))?, !multi) => match never {},
    }
    let mut nodes = procs.lock().await;
    eprintln!(
        "stopping {}...",
        replidb_core::text::count(nodes.len() as u64, "process", "processes")
    );
    stop_all(&mut nodes).await;
    let by_hand: Vec<&str> = nodes
        .iter()
        .filter(|n| n.child.is_none() && n.up)
        .map(|n| n.id.as_str())
        .collect();
    if !by_hand.is_empty() {
        eprintln!(
            "{} restarted by hand: still running, stop it yourself; data kept in {}",
            by_hand.join(", "),
            root.display()
        );
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else if args.keep {
        if let Some(t) = tmp {
            eprintln!("data kept in {}", t.keep().display());
        }
    }
    still_down(&nodes)
}

/// The playground's outcome: an error naming every child that died while
/// it ran and was still down when it stopped (exit status 1), so a script
/// running the playground sees the crash; `Ok` when all were up.
fn still_down(nodes: &[NodeProc]) -> anyhow::Result<()> {
    let down: Vec<String> = nodes
        .iter()
        .filter(|n| !n.up)
        .filter_map(|n| Some(format!("{} ({})", n.id, n.died.as_deref()?)))
        .collect();
    match down.len() {
        0 => Ok(()),
        1 => bail!(
            "node {} died while the playground ran and was still down when it stopped",
            down[0]
        ),
        _ => bail!(
            "nodes {} died while the playground ran and were still down when it stopped",
            down.join(", ")
        ),
    }
}

/// Serve the dashboard and the `/playground/*` control API (see
/// `control.rs`) in a task of its own; its URL.
async fn serve_dashboard(
    procs: &control::Procs,
    args: &PlaygroundArgs,
    tls: Option<&PlaygroundTls>,
) -> anyhow::Result<String> {
    let port = args
        .dashboard_port
        .unwrap_or_else(|| args.base_port.saturating_sub(2));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let fixed = args.dashboard_port.is_some();
    let (ctl, listener, url) =
        control::Control::bind(procs.clone(), &args.topology, addr, fixed, |timeout| {
            http_client(tls, timeout)
        })
        .await?;
    let app = control::app(ctl);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the dashboard stopped: {e}");
        }
    });
    Ok(url)
}

async fn start_all(
    exe: &Path,
    root: &Path,
    args: &PlaygroundArgs,
    lag: &DurationRange,
    tls: Option<&PlaygroundTls>,
    nodes: &mut Vec<NodeProc>,
) -> anyhow::Result<()> {
    let http = http_client(tls, Duration::from_secs(5))?;
    let scheme = scheme(tls);
    let leader_url = format!("{scheme}://127.0.0.1:{}", args.base_port);
    for i in 0..args.nodes {
        let id = format!("n{}", i + 1);
        let port = args.base_port.checked_add(i).context("port out of range")?;
        let url = format!("{scheme}://127.0.0.1:{port}");
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut argv: Vec<String> = vec![
            "server".into(),
            "--id".into(),
            id.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.display().to_string(),
            // Small backoff so a restarted leader is found quickly.
            "--backoff-base".into(),
            "200ms".into(),
            "--backoff-max".into(),
            "2s".into(),
        ];
        if let Some(t) = tls {
            argv.extend(t.flags(usize::from(i)));
        }
        argv.extend(args.server_args.iter().cloned());
        if args.topology == "multi-leader" || args.topology == "leaderless" {
            let peers: Vec<String> = (0..args.nodes)
                .map(|j| format!("{scheme}://127.0.0.1:{}", args.base_port.saturating_add(j)))
                .collect();
            if args.topology == "leaderless" {
                argv.extend(["--replicas".to_string(), "3".to_string()]);
            }
            argv.extend([
                "--topology".to_string(),
                args.topology.clone(),
                "--peers".to_string(),
                peers.join(","),
                "--conflict-policy".to_string(),
                PLAYGROUND_POLICIES.to_string(),
                "--link-delay".to_string(),
                args.link_delay.clone(),
            ]);
        } else if i > 0 {
            argv.extend(["--follow".to_string(), leader_url.clone()]);
            if !lag.is_zero() {
                argv.extend(["--replication-delay".to_string(), args.lag.clone()]);
            }
        }
        let mut node = NodeProc::spawn(&id, &url, exe, argv, dir.join("server.log"))?;
        let ready = wait_ready(&http, &mut node, &dir).await;
        nodes.push(node);
        ready?;
    }
    Ok(())
}

/// Start `replidb router` on `--base-port - 1` in front of the nodes (it
/// goes last in `nodes`) and wait until it knows the leader.
async fn start_router(
    exe: &Path,
    root: &Path,
    args: &PlaygroundArgs,
    tls: Option<&PlaygroundTls>,
    nodes: &mut Vec<NodeProc>,
) -> anyhow::Result<()> {
    let port = args
        .base_port
        .checked_sub(1)
        .filter(|p| *p > 0)
        .ok_or_else(|| crate::UsageError("--base-port must be at least 2".into()))?;
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let url = format!("{}://127.0.0.1:{port}", scheme(tls));
    let mut argv: Vec<String> = vec![
        "router".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--nodes".into(),
        urls.join(","),
        "--health-interval".into(),
        "500ms".into(),
    ];
    if let Some(t) = tls {
        argv.extend(t.flags(usize::from(args.nodes)));
    }
    nodes.push(NodeProc::spawn(
        "router",
        &url,
        exe,
        argv,
        root.join("router.log"),
    )?);
    let http = http_client(tls, Duration::from_secs(5))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(root.join("router.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the router did not become ready at {url} (is the port free?); last log lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the node answers `/status` (and, for a follower, is
/// connected); an error names the node, and says so if it exited.
async fn wait_ready(http: &reqwest::Client, node: &mut NodeProc, dir: &Path) -> anyhow::Result<()> {
    let (id, url) = (node.id.clone(), node.url.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
            node.child = None;
            node.up = false;
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "node {id} exited during start-up ({status}); last log lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if let Ok(r) = http.get(format!("{url}/status")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["role"] == "leader" || v["connected"] == true {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "node {id} did not become ready at {url} (is the port free?); last log lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How often dead nodes are probed for a restart by hand.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Watch the children forever: say when one dies (and how to restart it),
/// and when a dead one answers again.
///
/// Single-leader: the restart command printed follows the leader of the
/// moment, not the one the node was first started with, so after a
/// switchover it does not point a follower at another follower (which
/// refuses the stream).
async fn watch_children(
    procs: control::Procs,
    http: reqwest::Client,
    single_leader: bool,
) -> std::convert::Infallible {
    let mut last_probe = tokio::time::Instant::now();
    loop {
        let mut nodes = procs.lock().await;
        let mut newly_dead = Vec::new();
        for n in nodes.iter_mut() {
            let exited = match n.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(how) = exited {
                n.child = None;
                n.up = false;
                n.died = Some(how.clone());
                newly_dead.push((n.id.clone(), how));
            }
        }
        if !newly_dead.is_empty() {
            let leader = if single_leader {
                // Ask without holding the lock: the control API uses it.
                let urls = node_urls(&nodes);
                drop(nodes);
                let leader = current_leader(&http, urls).await;
                nodes = procs.lock().await;
                leader
            } else {
                None
            };
            for (id, how) in newly_dead {
                let Some(n) = nodes.iter_mut().find(|n| n.id == id) else {
                    continue;
                };
                n.follow_current_leader(leader.as_ref());
                eprintln!(
                    "\n{} DOWN ({how}); the playground keeps running. Restart it with:\n  {}\n",
                    n.id,
                    n.restart_command()
                );
            }
        }
        // Probe without holding the lock: the control API uses it too.
        let dead: Vec<(String, String, bool)> = nodes
            .iter()
            .filter(|n| n.child.is_none())
            .map(|n| (n.id.clone(), n.url.clone(), n.up))
            .collect();
        let urls = node_urls(&nodes);
        drop(nodes);
        if last_probe.elapsed() >= PROBE_INTERVAL {
            last_probe = tokio::time::Instant::now();
            let mut answered = Vec::new();
            let mut gone_again = false;
            for (id, url, was_up) in dead {
                let path = if id == "router" { "health" } else { "status" };
                let answers = http
                    .get(format!("{url}/{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                gone_again |= was_up && !answers;
                answered.push((id, answers));
            }
            let leader = if single_leader && gone_again {
                current_leader(&http, urls).await
            } else {
                None
            };
            let mut nodes = procs.lock().await;
            for (id, answers) in answered {
                let Some(n) = nodes.iter_mut().find(|n| n.id == id && n.child.is_none()) else {
                    continue;
                };
                if answers != n.up {
                    n.up = answers;
                    if answers {
                        eprintln!("{} is back at {} (started by hand)", n.id, n.url);
                    } else {
                        n.follow_current_leader(leader.as_ref());
                        eprintln!(
                            "{} DOWN again. Restart it with:\n  {}",
                            n.id,
                            n.restart_command()
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Id and URL of every node (not the router), to ask who leads.
fn node_urls(nodes: &[NodeProc]) -> Vec<(String, String)> {
    nodes
        .iter()
        .filter(|n| n.id != "router")
        .map(|n| (n.id.clone(), n.url.clone()))
        .collect()
}

/// Id and URL of the leader of the moment: the node that answers
/// `/status` as leader in the highest epoch, or, when none does (the
/// leader itself is down), the one the followers name, so a dead leader
/// restarts as the leader.
async fn current_leader(
    http: &reqwest::Client,
    nodes: Vec<(String, String)>,
) -> Option<(String, String)> {
    let asks = nodes.into_iter().map(|(id, url)| async move {
        let status: serde_json::Value = http
            .get(format!("{url}/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some((id, url, status))
    });
    let answers: Vec<_> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let leading = answers
        .iter()
        .filter(|(_, _, s)| s["role"] == "leader")
        .max_by_key(|(_, _, s)| s["epoch"].as_u64().unwrap_or(0))
        .map(|(id, url, _)| (id.clone(), url.clone()));
    leading.or_else(|| {
        answers
            .iter()
            .filter(|(_, _, s)| s["role"] == "follower")
            .max_by_key(|(_, _, s)| s["epoch"].as_u64().unwrap_or(0))
            .and_then(|(_, _, s)| {
                Some((
                    s["leader_id"].as_str()?.to_string(),
                    s["leader"].as_str()?.to_string(),
                ))
            })
    })
}

async fn stop_all(nodes: &mut [NodeProc]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) with a pid we spawned and a valid signal has
            // no memory-safety preconditions. SIGCONT first: a node paused
            // from the dashboard would not act on SIGTERM.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGCONT);
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for n in nodes.iter_mut() {
        let Some(child) = n.child.as_mut() else {
            continue;
        };
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

fn banner(all: &[NodeProc], root: &Path, lag: &DurationRange) -> String {
    let mut out = String::new();
    // The router was started last; it is printed first.
    let (router, nodes) = match all.split_last() {
        Some((r, nodes)) if r.id == "router" && !nodes.is_empty() => (r, nodes),
        _ => return out,
    };
    let leader = &nodes[0].url;
    let rt = &router.url;
    say!(out, "replidb playground is running (Ctrl-C stops it)\n");
    say!(
        out,
        "  router    reads to followers, writes to the leader  {rt}  pid {}",
        router.pid()
    );
    for (i, n) in nodes.iter().enumerate() {
        let role = if i == 0 {
            "leader  ".to_string()
        } else {
            format!("follower (apply lag {lag})")
        };
        say!(out, "  {}  {role}  {}  pid {}", n.id, n.url, n.pid());
    }
    say!(out, "  data: {}\n", root.display());
    say!(
        out,
        "  kill -9 a node's pid: the playground keeps running and prints how to restart it\n"
    );
    let follower = nodes.get(1).map(|n| n.url.as_str()).unwrap_or(leader);
    let last = nodes.last().map(|n| n.url.as_str()).unwrap_or(leader);
    say!(out, "Try it (a stale follower read, then convergence):\n");
    // The write and the stale read share one line: followers apply
    // within the lag (0.5 s by default), faster than anyone types the
    // second command.
    say!(
        out,
        "  # 1. write through the router (to the leader), then read at once, no cookie: w=1 answers"
    );
    say!(
        out,
        "  #    before the followers have it, so the follower the router picks answers 404"
    );
    say!(
        out,
        "  curl -s -XPUT '{rt}/v1/kv/greeting' -d hello; echo; curl -si '{rt}/v1/kv/greeting'"
    );
    say!(
        out,
        "  #    (see x-replidb-routed-to and x-replidb-role; the same read a second later finds it)"
    );
    say!(
        out,
        "  # 2. seed-style: the leader asks follower 1 for its copy (404 until applied)"
    );
    say!(out, "  curl -s '{rt}/follower-read?key=greeting&replica=1'");
    say!(
        out,
        "  # 3. read-your-writes: pass the lsn the write returned; the follower waits for it"
    );
    say!(out, "  curl -s '{follower}/v1/kv/greeting?min_lsn=1'");
    say!(
        out,
        "  # 4. ...or let the router do it: its cookies make the read see the write"
    );
    say!(
        out,
        "  #    (replidb_lsn: your last write's lsn; replidb_session: leader reads for 5 s)"
    );
    say!(
        out,
        "  curl -s -c /tmp/replidb.jar -XPUT '{rt}/v1/kv/greeting' -d again"
    );
    say!(out, "  curl -s -b /tmp/replidb.jar '{rt}/v1/kv/greeting'");
    say!(out, "  # 5. a moment later every follower has converged");
    say!(out, "  sleep 1; curl -s '{last}/v1/kv/greeting'");
    say!(
        out,
        "  # watch lag, positions and the router's view and counters"
    );
    say!(
        out,
        "  curl -s {rt}/status; curl -s {leader}/status; curl -s {follower}/health"
    );
    say!(out, "  # write and wait for a majority to have it durably");
    say!(
        out,
        "  curl -s -XPUT '{rt}/v1/kv/greeting?w=majority' -d durable"
    );
    say!(out, "");
    out
}

/// The multi-leader banner: every node writes; curl lines that make a
/// conflict and show each policy and type resolve it.
fn multi_banner(nodes: &[NodeProc], root: &Path, link: &DurationRange) -> String {
    let mut out = String::new();
    let (Some(a), Some(b)) = (nodes.first(), nodes.get(1)) else {
        say!(
            out,
            "the multi-leader playground needs at least 2 nodes (--nodes)"
        );
        return out;
    };
    let c = nodes.last().map(|n| n.url.as_str()).unwrap_or(&a.url);
    let (a, b) = (&a.url, &b.url);
    say!(
        out,
        "replidb multi-leader playground is running (Ctrl-C stops it)\n"
    );
    for n in nodes {
        say!(
            out,
            "  {}  writes and reads  {}  pid {}",
            n.id,
            n.url,
            n.pid()
        );
    }
    say!(
        out,
        "  link delay between nodes: {link}; policies: {PLAYGROUND_POLICIES}"
    );
    say!(out, "  data: {}\n", root.display());
    say!(out, "Try it (seed 003's conflicts):\n");
    say!(
        out,
        "  # 1. Alice and Alicia written on two nodes at once: lww keeps one everywhere"
    );
    say!(out, "  curl -s -XPUT {a}/v1/kv/user:1:name -d Alice & curl -s -XPUT {b}/v1/kv/user:1:name -d Alicia; wait");
    say!(out, "  sleep 1; curl -s {c}/v1/kv/user:1:name");
    say!(
        out,
        "  # ...and the loser is in the conflict log of the node that saw the conflict"
    );
    say!(out, "  curl -s {a}/v1/conflicts; curl -s {b}/v1/conflicts");
    say!(
        out,
        "  # 2. two carts on two nodes under the siblings policy: 300 with both"
    );
    say!(
        out,
        "  curl -s -XPUT {a}/v1/kv/cart:1 -d Book & curl -s -XPUT {b}/v1/kv/cart:1 -d Pen; wait"
    );
    say!(out, "  sleep 1; curl -si {c}/v1/kv/cart:1");
    say!(
        out,
        "  # resolve: write back with the X-Replidb-Context header the read returned"
    );
    say!(out, "  curl -s -XPUT {c}/v1/kv/cart:1 -H \"X-Replidb-Context: $(curl -s -o /dev/null -D - {c}/v1/kv/cart:1 | tr -d '\\r' | sed -n 's/^x-replidb-context: //p')\" -d Book,Pen");
    say!(
        out,
        "  # 3. a cart as a set: both items everywhere, no conflict at all"
    );
    say!(out, "  curl -s -XPOST {a}/v1/set/cart:2 -d '{{\"add\":[\"Book\"]}}' & curl -s -XPOST {b}/v1/set/cart:2 -d '{{\"add\":[\"Pen\"]}}'; wait");
    say!(out, "  sleep 1; curl -s {c}/v1/set/cart:2");
    say!(
        out,
        "  # 4. likes at 100, +5 on one node and +3 on another: 108 everywhere"
    );
    say!(
        out,
        "  curl -s -XPOST {a}/v1/counter/likes -d '{{\"delta\":100}}'; sleep 1"
    );
    say!(out, "  curl -s -XPOST {a}/v1/counter/likes -d '{{\"delta\":5}}' & curl -s -XPOST {b}/v1/counter/likes -d '{{\"delta\":3}}'; wait");
    say!(out, "  sleep 1; curl -s {c}/v1/counter/likes");
    say!(
        out,
        "  # 5. a profile: name changed on one node, email on another: both kept"
    );
    say!(out, "  curl -s -XPATCH {a}/v1/map/profile:1 -d '{{\"name\":\"Alice\"}}' & curl -s -XPATCH {b}/v1/map/profile:1 -d '{{\"email\":\"alice@new\"}}'; wait");
    say!(out, "  sleep 1; curl -s {c}/v1/map/profile:1");
    say!(
        out,
        "  # 6. read your write on another node: send the token the write returned"
    );
    say!(
        out,
        "  curl -si -XPUT {a}/v1/kv/k -d v | grep -i x-replidb-min-version"
    );
    say!(
        out,
        "  curl -s {b}/v1/kv/k -H 'X-Replidb-Min-Version: <token>'"
    );
    say!(
        out,
        "  # per-origin positions, peers and their lag, conflict counts"
    );
    say!(out, "  curl -s {a}/status");
    say!(out, "");
    out
}

/// The leaderless banner: curl lines that show a stale R=1 read, a fresh
/// quorum read and a hint delivered after a node returns.
fn leaderless_banner(nodes: &[NodeProc], root: &Path, link: &DurationRange) -> String {
    let mut out = String::new();
    let Some(a) = nodes.first() else { return out };
    let a = &a.url;
    let b = nodes.get(1).map(|n| n.url.as_str()).unwrap_or(a);
    say!(
        out,
        "replidb leaderless playground is running (Ctrl-C stops it)\n"
    );
    for n in nodes {
        say!(
            out,
            "  {}  coordinates any request  {}  pid {}",
            n.id,
            n.url,
            n.pid()
        );
    }
    say!(
        out,
        "  N=3 replicas per key on a consistent-hash ring; link delay {link}"
    );
    say!(out, "  data: {}\n", root.display());
    say!(out, "Try it (W + R > N gives fresh reads):\n");
    say!(
        out,
        "  # which nodes hold a key: the write answers its replicas"
    );
    say!(out, "  curl -s -XPUT '{a}/v1/kv/greeting?w=1' -d hello");
    say!(
        out,
        "  # 1. w=1 then r=1 at once: a replica the write has not reached yet answers (often 404)"
    );
    say!(
        out,
        "  curl -s -XPUT '{a}/v1/kv/news?w=1' -d v1; curl -s '{b}/v1/kv/news?r=1'"
    );
    say!(
        out,
        "  # 2. w=quorum then r=quorum (2 + 2 > 3): the read always meets the write"
    );
    say!(
        out,
        "  curl -s -XPUT '{a}/v1/kv/news?w=quorum' -d v2; curl -s '{b}/v1/kv/news?r=quorum'"
    );
    say!(out, "  # 3. hinted handoff: kill -9 one replica of the key (see the write's \"replicas\"), write");
    say!(
        out,
        "  #    again with w=all: another node takes a hint for it; restart the replica (the"
    );
    say!(
        out,
        "  #    playground prints how) and the hint is delivered"
    );
    say!(out, "  curl -s -XPUT '{a}/v1/kv/greeting?w=all' -d again");
    say!(out, "  curl -s {a}/status   # ring: hints_pending, hints_delivered, read_repairs, last_anti_entropy");
    say!(out, "  # 4. counters and sets merge on every replica");
    say!(
        out,
        "  curl -s -XPOST {a}/v1/counter/likes -d '{{\"delta\":5}}'; curl -s {b}/v1/counter/likes"
    );
    say!(out, "");
    out
}
