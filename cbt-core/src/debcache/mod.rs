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

mod aptindex;
mod deb;
mod share;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::check_block_size;

pub use aptindex::{index_name, read_index, IndexCompression, IndexInfo, IndexLimits, IndexName};
pub use deb::{read_deb, DebControl, DebInfo, DebLimits, FileSink};
pub use share::{
    estimate_with_packages, merged_keys, Measure, PackageCacheShare, PackageEstimate, SourceBlocks,
};

/// First line of a sidecar file. Version 2 added apt index files (the
/// `kind` and `capped` lines; `deb-hex` became `source-hex`).
const SIDECAR_MAGIC: &str = "cbt-debblob 2";
/// Temporary files older than this are left-overs of a crashed run.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

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
        self.blobs
            .binary_search_by(|b| b.blob.as_path().cmp(path))
            .is_ok()
    }

    /// The blob paths, to be indexed as raw images.
    pub fn roots(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.blobs
            .iter()
            .filter(|b| b.data_bytes > 0)
            .map(|b| b.blob.clone())
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

/// The identity of a source file: what must not change for its blob to stay valid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp> {
        let m = fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?;
        Ok(Stamp {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

/// What a sidecar records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sidecar {
    source: PathBuf,
    kind: BlobSource,
    stamp: Stamp,
    block_size: u32,
    blob_len: u64,
    files: u64,
    data_bytes: u64,
    capped: bool,
    control: Option<DebControl>,
}

impl Sidecar {
    fn render(&self) -> String {
        let mut s = format!(
            "{SIDECAR_MAGIC}\nkind {}\nsource-hex {}\nsize {}\nmtime-ns {}\ninode {}\nblock-size {}\nblob-len {}\nfiles {}\ndata-bytes {}\ncapped {}\n",
            self.kind.tag(),
            hex(self.source.as_os_str().as_bytes()),
            self.stamp.size,
            self.stamp.mtime_ns,
            self.stamp.inode,
            self.block_size,
            self.blob_len,
            self.files,
            self.data_bytes,
            u8::from(self.capped)
        );
        if let Some(c) = &self.control {
            s += &format!(
                "package-hex {}\nversion-hex {}\narch-hex {}\ninstalled-size {}\n",
                hex(c.package.as_bytes()),
                hex(c.version.as_bytes()),
                hex(c.architecture.as_bytes()),
                c.installed_size.map_or(-1, |v| v as i128)
            );
        }
        let check = blake3::hash(s.as_bytes()).to_hex();
        s + &format!("check {check}\n")
    }

    fn parse(text: &str) -> Option<Sidecar> {
        let body_end = text.rfind("check ")?;
        let (body, check) = text.split_at(body_end);
        if check.trim_end() != format!("check {}", blake3::hash(body.as_bytes()).to_hex()) {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != SIDECAR_MAGIC {
            return None;
        }
        let mut get = std::collections::HashMap::new();
        for l in lines {
            let (k, v) = l.split_once(' ')?;
            get.insert(k, v);
        }
        let num = |k: &str| get.get(k)?.parse::<u64>().ok();
        let text_of = |k: &str| String::from_utf8(unhex(get.get(k)?)?).ok();
        let control = match get.contains_key("package-hex") {
            true => Some(DebControl {
                package: text_of("package-hex")?,
                version: text_of("version-hex")?,
                architecture: text_of("arch-hex")?,
                installed_size: get
                    .get("installed-size")?
                    .parse::<i128>()
                    .ok()
                    .and_then(|v| u64::try_from(v).ok()),
            }),
            false => None,
        };
        Some(Sidecar {
            source: PathBuf::from(std::ffi::OsStr::from_bytes(&unhex(get.get("source-hex")?)?)),
            kind: BlobSource::from_tag(get.get("kind")?)?,
            stamp: Stamp {
                size: num("size")?,
                mtime_ns: get.get("mtime-ns")?.parse().ok()?,
                inode: num("inode")?,
            },
            block_size: u32::try_from(num("block-size")?).ok()?,
            blob_len: num("blob-len")?,
            files: num("files")?,
            data_bytes: num("data-bytes")?,
            capped: match *get.get("capped")? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            control,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Returns the current blob of `source`, building it if needed.
fn blob_for(source: &Path, kind: BlobSource, blob_dir: &Path, block_size: u32) -> Result<PackageBlob> {
    let stamp = Stamp::of(source)?;
    let mut h = blake3::Hasher::new();
    h.update(source.as_os_str().as_bytes());
    h.update(&[0]);
    h.update(
        format!(
            "{}:{}:{}:{block_size}:{}",
            stamp.size,
            stamp.mtime_ns,
            stamp.inode,
            kind.tag()
        )
        .as_bytes(),
    );
    let name = &h.finalize().to_hex()[..32];
    let blob = blob_dir.join(format!("{name}.blob"));
    let side = blob_dir.join(format!("{name}.src"));
    let found = |sc: Sidecar, reused: bool| -> Result<PackageBlob> {
        Ok(PackageBlob {
            blob: blob.canonicalize().map_err(|e| Error::io(&blob, "resolve", e))?,
            source: source.to_path_buf(),
            kind,
            control: sc.control,
            files: sc.files,
            data_bytes: sc.data_bytes,
            capped: sc.capped,
            reused,
        })
    };
    if let Some(sc) = fs::read_to_string(&side).ok().and_then(|t| Sidecar::parse(&t)) {
        let blob_ok = fs::metadata(&blob).is_ok_and(|m| m.len() == sc.blob_len);
        if blob_ok
            && sc.source == source
            && sc.kind == kind
            && sc.stamp == stamp
            && sc.block_size == block_size
        {
            return found(sc, true);
        }
    }
    let tmp = temp_name(&blob);
    let result = match kind {
        BlobSource::Archive => write_blob(source, &tmp, block_size),
        BlobSource::AptIndex(c) => write_index_blob(source, c, &tmp, block_size),
    };
    let (built, blob_len) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The source must not have changed while it was read.
    if Stamp::of(source)? != stamp {
        let _ = fs::remove_file(&tmp);
        return Err(Error::malformed(source, "changed while it was read"));
    }
    if built.capped {
        tracing::warn!(
            "{}: apt index file of more than {} bytes: only its first {} bytes are used",
            source.display(),
            IndexLimits::default().max_bytes,
            built.data_bytes
        );
    }
    fs::rename(&tmp, &blob).map_err(|e| Error::io(&blob, "rename", e))?;
    let sc = Sidecar {
        source: source.to_path_buf(),
        kind,
        stamp,
        block_size,
        blob_len,
        files: built.files,
        data_bytes: built.data_bytes,
        capped: built.capped,
        control: built.control,
    };
    let side_tmp = temp_name(&side);
    fs::write(&side_tmp, sc.render()).map_err(|e| Error::io(&side_tmp, "write", e))?;
    fs::rename(&side_tmp, &side).map_err(|e| Error::io(&side, "rename", e))?;
    found(sc, false)
}

/// What went into a new blob.
struct Built {
    control: Option<DebControl>,
    files: u64,
    data_bytes: u64,
    capped: bool,
}

/// Writes a padded blob: one zero block, then pieces of content, each
/// zero-padded to the block size.
struct PaddedWriter<'a> {
    w: BufWriter<File>,
    path: &'a Path,
    block: u64,
    zeros: Vec<u8>,
    /// Bytes written, padding included.
    len: u64,
    /// Bytes of the current piece so far.
    piece: u64,
}

impl<'a> PaddedWriter<'a> {
    fn create(path: &'a Path, block_size: u32) -> Result<PaddedWriter<'a>> {
        let file = File::create(path).map_err(|e| Error::io(path, "create", e))?;
        let mut w = PaddedWriter {
            w: BufWriter::with_capacity(1 << 20, file),
            path,
            block: u64::from(block_size),
            zeros: vec![0u8; block_size as usize],
            len: 0,
            piece: 0,
        };
        w.write(&vec![0u8; block_size as usize])?;
        w.end_piece()?;
        Ok(w)
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.w
            .write_all(data)
            .map_err(|e| Error::io(self.path, "write", e))?;
        self.piece += data.len() as u64;
        Ok(())
    }

    /// Pads the current piece to the block size.
    fn end_piece(&mut self) -> Result<()> {
        let pad = (self.block - self.piece % self.block) % self.block;
        self.w
            .write_all(&self.zeros[..pad as usize])
            .map_err(|e| Error::io(self.path, "write", e))?;
        self.len += self.piece + pad;
        self.piece = 0;
        Ok(())
    }

    /// Flushes; returns the blob's length.
    fn finish(mut self) -> Result<u64> {
        self.w.flush().map_err(|e| Error::io(self.path, "write", e))?;
        Ok(self.len)
    }
}

fn temp_name(final_path: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!("{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes the padded blob of `deb` to `out`; returns what was read and the blob's length.
fn write_blob(deb: &Path, out: &Path, block_size: u32) -> Result<(Built, u64)> {
    let input = File::open(deb).map_err(|e| Error::io(deb, "open", e))?;
    let mut w = PaddedWriter::create(out, block_size)?;
    let mut buf = vec![0u8; 256 << 10];
    let info = read_deb(
        std::io::BufReader::with_capacity(256 << 10, input),
        deb,
        &DebLimits::default(),
        &mut |_, size, r| {
            let mut done = 0u64;
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::malformed(deb, format!("data archive: {e}"))),
                };
                w.write(&buf[..n])?;
                done += n as u64;
            }
            if done != size {
                // read_deb reports the truncation with the member's name.
                return Ok(());
            }
            w.end_piece()
        },
    )?;
    let len = w.finish()?;
    let built = Built {
        control: info.control,
        files: info.files,
        data_bytes: info.data_bytes,
        capped: false,
    };
    Ok((built, len))
}

/// Writes the padded blob of the apt index file `index` to `out`.
fn write_index_blob(
    index: &Path,
    compression: IndexCompression,
    out: &Path,
    block_size: u32,
) -> Result<(Built, u64)> {
    let input = File::open(index).map_err(|e| Error::io(index, "open", e))?;
    let mut w = PaddedWriter::create(out, block_size)?;
    let info = read_index(
        std::io::BufReader::with_capacity(256 << 10, input),
        index,
        compression,
        &IndexLimits::default(),
        &mut |data| w.write(data),
    )?;
    w.end_piece()?;
    let len = w.finish()?;
    let built = Built {
        control: None,
        files: 1,
        data_bytes: info.bytes,
        capped: info.capped,
    };
    Ok((built, len))
}

/// Removes blobs whose source changed or vanished (or whose sidecar is of
/// another version), and stale temporary files.
fn collect_garbage(blob_dir: &Path, current: &PackageBlobs) {
    let Ok(entries) = fs::read_dir(blob_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > STALE_TEMP);
            if old {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".src") else {
            continue;
        };
        let blob = blob_dir.join(format!("{stem}.blob"));
        if blob.canonicalize().is_ok_and(|b| current.contains(&b)) {
            continue;
        }
        let stale = match fs::read_to_string(&path).ok().and_then(|t| Sidecar::parse(&t)) {
            Some(sc) => Stamp::of(&sc.source).map_or(true, |s| s != sc.stamp),
            None => true,
        };
        if stale {
            tracing::debug!("removing stale package blob {}", blob.display());
            let _ = fs::remove_file(&blob);
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::deb::tests::deb;
    use super::*;

    #[test]
    fn sidecar_round_trip_and_checksum() {
        let sc = Sidecar {
            source: PathBuf::from("/var/cache/apt/archives/a b.deb"),
            kind: BlobSource::Archive,
            stamp: Stamp {
                size: 10,
                mtime_ns: -5,
                inode: 7,
            },
            block_size: 4096,
            blob_len: 8192,
            files: 1,
            data_bytes: 3,
            capped: false,
            control: Some(DebControl {
                package: "a".into(),
                version: "1:2.0-1".into(),
                architecture: "amd64".into(),
                installed_size: None,
            }),
        };
        let text = sc.render();
        assert_eq!(Sidecar::parse(&text), Some(sc.clone()));
        assert_eq!(Sidecar::parse(&text.replace("files 1", "files 2")), None);
        assert_eq!(Sidecar::parse(&text[..text.len() - 3]), None);
        let index = Sidecar {
            source: PathBuf::from("/m/dists/x/main/binary-amd64/Packages.xz"),
            kind: BlobSource::AptIndex(IndexCompression::Xz),
            capped: true,
            control: None,
            ..sc
        };
        assert_eq!(Sidecar::parse(&index.render()), Some(index));
        // A sidecar of version 1 (archives only) is not current: the blob is rebuilt.
        let v1 = text
            .lines()
            .filter(|l| !l.starts_with("kind ") && !l.starts_with("capped ") && !l.starts_with("check "))
            .map(|l| {
                l.replace(SIDECAR_MAGIC, "cbt-debblob 1")
                    .replace("source-hex", "deb-hex")
                    + "\n"
            })
            .collect::<String>();
        let v1 = format!("{v1}check {}\n", blake3::hash(v1.as_bytes()).to_hex());
        assert_eq!(Sidecar::parse(&v1), None);
    }

    #[test]
    fn sources_are_recognised_and_one_compression_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let touch = |rel: &str| {
            let p = d.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"x").unwrap();
        };
        for rel in [
            "archives/a_1_amd64.deb",
            "archives/b.udeb",
            "archives/lock",
            "archives/partial/c.deb.FAILED",
            "dists/x/InRelease",
            "dists/x/Release",
            "dists/x/Release.gpg",
            "dists/x/main/binary-amd64/Packages.gz",
            "dists/x/main/binary-amd64/Packages.xz",
            "dists/x/main/binary-amd64/Packages.diff/Index",
            "dists/x/main/i18n/Translation-en.bz2",
            "dists/x/main/i18n/Translation-de.zst",
            "dists/x/main/source/Sources.gz",
            "lists/m_dists_x_main_binary-amd64_Packages",
            "lists/m_dists_x_main_binary-amd64_Packages.xz",
            "acng/debrep/dists/x/main/Contents-amd64.gz.head",
        ] {
            touch(rel);
        }
        let mut found = Vec::new();
        find_sources(d, &mut found).unwrap();
        let picked: Vec<(String, BlobSource)> = pick_sources(found)
            .into_iter()
            .map(|(p, k)| {
                (
                    p.strip_prefix(d.canonicalize().unwrap())
                        .unwrap()
                        .display()
                        .to_string(),
                    k,
                )
            })
            .collect();
        let index = BlobSource::AptIndex;
        assert_eq!(
            picked,
            [
                ("archives/a_1_amd64.deb", BlobSource::Archive),
                ("archives/b.udeb", BlobSource::Archive),
                ("dists/x/InRelease", index(IndexCompression::Plain)),
                ("dists/x/Release", index(IndexCompression::Plain)),
                (
                    "dists/x/main/binary-amd64/Packages.xz",
                    index(IndexCompression::Xz)
                ),
                (
                    "dists/x/main/i18n/Translation-de.zst",
                    index(IndexCompression::Zstd)
                ),
                ("dists/x/main/source/Sources.gz", index(IndexCompression::Gzip)),
                (
                    "lists/m_dists_x_main_binary-amd64_Packages",
                    index(IndexCompression::Plain)
                ),
            ]
            .map(|(p, k)| (p.to_string(), k))
        );
        // A file given directly is an index file by its name, else an archive.
        let mut one = Vec::new();
        find_sources(&d.join("dists/x/Release.gpg"), &mut one).unwrap();
        find_sources(&d.join("dists/x/Release"), &mut one).unwrap();
        let kinds: Vec<BlobSource> = one.iter().map(|s| s.1).collect();
        assert_eq!(kinds, [BlobSource::Archive, index(IndexCompression::Plain)]);
    }

    #[test]
    fn index_files_become_padded_blobs() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("mirror/dists/x/main/binary-amd64");
        fs::create_dir_all(&m).unwrap();
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("Package: p{i}\nVersion: {}\n\n", i % 13).into_bytes())
            .collect();
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&text).unwrap();
        let xz = e.finish().unwrap();
        fs::write(m.join("Packages.xz"), &xz).unwrap();
        // A truncated one beside a good one: skipped, named, the rest kept.
        let bad = dir.path().join("mirror/dists/y/main/binary-amd64");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("Packages.xz"), &xz[..xz.len() / 2]).unwrap();
        fs::write(dir.path().join("mirror/dists/x/Release"), b"Suite: x\n").unwrap();
        let cache = dir.path().join("cache");
        let roots = [dir.path().join("mirror")];
        let b = prepare_package_blobs(&roots, Some(&cache), 4096, 2).unwrap();
        assert_eq!((b.archives(), b.index_files()), (0, 2));
        assert_eq!((b.archives_skipped(), b.index_files_skipped()), (0, 1));
        assert!(
            b.skipped[0]
                .reason
                .contains("dists/y/main/binary-amd64/Packages.xz")
                && b.skipped[0].reason.contains("xz stream"),
            "{:?}",
            b.skipped
        );
        let p = b
            .blobs
            .iter()
            .find(|x| x.source.ends_with("Packages.xz"))
            .unwrap();
        assert_eq!(p.kind, BlobSource::AptIndex(IndexCompression::Xz));
        assert_eq!(
            (p.files, p.data_bytes, p.capped, p.reused),
            (1, text.len() as u64, false, false)
        );
        let blob = fs::read(&p.blob).unwrap();
        let padded = (text.len() as u64).div_ceil(4096) * 4096;
        assert_eq!(blob.len() as u64, 4096 + padded);
        assert!(blob[..4096].iter().all(|&x| x == 0));
        assert!(blob[4096..4096 + text.len()] == text[..]);
        assert!(blob[4096 + text.len()..].iter().all(|&x| x == 0));
        let r = b.blobs.iter().find(|x| x.source.ends_with("Release")).unwrap();
        assert_eq!(fs::read(&r.blob).unwrap().len(), 2 * 4096);
        let first = p.blob.clone();
        drop(b);

        let again = prepare_package_blobs(&roots, Some(&cache), 4096, 1).unwrap();
        assert!(again.blobs.iter().all(|x| x.reused));
        assert_eq!(again.index_files_skipped(), 1);
        drop(again);

        // Once the plain file is there too, it is used instead of the .xz.
        fs::write(m.join("Packages"), &text).unwrap();
        let plain = prepare_package_blobs(&roots, Some(&cache), 4096, 1).unwrap();
        let p = plain
            .blobs
            .iter()
            .find(|x| x.source.ends_with("main/binary-amd64/Packages"))
            .unwrap();
        assert_eq!(p.kind, BlobSource::AptIndex(IndexCompression::Plain));
        assert_eq!(plain.index_files(), 2);
        assert!(fs::read(&p.blob).unwrap() == fs::read(&first).unwrap());
        assert!(!plain.blobs.iter().any(|x| x.blob == first));
    }

    #[test]
    fn blobs_are_padded_reused_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let debs = dir.path().join("debs");
        fs::create_dir_all(&debs).unwrap();
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        fs::write(debs.join("p.deb"), deb(&[("./usr/a", &a), ("./usr/b", b"xyz")])).unwrap();
        fs::write(debs.join("broken.deb"), b"!<arch>\nnonsense").unwrap();
        let cache = dir.path().join("cache");
        let b = prepare_package_blobs(std::slice::from_ref(&debs), Some(&cache), 4096, 1).unwrap();
        assert_eq!(b.blobs.len(), 1);
        assert_eq!(b.skipped.len(), 1);
        assert!(b.skipped[0].reason.contains("broken.deb"), "{:?}", b.skipped);
        let blob = fs::read(&b.blobs[0].blob).unwrap();
        assert_eq!(blob.len(), 4096 * 4);
        assert!(blob[..4096].iter().all(|&x| x == 0));
        assert_eq!(&blob[4096..4096 + 5000], &a[..]);
        assert!(blob[4096 + 5000..3 * 4096].iter().all(|&x| x == 0));
        assert_eq!(&blob[3 * 4096..3 * 4096 + 3], b"xyz");
        assert!(!b.blobs[0].reused);
        let first = b.blobs[0].blob.clone();
        drop(b);

        let again = prepare_package_blobs(std::slice::from_ref(&debs), Some(&cache), 4096, 1).unwrap();
        assert!(again.blobs[0].reused);
        assert_eq!(again.blobs[0].control.as_ref().unwrap().package, "t");

        // A changed archive gets a new blob; the old one is collected.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(debs.join("p.deb"), deb(&[("./usr/a", b"other")])).unwrap();
        let changed = prepare_package_blobs(&[debs], Some(&cache), 4096, 1).unwrap();
        assert!(!changed.blobs[0].reused);
        assert_ne!(changed.blobs[0].blob, first);
        assert!(!first.exists());
    }

    #[test]
    fn scratch_directory_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("p.deb"), deb(&[("./x", b"1")])).unwrap();
        let b = prepare_package_blobs(&[dir.path().to_path_buf()], None, 4096, 0).unwrap();
        let blob = b.blobs[0].blob.clone();
        assert!(blob.exists());
        drop(b);
        assert!(!blob.exists());
    }
}
