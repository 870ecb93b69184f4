//! `cbt-core`: the engine of cbt, content-based block transfer for virtual
//! machine disk images.
//!
//! Components, in the order data flows through them:
//! - [`Image`]: read-only images (raw files and block devices, qcow2 with
//!   backing chains, qcow2 internal snapshots), with allocation maps so holes
//!   are never read;
//! - [`Layout`]: how an image is cut into blocks, aligned to each partition's
//!   start (MBR, GPT) and to the disk elsewhere;
//! - [`hash_image`]: the hashing pipeline (reader → hasher pool → in-order
//!   output) producing a [`BlockRecord`] per block;
//! - [`Index`]: every block of every image and snapshot at the destination,
//!   with a persistent per-image digest cache, plus the blocks of extra
//!   seed sources plugged in through [`SeedProvider`] (the package caches
//!   of the `cbt-teleport` crate);
//! - [`assemble`]: the one assembly engine: the output (at a temporary
//!   path), the single check of every block ([`Checked`] → [`VerifiedRun`],
//!   the only thing its writer accepts), the manifest of checked digests,
//!   verification against the source's image digest, optional readback and
//!   repair, publish;
//! - [`reconstruct`]: `cbt copy`'s planner, local copiers and fetcher over
//!   the assembly engine, with missing blocks from a [`BlockSource`].
#![forbid(unsafe_code)]

mod digest;
mod error;
mod image;
mod partition;

pub use digest::{digests_of, is_zero, Digest};
pub use error::{Error, Result};
pub use image::{
    backing_chain, detect_format, list_snapshots, open_image, parse_header, parse_snapshot_table,
    read_snapshot_table, Backing, Extent, ExtentScope, Image, ImageFormat, ImageSpec, Qcow2Header,
    Qcow2Image, RawImage, SnapshotImage, SnapshotInfo, QCOW2_MAGIC,
};
pub use partition::{parse_partitions, read_partitions, Partition};
mod layout;
mod pipeline;

pub use layout::{
    check_block_size, BlockSpan, Layout, Region, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
pub use pipeline::{
    hash_image, BlockKind, BlockRecord, HashOptions, HashSummary, ImageDigester, ZeroDigests,
};
mod index;

pub use index::{
    discover_images, Index, IndexOptions, IndexStats, IndexedImage, Location, PreparedSeeds, SeedProvider,
};
mod output;
mod reconstruct;
mod safe_fs;

pub use safe_fs::{Dir, Entry as DirEntry};

pub use output::{temp_path_for, OutputFile, OutputFormat};
pub use reconstruct::{
    image_digest, reconstruct, BlockRef, BlockSource, ImageBlockSource, Progress, ReconstructOptions, Report,
};
pub mod assemble;

pub use assemble::{
    check_consistent, Assembly, AssemblyOptions, Candidate, Checked, Cloned, Expected, InPlaceRecord,
    VerifiedRun,
};
mod estimate;

pub use estimate::{estimate, Commonality, Estimate};

// The README's library example is compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
