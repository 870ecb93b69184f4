//! The destination index: every block of every image, backing file and
//! internal snapshot under the given roots, mapped from its digest to a
//! place where it can be read.
//!
//! Memory: entries are 16 bytes (an 8-byte digest prefix and a packed
//! location) kept in 4096 sorted shards, so the index costs about 16 bytes
//! per unique block. The 8-byte key can collide, which is harmless: every
//! block read through the index is re-hashed in full and used only if it
//! matches ([`Index::read_verified`]).

mod cache;
mod discover;
mod seeds;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{open_image, Backing, ExtentScope, Image, ImageSpec};
use crate::layout::{check_block_size, Layout, DEFAULT_BLOCK_SIZE};
use crate::pipeline::{hash_image, BlockKind, HashOptions};

use cache::{DigestCache, FileStamp, ImageDigests};
use discover::{discover, Candidate};
pub use seeds::{PreparedSeeds, SeedProvider};

/// The images (and internal snapshots) an index of `roots` would hold,
/// found as [`Index::build`] finds them (raw files by
/// `options.raw_extensions`, qcow2 by magic, backing files included).
pub fn discover_images(roots: &[PathBuf], options: &IndexOptions) -> Result<Vec<ImageSpec>> {
    Ok(discover::discover(
        roots,
        &[],
        &options.raw_extensions,
        &options.exclude,
        &options.backing,
    )?
    .into_iter()
    .map(|c| c.spec)
    .collect())
}

const SHARD_BITS: u32 = 12;
const SHARDS: usize = 1 << SHARD_BITS;
const IMAGE_BITS: u32 = 20;
const OFFSET_BITS: u32 = 64 - IMAGE_BITS;
/// Locations are stored in 512-byte units (every block starts on a sector).
const SECTOR: u64 = 512;

/// How to build an index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Block size; must match the block size of the images to be reconstructed.
    pub block_size: u32,
    /// File extensions recognised as raw images when walking directories.
    pub raw_extensions: Vec<String>,
    /// Directory of the persistent digest cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Hasher threads per image (0: one per core).
    pub threads: usize,
    /// Canonical paths never to index (e.g. the image being copied).
    pub exclude: Vec<PathBuf>,
    /// Extra seed sources (package caches, ...), prepared when the index
    /// is built and indexed as raw images along with the roots.
    pub extra_seeds: Vec<Arc<dyn SeedProvider>>,
    /// Stop building (with [`Error::Stopped`]) once this becomes true: the
    /// receiver sets it the moment its peer goes away.
    pub stop: Option<Arc<AtomicBool>>,
    /// Where seeds and their backing files may be: a daemon confines them
    /// to its roots.
    pub backing: Backing,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            raw_extensions: ["img", "raw", "bin", "iso"].map(String::from).to_vec(),
            cache_dir: None,
            threads: 0,
            exclude: Vec::new(),
            extra_seeds: Vec::new(),
            stop: None,
            backing: Backing::Anywhere,
        }
    }
}

impl IndexOptions {
    fn check_stop(&self) -> Result<()> {
        match &self.stop {
            Some(s) if s.load(Ordering::Relaxed) => Err(Error::Stopped("index build stopped".into())),
            _ => Ok(()),
        }
    }
}

/// Where a block can be read: an image of the index and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position of the image in [`Index::images`].
    pub image: u32,
    /// Byte offset in that image.
    pub offset: u64,
}

impl Location {
    fn pack(self) -> u64 {
        (u64::from(self.image) << OFFSET_BITS) | (self.offset / SECTOR)
    }

    fn unpack(v: u64) -> Self {
        Location {
            image: (v >> OFFSET_BITS) as u32,
            offset: (v & ((1 << OFFSET_BITS) - 1)) * SECTOR,
        }
    }
}

/// One indexed image view and its block counts.
#[derive(Debug, Clone, Serialize)]
pub struct IndexedImage {
    /// The image (and snapshot).
    pub spec: ImageSpec,
    /// Virtual size.
    pub len: u64,
    /// Blocks in the image (or, for a layer over a backing file, in its own data).
    pub blocks: u64,
    /// Blocks that are all zero.
    pub zero_blocks: u64,
    /// Non-zero blocks.
    pub data_blocks: u64,
    /// True if its digests came from the cache without reading the image.
    pub from_cache: bool,
    /// True if only the image's own layer was indexed (its backing file is indexed separately).
    pub top_layer_only: bool,
}

