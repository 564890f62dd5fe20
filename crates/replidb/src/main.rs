//! `replidb` — one binary for every role of a replicated key-value database.
//!
//! # Commands
//! - `server` runs a node: a leader, or with `--follow URL` a follower
//!   (`server_cmd.rs`; flags and the TOML file are merged in
//!   `server_config.rs`, flags winning).
//! - `put`, `get`, `del`, `scan`, `status` and `admin` are clients of the
//!   HTTP API, through `replidb-client` (`client_cmd.rs`); `--url` (or
//!   `REPLIDB_URL`) picks the node or router.
//! - `playground` starts a local cluster of child `server` processes
//!   and a router in front of them (`playground.rs`).
//! - `router` runs the read/write-splitting proxy of `replidb-router`
//!   (`router_cmd.rs`).
//! - `bench` drives the HTTP API with concurrent clients and prints a
//!   markdown latency table (`bench.rs`).
//!
//! The argument shapes are all in `cli.rs`; adding a command is one
//! [`cli::Command`] variant and one arm in [`dispatch`].
//!
//! # Exit codes and errors (API.md)
//! `0` success, `1` runtime error (including `get` of an absent key),
//! `2` bad usage: clap's own errors, and any [`UsageError`] raised by our
//! validation (a bad duration in a config file, a malformed `--url`), the
//! client's (an empty key) or the node's (a 400).
//! Errors are printed to stderr on one line: `error: ...`.

mod bench;
mod cli;
mod client_cmd;
mod logging;
mod output;
mod playground;
mod router_cmd;
mod server_cmd;
mod server_config;
mod session_file;
#[cfg(feature = "simulate")]
mod simulate_cmd;

use clap::Parser as _;
use cli::{Cli, Command};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a profile of the HTTP write path
/// (callgrind, 16 clients) spent about a quarter of its instructions in
/// malloc/free, which mimalloc's per-thread free lists cut to a fraction
/// (ARCHITECTURE.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A usage mistake found after clap's parsing; exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    replidb_tls::install_default_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_failure(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Server(_) | Command::Router(_)) {
        // The server picks its own format and level; clients only report
        // problems (retries show up with RUST_LOG=debug).
        logging::init(server_config::LogFormat::Logfmt, "warn");
    }
    match cli.command {
        Command::Server(opts) => server_cmd::run(*opts).await,
        Command::Bench(args) => {
            let url = args.target.resolve(cli.url.as_deref());
            bench::run(&url, args).await
        }
        Command::Playground(args) => playground::run(args).await,
        #[cfg(feature = "simulate")]
        Command::Simulate(args) => simulate_cmd::run(args).await,
        Command::Router(args) => router_cmd::run(args).await,
        Command::Put(a) => client_cmd::put(cli.url.as_deref(), a).await,
        Command::Get(a) => client_cmd::get(cli.url.as_deref(), a).await,
        Command::Del(a) => client_cmd::del(cli.url.as_deref(), a).await,
        Command::Scan(a) => client_cmd::scan(cli.url.as_deref(), a).await,
        Command::Status(a) => {
            let url = a.target.resolve(cli.url.as_deref());
            client_cmd::status(&client_cmd::connect(&url, &a.target)?).await
        }
        Command::Admin { action } => {
            let url = action.target().resolve(cli.url.as_deref());
            let client = client_cmd::connect(&url, action.target())?;
            client_cmd::admin(&client, action).await
        }
    }
}

/// Print `error: ...` on one line and pick the exit code.
fn fail(e: &anyhow::Error) -> ExitCode {
    let hint = e
        .chain()
        .find_map(|c| match c.downcast_ref::<replidb_client::ClientError>() {
            Some(replidb_client::ClientError::Connect { url, .. }) => default_url_hint(url),
            _ => None,
        });
    match hint {
        Some(h) => eprintln!("error: {} ({h})", error_line(e)),
        None => eprintln!("error: {}", error_line(e)),
    }
    // Input the client refuses before sending (an empty key), or the node
    // refuses as malformed (a 400: parameters that contradict each other,
    // a key too long), is bad usage too. (A bad --url is a UsageError
    // already; an InvalidUrl here came from a server's redirect, a runtime
    // error.)
    let bad_input = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<replidb_client::ClientError>(),
            Some(
                replidb_client::ClientError::InvalidInput(_)
                    | replidb_client::ClientError::Api { status: 400, .. }
            )
        )
    });
    if bad_input || e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// What to say when nothing answers at `url`: the default `--url` is the
/// playground's router, which a user running nodes by hand does not have.
fn default_url_hint(url: &str) -> Option<&'static str> {
    url.starts_with(cli::DEFAULT_URL).then_some(
        "nothing answers at the default --url, the playground's router: start `replidb playground`, or give --url or REPLIDB_URL",
    )
}

/// The error and its causes on one line. Each cause is shown once (a message
/// already contained in the line is skipped); below a client error, only the
/// root cause is kept, since reqwest's intermediate layers ("error sending
/// request", "client error (Connect)") add nothing for a user.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
        if cause
            .downcast_ref::<replidb_client::ClientError>()
            .is_some()
        {
            let root = e.root_cause().to_string();
            if !line.contains(&root) {
                line.push_str(": ");
                line.push_str(&root);
            }
            break;
        }
    }
    server_config::one_line(&line)
}

/// clap's usage errors, reshaped to API.md's single `error: ...` line (with
/// the usage appended) and exit code 2; `--help` and `--version` print as
/// usual and exit 0.
fn usage_failure(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let (message, rest) = rendered
        .split_once("\nUsage:")
        .unwrap_or((rendered.as_str(), ""));
    let message = message
        .trim_start_matches("error:")
        .replace("For more information, try '--help'.", "");
    let message = server_config::one_line(&message);
    let usage = rest.lines().next().unwrap_or("").trim();
    if usage.is_empty() {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {message} (usage: {usage})");
    }
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection to the default URL says where that URL comes
    /// from; one to a URL the user gave does not.
    #[test]
    fn only_the_default_url_gets_the_playground_hint() {
        assert!(default_url_hint("http://127.0.0.1:7000/v1/kv/k")
            .is_some_and(|h| h.contains("replidb playground") && h.contains("--url")));
        assert_eq!(default_url_hint("http://127.0.0.1:7001/v1/kv/k"), None);
    }
}
