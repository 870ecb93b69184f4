//! The hashing pipeline end to end: `hash_image` over a 64 MiB raw file of
//! non-zero pseudo-random blocks (in the page cache after the first pass),
//! with one hasher thread and with one per core.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use cbt_benches::{write_random_image, MIB};
use cbt_core::{hash_image, HashOptions, Layout, RawImage, DEFAULT_BLOCK_SIZE};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LEN: u64 = 64 * MIB;

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("image.raw");
    write_random_image(&path, LEN, 21, 0).expect("write the image");
    let image = RawImage::open(&path).expect("open the image");
    let layout = Layout::flat(LEN, DEFAULT_BLOCK_SIZE).expect("layout");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut g = c.benchmark_group("hash_image_64MiB");
    g.throughput(Throughput::Bytes(LEN));
    g.sample_size(10);
    for (name, threads) in [("threads_1".to_string(), 1), (format!("threads_all_{cores}"), 0)] {
        let options = HashOptions {
            threads,
            ..Default::default()
        };
        g.bench_function(name, |b| {
            b.iter(|| hash_image(&image, &layout, &options, |_| Ok(())).expect("hash the image"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(4);
    targets = pipeline
}
criterion_main!(benches);
