//! Read-only access to a guest's files without mounting anything: a small
//! [`GuestFs`] trait with an ext2/3/4 implementation over an [`Image`]
//! (through `ext4-view`, reading at the partition's offset) and a host
//! directory implementation (a chroot-like tree, used by tests and to
//! describe an unpacked root).
//!
//! Paths are absolute byte strings in the guest. The trait's operations
//! never follow a symlink in the last component and expect the earlier
//! components to be real directories; [`Resolver`] turns any guest path
//! into such a path, following symlinks inside the guest (an absolute
//! link target is relative to the guest's root, never to the host's).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use cbt_core::{Error, Image, Result};

/// Most symlinks followed while resolving one path (Linux allows 40).
const MAX_SYMLINKS: usize = 40;
/// Linux's PATH_MAX: no valid symlink target is longer.
const MAX_LINK_TARGET: u64 = 4096;
/// The longest path ext4-view resolves (its `MAX_PATH_LEN`).
const EXT4_VIEW_MAX_PATH: usize = 4096;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// What a special file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A Unix socket (meaningless once its listener is gone).
    Socket,
}

impl SpecialKind {
    /// The kind of an entry with `mode` (type bits included); `None` for
    /// a file, directory or symlink.
    fn of_mode(mode: u32) -> Option<SpecialKind> {
        match mode & 0o170_000 {
            0o010_000 => Some(SpecialKind::Fifo),
            0o020_000 => Some(SpecialKind::CharDevice),
            0o060_000 => Some(SpecialKind::BlockDevice),
            0o140_000 => Some(SpecialKind::Socket),
            _ => None,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            SpecialKind::Fifo => "fifo",
            SpecialKind::CharDevice => "character device",
            SpecialKind::BlockDevice => "block device",
            SpecialKind::Socket => "socket",
        }
    }
}

/// What [`GuestFs::lstat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The entry's kind.
    pub kind: Kind,
    /// Size in bytes.
    pub len: u64,
    /// Permission and type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds since the epoch and nanoseconds.
    pub mtime: (i64, u32),
    /// For [`Kind::Other`], what it is.
    pub special: Option<SpecialKind>,
}

/// A read-only guest filesystem.
pub trait GuestFs {
    /// A name for messages, e.g. `disk.img (partition 1 at 1048576, ext4)`.
    fn label(&self) -> &str;
    /// Metadata of `path` without following a final symlink; `None` if it does not exist.
    fn lstat(&self, path: &[u8]) -> Result<Option<Meta>>;
    /// The target of the symlink at `path`.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>>;
    /// The entries of directory `path` (without `.` and `..`), sorted by name.
    fn list_dir(&self, path: &[u8]) -> Result<Vec<(Vec<u8>, Kind)>>;
    /// A reader of the regular file at `path`.
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>>;
    /// The longest path this reader can reach, if it has a limit.
    fn max_path_len(&self) -> Option<usize> {
        None
    }

    /// The error for a defect found at guest path `path`.
    fn error(&self, path: &[u8], reason: String) -> Error {
        Error::malformed(guest_name(self.label(), path), reason)
    }
}

/// `label:/guest/path`, the name of a guest file in messages.
pub fn guest_name(label: &str, path: &[u8]) -> PathBuf {
    PathBuf::from(format!("{label}:{}", String::from_utf8_lossy(path)))
}

/// Joins a directory and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + name.len() + 1);
    p.extend_from_slice(dir);
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Splits `path` into its parent directory and last component.
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let trimmed = match path.iter().rposition(|&b| b != b'/') {
        Some(e) => &path[..=e],
        None => return (b"/", b""),
    };
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (b"/", trimmed),
    }
}

