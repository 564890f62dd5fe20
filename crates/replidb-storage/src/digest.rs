//! The content digest both backends share.
//!
//! The digest must be identical across backends and replicas, so it is
//! computed here, once, from a canonical encoding of each entry: key length,
//! key, value length, value, lsn, epoch (all integers u64 little-endian, the
//! lengths making the encoding unambiguous), then the entry count. The hash is
//! SHA-256, written out below because the workspace has no hashing crate and a
//! 32-bit checksum (crc32c) is too collision-prone to compare replicas with.

use replidb_core::{Epoch, Lsn};

/// Domain separator, so a digest of this format can never equal some other
/// SHA-256 the system computes, and a format change can bump the version.
const DOMAIN: &[u8] = b"replidb-table-digest-v1\0";

/// Incremental table digest: feed entries in key order, then [`finish`](Self::finish).
pub(crate) struct TableDigest {
    sha: Sha256,
    count: u64,
}

impl TableDigest {
    pub(crate) fn new() -> Self {
        let mut sha = Sha256::new();
        sha.update(DOMAIN);
        TableDigest { sha, count: 0 }
    }

    /// Add one entry. Callers must feed keys in ascending order.
    pub(crate) fn entry(&mut self, key: &str, value: &[u8], lsn: Lsn, epoch: Epoch) {
        self.sha.update(&(key.len() as u64).to_le_bytes());
        self.sha.update(key.as_bytes());
        self.sha.update(&(value.len() as u64).to_le_bytes());
        self.sha.update(value);
        self.sha.update(&lsn.0.to_le_bytes());
        self.sha.update(&epoch.0.to_le_bytes());
        self.count += 1;
    }

    /// The lowercase hex digest.
    pub(crate) fn finish(mut self) -> String {
        self.sha.update(&self.count.to_le_bytes());
        hex(&self.sha.finish())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// SHA-256 (FIPS 180-4), streaming.
struct Sha256 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    total_len: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: [0; 64],
            buf_len: 0,
            total_len: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.total_len = self.total_len.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            self.compress(&block);
            self.buf_len = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            // chunks_exact guarantees 64 bytes; copy into an array for compress.
            let mut b = [0u8; 64];
            b.copy_from_slice(block);
            self.compress(&b);
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    fn finish(mut self) -> [u8; 32] {
        let bit_len = self.total_len.wrapping_mul(8);
        // Padding: 0x80, zeros up to 56 mod 64, then the 64-bit big-endian bit length.
        let pad_len = if self.buf_len < 56 {
            56 - self.buf_len
        } else {
            120 - self.buf_len
        };
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        pad[pad_len..pad_len + 8].copy_from_slice(&bit_len.to_be_bytes());
        self.update(&pad[..pad_len + 8]);
        debug_assert_eq!(self.buf_len, 0);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha_hex(chunks: &[&[u8]]) -> String {
        let mut s = Sha256::new();
        for c in chunks {
            s.update(c);
        }
        hex(&s.finish())
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha_hex(&[b""]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha_hex(&[b"abc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two_block = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            sha_hex(&[two_block]),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Same input split at awkward boundaries must hash the same.
        assert_eq!(
            sha_hex(&[&two_block[..3], &two_block[3..55], &two_block[55..]]),
            sha_hex(&[two_block])
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            sha_hex(&[&million_a]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        // ("ab","c") and ("a","bc") concatenate identically; lengths separate them.
        let mut x = TableDigest::new();
        x.entry("ab", b"c", Lsn(1), Epoch(1));
        let mut y = TableDigest::new();
        y.entry("a", b"bc", Lsn(1), Epoch(1));
        assert_ne!(x.finish(), y.finish());
        assert_ne!(TableDigest::new().finish(), {
            let mut z = TableDigest::new();
            z.entry("", b"", Lsn(0), Epoch(0));
            z.finish()
        });
    }
}
