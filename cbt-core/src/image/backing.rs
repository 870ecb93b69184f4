//! Where the backing files of a qcow2 image may be.
//!
//! A qcow2 header names its backing file, and whoever wrote the image chose
//! that name. A local command follows it as qemu-img does: the user named
//! the image. A daemon reads images on behalf of a peer (exports, pushed
//! images, seed roots), and a planted `-b /etc/shadow` would serve that
//! file to the peer or pull it into the index: there, backing files must
//! lie inside the directories the daemon was configured with, and they are
//! opened beneath those directories (`openat2(RESOLVE_BENEATH)`), so that
//! no symbolic link leads out of them either.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, FormatDriverBuilder, StorageOpenOptions};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};

/// Where backing files may be.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backing {
    /// Wherever the image says (the user named the image).
    #[default]
    Anywhere,
    /// Only inside these directories (canonical paths), without following
    /// links out of them.
    Within(Arc<[PathBuf]>),
}

impl Backing {
    /// Backing files only inside `roots` (directories; ones that cannot be
    /// resolved contain nothing).
    pub fn within(roots: &[PathBuf]) -> Backing {
        let roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        Backing::Within(roots.into())
    }

    /// The root that contains `path` (canonical), and the path inside it.
    fn root_of<'p>(&self, path: &'p Path) -> Option<(&Path, &'p Path)> {
        match self {
            Backing::Anywhere => None,
            Backing::Within(roots) => roots
                .iter()
                .find_map(|r| path.strip_prefix(r).ok().map(|rest| (r.as_path(), rest))),
        }
    }

    /// True when a file at canonical `path` may be read.
    pub fn allows(&self, path: &Path) -> bool {
        matches!(self, Backing::Anywhere) || self.root_of(path).is_some()
    }

    /// Where the backing file `name` of the image `image` is: relative
    /// names are taken relative to the image's directory. Under
    /// [`Backing::Within`], `..` is resolved by name inside the image's
    /// canonical directory, and a result outside the roots is refused.
    pub fn resolve(&self, image: &Path, name: &Path) -> Result<PathBuf> {
        let dir = image.parent().unwrap_or(Path::new("."));
        let joined = dir.join(name);
        if matches!(self, Backing::Anywhere) {
            return Ok(joined);
        }
        let dir = dir.canonicalize().map_err(|e| Error::io(dir, "resolve", e))?;
        let path = normalize(&dir.join(name));
        if self.root_of(&path).is_none() {
            return Err(self.outside(image, &joined));
        }
        Ok(path)
    }

    /// Opens the backing file `path` of `image` (as [`Backing::resolve`]
    /// gave it) for reading: beneath its root under [`Backing::Within`].
    pub fn open(&self, image: &Path, path: &Path) -> Result<File> {
        match self {
            Backing::Anywhere => File::open(path).map_err(|e| Error::io(path, "open backing file", e)),
            Backing::Within(_) => {
                let (root, rest) = self.root_of(path).ok_or_else(|| self.outside(image, path))?;
                open_beneath(root, rest).map_err(|e| match e.raw_os_error() {
                    // A link that leads out of the root.
                    Some(libc_exdev) if libc_exdev == rustix::io::Errno::XDEV.raw_os_error() => {
                        self.outside(image, path)
                    }
                    _ => Error::io(path, "open backing file", e),
                })
            }
        }
    }

    fn outside(&self, image: &Path, backing: &Path) -> Error {
        let roots = match self {
            Backing::Anywhere => String::new(),
            Backing::Within(r) => r
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        Error::BackingOutside {
            path: image.to_path_buf(),
            backing: backing.to_path_buf(),
            roots,
        }
    }
}

/// `path` with `.` and `..` removed by name (no links are looked at: the
/// open beneath the root is what refuses links leading out).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Opens `rest` (relative) beneath the directory `root`, refusing any
/// resolution that leaves it (`..`, absolute links, links out).
fn open_beneath(root: &Path, rest: &Path) -> io::Result<File> {
    let dir = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rest = if rest.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rest
    };
    let fd = rustix::fs::openat2(
        &dir,
        rest,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(File::from(fd))
}

/// imago's gate for the backing files it opens itself: through
/// [`Backing::open`], so that the rules hold for every layer.
#[derive(Debug, Clone)]
pub(crate) struct BackingGate {
    pub(crate) backing: Backing,
    /// The image whose chain is being opened (for messages).
    pub(crate) image: PathBuf,
}

impl ImplicitOpenGate<ImagoFile> for BackingGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        Ok(FormatAccess::new(builder.open(self.clone())?))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<ImagoFile> {
        let path = options
            .get_filename()
            .map(Path::to_path_buf)
            .ok_or_else(|| io::Error::other("a backing file without a name"))?;
        if options.get_writable() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "backing files are read only",
            ));
        }
        let path = match &self.backing {
            Backing::Anywhere => path,
            // imago joins the name to the image's directory as given
            // (maybe relative, maybe through links): resolve that
            // directory as `resolve` does, so the roots compare.
            Backing::Within(_) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                let dir = dir.canonicalize()?;
                normalize(&dir.join(path.file_name().unwrap_or_default()))
            }
        };
        let file = self
            .backing
            .open(&self.image, &path)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
        ImagoFile::from_open_file(file, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_refuses_names_and_links_that_lead_out() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("base.raw"), b"base").unwrap();
        std::fs::write(d.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("link.raw")).unwrap();
        std::os::unix::fs::symlink("base.raw", root.join("inner.raw")).unwrap();
        let image = root.join("sub/top.qcow2");
        let b = Backing::within(std::slice::from_ref(&root));

        let inside = b.resolve(&image, Path::new("../base.raw")).unwrap();
        assert_eq!(std::fs::read_to_string(inside.clone()).unwrap(), "base");
        assert!(b.open(&image, &inside).is_ok());
        // A link inside the root to a file inside it is fine.
        let inner = b.resolve(&image, Path::new("../inner.raw")).unwrap();
        assert!(b.open(&image, &inner).is_ok());

        for name in ["../../secret", "/etc/shadow"] {
            let e = b.resolve(&image, Path::new(name)).unwrap_err();
            assert!(matches!(e, Error::BackingOutside { .. }), "{name}: {e}");
            assert!(e.to_string().contains("top.qcow2"), "{e}");
        }
        // A name inside the root that is a link out of it.
        let link = b.resolve(&image, Path::new("../link.raw")).unwrap();
        let e = b.open(&image, &link).unwrap_err();
        assert!(matches!(e, Error::BackingOutside { .. }), "{e}");

        // Locally, anything goes.
        let any = Backing::Anywhere
            .resolve(&image, Path::new("../../secret"))
            .unwrap();
        assert!(Backing::Anywhere.open(&image, &any).is_ok());
    }
}
