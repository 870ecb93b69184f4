//! The destination index: lookups in an [`Index`] built over a few
//! generated raw images (every block distinct), probed with digests it
//! holds (hits) and digests it does not (misses); and insertion, an index
//! built from a warm digest cache, so no image data is read and the time
//! is that of loading the cached digests and inserting them.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::path::PathBuf;

use cbt_benches::{random_bytes, write_random_image, MIB};
use cbt_core::{Digest, Index, IndexOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const IMAGES: u64 = 4;
const IMAGE_LEN: u64 = 32 * MIB;
const BLOCK: usize = 4096;
const SEED: u64 = 11;
/// Digests probed per iteration.
const PROBES: usize = 4096;

fn lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let words_per_image = IMAGE_LEN / 8;
    for i in 0..IMAGES {
        let path = dir.path().join(format!("seed-{i}.raw"));
        write_random_image(&path, IMAGE_LEN, SEED, i * words_per_image).expect("write a seed image");
    }
    let options = IndexOptions {
        cache_dir: None,
        ..Default::default()
    };
    let index = Index::build(&[PathBuf::from(dir.path())], &options).expect("build the index");
    let blocks = IMAGES * IMAGE_LEN / BLOCK as u64;
    assert_eq!(index.stats().unique_blocks, blocks);

    // Hits: blocks spread over every image (the stream is contiguous across them).
    let words_per_block = (BLOCK / 8) as u64;
    let step = blocks / PROBES as u64;
    let hits: Vec<Digest> = (0..PROBES as u64)
        .map(|k| Digest::of(&random_bytes(BLOCK, SEED, k * step * words_per_block)))
        .collect();
    // Misses: blocks of another seed.
    let misses: Vec<Digest> = (0..PROBES as u64)
        .map(|k| Digest::of(&random_bytes(BLOCK, SEED + 1, k * words_per_block)))
        .collect();
    assert!(hits.iter().all(|d| index.lookup(d).is_some()));
    assert!(misses.iter().all(|d| index.lookup(d).is_none()));

    let mut g = c.benchmark_group(format!("index_lookup_{blocks}_blocks"));
    // A lookup's cost does not depend on the block size: count lookups.
    g.throughput(Throughput::Elements(PROBES as u64));
    g.bench_function("hit", |b| {
        b.iter(|| {
            hits.iter()
                .filter(|d| index.lookup(black_box(d)).is_some())
                .count()
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            misses
                .iter()
                .filter(|d| index.lookup(black_box(d)).is_some())
                .count()
        })
    });
    g.finish();
}

fn insert(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("create the image dir");
    let words_per_image = IMAGE_LEN / 8;
    for i in 0..IMAGES {
        let path = images.join(format!("seed-{i}.raw"));
        write_random_image(&path, IMAGE_LEN, SEED, i * words_per_image).expect("write a seed image");
    }
    let options = IndexOptions {
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let roots = [images];
    // The first build hashes the images and fills the cache.
    let first = Index::build(&roots, &options).expect("build the index");
    let blocks = IMAGES * IMAGE_LEN / BLOCK as u64;
    assert_eq!(first.stats().unique_blocks, blocks);
    drop(first);

    let mut g = c.benchmark_group(format!("index_insert_{blocks}_blocks"));
    g.throughput(Throughput::Elements(blocks));
    g.bench_function("build_from_warm_cache", |b| {
        b.iter(|| {
            let index = Index::build(black_box(&roots), &options).expect("build the index");
            assert_eq!(index.stats().bytes_hashed, 0, "the cache was not used");
            index
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(3);
    targets = lookup, insert
}
criterion_main!(benches);
