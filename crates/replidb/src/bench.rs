//! `replidb bench`: a closed-loop load generator for the HTTP API.
//!
//! For each client count, that many tasks send one request at a time each
//! (closed loop: a slow server slows the offered load, which is what a real
//! client does) until the duration or the request budget runs out. Latency
//! is recorded per task in an HDR histogram (microseconds, 3 significant
//! digits) and merged afterwards, so recording never contends.
//!
//! The client is built with **no retries**: a retried request would hide an
//! error and stretch a latency sample; every failure is counted instead.
//!
//! Group commit shows up in `replidb_wal_records_per_fsync`: the delta of its
//! `_sum` / `_count` across a row is the average number of writes that shared
//! one fsync during that row.
//!
//! `--mode visibility-poll` measures write acknowledged → visible on a
//! follower by polling the follower, which is the only method a store
//! without `min_lsn` (a Redis replica) allows; with `redis://` URLs it speaks
//! the Redis protocol, so replidb (`--resp-listen`) and Redis are measured by
//! the very same loop. The Redis client is synchronous, so each of those
//! tasks runs on tokio's blocking pool with its own two connections.
//!
//! Output is a markdown table, ready to paste into a README.

use crate::cli::{BenchArgs, BenchMode, ValueKind};
use crate::UsageError;
use clap::ValueEnum as _;
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};
use replidb_client::{Client, ClientOptions, Consistency, ReadOptions, WriteOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys written before a read benchmark; reads of keys past it find nothing
/// (still a valid, if cheaper, read).
const PRELOAD_KEYS_MAX: u64 = 100_000;
/// Concurrency of the preload.
const PRELOAD_TASKS: u64 = 32;
/// Largest latency the histograms hold; slower samples are clamped.
const LATENCY_US_MAX: u64 = 120_000_000;
/// `visibility-poll`: how long a written value may take to show up on the
/// follower before the write counts as an error.
const VISIBLE_WAIT_MAX: Duration = Duration::from_secs(10);
/// `visibility-poll` over the Redis protocol: connect and per-command
/// timeouts, so a dead server ends a task instead of hanging it.
const RESP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one `visibility-poll` operation failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    /// The follower did not show the written value in time.
    #[error("the written value was not visible on the follower within {0:?}")]
    NotVisible(Duration),
    /// The HTTP API answered an error or could not be reached.
    #[error(transparent)]
    Http(#[from] replidb_client::ClientError),
    /// A Redis-protocol server answered an error or could not be reached.
    #[error(transparent)]
    Resp(#[from] redis::RedisError),
}

/// The `redis://` URL scheme: `--url` and `--follower` speak the Redis
/// protocol.
fn is_resp_url(url: &str) -> bool {
    url.starts_with("redis://")
}

/// When a row stops.
#[derive(Clone, Copy, Debug)]
enum Limit {
    For(Duration),
    Requests(u64),
}

/// One row of the table.
struct Row {
    clients: usize,
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    records_per_fsync: Option<f64>,
    first_error: Option<String>,
}

/// What one task did.
struct TaskResult {
    ops: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    first_error: Option<String>,
}

/// Run the benchmark against `url` and print the table.
pub async fn run(url: &str, args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let limit = match (args.requests, args.duration) {
        (Some(n), _) => Limit::Requests(n),
        (None, d) => Limit::For(d.unwrap_or(Duration::from_secs(10))),
    };
    if is_resp_url(url) {
        return run_resp(url, &args, limit).await;
    }
    let opts = ClientOptions {
        retries: 0,
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let client =
        Client::with_options(url, opts.clone()).map_err(|e| UsageError(format!("--url: {e}")))?;
    let value = random_value(args.value_bytes);
    let write_opts = WriteOptions {
        w: Some(args.w),
        timeout_ms: None,
        ..Default::default()
    };

    let follower = match (args.mode, &args.follower) {
        (BenchMode::Visibility | BenchMode::VisibilityPoll, Some(f)) => Some(
            Client::with_options(f, opts.clone())
                .map_err(|e| UsageError(format!("--follower: {e}")))?,
        ),
        (BenchMode::Visibility | BenchMode::VisibilityPoll, None) => {
            return Err(UsageError(format!(
                "--mode {} needs --follower URL",
                mode_name(args.mode)
            ))
            .into())
        }
        _ => None,
    };
    let min_lsn = if matches!(
        args.mode,
        BenchMode::Write | BenchMode::Visibility | BenchMode::VisibilityPoll
    ) {
        0
    } else {
        preload(&client, &args, &value, &write_opts).await?
    };
    let read_opts = match args.mode {
        BenchMode::Write | BenchMode::ReadEventual | BenchMode::VisibilityPoll => {
            ReadOptions::with(Consistency::Eventual)
        }
        BenchMode::Visibility => ReadOptions {
            wait_ms: Some(10_000),
            fallback: Some(replidb_client::Fallback::Error),
            ..ReadOptions::with(Consistency::Eventual)
        },
        BenchMode::ReadMinLsn => ReadOptions {
            min_lsn: Some(min_lsn),
            ..Default::default()
        },
        BenchMode::ReadStrong => ReadOptions::with(Consistency::Strong),
    };
    // A leaderless node reads by quorum, not by consistency level.
    let read_opts = match (&args.r, args.mode) {
        (Some(r), BenchMode::ReadEventual | BenchMode::ReadMinLsn | BenchMode::ReadStrong) => {
            ReadOptions {
                r: Some(r.clone()),
                ..Default::default()
            }
        }
        _ => read_opts,
    };
    let op = Arc::new(Op {
        follower,
        client: client.clone(),
        mode: args.mode,
        value,
        value_kind: args.value_kind,
        write_opts,
        read_opts,
        key_space: args.key_space,
        unique: UniqueValues::new(),
    });

    crate::output::line(&format!(
        "replidb bench: mode={}, w={}{}, value_bytes={}, key_space={}, {}, url={}\n",
        mode_name(args.mode),
        args.w,
        args.r
            .as_ref()
            .map(|r| format!(", r={r}"))
            .unwrap_or_default(),
        args.value_bytes,
        args.key_space,
        match limit {
            Limit::For(d) => format!("duration={}ms", d.as_millis()),
            Limit::Requests(n) => format!("requests={n}"),
        },
        url
    ))?;
    // A fresh node has not fsynced yet, so the metric may not exist: count
    // it as zero when /metrics answers at all.
    let metrics_up = client.metrics().await.is_ok();
    let mut fsync_prev = records_per_fsync_counters(&client)
        .await
        .or(metrics_up.then_some((0.0, 0.0)));
    let with_fsync = fsync_prev.is_some();
    print_header(with_fsync)?;
    for &clients in &args.clients {
        let mut row = run_row(&op, clients, limit).await;
        let now = records_per_fsync_counters(&client).await;
        if let (Some((s0, c0)), Some((s1, c1))) = (fsync_prev, now) {
            row.records_per_fsync = (c1 > c0).then(|| (s1 - s0) / (c1 - c0));
        }
        fsync_prev = now;
        print_row(&row, with_fsync)?;
        if let Some(e) = &row.first_error {
            eprintln!(
                "  ({} errors at {} clients; first: {e})",
                row.errors, clients
            );
        }
    }
    if !with_fsync {
        crate::output::line(&format!("\n(records per fsync: metric replidb_wal_records_per_fsync not exported at {url}/metrics)"))?;
    }
    Ok(())
}

/// The mode as written on the command line.
fn mode_name(mode: BenchMode) -> String {
    mode.to_possible_value()
        .map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_string())
}

fn validate(args: &BenchArgs) -> Result<(), UsageError> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err(UsageError(
            "--clients: every count must be at least 1".into(),
        ));
    }
    if args.key_space == 0 {
        return Err(UsageError("--key-space must be at least 1".into()));
    }
    if args.requests == Some(0) {
        return Err(UsageError("--requests must be at least 1".into()));
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(UsageError("--duration must be positive".into()));
    }
    Ok(())
}

