//! Per-block costs: the BLAKE3 digest of a 4 KiB block and the all-zero test
//! that lets zero blocks skip hashing, with BLAKE3 over one large input as a
//! reference for what its SIMD can do.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;

use cbt_benches::random_bytes;
use cbt_core::{digests_of, is_zero, Digest};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BLOCK: usize = 4096;

fn digest(c: &mut Criterion) {
    let block = random_bytes(BLOCK, 1, 0);
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("blake3_4k", |b| b.iter(|| Digest::of(black_box(&block))));
    g.finish();

    // The same blocks hashed 64 at a time (every SIMD lane busy): the path
    // the pipeline and every receiver check take. Same run, same machine:
    // the ratio to blake3_4k is the gain of batching.
    let many: Vec<Vec<u8>> = (0..64).map(|i| random_bytes(BLOCK, 10 + i, 0)).collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes((BLOCK * refs.len()) as u64));
    g.bench_function("blake3_4k_x64_one_by_one", |b| {
        b.iter(|| refs.iter().map(|r| Digest::of(black_box(r))).collect::<Vec<_>>())
    });
    let mut out = Vec::with_capacity(64);
    g.bench_function("blake3_4k_x64_batched", |b| {
        b.iter(|| {
            out.clear();
            digests_of(black_box(&refs), &mut out);
            out.len()
        })
    });
    g.finish();

    // Reference: one 1 MiB input lets BLAKE3 hash 8 (AVX2) or 16 (AVX-512)
    // of its 1 KiB chunks side by side; a 4 KiB block has only 4 chunks.
    let big = random_bytes(1 << 20, 1, 0);
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("blake3_1MiB_single_input", |b| {
        b.iter(|| blake3::hash(black_box(&big)))
    });
    g.finish();
}

fn zero_test(c: &mut Criterion) {
    let zero = vec![0u8; BLOCK];
    // Random data: the test stops at the first 64-byte chunk.
    let random = random_bytes(BLOCK, 2, 0);
    // The worst case for a non-zero block: only its last byte is set.
    let mut last_byte = vec![0u8; BLOCK];
    last_byte[BLOCK - 1] = 1;
    let mut g = c.benchmark_group("is_zero");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("zero_4k", |b| b.iter(|| is_zero(black_box(&zero))));
    g.bench_function("random_4k", |b| b.iter(|| is_zero(black_box(&random))));
    g.bench_function("last_byte_set_4k", |b| b.iter(|| is_zero(black_box(&last_byte))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(3);
    targets = digest, zero_test
}
criterion_main!(benches);
