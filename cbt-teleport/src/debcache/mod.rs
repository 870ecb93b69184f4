//! Package archives and apt index files as seeds.
//!
//! A filesystem stores each file from a block boundary, and the tail of
//! its last block is zero. So the blocks of an installed, unmodified
//! package file are exactly the file's content cut at block boundaries,
//! the last piece zero-padded. For every `.deb` under the package-cache
//! directories, [`prepare_package_blobs`] writes a *padded blob*: one zero
//! block (so no partition table is ever seen in it), then every regular
//! file of the package's data archive, each padded with zeros to the
//! block size. A blob is an ordinary raw image with a flat layout: the
//! index hashes it, caches its digests and reads blocks back from it like
//! from any seed, re-verifying each block before use.
//!
//! apt index files found there too (`Packages`, `Release`, ... plain or
//! compressed, see [`index_name`]) get a blob each in the same way: one
//! zero block, then the decompressed content, zero-padded. They seed the
//! guest's own copies in `/var/lib/apt/lists`, which no `.deb` holds.
//! Of the compressions of one file side by side (`Packages`,
//! `Packages.xz`, `Packages.gz`), only one is used: they hold the same text.
//!
//! Blobs live in `<cache>/debs/` (or a scratch directory removed when the
//! [`PackageBlobs`] is dropped, without a cache). Each is named by a hash
//! of the source's path, size, modification time and the block size, and
//! has a small checksummed sidecar (`.src`) describing its source; it is
//! written to a temporary file and renamed, and rebuilt only when the
//! source changes. Blobs whose source changed or vanished are removed.
//! A malformed `.deb` or compressed index file is skipped with a warning
//! naming it.
//!
//! [`PackageCaches`] is how the engine's index gets them: a
//! [`SeedProvider`] whose prepared seeds are the [`PackageBlobs`].
//!
//! Files: `mod.rs` finds the sources and prepares the blobs on a few
//! threads; `blob.rs` builds one blob and its sidecar and collects stale
//! ones; `deb.rs` and `aptindex.rs` read archives and index files;
//! `share.rs` measures how much of a source image the blobs hold.

mod aptindex;
mod blob;
mod deb;
mod share;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::SystemTime;

use serde::Serialize;

use cbt_core::{check_block_size, Error, Index, PreparedSeeds, Result, SeedProvider};

use blob::{blob_for, collect_garbage};

pub use aptindex::{index_name, read_index, IndexCompression, IndexInfo, IndexLimits, IndexName};
pub use deb::{read_deb, DebControl, DebInfo, DebLimits, FileSink};
pub use share::{
    estimate_with_packages, merged_keys, Measure, PackageCacheShare, PackageEstimate, SourceBlocks,
};

/// What a blob is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobSource {
    /// A `.deb` or `.udeb` package archive: the files of its data archive.
    Archive,
    /// An apt index file (see [`index_name`]): its decompressed content.
    AptIndex(IndexCompression),
}

impl BlobSource {
    /// What a file found in a package cache is, by its name: an apt index
    /// file, a package archive (`.deb`, `.udeb`), or neither.
    pub fn of(path: &Path) -> Option<BlobSource> {
        let name = path.file_name()?;
        if let Some(n) = index_name(name.as_bytes()) {
            return Some(BlobSource::AptIndex(n.compression));
        }
        path.extension()
            .is_some_and(|e| e == "deb" || e == "udeb")
            .then_some(BlobSource::Archive)
    }

    /// True for an apt index file.
    pub fn is_index(self) -> bool {
        matches!(self, BlobSource::AptIndex(_))
    }

    /// How the sidecar names it.
    fn tag(self) -> &'static str {
        match self {
            BlobSource::Archive => "archive",
            BlobSource::AptIndex(IndexCompression::Plain) => "index",
            BlobSource::AptIndex(IndexCompression::Xz) => "index-xz",
            BlobSource::AptIndex(IndexCompression::Zstd) => "index-zstd",
            BlobSource::AptIndex(IndexCompression::Gzip) => "index-gzip",
        }
    }

    fn from_tag(tag: &str) -> Option<BlobSource> {
        [
            BlobSource::Archive,
            BlobSource::AptIndex(IndexCompression::Plain),
            BlobSource::AptIndex(IndexCompression::Xz),
            BlobSource::AptIndex(IndexCompression::Zstd),
            BlobSource::AptIndex(IndexCompression::Gzip),
        ]
        .into_iter()
        .find(|k| k.tag() == tag)
    }
}

