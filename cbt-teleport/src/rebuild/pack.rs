//! The user-data pack: a guest's user data as one image, so that the block
//! engine moves it like any other (blocks found anywhere at the
//! destination are not sent, the rest compressed and verified).
//!
//! ```text
//! 0      "CBTUDAT1"  version u32  flags u32  index length u64  BLAKE3(index) [32]
//! 56     index (JSON: files with offsets, directories, symlinks)
//! ...    zero padding to a 4 KiB boundary
//!        each file's content, starting on a 4 KiB boundary, zero padded
//! ```
//!
//! Each file starts on a 4 KiB boundary because ext4 stores files in 4 KiB
//! blocks: a file's blocks in the pack are the blocks it has in any image
//! that holds it, so a destination that has the file (in the candidate, in
//! another image, in a package) reads it locally.
//!
//! The pack crosses the network, so [`PackIndex::parse`] trusts nothing in
//! it: sizes, offsets, counts, paths and ids are bounded and checked
//! before anything is allocated or written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use cbt_core::{Error, Result};

use crate::inspect::{EntryKind, GuestFs, Kind, Manifest, SpecialKind};

const MAGIC: &[u8; 8] = b"CBTUDAT1";
const VERSION: u32 = 1;
/// Header bytes before the index.
const HEADER: u64 = 56;
/// Alignment of every file's content (ext4's block size).
pub const ALIGN: u64 = 4096;
/// Largest index accepted.
const MAX_INDEX_BYTES: u64 = 256 << 20;
/// Most entries (files, directories, symlinks) accepted.
const MAX_ENTRIES: usize = 4_000_000;
/// Longest path or symlink target accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// A regular file of the pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackFile {
    /// Absolute guest path.
    pub path: String,
    /// Where its content starts in the pack.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content, hexadecimal.
    pub blake3: String,
    /// Mode bits (permissions, setuid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
}

/// A directory holding user data, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackDir {
    /// Absolute guest path.
    pub path: String,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: (i64, u32),
}

/// A symlink no package owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackLink {
    /// Absolute guest path.
    pub path: String,
    /// Its target, as stored.
    pub target: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: (i64, u32),
}

/// A named pipe no package owns (no content: made again with mknod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackFifo {
    /// Absolute guest path.
    pub path: String,
    /// Mode bits (permissions).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: (i64, u32),
}

/// What the pack holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    /// Regular files, by offset.
    pub files: Vec<PackFile>,
    /// Directories, by path.
    pub dirs: Vec<PackDir>,
    /// Symlinks, by path.
    pub symlinks: Vec<PackLink>,
    /// Fifos, by path (absent from packs that have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fifos: Vec<PackFifo>,
    /// Entries of the manifest left out, and why: device nodes (their
    /// device numbers cannot be read from an image), sockets, names that
    /// are not UTF-8, paths the reader cannot reach.
    pub skipped: Vec<String>,
}

impl PackIndex {
    /// Bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Reads and checks the index of the pack in `file` (named `label`).
    pub fn parse(file: &File, label: &Path) -> Result<PackIndex> {
        let len = file.metadata().map_err(|e| Error::io(label, "stat", e))?.len();
        let bad = |reason: String| Error::malformed(label, format!("not a usable user-data pack: {reason}"));
        let mut header = [0u8; HEADER as usize];
        if len < HEADER {
            return Err(bad(format!("{len} bytes, shorter than its header")));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| Error::io(label, "read", e))?;
        let index_len = check_header(&header, len).map_err(bad)?;
        let mut json = vec![0u8; index_len as usize];
        file.read_exact_at(&mut json, HEADER)
            .map_err(|e| Error::io(label, "read", e))?;
        decode(&header, &json, len).map_err(bad)
    }

    /// [`PackIndex::parse`] of a pack held in memory (`data` is its start,
    /// `len` its whole length): for tests and fuzzing.
    pub fn parse_bytes(data: &[u8], len: u64) -> std::result::Result<PackIndex, String> {
        let header = data.get(..HEADER as usize).ok_or("shorter than its header")?;
        let index_len = check_header(header, len)?;
        let json = data
            .get(HEADER as usize..(HEADER + index_len) as usize)
            .ok_or("the index is cut short")?;
        decode(header, json, len)
    }