/// Totals of an index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    /// Image views indexed (images, backing files, snapshots).
    pub images: usize,
    /// Blocks seen in all images.
    pub blocks: u64,
    /// Zero blocks among them.
    pub zero_blocks: u64,
    /// Distinct non-zero block contents (by 8-byte digest prefix).
    pub unique_blocks: u64,
    /// Bytes of RAM the index holds.
    pub memory_bytes: u64,
    /// Image views whose digests came from the cache.
    pub from_cache: usize,
    /// Bytes read from images to hash them (0 when everything was cached).
    pub bytes_hashed: u64,
}

/// One image's result: its description, bytes hashed, and (if kept) its sorted keys.
type Indexed = (IndexedImage, u64, Option<Vec<u64>>);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    key: u64,
    location: u64,
}

/// Shards under construction: appended to, compacted when they double.
struct ShardBuilder {
    entries: Vec<Entry>,
    compacted_len: usize,
}

impl ShardBuilder {
    fn compact(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.key);
        self.entries.dedup_by_key(|e| e.key);
        self.compacted_len = self.entries.len();
    }
}

/// The destination index. Cheap to share between threads.
pub struct Index {
    block_size: u32,
    images: Vec<IndexedImage>,
    handles: Vec<OnceLock<std::result::Result<Arc<dyn Image>, String>>>,
    shards: Vec<Box<[Entry]>>,
    stats: IndexStats,
    /// Per image: its digests, kept only when asked for (estimates).
    per_image: Option<Vec<Vec<u64>>>,
    /// The prepared extra seeds, indexed as raw images; kept alive while
    /// their files may be read.
    extra_seeds: Vec<Box<dyn PreparedSeeds>>,
    /// Per image: blocks re-read from it that matched or did not match.
    checks: Vec<SeedChecks>,
    /// Per image: its digest cache identity, when its digests are cached.
    identities: Vec<Option<String>>,
    cache: Option<DigestCache>,
}

/// Re-read blocks of one seed that matched their indexed digest, and not.
#[derive(Debug, Default)]
struct SeedChecks {
    good: AtomicU64,
    bad: AtomicU64,
    /// Blocks of it written to an output (see [`Index::note_supplied`]).
    supplied: AtomicU64,
}

/// A seed whose re-read blocks mismatch this often changed under its
/// stamp (rewritten in place with `touch -r`, a block device): its cached
/// digests are dropped so the next index build hashes it again.
const STALE_SEED_MIN_BAD: u64 = 16;
/// ... when more than 1 in this many re-read blocks mismatched.
const STALE_SEED_ONE_IN: u64 = 20;

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("stats", &self.stats).finish()
    }
}

impl Index {
    /// Builds (or refreshes from the cache) the index of everything under `roots`.
    pub fn build(roots: &[PathBuf], options: &IndexOptions) -> Result<Index> {
        Self::build_inner(roots, options, false)
    }

    /// Like [`Index::build`], also keeping each image's digest set so
    /// [`Index::image_keys`] can answer per-candidate questions.
    pub fn build_with_per_image(roots: &[PathBuf], options: &IndexOptions) -> Result<Index> {
        Self::build_inner(roots, options, true)
    }