/// One package archive or apt index file turned into a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageBlob {
    /// The blob (a raw image), canonical.
    pub blob: PathBuf,
    /// The file it was made from (canonical).
    pub source: PathBuf,
    /// What that file is.
    pub kind: BlobSource,
    /// The package it holds (archives only).
    pub control: Option<DebControl>,
    /// Regular files in the package (1 for an index file).
    pub files: u64,
    /// Their total size (decompressed).
    pub data_bytes: u64,
    /// True if an index file was larger than [`IndexLimits::max_bytes`]
    /// and only its beginning is in the blob.
    pub capped: bool,
    /// True if the blob was already there and current.
    pub reused: bool,
}

/// A file of a package cache that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedSource {
    /// The file.
    pub source: PathBuf,
    /// What it was taken for.
    pub kind: BlobSource,
    /// Why it was skipped (the error, naming the file).
    pub reason: String,
}

/// The blobs of all package archives and index files found, and the files skipped.
#[derive(Debug)]
pub struct PackageBlobs {
    /// One per readable source, sorted by blob path.
    pub blobs: Vec<PackageBlob>,
    /// Sources that could not be read.
    pub skipped: Vec<SkippedSource>,
    /// Without a cache directory, the scratch directory removed on drop.
    scratch: Option<PathBuf>,
}

impl PackageBlobs {
    /// Package archives turned into blobs.
    pub fn archives(&self) -> usize {
        self.blobs.iter().filter(|b| !b.kind.is_index()).count()
    }

    /// apt index files turned into blobs.
    pub fn index_files(&self) -> usize {
        self.blobs.iter().filter(|b| b.kind.is_index()).count()
    }

    /// Package archives skipped.
    pub fn archives_skipped(&self) -> usize {
        self.skipped.iter().filter(|s| !s.kind.is_index()).count()
    }

    /// apt index files skipped.
    pub fn index_files_skipped(&self) -> usize {
        self.skipped.iter().filter(|s| s.kind.is_index()).count()
    }

    /// True if `path` (canonical) is one of the blobs.
    pub fn contains(&self, path: &Path) -> bool {
        self.get(path).is_some()
    }

    /// The blob at `path` (canonical), if it is one.
    pub fn get(&self, path: &Path) -> Option<&PackageBlob> {
        self.blobs
            .binary_search_by(|b| b.blob.as_path().cmp(path))
            .ok()
            .map(|i| &self.blobs[i])
    }

    /// The package blobs `index` was built with (the first
    /// [`PackageCaches`] of its [`cbt_core::IndexOptions::extra_seeds`]),
    /// if any.
    pub fn of(index: &Index) -> Option<&PackageBlobs> {
        index
            .extra_seeds()
            .iter()
            .find_map(|s| s.as_any().downcast_ref::<PackageBlobs>())
    }
}

