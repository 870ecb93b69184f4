//! Files that cbt creates inside a directory (outputs, their temporary and
//! side files, digest cache files), opened relative to a handle of that
//! directory and never through a symbolic link.
//!
//! A data directory may be writable by others, or hold a link planted by
//! mistake: `create(true).truncate(true)` on `DIR/.x.cbt-partial` would
//! follow a link there and overwrite whatever it points at. Every open here
//! takes one path component (no `/`, no `..`), resolves it with `openat2`
//! and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it
//! (else `openat` with `O_NOFOLLOW`, which is the same for one component),
//! and checks the result is a regular file. Renames and removals use the
//! same directory handle, and neither follows a link.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, CWD};

use crate::error::{Error, Result};

/// An open directory that files are created in and renamed within.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is at a name inside a [`Dir`] (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A regular file of this many bytes.
    File(u64),
    /// A symbolic link, directory, device, socket or fifo.
    Other,
}

impl Dir {
    /// Opens the directory at `path` (which the operator chose, so links in
    /// it are followed; only names inside it are guarded).
    pub fn open(path: &Path) -> Result<Dir> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, "open directory", e.into()))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory that holds `file`.
    pub fn of(file: &Path) -> Result<Dir> {
        Dir::open(file.parent().unwrap_or(Path::new(".")))
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `name` (for messages and for readers that open by
    /// path a file this directory created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn check_name<'n>(&self, name: &'n str) -> Result<&'n str> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(Error::Config(format!(
                "{}: {name:?} is not a plain file name",
                self.path.display()
            )));
        }
        Ok(name)
    }

    /// What is at `name`, without following a link.
    pub fn entry(&self, name: &str) -> Result<Entry> {
        let name = self.check_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Entry::File(u64::try_from(st.st_size).unwrap_or(0)))
            }
            Ok(_) => Ok(Entry::Other),
            Err(rustix::io::Errno::NOENT) => Ok(Entry::Missing),
            Err(e) => Err(Error::io(self.join(name), "inspect", e.into())),
        }
    }

    fn open_at(&self, name: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.fd, name, flags, mode, resolve) {
            // Older kernels (before 5.6) and some seccomp filters lack openat2.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                rustix::fs::openat(&self.fd, name, flags, mode).map_err(Into::into)
            }
            r => r.map_err(Into::into),
        }
    }

    fn refuse(&self, name: &str, op: &'static str, e: io::Error) -> Error {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            Error::NotRegular {
                path: self.join(name),
                reason: "is a symbolic link; cbt does not write or read through links in this directory"
                    .into(),
            }
        } else {
            Error::io(self.join(name), op, e)
        }
    }

    fn checked(&self, name: &str, fd: OwnedFd) -> Result<File> {
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(self.join(name), "inspect", e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(Error::NotRegular {
                path: self.join(name),
                reason: "is not a regular file".into(),
            });
        }
        Ok(File::from(fd))
    }

    /// Creates `name`, which must not exist (`O_EXCL`), for reading and writing.
    pub fn create_new(&self, name: &str) -> Result<File> {
        let name = self.check_name(name)?;
        let fd = self
            .open_at(
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    // Something appeared between our check and the create:
                    // say what, rather than "file exists".
                    match self.entry(name) {
                        Ok(Entry::Other) => Error::NotRegular {
                            path: self.join(name),
                            reason: "exists and is not a regular file".into(),
                        },
                        _ => Error::io(self.join(name), "create", e),
                    }
                } else {
                    self.refuse(name, "create", e)
                }
            })?;
        self.checked(name, fd)
    }

    /// Creates `name` afresh: an old regular file there is removed first; a
    /// link or anything else there is refused with an error naming it.
    pub fn create_replacing(&self, name: &str) -> Result<File> {
        match self.entry(name)? {
            Entry::Missing => {}
            Entry::File(_) => self.remove(name)?,
            Entry::Other => {
                return Err(Error::NotRegular {
                    path: self.join(name),
                    reason: "exists and is not a regular file (a symbolic link?); remove it".into(),
                })
            }
        }
        self.create_new(name)
    }

    /// Opens the regular file `name` (read-only, or read-write), refusing
    /// links; `Ok(None)` when there is nothing at `name`.
    pub fn open_existing(&self, name: &str, write: bool) -> Result<Option<File>> {
        let name = self.check_name(name)?;
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        match self.open_at(name, access, Mode::empty()) {
            Ok(fd) => self.checked(name, fd).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(name, "open", e)),
        }
    }

    /// Removes `name` (a link itself, never its target).
    pub fn remove(&self, name: &str) -> Result<()> {
        let name = self.check_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io(self.join(name), "remove", e.into())),
        }
    }

    /// Renames `from` to `to` inside this directory (atomic; a link at `to`
    /// is replaced, not followed).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.check_name(from)?, self.check_name(to)?);
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|e| Error::io(self.join(to), "rename", e.into()))
    }

    /// Renames `from` to `to` inside this directory unless `to` exists:
    /// true if renamed, false if `to` was there (left as it was). Where the
    /// filesystem cannot refuse to replace, `to` is replaced.
    pub fn rename_no_replace(&self, from: &str, to: &str) -> Result<bool> {
        let (from, to) = (self.check_name(from)?, self.check_name(to)?);
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                rustix::fs::renameat(&self.fd, from, &self.fd, to)
                    .map(|()| true)
                    .map_err(|e| Error::io(self.join(to), "rename", e.into()))
            }
            Err(e) => Err(Error::io(self.join(to), "rename", e.into())),
        }
    }

    /// Syncs the directory (so a rename in it survives a crash).
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(self.fd.as_fd()).map_err(|e| Error::io(&self.path, "sync directory", e.into()))
    }
}