/// Printable random bytes: values stay valid UTF-8, so they travel as plain
/// JSON strings and the benchmark measures the server, not base64.
fn random_value(len: usize) -> Vec<u8> {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .collect()
}

/// A JSON document of about `len` bytes for key number `k`: an order with
/// line items whose ids and numbers vary, like application data.
fn json_value(k: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    let mut doc = format!(
        r#"{{"id":{k},"user":"user-{}","email":"user{}@example.com","status":"{}","items":["#,
        rng.random_range(0..10_000u32),
        rng.random_range(0..10_000u32),
        ["pending", "paid", "shipped"][rng.random_range(0..3usize)]
    );
    let mut first = true;
    while doc.len() + 80 < len {
        if !first {
            doc.push(',');
        }
        first = false;
        doc.push_str(&format!(
            r#"{{"sku":"SKU-{:06}","qty":{},"price_cents":{}}}"#,
            rng.random_range(0..1_000_000u32),
            rng.random_range(1..10u32),
            rng.random_range(100..100_000u32)
        ));
    }
    doc.push_str("]}");
    doc.into_bytes()
}

fn key(i: u64) -> String {
    format!("bench/{i:010}")
}

/// Write the keys a read benchmark reads; returns the highest LSN written.
async fn preload(
    client: &Client,
    args: &BenchArgs,
    value: &[u8],
    opts: &WriteOptions,
) -> anyhow::Result<u64> {
    let n = args.key_space.min(PRELOAD_KEYS_MAX);
    eprintln!("preloading {}...", replidb_core::text::count_s(n, "key"));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PRELOAD_TASKS.min(n) {
        let (client, next, value, opts) =
            (client.clone(), next.clone(), value.to_vec(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let mut max_lsn = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<u64, replidb_client::ClientError>(max_lsn);
                }
                let w = client.put(&key(i), value.clone(), &opts).await?;
                max_lsn = max_lsn.max(w.lsn);
            }
        }));
    }
    let mut max_lsn = 0;
    for t in tasks {
        max_lsn = max_lsn.max(t.await??);
    }
    Ok(max_lsn)
}

