//! The consistent-hash ring (Karger et al. 1997; Dynamo §4.2): every member
//! owns [`VNODES_PER_MEMBER`] points on a 64-bit ring; a key's preference
//! list is the first N distinct members clockwise from the key's hash.
//! Adding a member moves only the keys whose first N distinct members
//! change.

use sha2::{Digest, Sha256};

/// Points per member on the ring (virtual nodes): enough that keys spread
/// evenly over a handful of members.
pub const VNODES_PER_MEMBER: usize = 64;

/// Most members a ring may hold.
pub const RING_MEMBERS_MAX: usize = 256;

/// A position on the ring: the first 8 bytes of SHA-256, big-endian.
pub fn ring_hash(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No members.
    #[error("a ring needs at least one member")]
    Empty,
    /// More than [`RING_MEMBERS_MAX`].
    #[error("{0} members; the limit is {RING_MEMBERS_MAX}")]
    TooMany(usize),
}

/// The ring over members named by URL.
#[derive(Clone, Debug)]
pub struct Ring {
    members: Vec<String>,
    /// `(point, member index)`, sorted by point.
    points: Vec<(u64, usize)>,
    replicas: usize,
}

impl Ring {
    /// A ring of `members` (deduplicated, order does not matter) placing
    /// every key on `replicas` of them (capped at the member count).
    pub fn new(members: &[String], replicas: usize) -> Result<Ring, RingError> {
        let mut members: Vec<String> = members
            .iter()
            .map(|m| m.trim_end_matches('/').to_string())
            .collect();
        members.sort();
        members.dedup();
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        if members.len() > RING_MEMBERS_MAX {
            return Err(RingError::TooMany(members.len()));
        }
        let mut points = Vec::with_capacity(members.len() * VNODES_PER_MEMBER);
        for (i, m) in members.iter().enumerate() {
            for v in 0..VNODES_PER_MEMBER {
                points.push((ring_hash(format!("{m}#{v}").as_bytes()), i));
            }
        }
        points.sort();
        let replicas = replicas.clamp(1, members.len());
        Ok(Ring {
            members,
            points,
            replicas,
        })
    }

    /// N: how many members hold each key.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Every member, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The members in ring order clockwise from `key`'s hash, each once:
    /// the first N are its preference list, the rest are where hinted
    /// handoff goes when some of those are down.
    pub fn walk(&self, key: &str) -> Vec<&str> {
        let h = ring_hash(key.as_bytes());
        let start = self.points.partition_point(|(p, _)| *p < h);
        let mut seen = vec![false; self.members.len()];
        let mut out = Vec::with_capacity(self.members.len());
        for i in 0..self.points.len() {
            let (_, m) = self.points[(start + i) % self.points.len()];
            if !seen[m] {
                seen[m] = true;
                out.push(self.members[m].as_str());
                if out.len() == self.members.len() {
                    break;
                }
            }
        }
        out
    }

    /// The first N distinct members clockwise from `key`: its replicas.
    pub fn preference_list(&self, key: &str) -> Vec<&str> {
        let mut w = self.walk(key);
        w.truncate(self.replicas);
        w
    }

    /// Whether `member` replicates `key`.
    pub fn holds(&self, member: &str, key: &str) -> bool {
        let member = member.trim_end_matches('/');
        self.preference_list(key).contains(&member)
    }

    /// How many of the ring's arcs (between consecutive points) `member`
    /// replicates, out of all: the share of the key space it holds.
    pub fn arcs_held(&self, member: &str) -> (usize, usize) {
        let member = member.trim_end_matches('/');
        let Some(idx) = self.members.iter().position(|m| m == member) else {
            return (0, self.points.len());
        };
        let n = self.points.len();
        let mut held = 0;
        for i in 0..n {
            // The arc ending at point i belongs to the walk from point i.
            let mut seen = Vec::new();
            for j in 0..n {
                let (_, m) = self.points[(i + j) % n];
                if !seen.contains(&m) {
                    seen.push(m);
                    if seen.len() == self.replicas {
                        break;
                    }
                }
            }
            if seen.contains(&idx) {
                held += 1;
            }
        }
        (held, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (1..=n)
            .map(|i| format!("http://127.0.0.1:70{i:02}"))
            .collect()
    }

    #[test]
    fn preference_lists_are_distinct_and_stable() {
        let r = Ring::new(&urls(5), 3).unwrap();
        for k in 0..200 {
            let p = r.preference_list(&format!("key{k}"));
            assert_eq!(p.len(), 3);
            let mut d = p.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        let mut shuffled = urls(5);
        shuffled.reverse();
        let r2 = Ring::new(&shuffled, 3).unwrap();
        assert_eq!(r.preference_list("x"), r2.preference_list("x"));
        // N larger than the cluster is capped.
        assert_eq!(Ring::new(&urls(2), 3).unwrap().replicas(), 2);
    }

    #[test]
    fn adding_a_member_moves_only_keys_it_takes() {
        let before = Ring::new(&urls(4), 3).unwrap();
        let after = Ring::new(&urls(5), 3).unwrap();
        let new = &urls(5)[4];
        let mut moved = 0;
        for k in 0..2000 {
            let key = format!("key{k}");
            let a: Vec<&str> = before.preference_list(&key);
            let b: Vec<&str> = after.preference_list(&key);
            if a != b {
                moved += 1;
                // The only change: the new member took one place.
                assert!(b.contains(&new.as_str()), "{key}: {a:?} -> {b:?}");
                let lost: Vec<&&str> = a.iter().filter(|m| !b.contains(m)).collect();
                assert_eq!(lost.len(), 1);
            }
        }
        // About N/members of the keys move to the new member.
        assert!(moved > 2000 / 5 && moved < 2000 * 4 / 5, "{moved}");
    }

    #[test]
    fn every_member_holds_a_fair_share() {
        let r = Ring::new(&urls(5), 3).unwrap();
        for m in r.members() {
            let (held, all) = r.arcs_held(m);
            let share = held as f64 / all as f64;
            assert!((0.4..0.8).contains(&share), "{m}: {share}");
        }
    }
}
