//! Reconstruction (`cbt copy`): from a source image's block records and the
//! destination index, plan every block (zero, local, missing), copy local
//! blocks after re-hashing them, fetch missing ones from a [`BlockSource`].
//! Every block goes through the one assembly engine ([`Assembly`]), which
//! checks it, records its digest and publishes the output only when the
//! recorded digests reproduce the source's image digest.
//!
//! ```text
//!                 ┌─▶ local copier × N ──(seed changed)──┐
//! records ─▶ planner                                    ├─▶ fetcher (BlockSource) ─▶ output
//!                 └────────────── missing ──────────────┘
//! ```
//! Local copies run at disk speed while missing blocks arrive at the
//! source's speed; channels are bounded, so memory is too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::assemble::{Assembly, AssemblyOptions, Checked, Expected, InPlaceRecord};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::index::{Index, Location};
use crate::layout::Layout;
use crate::output::OutputFormat;
use crate::pipeline::{hash_image, BlockKind, BlockRecord, HashOptions, ImageDigester, ZeroDigests};

/// Largest run of contiguous local blocks copied with one read.
const MAX_RUN_BYTES: u64 = 1 << 20;

/// A block wanted from the source: where it goes and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Index of the block in the layout.
    pub index: u64,
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of the content.
    pub digest: Digest,
}

/// Where missing blocks come from: the network, or (for `cbt copy`) the
/// source image itself.
pub trait BlockSource: Send {
    /// A name for messages (a path or a peer address).
    fn name(&self) -> String;

    /// Fetches every block that arrives on `wanted` until the channel
    /// closes, calling `deliver` with each block's content as it arrives
    /// (in any order). Implementations may keep many requests in flight.
    fn fetch(
        &mut self,
        wanted: Receiver<BlockRef>,
        deliver: &mut dyn FnMut(BlockRef, &[u8]) -> Result<()>,
    ) -> Result<()>;
}

/// A [`BlockSource`] that reads the missing blocks from a local image.
#[derive(Debug)]
pub struct ImageBlockSource {
    image: Arc<dyn Image>,
    bytes_read: u64,
}

impl ImageBlockSource {
    /// Serves blocks of `image`.
    pub fn new(image: Arc<dyn Image>) -> Self {
        ImageBlockSource { image, bytes_read: 0 }
    }

    /// Bytes read from the image so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

impl BlockSource for ImageBlockSource {
    fn name(&self) -> String {
        self.image.label()
    }

    fn fetch(
        &mut self,
        wanted: Receiver<BlockRef>,
        deliver: &mut dyn FnMut(BlockRef, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        for b in wanted {
            buf.resize(b.len as usize, 0);
            self.image.read_at(&mut buf, b.offset)?;
            self.bytes_read += u64::from(b.len);
            deliver(b, &buf)?;
        }
        Ok(())
    }
}

/// How to reconstruct.
#[derive(Debug, Clone)]
pub struct ReconstructOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Local copier threads (0: one per core).
    pub threads: usize,
    /// Re-read the whole output and compare every block before publishing
    /// (by default the check relies on every written block having been
    /// hashed on its way in, see [`crate::assemble`]).
    pub verify_readback: bool,
    /// Update the output in place when it exists (raw file or block
    /// device), writing only the blocks that differ.
    pub in_place: bool,
}

impl Default for ReconstructOptions {
    fn default() -> Self {
        ReconstructOptions {
            format: OutputFormat::Raw,
            threads: 0,
            verify_readback: false,
            in_place: false,
        }
    }
}

/// Live counters, readable from another thread (for progress display).
#[derive(Debug, Default)]
pub struct Progress {
    /// Blocks planned so far.
    pub blocks_planned: AtomicU64,
    /// Bytes written from local seeds.
    pub bytes_local: AtomicU64,
    /// Bytes written from the block source.
    pub bytes_fetched: AtomicU64,
}

/// What a reconstruction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Blocks in the image.
    pub blocks_total: u64,
    /// All-zero blocks (written as holes).
    pub blocks_zero: u64,
    /// Blocks copied from local images.
    pub blocks_local: u64,
    /// Blocks fetched from the source.
    pub blocks_missing: u64,
    /// Bytes copied from local images.
    pub bytes_local: u64,
    /// Bytes fetched from the source.
    pub bytes_missing: u64,
    /// Index hits whose content no longer matched (a seed changed, or a
    /// short-digest collision) and were fetched instead.
    pub local_rejected: u64,
    /// Blocks fixed after verification found them wrong.
    pub blocks_repaired: u64,
    /// In place: blocks that already held the right bytes (not written).
    pub blocks_unchanged: u64,
    /// Bytes written to the output (data, and zeros where no hole could
    /// be punched).
    pub bytes_written: u64,
    /// Bytes of local blocks the kernel copied from raw seeds
    /// (`copy_file_range`); on XFS with reflink and on btrfs their extents
    /// are shared with the seed, not written.
    pub bytes_cloned: u64,
    /// Digest of the whole image (see [`ImageDigester`]).
    pub image_digest: String,
    /// Where the image was published.
    pub output: PathBuf,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A run of blocks, contiguous in the source and in one seed image.
struct LocalRun {
    image: u32,
    seed_offset: u64,
    blocks: Vec<BlockRef>,
}

impl LocalRun {
    fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.len)).sum()
    }

    /// True if `b` found at `loc` continues this run.
    fn extends(&self, b: &BlockRef, loc: Location) -> bool {
        let Some(last) = self.blocks.last() else {
            return false;
        };
        let run_len = last.offset + u64::from(last.len) - self.blocks[0].offset;
        loc.image == self.image
            && b.offset == last.offset + u64::from(last.len)
            && loc.offset == self.seed_offset + run_len
            && run_len + u64::from(b.len) <= MAX_RUN_BYTES
    }
}

