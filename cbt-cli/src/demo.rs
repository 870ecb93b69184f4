//! `cbt demo`: a self-contained run on generated sample images.
//!
//! It writes a "seed" image (a disk whose data lies in 4 KiB-aligned
//! files, with free space left as holes) and a "new" image made from the
//! same files plus changes: a quarter of the files rewritten, new files
//! added, the rest moved around. It then estimates what the seed holds and
//! reconstructs the new image from it, reading only the missing blocks
//! from the source, and checks the result.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;

use cbt_core::{open_image, ImageSpec, Index, OutputFormat, ReconstructOptions};

use crate::cli::Config;

/// A deterministic pseudo-random generator (xorshift64*), so every run
/// builds the same sample images.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const BLOCK: u64 = 4096;

/// Writes `files` (seed, length in blocks) at the given block positions.
fn write_image(path: &Path, size: u64, files: &[(u64, u64, u64)]) -> anyhow::Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    let mut buf = Vec::new();
    for &(seed, blocks, at_block) in files {
        buf.resize((blocks * BLOCK) as usize, 0);
        Rng(seed | 1).fill(&mut buf);
        f.write_all_at(&buf, at_block * BLOCK)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Runs the demo in `dir` (or a temporary directory).
pub fn run(config: &Config, dir: Option<&Path>, size_mib: u64) -> anyhow::Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let size = size_mib.max(16) << 20;
    let total_blocks = size / BLOCK;
    // Files fill about 60% of the disk; the rest is free space (holes).
    let mut rng = Rng(42);
    let mut seed_files = Vec::new();
    let mut pos = 256;
    let mut id = 1000;
    while pos < total_blocks * 6 / 10 {
        let len = 1 + rng.next() % 64;
        seed_files.push((id, len, pos));
        id += 1;
        pos += len + rng.next() % 8;
    }
    // The new image: same files at other places, a quarter rewritten, some added.
    let mut new_files = Vec::new();
    let mut pos = 512;
    for (i, &(fid, len, _)) in seed_files.iter().enumerate() {
        let fid = if i % 4 == 0 { fid + 1_000_000 } else { fid };
        new_files.push((fid, len, pos));
        pos += len + rng.next() % 4;
    }
    while pos < total_blocks * 7 / 10 {
        let len = 1 + rng.next() % 64;
        new_files.push((id + 2_000_000, len, pos));
        id += 1;
        pos += len;
    }
    let seeds_dir = dir.join("seeds");
    std::fs::create_dir_all(&seeds_dir)?;
    let seed_img = seeds_dir.join("seed.img");
    let new_img = dir.join("new.img");
    let out_img = dir.join("copy.qcow2");
    println!(
        "generating sample images in {} ({size_mib} MiB each)...",
        dir.display()
    );
    write_image(&seed_img, size, &seed_files)?;
    write_image(&new_img, size, &new_files)?;

    let spec = ImageSpec::file(&new_img);
    let mut options = config.index.clone();
    options.cache_dir = None;
    let index = Index::build_with_per_image(std::slice::from_ref(&seeds_dir), &options)?;
    let est = cbt_core::estimate(open_image(&spec)?.as_ref(), &spec, &index, config.threads)?;
    println!(
        "estimate: the destination already holds {:.1}% of the new image's {} non-zero blocks; {} of {} bytes would cross the link",
        est.union.found_fraction * 100.0,
        est.blocks_nonzero,
        est.union.bytes_missing,
        est.bytes_nonzero
    );

    let mut copy_config = config.clone();
    copy_config.index.cache_dir = None;
    let reconstruct = ReconstructOptions {
        format: OutputFormat::Qcow2,
        threads: config.threads,
        verify_readback: true,
    };
    let (report, _) = crate::commands::copy(&copy_config, &spec, &out_img, &[seeds_dir], &reconstruct)?;
    let full = report.image_bytes;
    println!(
        "copy: {} in {:.2}s: {} zero blocks skipped, {} blocks copied locally, {} blocks ({} bytes) read from the source",
        out_img.display(),
        report.seconds,
        report.blocks_zero,
        report.blocks_local,
        report.blocks_missing,
        report.bytes_missing
    );
    println!(
        "a full copy would move {full} bytes; cbt moved {} ({:.1}% of a full copy, {:.1}x less); the output verified against the source digest",
        report.bytes_missing,
        report.bytes_missing as f64 * 100.0 / full as f64,
        full as f64 / report.bytes_missing.max(1) as f64
    );
    Ok(())
}
