//! How much of a source image the destination already holds: per candidate
//! image (and snapshot) and for the union of all of them. This is the
//! "commonality" of the CBT paper's Table 1 and the candidate-picking step
//! of smart-migrate.

use std::thread;

use serde::Serialize;

use crate::error::Result;
use crate::image::{Image, ImageSpec};
use crate::index::Index;
use crate::layout::Layout;
use crate::pipeline::{hash_image, BlockKind, HashOptions};

/// Commonality of the source with one candidate or with the union.
#[derive(Debug, Clone, Serialize)]
pub struct Commonality {
    /// The candidate (`None` for the union).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Share of the source's non-zero blocks this candidate holds (0..1).
    pub found_fraction: f64,
    /// Non-zero source blocks found.
    pub blocks_found: u64,
    /// Bytes that would still have to be sent.
    pub bytes_missing: u64,
}

/// The answer of [`estimate`].
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// The source image.
    pub source: String,
    /// Its size in bytes.
    pub image_bytes: u64,
    /// Its blocks.
    pub blocks_total: u64,
    /// Its all-zero blocks (never sent).
    pub blocks_zero: u64,
    /// Its non-zero blocks.
    pub blocks_nonzero: u64,
    /// Bytes in non-zero blocks.
    pub bytes_nonzero: u64,
    /// All candidates together.
    pub union: Commonality,
    /// Each candidate, best first.
    pub candidates: Vec<Commonality>,
}

/// Hashes `source` and measures how much of it each image of `index` (built
/// with [`Index::build_with_per_image`]) and all of them together hold.
/// Matches are by digest prefix, without reading the candidates.
pub fn estimate(source: &dyn Image, spec: &ImageSpec, index: &Index, threads: usize) -> Result<Estimate> {
    let layout = Layout::detect(source, index.block_size())?;
    let mut blocks: Vec<(u64, u32)> = Vec::new();
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
    let bytes_nonzero: u64 = blocks.iter().map(|b| u64::from(b.1)).sum();
    let measure = |path: Option<String>, holds: &dyn Fn(u64) -> bool| {
        let (mut found, mut missing) = (0u64, 0u64);
        for &(key, len) in &blocks {
            if holds(key) {
                found += 1;
            } else {
                missing += u64::from(len);
            }
        }
        Commonality {
            path,
            found_fraction: if blocks.is_empty() {
                1.0
            } else {
                found as f64 / blocks.len() as f64
            },
            blocks_found: found,
            bytes_missing: missing,
        }
    };
    let union = measure(None, &|k| index.lookup_key(k).is_some());

    let images = index.images();
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(images.len().max(1));
    let mut candidates: Vec<Commonality> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let measure = &measure;
                s.spawn(move || {
                    (w..images.len())
                        .step_by(workers)
                        .filter_map(|i| {
                            let keys = index.image_keys(i)?;
                            if images[i].blocks == 0 {
                                return None;
                            }
                            Some(measure(Some(images[i].spec.to_string()), &|k| {
                                keys.binary_search(&k).is_ok()
                            }))
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
    Ok(Estimate {
        source: spec.to_string(),
        image_bytes: source.len(),
        blocks_total: summary.blocks,
        blocks_zero: summary.zero_blocks,
        blocks_nonzero: blocks.len() as u64,
        bytes_nonzero,
        union,
        candidates,
    })
}