    fn build_inner(roots: &[PathBuf], options: &IndexOptions, keep_per_image: bool) -> Result<Index> {
        check_block_size(options.block_size)?;
        let extra_seeds = options
            .extra_seeds
            .iter()
            .map(|p| p.prepare(options.block_size, options.cache_dir.as_deref(), options.threads))
            .collect::<Result<Vec<_>>>()?;
        let extra_roots: Vec<PathBuf> = extra_seeds.iter().flat_map(|s| s.roots()).collect();
        let candidates = discover(
            roots,
            &extra_roots,
            &options.raw_extensions,
            &options.exclude,
            &options.backing,
        )?;
        if candidates.len() >= 1 << IMAGE_BITS {
            return Err(Error::Config(format!(
                "too many images to index ({})",
                candidates.len()
            )));
        }
        let cache = options.cache_dir.clone().map(DigestCache::new);
        let shards: Vec<Mutex<ShardBuilder>> = (0..SHARDS)
            .map(|_| {
                Mutex::new(ShardBuilder {
                    entries: Vec::new(),
                    compacted_len: 0,
                })
            })
            .collect();
        let results: Vec<Mutex<Option<Indexed>>> = candidates.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        // Two images at a time: one hashing while the other waits on I/O; each
        // image's own pipeline already uses every core.
        let workers = candidates.len().clamp(1, 2);
        thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = candidates.get(i) else { break };
                    if options.check_stop().is_err() {
                        break;
                    }
                    match digests_for(c, options, cache.as_ref()) {
                        Ok((digests, from_cache, hashed)) => {
                            insert(&shards, i as u32, &digests);
                            let keys = keep_per_image.then(|| {
                                let mut k: Vec<u64> = digests.entries.iter().map(|e| e.0).collect();
                                k.sort_unstable();
                                k.dedup();
                                k
                            });
                            let img = IndexedImage {
                                spec: c.spec.clone(),
                                len: digests.len,
                                blocks: digests.total_blocks,
                                zero_blocks: digests.zero_blocks,
                                data_blocks: digests.entries.len() as u64,
                                from_cache,
                                top_layer_only: c.scope == ExtentScope::TopLayer,
                            };
                            if let Ok(mut slot) = results[i].lock() {
                                *slot = Some((img, hashed, keys));
                            }
                        }
                        Err(e) => tracing::warn!("not indexing {}: {e}", c.spec),
                    }
                });
            }
        });

        options.check_stop()?;
        // Keep the images that indexed; renumber is unnecessary because
        // failed images simply have no entries pointing at them.
        let mut images = Vec::with_capacity(candidates.len());
        let mut per_image = keep_per_image.then(Vec::new);
        let mut bytes_hashed = 0;
        let mut ok = Vec::with_capacity(candidates.len());
        for (c, r) in candidates.iter().zip(results) {
            let r = r.into_inner().ok().flatten();
            ok.push(r.is_some());
            match r {
                Some((img, hashed, keys)) => {
                    bytes_hashed += hashed;
                    images.push(img);
                    if let (Some(p), Some(k)) = (per_image.as_mut(), keys) {
                        p.push(k);
                    }
                }
                None => {
                    images.push(IndexedImage {
                        spec: c.spec.clone(),
                        len: 0,
                        blocks: 0,
                        zero_blocks: 0,
                        data_blocks: 0,
                        from_cache: false,
                        top_layer_only: false,
                    });
                    if let Some(p) = per_image.as_mut() {
                        p.push(Vec::new());
                    }
                }
            }
        }
        let shards = finish_shards(shards);
        let unique_blocks: u64 = shards.iter().map(|s| s.len() as u64).sum();
        let memory_bytes = unique_blocks * std::mem::size_of::<Entry>() as u64
            + (SHARDS * std::mem::size_of::<Box<[Entry]>>()) as u64
            + images.len() as u64 * 256;
        let stats = IndexStats {
            images: ok.iter().filter(|&&b| b).count(),
            blocks: images.iter().map(|i| i.blocks).sum(),
            zero_blocks: images.iter().map(|i| i.zero_blocks).sum(),
            unique_blocks,
            memory_bytes,
            from_cache: images.iter().filter(|i| i.from_cache).count(),
            bytes_hashed,
        };
        let handles = images.iter().map(|_| OnceLock::new()).collect();
        let checks = images.iter().map(|_| SeedChecks::default()).collect();
        let identities = candidates
            .iter()
            .map(|c| {
                let cached = cache.is_some() && c.spec.path.metadata().is_ok_and(|m| m.is_file());
                cached.then(|| cache_identity(c, &c.spec.path, options.block_size))
            })
            .collect();
        Ok(Index {
            checks,
            identities,
            cache,
            block_size: options.block_size,
            images,
            handles,
            shards,
            stats,
            per_image,
            extra_seeds,
        })
    }

    /// Block size of the index.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The indexed image views, in a stable order ([`Location::image`] indexes this).
    pub fn images(&self) -> &[IndexedImage] {
        &self.images
    }

    /// Totals.
    pub fn stats(&self) -> &IndexStats {
        &self.stats
    }

    /// The extra seeds prepared for this index, one per
    /// [`IndexOptions::extra_seeds`] entry, in the same order.
    pub fn extra_seeds(&self) -> &[Box<dyn PreparedSeeds>] {
        &self.extra_seeds
    }

    /// Where a block with this digest can be read, if any image holds one
    /// whose digest starts the same way. Confirm with [`Index::read_verified`].
    pub fn lookup(&self, digest: &Digest) -> Option<Location> {
        self.lookup_key(digest.short())
    }

    /// Where a block whose digest has this short key ([`Digest::short`])
    /// can be read, if any. Only a full hash of what is read there (checked
    /// against a full digest or a group digest) proves it is the block.
    pub fn lookup_key(&self, key: u64) -> Option<Location> {
        let shard = &self.shards[(key >> (64 - SHARD_BITS)) as usize];
        shard
            .binary_search_by_key(&key, |e| e.key)
            .ok()
            .map(|i| Location::unpack(shard[i].location))
    }

    /// Sorted short digests of image `i`'s non-zero blocks (only for an index
    /// built with [`Index::build_with_per_image`]).
    pub fn image_keys(&self, i: usize) -> Option<&[u64]> {
        self.per_image
            .as_ref()
            .and_then(|p| p.get(i))
            .map(|v| v.as_slice())
    }

    /// Opens (once) and returns image `i`.
    pub fn open(&self, i: u32) -> Result<Arc<dyn Image>> {
        let idx = i as usize;
        let Some(slot) = self.handles.get(idx) else {
            return Err(Error::Internal(format!("no image {i} in the index")));
        };
        slot.get_or_init(|| open_image(&self.images[idx].spec).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| Error::malformed(&self.images[idx].spec.path, reason))
    }

    /// Reads the block at `location` into `buf` (its length is the block's)
    /// and returns true only if its content hashes to `expected`. An image
    /// that changed since it was indexed, or a short-key collision, yields false.
    pub fn read_verified(&self, location: Location, buf: &mut [u8], expected: &Digest) -> Result<bool> {
        let image = self.open(location.image)?;
        if location
            .offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > image.len())
        {
            return Ok(false);
        }
        image.read_at(buf, location.offset)?;
        let ok = Digest::of(buf) == *expected;
        self.note_seed_check(location.image, u64::from(ok), u64::from(!ok));
        Ok(ok)
    }

    /// Records that `blocks` blocks of image `i` went into an output
    /// (checked and written): what each seed supplied, for reports.
    /// Numbers outside the index (an output read in place) are ignored.
    pub fn note_supplied(&self, i: u32, blocks: u64) {
        if let Some(c) = self.checks.get(i as usize) {
            c.supplied.fetch_add(blocks, Ordering::Relaxed);
        }
    }

    /// Per image, in the order of [`Index::images`]: the blocks recorded
    /// by [`Index::note_supplied`].
    pub fn blocks_supplied(&self) -> Vec<u64> {
        self.checks
            .iter()
            .map(|c| c.supplied.load(Ordering::Relaxed))
            .collect()
    }

    /// Records that `good` blocks re-read from image `i` matched their
    /// digests and `bad` did not (callers that read seeds themselves).
    pub fn note_seed_check(&self, i: u32, good: u64, bad: u64) {
        if let Some(c) = self.checks.get(i as usize) {
            c.good.fetch_add(good, Ordering::Relaxed);
            c.bad.fetch_add(bad, Ordering::Relaxed);
        }
    }

    /// Drops the cached digests of every seed whose re-read blocks often
    /// failed to match (it changed without its size, mtime or inode
    /// changing), so the next run hashes it again; says so at info level.
    /// Returns those seeds. Call at the end of a run.
    pub fn refresh_changed_seeds(&self) -> Vec<ImageSpec> {
        let mut refreshed = Vec::new();
        for (i, c) in self.checks.iter().enumerate() {
            let (good, bad) = (c.good.load(Ordering::Relaxed), c.bad.load(Ordering::Relaxed));
            if bad < STALE_SEED_MIN_BAD || bad * STALE_SEED_ONE_IN <= good + bad {
                continue;
            }
            let spec = &self.images[i].spec;
            let (Some(cache), Some(identity)) = (&self.cache, &self.identities[i]) else {
                tracing::info!(
                    "{spec}: {bad} of {} blocks read from this seed no longer match its digests",
                    good + bad
                );
                continue;
            };
            match cache.forget(identity) {
                Ok(()) => tracing::info!(
                    "{spec}: {bad} of {} blocks read from this seed no longer match its cached digests \
                     (changed without a new mtime?); it will be hashed again on the next run",
                    good + bad
                ),
                Err(e) => tracing::warn!("{spec}: cannot drop its stale cached digests: {e}"),
            }
            refreshed.push(spec.clone());
        }
        refreshed
    }
}

