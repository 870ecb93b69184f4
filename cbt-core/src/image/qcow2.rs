//! qcow2 images through `imago` (sync): the current state of an image with
//! its whole backing chain (qcow2 or raw backing files, relative names
//! resolved against the image's own directory), compressed and zero
//! clusters. Our own header check runs first so defects and unsupported
//! features are reported by name, and the chain is walked once to refuse
//! cycles before `imago` would follow them.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, ShallowMapping};

use super::backing::{Backing, BackingGate};
use super::qcow2_header::{parse_header, Qcow2Header};
use super::{check_range, detect_format_of, pread_full, Extent, ExtentScope, Image, ImageFormat};
use crate::error::{Error, Result};

/// Longest backing chain we follow (qemu's own limit is similar).
const MAX_CHAIN_DEPTH: usize = 64;

/// The current state of a qcow2 image, backing chain included.
pub struct Qcow2Image {
    path: PathBuf,
    header: Qcow2Header,
    access: FormatAccess<ImagoFile>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("size", &self.header.size)
            .finish()
    }
}

/// Reads and checks the header of the qcow2 file at `path`.
/// Returns the header and the file's length.
pub(crate) fn read_header(file: &File, path: &Path) -> Result<(Qcow2Header, u64)> {
    let file_len = file.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    // The header and its extensions live in the first cluster (at most 2 MiB).
    let mut first = vec![0u8; 104.min(file_len as usize).max(4)];
    let n = pread_full(file, path, &mut first, 0)?;
    first.truncate(n);
    let cluster_bits = if first.len() >= 24 {
        u32::from_be_bytes([first[20], first[21], first[22], first[23]])
    } else {
        16
    };
    let want = if (9..=21).contains(&cluster_bits) {
        1usize << cluster_bits
    } else {
        65536
    };
    let mut cluster = vec![0u8; want.min(usize::try_from(file_len).unwrap_or(usize::MAX))];
    let n = pread_full(file, path, &mut cluster, 0)?;
    cluster.truncate(n);
    Ok((parse_header(&cluster, file_len, path)?, file_len))
}

/// The backing file named in `header` of the image at `path`, as written
/// there (relative names are relative to the image's directory).
pub(crate) fn backing_name(header: &Qcow2Header) -> Option<&Path> {
    let name = header.backing_file.as_deref()?;
    Some(Path::new(name.strip_prefix("file:").unwrap_or(name)))
}

/// Walks the backing chain of `path`, checking every qcow2 header in it and
/// that every backing file is where `backing` allows. Returns the canonical
/// paths of all backing files, nearest first.
pub fn backing_chain(path: &Path, backing: &Backing) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut chain = Vec::new();
    let mut current = path.to_path_buf();
    let canonical = current
        .canonicalize()
        .map_err(|e| Error::io(&current, "resolve", e))?;
    seen.insert(canonical);
    let mut file = File::open(&current).map_err(|e| Error::io(&current, "open", e))?;
    loop {
        if detect_format_of(&file, &current)? != ImageFormat::Qcow2 {
            break;
        }
        let (header, _) = read_header(&file, &current)?;
        let Some(name) = backing_name(&header) else {
            break;
        };
        let next = backing.resolve(&current, name)?;
        if let Some(fmt) = header.backing_format.as_deref() {
            if fmt != "qcow2" && fmt != "raw" {
                return Err(Error::Unsupported {
                    path: current,
                    feature: format!("backing file format {fmt:?}"),
                });
            }
        }
        file = backing.open(&current, &next)?;
        let canonical = next
            .canonicalize()
            .map_err(|e| Error::io(&next, "open backing file", e))?;
        if !seen.insert(canonical.clone()) {
            return Err(Error::BackingCycle {
                path: path.to_path_buf(),
                again: canonical,
            });
        }
        if chain.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::malformed(
                path,
                format!("backing chain deeper than {MAX_CHAIN_DEPTH}"),
            ));
        }
        chain.push(canonical);
        current = next;
    }
    Ok(chain)
}

