//! Read-only disk images: one trait, [`Image`], with implementations for raw
//! files and block devices, qcow2 (through `imago`, backing chains included)
//! and qcow2 internal snapshots (our own L1/L2 reader).
//!
//! Every image reports the ranges that may hold data, so unallocated and
//! zero regions are skipped without being read.
//!
//! Other formats (VMDK, VHD, VHDX, VDI, QED, LUKS, Parallels) are
//! recognised by their magic and refused (`foreign`), never read as raw.

mod backing;
mod foreign;
mod qcow2;
mod qcow2_header;
mod raw;
mod snapshot;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

pub use backing::Backing;
pub(crate) use qcow2::read_header;
pub use qcow2::{backing_chain, Qcow2Image};
pub use qcow2_header::{parse_header, Qcow2Header, QCOW2_MAGIC};
pub use raw::RawImage;
pub use snapshot::{list_snapshots, parse_snapshot_table, read_snapshot_table, SnapshotImage, SnapshotInfo};

/// A half-open byte range `[start, end)` of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Which allocations [`Image::data_extents`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExtentScope {
    /// Everything that may read as non-zero, wherever in a backing chain it lives.
    All,
    /// Only data stored in this image's own top layer: ranges that fall
    /// through to a backing file are left out (the backing file is indexed
    /// on its own).
    TopLayer,
}

/// A read-only, thread-safe view of a virtual disk.
pub trait Image: Send + Sync + fmt::Debug {
    /// Virtual size in bytes.
    fn len(&self) -> u64;

    /// True if the image has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file this image is read from.
    fn path(&self) -> &Path;

    /// A name for messages: the path, plus `@snapshot` for internal snapshots.
    fn label(&self) -> String {
        self.path().display().to_string()
    }

    /// Fills `buf` with the bytes at `offset`. Reading past [`Image::len`] is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The sorted, non-overlapping ranges within `[start, end)` that may hold
    /// non-zero data; everything else in that window reads as zeros (or, with
    /// [`ExtentScope::TopLayer`], may also come from a backing file).
    fn data_extents(&self, start: u64, end: u64, scope: ExtentScope) -> Result<Vec<Extent>>;

    /// The regular file whose bytes are the image's bytes at the same
    /// offsets (a raw image file), for copies done by the kernel
    /// (`copy_file_range`, shared extents on XFS and btrfs).
    fn raw_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// The on-disk format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw bytes (a plain file or a block device).
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

/// Detects the format of `path` from its first bytes (and, for fixed VHD
/// images, its last ones).
///
/// Formats cbt does not read (VMDK, VHD, VHDX, VDI, QED, LUKS, Parallels)
/// are an [`Error::UnsupportedFormat`] with a conversion hint: taken as
/// raw, they would be copied as containers rather than as disks.
pub fn detect_format(path: &Path) -> Result<ImageFormat> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    detect_format_of(&file, path)
}

/// [`detect_format`] of the file open as `file` (named `path` in messages).
pub(crate) fn detect_format_of(mut file: &File, path: &Path) -> Result<ImageFormat> {
    use std::io::{Seek, SeekFrom};
    let mut head = [0u8; foreign::HEAD_LEN];
    let got = pread_full(file, path, &mut head, 0)?;
    let head = &head[..got];
    if head.starts_with(&QCOW2_MAGIC) {
        return Ok(ImageFormat::Qcow2);
    }
    // Seeking, not metadata: a block device's metadata length is 0.
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(path, "seek", e))?;
    let mut tail = [0u8; foreign::TAIL_LEN];
    let tail = if len >= (foreign::HEAD_LEN + foreign::TAIL_LEN) as u64 {
        let n = pread_full(file, path, &mut tail, len - foreign::TAIL_LEN as u64)?;
        Some(&tail[..n])
    } else {
        None
    };
    match foreign::foreign_format(head, tail) {
        Some(f) => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            format: f.name.to_string(),
            hint: foreign::hint(f, path),
        }),
        None => Ok(ImageFormat::Raw),
    }
}

/// What to open: a file, and optionally one of its internal snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ImageSpec {
    /// Path of the image file.
    pub path: PathBuf,
    /// Name (or id) of a qcow2 internal snapshot; `None` for the current state.
    pub snapshot: Option<String>,
    /// Where its backing files may be (not serialised: a spec read back is
    /// a local one).
    #[serde(skip)]
    pub backing: Backing,
}

impl ImageSpec {
    /// The current state of the image at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        ImageSpec {
            path: path.into(),
            snapshot: None,
            backing: Backing::Anywhere,
        }
    }

    /// The same image, its backing files confined to `backing`.
    pub fn with_backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.snapshot {
            Some(s) => write!(f, "{}@{}", self.path.display(), s),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Opens an image (raw or qcow2, detected by magic) or one of its internal snapshots.
pub fn open_image(spec: &ImageSpec) -> Result<Arc<dyn Image>> {
    check_input_kind(&spec.path)?;
    let format = detect_format(&spec.path)?;
    match (&spec.snapshot, format) {
        (None, ImageFormat::Raw) => Ok(Arc::new(RawImage::open(&spec.path)?)),
        (None, ImageFormat::Qcow2) => Ok(Arc::new(Qcow2Image::open_with(&spec.path, &spec.backing)?)),
        (Some(name), ImageFormat::Qcow2) => Ok(Arc::new(SnapshotImage::open_with(
            &spec.path,
            name,
            &spec.backing,
        )?)),
        (Some(name), ImageFormat::Raw) => Err(Error::NoSuchSnapshot {
            path: spec.path.clone(),
            name: name.clone(),
        }),
    }
}

/// Refuses inputs that are not images: character devices (`/dev/zero`
/// has no end and no size), fifos, sockets and directories. Regular files
/// and block devices (which have a size) pass. Checked before opening, as
/// opening a fifo would block.
pub(crate) fn check_input_kind(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path)
        .map_err(|e| Error::io(path, "open", e))?
        .file_type();
    let what = if t.is_file() || t.is_block_device() {
        return Ok(());
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(Error::malformed(
        path,
        format!("is {what}, not an image (cbt reads regular files and block devices, which have a size)"),
    ))
}

/// Reads as much of `buf` as the file has at `offset`, retrying on
/// interruption; returns the number of bytes read.
pub(crate) fn pread_full(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    Ok(done)
}

/// Reads exactly `buf.len()` bytes at `offset` or fails naming what was asked.
pub(crate) fn pread_exact(file: &File, path: &Path, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    let n = pread_full(file, path, buf, offset)?;
    if n < buf.len() {
        return Err(Error::malformed(
            path,
            format!(
                "truncated: {what} at offset {offset} needs {} bytes, file ends after {n}",
                buf.len()
            ),
        ));
    }
    Ok(())
}

/// Checks that `[offset, offset + len)` lies within an image of size `size`.
pub(crate) fn check_range(label: &dyn Fn() -> String, size: u64, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Config(format!(
            "{}: read of {len} bytes at offset {offset} is past the end ({size} bytes)",
            label()
        ))),
    }
}
