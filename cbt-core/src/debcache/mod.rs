//! Package archives as seeds.
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
//! Blobs live in `<cache>/debs/` (or a scratch directory removed when the
//! [`PackageBlobs`] is dropped, without a cache). Each is named by a hash
//! of the archive's path, size, modification time and the block size, and
//! has a small checksummed sidecar (`.src`) describing its source; it is
//! written to a temporary file and renamed, and rebuilt only when the
//! archive changes. Blobs whose archive changed or vanished are removed.
//! A malformed `.deb` is skipped with a warning naming it.

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

pub use deb::{read_deb, DebControl, DebInfo, DebLimits, FileSink};
pub use share::{
    estimate_with_packages, merged_keys, Measure, PackageCacheShare, PackageEstimate, SourceBlocks,
};

/// First line of a sidecar file.
const SIDECAR_MAGIC: &str = "cbt-debblob 1";
/// Temporary files older than this are left-overs of a crashed run.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

/// One package archive turned into a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageBlob {
    /// The blob (a raw image), canonical.
    pub blob: PathBuf,
    /// The `.deb` it was made from.
    pub deb: PathBuf,
    /// The package it holds.
    pub control: Option<DebControl>,
    /// Regular files in the package.
    pub files: u64,
    /// Their total size.
    pub data_bytes: u64,
    /// True if the blob was already there and current.
    pub reused: bool,
}

/// The blobs of all package archives found, and the archives skipped.
#[derive(Debug)]
pub struct PackageBlobs {
    /// One per readable `.deb`, sorted by blob path.
    pub blobs: Vec<PackageBlob>,
    /// Archives that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Without a cache directory, the scratch directory removed on drop.
    scratch: Option<PathBuf>,
}

impl PackageBlobs {
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

/// Finds every `.deb` (and `.udeb`) under `dirs` and makes sure each has a
/// current blob for `block_size`, building missing ones on up to `threads`
/// threads (0: one per core). Blobs go to `<cache_dir>/debs`, or to a
/// scratch directory without a cache.
pub fn prepare_package_blobs(
    dirs: &[PathBuf],
    cache_dir: Option<&Path>,
    block_size: u32,
    threads: usize,
) -> Result<PackageBlobs> {
    check_block_size(block_size)?;
    let mut debs = Vec::new();
    for d in dirs {
        find_debs(d, &mut debs)?;
    }
    debs.sort();
    debs.dedup();
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
                let Some(deb) = debs.get(i) else { break };
                let r = blob_for(deb, &blob_dir, block_size);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    for (deb, r) in debs.iter().zip(results) {
        match r.into_inner().ok().flatten() {
            Some(Ok(b)) => out.blobs.push(b),
            Some(Err(e)) => {
                tracing::warn!("skipping package archive: {e}");
                out.skipped.push((deb.clone(), e.to_string()));
            }
            None => out.skipped.push((deb.clone(), "not processed".into())),
        }
    }
    out.blobs.sort_by(|a, b| a.blob.cmp(&b.blob));
    if out.scratch.is_none() {
        collect_garbage(&blob_dir, &out);
    }
    Ok(out)
}

/// Adds the `.deb` files under `root` (or `root` itself) to `out`.
fn find_debs(root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| Error::io(root, "package cache", e))?;
    if meta.is_file() {
        out.push(root.canonicalize().map_err(|e| Error::io(root, "resolve", e))?);
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(Error::malformed(
            root,
            "package cache is neither a directory nor a .deb file",
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
            } else if path.extension().is_some_and(|e| e == "deb" || e == "udeb")
                && fs::metadata(&path).is_ok_and(|m| m.is_file())
            {
                if let Ok(c) = path.canonicalize() {
                    out.push(c);
                }
            }
        }
    }
    Ok(())
}

/// The identity of an archive: what must not change for its blob to stay valid.
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
    deb: PathBuf,
    stamp: Stamp,
    block_size: u32,
    blob_len: u64,
    files: u64,
    data_bytes: u64,
    control: Option<DebControl>,
}