/// One operation, shared by every task of every row.
struct Op {
    client: Client,
    follower: Option<Client>,
    mode: BenchMode,
    value: Vec<u8>,
    value_kind: ValueKind,
    write_opts: WriteOptions,
    read_opts: ReadOptions,
    key_space: u64,
    unique: UniqueValues,
}

impl Op {
    /// The value of a write to key number `k`.
    fn value_for(&self, k: u64) -> Vec<u8> {
        match self.value_kind {
            ValueKind::Same => self.value.clone(),
            ValueKind::Random => {
                let mut v = vec![0u8; self.value.len()];
                rand::rng().fill(&mut v[..]);
                v
            }
            ValueKind::Json => json_value(k, self.value.len()),
        }
    }

    /// One operation; `Some(d)` replaces the measured latency with `d`.
    async fn once(&self, k: u64) -> Result<Option<Duration>, PollError> {
        let key = key(k);
        match (self.mode, &self.follower) {
            (BenchMode::VisibilityPoll, Some(f)) => {
                let value = self.unique.next(self.value.len());
                self.client
                    .put(&key, value.clone(), &self.write_opts)
                    .await?;
                let acked = Instant::now();
                loop {
                    if let Some(r) = f.get(&key, &self.read_opts).await? {
                        if r.value == value {
                            return Ok(Some(acked.elapsed()));
                        }
                    }
                    if acked.elapsed() > VISIBLE_WAIT_MAX {
                        return Err(PollError::NotVisible(VISIBLE_WAIT_MAX));
                    }
                }
            }
            (BenchMode::Write, _) => self
                .client
                .put(&key, self.value_for(k), &self.write_opts)
                .await
                .map(|_| None)
                .map_err(Into::into),
            (BenchMode::Visibility, Some(f)) => {
                let w = self
                    .client
                    .put(&key, self.value_for(k), &self.write_opts)
                    .await?;
                let acked = Instant::now();
                // Multi-leader: the write's LSN is of its origin's log, which
                // the other node's `min_lsn` does not compare against; the
                // write's per-origin token (`n1:42`) is what it waits for.
                let opts = match &w.min_version {
                    Some(token) => ReadOptions {
                        min_version: Some(token.clone()),
                        ..self.read_opts.clone()
                    },
                    None => ReadOptions {
                        min_lsn: Some(w.lsn),
                        ..self.read_opts.clone()
                    },
                };
                f.get(&key, &opts).await?;
                Ok(Some(acked.elapsed()))
            }
            _ => Ok(self.client.get(&key, &self.read_opts).await.map(|_| None)?),
        }
    }
}