/// The identity of an image view in the cache.
fn cache_identity(c: &Candidate, canonical: &Path, block_size: u32) -> String {
    format!(
        "{}\0{}\0{:?}\0{}",
        canonical.display(),
        c.spec.snapshot.as_deref().unwrap_or(""),
        c.scope,
        block_size
    )
}

/// The digests of one candidate: from the cache when its file is
/// unchanged, otherwise by hashing it (and storing the result).
/// Returns the digests, whether they came from the cache and the bytes read.
fn digests_for(
    c: &Candidate,
    options: &IndexOptions,
    cache: Option<&DigestCache>,
) -> Result<(ImageDigests, bool, u64)> {
    let stamp = FileStamp::of(&c.spec.path)?;
    let identity = cache_identity(c, &c.spec.path, options.block_size);
    // A block device's size and mtime say nothing about its content: never cache it.
    let is_file = std::fs::metadata(&c.spec.path).is_ok_and(|m| m.is_file());
    let cache = cache.filter(|_| is_file);
    if let Some(cache) = cache {
        if let Some(d) = cache.load(&identity, &stamp, options.block_size) {
            return Ok((d, true, 0));
        }
    }
    let image = open_image(&c.spec)?;
    let layout = Layout::detect(image.as_ref(), options.block_size)?;
    let mut entries = Vec::new();
    let hash_opts = HashOptions {
        threads: options.threads,
        scope: c.scope,
    };
    let mut skipped_as_hole = 0u64;
    let summary = hash_image(image.as_ref(), &layout, &hash_opts, |records| {
        options.check_stop()?;
        for r in records {
            match r.kind {
                BlockKind::Data(d) if r.offset % SECTOR == 0 && r.offset >> OFFSET_BITS == 0 => {
                    entries.push((d.short(), r.offset))
                }
                BlockKind::Data(_) => {}
                BlockKind::Zero => skipped_as_hole += 1,
            }
        }
        Ok(())
    })?;
    let digests = ImageDigests {
        len: image.len(),
        total_blocks: summary.blocks,
        zero_blocks: summary.zero_blocks,
        entries,
    };
    if let Some(cache) = cache {
        // The image must not have changed while we read it.
        if FileStamp::of(&c.spec.path)? == stamp {
            if let Err(e) = cache.store(&identity, &stamp, options.block_size, &digests) {
                tracing::warn!("cannot cache digests of {}: {e}", c.spec);
            }
        }
    }
    Ok((digests, false, summary.bytes_read))
}

