//! `hashbench`: end-to-end throughput of the hashing pipeline against plain
//! reading of the same cached file, and the memory the destination index
//! costs per unique block. Prints a markdown report on stdout (progress on
//! stderr); the figures in `docs/BENCHMARKS.md` come from it.
//!
//! ```text
//! cargo run --release -p cbt-benches --bin hashbench -- [--dir target/bench-data]
//! ```
//!
//! Generated images are named by their parameters and reused by later runs;
//! they live under `target/` and are never committed.

use std::error::Error;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cbt_benches::{
    ensure_random_image, fill_random, load_average, mib_per_sec, random_bytes, read_sequential,
    reset_peak_rss, CpuTime, MemStatus, MIB,
};
use cbt_core::{hash_image, is_zero, Digest, HashOptions, Index, IndexOptions, Layout, RawImage};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const BLOCK: usize = 4096;
/// Chunk size of the plain sequential read (the pipeline's batch size too).
const READ_CHUNK: usize = 1 << 20;
/// Size of the in-memory buffer for the hashing ceiling without I/O.
const IN_MEMORY_BYTES: usize = 256 << 20;
const IMAGE_SEED: u64 = 1;
const INDEX_SEED: u64 = 2;
const MISS_SEED: u64 = 3;
/// Lookups timed against the large index (hits, then as many misses).
const LOOKUPS: usize = 1 << 16;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Hashing throughput and index memory of cbt-core")]
struct Opts {
    /// Directory for the generated images (created if missing, reused between runs).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Size of the image hashed, in MiB.
    #[arg(long, default_value_t = 2048)]
    image_mib: u64,
    /// Runs of each throughput measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Further hasher-thread counts to measure besides 1 and all cores (e.g. `2,4`).
    #[arg(long, value_delimiter = ',')]
    extra_threads: Vec<usize>,
    /// Total size of the images indexed for the memory measurement, in MiB.
    #[arg(long, default_value_t = 2048)]
    index_mib: u64,
    /// Number of images the indexed data is split into.
    #[arg(long, default_value_t = 8)]
    index_images: u64,
    /// Hasher threads per image while building the index (0: one per core).
    #[arg(long, default_value_t = 0)]
    index_threads: usize,
    /// Skip the index measurement.
    #[arg(long)]
    skip_index: bool,
    /// Skip the throughput measurements.
    #[arg(long)]
    skip_throughput: bool,
}

/// What to measure, checked before any work starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    /// Directory of the generated images.
    dir: PathBuf,
    /// Bytes of the hashed image (a multiple of the block size), or `None` to skip.
    image_len: Option<u64>,
    /// Runs per measurement (≥ 1).
    runs: usize,
    /// Hasher-thread counts, in order: 1, 0 (all cores), then the extras.
    thread_counts: Vec<usize>,
    /// Number and length of the indexed images, or `None` to skip.
    index: Option<(u64, u64)>,
    /// Hasher threads per image for the index build (0: one per core).
    index_threads: usize,
}

impl Config {
    fn from_args<I, T>(args: I) -> std::result::Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let o = Opts::try_parse_from(args)?;
        let invalid = |msg: &str| Opts::command().error(ErrorKind::ValueValidation, msg);
        if o.image_mib == 0 || o.runs == 0 {
            return Err(invalid("--image-mib and --runs must be positive"));
        }
        let mut thread_counts = vec![1, 0];
        for t in o.extra_threads {
            if t > 0 && !thread_counts.contains(&t) {
                thread_counts.push(t);
            }
        }
        let index = if o.skip_index {
            None
        } else {
            if o.index_images == 0
                || o.index_mib == 0
                || (o.index_mib * MIB) % (o.index_images * BLOCK as u64) != 0
            {
                return Err(invalid(
                    "--index-mib must split into --index-images images of whole 4 KiB blocks",
                ));
            }
            Some((o.index_images, o.index_mib * MIB / o.index_images))
        };
        Ok(Config {
            dir: o.dir,
            image_len: (!o.skip_throughput).then_some(o.image_mib * MIB),
            runs: o.runs,
            thread_counts,
            index,
            index_threads: o.index_threads,
        })
    }
}

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        // Prints help or the usage error and exits (0 for --help, 2 for errors).
        Err(e) => e.exit(),
    };
    match run(&config) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("hashbench: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprint!(": {s}");
                source = s.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Throughput in MiB/s.
    mibs: f64,
    /// Process CPU time over wall time: how many cores were kept busy.
    cores_busy: f64,
}

