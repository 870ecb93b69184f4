//! Writing a user-data pack into a mounted guest root.
//!
//! The root is the guest's, and so are its symlinks: `/var/www` may be a
//! link to `/srv/www`, meaning the guest's `/srv/www`, never the host's.
//! Every path is therefore resolved with `openat2(RESOLVE_IN_ROOT)`, which
//! treats the mount as `/` for absolute links and `..` alike. A file is
//! written under a temporary name in its directory, checked against its
//! digest, given its owner, mode and time, and only then renamed over the
//! final name. The temporary name is short and never derived from the
//! final one (a legal 255-byte name plus a suffix would not be legal).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use cbt_core::{Error, Result};

use super::pack::{PackFifo, PackFile, PackIndex, PackLink};

/// What applying a pack did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Fifos made.
    pub fifos: u64,
    /// Directories given the source's owner, mode and time (created if missing).
    pub dirs: u64,
    /// Entries removed because the source does not have them.
    pub deleted: u64,
}

/// A mounted guest root, opened once; every path below it resolves inside it.
#[derive(Debug)]
pub struct GuestRoot {
    root: OwnedFd,
    path: PathBuf,
    /// Numbers the temporary names.
    next_tmp: AtomicU64,
}

impl GuestRoot {
    /// Opens the directory `path` (not following a symlink there).
    pub fn open(path: &Path) -> Result<GuestRoot> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, "open the guest root", e.into()))?;
        Ok(GuestRoot {
            root,
            path: path.to_path_buf(),
            next_tmp: AtomicU64::new(0),
        })
    }

    fn fail(&self, guest: &str, what: &'static str, e: impl Into<std::io::Error>) -> Error {
        Error::io(self.path.join(guest.trim_start_matches('/')), what, e.into())
    }

    /// The directory `guest` (absolute guest path), resolved inside the root.
    fn dir(&self, guest: &str) -> std::result::Result<OwnedFd, Errno> {
        let rel = guest.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `guest`, created (with its missing parents, mode 755)
    /// if it does not exist.
    fn dir_or_create(&self, guest: &str) -> Result<OwnedFd> {
        match self.dir(guest) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.fail(guest, "open directory", e)),
        }
        let (parent, name) = split(guest);
        let parent_fd = self.dir_or_create(parent)?;
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(self.fail(guest, "create directory", e)),
        }
        self.dir(guest).map_err(|e| self.fail(guest, "open directory", e))
    }

    /// Writes `pack`'s content from `blob` into the root: directories,
    /// files (checked against their digests), symlinks, then the
    /// directories' metadata (last, since adding entries changes mtimes).
    pub fn apply(&self, blob: &File, pack: &PackIndex) -> Result<Applied> {
        let mut done = Applied::default();
        for d in &pack.dirs {
            self.dir_or_create(&d.path)?;
        }
        for f in &pack.files {
            self.write_file(blob, f)?;
            done.files += 1;
            done.bytes += f.size;
        }
        for l in &pack.symlinks {
            self.write_link(l)?;
            done.symlinks += 1;
        }
        for f in &pack.fifos {
            self.write_fifo(f)?;
            done.fifos += 1;
        }
        for d in pack.dirs.iter().rev() {
            let fd = self
                .dir(&d.path)
                .map_err(|e| self.fail(&d.path, "open directory", e))?;
            set_meta(&fd, d.uid, d.gid, Some(d.mode), d.mtime)
                .map_err(|e| self.fail(&d.path, "set owner, mode and time", e))?;
            done.dirs += 1;
        }
        Ok(done)
    }

    /// A new temporary name for a directory entry: `.cbt-PID-N`, short
    /// whatever the final name's length.
    fn temp_name(&self) -> String {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        format!(".cbt-{}-{n}", std::process::id())
    }

    /// Creates an entry under a fresh temporary name in `dir` with
    /// `make`, taking the next name while one exists (a guest file may
    /// bear such a name); returns the name used.
    fn create_temp(
        &self,
        guest: &str,
        what: &'static str,
        mut make: impl FnMut(&str) -> std::result::Result<(), Errno>,
    ) -> Result<String> {
        for _ in 0..1000 {
            let tmp = self.temp_name();
            match make(&tmp) {
                Ok(()) => return Ok(tmp),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.fail(guest, what, e)),
            }
        }
        Err(self.fail(guest, what, Errno::EXIST))
    }

    fn write_file(&self, blob: &File, f: &PackFile) -> Result<()> {
        let (parent, name) = split(&f.path);
        let dir = self.dir_or_create(parent)?;
        let mut fd = None;
        let tmp = self.create_temp(&f.path, "create", |tmp| {
            fd = Some(rustix::fs::openat(
                &dir,
                tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?);
            Ok(())
        })?;
        let Some(fd) = fd else {
            return Err(self.fail(&f.path, "create", Errno::NOENT));
        };
        let result = self.fill(blob, f, File::from(fd)).and_then(|file| {
            set_meta(&file, f.uid, f.gid, Some(f.mode), f.mtime)
                .map_err(|e| self.fail(&f.path, "set owner, mode and time", e))?;
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(|e| self.fail(&f.path, "rename into place", e))
        });
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// Copies `f`'s content from the pack, leaving zero chunks as holes,
    /// and accepts the file only if its digest matches.
    fn fill(&self, blob: &File, f: &PackFile, mut out: File) -> Result<File> {
        let mut buf = vec![0u8; (1 << 20).min(f.size.max(1) as usize)];
        let mut hasher = blake3::Hasher::new();
        let mut done = 0u64;
        while done < f.size {
            let n = (f.size - done).min(buf.len() as u64) as usize;
            blob.read_exact_at(&mut buf[..n], f.offset + done)
                .map_err(|e| Error::io(&self.path, "read the user-data pack", e))?;
            hasher.update(&buf[..n]);
            if cbt_core::is_zero(&buf[..n]) {
                out.set_len(done + n as u64)
                    .map_err(|e| self.fail(&f.path, "extend", e))?;
                std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(done + n as u64))
                    .map_err(|e| self.fail(&f.path, "seek", e))?;
            } else {
                out.write_all(&buf[..n])
                    .map_err(|e| self.fail(&f.path, "write", e))?;
            }
            done += n as u64;
        }
        if hasher.finalize().to_hex().as_str() != f.blake3 {
            return Err(Error::malformed(
                self.path.join(f.path.trim_start_matches('/')),
                "content from the user-data pack does not match its digest",
            ));
        }
        Ok(out)
    }

    fn write_link(&self, l: &PackLink) -> Result<()> {
        let (parent, name) = split(&l.path);
        let dir = self.dir_or_create(parent)?;
        let tmp = self.create_temp(&l.path, "symlink", |tmp| {
            rustix::fs::symlinkat(l.target.as_str(), &dir, tmp)
        })?;
        let result = rustix::fs::chownat(
            &dir,
            tmp.as_str(),
            Some(rustix::fs::Uid::from_raw(l.uid)),
            Some(rustix::fs::Gid::from_raw(l.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .and_then(|()| rustix::fs::utimensat(&dir, tmp.as_str(), &times(l.mtime), AtFlags::SYMLINK_NOFOLLOW))
        .and_then(|()| rustix::fs::renameat(&dir, tmp.as_str(), &dir, name));
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(self.fail(&l.path, "place symlink", e));
        }
        Ok(())
    }

    fn write_fifo(&self, f: &PackFifo) -> Result<()> {
        let (parent, name) = split(&f.path);
        let dir = self.dir_or_create(parent)?;
        let tmp = self.create_temp(&f.path, "mknod", |tmp| {
            rustix::fs::mknodat(&dir, tmp, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        })?;
        let result = rustix::fs::chownat(
            &dir,
            tmp.as_str(),
            Some(rustix::fs::Uid::from_raw(f.uid)),
            Some(rustix::fs::Gid::from_raw(f.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        // Owner first: chown clears setuid and setgid bits.
        .and_then(|()| {
            rustix::fs::chmodat(
                &dir,
                tmp.as_str(),
                Mode::from_raw_mode(f.mode & 0o7777),
                AtFlags::empty(),
            )
        })
        .and_then(|()| rustix::fs::utimensat(&dir, tmp.as_str(), &times(f.mtime), AtFlags::SYMLINK_NOFOLLOW))
        .and_then(|()| rustix::fs::renameat(&dir, tmp.as_str(), &dir, name));
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(self.fail(&f.path, "place fifo", e));
        }
        Ok(())
    }

    /// Removes the file or symlink `guest` (absent is fine).
    pub fn remove(&self, guest: &str) -> Result<bool> {
        let (parent, name) = split(guest);
        let dir = match self.dir(parent) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.fail(guest, "open directory", e)),
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.fail(guest, "remove", e)),
        }
    }

    /// Writes `data` as the file `guest` with `mode`, creating its
    /// directory: for the rebuild's own helpers (policy-rc.d).
    pub fn put(&self, guest: &str, data: &[u8], mode: u32) -> Result<()> {
        self.put_from(guest, &mut &data[..])?;
        self.chmod(guest, mode)
    }

    fn chmod(&self, guest: &str, mode: u32) -> Result<()> {
        let (parent, name) = split(guest);
        let dir = self
            .dir(parent)
            .map_err(|e| self.fail(guest, "open directory", e))?;
        rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(|e| self.fail(guest, "chmod", e))
    }

    /// Streams `src` into the new file `guest` (mode 600), creating its directory.
    pub fn put_from(&self, guest: &str, src: &mut dyn std::io::Read) -> Result<()> {
        let (parent, name) = split(guest);
        let dir = self.dir_or_create(parent)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.fail(guest, "create", e))?;
        let mut file = File::from(fd);
        std::io::copy(src, &mut file).map_err(|e| self.fail(guest, "write", e))?;
        Ok(())
    }

    /// Removes the directory `guest` and the files directly in it (the
    /// rebuild's staging directory; nothing deeper is expected there).
    pub fn remove_tree(&self, guest: &str) -> Result<()> {
        let dir = match self.dir(guest) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.fail(guest, "open directory", e)),
        };
        let mut names = Vec::new();
        let mut entries = rustix::fs::Dir::read_from(&dir).map_err(|e| self.fail(guest, "list", e))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| self.fail(guest, "list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        for name in names {
            rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
                .map_err(|e| self.fail(guest, "remove", e))?;
        }
        let (parent, name) = split(guest);
        let parent = self
            .dir(parent)
            .map_err(|e| self.fail(guest, "open directory", e))?;
        rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(|e| self.fail(guest, "remove", e))
    }

    /// True if `guest` exists (not following a final symlink).
    pub fn exists(&self, guest: &str) -> bool {
        let (parent, name) = split(guest);
        self.dir(parent)
            .and_then(|d| rustix::fs::statat(&d, name, AtFlags::SYMLINK_NOFOLLOW))
            .is_ok()
    }
}