/// Sorts and deduplicates every shard, a few threads each taking a share.
fn finish_shards(shards: Vec<Mutex<ShardBuilder>>) -> Vec<Box<[Entry]>> {
    let workers = thread::available_parallelism().map_or(1, |n| n.get());
    let mut slots: Vec<Mutex<Option<ShardBuilder>>> = shards
        .into_iter()
        .map(|m| Mutex::new(Some(m.into_inner().unwrap_or_else(|p| p.into_inner()))))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { break };
                if let Ok(mut guard) = slot.lock() {
                    if let Some(b) = guard.as_mut() {
                        b.compact();
                    }
                }
            });
        }
    });
    slots
        .iter_mut()
        .map(|slot| {
            let b = slot.get_mut().ok().and_then(|b| b.take());
            b.map(|b| b.entries.into_boxed_slice()).unwrap_or_default()
        })
        .collect()
}

/// Adds an image's entries to the shards, compacting a shard whenever it
/// has doubled since its last compaction (bounds memory during the build).
fn insert(shards: &[Mutex<ShardBuilder>], image: u32, d: &ImageDigests) {
    let mut sorted: Vec<Entry> = d
        .entries
        .iter()
        .map(|&(key, offset)| Entry {
            key,
            location: Location { image, offset }.pack(),
        })
        .collect();
    sorted.sort_unstable_by_key(|e| e.key);
    for group in sorted.chunk_by(|a, b| a.key >> (64 - SHARD_BITS) == b.key >> (64 - SHARD_BITS)) {
        let shard = (group[0].key >> (64 - SHARD_BITS)) as usize;
        let Ok(mut b) = shards[shard].lock() else { continue };
        b.entries.extend_from_slice(group);
        if b.entries.len() > 2 * b.compacted_len + 1024 {
            b.compact();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_packing() {
        for l in [
            Location { image: 0, offset: 0 },
            Location {
                image: 5,
                offset: 63 * 512,
            },
            Location {
                image: (1 << IMAGE_BITS) - 1,
                offset: ((1u64 << OFFSET_BITS) - 1) * 512,
            },
        ] {
            assert_eq!(Location::unpack(l.pack()), l);
        }
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
