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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use replidb_core::DurationRange;
use tokio::process::{Child, Command};

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
    /// Keep data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra flags passed to every `replidb server` (e.g. `--default-w=majority`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

struct NodeProc {
    id: String,
    url: String,
    child: Child,
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
    let tmp;
    let root = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("replidb-playground-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().context("cannot find the replidb binary")?;
    let mut nodes: Vec<NodeProc> = Vec::new();
    let started = start_all(&exe, &root, &args, &lag, &mut nodes).await;
    if let Err(e) = started {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    if let Err(e) = start_router(&exe, &root, &args, &mut nodes).await {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    print_banner(&nodes, &root, &lag);
    tokio::select! {
        _ = crate::server_cmd::shutdown_signal() => {}
        id = watch_children(&mut nodes) => eprintln!("node {id} exited; stopping the playground"),
    }
    eprintln!("stopping {} nodes...", nodes.len());
    stop_all(&mut nodes).await;
    Ok(())
}

async fn start_all(
    exe: &Path,
    root: &Path,
    args: &PlaygroundArgs,
    lag: &DurationRange,
    nodes: &mut Vec<NodeProc>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let leader_url = format!("http://127.0.0.1:{}", args.base_port);
    for i in 0..args.nodes {
        let id = format!("n{}", i + 1);
        let port = args.base_port.checked_add(i).context("port out of range")?;
        let url = format!("http://127.0.0.1:{port}");
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("server")
            .args(["--id", &id, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&dir)
            // Small backoff so a restarted leader is found quickly.
            .args(["--backoff-base", "200ms", "--backoff-max", "2s"])
            .args(&args.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if i > 0 {
            cmd.args(["--follow", &leader_url]);
            if !lag.is_zero() {
                cmd.args(["--replication-delay", &args.lag]);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        nodes.push(NodeProc {
            id: id.clone(),
            url: url.clone(),
            child,
        });
        wait_ready(&http, &url, &id, &dir).await?;
    }
    Ok(())
}

/// Start `replidb router` on `--base-port - 1` in front of the nodes (it
/// goes last in `nodes`) and wait until it knows the leader.
async fn start_router(
    exe: &Path,
    root: &Path,
    args: &PlaygroundArgs,
    nodes: &mut Vec<NodeProc>,
) -> anyhow::Result<()> {
    let port = args
        .base_port
        .checked_sub(1)
        .filter(|p| *p > 0)
        .ok_or_else(|| crate::UsageError("--base-port must be at least 2".into()))?;
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let log = std::fs::File::create(root.join("router.log"))?;
    let child = Command::new(exe)
        .arg("router")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--nodes", &urls.join(",")])
        .args(["--health-interval", "500ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the router")?;
    let url = format!("http://127.0.0.1:{port}");
    nodes.push(NodeProc {
        id: "router".into(),
        url: url.clone(),
        child,
    });
    let http = reqwest::Client::new();
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

/// Wait until the node answers `/status` (and, for a follower, is connected).
async fn wait_ready(http: &reqwest::Client, url: &str, id: &str, dir: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
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

/// Resolves with the id of the first child that exits on its own.
async fn watch_children(nodes: &mut [NodeProc]) -> String {
    loop {
        for n in nodes.iter_mut() {
            if let Ok(Some(_)) = n.child.try_wait() {
                return n.id.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_all(nodes: &mut [NodeProc]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal has
            // no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for n in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
}

fn print_banner(all: &[NodeProc], root: &Path, lag: &DurationRange) {
    // The router was started last; it is printed first.
    let (router, nodes) = match all.split_last() {
        Some((r, nodes)) if r.id == "router" && !nodes.is_empty() => (r, nodes),
        _ => return,
    };
    let leader = &nodes[0].url;
    let rt = &router.url;
    println!("replidb playground is running (Ctrl-C stops it)\n");
    println!(
        "  router    reads to followers, writes to the leader  {rt}  pid {}",
        router.child.id().unwrap_or(0)
    );
    for (i, n) in nodes.iter().enumerate() {
        let role = if i == 0 {
            "leader  ".to_string()
        } else {
            format!("follower (apply lag {lag})")
        };
        println!(
            "  {}  {role}  {}  pid {}",
            n.id,
            n.url,
            n.child.id().unwrap_or(0)
        );
    }
    println!("  data: {}\n", root.display());
    let follower = nodes.get(1).map(|n| n.url.as_str()).unwrap_or(leader);
    let last = nodes.last().map(|n| n.url.as_str()).unwrap_or(leader);
    println!("Try it (a stale follower read, then convergence):\n");
    println!(
        "  # 1. write through the router (to the leader); w=1 answers before followers have it"
    );
    println!("  curl -s -XPUT '{rt}/v1/kv/greeting' -d hello");
    println!(
        "  # 2. read through the router, no cookie: a follower answers, 404, not propagated yet"
    );
    println!("  curl -si '{rt}/v1/kv/greeting'   # see x-replidb-routed-to and x-replidb-role");
    println!("  # 3. seed-style: the leader asks follower 1 for its copy (404 until applied)");
    println!("  curl -s '{rt}/follower-read?key=greeting&replica=1'");
    println!("  # 4. read-your-writes: pass the lsn the write returned; the follower waits for it");
    println!("  curl -s '{follower}/v1/kv/greeting?min_lsn=1'");
    println!("  # 5. ...or let the router do it: its cookies make the read see the write");
    println!("  #    (replidb_lsn: your last write's lsn; replidb_session: leader reads for 5 s)");
    println!("  curl -s -c /tmp/replidb.jar -XPUT '{rt}/v1/kv/greeting' -d again");
    println!("  curl -s -b /tmp/replidb.jar '{rt}/v1/kv/greeting'");
    println!("  # 6. a moment later every follower has converged");
    println!("  sleep 1; curl -s '{last}/v1/kv/greeting'");
    println!("  # watch lag, positions and the router's view and counters");
    println!("  curl -s {rt}/status; curl -s {leader}/status; curl -s {follower}/health");
    println!("  # write and wait for a majority to have it durably");
    println!("  curl -s -XPUT '{rt}/v1/kv/greeting?w=majority' -d durable");
    println!();
}