impl Sidecar {
    fn render(&self) -> String {
        let mut s = format!(
            "{SIDECAR_MAGIC}\ndeb-hex {}\nsize {}\nmtime-ns {}\ninode {}\nblock-size {}\nblob-len {}\nfiles {}\ndata-bytes {}\n",
            hex(self.deb.as_os_str().as_bytes()),
            self.stamp.size,
            self.stamp.mtime_ns,
            self.stamp.inode,
            self.block_size,
            self.blob_len,
            self.files,
            self.data_bytes
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
            deb: PathBuf::from(std::ffi::OsStr::from_bytes(&unhex(get.get("deb-hex")?)?)),
            stamp: Stamp {
                size: num("size")?,
                mtime_ns: get.get("mtime-ns")?.parse().ok()?,
                inode: num("inode")?,
            },
            block_size: u32::try_from(num("block-size")?).ok()?,
            blob_len: num("blob-len")?,
            files: num("files")?,
            data_bytes: num("data-bytes")?,
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

/// Returns the current blob of `deb`, building it if needed.
fn blob_for(deb: &Path, blob_dir: &Path, block_size: u32) -> Result<PackageBlob> {
    let stamp = Stamp::of(deb)?;
    let mut h = blake3::Hasher::new();
    h.update(deb.as_os_str().as_bytes());
    h.update(&[0]);
    h.update(format!("{}:{}:{}:{block_size}", stamp.size, stamp.mtime_ns, stamp.inode).as_bytes());
    let name = &h.finalize().to_hex()[..32];
    let blob = blob_dir.join(format!("{name}.blob"));
    let side = blob_dir.join(format!("{name}.src"));
    if let Some(sc) = fs::read_to_string(&side).ok().and_then(|t| Sidecar::parse(&t)) {
        let blob_ok = fs::metadata(&blob).is_ok_and(|m| m.len() == sc.blob_len);
        if blob_ok && sc.deb == deb && sc.stamp == stamp && sc.block_size == block_size {
            return Ok(PackageBlob {
                blob: blob.canonicalize().map_err(|e| Error::io(&blob, "resolve", e))?,
                deb: deb.to_path_buf(),
                control: sc.control,
                files: sc.files,
                data_bytes: sc.data_bytes,
                reused: true,
            });
        }
    }
    let tmp = temp_name(&blob);
    let result = write_blob(deb, &tmp, block_size);
    let (info, blob_len) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The archive must not have changed while it was read.
    if Stamp::of(deb)? != stamp {
        let _ = fs::remove_file(&tmp);
        return Err(Error::malformed(deb, "changed while it was read"));
    }
    fs::rename(&tmp, &blob).map_err(|e| Error::io(&blob, "rename", e))?;
    let sc = Sidecar {
        deb: deb.to_path_buf(),
        stamp,
        block_size,
        blob_len,
        files: info.files,
        data_bytes: info.data_bytes,
        control: info.control.clone(),
    };
    let side_tmp = temp_name(&side);
    fs::write(&side_tmp, sc.render()).map_err(|e| Error::io(&side_tmp, "write", e))?;
    fs::rename(&side_tmp, &side).map_err(|e| Error::io(&side, "rename", e))?;
    Ok(PackageBlob {
        blob: blob.canonicalize().map_err(|e| Error::io(&blob, "resolve", e))?,
        deb: deb.to_path_buf(),
        control: info.control,
        files: info.files,
        data_bytes: info.data_bytes,
        reused: false,
    })
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
fn write_blob(deb: &Path, out: &Path, block_size: u32) -> Result<(DebInfo, u64)> {
    let input = File::open(deb).map_err(|e| Error::io(deb, "open", e))?;
    let file = File::create(out).map_err(|e| Error::io(out, "create", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let bs = u64::from(block_size);
    let zeros = vec![0u8; block_size as usize];
    w.write_all(&zeros).map_err(|e| Error::io(out, "write", e))?;
    let mut len = bs;
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
                w.write_all(&buf[..n]).map_err(|e| Error::io(out, "write", e))?;
                done += n as u64;
            }
            if done != size {
                // read_deb reports the truncation with the member's name.
                return Ok(());
            }
            let pad = (bs - done % bs) % bs;
            w.write_all(&zeros[..pad as usize])
                .map_err(|e| Error::io(out, "write", e))?;
            len += done + pad;
            Ok(())
        },
    )?;
    w.flush().map_err(|e| Error::io(out, "write", e))?;
    Ok((info, len))
}

/// Removes blobs whose archive changed or vanished, and stale temporary files.
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
            Some(sc) => Stamp::of(&sc.deb).map_or(true, |s| s != sc.stamp),
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
            deb: PathBuf::from("/var/cache/apt/archives/a b.deb"),
            stamp: Stamp {
                size: 10,
                mtime_ns: -5,
                inode: 7,
            },
            block_size: 4096,
            blob_len: 8192,
            files: 1,
            data_bytes: 3,
            control: Some(DebControl {
                package: "a".into(),
                version: "1:2.0-1".into(),
                architecture: "amd64".into(),
                installed_size: None,
            }),
        };
        let text = sc.render();
        assert_eq!(Sidecar::parse(&text), Some(sc));
        assert_eq!(Sidecar::parse(&text.replace("files 1", "files 2")), None);
        assert_eq!(Sidecar::parse(&text[..text.len() - 3]), None);
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
        assert!(b.skipped[0].1.contains("broken.deb"), "{:?}", b.skipped);
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
