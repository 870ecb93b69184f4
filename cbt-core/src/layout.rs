//! How an image is cut into blocks.
//!
//! Filesystems align files to the start of their partition, not of the
//! disk, so blocks inside a partition are aligned to the partition's first
//! byte; outside partitions they are aligned to the disk. A block never
//! straddles a region boundary, so a region's first and last blocks may be
//! short.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::partition::{read_partitions, Partition};

/// Smallest supported block size.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest supported block size.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Default block size: the usual filesystem block.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// Checks that `size` is a power of two between 512 B and 1 MiB.
pub fn check_block_size(size: u32) -> Result<()> {
    if size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "block size {size} must be a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"
        )))
    }
}

/// A contiguous part of the disk whose blocks share one alignment base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Block boundaries lie at `base + k * block_size`.
    pub base: u64,
}

/// The block structure of one image: its regions and block size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    block_size: u32,
    len: u64,
    regions: Vec<Region>,
}

/// One block of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes (at most the block size).
    pub len: u32,
}

impl Layout {
    /// Blocks aligned to the disk only.
    pub fn flat(len: u64, block_size: u32) -> Result<Self> {
        Self::with_partitions(len, block_size, &[])
    }

    /// Blocks aligned to each partition's start and to the disk elsewhere.
    /// `partitions` must be sorted and non-overlapping (as returned by
    /// [`read_partitions`]); parts outside the disk are ignored.
    pub fn with_partitions(len: u64, block_size: u32, partitions: &[Partition]) -> Result<Self> {
        check_block_size(block_size)?;
        let mut regions = Vec::with_capacity(partitions.len() * 2 + 1);
        let mut pos = 0u64;
        for p in partitions {
            let start = p.start.min(len);
            let end = p.start.saturating_add(p.len).min(len);
            if start < pos || start >= end {
                continue;
            }
            if start > pos {
                regions.push(Region {
                    start: pos,
                    end: start,
                    base: 0,
                });
            }
            regions.push(Region {
                start,
                end,
                base: start,
            });
            pos = end;
        }
        if pos < len {
            regions.push(Region {
                start: pos,
                end: len,
                base: 0,
            });
        }
        Ok(Layout {
            block_size,
            len,
            regions,
        })
    }

    /// Reads `image`'s partition table and builds its layout.
    pub fn detect(image: &dyn Image, block_size: u32) -> Result<Self> {
        let parts = read_partitions(image)?;
        Self::with_partitions(image.len(), block_size, &parts)
    }

    /// Rebuilds a layout received from elsewhere (a peer, a file), checking
    /// that its regions tile `[0, len)` in order.
    pub fn from_regions(len: u64, block_size: u32, regions: Vec<Region>) -> Result<Self> {
        check_block_size(block_size)?;
        let mut pos = 0;
        for r in &regions {
            if r.start != pos || r.end <= r.start || r.base > r.start {
                return Err(Error::Config(format!("invalid layout region {r:?}")));
            }
            pos = r.end;
        }
        if pos != len {
            return Err(Error::Config(format!("layout covers {pos} bytes of {len}")));
        }
        Ok(Layout {
            block_size,
            len,
            regions,
        })
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Image length covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The regions, in disk order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Total number of blocks.
    pub fn block_count(&self) -> u64 {
        self.regions.iter().map(|r| self.region_blocks(r)).sum()
    }

    fn region_blocks(&self, r: &Region) -> u64 {
        // One block plus one more per boundary strictly inside the region.
        let bs = u64::from(self.block_size);
        (r.end - 1 - r.base) / bs - (r.start - r.base) / bs + 1
    }

    /// Every block, in disk order.
    pub fn blocks(&self) -> impl Iterator<Item = BlockSpan> + '_ {
        let bs = u64::from(self.block_size);
        self.regions.iter().flat_map(move |r| {
            let mut pos = r.start;
            std::iter::from_fn(move || {
                if pos >= r.end {
                    return None;
                }
                let next_boundary = r.base + ((pos - r.base) / bs + 1) * bs;
                let end = next_boundary.min(r.end);
                let span = BlockSpan {
                    offset: pos,
                    len: (end - pos) as u32,
                };
                pos = end;
                Some(span)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tiles(l: &Layout) {
        let mut pos = 0;
        let mut n = 0;
        for b in l.blocks() {
            assert_eq!(b.offset, pos);
            assert!(b.len > 0 && b.len <= l.block_size());
            pos += u64::from(b.len);
            n += 1;
        }
        assert_eq!(pos, l.len());
        assert_eq!(n, l.block_count());
    }

    #[test]
    fn flat_layout() {
        let l = Layout::flat(10_000, 4096).unwrap();
        let v: Vec<_> = l.blocks().collect();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[2],
            BlockSpan {
                offset: 8192,
                len: 1808
            }
        );
        check_tiles(&l);
        check_tiles(&Layout::flat(0, 4096).unwrap());
        check_tiles(&Layout::flat(8192, 4096).unwrap());
    }

    #[test]
    fn partition_at_sector_63() {
        let p = Partition {
            start: 63 * 512,
            len: 100 * 4096,
        };
        let l = Layout::with_partitions(1 << 20, 4096, &[p]).unwrap();
        check_tiles(&l);
        let v: Vec<_> = l.blocks().collect();
        // gap [0, 32256): 7 full blocks + one short one
        assert_eq!(
            v[7],
            BlockSpan {
                offset: 28672,
                len: 32256 - 28672
            }
        );
        // partition blocks aligned to its start
        assert_eq!(
            v[8],
            BlockSpan {
                offset: 32256,
                len: 4096
            }
        );
        assert_eq!(v[9].offset, 32256 + 4096);
        assert!(v.iter().any(|b| b.offset == 32256 + 100 * 4096));
    }

    #[test]
    fn rejects_bad_sizes_and_regions() {
        assert!(check_block_size(1000).is_err());
        assert!(check_block_size(256).is_err());
        assert!(check_block_size(2 << 20).is_err());
        assert!(check_block_size(512).is_ok());
        assert!(Layout::from_regions(
            100,
            4096,
            vec![Region {
                start: 0,
                end: 50,
                base: 0
            }]
        )
        .is_err());
        let ok = Layout::with_partitions(
            1 << 20,
            512,
            &[Partition {
                start: 4096,
                len: 8192,
            }],
        )
        .unwrap();
        check_tiles(&ok);
        assert_eq!(
            Layout::from_regions(1 << 20, 512, ok.regions().to_vec()).unwrap(),
            ok
        );
    }

    #[test]
    fn odd_partitions_tile() {
        let parts = [
            Partition {
                start: 63 * 512,
                len: 12345 * 512,
            },
            Partition {
                start: 63 * 512 + 12345 * 512,
                len: 777,
            },
            Partition {
                start: 40 << 20,
                len: 100 << 20,
            },
        ];
        for bs in [512, 4096, 65536, 1 << 20] {
            check_tiles(&Layout::with_partitions(64 << 20, bs, &parts).unwrap());
        }
    }
}
