//! Block digests (BLAKE3) and the all-zero test that lets zero blocks skip hashing.

use std::fmt;

mod batch;

pub use batch::digests_of;

/// A BLAKE3 digest of one block's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// The first 8 bytes as an integer: the key of the in-memory index.
    /// Collisions of this short key are harmless because every block
    /// found through the index is re-hashed in full before it is used.
    pub fn short(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Lower-case hexadecimal form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The digest of `len` zero bytes.
    pub fn of_zeros(len: usize) -> Self {
        let mut h = blake3::Hasher::new();
        const ZEROS: [u8; 4096] = [0u8; 4096];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len());
            h.update(&ZEROS[..n]);
            left -= n;
        }
        Digest(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// True if every byte of `data` is zero. ORs 64-byte chunks (which the
/// compiler vectorises) so a zero block costs far less than hashing it.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[]));
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 0x80;
        assert!(!is_zero(&b));
    }

    #[test]
    fn zero_digest_matches_hash_of_zeros() {
        for len in [0usize, 1, 512, 4096, 5000, 1 << 20] {
            assert_eq!(Digest::of_zeros(len), Digest::of(&vec![0u8; len]));
        }
    }
}