/// The first error of any stage stops all of them.
#[derive(Default)]
struct Failure {
    stopped: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    /// Keeps the first cause: a stage that failed only because another
    /// went away ([`Error::Stopped`]) may get here before the one that
    /// failed (the fetcher drops its channel, then reports), and is
    /// replaced by it.
    fn set(&self, e: Error) {
        if let Ok(mut f) = self.first.lock() {
            let replace = match f.as_ref() {
                None => true,
                Some(Error::Stopped(_)) => !matches!(e, Error::Stopped(_)),
                Some(_) => false,
            };
            if replace {
                *f = Some(e);
            }
        }
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn take(&self) -> Option<Error> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

#[derive(Default)]
struct Counters {
    zero: AtomicU64,
    local: AtomicU64,
    local_bytes: AtomicU64,
    missing: AtomicU64,
    missing_bytes: AtomicU64,
    rejected: AtomicU64,
    unchanged: AtomicU64,
}

/// Reconstructs an image at `output_path` from its block `records` (in disk
/// order, covering `layout`), local blocks found through `index`, and
/// missing blocks from `source`. The result appears at `output_path` only
/// after it verified; on failure no file is left at `output_path`.
pub fn reconstruct(
    layout: &Layout,
    records: impl Iterator<Item = Result<BlockRecord>>,
    index: &Index,
    source: &mut dyn BlockSource,
    output_path: &Path,
    options: &ReconstructOptions,
    progress: Option<&Progress>,
) -> Result<Report> {
    let started = Instant::now();
    if layout.block_size() != index.block_size() {
        return Err(Error::Config(format!(
            "source block size {} differs from the index's {}",
            layout.block_size(),
            index.block_size()
        )));
    }
    let assembly_options = AssemblyOptions {
        format: options.format,
        durable: true,
        verify_readback: options.verify_readback,
        in_place: options.in_place,
    };
    let mut assembly = Assembly::create(output_path, layout, &assembly_options)?;
    let result = (|| {
        let (digest, counters) = assemble(layout, records, index, source, &assembly, options, progress)?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "all blocks written");
        let repaired = assembly.finish(&digest, source)?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "output synced and verified"
        );
        Ok((digest, counters, repaired))
    })();
    index.refresh_changed_seeds();
    match result {
        Ok((image_digest, counters, repaired)) => {
            let (bytes_written, bytes_cloned) = (assembly.bytes_written(), assembly.bytes_cloned());
            let published = assembly.publish()?;
            Ok(Report {
                image_bytes: layout.len(),
                blocks_total: layout.block_count(),
                blocks_zero: counters.zero.load(Ordering::Relaxed),
                blocks_local: counters.local.load(Ordering::Relaxed),
                blocks_missing: counters.missing.load(Ordering::Relaxed),
                bytes_local: counters.local_bytes.load(Ordering::Relaxed),
                bytes_missing: counters.missing_bytes.load(Ordering::Relaxed),
                local_rejected: counters.rejected.load(Ordering::Relaxed),
                blocks_repaired: repaired,
                blocks_unchanged: counters.unchanged.load(Ordering::Relaxed),
                bytes_written,
                bytes_cloned,
                image_digest: image_digest.to_hex(),
                output: published,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Err(e) => {
            assembly.discard();
            Err(e)
        }
    }
}

/// Runs planner, local copiers and fetcher, all writing through
/// `assembly`. Returns the image digest of the records.
fn assemble(
    layout: &Layout,
    records: impl Iterator<Item = Result<BlockRecord>>,
    index: &Index,
    source: &mut dyn BlockSource,
    assembly: &Assembly,
    options: &ReconstructOptions,
    progress: Option<&Progress>,
) -> Result<(Digest, Counters)> {
    let copiers = if options.threads > 0 {
        options.threads
    } else {
        thread::available_parallelism().map_or(1, |n| n.get())
    };
    let failure = Failure::default();
    let counters = Counters::default();
    let (local_tx, local_rx) = bounded::<LocalRun>(copiers * 4);
    let (wanted_tx, wanted_rx) = bounded::<BlockRef>(4096);
    let mut digester = ImageDigester::new(layout);

    thread::scope(|s| {
        for i in 0..copiers {
            let rx = local_rx.clone();
            let wanted = wanted_tx.clone();
            let (failure, counters) = (&failure, &counters);
            let spawned = thread::Builder::new()
                .name(format!("cbt-local-{i}"))
                .spawn_scoped(s, move || {
                    if let Err(e) = copy_local(&rx, &wanted, index, assembly, counters, progress) {
                        failure.set(e);
                    }
                });
            if let Err(e) = spawned {
                failure.set(Error::io(assembly.temp_path(), "spawn copier thread", e));
            }
        }
        drop(local_rx);
        // In place: the output's current blocks, hashed alongside the source
        // (each is read before the planner can decide to overwrite it).
        let (current_tx, current_rx) = bounded::<Vec<InPlaceRecord>>(16);
        if assembly.is_in_place() {
            let failure = &failure;
            let threads = options.threads;
            let spawned = thread::Builder::new()
                .name("cbt-current".into())
                .spawn_scoped(s, move || {
                    let hashed = assembly.hash_in_place(threads, |records| {
                        current_tx
                            .send(records)
                            .map_err(|_| Error::Stopped("in-place comparison stopped".into()))
                    });
                    if let Err(e) = hashed {
                        if !matches!(e, Error::Stopped(_)) {
                            failure.set(e);
                        }
                    }
                });
            if let Err(e) = spawned {
                failure.set(Error::io(assembly.temp_path(), "spawn hashing thread", e));
            }
        } else {
            drop(current_tx);
        }
        let mut current = current_rx.into_iter().flatten();
        let (failure_ref, counters_ref) = (&failure, &counters);
        let spawned = thread::Builder::new()
            .name("cbt-fetch".into())
            .spawn_scoped(s, move || {
                let name = source.name();
                let mut zeros = ZeroDigests::default();
                let mut deliver = |b: BlockRef, data: &[u8]| -> Result<()> {
                    let checked = Checked::each(
                        b.index,
                        b.offset,
                        data,
                        &[b.len],
                        Expected::Digests(&[b.digest]),
                        &mut zeros,
                    );
                    if data.len() != b.len as usize || !checked.good().first().copied().unwrap_or(false) {
                        return Err(Error::BlockSource {
                            name: name.clone(),
                            source: format!("block at offset {} does not match its digest", b.offset).into(),
                        });
                    }
                    assembly.write_checked(&checked)?;
                    counters_ref.missing.fetch_add(1, Ordering::Relaxed);
                    counters_ref
                        .missing_bytes
                        .fetch_add(u64::from(b.len), Ordering::Relaxed);
                    if let Some(p) = progress {
                        p.bytes_fetched.fetch_add(u64::from(b.len), Ordering::Relaxed);
                    }
                    Ok(())
                };
                if let Err(e) = source.fetch(wanted_rx, &mut deliver) {
                    failure_ref.set(e);
                }
            });
        if let Err(e) = spawned {
            failure.set(Error::io(assembly.temp_path(), "spawn fetcher thread", e));
        }

        let planned = plan(
            layout,
            records,
            &mut current,
            assembly,
            index,
            &local_tx,
            &wanted_tx,
            &mut digester,
            &failure,
            &counters,
            progress,
        );
        if let Err(e) = planned {
            failure.set(e);
        }
        drop(local_tx);
        drop(wanted_tx);
    });
    if let Some(e) = failure.take() {
        return Err(e);
    }
    Ok((digester.finish(), counters))
}

/// The planner: decides every block and folds the source's image digest.
#[allow(clippy::too_many_arguments)]
fn plan(
    layout: &Layout,
    records: impl Iterator<Item = Result<BlockRecord>>,
    current: &mut dyn Iterator<Item = InPlaceRecord>,
    assembly: &Assembly,
    index: &Index,
    local_tx: &Sender<LocalRun>,
    wanted_tx: &Sender<BlockRef>,
    digester: &mut ImageDigester,
    failure: &Failure,
    counters: &Counters,
    progress: Option<&Progress>,
) -> Result<()> {
    let stopped = || Error::Stopped("reconstruction stopped".into());
    let mut run: Option<LocalRun> = None;
    let mut expected = layout.blocks();
    for (block_index, record) in (0u64..).zip(records) {
        if failure.is_set() {
            return Err(stopped());
        }
        let r = record?;
        match expected.next() {
            Some(b) if b.offset == r.offset && b.len == r.len => {}
            other => {
                return Err(Error::Protocol(format!(
                    "source block record {}+{} does not match the layout (expected {other:?})",
                    r.offset, r.len
                )))
            }
        }
        digester.push(&r);
        if let Some(p) = progress {
            p.blocks_planned.fetch_add(1, Ordering::Relaxed);
        }
        // In place: the block the output holds there now.
        let here = if assembly.is_in_place() {
            match current.next() {
                Some(c) if c.record().offset == r.offset && c.record().len == r.len => Some(c),
                _ => {
                    return Err(Error::Stopped(
                        "the output could not be read for comparison".into(),
                    ))
                }
            }
        } else {
            None
        };
        let BlockKind::Data(digest) = r.kind else {
            // Zero blocks are holes in the manifest, and in the output (in
            // place: made so unless they already read as zeros).
            if here.is_some_and(|c| c.record().kind != BlockKind::Zero) {
                assembly.zero(r.offset, r.len)?;
            }
            counters.zero.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some(c) = here {
            if assembly.confirm(block_index, &c, &digest)? {
                counters.unchanged.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let b = BlockRef {
            index: block_index,
            offset: r.offset,
            len: r.len,
            digest,
        };
        match index.lookup(&digest) {
            Some(loc) => {
                if let Some(cur) = run.as_mut() {
                    if cur.extends(&b, loc) {
                        cur.blocks.push(b);
                        continue;
                    }
                }
                if let Some(done) = run.replace(LocalRun {
                    image: loc.image,
                    seed_offset: loc.offset,
                    blocks: vec![b],
                }) {
                    local_tx.send(done).map_err(|_| stopped())?;
                }
            }
            None => wanted_tx.send(b).map_err(|_| stopped())?,
        }
    }
    if let Some(done) = run.take() {
        local_tx.send(done).map_err(|_| stopped())?;
    }
    if expected.next().is_some() {
        return Err(Error::Protocol(
            "the source's block records ended before the image did".into(),
        ));
    }
    Ok(())
}

/// A local copier: reads runs from seeds, has every block checked, writes
/// the ones that match and sends the others to the fetcher.
fn copy_local(
    runs: &Receiver<LocalRun>,
    wanted: &Sender<BlockRef>,
    index: &Index,
    assembly: &Assembly,
    counters: &Counters,
    progress: Option<&Progress>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(MAX_RUN_BYTES as usize);
    let mut zeros = ZeroDigests::default();
    let mut lens = Vec::new();
    let mut expected = Vec::new();
    for run in runs {
        let total = run.bytes();
        buf.resize(total as usize, 0);
        let loc = Location {
            image: run.image,
            offset: run.seed_offset,
        };
        let seed = index.open(run.image).ok();
        let in_seed = seed
            .as_ref()
            .is_some_and(|img| loc.offset.checked_add(total).is_some_and(|e| e <= img.len()));
        lens.clear();
        lens.extend(run.blocks.iter().map(|b| b.len));
        expected.clear();
        expected.extend(run.blocks.iter().map(|b| in_seed.then_some(b.digest)));
        let first = &run.blocks[0];
        // Aligned runs of a raw seed are copied by the kernel (shared
        // extents on XFS and btrfs) and checked where they landed.
        let raw = seed.as_ref().and_then(|s| s.raw_file()).filter(|_| in_seed);
        let cloned = match raw {
            Some(f) => assembly.clone_in(f, loc.offset, first.offset, total)?,
            None => None,
        };
        buf.resize(total as usize, 0);
        // Not cloned: the seed is read here, checked, and what was checked written.
        let readable = cloned.is_some()
            || (in_seed
                && seed
                    .as_ref()
                    .is_some_and(|img| img.read_at(&mut buf, loc.offset).is_ok()));
        if !readable {
            expected.iter_mut().for_each(|e| *e = None);
        }
        let mut check = |data| {
            Checked::each(
                first.index,
                first.offset,
                data,
                &lens,
                Expected::Each(&expected),
                &mut zeros,
            )
        };
        let checked = match cloned {
            Some(cloned) => assembly.check_cloned(cloned, &mut buf, check)?,
            None => {
                let checked = check(&buf);
                checked.runs().iter().try_for_each(|r| assembly.write(r))?;
                checked
            }
        };
        let mut good_bytes = 0u64;
        let mut good_count = 0u64;
        for (b, ok) in run.blocks.iter().zip(checked.good()) {
            if *ok {
                good_bytes += u64::from(b.len);
                good_count += 1;
            } else {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(offset = b.offset, "local block no longer matches; fetching it");
                if wanted.send(*b).is_err() {
                    return Ok(());
                }
            }
        }
        if readable {
            index.note_seed_check(run.image, good_count, run.blocks.len() as u64 - good_count);
        }
        counters.local.fetch_add(good_count, Ordering::Relaxed);
        counters.local_bytes.fetch_add(good_bytes, Ordering::Relaxed);
        if let Some(p) = progress {
            p.bytes_local.fetch_add(good_bytes, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The image digest of a finished image, for comparison with a source's.
pub fn image_digest(image: &dyn Image, layout: &Layout) -> Result<Digest> {
    Ok(hash_image(image, layout, &HashOptions::default(), |_| Ok(()))?.image_digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RawImage;
    use crate::index::IndexOptions;
    use crate::output::temp_path_for;
    use std::fs::{self, File};
    use std::os::unix::fs::FileExt;

    /// Serves blocks from an image, and on its first call damages the
    /// output behind the engine's back, as a failing disk would.
    struct DamagingSource {
        inner: ImageBlockSource,
        damage: Option<PathBuf>,
        calls: usize,
    }

    impl BlockSource for DamagingSource {
        fn name(&self) -> String {
            "damaging".into()
        }

        fn fetch(
            &mut self,
            wanted: Receiver<BlockRef>,
            deliver: &mut dyn FnMut(BlockRef, &[u8]) -> Result<()>,
        ) -> Result<()> {
            self.calls += 1;
            self.inner.fetch(wanted, deliver)?;
            if let Some(path) = self.damage.take() {
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&[0xEE; 100], 4096 * 3 + 17).unwrap();
            }
            Ok(())
        }
    }

    /// Fills `buf` with pseudo-random bytes (xorshift: no dependency).
    fn noise(buf: &mut [u8], seed: &mut u64) {
        for chunk in buf.chunks_mut(8) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
    }

    /// The clone race: a seed rewritten while it is being copied from (a
    /// running VM's disk) must never make a wrong image publish. Checking
    /// the seed and then having the kernel copy its *current* bytes did
    /// (the recorded digests were of bytes that never landed).
    #[test]
    fn a_seed_rewritten_during_the_copy_never_publishes_a_wrong_image() {
        let dir = tempfile::tempdir().unwrap();
        let len = 24usize << 20;
        let mut data = vec![0u8; len];
        noise(&mut data, &mut 0x9E37_79B9_7F4A_7C15);
        let src = dir.path().join("src.raw");
        fs::write(&src, &data).unwrap();
        let seeds = dir.path().join("seeds");
        fs::create_dir(&seeds).unwrap();
        let seed_path = seeds.join("seed.raw");
        let image: Arc<dyn Image> = Arc::new(RawImage::open(&src).unwrap());
        let mut wrong = 0;
        let mut cloned = 0;
        for round in 0..6u64 {
            fs::write(&seed_path, &data).unwrap();
            let index = Index::build(std::slice::from_ref(&seeds), &IndexOptions::default()).unwrap();
            let layout = Layout::flat(image.len(), index.block_size()).unwrap();
            let mut records = Vec::new();
            hash_image(image.as_ref(), &layout, &HashOptions::default(), |r| {
                records.extend_from_slice(r);
                Ok(())
            })
            .unwrap();
            let stop = AtomicBool::new(false);
            let dst = dir.path().join(format!("out{round}.raw"));
            let report = thread::scope(|s| {
                s.spawn(|| {
                    let f = fs::OpenOptions::new().write(true).open(&seed_path).unwrap();
                    let mut x = round + 1;
                    let mut chunk = vec![0u8; 64 << 10];
                    while !stop.load(Ordering::Relaxed) {
                        noise(&mut chunk, &mut x);
                        let at = (x % (len as u64 / 4096)) * 4096;
                        let at = at.min((len - chunk.len()) as u64);
                        f.write_all_at(&chunk, at).unwrap();
                    }
                });
                let mut source = ImageBlockSource::new(Arc::clone(&image));
                let report = reconstruct(
                    &layout,
                    records.into_iter().map(Ok),
                    &index,
                    &mut source,
                    &dst,
                    &ReconstructOptions::default(),
                    None,
                );
                stop.store(true, Ordering::Relaxed);
                report
            });
            // A rewritten seed costs fetches, never correctness.
            let report = report.unwrap();
            cloned += report.bytes_cloned;
            if fs::read(&dst).unwrap() != data {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 0, "wrong images published (bytes cloned: {cloned})");
    }

    #[test]
    fn damaged_output_is_repaired_before_publishing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let f = File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        // Data, then a long zero run (a hole in the manifest), then data.
        f.write_all_at(&vec![0x5A; 64 << 10], 0).unwrap();
        f.write_all_at(&vec![0xA5; 64 << 10], 7 << 20).unwrap();
        drop(f);
        let seeds = dir.path().join("seeds");
        fs::create_dir(&seeds).unwrap();
        let index = Index::build(&[seeds], &IndexOptions::default()).unwrap();
        let image: Arc<dyn Image> = Arc::new(RawImage::open(&src).unwrap());
        let layout = Layout::flat(image.len(), 4096).unwrap();
        let mut records = Vec::new();
        hash_image(image.as_ref(), &layout, &HashOptions::default(), |r| {
            records.extend_from_slice(r);
            Ok(())
        })
        .unwrap();
        let dst = dir.path().join("out.img");
        let mut source = DamagingSource {
            inner: ImageBlockSource::new(Arc::clone(&image)),
            damage: Some(temp_path_for(&dst)),
            calls: 0,
        };
        let report = reconstruct(
            &layout,
            records.into_iter().map(Ok),
            &index,
            &mut source,
            &dst,
            &ReconstructOptions {
                verify_readback: true,
                ..ReconstructOptions::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(report.blocks_repaired, 1);
        assert_eq!(source.calls, 2);
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert!(!temp_path_for(&dst).exists());
    }
}
