//! Synthetic image pairs with a controlled differential fraction ΔD.
//!
//! The base image looks like a filled file system: "files" of 1 to 512
//! blocks of 4 KiB (log-uniform lengths, 4 KiB-aligned) separated now and
//! then by runs of zero blocks (holes in the raw file), about 10% of the
//! image. Every data block is distinct (SplitMix64 words from disjoint
//! ranges, see [`cbt_benches::fill_random`]).
//!
//! The target for ΔD replaces exactly `round(ΔD × data blocks)` of the base's
//! data blocks with new distinct content, whole files at a time (the last
//! one possibly in part), the files picked in a seeded random order, like
//! real edits that rewrite files. ΔD = 0 gives a copy of the base.
//!
//! Images are named by their parameters and reused when present:
//! `syn-<MiB>M-s<seed>-base.raw`, `syn-<MiB>M-s<seed>-d<ΔD>.raw`.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cbt_benches::{fill_random, splitmix64, MIB};

/// Block size of the synthetic layout.
pub const BLOCK: u64 = 4096;
const WORDS_PER_BLOCK: u64 = BLOCK / 8;

/// One run of blocks in the base layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: u64,
    len: u64,
    data: bool,
}

/// The layout of a base image: files and holes.
#[derive(Debug, Clone)]
pub struct Layout {
    extents: Vec<Extent>,
    blocks: u64,
    seed: u64,
}

/// A tiny deterministic generator for layout decisions.
struct Rng(u64, u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.1 += 1;
        splitmix64(self.0 ^ 0xA5A5_5A5A, self.1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl Layout {
    /// The layout of a base image of `bytes` (a multiple of 4 KiB) for `seed`.
    pub fn new(bytes: u64, seed: u64) -> Layout {
        let blocks = bytes / BLOCK;
        let mut rng = Rng(seed, 0);
        let mut extents = Vec::new();
        let mut at = 0;
        while at < blocks {
            if rng.below(8) == 0 {
                // A hole: 1 to 256 blocks.
                let len = (1 + rng.below(256)).min(blocks - at);
                extents.push(Extent {
                    start: at,
                    len,
                    data: false,
                });
                at += len;
            }
            if at >= blocks {
                break;
            }
            // A file: 2^(0..9) blocks, scaled by a random factor in [1, 2).
            let exp = rng.below(10);
            let len = ((1u64 << exp) + rng.below(1u64 << exp))
                .clamp(1, 512)
                .min(blocks - at);
            extents.push(Extent {
                start: at,
                len,
                data: true,
            });
            at += len;
        }
        Layout {
            extents,
            blocks,
            seed,
        }
    }

    /// Number of non-zero blocks.
    pub fn data_blocks(&self) -> u64 {
        self.extents.iter().filter(|e| e.data).map(|e| e.len).sum()
    }

    /// A per-block map of the blocks the target for `delta_d` replaces.
    fn changed(&self, delta_d: f64) -> Vec<bool> {
        let mut changed = vec![false; self.blocks as usize];
        let want = (delta_d.clamp(0.0, 1.0) * self.data_blocks() as f64).round() as u64;
        let mut files: Vec<Extent> = self.extents.iter().copied().filter(|e| e.data).collect();
        // Seeded Fisher-Yates shuffle: the files edited, in order.
        let mut rng = Rng(self.seed ^ 0x00C0_FFEE, 0);
        for i in (1..files.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            files.swap(i, j);
        }
        let mut left = want;
        for f in files {
            if left == 0 {
                break;
            }
            let n = f.len.min(left);
            for b in f.start..f.start + n {
                changed[b as usize] = true;
            }
            left -= n;
        }
        changed
    }

    /// Writes the image: the base if `delta_d` is `None`, else the target.
    fn write(&self, path: &Path, delta_d: Option<f64>) -> io::Result<()> {
        let changed = delta_d.map(|d| self.changed(d));
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("partial");
        let mut f = File::create(&tmp)?;
        let mut buf = vec![0u8; (8 * MIB) as usize];
        for e in &self.extents {
            if !e.data {
                f.seek(SeekFrom::Current((e.len * BLOCK) as i64))?;
                continue;
            }
            let mut b = e.start;
            while b < e.start + e.len {
                let n = (e.start + e.len - b).min(buf.len() as u64 / BLOCK);
                for i in 0..n {
                    let blk = b + i;
                    let out = &mut buf[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize];
                    let edited = changed.as_ref().is_some_and(|c| c[blk as usize]);
                    // Edited blocks come from a second stream, so they match nothing in the base.
                    let seed = if edited {
                        self.seed.wrapping_add(0x9E37)
                    } else {
                        self.seed
                    };
                    fill_random(out, seed, blk * WORDS_PER_BLOCK);
                }
                f.write_all(&buf[..(n * BLOCK) as usize])?;
                b += n;
            }
        }
        f.set_len(self.blocks * BLOCK)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

/// One synthetic pair: the base (what the destination holds) and the target.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The nominal ΔD: fraction of the base's data blocks replaced.
    pub delta_d: f64,
    /// The base image (the seed at the destination).
    pub base: PathBuf,
    /// The target image (what is sent).
    pub target: PathBuf,
}

/// Creates (or reuses) the base and one target per ΔD under `dir`.
pub fn ensure_pairs(dir: &Path, mib: u64, seed: u64, deltas: &[f64]) -> io::Result<Vec<Pair>> {
    let layout = Layout::new(mib * MIB, seed);
    let base = dir.join(format!("syn-{mib}M-s{seed}-base.raw"));
    let exists = |p: &Path| fs::metadata(p).map(|m| m.len() == mib * MIB).unwrap_or(false);
    if !exists(&base) {
        eprintln!("harness: writing {}", base.display());
        layout.write(&base, None)?;
    }
    let mut pairs = Vec::new();
    for &d in deltas {
        let target = dir.join(format!("syn-{mib}M-s{seed}-d{d}.raw"));
        if !exists(&target) {
            eprintln!("harness: writing {}", target.display());
            layout.write(&target, Some(d))?;
        }
        pairs.push(Pair {
            delta_d: d,
            base: base.clone(),
            target,
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_the_image_and_has_holes() {
        let l = Layout::new(64 * MIB, 1);
        let total: u64 = l.extents.iter().map(|e| e.len).sum();
        assert_eq!(total, l.blocks);
        let zero = l.blocks - l.data_blocks();
        let frac = zero as f64 / l.blocks as f64;
        assert!(frac > 0.05 && frac < 0.4, "zero fraction {frac}");
    }

    #[test]
    fn changed_blocks_match_delta() {
        let l = Layout::new(16 * MIB, 2);
        for d in [0.0, 0.1, 0.5, 1.0] {
            let n = l.changed(d).iter().filter(|&&c| c).count() as u64;
            assert_eq!(n, (d * l.data_blocks() as f64).round() as u64);
        }
    }

    #[test]
    fn target_differs_in_exactly_the_changed_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pairs = ensure_pairs(dir.path(), 4, 3, &[0.0, 0.25]).expect("write");
        let base = fs::read(&pairs[0].base).expect("read");
        let same = fs::read(&pairs[0].target).expect("read");
        assert_eq!(base, same);
        let t = fs::read(&pairs[1].target).expect("read");
        let l = Layout::new(4 * MIB, 3);
        let differ = base
            .chunks(4096)
            .zip(t.chunks(4096))
            .filter(|(a, b)| a != b)
            .count() as u64;
        assert_eq!(differ, (0.25 * l.data_blocks() as f64).round() as u64);
    }
}
