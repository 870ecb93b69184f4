//! Writing the reconstructed image: raw (sparse, zero blocks left as holes)
//! or qcow2 (through `imago`). Output always goes to a temporary file next
//! to the final path; [`OutputFile::publish`] renames it only when asked,
//! after verification. The temporary file is created, reopened and renamed
//! through a handle of the output's directory ([`Dir`]), never through a
//! symbolic link.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, StorageOpenOptions,
};

use crate::error::{Error, Result};
use crate::image::{Image, Qcow2Image, RawImage};
use crate::safe_fs::{self, Dir};

/// Format of the reconstructed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A sparse raw file.
    #[default]
    Raw,
    /// A qcow2 v3 file (64 KiB clusters).
    Qcow2,
}

enum Writer {
    Raw(File),
    Qcow2(Box<FormatAccess<ImagoFile>>),
}

/// An output image being written at a temporary path.
pub struct OutputFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    /// The directory of both paths, and the two names in it.
    dir: Dir,
    final_name: String,
    temp_name: String,
    format: OutputFormat,
    writer: Option<Writer>,
    len: u64,
    /// Sync data and directory before publishing (the default).
    durable: bool,
    /// Starts writeback of a raw output while it is being written, so the
    /// final sync has little left to do.
    flusher: Option<Flusher>,
    /// Bytes written so far (for the qcow2 metadata flushes).
    written: AtomicU64,
    /// Writing into an existing image or block device (`--inplace`): no
    /// temporary file, nothing renamed or removed.
    in_place: Option<InPlaceKind>,
}

/// What an in-place output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InPlaceKind {
    /// A regular raw file (holes can be punched).
    File,
    /// A block device (zeros are written).
    Device,
}

/// Bytes written between two background syncs of a raw output.
const FLUSH_EVERY: u64 = 64 << 20;
/// Bytes written between two flushes of a qcow2 output's cached metadata
/// (L1, L2 and refcount tables). Data whose tables were never written is
/// unreachable in the file: a receiver killed with SIGKILL would leave a
/// partial file that seeds almost nothing for the resume. A flush rewrites
/// the few table clusters dirtied since the last one (about 1% more
/// writes at this interval).
const QCOW2_FLUSH_EVERY: u64 = 8 << 20;

/// A thread that syncs the output's data whenever asked, in the background.
struct Flusher {
    written: AtomicU64,
    wake: Option<Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (wake, asked) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("cbt-flusher".into())
            .spawn(move || asked.iter().try_for_each(|()| file.sync_data()))
            .ok()?;
        Some(Flusher {
            written: AtomicU64::new(0),
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    fn wrote(&self, bytes: u64) {
        let before = self.written.fetch_add(bytes, Ordering::Relaxed);
        if before / FLUSH_EVERY != (before + bytes) / FLUSH_EVERY {
            if let Some(w) = &self.wake {
                // A sync already pending covers this one too.
                let _ = w.try_send(());
            }
        }
    }

    fn stop(mut self) -> std::io::Result<()> {
        self.wake = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("flusher thread panicked")),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for OutputFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFile")
            .field("temp_path", &self.temp_path)
            .finish()
    }
}

/// The temporary path used while writing `final_path`: hidden, in the same
/// directory (so the final rename is atomic), recognisable for resume.
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.cbt-partial"))
}

impl OutputFile {
    /// Creates the temporary output for an image of `len` bytes.
    pub fn create(final_path: &Path, format: OutputFormat, len: u64) -> Result<Self> {
        let temp_path = temp_path_for(final_path);
        let dir = Dir::of(final_path)?;
        let final_name = safe_fs::file_name(final_path)?.to_string();
        let temp_name = safe_fs::file_name(&temp_path)?.to_string();
        let file = dir.create_replacing(&temp_name)?;
        let writer = match format {
            OutputFormat::Raw => {
                file.set_len(len)
                    .map_err(|e| Error::io(&temp_path, "size output", e))?;
                Writer::Raw(file)
            }
            OutputFormat::Qcow2 => {
                let storage = ImagoFile::from_open_file(file, qcow2_storage(&temp_path))
                    .map_err(|e| Error::io(&temp_path, "create output", e))?;
                let qcow2 = Qcow2::<ImagoFile>::create_builder(storage)
                    .size(len)
                    .create_open(DenyImplicitOpenGate::default(), |image| {
                        Ok(Qcow2::<ImagoFile>::builder(image).backing(None).write(true))
                    })
                    .map_err(|e| Error::io(&temp_path, "format qcow2 output", e))?;
                Writer::Qcow2(Box::new(FormatAccess::new(qcow2)))
            }
        };
        let flusher = match &writer {
            Writer::Raw(f) => Flusher::start(f),
            Writer::Qcow2(_) => None,
        };
        Ok(OutputFile {
            final_path: final_path.to_path_buf(),
            temp_path,
            dir,
            final_name,
            temp_name,
            format,
            writer: Some(writer),
            len,
            durable: true,
            flusher,
            written: AtomicU64::new(0),
            in_place: None,
        })
    }

