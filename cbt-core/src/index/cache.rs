//! The persistent per-image digest cache.
//!
//! One file per indexed image view (image or snapshot), named by a hash of
//! its canonical path, snapshot, scope and block size. The header records
//! the file's size, mtime, inode and device; if any differ, the image has
//! changed and is hashed again. Files carry a magic, a version and a BLAKE3
//! checksum of their whole content; a file that fails any check is rebuilt,
//! never trusted. Files are written to a temporary name and renamed, and
//! opened only through a handle of the cache directory, never through a
//! symbolic link planted there.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::safe_fs::Dir;

const MAGIC: &[u8; 8] = b"CBTDIGS\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 * 8 + 32;
const ENTRY_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;

/// What identifies an image file's content for caching purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Result<Self> {
        let m = fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?;
        Ok(FileStamp {
            size: m.size(),
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            inode: m.ino(),
            device: m.dev(),
        })
    }
}

/// The digests of one image view: short digest keys and block offsets of
/// its non-zero blocks, plus block counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageDigests {
    pub len: u64,
    pub total_blocks: u64,
    pub zero_blocks: u64,
    /// (short digest, byte offset) of every non-zero block, in disk order.
    pub entries: Vec<(u64, u64)>,
}

/// A digest cache in one directory.
#[derive(Debug, Clone)]
pub(crate) struct DigestCache {
    dir: PathBuf,
}

impl DigestCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        DigestCache { dir }
    }

    /// The cache file's name in the directory, and the identity's hash.
    fn file_for(&self, identity: &str) -> (String, [u8; 32]) {
        let id = *blake3::hash(identity.as_bytes()).as_bytes();
        let name: String = id[..16].iter().map(|b| format!("{b:02x}")).collect();
        (format!("{name}.cbtdig"), id)
    }

    /// Loads the digests for `identity` if the cache holds a valid entry for
    /// exactly this file state. Any defect means "not cached".
    pub(crate) fn load(&self, identity: &str, stamp: &FileStamp, block_size: u32) -> Option<ImageDigests> {
        let (name, id) = self.file_for(identity);
        let path = self.dir.join(&name);
        let dir = Dir::open(&self.dir).ok()?;
        let mut bytes = Vec::new();
        match dir.open_existing(&name, false) {
            Ok(Some(mut f)) => f.read_to_end(&mut bytes).ok()?,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("ignoring digest cache entry: {e}");
                return None;
            }
        };
        match decode(&bytes, &id, stamp, block_size) {
            Ok(d) => Some(d),
            Err(reason) => {
                tracing::warn!(cache = %path.display(), "ignoring digest cache entry: {reason}");
                None
            }
        }
    }

    /// Stores digests atomically (temporary file, then rename).
    pub(crate) fn store(
        &self,
        identity: &str,
        stamp: &FileStamp,
        block_size: u32,
        d: &ImageDigests,
    ) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, "create cache directory", e))?;
        let dir = Dir::open(&self.dir)?;
        let (name, id) = self.file_for(identity);
        let path = self.dir.join(&name);
        let bytes = encode(&id, stamp, block_size, d);
        let tmp = format!("{name}.tmp{}", std::process::id());
        let mut f = dir.create_replacing(&tmp)?;
        let written = f
            .write_all(&bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io(&path, "write digest cache", e))
            .and_then(|()| dir.rename(&tmp, &name));
        if written.is_err() {
            let _ = dir.remove(&tmp);
        }
        written
    }

    /// Drops the entry for `identity`, so the next index build hashes the
    /// image again (its content changed without its stamp changing).
    pub(crate) fn forget(&self, identity: &str) -> Result<()> {
        let (name, _) = self.file_for(identity);
        Dir::open(&self.dir)?.remove(&name)
    }
}

fn encode(id: &[u8; 32], s: &FileStamp, block_size: u32, d: &ImageDigests) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + d.entries.len() * ENTRY_LEN + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&block_size.to_le_bytes());
    for v in [
        s.size,
        s.mtime_sec as u64,
        s.mtime_nsec as u64,
        s.inode,
        s.device,
        d.len,
        d.total_blocks,
        d.zero_blocks,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(id);
    for (key, offset) in &d.entries {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    let sum = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sum);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn decode(
    b: &[u8],
    id: &[u8; 32],
    s: &FileStamp,
    block_size: u32,
) -> std::result::Result<ImageDigests, String> {
    if b.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err("truncated".into());
    }
    let (body, sum) = b.split_at(b.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (corrupt)".into());
    }
    if &b[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    let bs = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    let f: Vec<u64> = (0..8).map(|i| u64_at(b, 16 + i * 8)).collect();
    if &b[80..112] != id {
        return Err("belongs to another image".into());
    }
    let stamp = FileStamp {
        size: f[0],
        mtime_sec: f[1] as i64,
        mtime_nsec: f[2] as i64,
        inode: f[3],
        device: f[4],
    };
    if bs != block_size || stamp != *s {
        // The image changed (or another block size): stale, not corrupt.
        return Err("stale".into());
    }
    let entries_bytes = &body[HEADER_LEN..];
    if entries_bytes.len() % ENTRY_LEN != 0 {
        return Err("ragged entry table".into());
    }
    let count = entries_bytes.len() / ENTRY_LEN;
    let (len, total_blocks, zero_blocks) = (f[5], f[6], f[7]);
    if count as u64 + zero_blocks > total_blocks {
        return Err("block counts disagree".into());
    }
    let entries = entries_bytes
        .chunks_exact(ENTRY_LEN)
        .map(|c| (u64_at(c, 0), u64_at(c, 8)))
        .collect();
    Ok(ImageDigests {
        len,
        total_blocks,
        zero_blocks,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        fs::write(&img, b"x").unwrap();
        let stamp = FileStamp::of(&img).unwrap();
        let cache = DigestCache::new(dir.path().join("cache"));
        let d = ImageDigests {
            len: 8192,
            total_blocks: 2,
            zero_blocks: 1,
            entries: vec![(42, 4096)],
        };
        cache.store("a", &stamp, 4096, &d).unwrap();
        assert_eq!(cache.load("a", &stamp, 4096), Some(d.clone()));
        assert_eq!(cache.load("a", &stamp, 512), None);
        assert_eq!(cache.load("b", &stamp, 4096), None);
        let mut other = stamp;
        other.mtime_nsec += 1;
        assert_eq!(cache.load("a", &other, 4096), None);
        // Flip one byte of the stored file: rejected by the checksum.
        let (name, _) = cache.file_for("a");
        let path = dir.path().join("cache").join(name);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.load("a", &stamp, 4096), None);
        fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(cache.load("a", &stamp, 4096), None);
        cache.forget("a").unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn never_writes_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        fs::write(&img, b"x").unwrap();
        let stamp = FileStamp::of(&img).unwrap();
        let cache_dir = dir.path().join("cache");
        fs::create_dir(&cache_dir).unwrap();
        let cache = DigestCache::new(cache_dir.clone());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let (name, _) = cache.file_for("a");
        std::os::unix::fs::symlink(
            &victim,
            cache_dir.join(format!("{name}.tmp{}", std::process::id())),
        )
        .unwrap();
        let d = ImageDigests {
            len: 4096,
            total_blocks: 1,
            zero_blocks: 0,
            entries: vec![(1, 0)],
        };
        let e = cache.store("a", &stamp, 4096, &d).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(&victim, cache_dir.join(&name)).unwrap();
        assert_eq!(cache.load("a", &stamp, 4096), None);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }
}
