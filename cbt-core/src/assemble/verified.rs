//! The one place where bytes become trusted.
//!
//! Bytes read from a seed or received from a peer are raw until their
//! digest has been computed here and accepted. Only then do they become a
//! [`VerifiedRun`] (consecutive blocks, contiguous in one buffer and in the
//! image, each with the digest it was checked against), and a
//! [`VerifiedRun`] is the only thing [`super::Assembly::write`] accepts.
//! Zero blocks are checked too, but never become part of a run: a new
//! output leaves them as holes.
//!
//! Bytes the assembly read from its own output at their own offset are
//! *kept*: in place, they are recorded without being rewritten. Only the
//! assembly can mark them so ([`super::Assembly::check_own`],
//! [`super::Assembly::probe`]): what is recorded is always what was read
//! from where it lands.

use crate::digest::{digests_of, is_zero, Digest};
use crate::pipeline::ZeroDigests;

/// Consecutive verified non-zero blocks, ready to be written.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedRun<'a> {
    first_index: u64,
    offset: u64,
    data: &'a [u8],
    digests: &'a [Digest],
}

impl<'a> VerifiedRun<'a> {
    /// Index (in the layout) of the run's first block.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Byte offset of the run in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The verified bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The digests the blocks were checked against, in order.
    pub fn digests(&self) -> &'a [Digest] {
        self.digests
    }

    /// The blocks `blocks` of this run, which occupy bytes `bytes` of it.
    pub(super) fn sub(
        &self,
        blocks: std::ops::Range<usize>,
        bytes: std::ops::Range<usize>,
    ) -> VerifiedRun<'a> {
        VerifiedRun {
            first_index: self.first_index + blocks.start as u64,
            offset: self.offset + bytes.start as u64,
            data: &self.data[bytes],
            digests: &self.digests[blocks],
        }
    }
}

/// A region of consecutive blocks after checking: what each block hashed
/// to, which ones were accepted, and the runs of accepted non-zero blocks.
#[derive(Debug)]
pub struct Checked<'a> {
    first_index: u64,
    offset: u64,
    data: &'a [u8],
    lens: Vec<u32>,
    digests: Vec<Digest>,
    good: Vec<bool>,
    zero: Vec<bool>,
    /// Read by the assembly from its own output at this very offset.
    kept: Vec<bool>,
}

/// Where [`super::Assembly::probe`] finds a candidate for a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// No candidate left for this block.
    None,
    /// The caller put a candidate's bytes into the buffer.
    Filled,
    /// The output itself, at the block's own offset: the assembly reads it.
    InPlace,
}

