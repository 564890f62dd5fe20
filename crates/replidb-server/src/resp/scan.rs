//! `SCAN` and `DBSIZE`.
//!
//! Redis cursors are numbers, replidb iterates in key order: a cursor is a
//! number this node hands out for "continue after key K", kept in a
//! bounded table (the oldest are forgotten first). Because the walk is in
//! key order, every key present for the whole iteration is returned
//! exactly once (Redis promises at least once). A forgotten cursor, or one
//! from before a restart or from another node, is `-ERR invalid cursor`:
//! start again from 0.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use replidb_resp::Value;

use super::error::{RespError, RespResult};
use super::keys::{parse_int, read};
use super::{glob, Shared};

/// Cursors remembered at once per listener; past it the oldest is
/// forgotten (its client gets `-ERR invalid cursor`).
pub const RESP_SCAN_CURSORS_MAX: usize = 4096;
/// Most keys one `SCAN` call examines, whatever `COUNT` asks (Redis treats
/// `COUNT` as a hint too).
pub const RESP_SCAN_COUNT_MAX: usize = 1000;
/// Longest `MATCH` pattern, in bytes. Matching walks the whole pattern for
/// every key examined (a run of `*` included), so the pattern's length is
/// CPU per key; a key is at most [`replidb_core::MAX_KEY_BYTES`] long, and
/// this leaves room for classes and escapes well past any pattern that can
/// match one.
pub const RESP_MATCH_PATTERN_BYTES_MAX: usize = 64 * 1024;
/// Keys read from the table at a time: the table returns values with the
/// keys, so a small chunk bounds the memory one call holds.
pub const RESP_SCAN_CHUNK_KEYS: usize = 32;
/// Bytes of keys and values one of those table reads holds at most (plus
/// the entry that reaches it); SCAN answers keys only, but the table
/// reads values with them.
pub const RESP_SCAN_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// `COUNT` when none is given, as in Redis.
const SCAN_COUNT_DEFAULT: usize = 10;

/// Cursors handed out: number → the last key the call examined.
pub(crate) struct Cursors {
    next: u64,
    after: HashMap<u64, String>,
    order: VecDeque<u64>,
}

impl Cursors {
    /// An empty table. Numbering starts at a random point so a cursor from
    /// before a restart is unknown rather than silently someone else's.
    pub fn new() -> Self {
        Cursors {
            next: rand::random_range(1..u64::MAX / 2),
            after: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A new cursor for "after `key`".
    fn issue(&mut self, key: String) -> u64 {
        if self.order.len() >= RESP_SCAN_CURSORS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.after.remove(&old);
            }
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.after.insert(id, key);
        self.order.push_back(id);
        id
    }

    fn resolve(&self, id: u64) -> Option<String> {
        self.after.get(&id).cloned()
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
pub(crate) async fn scan(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let cursor: u64 = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::InvalidCursor)?;
    let start_after = match cursor {
        0 => None,
        id => Some(
            shared
                .cursors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .resolve(id)
                .ok_or(RespError::InvalidCursor)?,
        ),
    };
    let mut pattern: Option<Bytes> = None;
    let mut count = SCAN_COUNT_DEFAULT;
    let mut only_type: Option<String> = None;
    for pair in args[2..].chunks(2) {
        let [name, value] = pair else {
            return Err(RespError::Syntax);
        };
        match name.to_ascii_uppercase().as_slice() {
            b"MATCH" if value.len() > RESP_MATCH_PATTERN_BYTES_MAX => {
                return Err(RespError::Limit(format!(
                    "MATCH pattern of {} bytes exceeds the limit of {RESP_MATCH_PATTERN_BYTES_MAX} bytes",
                    value.len()
                )))
            }
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => {
                let n = parse_int(value).ok_or(RespError::NotInteger)?;
                if n < 1 {
                    return Err(RespError::Syntax);
                }
                count = usize::try_from(n)
                    .unwrap_or(RESP_SCAN_COUNT_MAX)
                    .min(RESP_SCAN_COUNT_MAX);
            }
            // A type this listener does not name matches nothing.
            b"TYPE" => only_type = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
            _ => return Err(RespError::Syntax),
        }
    }
    // Start the walk at the pattern's literal prefix: no key before it, or
    // after the keys that carry it, can match.
    let prefix = pattern
        .as_deref()
        .map(glob::literal_prefix)
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("")
        .to_string();
    let (keys, last) = read(&shared.node, |n| {
        let table = n.engine.table();
        let mut found = Vec::new();
        let mut after = start_after.clone();
        let mut examined = 0;
        while examined < count {
            let want = (count - examined).min(RESP_SCAN_CHUNK_KEYS);
            let chunk =
                table.scan_page(&prefix, after.as_deref(), want, RESP_SCAN_CHUNK_BYTES_MAX)?;
            let short = !chunk.may_continue(want);
            examined += chunk.entries.len();
            for (k, v) in chunk.entries {
                let hit = pattern
                    .as_deref()
                    .is_none_or(|p| glob::matches(p, k.as_bytes()))
                    && only_type
                        .as_deref()
                        .is_none_or(|t| t == super::keys::type_name(&v));
                if hit {
                    found.push(Value::bulk_str(&k));
                }
                after = Some(k);
            }
            if short {
                // The end of the keys (with this prefix): done.
                return Ok((found, None));
            }
        }
        Ok((found, after))
    })
    .await?;
    let next = match last {
        None => 0,
        Some(k) => shared
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .issue(k),
    };
    Ok(Value::Array(vec![
        Value::bulk_str(&next.to_string()),
        Value::Array(keys),
    ]))
}

/// `DBSIZE`.
pub(crate) async fn dbsize(shared: &Shared) -> RespResult<Value> {
    read(&shared.node, |n| {
        let len = n.engine.table().len()?;
        Ok(Value::Integer(i64::try_from(len).unwrap_or(i64::MAX)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_bounded_and_forget_the_oldest() {
        let mut c = Cursors::new();
        let first = c.issue("a".into());
        assert_eq!(c.resolve(first).as_deref(), Some("a"));
        for i in 0..RESP_SCAN_CURSORS_MAX {
            c.issue(format!("k{i}"));
        }
        assert_eq!(c.resolve(first), None);
        assert_eq!(c.after.len(), RESP_SCAN_CURSORS_MAX);
        assert_eq!(c.order.len(), RESP_SCAN_CURSORS_MAX);
        assert_eq!(c.resolve(0), None);
    }
}
