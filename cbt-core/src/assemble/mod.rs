//! Assembly: the one engine that turns verified blocks into a published
//! image, whoever supplies them (`cbt copy`'s planner and local copiers,
//! the network receiver, a repair round).
//!
//! An [`Assembly`] owns the output (a hidden temporary file next to the
//! final path, see [`OutputFile`]) and its verification record, the
//! *manifest*: one 32-byte digest per block of the layout, written by
//! [`Assembly::write`] from the digests each block was checked against (see
//! [`verified`]: the only place bytes are checked, and a [`VerifiedRun`] the
//! only thing the writer accepts). Blocks never written stay holes in both
//! the output and the manifest, where an all-zero entry means a zero block.
//!
//! [`Assembly::finish`] folds the manifest in image order into an image
//! digest and compares it with the source's: since every entry is the
//! digest of bytes checked on their way in, a block that was never written,
//! written at the wrong place or from a changed seed makes them differ.
//! That is verification as written; re-reading the whole output
//! ([`AssemblyOptions::verify_readback`], off by default, as rsync and `zfs
//! recv` verify the stream and not a re-read) additionally catches a disk
//! that returns other bytes than were written, and repairs such blocks from
//! the caller's [`BlockSource`]. Only then is the output published.

mod readback;
pub mod verified;

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::output::{OutputFile, OutputFormat};
use crate::pipeline::{hash_image, BlockKind, BlockRecord, HashOptions, ImageDigester, ZeroDigests};
use crate::reconstruct::BlockSource;
use crate::safe_fs;

pub use verified::{Candidate, Checked, Expected, VerifiedRun};

/// Runs whose offsets and length are multiples of this (the block size of
/// the filesystems that share extents) go through `copy_file_range`.
const CLONE_ALIGN: u64 = 4096;

/// How an output is assembled.
#[derive(Debug, Clone, Copy)]
pub struct AssemblyOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Sync data and directory before publishing.
    pub durable: bool,
    /// Re-read the whole output and compare every block with the manifest
    /// before publishing, repairing mismatches (`--verify-readback`).
    pub verify_readback: bool,
    /// Update the output in place when it exists (a raw file or a block
    /// device): blocks that already hold the right bytes are not written,
    /// see [`Assembly::confirm`].
    pub in_place: bool,
}

impl Default for AssemblyOptions {
    fn default() -> Self {
        AssemblyOptions {
            format: OutputFormat::Raw,
            durable: true,
            verify_readback: false,
            in_place: false,
        }
    }
}

/// A range [`Assembly::clone_in`] had the kernel copy into the output,
/// not yet checked: nothing in it counts until [`Assembly::check_cloned`].
#[derive(Debug)]
#[must_use = "a cloned range counts only once checked with Assembly::check_cloned"]
pub struct Cloned {
    offset: u64,
    len: u64,
}

/// A block record hashed from the output updated in place, by the
/// assembly itself ([`Assembly::hash_in_place`]): what the output holds.
#[derive(Debug, Clone, Copy)]
pub struct InPlaceRecord(BlockRecord);

impl InPlaceRecord {
    /// The record.
    pub fn record(&self) -> &BlockRecord {
        &self.0
    }
}

/// An image being assembled at a temporary path.
#[derive(Debug)]
pub struct Assembly {
    layout: Layout,
    output: OutputFile,
    manifest: File,
    manifest_path: PathBuf,
    manifest_name: String,
    verify_readback: bool,
    bytes_written: AtomicU64,
    bytes_cloned: AtomicU64,
    /// In place: the journal that marks the output inconsistent until the
    /// update completes.
    journal: Option<String>,
}

/// The journal of an in-place update of `output`: while it exists, the
/// image at `output` is inconsistent (partly old, partly new), and the same
/// command must be run again to complete it.
pub fn journal_path_for(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.cbt-inplace"))
}

/// Refuses an image whose in-place update was interrupted (its journal
/// exists): read as a source, it would be copied as if it were whole.
pub fn check_consistent(image: &Path) -> Result<()> {
    let journal = journal_path_for(image);
    if std::fs::symlink_metadata(&journal).is_ok() {
        return Err(Error::Inconsistent {
            path: image.to_path_buf(),
            journal,
        });
    }
    Ok(())
}

/// The verification manifest's path next to `output`.
pub fn manifest_path_for(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.cbt-manifest"))
}