    /// Opens the existing raw image or block device at `path` to be updated
    /// in place to an image of `len` bytes: a regular file is resized to
    /// `len` (and never opened through a symbolic link); a block device
    /// must have exactly `len` bytes.
    pub fn open_in_place(path: &Path, len: u64) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        let dir = Dir::of(path)?;
        let final_name = safe_fs::file_name(path)?.to_string();
        let is_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let (file, kind) = if is_device {
            // Devices are named through links (/dev/disk/by-id/...): follow them.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, "open output device", e))?;
            let size = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                .map_err(|e| Error::io(path, "size output device", e))?;
            if size != len {
                return Err(Error::Config(format!(
                    "{}: the block device has {size} bytes, the image {len}; refusing to update it in place",
                    path.display()
                )));
            }
            (f, InPlaceKind::Device)
        } else {
            let f = dir
                .open_existing(&final_name, true)?
                .ok_or_else(|| Error::io(path, "open output", std::io::ErrorKind::NotFound.into()))?;
            f.set_len(len).map_err(|e| Error::io(path, "resize output", e))?;
            (f, InPlaceKind::File)
        };
        let flusher = Flusher::start(&file);
        Ok(OutputFile {
            final_path: path.to_path_buf(),
            temp_path: path.to_path_buf(),
            dir,
            temp_name: final_name.clone(),
            final_name,
            format: OutputFormat::Raw,
            writer: Some(Writer::Raw(file)),
            len,
            durable: true,
            flusher,
            written: AtomicU64::new(0),
            in_place: Some(kind),
        })
    }

    /// Has the kernel copy `len` bytes at `seed_offset` of `seed` to
    /// `offset` of a raw output (`copy_file_range`: on XFS with reflink and
    /// on btrfs the extents are shared, not copied). Returns false, having
    /// copied nothing the caller needs, when the kernel refuses (another
    /// filesystem, a block device, a qcow2 output); the caller then writes
    /// the bytes itself.
    pub fn clone_range(&self, seed: &File, seed_offset: u64, offset: u64, len: u64) -> Result<bool> {
        let (Some(Writer::Raw(f)), None | Some(InPlaceKind::File)) = (&self.writer, self.in_place) else {
            return Ok(false);
        };
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Ok(false);
        }
        let (mut from, mut to, end) = (seed_offset, offset, offset + len);
        while to < end {
            let chunk = usize::try_from(end - to).unwrap_or(usize::MAX);
            match rustix::fs::copy_file_range(seed, Some(&mut from), f, Some(&mut to), chunk) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                // Cross-device, unsupported, or a filesystem that says no:
                // whatever was copied is rewritten by the caller.
                Err(_) => return Ok(false),
            }
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        if let Some(fl) = &self.flusher {
            fl.wrote(len);
        }
        Ok(true)
    }

    /// Reads `buf.len()` bytes at `offset` of a raw output through its own
    /// descriptor (what landed, whoever wrote it). Returns false for a
    /// qcow2 or closed output, or a range past the end.
    pub fn read_raw_at(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let Some(Writer::Raw(f)) = &self.writer else {
            return Ok(false);
        };
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.len) {
            return Ok(false);
        }
        f.read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.temp_path, "read output", e))?;
        Ok(true)
    }

    /// The raw output's descriptor (none for qcow2 or once closed).
    pub fn raw_file(&self) -> Option<&File> {
        match &self.writer {
            Some(Writer::Raw(f)) => Some(f),
            _ => None,
        }
    }

    /// True when updating an existing image in place.
    pub fn is_in_place(&self) -> bool {
        self.in_place.is_some()
    }

    /// Makes `len` bytes at `offset` read as zeros (in place, or where a
    /// new output must be as if never written). A file gets a hole
    /// punched (zeros written where the filesystem cannot punch); a block
    /// device gets zeros written where the old bytes were not zero.
    /// Returns the bytes actually written.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<u64> {
        let Some(Writer::Raw(f)) = &self.writer else {
            return Err(Error::Internal("zero_range on a closed or qcow2 output".into()));
        };
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::Internal(format!(
                "{}: zeroing {len} bytes at {offset} is past the end",
                self.temp_path.display()
            )));
        }
        // A regular file (in place, or a new output undoing a rejected
        // clone) gets a hole; a block device zeros.
        if self.in_place != Some(InPlaceKind::Device) {
            use rustix::fs::FallocateFlags;
            match rustix::fs::fallocate(
                f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(0),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
                Err(e) => return Err(Error::io(&self.temp_path, "punch hole", e.into())),
            }
        }
        let mut old = vec![0u8; len as usize];
        f.read_exact_at(&mut old, offset)
            .map_err(|e| Error::io(&self.temp_path, "read output", e))?;
        if crate::digest::is_zero(&old) {
            return Ok(0);
        }
        old.fill(0);
        self.write_at(&old, offset)?;
        Ok(len)
    }

    /// Whether to sync data and directory before publishing (default: yes).
    /// Without it a crash of the machine (not of cbt) soon after the
    /// transfer may lose data the kernel had not written yet, as with
    /// `cp` or `rsync` without `--fsync`.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
        if !durable {
            if let Some(f) = self.flusher.take() {
                let _ = f.stop();
            }
        }
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// The final path.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Writes `data` at `offset`. Safe to call from several threads.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > self.len) {
            return Err(Error::Internal(format!(
                "{}: write of {} bytes at {offset} is past the end",
                self.temp_path.display(),
                data.len()
            )));
        }
        let len = data.len() as u64;
        match &self.writer {
            Some(Writer::Raw(f)) => f.write_all_at(data, offset),
            Some(Writer::Qcow2(q)) => q.write(data, offset),
            None => Err(std::io::Error::other("output already closed")),
        }
        .map_err(|e| Error::io(&self.temp_path, "write output", e))?;
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if let Some(Writer::Qcow2(q)) = &self.writer {
            if before / QCOW2_FLUSH_EVERY != (before + len) / QCOW2_FLUSH_EVERY {
                q.flush()
                    .map_err(|e| Error::io(&self.temp_path, "flush output metadata", e))?;
            }
        }
        if let Some(f) = &self.flusher {
            f.wrote(len);
        }
        Ok(())
    }

    /// Flushes and syncs the data, closes the writer, and opens the result
    /// for reading (to verify it).
    pub fn finish_writing(&mut self) -> Result<Arc<dyn Image>> {
        if let Some(f) = self.flusher.take() {
            f.stop()
                .map_err(|e| Error::io(&self.temp_path, "sync output", e))?;
        }
        match self.writer.take() {
            Some(Writer::Raw(f)) if self.durable => f
                .sync_all()
                .map_err(|e| Error::io(&self.temp_path, "sync output", e))?,
            Some(Writer::Raw(_)) | None => {}
            Some(Writer::Qcow2(q)) => {
                q.flush()
                    .map_err(|e| Error::io(&self.temp_path, "flush output", e))?;
                if self.durable {
                    q.sync()
                        .map_err(|e| Error::io(&self.temp_path, "sync output", e))?;
                }
            }
        }
        Ok(match self.format {
            OutputFormat::Raw => Arc::new(RawImage::open(&self.temp_path)?),
            OutputFormat::Qcow2 => Arc::new(Qcow2Image::open(&self.temp_path)?),
        })
    }

    /// Opens the finished temporary file for writing again (to repair blocks).
    pub fn reopen(&mut self) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        if self.in_place == Some(InPlaceKind::Device) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.temp_path)
                .map_err(|e| Error::io(&self.temp_path, "reopen output", e))?;
            self.writer = Some(Writer::Raw(f));
            return Ok(());
        }
        let file = self.dir.open_existing(&self.temp_name, true)?.ok_or_else(|| {
            Error::io(
                &self.temp_path,
                "reopen output",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        self.writer = Some(match self.format {
            OutputFormat::Raw => Writer::Raw(file),
            OutputFormat::Qcow2 => {
                let storage = ImagoFile::from_open_file(file, qcow2_storage(&self.temp_path))
                    .map_err(|e| Error::io(&self.temp_path, "reopen output", e))?;
                let qcow2 = Qcow2::<ImagoFile>::builder(storage)
                    .write(true)
                    .open(DenyImplicitOpenGate::default())
                    .map_err(|e| Error::io(&self.temp_path, "reopen output", e))?;
                Writer::Qcow2(Box::new(FormatAccess::new(qcow2)))
            }
        });
        Ok(())
    }

    /// Moves the verified output to its final path (atomic rename, then a
    /// sync of the directory so the rename survives a crash).
    pub fn publish(mut self) -> Result<PathBuf> {
        self.finish_writing()?;
        if self.in_place.is_none() {
            self.dir.rename(&self.temp_name, &self.final_name)?;
        }
        if self.durable {
            self.dir.sync()?;
        }
        Ok(self.final_path.clone())
    }

    /// Removes the temporary file (after a failure).
    pub fn discard(mut self) {
        self.writer = None;
        // An image updated in place is never removed (its journal says it
        // is inconsistent until the same update completes).
        if self.in_place.is_none() {
            let _ = self.dir.remove(&self.temp_name);
        }
    }

    /// The directory the output is written in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }
}

/// How imago is told about a qcow2 output we opened ourselves.
fn qcow2_storage(path: &Path) -> StorageOpenOptions {
    StorageOpenOptions::new().filename(path).write(true)
}