/// Resolves guest paths to symlink-free paths, remembering directories.
pub struct Resolver<'a> {
    fs: &'a dyn GuestFs,
    dirs: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Resolver<'a> {
    /// A resolver over `fs`.
    pub fn new(fs: &'a dyn GuestFs) -> Self {
        Resolver {
            fs,
            dirs: HashMap::new(),
        }
    }

    /// The symlink-free path of `path`, following a final symlink if
    /// `follow_last`; `None` if some component does not exist (or a
    /// non-final component is not a directory).
    pub fn resolve(&mut self, path: &[u8], follow_last: bool) -> Result<Option<Vec<u8>>> {
        resolve(self.fs, path, follow_last)
    }

    /// Like [`Resolver::resolve`] without following the last component,
    /// but tolerates a missing last component: the parent directory is
    /// resolved (and cached) and the name appended. This is how package
    /// file lists are matched against the filesystem (merged `/usr`:
    /// `/bin/sh` is found at `/usr/bin/sh`).
    pub fn canonical(&mut self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        let (dir, name) = split_last(path);
        if name.is_empty() {
            return Ok(Some(b"/".to_vec()));
        }
        if name == b"." || name == b".." {
            return self.resolve(path, false);
        }
        let dir = match self.dirs.get(dir) {
            Some(d) => d.clone(),
            None => {
                let r = resolve(self.fs, dir, true)?;
                self.dirs.insert(dir.to_vec(), r.clone());
                r
            }
        };
        Ok(dir.map(|d| join(&d, name)))
    }
}

fn resolve(fs: &dyn GuestFs, path: &[u8], follow_last: bool) -> Result<Option<Vec<u8>>> {
    let mut pending: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0usize;
    while let Some(comp) = pending.pop() {
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = join(&to_path(&done), &comp);
        let Some(meta) = fs.lstat(&here)? else {
            return Ok(None);
        };
        let last = pending.is_empty();
        match meta.kind {
            Kind::Symlink if !last || follow_last => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(fs.error(path, "too many levels of symbolic links".into()));
                }
                let target = fs.read_link(&here)?;
                if target.starts_with(b"/") {
                    done.clear();
                }
                pending.extend(components(&target).rev().map(<[u8]>::to_vec));
            }
            Kind::Dir => done.push(comp),
            _ if last => done.push(comp),
            _ => return Ok(None),
        }
    }
    Ok(Some(to_path(&done)))
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn to_path(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b"/".to_vec();
    }
    let mut p = Vec::new();
    for c in comps {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    p
}

/// Reads the whole regular file at `path` (symlinks followed), or `None`
/// if it does not exist. A file larger than `max` bytes is an error.
pub fn read_file(fs: &dyn GuestFs, path: &[u8], max: u64) -> Result<Option<Vec<u8>>> {
    let Some(real) = resolve(fs, path, true)? else {
        return Ok(None);
    };
    let Some(meta) = fs.lstat(&real)? else {
        return Ok(None);
    };
    if meta.kind != Kind::File {
        return Ok(None);
    }
    if meta.len > max {
        return Err(fs.error(path, format!("{} bytes, more than the {max} accepted", meta.len)));
    }
    let mut data = Vec::with_capacity(meta.len as usize);
    fs.open(&real)?
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(guest_name(fs.label(), path), "read", e))?;
    if data.len() as u64 > max {
        return Err(fs.error(path, format!("more than the {max} bytes accepted")));
    }
    Ok(Some(data))
}

/// An ext2/3/4 filesystem read through `ext4-view`.
pub struct Ext4Fs {
    fs: ext4_view::Ext4,
    label: String,
}

/// A window of an image (a partition) as `ext4-view` wants to read it.
struct ImageWindow {
    image: Arc<dyn Image>,
    offset: u64,
    len: u64,
}

impl ext4_view::Ext4Read for ImageWindow {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let end = start.checked_add(dst.len() as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(format!(
                "read of {} bytes at {start} is past the end of the {}-byte filesystem",
                dst.len(),
                self.len
            )
            .into());
        }
        self.image
            .read_at(dst, self.offset + start)
            .map_err(|e| Box::new(e) as _)
    }
}