impl Assembly {
    /// Starts assembling an image of `layout` for `final_path`.
    pub fn create(final_path: &Path, layout: &Layout, options: &AssemblyOptions) -> Result<Assembly> {
        let existing = std::fs::metadata(final_path).is_ok();
        let in_place = options.in_place && existing;
        if in_place && options.format != OutputFormat::Raw {
            return Err(Error::Config(format!(
                "{}: an in-place update writes raw images only",
                final_path.display()
            )));
        }
        let mut output = if in_place {
            OutputFile::open_in_place(final_path, layout.len())?
        } else {
            OutputFile::create(final_path, options.format, layout.len())?
        };
        output.set_durable(options.durable);
        let journal = if in_place {
            let path = journal_path_for(final_path);
            let name = safe_fs::file_name(&path)?.to_string();
            if output.dir().entry(&name)? != crate::safe_fs::Entry::Missing {
                tracing::warn!(
                    "{}: an earlier in-place update was interrupted; completing it",
                    final_path.display()
                );
            }
            let mut j = output.dir().create_replacing(&name)?;
            std::io::Write::write_all(
                &mut j,
                format!(
                    "cbt: an in-place update of {} is in progress or was interrupted; \
                     the image is inconsistent until the same command completes\n",
                    final_path.display()
                )
                .as_bytes(),
            )
            .and_then(|()| j.sync_all())
            .map_err(|e| Error::io(&path, "write journal", e))?;
            Some(name)
        } else {
            None
        };
        let manifest_path = manifest_path_for(final_path);
        let manifest_name = safe_fs::file_name(&manifest_path)?.to_string();
        let manifest = output.dir().create_replacing(&manifest_name)?;
        let manifest_len = layout
            .block_count()
            .checked_mul(32)
            .ok_or_else(|| Error::Config("image has too many blocks".into()))?;
        manifest
            .set_len(manifest_len)
            .map_err(|e| Error::io(&manifest_path, "size manifest", e))?;
        Ok(Assembly {
            layout: layout.clone(),
            output,
            manifest,
            manifest_path,
            manifest_name,
            verify_readback: options.verify_readback,
            bytes_written: AtomicU64::new(0),
            bytes_cloned: AtomicU64::new(0),
            journal,
        })
    }

    /// True when updating an existing output in place.
    pub fn is_in_place(&self) -> bool {
        self.journal.is_some()
    }

    /// In place: hashes the output as it is now, through its own
    /// descriptor and in layout order, handing batches of records to
    /// `sink`. Only these records can confirm a block
    /// ([`Assembly::confirm`]): each says what the output itself held.
    pub fn hash_in_place(
        &self,
        threads: usize,
        mut sink: impl FnMut(Vec<InPlaceRecord>) -> Result<()>,
    ) -> Result<()> {
        let Some(file) = self.output.raw_file().filter(|_| self.is_in_place()) else {
            return Err(Error::Internal(format!(
                "{}: only an output updated in place can be compared",
                self.final_path().display()
            )));
        };
        let file = file
            .try_clone()
            .map_err(|e| Error::io(self.final_path(), "read output", e))?;
        let current = crate::image::RawImage::from_file(self.final_path(), file)?;
        let hash = HashOptions {
            threads,
            ..HashOptions::default()
        };
        hash_image(&current, &self.layout, &hash, |records| {
            sink(records.iter().map(|r| InPlaceRecord(*r)).collect())
        })
        .map(|_| ())
    }

    /// In place: block `index` of the output already holds the source's
    /// bytes when `current` (hashed from the output by
    /// [`Assembly::hash_in_place`], before anything was written there) has
    /// the digest `expected`. Records it without writing and returns true;
    /// false (nothing recorded) otherwise.
    pub fn confirm(&self, index: u64, current: &InPlaceRecord, expected: &Digest) -> Result<bool> {
        if !self.is_in_place() {
            return Ok(false);
        }
        let BlockKind::Data(d) = current.0.kind else {
            return Ok(false);
        };
        if d != *expected {
            return Ok(false);
        }
        self.record(index, &[d])?;
        Ok(true)
    }

    /// Makes block `len` bytes at `offset` zeros: nothing to do in a new
    /// output (a hole); in place, a hole is punched or zeros written.
    pub fn zero(&self, offset: u64, len: u32) -> Result<()> {
        if self.is_in_place() {
            let written = self.output.zero_range(offset, u64::from(len))?;
            self.bytes_written.fetch_add(written, Ordering::Relaxed);
        }
        Ok(())
    }