/// Values no other write has, so a poller comparing values cannot mistake
/// an older write of the same key for the one it waits for: a random run
/// nonce (24 bits, against values left by an earlier run on the same keys)
/// and a sequence number shared by every task of the run.
struct UniqueValues {
    nonce: u32,
    seq: AtomicU64,
}

impl UniqueValues {
    fn new() -> UniqueValues {
        UniqueValues {
            nonce: rand::rng().random_range(0..1 << 24),
            seq: AtomicU64::new(0),
        }
    }

    /// The next value, `len` bytes long (at least the 16 that make it
    /// unique).
    fn next(&self, len: usize) -> Vec<u8> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut v = format!("{:06x}{seq:010}", self.nonce).into_bytes();
        v.resize(len.max(v.len()), b'.');
        v
    }
}

async fn run_row(op: &Arc<Op>, clients: usize, limit: Limit) -> Row {
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (op, issued) = (op.clone(), issued.clone());
            tokio::spawn(async move { task(&op, i as u64, limit, started, &issued).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.map_err(|e| format!("task failed: {e}")));
    }
    merge_row(clients, started.elapsed(), results)
}

async fn task(
    op: &Op,
    seed: u64,
    limit: Limit,
    started: Instant,
    issued: &AtomicU64,
) -> TaskResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = TaskResult {
        ops: 0,
        errors: 0,
        latency_us: new_histogram(),
        first_error: None,
    };
    loop {
        let go = match limit {
            Limit::For(d) => started.elapsed() < d,
            Limit::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
        };
        if !go {
            return r;
        }
        let k = rng.random_range(0..op.key_space);
        let t0 = Instant::now();
        match op.once(k).await {
            Ok(measured) => {
                r.ops += 1;
                let took = measured.unwrap_or_else(|| t0.elapsed());
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                r.latency_us.saturating_record(us.max(1));
            }
            Err(e) => {
                r.errors += 1;
                r.first_error
                    .get_or_insert_with(|| crate::error_line(&e.into()));
            }
        }
    }
}

/// `--mode visibility-poll` over the Redis protocol: `url` is the leader
/// (or Redis master), `--follower` the follower (or replica).
async fn run_resp(url: &str, args: &BenchArgs, limit: Limit) -> anyhow::Result<()> {
    let follower = resp_follower(args)?;
    let open = |flag: &str, u: &str| {
        redis::Client::open(u).map_err(|e| UsageError(format!("{flag}: {e}")))
    };
    let pair = Arc::new(RespPair {
        leader: open("--url", url)?,
        follower: open("--follower", follower)?,
        value_bytes: args.value_bytes,
        key_space: args.key_space,
        unique: UniqueValues::new(),
    });
    crate::output::line(&format!(
        "replidb bench: mode=visibility-poll (Redis protocol), value_bytes={}, key_space={}, {}, url={url}, follower={follower}\n",
        args.value_bytes,
        args.key_space,
        match limit {
            Limit::For(d) => format!("duration={}ms", d.as_millis()),
            Limit::Requests(n) => format!("requests={n}"),
        },
    ))?;
    print_header(false)?;
    for &clients in &args.clients {
        let started = Instant::now();
        let issued = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (pair, issued) = (pair.clone(), issued.clone());
                tokio::task::spawn_blocking(move || {
                    resp_task(&pair, i as u64, limit, started, &issued)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await.map_err(|e| format!("task failed: {e}")));
        }
        let row = merge_row(clients, started.elapsed(), results);
        print_row(&row, false)?;
        if let Some(e) = &row.first_error {
            eprintln!(
                "  ({} errors at {} clients; first: {e})",
                row.errors, clients
            );
        }
    }
    Ok(())
}

/// The `--follower` of a run whose `--url` is `redis://`: only
/// `visibility-poll` speaks the Redis protocol, and then both ends do.
fn resp_follower(args: &BenchArgs) -> Result<&str, UsageError> {
    if args.mode != BenchMode::VisibilityPoll {
        return Err(UsageError(format!(
            "a redis:// --url needs --mode visibility-poll, not {}",
            mode_name(args.mode)
        )));
    }
    args.follower
        .as_deref()
        .filter(|f| is_resp_url(f))
        .ok_or_else(|| {
            UsageError(
                "--mode visibility-poll with a redis:// --url needs a redis:// --follower".into(),
            )
        })
}