/// Refuses a superblock whose group count cannot fit in the filesystem
/// before ext4-view sees it: ext4-view 1.0 allocates the table of group
/// descriptors from the superblock's block count (high half included, 64-bit
/// feature or not) and aborts the process when that is absurd (found by the
/// `guest_image` fuzz target: 1.6e9 groups, a 24 GiB allocation). A real
/// filesystem holds at least one block of 1 KiB per group, so its
/// descriptors (at most 64 bytes each) always fit in it.
fn check_group_count(image: &dyn Image, offset: u64, len: u64, label: &str) -> Result<()> {
    let mut sb = [0u8; 1024];
    if len < 2048 || image.read_at(&mut sb, offset + 1024).is_err() {
        return Ok(()); // ext4-view reports what is wrong
    }
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Ok(()); // not ext*: ext4-view says so
    }
    // ext4-view caches several blocks up front: a 2 GiB block size would
    // abort the process. ext4's largest block size is 64 KiB (log 6).
    let log_block_size = u32_at(0x18);
    if log_block_size > 6 {
        return Err(Error::malformed(
            label,
            format!("ext4: block size 1024 << {log_block_size} is larger than ext4's 64 KiB"),
        ));
    }
    let blocks = u64::from(u32_at(0x150)) << 32 | u64::from(u32_at(0x4));
    let (first, per_group) = (u64::from(u32_at(0x14)), u64::from(u32_at(0x20)));
    let groups = match per_group {
        0 => None,
        n => Some(blocks.saturating_sub(first).div_ceil(n)),
    };
    match groups {
        Some(g) if g.saturating_mul(64) <= len => Ok(()),
        _ => Err(Error::malformed(
            label,
            format!(
                "ext4: the superblock's {blocks} blocks in groups of {per_group} cannot fit in the {len}-byte filesystem"
            ),
        )),
    }
}

impl Ext4Fs {
    /// Loads the ext2/3/4 filesystem of `len` bytes at `offset` of `image`.
    pub fn load(image: Arc<dyn Image>, offset: u64, len: u64, label: String) -> Result<Ext4Fs> {
        check_group_count(image.as_ref(), offset, len, &label)?;
        let window = ImageWindow { image, offset, len };
        let fs = ext4_view::Ext4::load(Box::new(window))
            .map_err(|e| Error::malformed(&label, format!("ext4: {e}")))?;
        Ok(Ext4Fs { fs, label })
    }

    fn fail(&self, path: &[u8], e: ext4_view::Ext4Error) -> Error {
        match e {
            ext4_view::Ext4Error::Io(io) => {
                Error::malformed(guest_name(&self.label, path), format!("read failed: {io}"))
            }
            other => self.error(path, format!("ext4: {other}")),
        }
    }
}

