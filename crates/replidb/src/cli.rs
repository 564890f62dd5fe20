//! The command line, as API.md writes it. Only argument shapes live here;
//! each command's behaviour is in its own module.

use crate::server_config::ServerOpts;
use clap::{Args, Parser, Subcommand, ValueEnum};
use replidb_client::{Consistency, Fallback, WriteConcern};
use std::time::Duration;

/// replidb — a replicated key-value database. One binary runs every role.
#[derive(Debug, Parser)]
#[command(name = "replidb", version, about, propagate_version = true)]
pub struct Cli {
    /// Accepted before the command too (`replidb --url U get k`), as
    /// earlier versions took it; hidden, since only the client commands
    /// use it and each shows it in its own help.
    #[arg(long, hide = true)]
    pub url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One variant per command: adding a command (`playground`, `simulate`,
/// `router`) is one variant here and one arm in `main.rs`'s dispatch.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node (leader, or follower with --follow).
    Server(Box<ServerOpts>),
    /// Write a value.
    Put(PutArgs),
    /// Read a value; prints the raw value to stdout.
    Get(GetArgs),
    /// Delete a key (succeeds whether or not it existed).
    Del(DelArgs),
    /// List keys with a prefix, one `key<TAB>value` per line.
    Scan(ScanArgs),
    /// Print the node's (or router's) /status as JSON.
    Status(StatusArgs),
    /// Operator actions.
    Admin {
        /// Which action.
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// Drive the HTTP API with concurrent clients and report latencies.
    Bench(BenchArgs),
    /// Start a local cluster (leader + followers with artificial lag).
    Playground(crate::playground::PlaygroundArgs),
    /// Deterministic simulation of a leader and followers (stale reads, lag, faults), or of multi-leader nodes under clock skew.
    #[cfg(feature = "simulate")]
    Simulate(crate::simulate_cmd::SimulateArgs),
    /// Read/write-splitting proxy in front of the nodes.
    Router(crate::router_cmd::RouterArgs),
}

/// The default of `--url`: the playground's router.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7000";

/// Where a client command sends its requests: `--url` of the command, else
/// `--url` before the command, else `REPLIDB_URL`, else [`DEFAULT_URL`].
#[derive(Debug, Args, Default)]
pub struct Target {
    /// Node or router to talk to (`http://` may be left out); several
    /// (URL,URL,...) are tried in turn [env: REPLIDB_URL] [default:
    /// http://127.0.0.1:7000]
    #[arg(long)]
    pub url: Option<String>,
    /// Secret sent as `Authorization: Bearer` to nodes started with
    /// --auth-file
    #[arg(long, env = "REPLIDB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signs the nodes' certificates, for https://
    /// URLs
    // Env values hidden: clap would otherwise render an unset variable as
    // `[env: REPLIDB_CACERT=]`, which reads as if it were set to nothing.
    #[arg(long, env = "REPLIDB_CACERT", hide_env_values = true)]
    pub cacert: Option<std::path::PathBuf>,
}

impl Target {
    /// The URL to use, given the `--url` written before the command. Each
    /// of its comma-separated URLs without a scheme (`127.0.0.1:7001`, as
    /// `--listen` and the router's `--nodes` take it) gets `http://`, so
    /// the session file also keys both spellings alike.
    pub fn resolve(&self, before_command: Option<&str>) -> String {
        let url = self
            .url
            .clone()
            .or_else(|| before_command.map(str::to_string))
            .or_else(|| std::env::var("REPLIDB_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        url.split(',')
            .map(|u| {
                let u = u.trim();
                if u.is_empty() || u.contains("://") {
                    u.to_string()
                } else {
                    format!("http://{u}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether `put`, `del`, `get` and `scan` carry a read-your-writes token
/// between invocations (see `client_cmd::session_state`).
#[derive(Debug, Args, Default)]
pub struct SessionArgs {
    /// Do not keep or use the session token file, so a read may miss an
    /// earlier write of yours (also REPLIDB_NO_SESSION=1)
    #[arg(long)]
    pub no_session: bool,
}

/// Write options shared by `put` and `del`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Write concern: 1, a number of nodes, majority or all [default: the
    /// node's --default-w, normally 1]
    #[arg(long)]
    pub w: Option<WriteConcern>,
    /// How long the leader waits for the write concern, in ms [default:
    /// the node's --default-timeout, normally 5000]
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Multi-leader and leaderless: the causal context a `get` printed
    /// for the key's siblings; the write replaces exactly those versions
    /// (`X-Replidb-Context`) [default: none, a write that has seen
    /// nothing]
    #[arg(long)]
    pub context: Option<String>,
}

/// `replidb put KEY VALUE`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (UTF-8, 1..=1024 bytes).
    pub key: String,
    /// The value, as given (it may start with `-`: `put n -5`).
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `replidb del KEY`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// Read options shared by `get` and `scan` (API.md's query parameters).
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// strong, leader, eventual or bounded [default: eventual on a
    /// follower, leader on the leader]
    #[arg(long)]
    pub consistency: Option<Consistency>,
    /// With bounded: the largest acceptable lag, in ms [default: none;
    /// bounded needs it]
    #[arg(long)]
    pub max_staleness_ms: Option<u64>,
    /// Serve only from a node that has applied this LSN [default: the
    /// session file's token, if any]
    #[arg(long)]
    pub min_lsn: Option<u64>,
    /// How long a node may wait for min_lsn, in ms [default: 1000]
    #[arg(long)]
    pub wait_ms: Option<u64>,
    /// When min_lsn is not reached in time: leader or error [default:
    /// leader]
    #[arg(long)]
    pub fallback: Option<Fallback>,
    /// Multi-leader: serve only once the node has applied this much of
    /// every origin, a token like n1:42,n2:17 [default: the session file's
    /// token, if any]
    #[arg(long)]
    pub min_version: Option<String>,
    /// Leaderless: how many of the key's replicas must answer: 1, 2, ...,
    /// quorum or all [default: quorum]
    #[arg(long)]
    pub r: Option<String>,
}

/// `replidb get KEY`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `replidb scan [PREFIX]`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Key prefix; empty lists everything (up to --limit).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Most entries listed; without it, every key with the prefix (asked
    /// for a page at a time)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// List only keys after this one (what the last line of an earlier
    /// listing showed, to go on from there)
    #[arg(long, value_name = "KEY")]
    pub start_after: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `replidb status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
}

/// `replidb admin ...`, sent to the node (or router) given by `--url`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make the node at --url the leader (a node's URL, not the router's).
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Hand leadership from the leader to node ID, losing nothing; through
    /// the router (the default --url) it reaches the current leader.
    Switchover {
        /// Id of the follower to promote.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: Target,
    },
    /// Re-point the node at --url to follow LEADER (a node's URL, not the
    /// router's).
    Follow {
        /// URL of the leader to follow.
        #[arg(long)]
        leader: String,
        #[command(flatten)]
        target: Target,
    },
}

impl AdminCommand {
    /// Where the action is sent.
    pub fn target(&self) -> &Target {
        match self {
            AdminCommand::Promote { target }
            | AdminCommand::Switchover { target, .. }
            | AdminCommand::Follow { target, .. } => target,
        }
    }
}

/// What `replidb bench` writes; see [`BenchArgs::value_kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValueKind {
    /// One random printable value, written every time.
    Same,
    /// Fresh random bytes per write.
    Random,
    /// A JSON document per write.
    Json,
}

/// What each bench client does per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// PUT random keys at the chosen write concern.
    Write,
    /// GET with consistency=eventual.
    ReadEventual,
    /// GET with min_lsn set to the last LSN of the preload (read-your-writes).
    ReadMinLsn,
    /// GET with consistency=strong.
    ReadStrong,
    /// PUT to `--url` (the leader), then wait on `--follower` for that LSN
    /// (`min_lsn`, answered the moment it is applied; multi-leader: the
    /// write's `min_version`, on another node); the latency recorded is
    /// write acknowledged → visible on the follower.
    Visibility,
    /// Write a unique value through `--url` (the leader), then read the key
    /// on `--follower` back to back until that value is there; the latency
    /// recorded is write acknowledged → first read that sees it. Unlike
    /// `visibility` the follower is polled, not asked to wait, so the same
    /// method measures any store: `http://` URLs use the HTTP API (PUT, then
    /// GET with consistency=eventual), `redis://HOST:PORT` URLs the Redis
    /// protocol (SET, then GET) — a replidb node's `--resp-listen` or a
    /// Redis master and replica.
    VisibilityPoll,
}

/// `replidb bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: Target,
    /// Concurrent client counts to run, one table row each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// How long each row runs (default 10s unless --requests is given).
    #[arg(long, value_parser = parse_duration_arg, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Total operations per row instead of a duration [default: none:
    /// each row runs for --duration]
    #[arg(long)]
    pub requests: Option<u64>,
    /// Size of each written value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// What the written values hold: `same` (one random printable value for
    /// every write), `random` (fresh random bytes per write: nothing to
    /// compress) or `json` (a JSON document per write, with varying ids and
    /// numbers: compressible like application data).
    #[arg(long, value_enum, default_value = "same")]
    pub value_kind: ValueKind,
    /// Write concern of the writes (including the read modes' preload).
    #[arg(long, default_value = "1")]
    pub w: WriteConcern,
    /// What to measure.
    #[arg(long, value_enum, default_value = "write")]
    pub mode: BenchMode,
    /// Number of distinct keys used.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Follower URL for `--mode visibility` and `visibility-poll`
    /// (`redis://HOST:PORT` with a `redis://` `--url`) [default: none;
    /// those modes need it]
    #[arg(long)]
    pub follower: Option<String>,
    /// Leaderless read quorum (`1`, `2`, ..., `quorum`, `all`) of the read
    /// modes: sent as `r=` instead of a consistency level [default: none:
    /// the node's own]
    #[arg(long)]
    pub r: Option<String>,
}

/// clap adapter for `replidb_core::parse_duration`.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    replidb_core::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn help_of(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        let mut cur = &mut cmd;
        for name in path {
            cur = cur.find_subcommand_mut(name).unwrap();
        }
        cur.render_long_help().to_string()
    }

    /// `--url` belongs to the commands that talk to a node or router, and
    /// is shown (with its default) only in their help.
    #[test]
    fn each_command_shows_only_its_own_options() {
        for path in [&["server"][..], &["router"], &["playground"], &["simulate"]] {
            let help = help_of(path);
            assert!(
                !help.contains("--url"),
                "{path:?} help shows --url:\n{help}"
            );
        }
        for path in [
            &["put"][..],
            &["get"],
            &["del"],
            &["scan"],
            &["status"],
            &["bench"],
            &["admin", "switchover"],
            &["admin", "promote"],
            &["admin", "follow"],
        ] {
            let help = help_of(path);
            assert!(
                help.contains("--url") && help.contains("[default: http://127.0.0.1:7000]"),
                "{path:?} help lacks --url and its default:\n{help}"
            );
            assert!(
                !help.contains("=]"),
                "{path:?} help shows an unset variable as set to nothing:\n{help}"
            );
        }
    }

    /// Every option that takes a value says what happens without it, in
    /// every command: a default (`[default: ...]`, or the rule in words),
    /// or that it is required.
    #[test]
    fn every_option_with_a_value_shows_its_default() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values())
                    && !matches!(
                        arg.get_action(),
                        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
                    );
                if !takes_value || arg.is_required_set() || arg.is_hide_set() {
                    continue;
                }
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let shown = !arg.get_default_values().is_empty()
                    || help.to_lowercase().contains("default")
                    || help.ends_with("(required)");
                if !shown {
                    missing.push(format!("{path} --{long}: {help}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "replidb".into(), &mut missing);
        assert!(
            missing.is_empty(),
            "options that do not say their default:\n{}",
            missing.join("\n")
        );
    }

    /// `simulate --help` names every fault mode the simulator has.
    #[cfg(feature = "simulate")]
    #[test]
    fn simulate_help_names_every_fault_mode() {
        let help = help_of(&["simulate"]);
        for mode in ["none", "partition", "crash", "delay", "failover", "all"] {
            assert!(
                mode.parse::<replidb_sim::FaultMode>().is_ok(),
                "{mode} is a fault mode"
            );
            assert!(help.contains(mode), "simulate --help omits {mode}:\n{help}");
        }
    }

    /// `--url` before the command still works, and the command's own wins.
    #[test]
    fn url_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["replidb", "--url", "http://a:1", "get", "k"]).unwrap();
        let Command::Get(g) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(g.target.resolve(cli.url.as_deref()), "http://a:1");
        let cli = Cli::try_parse_from([
            "replidb",
            "--url",
            "http://a:1",
            "get",
            "k",
            "--url",
            "http://b:2",
        ])
        .unwrap();
        let Command::Get(g) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(g.target.resolve(cli.url.as_deref()), "http://b:2");
    }

    /// `--url 127.0.0.1:7001` means http, as `--listen` and the router's
    /// `--nodes` write addresses; a scheme given is kept.
    #[test]
    fn a_url_without_a_scheme_is_http() {
        let cli = Cli::try_parse_from([
            "replidb",
            "status",
            "--url",
            "127.0.0.1:7001, https://b:2,localhost:7003",
        ])
        .unwrap();
        let Command::Status(s) = &cli.command else {
            panic!("not status")
        };
        assert_eq!(
            s.target.resolve(None),
            "http://127.0.0.1:7001,https://b:2,http://localhost:7003"
        );
    }

    #[test]
    fn get_takes_the_http_read_options() {
        let cli = Cli::try_parse_from([
            "replidb",
            "--url",
            "http://n2:7001",
            "get",
            "k",
            "--consistency",
            "bounded",
            "--max-staleness-ms",
            "200",
            "--fallback",
            "error",
        ])
        .unwrap();
        assert_eq!(cli.url.as_deref(), Some("http://n2:7001"));
        let Command::Get(g) = cli.command else {
            panic!("not get")
        };
        assert_eq!(g.read.consistency, Some(Consistency::Bounded));
        assert_eq!(g.read.fallback, Some(Fallback::Error));
    }

    #[test]
    fn bad_write_concern_is_a_usage_error() {
        let err = Cli::try_parse_from(["replidb", "put", "k", "v", "--w", "most"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bench_clients_list_and_exclusive_limits() {
        let cli = Cli::try_parse_from(["replidb", "bench", "--clients", "1,4", "--requests", "10"])
            .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(b.clients, vec![1, 4]);
        assert!(
            Cli::try_parse_from(["replidb", "bench", "--duration", "1s", "--requests", "5"])
                .is_err()
        );
    }
}