    fn record(&self, first_index: u64, digests: &[Digest]) -> Result<()> {
        let mut entries = Vec::with_capacity(digests.len() * 32);
        for d in digests {
            entries.extend_from_slice(&d.0);
        }
        let at = first_index
            .checked_mul(32)
            .filter(|at| at + entries.len() as u64 <= self.layout.block_count() * 32)
            .ok_or_else(|| Error::Protocol(format!("block {first_index} is outside the layout")))?;
        self.manifest
            .write_all_at(&entries, at)
            .map_err(|e| Error::io(&self.manifest_path, "write manifest", e))
    }

    /// The layout being assembled.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The temporary path being written (in place: the output itself).
    pub fn temp_path(&self) -> &Path {
        self.output.temp_path()
    }

    /// Where the image is published.
    pub fn final_path(&self) -> &Path {
        self.output.final_path()
    }

    /// Bytes written to the output so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Writes a run of verified blocks and records their digests. Safe to
    /// call from several threads.
    pub fn write(&self, run: &VerifiedRun<'_>) -> Result<()> {
        self.output.write_at(run.data(), run.offset())?;
        self.record(run.first_index(), run.digests())?;
        self.bytes_written
            .fetch_add(run.data().len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes the kernel copied or shared from seeds (`copy_file_range`)
    /// instead of writing them.
    pub fn bytes_cloned(&self) -> u64 {
        self.bytes_cloned.load(Ordering::Relaxed)
    }

    /// Has the kernel copy `len` bytes at `seed_offset` of `seed` (a raw
    /// file) to `offset` of the output, sharing extents where the
    /// filesystem can. Nothing is recorded: the [`Cloned`] range must be
    /// checked where it landed with [`Assembly::check_cloned`], so that a
    /// seed rewritten meanwhile (a running VM's disk) gets its blocks
    /// rejected, never recorded. After the copy the output's extents are
    /// its own, so that check is one read, as reading the seed would be.
    ///
    /// `None` when the range is not aligned to the filesystems' block or
    /// the kernel refuses (another filesystem, a qcow2 output): the caller
    /// reads the seed and writes what it checked.
    pub fn clone_in(&self, seed: &File, seed_offset: u64, offset: u64, len: u64) -> Result<Option<Cloned>> {
        // Filesystems share whole blocks only: unaligned runs are written.
        let aligned = [offset, seed_offset, len].iter().all(|v| v % CLONE_ALIGN == 0);
        if !aligned || !self.output.clone_range(seed, seed_offset, offset, len)? {
            return Ok(None);
        }
        Ok(Some(Cloned { offset, len }))
    }

    /// Checks what [`Assembly::clone_in`] put into the output: reads the
    /// range back into `buf` and has `check` hash exactly those bytes. The
    /// blocks it accepts are recorded (they are in place already); the
    /// ones it rejects are made holes again, as if never written, since
    /// the caller may not write them all (a zero block of the source is
    /// never written to a new output).
    pub fn check_cloned<'b>(
        &self,
        cloned: Cloned,
        buf: &'b mut Vec<u8>,
        check: impl FnOnce(&'b [u8]) -> Checked<'b>,
    ) -> Result<Checked<'b>> {
        let len = usize::try_from(cloned.len)
            .map_err(|_| Error::Internal(format!("a clone of {} bytes", cloned.len)))?;
        buf.resize(len, 0);
        let checked = self.check_output(cloned.offset, buf, check)?;
        let mut offset = cloned.offset;
        let mut accepted = 0u64;
        for (good, len) in checked.good().iter().zip(checked.lens()) {
            if *good {
                accepted += u64::from(*len);
            } else {
                self.output.zero_range(offset, u64::from(*len))?;
            }
            offset += u64::from(*len);
        }
        if checked.good().len() < checked.lens().len() {
            return Err(Error::Internal("a cloned range was checked only in part".into()));
        }
        self.bytes_cloned.fetch_add(accepted, Ordering::Relaxed);
        Ok(checked)
    }

    /// Reads `buf.len()` bytes of the raw output at `offset` (what a clone
    /// put there; in place, the old image or what this update wrote) and
    /// has `check` hash exactly those bytes. The blocks it accepts are
    /// there already: they are recorded, not rewritten.
    pub fn check_output<'b>(
        &self,
        offset: u64,
        buf: &'b mut [u8],
        check: impl FnOnce(&'b [u8]) -> Checked<'b>,
    ) -> Result<Checked<'b>> {
        if !self.output.read_raw_at(buf, offset)? {
            return Err(Error::Internal(format!(
                "{}: {} bytes at {offset} cannot be read back (not a raw output, or past its end)",
                self.temp_path().display(),
                buf.len()
            )));
        }
        let data: &'b [u8] = buf;
        let mut checked = check(data);
        if !std::ptr::eq(checked.data(), data) || checked.offset() != offset {
            return Err(Error::Internal(format!(
                "{}: a check of other bytes than the output's at {offset}",
                self.temp_path().display()
            )));
        }
        checked.keep_all();
        self.place(&checked)?;
        Ok(checked)
    }