fn ext4_kind(t: ext4_view::FileType) -> Kind {
    if t.is_regular_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

fn ext4_special(t: ext4_view::FileType) -> Option<SpecialKind> {
    if t.is_fifo() {
        Some(SpecialKind::Fifo)
    } else if t.is_char_dev() {
        Some(SpecialKind::CharDevice)
    } else if t.is_block_dev() {
        Some(SpecialKind::BlockDevice)
    } else if t.is_socket() {
        Some(SpecialKind::Socket)
    } else {
        None
    }
}

impl GuestFs for Ext4Fs {
    fn label(&self) -> &str {
        &self.label
    }

    fn lstat(&self, path: &[u8]) -> Result<Option<Meta>> {
        match self.fs.symlink_metadata(path) {
            Ok(m) => Ok(Some(Meta {
                kind: ext4_kind(m.file_type()),
                len: m.len(),
                mode: u32::from(m.mode()),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.modified().seconds(), m.modified().nanoseconds()),
                special: ext4_special(m.file_type()),
            })),
            Err(ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory) => Ok(None),
            Err(e) => Err(self.fail(path, e)),
        }
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        // ext4-view reads a long symlink's target whole, allocating the
        // inode's size first: a damaged inode would abort the process.
        let len = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| self.fail(path, e))?
            .len();
        if len > MAX_LINK_TARGET {
            return Err(self.error(
                path,
                format!("symlink target of {len} bytes is longer than {MAX_LINK_TARGET}"),
            ));
        }
        self.fs
            .read_link(path)
            .map(|p| p.as_ref().to_vec())
            .map_err(|e| self.fail(path, e))
    }

    fn list_dir(&self, path: &[u8]) -> Result<Vec<(Vec<u8>, Kind)>> {
        let mut out = Vec::new();
        for entry in self.fs.read_dir(path).map_err(|e| self.fail(path, e))? {
            let entry = entry.map_err(|e| self.fail(path, e))?;
            let name = entry.file_name();
            let name = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = entry.file_type().map(ext4_kind).map_err(|e| self.fail(path, e))?;
            out.push((name.to_vec(), kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let file = self.fs.open(path).map_err(|e| self.fail(path, e))?;
        Ok(Box::new(Ext4Reader { file }))
    }

    /// ext4-view resolves whole paths and refuses one longer than 4096 bytes.
    fn max_path_len(&self) -> Option<usize> {
        Some(EXT4_VIEW_MAX_PATH)
    }
}

struct Ext4Reader {
    file: ext4_view::File,
}

impl Read for Ext4Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file
            .read_bytes(buf)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// A host directory seen as a guest's root.
///
/// Every operation walks from a descriptor of the root, one component at
/// a time with `openat` (no symlink followed): a guest path may be longer
/// than the host's PATH_MAX (4096), and a symlink inside the tree must
/// never lead the walk out of it. The directory last walked to is kept,
/// so that listing a directory and then reading its entries, as the
/// manifest does, opens it once.
pub struct HostDirFs {
    root: Arc<OwnedFd>,
    label: String,
    last_dir: Mutex<Option<(Vec<u8>, Arc<OwnedFd>)>>,
}

impl HostDirFs {
    /// The tree under `root`.
    pub fn new(root: &Path) -> Result<HostDirFs> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => Error::malformed(root, "not a directory"),
            e => Error::io(root, "open", e.into()),
        })?;
        Ok(HostDirFs {
            root: Arc::new(fd),
            label: root.display().to_string(),
            last_dir: Mutex::new(None),
        })
    }

    fn io(&self, path: &[u8], op: &'static str, e: impl Into<std::io::Error>) -> Error {
        Error::io(guest_name(&self.label, path), op, e.into())
    }

    /// The directory `dir` (a guest path), walked to from the root without
    /// following symlinks.
    fn dir(&self, dir: &[u8]) -> std::result::Result<Arc<OwnedFd>, Errno> {
        if let Ok(last) = self.last_dir.lock() {
            if let Some((_, fd)) = last.as_ref().filter(|(p, _)| p.as_slice() == dir) {
                return Ok(Arc::clone(fd));
            }
        }
        let mut fd = Arc::clone(&self.root);
        for name in components(dir) {
            let next = rustix::fs::openat(
                &*fd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            fd = Arc::new(next);
        }
        if let Ok(mut last) = self.last_dir.lock() {
            *last = Some((dir.to_vec(), Arc::clone(&fd)));
        }
        Ok(fd)
    }

    /// The parent directory of `path` and its last component (`.` for the root).
    fn parent<'p>(&self, path: &'p [u8]) -> std::result::Result<(Arc<OwnedFd>, &'p [u8]), Errno> {
        let (dir, name) = split_last(path);
        if name.is_empty() {
            return Ok((Arc::clone(&self.root), b"."));
        }
        Ok((self.dir(dir)?, name))
    }
}

/// Errors that mean "no such entry" to the trait: missing, or a
/// component that is not a directory (or is a symlink, not followed).
fn absent(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}

