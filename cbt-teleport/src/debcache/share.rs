//! How much of a source image the package caches (and the other seeds)
//! hold: [`SourceBlocks`] hashes the source once and then answers any
//! number of "which of these blocks does this set hold" questions, and
//! [`estimate_with_packages`] uses it to report the package caches as one
//! candidate instead of one per archive.

use std::thread;

use serde::Serialize;

use cbt_core::{
    hash_image, BlockKind, Commonality, Estimate, HashOptions, Image, ImageSpec, Index, Layout, Result,
};

use super::PackageBlobs;

/// The non-zero blocks of a source image, by short digest, and its totals.
#[derive(Debug, Clone)]
pub struct SourceBlocks {
    /// `(short digest, length)` of each non-zero block, in disk order.
    blocks: Vec<(u64, u32)>,
    /// All blocks.
    pub blocks_total: u64,
    /// All-zero blocks.
    pub blocks_zero: u64,
    /// Bytes in non-zero blocks.
    pub bytes_nonzero: u64,
    /// Size of the image.
    pub image_bytes: u64,
}

/// What [`SourceBlocks::measure`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measure {
    /// Non-zero blocks held.
    pub blocks_found: u64,
    /// Bytes of non-zero blocks not held.
    pub bytes_missing: u64,
}

impl SourceBlocks {
    /// Hashes `source` with blocks of `block_size` (aligned as the index aligns them).
    pub fn hash(source: &dyn Image, block_size: u32, threads: usize) -> Result<SourceBlocks> {
        let layout = Layout::detect(source, block_size)?;
        let mut blocks = Vec::new();
        let summary = hash_image(
            source,
            &layout,
            &HashOptions {
                threads,
                ..Default::default()
            },
            |records| {
                blocks.extend(records.iter().filter_map(|r| match r.kind {
                    BlockKind::Data(d) => Some((d.short(), r.len)),
                    BlockKind::Zero => None,
                }));
                Ok(())
            },
        )?;
        let bytes_nonzero = blocks.iter().map(|b| u64::from(b.1)).sum();
        Ok(SourceBlocks {
            blocks,
            blocks_total: summary.blocks,
            blocks_zero: summary.zero_blocks,
            bytes_nonzero,
            image_bytes: source.len(),
        })
    }

    /// Non-zero blocks.
    pub fn blocks_nonzero(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Counts the blocks `holds` has. Gives up (returns `None`) as soon as
    /// more than `give_up_above` bytes are missing, which lets a ranking
    /// abandon a candidate that can no longer beat the best one.
    pub fn measure(&self, holds: &dyn Fn(u64) -> bool, give_up_above: u64) -> Option<Measure> {
        let mut m = Measure::default();
        for &(key, len) in &self.blocks {
            if holds(key) {
                m.blocks_found += 1;
            } else {
                m.bytes_missing += u64::from(len);
                if m.bytes_missing > give_up_above {
                    return None;
                }
            }
        }
        Some(m)
    }

    /// A [`Commonality`] for a measure.
    pub fn commonality(&self, path: Option<String>, m: Measure) -> Commonality {
        let n = self.blocks.len() as u64;
        Commonality {
            path,
            found_fraction: if n == 0 {
                1.0
            } else {
                m.blocks_found as f64 / n as f64
            },
            blocks_found: m.blocks_found,
            bytes_missing: m.bytes_missing,
        }
    }
}

/// The keys of several images of an index, merged, sorted and deduplicated.
pub fn merged_keys(index: &Index, images: impl Iterator<Item = usize>) -> Vec<u64> {
    let mut keys: Vec<u64> = images
        .filter_map(|i| index.image_keys(i))
        .flatten()
        .copied()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// An estimate where the package caches count as one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct PackageEstimate {
    /// The usual estimate; its `candidates` are the images only, and its
    /// `union` covers images and package caches together.
    #[serde(flatten)]
    pub estimate: Estimate,
    /// What the package caches alone hold.
    pub package_cache: PackageCacheShare,
}

/// The share of a source the package caches hold.
#[derive(Debug, Clone, Serialize)]
pub struct PackageCacheShare {
    /// Package archives turned into blobs.
    pub archives: usize,
    /// Package archives skipped as unreadable.
    pub archives_skipped: usize,
    /// apt index files turned into blobs.
    pub index_files: usize,
    /// apt index files skipped as unreadable.
    pub index_files_skipped: usize,
    /// Share of the source's non-zero blocks found in the archives and
    /// index files together (0..1).
    pub found_fraction: f64,
    /// Non-zero source blocks found.
    pub blocks_found: u64,
    /// Bytes still to send with only the package caches.
    pub bytes_missing: u64,
}

/// Like [`cbt_core::estimate`], for an index built with package caches (and
/// [`Index::build_with_per_image`]): the blobs are reported together as
/// `package_cache`, the other images one by one.
pub fn estimate_with_packages(
    source: &dyn Image,
    spec: &ImageSpec,
    index: &Index,
    threads: usize,
) -> Result<PackageEstimate> {
    let src = SourceBlocks::hash(source, index.block_size(), threads)?;
    let images = index.images();
    let blobs = PackageBlobs::of(index);
    let is_blob = |i: usize| blobs.is_some_and(|b| b.contains(&images[i].spec.path));
    let union = src
        .measure(&|k| index.lookup_key(k).is_some(), u64::MAX)
        .unwrap_or_default();
    let blob_keys = merged_keys(index, (0..images.len()).filter(|&i| is_blob(i)));
    let packages = src
        .measure(&|k| blob_keys.binary_search(&k).is_ok(), u64::MAX)
        .unwrap_or_default();
    let others: Vec<usize> = (0..images.len())
        .filter(|&i| !is_blob(i) && images[i].blocks > 0)
        .collect();
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(others.len().max(1));
    let mut candidates: Vec<Commonality> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (src, others) = (&src, &others);
                s.spawn(move || {
                    others
                        .iter()
                        .skip(w)
                        .step_by(workers)
                        .filter_map(|&i| {
                            let keys = index.image_keys(i)?;
                            let m = src.measure(&|k| keys.binary_search(&k).is_ok(), u64::MAX)?;
                            Some(src.commonality(Some(images[i].spec.to_string()), m))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    candidates.sort_by(|a, b| {
        a.bytes_missing
            .cmp(&b.bytes_missing)
            .then_with(|| a.path.cmp(&b.path))
    });
    let pc = src.commonality(None, packages);
    Ok(PackageEstimate {
        estimate: Estimate {
            source: spec.to_string(),
            image_bytes: src.image_bytes,
            blocks_total: src.blocks_total,
            blocks_zero: src.blocks_zero,
            blocks_nonzero: src.blocks_nonzero(),
            bytes_nonzero: src.bytes_nonzero,
            union: src.commonality(None, union),
            candidates,
        },
        package_cache: PackageCacheShare {
            archives: blobs.map_or(0, |b| b.archives()),
            archives_skipped: blobs.map_or(0, |b| b.archives_skipped()),
            index_files: blobs.map_or(0, |b| b.index_files()),
            index_files_skipped: blobs.map_or(0, |b| b.index_files_skipped()),
            found_fraction: pc.found_fraction,
            blocks_found: pc.blocks_found,
            bytes_missing: pc.bytes_missing,
        },
    })
}
