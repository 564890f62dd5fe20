//! Client commands (`put`, `get`, `del`, `scan`, `status`, `admin`): thin
//! wrappers over `replidb-client` that print results for humans and scripts.
//!
//! Output conventions: results on stdout, errors on stderr (from `main`);
//! `get` prints the value's raw bytes so `replidb get k > file` round-trips,
//! adding a newline only when stdout is a terminal.
//!
//! Read-your-writes across invocations: `put`, `del`, `get` and `scan` run
//! as a [`Session`] whose tokens are kept per `--url` in a state file
//! ([`crate::session_file`]), so `replidb put k v; replidb get k` through
//! the router reads the write even when a lagging follower serves the read.
//! A saved token the cluster refuses as unreachable (the cluster was
//! recreated under the same URL) is dropped and the read retried once
//! without it.

use crate::cli::{AdminCommand, DelArgs, GetArgs, PutArgs, ReadArgs, ScanArgs, WriteArgs};
use crate::session_file::SessionFile;
use anyhow::Context as _;
use replidb_client::{Client, ClientError, ReadOptions, Session, WriteOptions};
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};

/// A client for `--url`, which may list several nodes (`URL,URL,...`): the
/// first is asked first, the others when it cannot be reached or no longer
/// leads.
pub fn connect(url: &str, target: &crate::cli::Target) -> anyhow::Result<Client> {
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    let first = urls.first().cloned().unwrap_or_default();
    let opts = replidb_client::ClientOptions {
        failover_urls: urls,
        token: target
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .map(replidb_client::BearerToken),
        ca_file: target.cacert.clone(),
        ..Default::default()
    };
    Client::with_options(&first, opts).map_err(|e| crate::UsageError(format!("--url: {e}")).into())
}

fn write_opts(a: &WriteArgs) -> WriteOptions {
    WriteOptions {
        w: a.w,
        timeout_ms: a.timeout_ms,
        context: a.context.clone(),
    }
}

/// Longest part of a sibling's value `get` shows in its error.
const SIBLING_SHOWN_BYTES_MAX: usize = 64;

/// A key with siblings has no single value to print: name each (value,
/// origin) and the exact command that resolves them, with their context.
fn siblings_error(
    url: &str,
    key: &str,
    siblings: &[replidb_client::Sibling],
    context: &str,
) -> anyhow::Error {
    let shown: Vec<String> = siblings
        .iter()
        .map(|s| match &s.value {
            None => format!("a delete (from {})", s.origin),
            Some(v) => {
                let text = String::from_utf8_lossy(&v[..v.len().min(SIBLING_SHOWN_BYTES_MAX)]);
                let more = if v.len() > SIBLING_SHOWN_BYTES_MAX {
                    "…"
                } else {
                    ""
                };
                format!("{text:?}{more} (from {})", s.origin)
            }
        })
        .collect();
    use crate::output::shell_word;
    let (key_arg, url_arg) = (shell_word(key), shell_word(url));
    anyhow::anyhow!(
        "key {key:?} has {} concurrent versions (siblings): {}; merge them and write the result back with: replidb put {key_arg} VALUE --context {context} --url {url_arg} (or replidb del {key_arg} --context {context} --url {url_arg})",
        siblings.len(),
        shown.join(", ")
    )
}

fn read_opts(a: &ReadArgs) -> ReadOptions {
    ReadOptions {
        consistency: a.consistency,
        max_staleness_ms: a.max_staleness_ms,
        min_lsn: a.min_lsn,
        wait_ms: a.wait_ms,
        fallback: a.fallback,
        min_version: a.min_version.clone(),
        r: a.r.clone(),
    }
}

/// The session of one client command: its client, the tokens loaded from
/// the state file, and the session carrying them.
struct CmdSession {
    client: Client,
    file: SessionFile,
    session: Session,
}

impl CmdSession {
    fn open(
        url: &str,
        target: &crate::cli::Target,
        no_session: bool,
    ) -> anyhow::Result<CmdSession> {
        let client = connect(url, target)?;
        let file = SessionFile::open(url, no_session);
        let session = file.session(client.clone());
        Ok(CmdSession {
            client,
            file,
            session,
        })
    }

    /// Run a read with the saved tokens; if the cluster refuses them as
    /// never reached (a 503 naming `min_lsn`/`min_version` while the
    /// command gave no token of its own), drop them, say so, and run it
    /// once more without. The tokens are saved afterwards either way.
    async fn read<T, F, Fut>(&mut self, user_token: bool, op: F) -> anyhow::Result<T>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = (Session, replidb_client::Result<T>)>,
    {
        let session = std::mem::replace(&mut self.session, Session::new(self.client.clone()));
        let (session, r) = op(session).await;
        if !user_token && self.file.has_token() && token_refused(&r) {
            eprintln!(
                "warning: the saved session token (lsn {}) is ahead of this cluster (was it recreated?); reading without it",
                self.file.lsn()
            );
            let (fresh, r) = op(Session::new(self.client.clone())).await;
            self.file.save(&fresh, true);
            return Ok(r?);
        }
        self.file.save(&session, false);
        Ok(r?)
    }
}

