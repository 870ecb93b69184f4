//! Many block digests at once, with BLAKE3's multi-input SIMD path.
//!
//! `blake3::hash` of one 4 KiB block compresses its 4 chunks side by side,
//! which fills only half of AVX2's 8 lanes (a quarter of AVX-512's 16).
//! Hashing blocks in batches lets every pass compress one chunk of each of
//! many blocks: all chunk 0s, then all chunk 1s, and so on (a chunk's
//! counter is its position in its block), then the parent nodes level by
//! level, then the roots. The result is bit for bit `blake3::hash` of each
//! block (a test compares them on random and edge inputs).
//!
//! This uses `blake3::platform::Platform::hash_many`, which blake3 marks as
//! unstable; the blake3 version is pinned exactly in Cargo.toml for that.
//! Blocks whose length is not a power-of-two number of 1 KiB chunks (or
//! that differ in length within a batch) fall back to `blake3::hash`.

use blake3::platform::Platform;
use blake3::IncrementCounter;

use super::Digest;

/// BLAKE3's IV (the key of unkeyed hashing).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
const CHUNK_LEN: usize = 1024;
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;
/// Blocks hashed per batch: four passes of the widest SIMD degree (16 on
/// AVX-512) per chunk position. Measured on a 2-vCPU AVX-512 Xeon: 16 at a
/// time gave 1.57x the rate of one `blake3::hash` per 4 KiB block, 64 at a
/// time 1.68x (docs/BENCHMARKS.md); fixed costs per batch are amortised.
const LANES: usize = 64;

/// Appends the digest of every block in `blocks` to `out`, in order.
pub fn digests_of(blocks: &[&[u8]], out: &mut Vec<Digest>) {
    out.reserve(blocks.len());
    let platform = Platform::detect();
    let mut i = 0;
    while i < blocks.len() {
        let len = blocks[i].len();
        let chunks = len / CHUNK_LEN;
        let batchable = len % CHUNK_LEN == 0 && chunks.is_power_of_two();
        // A run of equal, batchable lengths (layouts end regions with
        // shorter blocks).
        let mut end = i + 1;
        while batchable && end < blocks.len() && end - i < LANES && blocks[end].len() == len {
            end += 1;
        }
        if !batchable || end - i == 1 {
            out.push(Digest::of(blocks[i]));
            i += 1;
            continue;
        }
        hash_batch(platform, &blocks[i..end], chunks, out);
        i = end;
    }
}

/// Digests of `blocks` (2 to [`LANES`] of them), all of `chunks` full chunks.
fn hash_batch(platform: Platform, blocks: &[&[u8]], chunks: usize, out: &mut Vec<Digest>) {
    let n = blocks.len();
    // Chaining values, 32 bytes each: level 0 holds chunk CVs, block-major.
    let mut cvs = vec![0u8; n * chunks * 32];
    let mut lane_out = vec![0u8; n * 32];
    let root_if_single = if chunks == 1 { ROOT } else { 0 };
    for c in 0..chunks {
        let inputs: Vec<&[u8; CHUNK_LEN]> = blocks
            .iter()
            .filter_map(|b| b[c * CHUNK_LEN..(c + 1) * CHUNK_LEN].try_into().ok())
            .collect();
        platform.hash_many(
            &inputs,
            &IV,
            c as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END | root_if_single,
            &mut lane_out,
        );
        for (b, cv) in lane_out.chunks_exact(32).enumerate() {
            let at = (b * chunks + c) * 32;
            cvs[at..at + 32].copy_from_slice(cv);
        }
    }
    // Parent levels: pairs of CVs are 64-byte parent blocks, hashed in place.
    let mut width = chunks;
    while width > 1 {
        let half = width / 2;
        let flags = if half == 1 { PARENT | ROOT } else { PARENT };
        let mut next = vec![0u8; n * half * 32];
        let inputs: Vec<&[u8; 64]> = (0..n)
            .flat_map(|b| (0..half).map(move |p| (b * width + 2 * p) * 32))
            .filter_map(|at| cvs[at..at + 64].try_into().ok())
            .collect();
        platform.hash_many(&inputs, &IV, 0, IncrementCounter::No, flags, 0, 0, &mut next);
        cvs = next;
        width = half;
    }
    out.extend(cvs.chunks_exact(32).filter_map(|d| d.try_into().ok()).map(Digest));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn equals_blake3_hash_for_every_block_size_and_batch() {
        for len in [512usize, 1024, 2048, 4096, 8192, 65536, 1 << 20, 3000, 4097] {
            for count in [1usize, 2, 3, 7, 8, 9, 16, 17, 33, 64, 65, 130] {
                let blocks: Vec<Vec<u8>> = (0..count).map(|i| random(len, (len * 100 + i) as u64)).collect();
                let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
                let mut got = Vec::new();
                digests_of(&refs, &mut got);
                let want: Vec<Digest> = refs.iter().map(|b| Digest(*blake3::hash(b).as_bytes())).collect();
                assert_eq!(got, want, "len {len}, count {count}");
            }
        }
    }

    #[test]
    fn edge_inputs_and_mixed_lengths() {
        let zero = vec![0u8; 4096];
        let ones = vec![0xFFu8; 4096];
        let mut one_bit = vec![0u8; 4096];
        one_bit[4095] = 1;
        let short = random(1536, 5);
        let empty: Vec<u8> = Vec::new();
        let refs: Vec<&[u8]> = vec![
            &zero, &ones, &one_bit, &short, &zero, &empty, &ones, &one_bit, &zero,
        ];
        let mut got = Vec::new();
        digests_of(&refs, &mut got);
        let want: Vec<Digest> = refs.iter().map(|b| Digest(*blake3::hash(b).as_bytes())).collect();
        assert_eq!(got, want);
        assert_eq!(got[0], Digest::of_zeros(4096));
    }
}