/// Times `f`, which processes `bytes` bytes.
fn measure(bytes: u64, f: impl FnOnce() -> Result<()>) -> Result<Sample> {
    let cpu = CpuTime::now()?;
    let t = Instant::now();
    f()?;
    let elapsed = t.elapsed();
    let cpu = CpuTime::now()?.total() - cpu.total();
    Ok(Sample {
        mibs: mib_per_sec(bytes, elapsed),
        cores_busy: cpu / elapsed.as_secs_f64(),
    })
}

/// Every run of one measurement.
#[derive(Debug, Default)]
struct Runs(Vec<Sample>);

impl Runs {
    fn best(&self) -> Sample {
        self.0.iter().copied().fold(
            Sample {
                mibs: 0.0,
                cores_busy: 0.0,
            },
            |a, b| if b.mibs > a.mibs { b } else { a },
        )
    }

    fn all(&self) -> String {
        self.0
            .iter()
            .map(|v| format!("{:.0}", v.mibs))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

fn run(config: &Config) -> Result<String> {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = String::new();
    writeln!(out, "## hashbench\n")?;
    writeln!(out, "Cores (available_parallelism): {cores}")?;
    let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    writeln!(out, "Load average (1 min) at start: {}\n", load(load_average()))?;
    if let Some(len) = config.image_len {
        throughput(config, len, cores, &mut out)?;
    }
    if let Some((count, len)) = config.index {
        index_memory(config, count, len, &mut out)?;
    }
    writeln!(out, "\nLoad average (1 min) at end: {}", load(load_average()))?;
    Ok(out)
}

/// Plain reading against the pipeline on one cached image, and the
/// hashing work alone in memory.
fn throughput(config: &Config, len: u64, cores: usize, out: &mut String) -> Result<()> {
    let path = config
        .dir
        .join(format!("random-{}MiB-seed{IMAGE_SEED}.raw", len / MIB));
    eprintln!("image: {}", path.display());
    if ensure_random_image(&path, len, IMAGE_SEED, 0)? {
        eprintln!("  generated");
    }
    let warm = measure(len, || Ok(read_sequential(&path, READ_CHUNK).map(drop)?))?;
    eprintln!("  warm-up read: {:.0} MiB/s", warm.mibs);

    let image = RawImage::open(&path)?;
    let layout = Layout::flat(len, BLOCK as u32)?;
    let mut read = Runs::default();
    let mut hashed: Vec<Runs> = config.thread_counts.iter().map(|_| Runs::default()).collect();
    let mut self_reading: [Runs; 2] = Default::default();
    // Rounds interleave the measurements so a noisy neighbour hurts them alike.
    for round in 1..=config.runs {
        read.0.push(measure(len, || {
            let n = read_sequential(&path, READ_CHUNK)?;
            if n == len {
                Ok(())
            } else {
                Err(format!("read {n} of {len} bytes").into())
            }
        })?);
        for (&threads, runs) in config.thread_counts.iter().zip(&mut hashed) {
            runs.0.push(measure(len, || hash_once(&image, &layout, threads))?);
        }
        for (threads, runs) in [1, cores].into_iter().zip(&mut self_reading) {
            runs.0
                .push(measure(len, || self_reading_hashers(&path, len, threads))?);
        }
        let last = |r: &Runs| r.0.last().map_or(0.0, |s| s.mibs);
        let hashes: Vec<String> = hashed.iter().map(|r| format!("{:.0}", last(r))).collect();
        eprintln!(
            "  round {round}: read {:.0}, hash {}",
            last(&read),
            hashes.join(", ")
        );
    }
    eprintln!("in-memory hashing");
    let memory = in_memory_ceiling(cores, config.runs)?;

    writeln!(
        out,
        "### Throughput on a cached {} MiB raw image (4 KiB blocks)\n",
        len / MIB
    )?;
    writeln!(
        out,
        "Best of {} interleaved runs; MiB/s = 2^20 bytes per second; cores busy = process CPU time / wall time \
         of the best run.\n",
        config.runs
    )?;
    writeln!(
        out,
        "| Measurement | MiB/s (best) | vs. read | Cores busy | All runs (MiB/s) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---|")?;
    let base = read.best().mibs;
    let mut row = |label: String, r: &Runs| {
        let b = r.best();
        writeln!(
            out,
            "| {label} | {:.0} | {:.2} | {:.2} | {} |",
            b.mibs,
            b.mibs / base,
            b.cores_busy,
            r.all()
        )
    };
    row(
        format!("Sequential read, {} KiB chunks", READ_CHUNK / 1024),
        &read,
    )?;
    for (&threads, runs) in config.thread_counts.iter().zip(&hashed) {
        let label = match threads {
            0 => format!("hash_image, threads=0 ({cores} hashers)"),
            n => format!("hash_image, threads={n}"),
        };
        row(label, runs)?;
    }
    row(
        "Experiment (not cbt-core): 1 thread preads and hashes its own 1 MiB batches".into(),
        &self_reading[0],
    )?;
    row(
        format!("Experiment (not cbt-core): {cores} threads each pread and hash their own 1 MiB batches"),
        &self_reading[1],
    )?;
    let labels = [
        "No I/O: is_zero + BLAKE3 over a 256 MiB buffer, 1 thread".to_string(),
        format!("No I/O: is_zero + BLAKE3 over a 256 MiB buffer, {cores} threads"),
        "No I/O: is_zero + BLAKE3 over a cache-resident 1 MiB batch, 1 thread".to_string(),
        format!("No I/O: is_zero + BLAKE3 over a cache-resident 1 MiB batch, {cores} threads"),
    ];
    for (label, runs) in labels.into_iter().zip(&memory) {
        row(label, runs)?;
    }
    writeln!(
        out,
        "\nWarm-up read (first pass, may come from disk): {:.0} MiB/s",
        warm.mibs
    )?;
    Ok(())
}

/// One run of `hash_image` over the whole image.
fn hash_once(image: &RawImage, layout: &Layout, threads: usize) -> Result<()> {
    let options = HashOptions {
        threads,
        ..Default::default()
    };
    let summary = hash_image(image, layout, &options, |_| Ok(()))?;
    if summary.bytes_read != layout.len() || summary.zero_blocks != 0 {
        return Err(format!("unexpected summary {summary:?}").into());
    }
    Ok(())
}

/// An alternative to the reader thread, for comparison only: `threads`
/// workers each claim the next 1 MiB batch, `pread` it into their own
/// buffer and hash it there, so the copy out of the page cache happens on
/// the core that hashes the data (no hand-off, no ordering of results).
fn self_reading_hashers(path: &Path, len: u64, threads: usize) -> Result<()> {
    let file = File::open(path)?;
    let next = AtomicU64::new(0);
    let work = || -> std::io::Result<u8> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut acc = 0u8;
        loop {
            let offset = next.fetch_add(READ_CHUNK as u64, Ordering::Relaxed);
            if offset >= len {
                return Ok(acc);
            }
            let n = (len - offset).min(READ_CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            acc ^= hash_blocks(&buf[..n]);
        }
    };
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        for w in workers {
            black_box(w.join().map_err(|_| "a hashing thread panicked")??);
        }
        Ok(())
    })
}