fn host_kind(mode: u32) -> Kind {
    match rustix::fs::FileType::from_raw_mode(mode) {
        rustix::fs::FileType::RegularFile => Kind::File,
        rustix::fs::FileType::Directory => Kind::Dir,
        rustix::fs::FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

impl GuestFs for HostDirFs {
    fn label(&self) -> &str {
        &self.label
    }

    fn lstat(&self, path: &[u8]) -> Result<Option<Meta>> {
        let st = match self
            .parent(path)
            .and_then(|(dir, name)| rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW))
        {
            Ok(st) => st,
            Err(e) if absent(e) => return Ok(None),
            Err(e) => return Err(self.io(path, "stat", e)),
        };
        Ok(Some(Meta {
            kind: host_kind(st.st_mode),
            len: st.st_size as u64,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec.clamp(0, 999_999_999) as u32),
            special: SpecialKind::of_mode(st.st_mode),
        }))
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.parent(path)
            .and_then(|(dir, name)| rustix::fs::readlinkat(&*dir, name, Vec::new()))
            .map(|t| t.into_bytes())
            .map_err(|e| self.io(path, "readlink", e))
    }

    fn list_dir(&self, path: &[u8]) -> Result<Vec<(Vec<u8>, Kind)>> {
        let dir = self.dir(path).map_err(|e| self.io(path, "list", e))?;
        // A descriptor of its own: reading moves the directory's offset.
        let fd = rustix::fs::openat(
            &*dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(path, "list", e))?;
        let mut entries = rustix::fs::Dir::new(fd).map_err(|e| self.io(path, "list", e))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| self.io(path, "list", e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = name.to_vec();
            let kind = match entry.file_type() {
                rustix::fs::FileType::Unknown => {
                    let st = rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| self.io(&join(path, &name), "stat", e))?;
                    host_kind(st.st_mode)
                }
                t => host_kind(t.as_raw_mode()),
            };
            out.push((name, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let fd = self
            .parent(path)
            .and_then(|(dir, name)| {
                rustix::fs::openat(
                    &*dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            })
            .map_err(|e| self.io(path, "open", e))?;
        Ok(Box::new(std::fs::File::from(fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn split_and_join() {
        assert_eq!(split_last(b"/usr/bin/sh"), (&b"/usr/bin"[..], &b"sh"[..]));
        assert_eq!(split_last(b"/sh"), (&b"/"[..], &b"sh"[..]));
        assert_eq!(split_last(b"/"), (&b"/"[..], &b""[..]));
        assert_eq!(join(b"/", b"etc"), b"/etc");
        assert_eq!(join(b"/etc", b"x"), b"/etc/x");
    }

    #[test]
    fn resolves_inside_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("usr/bin/sh"), b"x").unwrap();
        std::fs::write(r.join("usr/lib/os-release"), b"ID=debian\n").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        // Absolute targets are relative to the guest root, not the host's.
        symlink("/usr/lib/os-release", r.join("etc/os-release")).unwrap();
        symlink("../../../../../etc/loop", r.join("etc/loop")).unwrap();
        let fs = HostDirFs::new(r).unwrap();
        let mut res = Resolver::new(&fs);
        assert_eq!(res.resolve(b"/bin/sh", true).unwrap().unwrap(), b"/usr/bin/sh");
        assert_eq!(
            res.canonical(b"/bin/missing").unwrap().unwrap(),
            b"/usr/bin/missing"
        );
        assert_eq!(res.canonical(b"/nodir/x").unwrap(), None);
        assert_eq!(
            res.resolve(b"/etc/os-release", false).unwrap().unwrap(),
            b"/etc/os-release"
        );
        assert_eq!(
            read_file(&fs, b"/etc/os-release", 100).unwrap().unwrap(),
            b"ID=debian\n"
        );
        assert!(read_file(&fs, b"/etc/os-release", 3).is_err());
        let e = res.resolve(b"/etc/loop", true).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }
}