    /// Bounds every entry: paths, ids, and file extents inside the pack,
    /// aligned, in order and not overlapping.
    fn check(&self, data_start: u64, len: u64) -> std::result::Result<(), String> {
        if self.files.len() + self.dirs.len() + self.symlinks.len() + self.fifos.len() + self.skipped.len()
            > MAX_ENTRIES
        {
            return Err("too many entries".into());
        }
        let mut next = data_start;
        for f in &self.files {
            check_path(&f.path)?;
            check_ids(&f.path, f.uid, f.gid, f.mtime)?;
            let end = f.offset.checked_add(f.size).filter(|&e| e <= len);
            if f.offset % ALIGN != 0 || f.offset < next || end.is_none() {
                return Err(format!("{}: content outside the pack or out of order", f.path));
            }
            if f.blake3.len() != 64 || !f.blake3.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("{}: not a BLAKE3 digest", f.path));
            }
            next = f.offset + f.size.div_ceil(ALIGN) * ALIGN;
        }
        for d in &self.dirs {
            check_path(&d.path)?;
            check_ids(&d.path, d.uid, d.gid, d.mtime)?;
        }
        for l in &self.symlinks {
            check_path(&l.path)?;
            check_ids(&l.path, l.uid, l.gid, l.mtime)?;
            if l.target.is_empty() || l.target.len() > MAX_PATH || l.target.contains('\0') {
                return Err(format!("{}: unusable symlink target", l.path));
            }
        }
        for f in &self.fifos {
            check_path(&f.path)?;
            check_ids(&f.path, f.uid, f.gid, f.mtime)?;
        }
        Ok(())
    }
}

/// An absolute path without empty, `.` or `..` components and without NUL.
pub fn check_path(p: &str) -> std::result::Result<(), String> {
    let ok = p.len() <= MAX_PATH
        && p.len() > 1
        && p.starts_with('/')
        && !p.contains('\0')
        && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!("{p:?}: not a clean absolute path"))
    }
}

fn check_ids(path: &str, uid: u32, gid: u32, mtime: (i64, u32)) -> std::result::Result<(), String> {
    // -1 means "unchanged" to chown: never a real owner.
    if uid == u32::MAX || gid == u32::MAX || mtime.1 >= 1_000_000_000 {
        return Err(format!("{path}: impossible owner or time"));
    }
    Ok(())
}

/// Checks magic and version; returns the index length, bounded.
fn check_header(header: &[u8], len: u64) -> std::result::Result<u64, String> {
    if header.len() < HEADER as usize || &header[..8] != MAGIC {
        return Err("wrong magic".into());
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(format!("version {version}, this cbt reads {VERSION}"));
    }
    let index_len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    if index_len > MAX_INDEX_BYTES || HEADER + index_len > len {
        return Err(format!("index of {index_len} bytes does not fit"));
    }
    Ok(index_len)
}

fn decode(header: &[u8], json: &[u8], len: u64) -> std::result::Result<PackIndex, String> {
    if blake3::hash(json).as_bytes()[..] != header[24..56] {
        return Err("the index does not match its checksum".into());
    }
    let index: PackIndex = serde_json::from_slice(json).map_err(|e| format!("index: {e}"))?;
    index.check(data_start(json.len() as u64), len)?;
    Ok(index)
}

fn data_start(index_len: u64) -> u64 {
    (HEADER + index_len).div_ceil(ALIGN) * ALIGN
}