/// The two ends of a Redis-protocol `visibility-poll` run.
struct RespPair {
    leader: redis::Client,
    follower: redis::Client,
    value_bytes: usize,
    key_space: u64,
    unique: UniqueValues,
}

/// One blocking `visibility-poll` client over the Redis protocol: SET on
/// the leader, then GET on the follower back to back until the value is
/// there. After an error it reconnects; if that fails the task ends.
fn resp_task(
    pair: &RespPair,
    seed: u64,
    limit: Limit,
    started: Instant,
    issued: &AtomicU64,
) -> TaskResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = TaskResult {
        ops: 0,
        errors: 0,
        latency_us: new_histogram(),
        first_error: None,
    };
    let mut conns = None;
    loop {
        let go = match limit {
            Limit::For(d) => started.elapsed() < d,
            Limit::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
        };
        if !go {
            return r;
        }
        let (leader, follower) = match conns.take() {
            Some(c) => c,
            None => match (resp_connect(&pair.leader), resp_connect(&pair.follower)) {
                (Ok(l), Ok(f)) => (l, f),
                (Err(e), _) | (_, Err(e)) => {
                    r.errors += 1;
                    r.first_error
                        .get_or_insert_with(|| crate::error_line(&PollError::from(e).into()));
                    return r;
                }
            },
        };
        let mut c = (leader, follower);
        let key = key(rng.random_range(0..pair.key_space));
        let value = pair.unique.next(pair.value_bytes);
        match resp_write_then_poll(&mut c.0, &mut c.1, &key, &value) {
            Ok(took) => {
                r.ops += 1;
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                r.latency_us.saturating_record(us.max(1));
                conns = Some(c);
            }
            Err(e) => {
                r.errors += 1;
                r.first_error
                    .get_or_insert_with(|| crate::error_line(&e.into()));
                // `conns` stays empty: the next operation reconnects, as an
                // error may have left a reply unread on either connection.
            }
        }
    }
}

fn resp_connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(RESP_CONNECT_TIMEOUT)?;
    c.set_read_timeout(Some(RESP_COMMAND_TIMEOUT))?;
    c.set_write_timeout(Some(RESP_COMMAND_TIMEOUT))?;
    Ok(c)
}

/// SET `key` on the leader, then GET it on the follower until it holds
/// `value`; returns the time from the SET's reply to the first GET that saw
/// the value.
fn resp_write_then_poll(
    leader: &mut redis::Connection,
    follower: &mut redis::Connection,
    key: &str,
    value: &[u8],
) -> Result<Duration, PollError> {
    redis::cmd("SET").arg(key).arg(value).query::<()>(leader)?;
    let acked = Instant::now();
    loop {
        let seen: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(follower)?;
        if seen.as_deref() == Some(value) {
            return Ok(acked.elapsed());
        }
        if acked.elapsed() > VISIBLE_WAIT_MAX {
            return Err(PollError::NotVisible(VISIBLE_WAIT_MAX));
        }
    }
}

/// One table row from the tasks' results (`Err`: a task that panicked).
fn merge_row(clients: usize, elapsed: Duration, results: Vec<Result<TaskResult, String>>) -> Row {
    let mut row = Row {
        clients,
        ops: 0,
        errors: 0,
        elapsed,
        latency_us: new_histogram(),
        records_per_fsync: None,
        first_error: None,
    };
    for result in results {
        match result {
            Ok(r) => {
                row.ops += r.ops;
                row.errors += r.errors;
                // Same bounds on both sides, so adding cannot fail.
                let _ = row.latency_us.add(&r.latency_us);
                row.first_error = row.first_error.or(r.first_error);
            }
            Err(e) => {
                row.errors += 1;
                row.first_error.get_or_insert(e);
            }
        }
    }
    row
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds: {e}"))
}

