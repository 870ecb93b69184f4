//! Plan building: for every block of a source image, zero, found in the
//! destination index, or missing. Measured through [`estimate`], which
//! hashes the source and decides each block against the index (for the
//! union of the seeds and for each seed); `hash_only` runs the same
//! source through [`hash_image`] alone, so the difference is the cost of
//! planning.
//!
//! The source (64 MiB, cached) holds a quarter of its blocks from each of
//! two seeds, a quarter zero, and a quarter found nowhere.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;

use cbt_benches::{random_bytes, write_random_image, MIB};
use cbt_core::{estimate, hash_image, open_image, HashOptions, ImageSpec, Index, IndexOptions, Layout};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SEED_LEN: u64 = 64 * MIB;
const SOURCE_LEN: u64 = 64 * MIB;
const BLOCK: usize = 4096;
const SEED: u64 = 23;

fn plan(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).expect("create the seed dir");
    let words_per_seed = SEED_LEN / 8;
    for i in 0..2 {
        write_random_image(
            &seeds.join(format!("seed-{i}.raw")),
            SEED_LEN,
            SEED,
            i * words_per_seed,
        )
        .expect("write a seed image");
    }
    // Block k of the source: seed 0's block k, seed 1's block k, zeros, or
    // new data, in turn, so runs are short and every kind is interleaved.
    let source = dir.path().join("source.raw");
    {
        let mut f = File::create(&source).expect("create the source");
        let words_per_block = (BLOCK / 8) as u64;
        for k in 0..SOURCE_LEN / BLOCK as u64 {
            let block = match k % 4 {
                0 => random_bytes(BLOCK, SEED, k * words_per_block),
                1 => random_bytes(BLOCK, SEED, words_per_seed + k * words_per_block),
                2 => vec![0u8; BLOCK],
                _ => random_bytes(BLOCK, SEED + 1, k * words_per_block),
            };
            f.write_all(&block).expect("write the source");
        }
    }
    let index = Index::build_with_per_image(
        &[PathBuf::from(&seeds)],
        &IndexOptions {
            cache_dir: None,
            ..Default::default()
        },
    )
    .expect("build the index");
    let spec = ImageSpec::file(&source);
    let image = open_image(&spec).expect("open the source");
    let est = estimate(image.as_ref(), &spec, &index, 0).expect("estimate");
    let blocks = SOURCE_LEN / BLOCK as u64;
    assert_eq!(est.blocks_zero, blocks / 4);
    assert_eq!(est.union.bytes_missing, SOURCE_LEN / 4);

    let mut g = c.benchmark_group("plan_64MiB");
    g.throughput(Throughput::Bytes(SOURCE_LEN));
    g.bench_function("estimate_against_2_seeds", |b| {
        b.iter(|| estimate(black_box(image.as_ref()), &spec, &index, 0).expect("estimate"))
    });
    let layout = Layout::detect(image.as_ref(), BLOCK as u32).expect("layout");
    g.bench_function("hash_only", |b| {
        b.iter(|| {
            hash_image(image.as_ref(), &layout, &HashOptions::default(), |r| {
                black_box(r);
                Ok(())
            })
            .expect("hash")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(4).sample_size(20);
    targets = plan
}
criterion_main!(benches);