/// Writes the pack of `manifest`'s user data (package-manager state left
/// out) read from `fs` into `out`, and returns its index. Each file is
/// hashed as it is copied and must match the manifest.
pub fn write_pack(fs: &dyn GuestFs, manifest: &Manifest, out: &mut File, label: &Path) -> Result<PackIndex> {
    let mut index = PackIndex::default();
    let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
    let wanted: Vec<_> = manifest
        .files
        .iter()
        .filter(|f| f.kind != EntryKind::PackageState)
        .collect();
    // Offsets first (they only depend on sizes), so the index can be
    // written before the content.
    let mut files = Vec::new();
    for f in wanted {
        if let Some(why) = unusable_name(&f.path) {
            index.skipped.push(format!("{}: {why}", f.path));
            continue;
        }
        let Some(meta) = fs.lstat(f.path.as_bytes())? else {
            index.skipped.push(format!("{}: vanished", f.path));
            continue;
        };
        if meta.kind != Kind::File || meta.len != f.size {
            index
                .skipped
                .push(format!("{}: changed since it was described", f.path));
            continue;
        }
        add_parents(&f.path, &mut dirs);
        files.push(PackFile {
            path: f.path.clone(),
            offset: 0,
            size: f.size,
            blake3: f.blake3.clone(),
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
        });
    }
    for l in &manifest.symlinks {
        if let Some(why) =
            unusable_name(&l.path).or_else(|| l.target.contains('\u{fffd}').then_some("target is not UTF-8"))
        {
            index.skipped.push(format!("{}: {why}", l.path));
            continue;
        }
        if let Some(meta) = fs.lstat(l.path.as_bytes())? {
            add_parents(&l.path, &mut dirs);
            index.symlinks.push(PackLink {
                path: l.path.clone(),
                target: l.target.clone(),
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
            });
        }
    }
    for sp in &manifest.specials {
        if let Some(why) = unusable_name(&sp.path) {
            index.skipped.push(format!("{}: {why}", sp.path));
            continue;
        }
        match sp.kind {
            SpecialKind::Fifo => {
                let Some(meta) = fs.lstat(sp.path.as_bytes())? else {
                    index.skipped.push(format!("{}: vanished", sp.path));
                    continue;
                };
                if meta.special != Some(SpecialKind::Fifo) {
                    index
                        .skipped
                        .push(format!("{}: changed since it was described", sp.path));
                    continue;
                }
                add_parents(&sp.path, &mut dirs);
                index.fifos.push(PackFifo {
                    path: sp.path.clone(),
                    mode: meta.mode & 0o7777,
                    uid: meta.uid,
                    gid: meta.gid,
                    mtime: meta.mtime,
                });
            }
            SpecialKind::CharDevice | SpecialKind::BlockDevice => index.skipped.push(format!(
                "{}: {}: not carried (cbt's ext4 reader cannot read its device number)",
                sp.path,
                sp.kind.name()
            )),
            SpecialKind::Socket => index.skipped.push(format!(
                "{}: socket: not carried (a socket on disk is only a name; its service makes it again)",
                sp.path
            )),
        }
    }
    for u in &manifest.unreadable {
        index.skipped.push(u.clone());
    }
    for path in dirs.into_keys() {
        if let Some(meta) = fs.lstat(path.as_bytes())?.filter(|m| m.kind == Kind::Dir) {
            index.dirs.push(PackDir {
                mode: meta.mode & 0o7777,
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
                path,
            });
        }
    }
    // The index's length fixes where data starts; offsets change the
    // length, so lay out with an upper bound on it and pad.
    index.files = files;
    let digits = serde_json::to_vec(&index).map_err(json_error)?.len() as u64 + 24 * index.files.len() as u64;
    let mut offset = data_start(digits);
    for f in &mut index.files {
        f.offset = offset;
        offset += f.size.div_ceil(ALIGN) * ALIGN;
    }
    let json = serde_json::to_vec(&index).map_err(json_error)?;
    debug_assert!(HEADER + json.len() as u64 <= data_start(digits));
    let mut header = Vec::with_capacity(HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(&json).as_bytes());
    let io = |e| Error::io(label, "write", e);
    out.write_all_at(&header, 0).map_err(io)?;
    out.write_all_at(&json, HEADER).map_err(io)?;
    for f in &index.files {
        copy_in(fs, f, out, label)?;
    }
    out.set_len(offset).map_err(io)?;
    out.sync_all().map_err(io)?;
    Ok(index)
}

