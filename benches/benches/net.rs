//! The wire: frame encoding and decoding (`BLOCK` frames carrying 4 KiB
//! blocks, `DIGESTS` frames carrying a group's 32-byte digests), and the
//! per-connection zstd stream that compresses missing blocks, on
//! incompressible and on text-like blocks.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use cbt_benches::random_bytes;
use cbt_core::Digest;
use cbt_net::compress::{Compression, Compressor, Decompressor, WINDOW_LOG};
use cbt_net::frame::{decode, BlockRange, Decoded, Encoding, Frame};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BLOCK: usize = 4096;
/// Blocks per iteration.
const BLOCKS: usize = 256;
/// Blocks per group (the digests of one `DIGESTS` frame).
const GROUP: usize = 256;
const SEED: u64 = 31;

fn random_blocks() -> Vec<Bytes> {
    (0..BLOCKS as u64)
        .map(|k| Bytes::from(random_bytes(BLOCK, SEED, k * (BLOCK as u64 / 8))))
        .collect()
}

/// Blocks of log-like text: compressible about 3-5× by zstd, like the
/// text and binaries of an OS image.
fn text_blocks() -> Vec<Bytes> {
    let mut text = Vec::with_capacity(BLOCKS * BLOCK);
    let mut i = 0u64;
    while text.len() < BLOCKS * BLOCK {
        let r = cbt_benches::splitmix64(SEED, i);
        text.extend_from_slice(
            format!(
                "Dec  3 07:{:02}:{:02} host{} kernel: [{}] eth{}: link {} rx={} tx={}\n",
                r % 60,
                (r >> 8) % 60,
                (r >> 16) % 8,
                r >> 40,
                (r >> 20) % 4,
                ["up", "down", "renegotiated"][(r % 3) as usize],
                (r >> 24) % 100_000,
                (r >> 32) % 100_000
            )
            .as_bytes(),
        );
        i += 1;
    }
    text.chunks(BLOCK)
        .take(BLOCKS)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn frames(c: &mut Criterion) {
    let blocks = random_blocks();
    let block_frames: Vec<Frame> = blocks
        .iter()
        .enumerate()
        .map(|(i, data)| Frame::Blocks {
            ranges: vec![BlockRange {
                first: i as u64,
                count: 1,
            }],
            encoding: Encoding::Raw,
            data: data.clone(),
        })
        .collect();
    let mut g = c.benchmark_group("frame_block_4k");
    g.throughput(Throughput::Bytes((BLOCKS * BLOCK) as u64));
    g.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(BLOCKS * (BLOCK + 64));
        b.iter(|| {
            buf.clear();
            for f in &block_frames {
                f.encode(&mut buf).expect("encode");
            }
            black_box(buf.len())
        })
    });
    let mut encoded = BytesMut::new();
    for f in &block_frames {
        f.encode(&mut encoded).expect("encode");
    }
    let encoded = encoded.freeze();
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&encoded[..]);
            let mut n = 0;
            while let Decoded::Frame(f) = decode(&mut buf).expect("decode") {
                black_box(f);
                n += 1;
            }
            assert_eq!(n, BLOCKS);
        })
    });
    g.finish();

    let digests: Vec<Digest> = blocks.iter().cycle().take(GROUP).map(|b| Digest::of(b)).collect();
    let frame = Frame::Digests { group: 7, digests };
    let mut g = c.benchmark_group("frame_digests_256");
    // Counted in digests carried.
    g.throughput(Throughput::Elements(GROUP as u64));
    g.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(GROUP * 40);
        b.iter(|| {
            buf.clear();
            frame.encode(&mut buf).expect("encode");
            black_box(buf.len())
        })
    });
    let mut one = BytesMut::new();
    frame.encode(&mut one).expect("encode");
    let one = one.freeze();
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&one[..]);
            match decode(&mut buf).expect("decode") {
                Decoded::Frame(f) => f,
                Decoded::Incomplete(n) => panic!("incomplete: {n}"),
            }
        })
    });
    g.finish();
}

/// The blocks as the sender sends them: pieces of 64 blocks (256 KiB) of
/// one stream, at a fixed level so that runs compare.
fn pieces(blocks: &[Bytes]) -> Vec<(Encoding, Bytes)> {
    let mut z = Compressor::new(Compression::Zstd(3), WINDOW_LOG).expect("compressor");
    blocks
        .chunks(PIECE_BLOCKS)
        .map(|piece| {
            for b in piece {
                z.push(black_box(b));
            }
            z.finish().expect("a piece")
        })
        .collect()
}

const PIECE_BLOCKS: usize = 64;

fn compression(c: &mut Criterion) {
    for (name, blocks) in [("random", random_blocks()), ("text", text_blocks())] {
        let mut g = c.benchmark_group(format!("zstd_stream_pieces_{name}"));
        g.throughput(Throughput::Bytes((BLOCKS * BLOCK) as u64));
        // A fresh stream per iteration: a stream fed the same blocks again
        // would find them in its window and compress unrealistically fast.
        g.bench_function("compress", |b| {
            b.iter(|| pieces(&blocks).iter().map(|(_, d)| d.len()).sum::<usize>())
        });
        // One pass of the stream, decoded in order by a fresh decompressor.
        g.bench_function("decompress", |b| {
            b.iter_batched(
                || {
                    (
                        pieces(&blocks),
                        Decompressor::new(WINDOW_LOG).expect("decompressor"),
                    )
                },
                |(pieces, mut d)| {
                    let mut out = Vec::with_capacity(BLOCK * PIECE_BLOCKS);
                    for ((enc, data), plain) in pieces.iter().zip(blocks.chunks(PIECE_BLOCKS)) {
                        let got = d
                            .decode(*enc, data, plain.len() * BLOCK, &mut out)
                            .expect("decode");
                        black_box(got);
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config(4);
    targets = frames, compression
}
criterion_main!(benches);