/// The file name of `path` as UTF-8, or an error naming the path.
pub fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("{}: not a file name cbt can write", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    #[test]
    fn creates_and_replaces_regular_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        dir.create_new("a").unwrap().write_all(b"one").unwrap();
        assert!(dir.create_new("a").is_err(), "O_EXCL");
        dir.create_replacing("a").unwrap().write_all(b"two").unwrap();
        let mut s = String::new();
        dir.open_existing("a", false)
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "two");
        assert_eq!(dir.entry("a").unwrap(), Entry::File(3));
        dir.rename("a", "b").unwrap();
        assert_eq!(dir.entry("a").unwrap(), Entry::Missing);
        assert!(dir.open_existing("a", false).unwrap().is_none());
        dir.remove("b").unwrap();
        dir.remove("b").unwrap();
    }

    #[test]
    fn rename_no_replace_keeps_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        dir.create_new("first").unwrap().write_all(b"first").unwrap();
        dir.create_new("second").unwrap().write_all(b"second").unwrap();
        assert!(dir.rename_no_replace("first", "target").unwrap());
        assert!(!dir.rename_no_replace("second", "target").unwrap());
        assert_eq!(std::fs::read(d.path().join("target")).unwrap(), b"first");
        assert_eq!(dir.entry("second").unwrap(), Entry::File(6));
    }

    #[test]
    fn never_follows_a_planted_link() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        symlink(&victim, data.join(".x.cbt-partial")).unwrap();
        let dir = Dir::open(&data).unwrap();
        assert_eq!(dir.entry(".x.cbt-partial").unwrap(), Entry::Other);
        for e in [
            dir.create_replacing(".x.cbt-partial").unwrap_err(),
            dir.create_new(".x.cbt-partial").unwrap_err(),
            dir.open_existing(".x.cbt-partial", true).unwrap_err(),
        ] {
            assert!(matches!(e, Error::NotRegular { .. }), "{e}");
            assert!(e.to_string().contains(".x.cbt-partial"), "{e}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // Renaming over a link replaces the link, and removing it leaves the target.
        dir.create_new("new").unwrap();
        symlink(&victim, data.join("final")).unwrap();
        dir.rename("new", "final").unwrap();
        assert_eq!(dir.entry("final").unwrap(), Entry::File(0));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn refuses_names_that_leave_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        for bad in ["", ".", "..", "../x", "a/b"] {
            assert!(dir.create_new(bad).is_err(), "{bad:?}");
        }
    }
}