/// Why a manifest path cannot be carried, if it cannot.
fn unusable_name(path: &str) -> Option<&'static str> {
    if path.contains('\u{fffd}') {
        Some("name is not UTF-8")
    } else if check_path(path).is_err() {
        Some("not a clean absolute path of at most 4096 bytes")
    } else {
        None
    }
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Config(format!("user-data index: {e}"))
}

fn add_parents(path: &str, dirs: &mut BTreeMap<String, ()>) {
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if parent.is_empty() {
            break;
        }
        dirs.insert(parent.to_string(), ());
        p = parent;
    }
}

/// Copies one file into the pack at its offset, leaving all-zero chunks
/// as holes, and checks its digest.
fn copy_in(fs: &dyn GuestFs, f: &PackFile, out: &mut File, label: &Path) -> Result<()> {
    let mut reader = fs.open(f.path.as_bytes())?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    out.seek(SeekFrom::Start(f.offset))
        .map_err(|e| Error::io(label, "seek", e))?;
    while done < f.size {
        let want = (f.size - done).min(buf.len() as u64) as usize;
        let n = reader
            .read(&mut buf[..want])
            .map_err(|e| fs.error(f.path.as_bytes(), format!("read: {e}")))?;
        if n == 0 {
            return Err(fs.error(f.path.as_bytes(), "shorter than described".into()));
        }
        hasher.update(&buf[..n]);
        if cbt_core::is_zero(&buf[..n]) {
            out.seek(SeekFrom::Current(n as i64))
                .map_err(|e| Error::io(label, "seek", e))?;
        } else {
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(label, "write", e))?;
        }
        done += n as u64;
    }
    if hasher.finalize().to_hex().as_str() != f.blake3 {
        return Err(fs.error(
            f.path.as_bytes(),
            "content differs from its manifest digest".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::HostDirFs;

    fn sample() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("srv/www")).unwrap();
        std::fs::write(root.join("srv/www/index.html"), b"hello").unwrap();
        std::fs::write(root.join("srv/big"), vec![7u8; 10_000]).unwrap();
        let desc = crate::describe_dir(
            &root,
            &crate::DescribeOptions {
                packages: true,
                manifest: true,
                verify: false,
            },
        )
        .unwrap();
        (dir, desc.user_data.unwrap())
    }

    #[test]
    fn a_pack_reads_back_and_a_damaged_one_is_refused() {
        let (dir, manifest) = sample();
        let fs = HostDirFs::new(&dir.path().join("root")).unwrap();
        let path = dir.path().join("pack");
        let mut out = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let index = write_pack(&fs, &manifest, &mut out, &path).unwrap();
        assert_eq!(index.files.len(), 2);
        assert!(index.dirs.iter().any(|d| d.path == "/srv/www"));
        let back = PackIndex::parse(&out, &path).unwrap();
        assert_eq!(back, index);
        let f = back
            .files
            .iter()
            .find(|f| f.path == "/srv/www/index.html")
            .unwrap();
        let mut got = vec![0u8; 5];
        out.read_exact_at(&mut got, f.offset).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(f.offset % ALIGN, 0);

        out.write_all_at(b"x", HEADER + 3).unwrap();
        let err = PackIndex::parse(&out, &path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        out.set_len(20).unwrap();
        assert!(PackIndex::parse(&out, &path).is_err());
    }

    #[test]
    fn unclean_paths_and_overlaps_are_refused() {
        for p in ["relative", "/a/../b", "/a//b", "/", "/a/./b", "/a\0b"] {
            assert!(check_path(p).is_err(), "{p}");
        }
        let file = |offset, size| PackFile {
            path: "/a".into(),
            offset,
            size,
            blake3: "0".repeat(64),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
        };
        let index = |files| PackIndex {
            files,
            ..PackIndex::default()
        };
        assert!(index(vec![file(4096, 10)]).check(4096, 8192).is_ok());
        assert!(index(vec![file(4096, 5000)]).check(4096, 8192).is_err());
        assert!(index(vec![file(4096, 10), file(4096, 10)])
            .check(4096, 8192)
            .is_err());
        assert!(index(vec![file(4097, 10)]).check(4096, 8192).is_err());
        assert!(index(vec![file(0, 10)]).check(4096, 8192).is_err());
    }
}