/// Whether `r` is a refusal of a read token nobody could serve.
fn token_refused<T>(r: &replidb_client::Result<T>) -> bool {
    matches!(r, Err(ClientError::Api { status: 503, message, .. })
        if message.contains("min_lsn") || message.contains("min_version"))
}

/// `replidb put KEY VALUE`: prints the write's JSON answer (lsn, acks, ...).
pub async fn put(before: Option<&str>, a: PutArgs) -> anyhow::Result<()> {
    let url = a.target.resolve(before);
    let s = CmdSession::open(&url, &a.target, a.session.no_session)?;
    let r = s
        .session
        .put(&a.key, a.value.into_bytes(), &write_opts(&a.write))
        .await;
    s.file.save(&s.session, false);
    crate::output::line(&serde_json::to_string(&r?)?)
}

/// `replidb del KEY`: prints the JSON answer, including `existed`.
pub async fn del(before: Option<&str>, a: DelArgs) -> anyhow::Result<()> {
    let url = a.target.resolve(before);
    let s = CmdSession::open(&url, &a.target, a.session.no_session)?;
    let r = s.session.delete(&a.key, &write_opts(&a.write)).await;
    s.file.save(&s.session, false);
    crate::output::line(&serde_json::to_string(&r?)?)
}

/// `replidb get KEY`: the raw value; absent is an error (exit 1).
pub async fn get(before: Option<&str>, a: GetArgs) -> anyhow::Result<()> {
    let url = a.target.resolve(before);
    let mut s = CmdSession::open(&url, &a.target, a.session.no_session)?;
    let opts = read_opts(&a.read);
    let key = a.key.clone();
    let found = s
        .read(
            a.read.min_lsn.is_some() || a.read.min_version.is_some(),
            |session| {
                let (opts, key) = (opts.clone(), key.clone());
                async move {
                    let r = session.get(&key, &opts).await;
                    (session, r)
                }
            },
        )
        .await;
    let found = match found {
        Err(e) => match e.downcast_ref::<replidb_client::ClientError>() {
            Some(replidb_client::ClientError::Siblings {
                key,
                siblings,
                context,
            }) => return Err(siblings_error(&url, key, siblings, context)),
            _ => return Err(e),
        },
        Ok(found) => found,
    };
    let Some(r) = found else {
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

/// Most entries `replidb scan` asks for per page (the server's most).
const SCAN_PAGE_LIMIT_MAX: u64 = 10_000;

/// `replidb scan [PREFIX]`: one `key<TAB>value` line per entry, every key
/// with the prefix (or `--limit` of them), asked for a page at a time, each
/// after the last key of the one before. Values that are not UTF-8 are
/// shown lossily (use `get` for exact bytes); a counter, set or map as its
/// JSON rendering.
pub async fn scan(before: Option<&str>, a: ScanArgs) -> anyhow::Result<()> {
    let url = a.target.resolve(before);
    let mut s = CmdSession::open(&url, &a.target, a.session.no_session)?;
    let opts = read_opts(&a.read);
    let prefix = a.prefix.clone();
    let mut after = a.start_after.clone();
    let mut left = a.limit;
    let mut out = std::io::stdout().lock();
    loop {
        let want = left.map_or(SCAN_PAGE_LIMIT_MAX, |n| n.min(SCAN_PAGE_LIMIT_MAX));
        // `want` is at most SCAN_PAGE_LIMIT_MAX, which fits any usize.
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let page = s
            .read(
                a.read.min_lsn.is_some() || a.read.min_version.is_some(),
                |session| {
                    let (opts, prefix, after) = (opts.clone(), prefix.clone(), after.clone());
                    async move {
                        let r = session
                            .scan_page(&prefix, after.as_deref(), Some(want), &opts)
                            .await;
                        (session, r)
                    }
                },
            )
            .await?;
        for item in &page.items {
            let value = match item.siblings {
                Some(n) => format!("<{n} siblings: get the key to see them>"),
                None => String::from_utf8_lossy(&item.value).into_owned(),
            };
            writeln!(out, "{}\t{value}", item.key).context("writing to stdout")?;
        }
        if let Some(n) = left.as_mut() {
            *n = n.saturating_sub(page.items.len() as u64);
            if *n == 0 {
                return Ok(());
            }
        }
        match page.next() {
            Some(last) => after = Some(last.to_string()),
            None => return Ok(()),
        }
    }
}

/// `replidb status`: the node's /status, pretty-printed.
pub async fn status(client: &Client) -> anyhow::Result<()> {
    let s = client.status().await?;
    crate::output::line(&serde_json::to_string_pretty(&s)?)
}

/// `replidb admin ...`: the node's answer, pretty-printed.
pub async fn admin(client: &Client, action: AdminCommand) -> anyhow::Result<()> {
    let answer = match action {
        AdminCommand::Promote { .. } => client.promote().await?,
        AdminCommand::Switchover { to, .. } => client.switchover(&to).await?,
        AdminCommand::Follow { leader, .. } => client.follow(&leader).await?,
    };
    if answer.is_null() {
        return Ok(());
    }
    crate::output::line(&serde_json::to_string_pretty(&answer)?)
}
