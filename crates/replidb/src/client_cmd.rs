//! Client commands (`put`, `get`, `del`, `scan`, `status`, `admin`): thin
//! wrappers over `replidb-client` that print results for humans and scripts.
//!
//! Output conventions: results on stdout, errors on stderr (from `main`);
//! `get` prints the value's raw bytes so `replidb get k > file` round-trips,
//! adding a newline only when stdout is a terminal.

use crate::cli::{AdminCommand, DelArgs, GetArgs, PutArgs, ReadArgs, ScanArgs, WriteArgs};
use anyhow::Context as _;
use replidb_client::{Client, ReadOptions, WriteOptions};
use std::io::{IsTerminal as _, Write as _};

/// A client for `url`; a malformed URL is a usage error (exit 2).
/// A client for `--url`, which may list several nodes (`URL,URL,...`): the
/// first is asked first, the others when it cannot be reached or no longer
/// leads.
pub fn connect(url: &str) -> anyhow::Result<Client> {
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    let first = urls.first().cloned().unwrap_or_default();
    let opts = replidb_client::ClientOptions {
        failover_urls: urls,
        ..Default::default()
    };
    Client::with_options(&first, opts).map_err(|e| crate::UsageError(format!("--url: {e}")).into())
}

fn write_opts(a: &WriteArgs) -> WriteOptions {
    WriteOptions {
        w: a.w,
        timeout_ms: a.timeout_ms,
        ..Default::default()
    }
}

fn read_opts(a: &ReadArgs) -> ReadOptions {
    ReadOptions {
        consistency: a.consistency,
        max_staleness_ms: a.max_staleness_ms,
        min_lsn: a.min_lsn,
        wait_ms: a.wait_ms,
        fallback: a.fallback,
        ..Default::default()
    }
}

/// `replidb put KEY VALUE`: prints the write's JSON answer (lsn, acks, ...).
pub async fn put(client: &Client, a: PutArgs) -> anyhow::Result<()> {
    let r = client
        .put(&a.key, a.value.into_bytes(), &write_opts(&a.write))
        .await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `replidb del KEY`: prints the JSON answer, including `existed`.
pub async fn del(client: &Client, a: DelArgs) -> anyhow::Result<()> {
    let r = client.delete(&a.key, &write_opts(&a.write)).await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `replidb get KEY`: the raw value; absent is an error (exit 1).
pub async fn get(client: &Client, a: GetArgs) -> anyhow::Result<()> {
    let Some(r) = client.get(&a.key, &read_opts(&a.read)).await? else {
        anyhow::bail!("key not found: {}", a.key);
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&r.value).context("writing to stdout")?;
    if out.is_terminal() {
        out.write_all(b"\n").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// `replidb scan [PREFIX]`: one `key<TAB>value` line per entry. Values
/// that are not UTF-8 are shown lossily (use `get` for exact bytes).
pub async fn scan(client: &Client, a: ScanArgs) -> anyhow::Result<()> {
    let items = client.scan(&a.prefix, a.limit, &read_opts(&a.read)).await?;
    let mut out = std::io::stdout().lock();
    for item in items {
        writeln!(
            out,
            "{}\t{}",
            item.key,
            String::from_utf8_lossy(&item.value)
        )
        .context("writing to stdout")?;
    }
    Ok(())
}

/// `replidb status`: the node's /status, pretty-printed.
pub async fn status(client: &Client) -> anyhow::Result<()> {
    let s = client.status().await?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

/// `replidb admin ...`: the node's answer, pretty-printed.
pub async fn admin(client: &Client, action: AdminCommand) -> anyhow::Result<()> {
    let answer = match action {
        AdminCommand::Promote => client.promote().await?,
        AdminCommand::Switchover { to } => client.switchover(&to).await?,
        AdminCommand::Follow { leader } => client.follow(&leader).await?,
    };
    if !answer.is_null() {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}