/// What a region's blocks must hash to.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'e> {
    /// Each block its own digest (`None`: unknown, never accepted).
    Each(&'e [Option<Digest>]),
    /// Every block the digest given (one block, or a caller's list).
    Digests(&'e [Digest]),
}

impl<'a> Checked<'a> {
    /// Hashes the blocks of `data` (consecutive blocks of lengths `lens`,
    /// the first at `offset` with layout index `first_index`) and accepts
    /// each block whose digest equals the one expected.
    pub fn each(
        first_index: u64,
        offset: u64,
        data: &'a [u8],
        lens: &[u32],
        expected: Expected<'_>,
        zeros: &mut ZeroDigests,
    ) -> Checked<'a> {
        let mut c = Checked::hash(first_index, offset, data, lens, zeros);
        for (i, d) in c.digests.iter().enumerate() {
            let want = match expected {
                Expected::Each(e) => e.get(i).copied().flatten(),
                Expected::Digests(e) => e.get(i).copied(),
            };
            c.good[i] = want == Some(*d);
        }
        c
    }

    /// Hashes the blocks of `data` and accepts all of them or none, as
    /// `accept` decides from their digests (a group digest computed over
    /// them, say): a proof over all the digests at once.
    pub fn together(
        first_index: u64,
        offset: u64,
        data: &'a [u8],
        lens: &[u32],
        accept: impl FnOnce(&[Digest]) -> bool,
        zeros: &mut ZeroDigests,
    ) -> Checked<'a> {
        let mut c = Checked::hash(first_index, offset, data, lens, zeros);
        let ok = c.digests.len() == lens.len() && accept(&c.digests);
        c.good.iter_mut().for_each(|g| *g = ok);
        c
    }

    /// Fills `buf` block by block from candidate places and accepts each
    /// block whose bytes hash to its expected digest: for block `i`,
    /// `read(i, k, bytes)` supplies the `k`-th candidate (k = 0, 1, ...):
    /// its bytes put into `bytes` by the caller, or the output in place,
    /// read through `own` (offset, bytes; false if unreadable). Each
    /// candidate read is hashed once, here. Returns the check and, per
    /// block, which candidate matched. Blocks expected as `None` are not
    /// read; expected zero blocks are accepted when they read as zeros.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn probe(
        first_index: u64,
        offset: u64,
        buf: &'a mut [u8],
        lens: &[u32],
        expected: &[Option<Digest>],
        zeros: &mut ZeroDigests,
        mut read: impl FnMut(usize, usize, &mut [u8]) -> Candidate,
        own: impl Fn(u64, &mut [u8]) -> bool,
    ) -> (Checked<'a>, Vec<Option<usize>>) {
        let n = lens.len();
        let mut digests = Vec::with_capacity(n);
        let mut zero = Vec::with_capacity(n);
        let mut good = Vec::with_capacity(n);
        let mut kept = Vec::with_capacity(n);
        let mut matched = vec![None; n];
        let mut pos = 0usize;
        let mut block_offset = offset;
        for (i, &len) in lens.iter().enumerate() {
            let end = pos + len as usize;
            let Some(block) = buf.get_mut(pos..end) else {
                break;
            };
            let mut found = None;
            if let Some(want) = expected.get(i).copied().flatten() {
                for k in 0.. {
                    let in_place = match read(i, k, block) {
                        Candidate::None => break,
                        Candidate::Filled => false,
                        Candidate::InPlace => {
                            if !own(block_offset, block) {
                                continue;
                            }
                            true
                        }
                    };
                    let z = is_zero(block);
                    let d = if z { zeros.get(len) } else { Digest::of(block) };
                    if d == want {
                        found = Some((d, z, in_place));
                        matched[i] = Some(k);
                        break;
                    }
                }
            }
            // Not accepted: whatever the buffer holds there is never written.
            let (d, z, ok, here) = found.map_or((Digest([0; 32]), false, false, false), |(d, z, h)| {
                (d, z, true, h)
            });
            digests.push(d);
            zero.push(z);
            good.push(ok);
            kept.push(here);
            pos = end;
            block_offset += u64::from(len);
        }
        let data: &'a [u8] = buf;
        let checked = Checked {
            first_index,
            offset,
            data,
            lens: lens.to_vec(),
            digests,
            good,
            zero,
            kept,
        };
        (checked, matched)
    }

    /// Marks every accepted block as read from the output at its own
    /// offset (the assembly's own read, see [`super::Assembly::check_own`]).
    pub(super) fn keep_all(&mut self) {
        self.kept.clone_from(&self.good);
    }

    /// The bytes checked (for the assembly to tell its own buffer).
    pub(super) fn data(&self) -> &'a [u8] {
        self.data
    }

    fn hash(
        first_index: u64,
        offset: u64,
        data: &'a [u8],
        lens: &[u32],
        zeros: &mut ZeroDigests,
    ) -> Checked<'a> {
        let n = lens.len();
        let mut blocks: Vec<&[u8]> = Vec::with_capacity(n);
        let mut pos = 0usize;
        for &len in lens {
            let end = pos + len as usize;
            let Some(block) = data.get(pos..end) else {
                break;
            };
            blocks.push(block);
            pos = end;
        }
        // Zero blocks skip hashing; the others are hashed in SIMD batches.
        let zero: Vec<bool> = blocks.iter().map(|b| is_zero(b)).collect();
        let nonzero: Vec<&[u8]> = blocks
            .iter()
            .zip(&zero)
            .filter(|(_, z)| !**z)
            .map(|(b, _)| *b)
            .collect();
        let mut hashed = Vec::with_capacity(nonzero.len());
        digests_of(&nonzero, &mut hashed);
        let mut hashed = hashed.into_iter();
        let digests: Vec<Digest> = blocks
            .iter()
            .zip(&zero)
            .map(|(b, z)| match z {
                true => zeros.get(b.len() as u32),
                false => hashed.next().unwrap_or_else(|| Digest::of(b)),
            })
            .collect();
        Checked {
            first_index,
            offset,
            data,
            lens: lens.to_vec(),
            good: vec![false; digests.len()],
            kept: vec![false; digests.len()],
            digests,
            zero,
        }
    }

    /// Layout index of the first block.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Image offset of the first block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The blocks' lengths.
    pub fn lens(&self) -> &[u32] {
        &self.lens
    }

    /// What each block hashed to (fewer than asked if `data` was short).
    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    /// Which blocks were accepted.
    pub fn good(&self) -> &[bool] {
        &self.good
    }

    /// Accepted blocks read from the output at their own offset: in
    /// place, they need no write.
    pub fn kept(&self) -> &[bool] {
        &self.kept
    }

    /// Accepted blocks that are all zeros (not in any run).
    pub fn good_zero(&self) -> impl Iterator<Item = bool> + '_ {
        self.good.iter().zip(&self.zero).map(|(g, z)| *g && *z)
    }

    /// The runs of accepted non-zero blocks.
    pub fn runs(&self) -> Vec<VerifiedRun<'_>> {
        let mut runs = Vec::new();
        let mut pos = 0usize;
        let mut start: Option<(usize, usize)> = None;
        let mut close = |from: Option<(usize, usize)>, i: usize, pos: usize| {
            if let Some((first, byte)) = from {
                runs.push(VerifiedRun {
                    first_index: self.first_index + first as u64,
                    offset: self.offset + byte as u64,
                    data: &self.data[byte..pos],
                    digests: &self.digests[first..i],
                });
            }
        };
        for i in 0..self.digests.len() {
            if self.good[i] && !self.zero[i] {
                start.get_or_insert((i, pos));
            } else {
                close(start.take(), i, pos);
            }
            pos += self.lens[i] as usize;
        }
        close(start.take(), self.digests.len(), pos);
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_rejected_and_zero_blocks() {
        let mut zeros = ZeroDigests::default();
        let mut data = vec![1u8; 4 * 8];
        data[16..24].fill(0); // block 2 is zero
        let d: Vec<Digest> = data.chunks(8).map(Digest::of).collect();
        let mut wrong = d.clone();
        wrong[1] = Digest::of(b"other");
        let c = Checked::each(10, 800, &data, &[8; 4], Expected::Digests(&wrong), &mut zeros);
        assert_eq!(c.good(), [true, false, true, true]);
        let runs = c.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].first_index(), runs[0].offset(), runs[0].data().len()),
            (10, 800, 8)
        );
        assert_eq!(
            (runs[1].first_index(), runs[1].offset(), runs[1].digests()),
            (13, 824, &d[3..])
        );
        assert_eq!(c.good_zero().collect::<Vec<_>>(), [false, false, true, false]);

        let none = Checked::together(0, 0, &data, &[8; 4], |_| false, &mut zeros);
        assert!(none.runs().is_empty() && none.good().iter().all(|g| !g));
        let all = Checked::together(0, 0, &data, &[8; 4], |ds| ds == d, &mut zeros);
        assert_eq!(all.runs().len(), 2);

        // Probing: block 0 matches at its second candidate, block 1 never,
        // block 2 in place (kept), block 3 is not looked for; each
        // candidate is hashed as read.
        let mut buf = vec![0u8; 32];
        let expected = [Some(d[0]), Some(d[1]), Some(d[2]), None];
        let (p, which) = Checked::probe(
            5,
            40,
            &mut buf,
            &[8; 4],
            &expected,
            &mut zeros,
            |i, k, bytes| match (i, k) {
                (0, 1) => {
                    bytes.copy_from_slice(&data[..8]);
                    Candidate::Filled
                }
                (2, 0) => Candidate::InPlace,
                (0, 0) | (1, 0..=2) => {
                    bytes.fill(9);
                    Candidate::Filled
                }
                _ => Candidate::None,
            },
            |offset, bytes| {
                assert_eq!(offset, 40 + 16, "the block's own offset");
                bytes.copy_from_slice(&data[16..24]);
                true
            },
        );
        assert_eq!(p.good(), [true, false, true, false]);
        assert_eq!(p.kept(), [false, false, true, false]);
        assert_eq!(which, [Some(1), None, Some(0), None]);
        assert_eq!(p.runs().len(), 1, "block 2 is zero: a hole, not a run");
        assert_eq!(p.runs()[0].data(), &data[..8]);
        assert_eq!((p.runs()[0].first_index(), p.runs()[0].offset()), (5, 40));
        // Too little data: the missing blocks are never accepted.
        let short = Checked::each(0, 0, &data[..12], &[8; 4], Expected::Digests(&d), &mut zeros);
        assert_eq!(short.good(), [true]);
        assert!(
            Checked::together(0, 0, &data[..12], &[8; 4], |_| true, &mut zeros)
                .runs()
                .is_empty()
        );
    }
}
