//! Extra seed sources: files that are not disk images but hold blocks a
//! destination image is likely to contain, turned into raw images the
//! index walks along with its roots.
//!
//! The engine knows nothing of what they are made from. A
//! [`SeedProvider`] (given in [`IndexOptions::extra_seeds`]) prepares its
//! files for the index's block size when the index is built; the
//! [`PreparedSeeds`] it returns lists them and is kept alive by the
//! [`Index`] (it may own a scratch directory that must outlive the reads).
//! The package caches of the `cbt-teleport` crate are one such source;
//! callers that need their own type back downcast with
//! [`PreparedSeeds::as_any`].
//!
//! [`IndexOptions::extra_seeds`]: super::IndexOptions::extra_seeds
//! [`Index`]: super::Index

use std::any::Any;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// A source of extra seeds for the index.
pub trait SeedProvider: Send + Sync + Debug {
    /// Makes the seeds ready for blocks of `block_size`, keeping what it
    /// builds under `cache_dir` if given, on up to `threads` threads (0:
    /// one per core). Called once per index build.
    fn prepare(
        &self,
        block_size: u32,
        cache_dir: Option<&Path>,
        threads: usize,
    ) -> Result<Box<dyn PreparedSeeds>>;
}

/// Seeds made ready by a [`SeedProvider`], alive as long as the index.
pub trait PreparedSeeds: Send + Sync + Debug + Any {
    /// Files to index as raw images (with a flat layout), besides the roots.
    fn roots(&self) -> Vec<PathBuf>;

    /// The concrete type, for callers that know it (`downcast_ref`).
    fn as_any(&self) -> &dyn Any;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::digest::Digest;
    use crate::index::{Index, IndexOptions};
    use crate::layout::DEFAULT_BLOCK_SIZE;

    /// A provider of one file, remembering what it was prepared for.
    #[derive(Debug)]
    struct OneFile(PathBuf);

    #[derive(Debug)]
    struct Prepared {
        file: PathBuf,
        block_size: u32,
    }

    impl SeedProvider for OneFile {
        fn prepare(&self, block_size: u32, _: Option<&Path>, _: usize) -> Result<Box<dyn PreparedSeeds>> {
            Ok(Box::new(Prepared {
                file: self.0.clone(),
                block_size,
            }))
        }
    }

    impl PreparedSeeds for Prepared {
        fn roots(&self) -> Vec<PathBuf> {
            vec![self.file.clone()]
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn extra_seeds_are_indexed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Not a raw-image extension: indexed only because the provider names it.
        let seed = dir.path().join("seed.blob");
        let block: Vec<u8> = (0..DEFAULT_BLOCK_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&seed, &block).unwrap();
        let options = IndexOptions {
            extra_seeds: vec![Arc::new(OneFile(seed))],
            ..Default::default()
        };
        let index = Index::build(&[], &options).unwrap();
        assert!(index.lookup(&Digest::of(&block)).is_some());
        assert_eq!(index.extra_seeds().len(), 1);
        let prepared = index.extra_seeds()[0]
            .as_any()
            .downcast_ref::<Prepared>()
            .unwrap();
        assert_eq!(prepared.block_size, DEFAULT_BLOCK_SIZE);
    }
}
