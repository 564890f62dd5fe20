//! The leaderless topology's node state: the ring, the hint store, repair
//! counters, and the background loops that deliver hints and run
//! anti-entropy. Coordination of requests is in `api::leaderless`, which
//! drives `replidb_leaderless::coordinator`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_causal::{KeyState, Operand};
use replidb_core::Op;
use replidb_engine::Proposal;
use replidb_leaderless::{antientropy, HintStore, Ring};

use crate::node::Node;
use crate::ServerError;

/// How often hints are offered to their owners.
pub const HINT_DELIVERY_INTERVAL: Duration = Duration::from_millis(500);
/// Keys read per page when a node walks its table (anti-entropy,
/// hand-off, tombstone collection).
pub const SCAN_PAGE_KEYS: usize = 1000;
/// Bytes of keys and values read per page of such a walk (a page also
/// ends at [`SCAN_PAGE_KEYS`]): what a walk holds at once, whatever the
/// values' sizes.
pub const TABLE_WALK_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most bytes of displaced states one hand-off round holds (it also stops
/// at [`HANDOFF_KEYS_PER_ROUND_MAX`] keys).
pub const HANDOFF_BYTES_PER_ROUND_MAX: usize = 64 * 1024 * 1024;
/// Most bytes of one anti-entropy leaf's keys and hashes read from a peer
/// (`/internal/ae/bucket`): about 1.5 million keys of 16 bytes per leaf,
/// a hundred million in the table. A leaf past it is not repaired.
pub const AE_BUCKET_ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most tombstones one collection round gathers before it asks the
/// replicas (the rest wait for the next round).
pub const TOMBSTONES_PER_ROUND_MAX: usize = 10_000;
/// Most displaced keys one hand-off round moves (the rest wait for the
/// next round), so a large ring change does not starve anti-entropy.
pub const HANDOFF_KEYS_PER_ROUND_MAX: usize = 10_000;
/// Longest an internal request between nodes may take.
pub const INTERNAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Leaderless state of one node.
pub struct Leaderless {
    /// The ring over every member (this node included), by URL.
    pub ring: Ring,
    /// This node's URL as the ring knows it.
    pub me: String,
    /// Hints held for other nodes.
    pub hints: HintStore,
    /// Read repairs pushed since start.
    pub read_repairs: AtomicU64,
    /// Hints delivered since start.
    pub hints_delivered: AtomicU64,
    /// Keys anti-entropy repaired since start.
    pub ae_keys_repaired: AtomicU64,
    /// The last anti-entropy round: (wall ms at its end, keys repaired,
    /// peers compared).
    pub last_round: Mutex<Option<(u64, u64, usize)>>,
    /// Tombstones collected since start (by this node, as the first
    /// replica of their keys).
    pub tombstones_collected: AtomicU64,
    /// Keys handed off since start: held here, no longer ours on the ring,
    /// given to every replica and then removed here.
    pub keys_handed_off: AtomicU64,
    /// How each other member answered this node's last requests (state
    /// pushes and fetches, hints, anti-entropy), by URL: `/status` →
    /// `peers`. No member streams to another here, so there is no lag to
    /// show, only reachability.
    contacts: Mutex<BTreeMap<String, Contact>>,
    /// Where tombstone collection goes on at its next round (`None`: from
    /// the first key), after a round that gathered
    /// [`TOMBSTONES_PER_ROUND_MAX`] candidates.
    tombstone_cursor: Mutex<Option<String>>,
}

/// Largest encoded causal state this node accepts for one key, with values
/// of at most `max_value_bytes`: a set or map holds up to
/// `TXN_VALUES_MAX` values of it (at least 1 MiB in all), and a key up to
/// `SIBLINGS_MAX` siblings beside its version. A replica's state, a hint,
/// a scan entry read from a peer are all bounded by it.
pub fn state_bytes_max(max_value_bytes: usize) -> usize {
    max_value_bytes
        .saturating_mul(replidb_core::TXN_VALUES_MAX)
        .max(1 << 20)
        .saturating_mul(replidb_causal::SIBLINGS_MAX + 1)
}

/// What this node last saw of one member.
#[derive(Clone, Debug, Default)]
struct Contact {
    /// Monotonic ms of the last request it answered.
    last_ok_mono_ms: Option<u64>,
    /// Requests that failed since it last answered.
    failures_in_a_row: u64,
    /// The last failure.
    last_error: Option<String>,
}

impl Leaderless {
    /// State for `node`'s configuration.
    pub fn open(node: &Node) -> Result<Leaderless, ServerError> {
        let me = node.config.advertise().trim_end_matches('/').to_string();
        let mut members: Vec<String> = node.config.peers.clone();
        members.push(me.clone());
        let ring = Ring::new(&members, node.config.replicas)
            .map_err(|e| ServerError::Startup(format!("--peers: {e}")))?;
        let hints = HintStore::open(&node.config.data_dir.join("hints"))
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        Ok(Leaderless {
            ring,
            me,
            hints,
            read_repairs: AtomicU64::new(0),
            hints_delivered: AtomicU64::new(0),
            ae_keys_repaired: AtomicU64::new(0),
            last_round: Mutex::new(None),
            tombstones_collected: AtomicU64::new(0),
            keys_handed_off: AtomicU64::new(0),
            contacts: Mutex::new(BTreeMap::new()),
            tombstone_cursor: Mutex::new(None),
        })
    }

    /// Record how member `url` answered a request (`now_mono_ms` on this
    /// node's monotonic clock). Unknown URLs are ignored, so the map stays
    /// bounded by the ring.
    pub fn note_contact(&self, url: &str, now_mono_ms: u64, outcome: Result<(), String>) {
        if !self.ring.members().iter().any(|m| m == url) {
            return;
        }
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        let c = contacts.entry(url.to_string()).or_default();
        match outcome {
            Ok(()) => {
                c.last_ok_mono_ms = Some(now_mono_ms);
                c.failures_in_a_row = 0;
                c.last_error = None;
            }
            // It answered, so it is reachable; the refusal is kept to show.
            Err(e) if e.starts_with("answered 4") => {
                c.last_ok_mono_ms = Some(now_mono_ms);
                c.failures_in_a_row = 0;
                c.last_error = Some(e);
            }
            Err(e) => {
                c.failures_in_a_row = c.failures_in_a_row.saturating_add(1);
                c.last_error = Some(e);
            }
        }
    }

    /// `/status` → `peers`: every other member with how it last answered
    /// and the hints held for it.
    pub fn peers_json(&self, now_mono_ms: u64) -> Vec<serde_json::Value> {
        let hints = self.hints.pending_by_owner();
        let contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        self.ring
            .members()
            .iter()
            .filter(|m| **m != self.me)
            .map(|m| {
                let c = contacts.get(m).cloned().unwrap_or_default();
                let state = match (c.failures_in_a_row, c.last_ok_mono_ms) {
                    (0, Some(_)) => "reachable",
                    (0, None) => "unknown",
                    _ => "unreachable",
                };
                serde_json::json!({
                    "url": m,
                    "state": state,
                    "connected": state == "reachable",
                    "last_ok_ms_ago": c.last_ok_mono_ms.map(|t| now_mono_ms.saturating_sub(t)),
                    "consecutive_failures": c.failures_in_a_row,
                    "last_error": c.last_error,
                    "hints_pending": hints.get(m).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    /// The key's replicas, owned.
    pub fn preference_list(&self, key: &str) -> Vec<String> {
        self.ring
            .preference_list(key)
            .into_iter()
            .map(String::from)
            .collect()
    }
}

/// Join `operand` (a state from another replica) into the local table,
/// durably: an `Op::Merge` record in this node's own log.
pub async fn merge_locally(node: &Node, key: &str, operand: Vec<u8>) -> Result<(), String> {
    Operand::decode(&operand).map_err(|e| e.to_string())?;
    node.engine
        .propose(Proposal::new(Op::Merge {
            key: key.to_string(),
            operand,
        }))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The causal state of `key` here.
pub fn local_state(node: &Node, key: &str) -> Option<KeyState> {
    node.engine
        .table()
        .get(key)
        .ok()
        .flatten()
        .filter(|v| v.causal)
        .and_then(|v| KeyState::decode(&v.value).ok())
}

/// Send `operand` for `key` to replica `url`; true when it made it durable.
pub async fn push_state(node: &Node, url: &str, key: &str, operand: Vec<u8>) -> bool {
    let r = node
        .http
        .post(format!("{url}/internal/replica"))
        .query(&[("key", key)])
        .body(operand)
        .timeout(INTERNAL_TIMEOUT)
        .send()
        .await;
    let outcome = match r {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status().as_u16())),
        Err(e) => Err(e.to_string()),
    };
    let ok = outcome.is_ok();
    note_contact(node, url, outcome);
    ok
}

/// [`Leaderless::note_contact`] on `node`'s leaderless state, now.
fn note_contact(node: &Node, url: &str, outcome: Result<(), String>) {
    if let Some(lz) = node.leaderless.get() {
        lz.note_contact(url, node.clock.mono_ms(), outcome);
    }
}

/// Fetch `key`'s state from replica `url`: `Ok(None)` when it has none,
/// `Err` when it did not answer.
pub async fn fetch_state(node: &Node, url: &str, key: &str) -> Result<Option<KeyState>, String> {
    let got = fetch_state_from(node, url, key).await;
    note_contact(node, url, got.as_ref().map(|_| ()).map_err(Clone::clone));
    got
}

async fn fetch_state_from(node: &Node, url: &str, key: &str) -> Result<Option<KeyState>, String> {
    let r = node
        .http
        .get(format!("{url}/internal/replica"))
        .query(&[("key", key)])
        .timeout(INTERNAL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        404 => Ok(None),
        200 => {
            let b = crate::peer_answer::bytes(r, state_bytes_max(node.config.max_value_bytes))
                .await
                .map_err(|e| e.to_string())?;
            KeyState::decode(&b).map(Some).map_err(|e| e.to_string())
        }
        s => Err(format!("answered {s}")),
    }
}

/// Deliver hints to their owners until shutdown.
pub async fn deliver_hints(node: Arc<Node>, lz: Arc<Leaderless>) {
    let mut tick = tokio::time::interval(HINT_DELIVERY_INTERVAL);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (id, hint) in lz.hints.list() {
            if push_state(&node, &hint.owner, &hint.key, hint.operand()).await {
                if let Err(e) = lz.hints.remove(id) {
                    tracing::warn!(error = %e, "delivered hint not removed");
                    continue;
                }
                lz.hints_delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("replidb_hints_delivered_total", "node_id" => node.config.id.clone()).increment(1);
                tracing::debug!(owner = %hint.owner, key = %hint.key, "hint delivered");
            }
        }
        metrics::gauge!("replidb_hints_pending", "node_id" => node.config.id.clone())
            .set(lz.hints.pending() as f64);
    }
}

/// Entry hashes of the keys this node holds that `peer` replicates too,
/// in leaf `bucket` only if given. With a bucket this holds about
/// 1/[`antientropy::BUCKETS`] of the shared keys; for all of them use
/// [`shared_leaves`], which holds none.
pub fn shared_entries(
    node: &Node,
    lz: &Leaderless,
    peer: &str,
    bucket: Option<usize>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for_each_shared_entry(
        node,
        lz,
        peer,
        |b| bucket.is_none_or(|want| want == b),
        |k, h| {
            out.insert(k.to_string(), h);
        },
    );
    out
}

/// The hash-tree leaves of the keys this node holds that `peer` replicates
/// too, folded page by page: memory does not grow with the table.
pub fn shared_leaves(node: &Node, lz: &Leaderless, peer: &str) -> Vec<u64> {
    let mut leaves = vec![0u64; antientropy::BUCKETS];
    for_each_shared_entry(
        node,
        lz,
        peer,
        |_| true,
        |k, h| antientropy::add_to_leaves(&mut leaves, k, h),
    );
    leaves
}

/// One page of this node's whole table after `after`, within
/// [`SCAN_PAGE_KEYS`] and [`TABLE_WALK_PAGE_BYTES_MAX`].
fn table_page(
    node: &Node,
    after: Option<&str>,
) -> Result<replidb_storage::ScanPage, replidb_storage::StorageError> {
    node.engine
        .table()
        .scan_page("", after, SCAN_PAGE_KEYS, TABLE_WALK_PAGE_BYTES_MAX)
}

/// Call `f(key, entry hash)` for each key this node holds that `peer`
/// replicates too and whose leaf `in_bucket` accepts, reading the table
/// [`SCAN_PAGE_KEYS`] keys at a time.
fn for_each_shared_entry(
    node: &Node,
    lz: &Leaderless,
    peer: &str,
    in_bucket: impl Fn(usize) -> bool,
    mut f: impl FnMut(&str, u64),
) {
    let mut after: Option<String> = None;
    loop {
        let page = match table_page(node, after.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "anti-entropy scan failed");
                return;
            }
        };
        let Some(last) = page.entries.last().map(|(k, _)| k.clone()) else {
            return;
        };
        for (k, v) in &page.entries {
            if !v.causal || !lz.ring.holds(peer, k) || !lz.ring.holds(&lz.me, k) {
                continue;
            }
            if !in_bucket(antientropy::bucket_of(k)) {
                continue;
            }
            if let Ok(state) = KeyState::decode(&v.value) {
                f(k, antientropy::entry_hash(k, &state.canonical_bytes()));
            }
        }
        if !page.may_continue(SCAN_PAGE_KEYS) {
            return;
        }
        after = Some(last);
    }
}

/// Run anti-entropy rounds every `--anti-entropy-interval` until shutdown.
pub async fn anti_entropy(node: Arc<Node>, lz: Arc<Leaderless>) {
    let mut tick = tokio::time::interval(node.config.anti_entropy_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (repaired, peers) = anti_entropy_round(&node, &lz).await;
        collect_tombstones(&node, &lz).await;
        hand_off_displaced(&node, &lz).await;
        *lz.last_round.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((node.clock.now_ms(), repaired, peers));
    }
}

/// One round against every other member: compare leaves, then the keys of
/// differing leaves, and join the states of keys that differ on both sides.
/// Returns (keys repaired, peers compared).
pub async fn anti_entropy_round(node: &Node, lz: &Leaderless) -> (u64, usize) {
    let mut repaired = 0;
    let mut compared = 0;
    for peer in lz.ring.members().iter().filter(|m| **m != lz.me) {
        let my_leaves = shared_leaves(node, lz, peer);
        let theirs: Vec<u64> = match node
            .http
            .get(format!("{peer}/internal/ae/leaves"))
            .query(&[("peer", lz.me.as_str())])
            .timeout(INTERNAL_TIMEOUT)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                lz.note_contact(peer, node.clock.mono_ms(), Ok(()));
                // One hash per leaf. Not read: this peer is not compared
                // this round (an empty list would differ in every leaf).
                match crate::peer_answer::json(r, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                    .await
                {
                    Ok(leaves) => leaves,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "anti-entropy leaves not read");
                        continue;
                    }
                }
            }
            Ok(r) => {
                let why = format!("answered {}", r.status().as_u16());
                lz.note_contact(peer, node.clock.mono_ms(), Err(why));
                continue;
            }
            Err(e) => {
                lz.note_contact(peer, node.clock.mono_ms(), Err(e.to_string()));
                continue;
            }
        };
        compared += 1;
        let differing = antientropy::differing(&my_leaves, &theirs);
        if differing.is_empty() {
            continue;
        }
        // One scan for the keys of every differing leaf: memory in
        // proportion to the leaves that differ, not to the table.
        let mut mine = BTreeMap::new();
        for_each_shared_entry(
            node,
            lz,
            peer,
            |b| differing.contains(&b),
            |k, h| {
                mine.insert(k.to_string(), h);
            },
        );
        for b in differing {
            let their_keys: BTreeMap<String, u64> = match node
                .http
                .get(format!("{peer}/internal/ae/bucket"))
                .query(&[("peer", lz.me.as_str()), ("bucket", &b.to_string())])
                .timeout(INTERNAL_TIMEOUT)
                .send()
                .await
            {
                // An answer not read (too large, cut off) is skipped, not
                // taken for an empty leaf: that would repair every key here.
                Ok(r) if r.status().is_success() => {
                    match crate::peer_answer::json(r, AE_BUCKET_ANSWER_BYTES_MAX).await {
                        Ok(keys) => keys,
                        Err(e) => {
                            tracing::warn!(%peer, bucket = b, error = %e, "anti-entropy leaf not compared");
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            let my_keys: BTreeMap<String, u64> = mine
                .iter()
                .filter(|(k, _)| antientropy::bucket_of(k) == b)
                .map(|(k, h)| (k.clone(), *h))
                .collect();
            for key in antientropy::differing_keys(&my_keys, &their_keys) {
                if repair_key(node, peer, &key).await {
                    repaired += 1;
                    lz.ae_keys_repaired.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("replidb_antientropy_keys_repaired_total", "node_id" => node.config.id.clone())
                        .increment(1);
                }
            }
        }
    }
    if repaired > 0 {
        tracing::info!(keys = repaired, "anti-entropy repaired keys");
    }
    (repaired, compared)
}

/// Join `key`'s states here and on `peer`, and give each side what it
/// lacks. True when either side changed.
async fn repair_key(node: &Node, peer: &str, key: &str) -> bool {
    let Ok(theirs) = fetch_state(node, peer, key).await else {
        return false;
    };
    let mine = local_state(node, key);
    let Some(rec) = replidb_leaderless::reconcile(key, mine.as_ref(), theirs.as_ref()) else {
        return false;
    };
    let operand = Operand::State(rec.merged).encode();
    let mut changed = false;
    if rec.to_mine && merge_locally(node, key, operand.clone()).await.is_ok() {
        changed = true;
    }
    if rec.to_theirs && push_state(node, peer, key, operand).await {
        changed = true;
    }
    changed
}

/// Hand off the keys this node holds but is no longer a replica of (the
/// ring changed: a restart with a longer `--peers`). Each key's whole state
/// is joined into every replica of its preference list, durably; only when
/// all of them have it is the local copy removed, and only if nothing
/// changed it meanwhile (the delete is conditional on the key's LSN, so a
/// write or repair that lands here in between keeps the copy for the next
/// round). Riak calls this ownership handoff. Returns the keys removed.
pub async fn hand_off_displaced(node: &Node, lz: &Leaderless) -> u64 {
    let mut displaced = Vec::new();
    let mut displaced_bytes = 0usize;
    let mut after: Option<String> = None;
    'scan: loop {
        let Ok(page) = table_page(node, after.as_deref()) else {
            return 0;
        };
        let Some(last) = page.entries.last().map(|(k, _)| k.clone()) else {
            break;
        };
        let more = page.may_continue(SCAN_PAGE_KEYS);
        for (k, v) in page.entries {
            if v.causal && !lz.ring.holds(&lz.me, &k) {
                displaced_bytes += k.len() + v.value.len();
                displaced.push((k, v));
                if displaced.len() >= HANDOFF_KEYS_PER_ROUND_MAX
                    || displaced_bytes >= HANDOFF_BYTES_PER_ROUND_MAX
                {
                    break 'scan;
                }
            }
        }
        if !more {
            break;
        }
        after = Some(last);
    }
    let mut moved = 0;
    for (key, held) in displaced {
        let Ok(state) = KeyState::decode(&held.value) else {
            continue;
        };
        let operand = Operand::State(state).encode();
        let mut all = true;
        for replica in lz.preference_list(&key) {
            all &= push_state(node, &replica, &key, operand.clone()).await;
            if !all {
                break;
            }
        }
        if !all {
            continue;
        }
        let mut delete = Proposal::new(Op::Delete { key: key.clone() });
        delete.conditions.push((key.clone(), held.lsn));
        match node.engine.propose(delete).await {
            Ok(_) => {
                moved += 1;
                lz.keys_handed_off.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("replidb_handoff_keys_total", "node_id" => node.config.id.clone())
                    .increment(1);
            }
            Err(e) => {
                tracing::debug!(%key, error = %e, "hand-off kept the key (changed meanwhile)")
            }
        }
    }
    if moved > 0 {
        tracing::info!(
            keys = moved,
            "handed off keys this node no longer replicates"
        );
    }
    moved
}

/// How long after its write a tombstone may be collected: long enough for
/// anti-entropy to have carried it everywhere twice (Cassandra's
/// `gc_grace_seconds` plays this part).
pub fn tombstone_grace_ms(node: &Node) -> u64 {
    (node.config.anti_entropy_interval.as_millis() as u64 * 2).max(1000)
}

/// Collect tombstones this node is the first replica of: a key whose every
/// version is a delete older than the grace period is removed from every
/// replica, but only when every replica holds exactly the same state and
/// no node holds a hint for the key (a hint could bring back a version the
/// tombstone superseded). A replica whose state changed in between refuses
/// (`/internal/collect` checks the state's hash), and keeps the newer state.
pub async fn collect_tombstones(node: &Node, lz: &Leaderless) {
    let now = node.clock.now_ms();
    let grace = tombstone_grace_ms(node);
    let mut candidates = Vec::new();
    // Where the last round stopped: a round that fills up on tombstones it
    // cannot collect yet must not keep the next ones from ever being seen.
    let mut after: Option<String> = lz
        .tombstone_cursor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    'scan: loop {
        let Ok(page) = table_page(node, after.as_deref()) else {
            return;
        };
        let Some(last) = page.entries.last().map(|(k, _)| k.clone()) else {
            break;
        };
        for (k, v) in &page.entries {
            if candidates.len() >= TOMBSTONES_PER_ROUND_MAX {
                // The next round goes on from the last candidate.
                *lz.tombstone_cursor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = candidates
                    .last()
                    .map(|(key, _): &(String, Vec<u8>)| key.clone());
                break 'scan;
            }
            if !v.causal || lz.ring.preference_list(k).first() != Some(&lz.me.as_str()) {
                continue;
            }
            let Ok(KeyState::Register(r)) = KeyState::decode(&v.value) else {
                continue;
            };
            let old = r
                .versions
                .iter()
                .all(|v| v.is_tombstone() && v.hlc.wall_ms.saturating_add(grace) < now);
            if old && !r.versions.is_empty() {
                candidates.push((k.clone(), KeyState::Register(r).canonical_bytes()));
            }
        }
        if !page.may_continue(SCAN_PAGE_KEYS) {
            break;
        }
        after = Some(last);
    }
    for (key, canon) in candidates {
        let pref = lz.preference_list(&key);
        let mut agreed = true;
        for u in pref.iter().filter(|u| **u != lz.me) {
            match fetch_state(node, u, &key).await {
                Ok(Some(s)) if s.canonical_bytes() == canon => {}
                _ => {
                    agreed = false;
                    break;
                }
            }
        }
        if !agreed || hints_anywhere(node, lz, &key).await {
            continue;
        }
        let hash = antientropy::entry_hash(&key, &canon).to_string();
        let mut all = true;
        for u in &pref {
            let r = node
                .http
                .post(format!("{u}/internal/collect"))
                .query(&[("key", key.as_str()), ("hash", hash.as_str())])
                .timeout(INTERNAL_TIMEOUT)
                .send()
                .await;
            all &= matches!(r, Ok(r) if r.status().is_success());
        }
        if all {
            lz.tombstones_collected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%key, "tombstone collected on every replica");
        }
    }
}

/// Whether any member (this one included) holds a hint for `key`, or did
/// not answer (then it might).
async fn hints_anywhere(node: &Node, lz: &Leaderless, key: &str) -> bool {
    for m in lz.ring.members() {
        if *m == lz.me {
            if lz.hints.list().iter().any(|(_, h)| h.key == key) {
                return true;
            }
            continue;
        }
        let r = node
            .http
            .get(format!("{m}/internal/hints"))
            .query(&[("key", key)])
            .timeout(INTERNAL_TIMEOUT)
            .send()
            .await;
        let pending = match r {
            Ok(r) if r.status().is_success() => crate::peer_answer::json::<serde_json::Value>(
                r,
                crate::peer_answer::CONTROL_ANSWER_BYTES_MAX,
            )
            .await
            .ok()
            .and_then(|v| v["pending"].as_u64()),
            _ => None,
        };
        if pending != Some(0) {
            return true;
        }
    }
    false
}