/// (parent, last component) of a clean absolute path; the root's parent is `/`.
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", path),
    }
}

fn times(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: i64::from(mtime.1),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner first: chown clears setuid and setgid bits, so the mode follows.
fn set_meta<Fd: AsFd>(
    fd: Fd,
    uid: u32,
    gid: u32,
    mode: Option<u32>,
    mtime: (i64, u32),
) -> std::result::Result<(), Errno> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    if let Some(mode) = mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))?;
    }
    rustix::fs::futimens(&fd, &times(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("srv")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // A guest link to an absolute path that, followed on the host,
        // would leave the root.
        std::os::unix::fs::symlink(&outside, root.join("srv/www")).unwrap();
        std::fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        let g = GuestRoot::open(&root).unwrap();
        g.put("/srv/www/index.html", b"x", 0o644).unwrap();
        assert!(!outside.join("index.html").exists());
        let inside = root.join(outside.strip_prefix("/").unwrap()).join("index.html");
        assert_eq!(std::fs::read(inside).unwrap(), b"x");
        assert!(g.exists("/srv/www/index.html"));
        assert!(g.remove("/srv/www/index.html").unwrap());
        assert!(!g.remove("/srv/www/index.html").unwrap());
    }

    #[test]
    fn split_paths() {
        assert_eq!(split("/a"), ("/", "a"));
        assert_eq!(split("/a/b/c"), ("/a/b", "c"));
    }
}
