//! `--verify-readback`: re-read the whole output, compare every block with
//! the manifest, and fetch mismatching blocks again from the caller's
//! [`BlockSource`] (two rounds), for disks that may return other bytes than
//! were written.

use std::io::{BufReader, Read, Seek, SeekFrom};

use crossbeam_channel::bounded;

use super::verified::{Checked, Expected};
use super::Assembly;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::pipeline::{hash_image, HashOptions, ZeroDigests};
use crate::reconstruct::{BlockRef, BlockSource};

/// Repair rounds after a failed readback.
const REPAIR_ROUNDS: usize = 2;
/// Most mismatching blocks a repair will try to fix.
const MAX_REPAIR_BLOCKS: usize = 1 << 20;

impl Assembly {
    /// Re-reads the output and repairs it; returns the blocks repaired.
    /// Leaves the output closed.
    pub(super) fn readback(&mut self, source: &mut dyn BlockSource) -> Result<u64> {
        let written = self.output.finish_writing()?;
        let manifest = self
            .manifest
            .try_clone()
            .map_err(|e| Error::io(&self.manifest_path, "read manifest", e))?;
        let mut manifest = BufReader::with_capacity(1 << 20, manifest);
        manifest
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.manifest_path, "read manifest", e))?;
        let mut zeros = ZeroDigests::default();
        let mut bad: Vec<BlockRef> = Vec::new();
        let mut too_many = false;
        let mut want = [0u8; 32];
        let mut index = 0u64;
        let manifest_path = self.manifest_path.clone();
        hash_image(
            written.as_ref(),
            &self.layout,
            &HashOptions::default(),
            |records| {
                for r in records {
                    manifest
                        .read_exact(&mut want)
                        .map_err(|e| Error::io(&manifest_path, "read manifest", e))?;
                    let got = r.digest(&mut zeros);
                    let want_digest = if want == [0u8; 32] {
                        zeros.get(r.len)
                    } else {
                        Digest(want)
                    };
                    if got != want_digest {
                        if bad.len() >= MAX_REPAIR_BLOCKS {
                            too_many = true;
                        } else {
                            bad.push(BlockRef {
                                index,
                                offset: r.offset,
                                len: r.len,
                                digest: want_digest,
                            });
                        }
                    }
                    index += 1;
                }
                Ok(())
            },
        )?;
        if too_many {
            return Err(Error::Verification {
                path: self.output.temp_path().to_path_buf(),
                reason: format!("more than {MAX_REPAIR_BLOCKS} blocks differ from the source"),
            });
        }
        let repaired = bad.len() as u64;
        for round in 0..=REPAIR_ROUNDS {
            if bad.is_empty() {
                return Ok(repaired);
            }
            if round == REPAIR_ROUNDS {
                break;
            }
            tracing::warn!(
                "{} blocks differ from the source after writing; fetching them again",
                bad.len()
            );
            self.output.reopen()?;
            self.repair(&bad, source, &mut zeros)?;
            let written = self.output.finish_writing()?;
            let mut still_bad = Vec::new();
            let mut buf = Vec::new();
            for b in &bad {
                buf.resize(b.len as usize, 0);
                written.read_at(&mut buf, b.offset)?;
                if Digest::of(&buf) != b.digest {
                    still_bad.push(*b);
                }
            }
            bad = still_bad;
        }
        Err(Error::Verification {
            path: self.output.temp_path().to_path_buf(),
            reason: format!(
                "{} blocks still differ from the source after {REPAIR_ROUNDS} repair rounds",
                bad.len()
            ),
        })
    }

    fn repair(&self, bad: &[BlockRef], source: &mut dyn BlockSource, zeros: &mut ZeroDigests) -> Result<()> {
        let (tx, rx) = bounded::<BlockRef>(bad.len().max(1));
        for b in bad {
            let _ = tx.send(*b);
        }
        drop(tx);
        let name = source.name();
        source.fetch(rx, &mut |b, data| {
            // Check against what was asked for, not what the source says.
            let Ok(at) = bad.binary_search_by_key(&b.offset, |r| r.offset) else {
                return Err(Error::BlockSource {
                    name: name.clone(),
                    source: format!("block at offset {} was not asked for", b.offset).into(),
                });
            };
            let want = bad[at];
            let checked = Checked::each(
                want.index,
                want.offset,
                data,
                &[want.len],
                Expected::Digests(&[want.digest]),
                zeros,
            );
            if !checked.good().first().copied().unwrap_or(false) {
                return Err(Error::BlockSource {
                    name: name.clone(),
                    source: format!("block at offset {} does not match its digest", b.offset).into(),
                });
            }
            if checked.good_zero().next().unwrap_or(false) {
                // A zero block (a hole) read back as data: its checked
                // zeros are written as they are (runs never hold zeros).
                return self.output.write_at(data, want.offset);
            }
            self.write_checked(&checked)
        })
    }
}
