//! Writing results to stdout without `println!`, which panics when the
//! reader has gone (`replidb status | head -1`, `simulate ... | true`):
//! here a closed stdout is an error, and the command fails with exit 1
//! and one line on stderr like any other failure.

use std::io::Write;

use anyhow::Context;

/// Print `text` as it is.
pub fn text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Print `text` and a newline.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// `s` as one shell word (quoted only when it needs to be), for commands
/// printed to be pasted: a node's command line in its log, the command
/// that resolves siblings.
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