fn print_header(with_fsync: bool) -> anyhow::Result<()> {
    let extra = if with_fsync { " records/fsync |" } else { "" };
    let rule = if with_fsync { "---:|" } else { "" };
    crate::output::line(&format!(
        "| clients | ops | errors | throughput (ops/s) | p50 (ms) | p99 (ms) | p999 (ms) | max (ms) |{extra}"
    ))?;
    crate::output::line(&format!("|---:|---:|---:|---:|---:|---:|---:|---:|{rule}"))
}

fn print_row(row: &Row, with_fsync: bool) -> anyhow::Result<()> {
    let ms = |q: f64| {
        if row.ops == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", row.latency_us.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    let secs = row.elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
        row.clients,
        row.ops,
        row.errors,
        row.ops as f64 / secs,
        ms(0.50),
        ms(0.99),
        ms(0.999),
        ms(1.0)
    );
    if with_fsync {
        match row.records_per_fsync {
            Some(v) => line.push_str(&format!(" {v:.1} |")),
            None => line.push_str(" - |"),
        }
    }
    crate::output::line(&line)
}

/// `(sum, count)` of `replidb_wal_records_per_fsync` over every label set,
/// or `None` if the node does not export it (or /metrics is unreachable).
async fn records_per_fsync_counters(client: &Client) -> Option<(f64, f64)> {
    let text = client.metrics().await.ok()?;
    parse_records_per_fsync(&text)
}

fn parse_records_per_fsync(text: &str) -> Option<(f64, f64)> {
    let mut found = false;
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = split_sample(line) else {
            continue;
        };
        match name {
            "replidb_wal_records_per_fsync_sum" => sum += value,
            "replidb_wal_records_per_fsync_count" => count += value,
            _ => continue,
        }
        found = true;
    }
    found.then_some((sum, count))
}

/// `name{labels} value [timestamp]` → `(name, value)`.
fn split_sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let rest = match line[name_end..].rfind('}') {
        Some(i) if line[name_end..].starts_with('{') => &line[name_end + i + 1..],
        _ => &line[name_end..],
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_fsync_is_summed_over_labels() {
        let text = "\
# TYPE replidb_wal_records_per_fsync summary
replidb_wal_records_per_fsync{node_id=\"n1\",quantile=\"0.5\"} 4
replidb_wal_records_per_fsync_sum{node_id=\"n1\"} 120
replidb_wal_records_per_fsync_count{node_id=\"n1\"} 10
replidb_wal_records_per_fsync_sum 30
replidb_wal_records_per_fsync_count 5
replidb_http_requests_total{route=\"/v1/kv\"} 99
";
        assert_eq!(parse_records_per_fsync(text), Some((150.0, 15.0)));
        assert_eq!(parse_records_per_fsync("other_metric 1\n"), None);
    }

    fn bench_args(args: &[&str]) -> BenchArgs {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([&["replidb", "bench"], args].concat()).unwrap();
        let crate::cli::Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        b
    }

    #[test]
    fn the_redis_protocol_is_only_for_visibility_poll_on_both_ends() {
        let ok = bench_args(&[
            "--mode",
            "visibility-poll",
            "--url",
            "redis://127.0.0.1:1",
            "--follower",
            "redis://127.0.0.1:2",
        ]);
        assert_eq!(resp_follower(&ok).unwrap(), "redis://127.0.0.1:2");
        let write = bench_args(&["--url", "redis://127.0.0.1:1"]);
        assert!(resp_follower(&write).is_err());
        let http_follower = bench_args(&[
            "--mode",
            "visibility-poll",
            "--follower",
            "http://127.0.0.1:2",
        ]);
        assert!(resp_follower(&http_follower).is_err());
    }

    #[test]
    fn unique_values_differ_and_have_the_asked_length() {
        let u = UniqueValues::new();
        let (a, b) = (u.next(16), u.next(16));
        assert_ne!(a, b);
        assert_eq!((a.len(), b.len()), (16, 16));
        assert_eq!(u.next(100).len(), 100);
        // Shorter than what makes it unique: the unique part is kept.
        assert_eq!(u.next(4).len(), 16);
    }

    #[test]
    fn zero_clients_is_a_usage_error() {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["replidb", "bench", "--clients", "0,2"]).unwrap();
        let crate::cli::Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert!(validate(&b).is_err());
    }
}