/// The pipeline's per-block work (zero test, then BLAKE3) over `data`.
fn hash_blocks(data: &[u8]) -> u8 {
    let mut acc = 0u8;
    for block in data.chunks(BLOCK) {
        if !is_zero(block) {
            acc ^= Digest::of(block).0[0];
        }
    }
    acc
}

/// What the hashers alone can do, without I/O or channels: the per-block
/// work over `IN_MEMORY_BYTES`, on 1 thread and on every core, once
/// streaming a large buffer from RAM and once re-hashing a cache-resident
/// 1 MiB batch per thread (as a hasher does right after the reader's copy).
/// Returns `[ram_1, ram_all, cached_1, cached_all]`.
fn in_memory_ceiling(cores: usize, runs: usize) -> Result<[Runs; 4]> {
    let mut buf = vec![0u8; IN_MEMORY_BYTES];
    fill_random(&mut buf, IMAGE_SEED, 0);
    let batches: Vec<Vec<u8>> = (0..cores as u64)
        .map(|i| random_bytes(READ_CHUNK, IMAGE_SEED, i * READ_CHUNK as u64 / 8))
        .collect();
    let repeat = |batch: &[u8], bytes: usize| {
        (0..bytes / batch.len()).fold(0u8, |acc, _| acc ^ hash_blocks(black_box(batch)))
    };
    let total = IN_MEMORY_BYTES as u64;
    let mut r: [Runs; 4] = std::array::from_fn(|_| Runs::default());
    for _ in 0..runs {
        r[0].0.push(measure(total, || {
            black_box(hash_blocks(&buf));
            Ok(())
        })?);
        let part = buf.len().div_ceil(cores).div_ceil(BLOCK) * BLOCK;
        r[1].0.push(measure(total, || {
            thread::scope(|s| {
                for chunk in buf.chunks(part) {
                    s.spawn(move || black_box(hash_blocks(chunk)));
                }
            });
            Ok(())
        })?);
        r[2].0.push(measure(total, || {
            black_box(repeat(&batches[0], IN_MEMORY_BYTES));
            Ok(())
        })?);
        r[3].0.push(measure(total, || {
            thread::scope(|s| {
                for batch in &batches {
                    s.spawn(move || black_box(repeat(batch, IN_MEMORY_BYTES / cores)));
                }
            });
            Ok(())
        })?);
    }
    Ok(r)
}