impl PreparedSeeds for PackageBlobs {
    /// The blob paths (blobs with content only), to be indexed as raw images.
    fn roots(&self) -> Vec<PathBuf> {
        self.blobs
            .iter()
            .filter(|b| b.data_bytes > 0)
            .map(|b| b.blob.clone())
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for PackageBlobs {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Package-cache directories (or single files) as a seed source for the
/// engine's index: each index build prepares their blobs with
/// [`prepare_package_blobs`] for its block size, cache directory and
/// threads, and indexes them as raw images.
///
/// ```no_run
/// use std::path::PathBuf;
/// use std::sync::Arc;
/// use cbt_core::{Index, IndexOptions};
/// use cbt_teleport::{PackageBlobs, PackageCaches};
///
/// # fn main() -> cbt_core::Result<()> {
/// let caches = PackageCaches::new(vec![PathBuf::from("/var/cache/apt/archives")]);
/// let options = IndexOptions {
///     extra_seeds: vec![Arc::new(caches)],
///     ..Default::default()
/// };
/// let index = Index::build(&[PathBuf::from("/var/lib/libvirt/images")], &options)?;
/// let archives = PackageBlobs::of(&index).map_or(0, |b| b.archives());
/// println!("{archives} package archives seed the index");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageCaches {
    dirs: Vec<PathBuf>,
}

impl PackageCaches {
    /// The package caches under `dirs`.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        PackageCaches { dirs }
    }

    /// The directories (or files) given.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl SeedProvider for PackageCaches {
    fn prepare(
        &self,
        block_size: u32,
        cache_dir: Option<&Path>,
        threads: usize,
    ) -> Result<Box<dyn PreparedSeeds>> {
        Ok(Box::new(prepare_package_blobs(
            &self.dirs, cache_dir, block_size, threads,
        )?))
    }
}

/// Finds every `.deb` (and `.udeb`) and every apt index file under `dirs`
/// and makes sure each has a current blob for `block_size`, building
/// missing ones on up to `threads` threads (0: one per core). Blobs go to
/// `<cache_dir>/debs`, or to a scratch directory without a cache.
pub fn prepare_package_blobs(
    dirs: &[PathBuf],
    cache_dir: Option<&Path>,
    block_size: u32,
    threads: usize,
) -> Result<PackageBlobs> {
    check_block_size(block_size)?;
    let mut found = Vec::new();
    for d in dirs {
        find_sources(d, &mut found)?;
    }
    let debs = pick_sources(found);
    let (blob_dir, scratch) = match cache_dir {
        Some(c) => (c.join("debs"), None),
        None => {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let d = std::env::temp_dir().join(format!("cbt-debs-{}-{nanos}", std::process::id()));
            (d.clone(), Some(d))
        }
    };
    fs::create_dir_all(&blob_dir).map_err(|e| Error::io(&blob_dir, "create directory", e))?;
    let mut out = PackageBlobs {
        blobs: Vec::new(),
        skipped: Vec::new(),
        scratch,
    };
    let results: Vec<Mutex<Option<Result<PackageBlob>>>> = debs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = if threads == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    thread::scope(|s| {
        for _ in 0..workers.clamp(1, debs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((source, kind)) = debs.get(i) else { break };
                let r = blob_for(source, *kind, &blob_dir, block_size);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    for ((source, kind), r) in debs.iter().zip(results) {
        let what = match kind {
            BlobSource::Archive => "package archive",
            BlobSource::AptIndex(_) => "apt index file",
        };
        let reason = match r.into_inner().ok().flatten() {
            Some(Ok(b)) => {
                out.blobs.push(b);
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!("skipping {what}: {e}");
                e.to_string()
            }
            None => "not processed".into(),
        };
        out.skipped.push(SkippedSource {
            source: source.clone(),
            kind: *kind,
            reason,
        });
    }
    out.blobs.sort_by(|a, b| a.blob.cmp(&b.blob));
    if out.scratch.is_none() {
        collect_garbage(&blob_dir, &out);
    }
    Ok(out)
}

/// Adds the `.deb` and apt index files under `root` to `out`; `root`
/// itself if it is a file (an index file by its name, else an archive).
fn find_sources(root: &Path, out: &mut Vec<(PathBuf, BlobSource)>) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| Error::io(root, "package cache", e))?;
    if meta.is_file() {
        let kind = BlobSource::of(root)
            .filter(|k| k.is_index())
            .unwrap_or(BlobSource::Archive);
        out.push((
            root.canonicalize().map_err(|e| Error::io(root, "resolve", e))?,
            kind,
        ));
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(Error::malformed(
            root,
            "package cache is neither a directory nor a file",
        ));
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", d.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(kind) = BlobSource::of(&path) {
                if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                    if let Ok(c) = path.canonicalize() {
                        out.push((c, kind));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sorts and deduplicates the sources found, and keeps one of the
/// compressions of an index file found side by side (`Packages`,
/// `Packages.xz`, `Packages.gz`): the plain one, else xz, zstd, gzip.
fn pick_sources(mut found: Vec<(PathBuf, BlobSource)>) -> Vec<(PathBuf, BlobSource)> {
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    // The path without its compression suffix, for index files.
    let stem = |(p, k): &(PathBuf, BlobSource)| -> Option<PathBuf> {
        let BlobSource::AptIndex(c) = k else {
            return None;
        };
        let name = p.file_name()?.as_bytes();
        let base = name.strip_suffix(c.suffix().as_bytes())?;
        Some(p.with_file_name(std::ffi::OsStr::from_bytes(base)))
    };
    let mut best: std::collections::HashMap<PathBuf, BlobSource> = std::collections::HashMap::new();
    for s in &found {
        if let (Some(st), BlobSource::AptIndex(_)) = (stem(s), s.1) {
            let e = best.entry(st).or_insert(s.1);
            *e = (*e).min(s.1);
        }
    }
    found.retain(|s| stem(s).is_none_or(|st| best.get(&st) == Some(&s.1)));
    found
}