/// An error from imago: one carrying an OS error number is an I/O error;
/// any other is imago's verdict on the file's content (an unaligned table
/// entry, a bad compressed cluster, an unsupported refcount order), so the
/// input is malformed, not the disk failing.
fn imago_error(path: &Path, op: &'static str, e: std::io::Error) -> Error {
    if e.raw_os_error().is_some() {
        Error::io(path, op, e)
    } else {
        Error::malformed(path, format!("{op}: {e}"))
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path` read-only, with its backing chain.
    pub fn open(path: &Path) -> Result<Self> {
        Qcow2Image::open_with(path, &Backing::Anywhere)
    }

    /// Opens the qcow2 image at `path` read-only, its backing files only
    /// where `backing` allows.
    pub fn open_with(path: &Path, backing: &Backing) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let (header, _) = read_header(&file, path)?;
        backing_chain(path, backing)?;
        let gate = BackingGate {
            backing: backing.clone(),
            image: path.to_path_buf(),
        };
        let qcow2 = Qcow2::<ImagoFile>::builder_path(path)
            .write(false)
            .open(gate)
            .map_err(|e| imago_error(path, "open qcow2", e))?;
        Ok(Qcow2Image {
            path: path.to_path_buf(),
            header,
            access: FormatAccess::new(qcow2),
        })
    }

    /// A data cluster must start inside its file: imago (like qemu) would
    /// read the missing part as zeros, silently turning a truncated image
    /// into a different one. (Only the file's last cluster may be short.)
    fn check_in_file(&self, storage: &ImagoFile, host_offset: u64, len: u64, guest: u64) -> Result<()> {
        use imago::Storage;
        let file_len = storage.size().map_err(|e| Error::io(&self.path, "stat", e))?;
        if host_offset.saturating_add(len) > file_len.saturating_add(self.header.cluster_size()) {
            return Err(Error::malformed(
                &self.path,
                format!(
                    "data for guest offset {guest} ({len} bytes at file offset {host_offset}) lies past the end of the file ({file_len} bytes): truncated image?"
                ),
            ));
        }
        Ok(())
    }

    /// The checked header.
    pub fn header(&self) -> &Qcow2Header {
        &self.header
    }
}

impl Image for Qcow2Image {
    fn len(&self) -> u64 {
        self.header.size
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&|| self.label(), self.len(), offset, buf.len())?;
        self.access
            .read(&mut *buf, offset)
            .map_err(|e| imago_error(&self.path, "read qcow2 data", e))
    }

    fn data_extents(&self, start: u64, end: u64, scope: ExtentScope) -> Result<Vec<Extent>> {
        let end = end.min(self.len());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = start;
        while pos < end {
            let (is_data, len) = match scope {
                ExtentScope::TopLayer => {
                    let (m, len) = self
                        .access
                        .get_shallow_mapping(pos, end - pos)
                        .map_err(|e| imago_error(&self.path, "read qcow2 mapping", e))?;
                    if let ShallowMapping::Raw { storage, offset, .. } = &m {
                        self.check_in_file(storage, *offset, len, pos)?;
                    }
                    let data = matches!(m, ShallowMapping::Raw { .. } | ShallowMapping::Special { .. });
                    (data, len)
                }
                ExtentScope::All => {
                    let (m, len) = self
                        .access
                        .get_mapping(pos, end - pos)
                        .map_err(|e| imago_error(&self.path, "read qcow2 mapping", e))?;
                    if let imago::Mapping::Raw { storage, offset, .. } = &m {
                        self.check_in_file(storage, *offset, len, pos)?;
                    }
                    let data = matches!(m, imago::Mapping::Raw { .. } | imago::Mapping::Special { .. });
                    (data, len)
                }
            };
            if len == 0 {
                break;
            }
            let stop = (pos + len).min(end);
            if is_data {
                match out.last_mut() {
                    Some(last) if last.end == pos => last.end = stop,
                    _ => out.push(Extent {
                        start: pos,
                        end: stop,
                    }),
                }
            }
            pos = stop;
        }
        Ok(out)
    }
}