/// Builds the index over `count` images of `len` bytes of distinct random
/// blocks and reports its size, the process's RSS growth and lookup cost.
fn index_memory(config: &Config, count: u64, len: u64, out: &mut String) -> Result<()> {
    let dir = config
        .dir
        .join(format!("index-{count}x{}MiB-seed{INDEX_SEED}", len / MIB));
    eprintln!("index images: {}", dir.display());
    let words_per_image = len / 8;
    for i in 0..count {
        let p = dir.join(format!("img-{i:03}.raw"));
        if ensure_random_image(&p, len, INDEX_SEED, i * words_per_image)? {
            eprintln!("  generated {}", p.display());
        }
    }

    // Warm the page cache so the build time below is not the disk's.
    for i in 0..count {
        read_sequential(&dir.join(format!("img-{i:03}.raw")), READ_CHUNK)?;
    }
    let peak_reset = reset_peak_rss();
    let before = MemStatus::now()?;
    let options = IndexOptions {
        cache_dir: None,
        threads: config.index_threads,
        ..Default::default()
    };
    let t = Instant::now();
    let index = Index::build(std::slice::from_ref(&dir), &options)?;
    let build = t.elapsed();
    let after = MemStatus::now()?;
    let stats = index.stats();
    eprintln!("  built in {:.2} s", build.as_secs_f64());

    let unique = stats.unique_blocks.max(1) as f64;
    let peak_growth = after.peak.saturating_sub(before.rss);
    let kept_growth = after.rss.saturating_sub(before.rss);
    writeln!(
        out,
        "\n### Index memory ({count} images × {} MiB, distinct random 4 KiB blocks)\n",
        len / MIB
    )?;
    writeln!(
        out,
        "Index built from cached images with the digest cache disabled, hasher threads per image: {}.\n",
        match config.index_threads {
            0 => "one per core".to_string(),
            n => n.to_string(),
        }
    )?;
    writeln!(out, "| Quantity | Value |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(out, "| Images indexed | {} |", stats.images)?;
    writeln!(out, "| Blocks | {} |", stats.blocks)?;
    writeln!(out, "| Unique blocks | {} |", stats.unique_blocks)?;
    writeln!(
        out,
        "| IndexStats::memory_bytes | {} ({:.1} MiB) |",
        stats.memory_bytes,
        mb(stats.memory_bytes)
    )?;
    writeln!(
        out,
        "| **memory_bytes per unique block** | **{:.2}** |",
        stats.memory_bytes as f64 / unique
    )?;
    writeln!(out, "| RSS before build | {:.1} MiB |", mb(before.rss))?;
    writeln!(
        out,
        "| Peak RSS increase during build (VmHWM after − VmRSS before{}) | {:.1} MiB = {:.1} B/unique block |",
        if peak_reset { ", peak reset first" } else { "; peak NOT reset" },
        mb(peak_growth),
        peak_growth as f64 / unique
    )?;
    writeln!(
        out,
        "| RSS kept after build (VmRSS after − before) | {:.1} MiB = {:.1} B/unique block |",
        mb(kept_growth),
        kept_growth as f64 / unique
    )?;
    writeln!(
        out,
        "| Build time (hashing {:.0} MiB) | {:.2} s = {:.0} MiB/s |",
        mb(stats.bytes_hashed),
        build.as_secs_f64(),
        mib_per_sec(stats.bytes_hashed, build)
    )?;

    // Lookups against an index far larger than L2: hits spread over every image, misses of another seed.
    let blocks = count * len / BLOCK as u64;
    let step = (blocks / LOOKUPS as u64).max(1);
    let hits: Vec<Digest> = (0..LOOKUPS as u64)
        .map(|k| {
            Digest::of(&random_bytes(
                BLOCK,
                INDEX_SEED,
                (k * step % blocks) * (BLOCK as u64 / 8),
            ))
        })
        .collect();
    let misses: Vec<Digest> = (0..LOOKUPS as u64)
        .map(|k| Digest::of(&random_bytes(BLOCK, MISS_SEED, k * (BLOCK as u64 / 8))))
        .collect();
    let hit_ns = time_lookups(&index, &hits, LOOKUPS, config.runs);
    let miss_ns = time_lookups(&index, &misses, 0, config.runs);
    writeln!(out, "| Lookup, hit (best of {}) | {hit_ns:.0} ns |", config.runs)?;
    writeln!(
        out,
        "| Lookup, miss (best of {}) | {miss_ns:.0} ns |",
        config.runs
    )?;
    drop(index);
    let dropped = MemStatus::now()?;
    writeln!(
        out,
        "| RSS after dropping the index (VmRSS − before) | {:.1} MiB |",
        mb(dropped.rss.saturating_sub(before.rss))
    )?;
    Ok(())
}

/// Best nanoseconds per lookup over `runs` passes; checks the number found.
fn time_lookups(index: &Index, digests: &[Digest], expect_found: usize, runs: usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let found = digests
            .iter()
            .filter(|d| index.lookup(black_box(d)).is_some())
            .count();
        best = best.min(t.elapsed());
        // A short-key collision could add a stray miss-hit; it would be visible here.
        if found != expect_found {
            eprintln!(
                "  note: {found} of {} lookups found, expected {expect_found}",
                digests.len()
            );
        }
    }
    best.as_nanos() as f64 / digests.len() as f64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = Config::from_args(["hashbench"]).expect("defaults parse");
        assert_eq!(c.dir, PathBuf::from("target/bench-data"));
        assert_eq!(c.image_len, Some(2048 * MIB));
        assert_eq!(c.thread_counts, vec![1, 0]);
        assert_eq!(c.index, Some((8, 256 * MIB)));
        let c = Config::from_args(["hashbench", "--extra-threads", "2,1,4", "--skip-index"]).expect("parse");
        assert_eq!(c.thread_counts, vec![1, 0, 2, 4]);
        assert_eq!(c.index, None);
        assert!(Config::from_args(["hashbench", "--runs", "0"]).is_err());
        assert!(Config::from_args(["hashbench", "--index-mib", "1", "--index-images", "3"]).is_err());
    }
}
