//! Deterministic simulation of replidb's replication.
//!
//! Seed 000 was a Go program that simulated one leader and three followers
//! with artificial lag and logged how clients saw stale reads and then
//! eventual consistency. This crate tells the same story, but with
//! replidb's own code: a run starts one leader and N followers (or, with
//! `--faults failover|all`, N + 1 nodes that elect their leader through a
//! simulated etcd) as hosts of a [turmoil] simulation, in one process and
//! one thread, on a simulated network and clock, and the same seed prints
//! the same bytes every time.
//!
//! # What is real, what is simulated
//! Real, unchanged: the write-ahead log (`replidb-wal`, real files in a
//! per-run temp directory), the table (`replidb-storage`'s memory backend,
//! checkpointed to a real snapshot file every second), the engine's writer
//! task with group commit and recovery (`replidb-engine`, opened with
//! `inline_io = true` so blocking IO runs inline instead of on a thread
//! pool), and the replication protocol: `Leader::serve`, `Follower::run`,
//! the frame codec, `client_handshake`, `decide_start`, write-concern
//! tracking (`Leader::wait_for`), backoff and the followers' artificial
//! apply delay (`FollowerOptions::delay`, seeded by `FollowerOptions::seed`).
//! With an elected leader also the coordinator: `replidb-coordinator`'s
//! `EtcdCoordinator` loop unchanged (session lease and keep-alives, member
//! records, `election::choose`, the compare-and-swap that takes the leader
//! key and bumps the epoch, the write deadline that fences a leader), the
//! leader's `writable()` check, `begin_epoch`/`adopt_history`, and the
//! follower's rewind of divergent records to `rollback/`.
//!
//! Simulated: the network ([`net`]: turmoil's TCP between host names
//! `leader`, `f1`.., with 1–10 ms one-way latency, behind the protocol's
//! `Transport` trait and an HTTP-upgrade accept loop), time ([`clock`]:
//! every timer is tokio's paused clock driven by turmoil, and the protocol's
//! `Clock` reads turmoil's elapsed time from a fixed epoch), the client
//! ([`workload`]: it calls the engines directly; the HTTP API is not part
//! of the simulation), faults ([`faults`]), and etcd: [`coordinator`] is
//! an in-memory store with etcd's semantics (revisions, leases that expire
//! `ttl` after the last keep-alive on the simulated clock and take their
//! keys with them, compare-and-swap transactions), served by an `etcd`
//! host over turmoil TCP ([`etcd`]); each node's coordinator reaches it
//! through `SimEtcdClient`, the simulation's `CoordStore`, so a partition
//! between a node and `etcd` cuts that node off from its lease exactly as
//! in reality. [`node`] is what the coordinator drives: the same
//! promote/follow steps as the server's `Node`.
//!
//! # A run
//! The client waits until every follower streams, then makes `--writes`
//! writes through the leader (random keys, so some overwrite; about one in
//! four at `w=majority`), and after each one issues about `--read-ratio`
//! eventual reads on random followers at random delays, the first almost at
//! once. Every write, read, apply and fault becomes a line of the story;
//! the summary gives per-follower stale-read rates, persist→apply lag
//! percentiles, time to convergence, and what each read-your-writes strategy
//! would have cost for exactly these reads (a `min_lsn` token with a wait,
//! falling back to the leader, or reading from the leader for a window
//! after each write).
//!
//! # Faults (`--faults none|partition|crash|delay|failover|all`)
//! A schedule drawn from the seed, never two faults at once on one
//! follower: **partition** cuts leader↔follower both ways (turmoil
//! `partition`/`repair`; the stream stalls, the follower's idle timeout
//! fires, it reconnects with backoff); **crash** kills the follower's
//! runtime (turmoil `crash`: its tasks and memory vanish, its files stay)
//! and restarts it (`bounce`: the engine recovers from the table snapshot
//! and the WAL). The WAL buffers appends in memory until `Wal::sync`; with
//! inline IO a writer round (append, then sync) never straddles a crash
//! point, so the log on disk is exactly what was synced, and what a crash
//! loses is memory: frames in flight, batches waiting out the apply delay,
//! the table (rebuilt by recovery); **delay** raises the link's latency to up
//! to 400 ms and turns on [`net::FaultIo`], which delivers some `Records`
//! and `Heartbeat` frames twice (TCP cannot duplicate bytes, so duplication
//! is injected at the frame level) and now and then cuts the stream so the
//! leader replays from the follower's flush LSN.
//!
//! **failover** (and **all**, whose cluster is elected too) targets whoever
//! leads when the fault begins: **crash leader** (restarted later: it
//! recovers, learns the new leader from etcd, follows it and rewinds what
//! it wrote that nobody else kept) or **isolate leader** (cut from every
//! node *and* from etcd: its keep-alives time out, its write deadline
//! passes and it refuses writes, etcd expires its lease and the others
//! elect a successor; healed, it steps down and rewinds). A leader cut off
//! for less than the lease keeps it, or is fenced briefly and renews in
//! time. Under **all**, partitions, crashes and slow links hit any node,
//! the leader included. The client writes only through a node whose
//! `Leader::writable()` is `Ok`, waits while none is, and stands next to
//! every node, so it can still reach an isolated leader: only fencing
//! stops it from writing there. With an elected leader the pauses between
//! writes stretch so that writes go on until the last fault heals.
//!
//! # Invariants (see [`check`])
//! Follower logs are prefixes of the leader's; table digests are equal at
//! equal LSNs; every write acknowledged at `w=majority` is on a majority
//! (on every node once converged); the cluster converges after the faults
//! heal; a restarted follower keeps everything it had flushed. With an
//! elected leader, "the leader" is the one at the end, every acknowledged
//! `w=majority` write must be on it, and: each epoch was won by one node
//! and every write of an epoch was made by its winner, epochs grow with
//! every election, and never are two leaders writable at once. A failed
//! invariant prints `result: FAIL, reproduce with: replidb simulate --seed
//! S ...` and the command exits non-zero.
//!
//! # Multi-leader (`--topology multi-leader`)
//! [`multi`] runs N nodes that each lead their own log and apply every
//! peer's (`NodeCore` + `PeerStream` + the causal merge, as the server's
//! multi-leader mode wires them), each on its own skewed wall clock, under
//! concurrent causal writes (puts under `lww` and `siblings`, counters,
//! sets), partitions between pairs, crashes and slow links, and checks
//! convergence, exact counters and sets, that no acknowledged put is lost
//! without a trace, and that HLC orders causally later writes later.
//!
//! # Leaderless (`--topology leaderless`)
//! [`leaderless`] runs N = 3 replicas per key on a ring at four (R, W)
//! settings under artificial lag and a failing node, with the coordinator
//! core the server's HTTP handlers run (`replidb_leaderless::coordinator`)
//! driven by a discrete-event loop, and prints per setting the stale-read
//! rate, write and read latency percentiles and availability; it checks
//! convergence, nothing acknowledged lost, exact counters and sets, and
//! that `W + R > N` reads see every write acknowledged before they began.
//!
//! # Reproducing a seed
//! The output names the full command line. Run it again, e.g.
//! `replidb simulate --seed 4242 --faults all`, to get the same bytes;
//! add `--story-lines 0` for every line of the story, and
//! `RUST_LOG=debug` for the protocol's own logs on stderr. In a test,
//! `replidb_sim::run(&SimConfig { seed: 4242, faults: FaultMode::All,
//! ..SimConfig::new(4242) })`. Soak runs: `replidb simulate --seeds
//! 1..10000 --faults all` prints one line per failing seed.
//!
//! Determinism rests on: turmoil's seeded RNG and fixed host order;
//! seeded `StdRng`s for the workload, the fault schedule, the delay
//! samplers and the fault layer; etcd's lease ids start at a constant and
//! it expires leases on the simulated clock; link latency (of every link,
//! the ones to `etcd` included) drawn per link by the
//! driver and set as a fixed value every 50 ms instead of sampled per
//! message (tokio wakes the receivers of one `watch` change in a
//! randomised order, and the leader's sessions all watch the engine, so
//! per-message samples from turmoil's single RNG would land on different
//! messages on every run); `BTreeMap`s wherever order is printed; no real
//! clock in any output (the WAL and engine time fsyncs with
//! `Instant::now` only for metrics); no temp paths and no log lines in
//! the output (`replidb simulate` drops tracing unless `RUST_LOG` is set).
//! The tests run seeds twice in one process and compare the bytes.
//!
//! # What the simulation found
//! `Leader::wait_for` acknowledged a `w=majority` write whose last ack
//! arrived after the leader had been fenced and a successor elected
//! without the record, which the successor's followers then rewound
//! (`--seed 50 --faults failover`, before the fix): a write is now
//! acknowledged only while its leader still holds its lease.
//!
//! # Left out
//! etcd's own failures (one `etcd` host that never crashes; no etcd leader
//! changes, no watch: the coordinator polls); the static coordinator's
//! `/admin/promote` and `/admin/fence`, and planned switchover; a
//! partition that cuts a node from etcd but not from the others, alone;
//! the HTTP layer and the router; machine crashes that
//! lose the OS page cache (the WAL writes real files; a crash here is a
//! process crash); clock skew between hosts; snapshots sent to lagging
//! followers (the leader keeps its whole WAL). Clock skew is simulated
//! only in the multi-leader run.

#![warn(missing_docs)]

pub mod check;
pub mod clock;
pub mod cluster;
mod config;
pub mod coordinator;
pub mod etcd;
mod events;
pub mod faults;
pub mod leaderless;
pub mod multi;
pub mod net;
pub mod node;
mod report;
mod run;
pub mod workload;

pub use config::{fmt_duration, FaultMode, FaultModeError, SimConfig};
pub use run::{run, run_seeds, soak, SimReport, SoakReport};

/// Simulated time since the start of the run being driven on this thread
/// (`None` outside a run): the clock of the story's `[  1234ms]` stamps,
/// for log lines (`RUST_LOG=debug replidb simulate`).
pub fn sim_elapsed() -> Option<std::time::Duration> {
    turmoil::sim_elapsed()
}

/// Why a run could not start (an invariant failure is not an error: it is
/// a [`SimReport`] that did not pass).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is unusable.
    #[error("invalid simulation: {0}")]
    Config(String),
    /// The per-run temp directory could not be created.
    #[error("cannot create the simulation's temp directory: {0}")]
    TempDir(#[source] std::io::Error),
}
