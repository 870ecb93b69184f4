//! `cbt demo`: the real thing on generated sample images, on one machine.
//!
//! It writes a "seed" image (a disk whose data lies in 4 KiB-aligned
//! files, with free space left as holes) and a "new" image made from the
//! same files plus changes: a quarter of the files rewritten, new files
//! added, the rest moved around. It starts a `cbt serve` daemon in this
//! process on 127.0.0.1 (an ephemeral port, a shared secret required) whose
//! data directory holds the seed image, pushes the new image to it over
//! TCP like `cbt send`, and prints what crossed the wire against a full
//! copy. Finally it re-hashes the daemon's copy itself and compares it
//! with the source's digest.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::HumanBytes;

use cbt_core::{image_digest, open_image, ImageSpec, Layout, OutputFormat};
use cbt_net::{ClientOptions, Progress, Secret, SendOptions, ServeOptions, Shutdown, TransferReport};

use crate::cli::Config;
use crate::progress::{self, Bar};

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

/// Lays out the sample images' files: (seed, length in blocks, first block).
type Files = Vec<(u64, u64, u64)>;

fn sample_files(total_blocks: u64) -> (Files, Files) {
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
    (seed_files, new_files)
}

/// A secret for this run only (the std hasher's keys come from the OS).
fn demo_secret() -> anyhow::Result<Secret> {
    let mut words = Vec::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i ^ u64::from(std::process::id()));
        words.push(format!("{:016x}", h.finish()));
    }
    Secret::from_bytes(words.concat().as_bytes()).map_err(anyhow::Error::msg)
}

/// Runs the demo in `dir` (or a temporary directory).
pub fn run(config: &Config, dir: Option<&Path>, size_mib: u64) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let size_mib = size_mib.max(16);
    let size = size_mib << 20;
    let (seed_files, new_files) = sample_files(size / BLOCK);
    let data_dir = dir.join("daemon");
    std::fs::create_dir_all(&data_dir)?;
    let seed_img = data_dir.join("seed.img");
    let new_img = dir.join("new.img");
    let received = data_dir.join("new.img");
    let _ = std::fs::remove_file(&received);
    println!(
        "generating two sample {size_mib} MiB disk images in {}...",
        dir.display()
    );
    write_image(&seed_img, size, &seed_files)?;
    write_image(&new_img, size, &new_files)?;
    let file_bytes = |f: &Files| HumanBytes(f.iter().map(|x| x.1).sum::<u64>() * BLOCK);
    println!(
        "  seed.img: {} of files, the rest free space (the daemon's copy of an older disk)",
        file_bytes(&seed_files)
    );
    println!(
        "  new.img:  {} of files: the same ones moved around, a quarter of them rewritten, some added",
        file_bytes(&new_files)
    );

    let secret = demo_secret()?;
    let mut serve_options = ServeOptions::new(data_dir.clone());
    serve_options.secret = Some(secret.clone());
    serve_options.receive.format = OutputFormat::Raw;
    serve_options.receive.index = config.index.clone();
    serve_options.receive.index.cache_dir = None;
    let client = ClientOptions {
        secret: Some(secret),
        ..ClientOptions::default()
    };
    let counters = Arc::new(Progress::default());
    let send_options = SendOptions {
        block_size: config.index.block_size,
        threads: config.threads,
        progress: Some(Arc::clone(&counters)),
        ..SendOptions::default()
    };
    let image = open_image(&ImageSpec::file(&new_img))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report: TransferReport = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(cbt_net::serve(listener, serve_options, async {
            let _ = stopped.await;
        }));
        println!(
            "started a cbt daemon on {addr}: data directory {} (holds seed.img), shared secret required",
            data_dir.display()
        );
        println!("pushing new.img to {addr}/new.img over TCP...");
        let bar = Bar::start(progress::wanted(config.progress, false), move || {
            progress::sending(&counters.snapshot())
        });
        let pushed = cbt_net::push(
            &addr,
            Some("new.img"),
            image,
            &send_options,
            &client,
            Shutdown::never(),
        )
        .await;
        drop(bar);
        let _ = stop.send(());
        let served = daemon.await.context("the daemon task failed")?;
        let report = pushed.context("the push failed")?;
        served.context("the daemon failed")?;
        anyhow::Ok(report)
    })?;

    // Check the daemon's copy here too, independently of the transfer.
    let digest_of = |path: &Path| -> anyhow::Result<String> {
        let image = open_image(&ImageSpec::file(path))?;
        let layout = Layout::detect(image.as_ref(), config.index.block_size)?;
        Ok(image_digest(image.as_ref(), &layout)?.to_hex())
    };
    let (src_digest, out_digest) = (digest_of(&new_img)?, digest_of(&received)?);
    if src_digest != out_digest || report.image_digest != src_digest {
        anyhow::bail!(
            "{}: does not match {} ({out_digest} != {src_digest})",
            received.display(),
            new_img.display()
        );
    }
    print_summary(&report, &received, &src_digest);
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_summary(r: &TransferReport, received: &Path, digest: &str) {
    let pct = |n: u64| n as f64 * 100.0 / r.blocks_total.max(1) as f64;
    let wire = r.wire_bytes_sent + r.wire_bytes_received;
    let full = r.image_bytes;
    let block = (r.image_bytes / r.blocks_total.max(1)).max(1);
    let sparse = full.saturating_sub(r.blocks_zero * block);
    let saved = |whole: u64| {
        let s = whole.saturating_sub(wire);
        format!(
            "{} ({:.1}%)",
            HumanBytes(s),
            s as f64 * 100.0 / whole.max(1) as f64
        )
    };
    println!(
        "done in {:.2} s, observed bandwidth {:.0} MB/s (image bytes per second)",
        r.seconds,
        r.observed_bandwidth / 1e6
    );
    println!(
        "  blocks:      {} in all: {:.1}% zero (never sent), {:.1}% found at the daemon, {:.1}% sent",
        r.blocks_total,
        pct(r.blocks_zero),
        pct(r.blocks_local),
        pct(r.blocks_sent)
    );
    println!(
        "  on the wire: {} ({} sent, {} received; missing blocks zstd-compressed where it helps)",
        HumanBytes(wire),
        HumanBytes(r.wire_bytes_sent),
        HumanBytes(r.wire_bytes_received)
    );
    println!(
        "  a full copy: {} (a copy that skips zeros: {})",
        HumanBytes(full),
        HumanBytes(sparse)
    );
    println!(
        "  saved:       {} against a full copy, {} against a sparse one",
        saved(full),
        saved(sparse)
    );
    println!(
        "  verified:    the daemon checked the whole image against the sender's BLAKE3 image digest before publishing {}; re-hashed here: same digest ({})",
        received.display(),
        &digest[..16.min(digest.len())]
    );
}