    /// [`Checked::probe`] with the output as a candidate: a block whose
    /// candidate is [`Candidate::InPlace`] is read from the output at its
    /// own offset by the assembly, and kept there if it matches.
    #[allow(clippy::too_many_arguments)]
    pub fn probe<'b>(
        &self,
        first_index: u64,
        offset: u64,
        buf: &'b mut [u8],
        lens: &[u32],
        expected: &[Option<Digest>],
        zeros: &mut ZeroDigests,
        read: impl FnMut(usize, usize, &mut [u8]) -> Candidate,
    ) -> (Checked<'b>, Vec<Option<usize>>) {
        let in_place = self.is_in_place();
        Checked::probe(
            first_index,
            offset,
            buf,
            lens,
            expected,
            zeros,
            read,
            |at, bytes| in_place && matches!(self.output.read_raw_at(bytes, at), Ok(true)),
        )
    }

    /// Writes every run of `checked`.
    pub fn write_checked(&self, checked: &Checked<'_>) -> Result<()> {
        checked.runs().iter().try_for_each(|r| self.write(r))
    }

    /// Like [`Assembly::write_checked`], but blocks the assembly read from
    /// this very output at their own offset ([`Checked::kept`]) are only
    /// recorded, not rewritten. In place, accepted zero blocks are made
    /// zeros.
    pub fn place(&self, checked: &Checked<'_>) -> Result<()> {
        let kept = checked.kept();
        for run in checked.runs() {
            let first = (run.first_index() - checked.first_index()) as usize;
            let lens = checked.lens();
            let mut i = 0usize;
            let mut byte = 0usize;
            while i < run.digests().len() {
                let keep = kept[first + i];
                let (start, start_byte) = (i, byte);
                while i < run.digests().len() && kept[first + i] == keep {
                    byte += lens[first + i] as usize;
                    i += 1;
                }
                let index = run.first_index() + start as u64;
                if keep {
                    self.record(index, &run.digests()[start..i])?;
                } else {
                    self.write(&run.sub(start..i, start_byte..byte))?;
                }
            }
        }
        self.zero_checked(checked)
    }

    /// In place: makes every accepted zero block of `checked` zeros in the
    /// output (a new output already has holes there; kept blocks already
    /// read as zeros).
    pub fn zero_checked(&self, checked: &Checked<'_>) -> Result<()> {
        if !self.is_in_place() {
            return Ok(());
        }
        let mut offset = checked.offset();
        for ((zero, len), kept) in checked.good_zero().zip(checked.lens()).zip(checked.kept()) {
            if zero && !kept {
                self.zero(offset, *len)?;
            }
            offset += u64::from(*len);
        }
        Ok(())
    }

    /// The image digest folded from the manifest, in layout order.
    fn fold(&self) -> Result<Digest> {
        let file = self
            .manifest
            .try_clone()
            .map_err(|e| Error::io(&self.manifest_path, "read manifest", e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.manifest_path, "read manifest", e))?;
        let mut digester = ImageDigester::new(&self.layout);
        let mut entry = [0u8; 32];
        for b in self.layout.blocks() {
            reader
                .read_exact(&mut entry)
                .map_err(|e| Error::io(&self.manifest_path, "read manifest", e))?;
            digester.push(&BlockRecord {
                offset: b.offset,
                len: b.len,
                // A hole (never written) stands for a zero block.
                kind: if entry == [0u8; 32] {
                    BlockKind::Zero
                } else {
                    BlockKind::Data(Digest(entry))
                },
            });
        }
        Ok(digester.finish())
    }

    /// Checks the assembled image against the source's image digest (and,
    /// with `verify_readback`, re-reads it and repairs mismatching blocks
    /// from `repair`), then closes the output. Returns the blocks repaired.
    pub fn finish(&mut self, expected: &Digest, repair: &mut dyn BlockSource) -> Result<u64> {
        if self.fold()? != *expected {
            return Err(Error::Verification {
                path: self.output.temp_path().to_path_buf(),
                reason: "the verified blocks do not reproduce the source's image digest \
                         (a block is missing, or the source changed during the transfer)"
                    .into(),
            });
        }
        if self.verify_readback {
            self.readback(repair)
        } else {
            self.output.finish_writing()?;
            Ok(0)
        }
    }

    /// Moves the finished output to its final path.
    pub fn publish(self) -> Result<PathBuf> {
        let _ = self.output.dir().remove(&self.manifest_name);
        let journal = self.journal.clone();
        let dir = crate::safe_fs::Dir::of(self.output.final_path())?;
        let published = self.output.publish()?;
        if let Some(j) = journal {
            // Only now is the image consistent again.
            dir.remove(&j)?;
            dir.sync()?;
        }
        Ok(published)
    }

    /// Removes the output and its manifest (after a failure not worth resuming).
    pub fn discard(self) {
        let _ = self.output.dir().remove(&self.manifest_name);
        self.output.discard();
    }

    /// Keeps the partial output (for a resume) and removes the manifest.
    pub fn keep(mut self) -> PathBuf {
        let _ = self.output.dir().remove(&self.manifest_name);
        let _ = self.output.finish_writing();
        self.output.temp_path().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{hash_image, HashOptions, ZeroDigests};
    use crate::reconstruct::ImageBlockSource;
    use crate::{Image, RawImage};
    use std::sync::Arc;

    /// A source image of `blocks` 4 KiB blocks, every third one zero.
    fn source(dir: &Path, blocks: usize) -> (Vec<u8>, Layout, Digest, Arc<dyn Image>) {
        let mut data = vec![0u8; blocks * 4096];
        for (i, b) in data.chunks_mut(4096).enumerate() {
            if i % 3 != 0 {
                b.fill(i as u8 + 1);
            }
        }
        let path = dir.join("src.raw");
        std::fs::write(&path, &data).unwrap();
        let image: Arc<dyn Image> = Arc::new(RawImage::open(&path).unwrap());
        let layout = Layout::flat(image.len(), 4096).unwrap();
        let digest = hash_image(image.as_ref(), &layout, &HashOptions::default(), |_| Ok(()))
            .unwrap()
            .image_digest;
        (data, layout, digest, image)
    }

    fn write_blocks(a: &Assembly, data: &[u8], skip: Option<usize>) {
        let mut zeros = ZeroDigests::default();
        for (i, b) in data.chunks(4096).enumerate() {
            if Some(i) == skip {
                continue;
            }
            let d = Digest::of(b);
            let c = Checked::each(
                i as u64,
                i as u64 * 4096,
                b,
                &[4096],
                Expected::Digests(&[d]),
                &mut zeros,
            );
            a.write_checked(&c).unwrap();
        }
    }

    #[test]
    fn publishes_only_what_reproduces_the_source_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (data, layout, digest, image) = source(dir.path(), 12);
        let out = dir.path().join("out.raw");
        let mut repair = ImageBlockSource::new(Arc::clone(&image));

        // Every block written: verified as written, no readback, published.
        let mut a = Assembly::create(&out, &layout, &AssemblyOptions::default()).unwrap();
        write_blocks(&a, &data, None);
        assert_eq!(a.finish(&digest, &mut repair).unwrap(), 0);
        assert_eq!(a.publish().unwrap(), out);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(!manifest_path_for(&out).exists());

        // One data block never written: the fold differs, nothing is published.
        let out2 = dir.path().join("out2.raw");
        let mut a = Assembly::create(&out2, &layout, &AssemblyOptions::default()).unwrap();
        write_blocks(&a, &data, Some(4));
        let e = a.finish(&digest, &mut repair).unwrap_err();
        assert!(matches!(e, Error::Verification { .. }), "{e}");
        a.discard();
        assert!(!out2.exists() && !crate::temp_path_for(&out2).exists());
        assert!(!manifest_path_for(&out2).exists());

        // A wrong block cannot be written: the check refuses it.
        let mut zeros = ZeroDigests::default();
        let wrong = vec![9u8; 4096];
        let c = Checked::each(
            1,
            4096,
            &wrong,
            &[4096],
            Expected::Digests(&[Digest::of(&data[4096..8192])]),
            &mut zeros,
        );
        assert!(c.runs().is_empty());
    }
}
