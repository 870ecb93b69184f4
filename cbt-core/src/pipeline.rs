//! The hashing pipeline: named stages joined by bounded channels.
//!
//! ```text
//! planner ──batches──▶ reader+hasher × N ──hashed batches──▶ in-order output (caller's thread)
//!                            ▲                                        │
//!                            └────────── free buffers (bounded pool) ◀┘
//! ```
//!
//! The planner walks the layout in batches of contiguous blocks and asks
//! the image which parts hold data; blocks in holes are zero without a
//! read. Each worker takes a buffer from the pool, then a batch, reads the
//! batch's data and hashes it on the same core (one copy out of the page
//! cache, no hand-off of the data between cores), recognising all-zero
//! blocks without hashing them. The output stage restores disk order and
//! hands each batch of [`BlockRecord`]s to the caller. Memory is bounded by
//! the buffer pool, whatever the image size; a worker takes its buffer
//! before its batch, so the batch the output waits for always has one.

use std::collections::{BTreeMap, HashMap};
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::digest::{digests_of, is_zero, Digest};
use crate::error::{Error, Result};
use crate::image::{Extent, ExtentScope, Image};
use crate::layout::{BlockSpan, Layout};

/// Bytes per batch handed from the reader to a hasher.
const BATCH_BYTES: usize = 1 << 20;
/// The reader asks the image for its allocation this many bytes at a time.
const EXTENT_WINDOW: u64 = 1 << 30;

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Every byte is zero.
    Zero,
    /// Anything else, with the BLAKE3 digest of its content.
    Data(Digest),
}

/// One block of an image and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRecord {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Zero or the digest.
    pub kind: BlockKind,
}

impl BlockRecord {
    /// The block's digest, computing the zero digest for zero blocks.
    pub fn digest(&self, zeros: &mut ZeroDigests) -> Digest {
        match self.kind {
            BlockKind::Data(d) => d,
            BlockKind::Zero => zeros.get(self.len),
        }
    }
}

/// Memoised digests of all-zero blocks by length.
#[derive(Debug, Default)]
pub struct ZeroDigests(HashMap<u32, Digest>);

impl ZeroDigests {
    /// The digest of `len` zero bytes.
    pub fn get(&mut self, len: u32) -> Digest {
        *self
            .0
            .entry(len)
            .or_insert_with(|| Digest::of_zeros(len as usize))
    }
}

/// A digest of a whole image's content: BLAKE3 over the image length, the
/// block size and every block's digest in order. Two images with the same
/// layout have the same image digest exactly when their bytes are equal
/// (up to BLAKE3 collisions).
#[derive(Debug)]
pub struct ImageDigester {
    hasher: blake3::Hasher,
    zeros: ZeroDigests,
}

impl ImageDigester {
    /// Starts the digest of an image with this layout.
    pub fn new(layout: &Layout) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"cbt image digest v1");
        hasher.update(&layout.len().to_le_bytes());
        hasher.update(&layout.block_size().to_le_bytes());
        ImageDigester {
            hasher,
            zeros: ZeroDigests::default(),
        }
    }

    /// Adds the next block, in disk order.
    pub fn push(&mut self, record: &BlockRecord) {
        let d = record.digest(&mut self.zeros);
        self.hasher.update(&d.0);
    }

    /// The digest of the whole image.
    pub fn finish(&self) -> Digest {
        Digest(*self.hasher.finalize().as_bytes())
    }
}

/// Tuning of the pipeline.
#[derive(Debug, Clone)]
pub struct HashOptions {
    /// Hasher threads; 0 means one per core.
    pub threads: usize,
    /// Which allocations of the image to read (see [`ExtentScope`]).
    pub scope: ExtentScope,
}

impl Default for HashOptions {
    fn default() -> Self {
        HashOptions {
            threads: 0,
            scope: ExtentScope::All,
        }
    }
}

