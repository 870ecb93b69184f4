//! Raw images: regular files (sparse ones included) and block devices.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{check_range, pread_exact, Extent, ExtentScope, Image};
use crate::error::{Error, Result};

/// A raw image file or block device.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    file: File,
    len: u64,
    /// Whether `SEEK_DATA`/`SEEK_HOLE` give real answers (regular files on
    /// most Linux filesystems); block devices report everything as data.
    sparse_aware: bool,
}

impl RawImage {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        super::check_input_kind(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        RawImage::from_file(path, file)
    }

    /// Reads the file or device already open as `file` (named `path` in
    /// messages): the assembly hashes its own output this way.
    pub(crate) fn from_file(path: &Path, mut file: File) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        let (len, sparse_aware) = if meta.is_file() {
            (meta.len(), true)
        } else {
            // Block devices report size 0 in metadata; their end is found by seeking.
            let len = file
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, "seek", e))?;
            (len, false)
        };
        Ok(RawImage {
            path: path.to_path_buf(),
            file,
            len,
            sparse_aware,
        })
    }
}

impl Image for RawImage {
    fn len(&self) -> u64 {
        self.len
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&|| self.label(), self.len, offset, buf.len())?;
        pread_exact(&self.file, &self.path, buf, offset, "data")
    }

    fn raw_file(&self) -> Option<&File> {
        // Regular files only: a block device shares no extents.
        self.sparse_aware.then_some(&self.file)
    }

    fn data_extents(&self, start: u64, end: u64, _scope: ExtentScope) -> Result<Vec<Extent>> {
        let end = end.min(self.len);
        if start >= end {
            return Ok(Vec::new());
        }
        if !self.sparse_aware {
            return Ok(vec![Extent { start, end }]);
        }
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            let data = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(d) => d,
                // ENXIO: no data after `pos`.
                Err(rustix::io::Errno::NXIO) => break,
                // The filesystem cannot tell: treat the rest as data.
                Err(_) => {
                    out.push(Extent { start: pos, end });
                    break;
                }
            };
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(data)) {
                Ok(h) => h.min(end),
                Err(_) => end,
            };
            out.push(Extent {
                start: data,
                end: hole,
            });
            pos = hole;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_file_reports_only_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        drop(f);
        let img = RawImage::open(&p).unwrap();
        assert_eq!(img.len(), 64 << 20);
        let ext = img.data_extents(0, 64 << 20, ExtentScope::All).unwrap();
        let total: u64 = ext.iter().map(|e| e.end - e.start).sum();
        assert!(ext
            .iter()
            .any(|e| e.start <= 32 << 20 && e.end >= (32 << 20) + 4096));
        assert!(total < 8 << 20, "hole not detected: {ext:?}");
        let mut b = [0u8; 4096];
        img.read_at(&mut b, 32 << 20).unwrap();
        assert_eq!(b, [1u8; 4096]);
        assert!(img.read_at(&mut b, (64 << 20) - 100).is_err());
    }

    #[test]
    fn small_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        File::create(&p).unwrap().write_all(b"hello").unwrap();
        let img = RawImage::open(&p).unwrap();
        let mut b = [0u8; 5];
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"hello");
    }
}
