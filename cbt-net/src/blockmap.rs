//! Block and group numbering shared by both ends: block `i` is the `i`-th
//! block of the layout (in disk order), group `g` holds blocks
//! `[g·G, min((g+1)·G, N))`. Both sides compute offsets from indices, so
//! requests carry small integers and a peer cannot name an arbitrary offset.

use cbt_core::{BlockSpan, Layout, Region};

/// Index ↔ offset arithmetic over a layout, in O(log regions).
#[derive(Debug, Clone)]
pub struct BlockMap {
    block_size: u64,
    /// Each region with the index of its first block.
    regions: Vec<(Region, u64)>,
    blocks: u64,
    group_blocks: u64,
}

/// A group's blocks and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpan {
    /// Index of its first block.
    pub first_block: u64,
    /// Number of blocks.
    pub blocks: u32,
    /// Offset of its first byte in the image.
    pub offset: u64,
    /// Bytes it covers.
    pub len: u64,
}

impl BlockMap {
    /// Numbering of `layout`'s blocks in groups of `group_blocks` (≥ 1).
    pub fn new(layout: &Layout, group_blocks: u16) -> Self {
        let bs = u64::from(layout.block_size());
        let mut regions = Vec::with_capacity(layout.regions().len());
        let mut first = 0u64;
        for r in layout.regions() {
            regions.push((*r, first));
            first += Self::region_blocks(bs, r);
        }
        BlockMap {
            block_size: bs,
            regions,
            blocks: first,
            group_blocks: u64::from(group_blocks.max(1)),
        }
    }

    fn region_blocks(bs: u64, r: &Region) -> u64 {
        (r.end - 1 - r.base) / bs - (r.start - r.base) / bs + 1
    }

    /// Blocks in the image.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Blocks per group.
    pub fn group_blocks(&self) -> u64 {
        self.group_blocks
    }

    /// Groups in the image.
    pub fn groups(&self) -> u64 {
        self.blocks.div_ceil(self.group_blocks)
    }

    /// Block `index`, if it exists.
    pub fn span(&self, index: u64) -> Option<BlockSpan> {
        if index >= self.blocks {
            return None;
        }
        let at = self.regions.partition_point(|(_, first)| *first <= index) - 1;
        let (r, first) = self.regions[at];
        let k = index - first;
        let bs = self.block_size;
        let offset = if k == 0 {
            r.start
        } else {
            r.base + ((r.start - r.base) / bs + k) * bs
        };
        let end = (r.base + ((offset - r.base) / bs + 1) * bs).min(r.end);
        Some(BlockSpan {
            offset,
            len: (end - offset) as u32,
        })
    }

    /// The index of the block starting at `offset`, if one does.
    pub fn index_of(&self, offset: u64) -> Option<u64> {
        let at = self
            .regions
            .partition_point(|(r, _)| r.start <= offset)
            .checked_sub(1)?;
        let (r, first) = self.regions[at];
        if offset >= r.end {
            return None;
        }
        let bs = self.block_size;
        let k = (offset - r.base) / bs - (r.start - r.base) / bs;
        let index = first + k;
        (self.span(index)?.offset == offset).then_some(index)
    }

    /// Group `g`, if it exists.
    pub fn group(&self, g: u64) -> Option<GroupSpan> {
        let first_block = g.checked_mul(self.group_blocks)?;
        if first_block >= self.blocks {
            return None;
        }
        let last = (first_block + self.group_blocks).min(self.blocks) - 1;
        let a = self.span(first_block)?;
        let b = self.span(last)?;
        Some(GroupSpan {
            first_block,
            blocks: (last - first_block + 1) as u32,
            offset: a.offset,
            len: b.offset + u64::from(b.len) - a.offset,
        })
    }

    /// The spans of the blocks of a group, in order.
    pub fn group_blocks_spans(&self, g: &GroupSpan) -> impl Iterator<Item = BlockSpan> + '_ {
        (g.first_block..g.first_block + u64::from(g.blocks)).filter_map(|i| self.span(i))
    }
}

/// The digest of a group: BLAKE3 over its blocks' 32-byte digests in order
/// (a zero block contributes the digest of its zeros).
pub fn group_digest<'a>(digests: impl IntoIterator<Item = &'a cbt_core::Digest>) -> cbt_core::Digest {
    let mut h = blake3::Hasher::new();
    for d in digests {
        h.update(&d.0);
    }
    cbt_core::Digest(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbt_core::Partition;

    #[test]
    fn agrees_with_the_layout_iterator() {
        let parts = [
            Partition {
                start: 63 * 512,
                len: 12345 * 512,
            },
            Partition {
                start: 40 << 20,
                len: 10 << 20,
            },
        ];
        for bs in [512u32, 4096, 65536] {
            let layout = Layout::with_partitions(64 << 20, bs, &parts).unwrap();
            let map = BlockMap::new(&layout, 64);
            let all: Vec<BlockSpan> = layout.blocks().collect();
            assert_eq!(map.blocks(), all.len() as u64);
            for (i, b) in all.iter().enumerate() {
                assert_eq!(map.span(i as u64), Some(*b));
                assert_eq!(map.index_of(b.offset), Some(i as u64));
                if b.len > 1 {
                    assert_eq!(map.index_of(b.offset + 1), None);
                }
            }
            assert_eq!(map.span(all.len() as u64), None);
            let mut covered = 0;
            for g in 0..map.groups() {
                let s = map.group(g).unwrap();
                assert_eq!(s.offset, covered);
                covered += s.len;
                let spans: Vec<_> = map.group_blocks_spans(&s).collect();
                assert_eq!(spans.len(), s.blocks as usize);
            }
            assert_eq!(covered, 64 << 20);
            assert!(map.group(map.groups()).is_none());
            assert!(map.group(u64::MAX).is_none());
        }
    }
}