impl HashOptions {
    fn hasher_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Totals of one pipeline run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSummary {
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks found to be all zero.
    pub zero_blocks: u64,
    /// Blocks never read because the image reported no data there.
    pub skipped_blocks: u64,
    /// Bytes actually read from the image.
    pub bytes_read: u64,
    /// Digest of the whole image (see [`ImageDigester`]).
    pub image_digest: Digest,
}

/// A batch on its way through the pipeline.
struct Batch {
    seq: u64,
    blocks: Vec<BlockSpan>,
    /// Per block: whether it must be read (false: in a hole, known zero).
    read: Vec<bool>,
    /// The byte range covering the blocks to read, if any.
    span: Option<(u64, usize)>,
}

struct Hashed {
    seq: u64,
    records: Vec<BlockRecord>,
    buf: Vec<u8>,
}

/// Hashes every block of `image` cut by `layout`, calling `sink` with the
/// records in disk order, batch by batch. Stops at the first error (the
/// image's or the sink's).
pub fn hash_image(
    image: &dyn Image,
    layout: &Layout,
    options: &HashOptions,
    mut sink: impl FnMut(&[BlockRecord]) -> Result<()>,
) -> Result<HashSummary> {
    if layout.len() != image.len() {
        return Err(Error::Config(format!(
            "{}: layout is for {} bytes, image has {}",
            image.label(),
            layout.len(),
            image.len()
        )));
    }
    let hashers = options.hasher_threads();
    // Two buffers per hasher keep every stage busy; the pool bounds memory.
    let pool_size = hashers * 2 + 2;
    let (to_hash_tx, to_hash_rx) = bounded::<Batch>(pool_size);
    let (hashed_tx, hashed_rx) = bounded::<Result<Hashed>>(pool_size);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(pool_size);
    for _ in 0..pool_size {
        let _ = free_tx.send(Vec::with_capacity(BATCH_BYTES));
    }

    let bytes_read = std::sync::atomic::AtomicU64::new(0);
    let mut digester = ImageDigester::new(layout);
    let mut summary = HashSummary {
        blocks: 0,
        zero_blocks: 0,
        skipped_blocks: 0,
        bytes_read: 0,
        image_digest: Digest([0; 32]),
    };

    thread::scope(|s| -> Result<()> {
        let planner_errors = hashed_tx.clone();
        let planner = thread::Builder::new()
            .name("cbt-planner".into())
            .spawn_scoped(s, move || {
                match plan_stage(image, layout, options.scope, &to_hash_tx) {
                    Ok(skipped) => skipped,
                    Err(e) => {
                        let _ = planner_errors.send(Err(e));
                        0
                    }
                }
            })
            .map_err(|e| Error::io(image.path(), "spawn planner thread", e))?;
        for i in 0..hashers {
            let rx = to_hash_rx.clone();
            let tx = hashed_tx.clone();
            let free = free_rx.clone();
            let bytes_read = &bytes_read;
            thread::Builder::new()
                .name(format!("cbt-hasher-{i}"))
                .spawn_scoped(s, move || hash_stage(image, &free, &rx, &tx, bytes_read))
                .map_err(|e| Error::io(image.path(), "spawn hasher thread", e))?;
        }
        drop(free_rx);
        drop(to_hash_rx);
        drop(hashed_tx);

        // In-order output on this thread.
        let mut pending: BTreeMap<u64, Hashed> = BTreeMap::new();
        let mut next = 0u64;
        let result = (|| -> Result<()> {
            for item in &hashed_rx {
                let h = item?;
                pending.insert(h.seq, h);
                while let Some(h) = pending.remove(&next) {
                    for r in &h.records {
                        digester.push(r);
                        summary.blocks += 1;
                        if r.kind == BlockKind::Zero {
                            summary.zero_blocks += 1;
                        }
                    }
                    sink(&h.records)?;
                    let _ = free_tx.send(h.buf);
                    next += 1;
                }
            }
            Ok(())
        })();
        // On error, dropping the receivers makes every stage stop at its next send.
        drop(hashed_rx);
        drop(free_tx);
        summary.skipped_blocks = planner.join().unwrap_or(0);
        summary.bytes_read = bytes_read.load(std::sync::atomic::Ordering::Relaxed);
        result
    })?;

    if summary.blocks != layout.block_count() {
        return Err(Error::Config(format!(
            "{}: pipeline produced {} of {} blocks",
            image.label(),
            summary.blocks,
            layout.block_count()
        )));
    }
    summary.image_digest = digester.finish();
    Ok(summary)
}

/// The planner: groups blocks into batches and marks the ones that may
/// hold data. Returns the number of blocks skipped as holes.
fn plan_stage(image: &dyn Image, layout: &Layout, scope: ExtentScope, out: &Sender<Batch>) -> Result<u64> {
    let mut skipped = 0u64;
    let mut extents = ExtentCursor::new(image, scope);
    let mut seq = 0u64;
    let mut blocks = layout.blocks().peekable();
    while blocks.peek().is_some() {
        let mut batch_blocks = Vec::with_capacity(BATCH_BYTES / layout.block_size() as usize + 2);
        let mut bytes = 0usize;
        while let Some(b) = blocks.peek() {
            if bytes + b.len as usize > BATCH_BYTES && !batch_blocks.is_empty() {
                break;
            }
            bytes += b.len as usize;
            batch_blocks.push(*b);
            blocks.next();
        }
        let mut read = Vec::with_capacity(batch_blocks.len());
        for b in &batch_blocks {
            read.push(extents.has_data(b.offset, b.offset + u64::from(b.len))?);
        }
        skipped += read.iter().filter(|&&r| !r).count() as u64;
        let span = match (read.iter().position(|&r| r), read.iter().rposition(|&r| r)) {
            (Some(f), Some(l)) => {
                let start = batch_blocks[f].offset;
                let end = batch_blocks[l].offset + u64::from(batch_blocks[l].len);
                Some((start, (end - start) as usize))
            }
            _ => None,
        };
        if out
            .send(Batch {
                seq,
                blocks: batch_blocks,
                read,
                span,
            })
            .is_err()
        {
            break;
        }
        seq += 1;
    }
    Ok(skipped)
}

/// A worker: takes a buffer, then a batch; reads the batch's data and
/// turns it into records.
fn hash_stage(
    image: &dyn Image,
    free: &Receiver<Vec<u8>>,
    input: &Receiver<Batch>,
    output: &Sender<Result<Hashed>>,
    bytes_read: &std::sync::atomic::AtomicU64,
) {
    loop {
        let Ok(mut buf) = free.recv() else { return };
        let Ok(batch) = input.recv() else { return };
        buf.clear();
        let mut buf_offset = 0;
        if let Some((start, len)) = batch.span {
            buf.resize(len, 0);
            if let Err(e) = image.read_at(&mut buf, start) {
                let _ = output.send(Err(e));
                return;
            }
            buf_offset = start;
            bytes_read.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // Zero blocks skip hashing; the others are hashed in SIMD batches.
        let data: Vec<Option<&[u8]>> = batch
            .blocks
            .iter()
            .zip(&batch.read)
            .map(|(b, &was_read)| {
                let start = (b.offset.wrapping_sub(buf_offset)) as usize;
                let data = was_read.then(|| &buf[start..start + b.len as usize]);
                data.filter(|d| !is_zero(d))
            })
            .collect();
        let nonzero: Vec<&[u8]> = data.iter().flatten().copied().collect();
        let mut digests = Vec::with_capacity(nonzero.len());
        digests_of(&nonzero, &mut digests);
        let mut digests = digests.into_iter();
        let records = batch
            .blocks
            .iter()
            .zip(&data)
            .map(|(b, d)| BlockRecord {
                offset: b.offset,
                len: b.len,
                kind: match (d, d.is_some().then(|| digests.next()).flatten()) {
                    (Some(_), Some(digest)) => BlockKind::Data(digest),
                    _ => BlockKind::Zero,
                },
            })
            .collect();
        if output
            .send(Ok(Hashed {
                seq: batch.seq,
                records,
                buf,
            }))
            .is_err()
        {
            return;
        }
    }
}

/// Answers "does `[start, end)` overlap data?" for increasing offsets,
/// fetching the image's allocation one window at a time.
struct ExtentCursor<'a> {
    image: &'a dyn Image,
    scope: ExtentScope,
    window_end: u64,
    extents: Vec<Extent>,
    at: usize,
}

impl<'a> ExtentCursor<'a> {
    fn new(image: &'a dyn Image, scope: ExtentScope) -> Self {
        ExtentCursor {
            image,
            scope,
            window_end: 0,
            extents: Vec::new(),
            at: 0,
        }
    }

    fn has_data(&mut self, start: u64, end: u64) -> Result<bool> {
        while end > self.window_end {
            // Keep the extents that still reach into the next window.
            let from = self.window_end;
            let to = from.saturating_add(EXTENT_WINDOW).min(self.image.len()).max(end);
            let mut next: Vec<Extent> = self.extents.drain(self.at..).filter(|e| e.end > start).collect();
            next.extend(self.image.data_extents(from, to, self.scope)?);
            self.extents = next;
            self.at = 0;
            self.window_end = to;
        }
        while self.at < self.extents.len() && self.extents[self.at].end <= start {
            self.at += 1;
        }
        Ok(self.at < self.extents.len() && self.extents[self.at].start < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RawImage;
    use std::os::unix::fs::FileExt;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn records_match_direct_hashing_for_any_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        let f = std::fs::File::create(&path).unwrap();
        let len = (5 << 20) + 1234;
        f.set_len(len).unwrap();
        f.write_all_at(&pseudo_random(3 << 20, 1), 4096 * 3).unwrap();
        f.write_all_at(&[0u8; 8192], 4096 * 10).unwrap();
        f.write_all_at(&pseudo_random(5000, 2), len - 5000).unwrap();
        drop(f);
        let img = RawImage::open(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        let layout = Layout::flat(len, 4096).unwrap();
        let mut first_digest = None;
        for threads in [1, 2, 5] {
            let mut got = Vec::new();
            let opts = HashOptions {
                threads,
                ..Default::default()
            };
            let summary = hash_image(&img, &layout, &opts, |r| {
                got.extend_from_slice(r);
                Ok(())
            })
            .unwrap();
            assert_eq!(got.len() as u64, layout.block_count());
            for (r, b) in got.iter().zip(layout.blocks()) {
                assert_eq!((r.offset, r.len), (b.offset, b.len));
                let content = &data[b.offset as usize..(b.offset + u64::from(b.len)) as usize];
                let want = if is_zero(content) {
                    BlockKind::Zero
                } else {
                    BlockKind::Data(Digest::of(content))
                };
                assert_eq!(r.kind, want, "block at {}", r.offset);
            }
            assert_eq!(
                *first_digest.get_or_insert(summary.image_digest),
                summary.image_digest
            );
            assert!(summary.bytes_read < len, "holes were read");
        }
    }

    #[test]
    fn sink_error_stops_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        std::fs::write(&path, pseudo_random(8 << 20, 3)).unwrap();
        let img = RawImage::open(&path).unwrap();
        let layout = Layout::flat(8 << 20, 4096).unwrap();
        let mut calls = 0;
        let err = hash_image(&img, &layout, &HashOptions::default(), |_| {
            calls += 1;
            if calls == 2 {
                Err(Error::Config("stop".into()))
            } else {
                Ok(())
            }
        });
        assert!(err.is_err());
        assert_eq!(calls, 2);
    }
}
