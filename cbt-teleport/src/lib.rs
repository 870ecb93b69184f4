//! `cbt-teleport`: the functional-copy layer of cbt, on top of the block
//! engine (`cbt-core`). Where the engine moves blocks, this crate looks at
//! what a guest *is* and at what the destination already has in another
//! form:
//!
//! - guest inspection ([`describe_image`], [`describe_dir`]): the
//!   operating system, packages, repositories and user data of a disk
//!   image, read offline from its ext4 root filesystem;
//! - package caches as seeds ([`PackageCaches`]): `.deb` archives and apt
//!   index files turned into padded blobs whose blocks are the blocks of
//!   the installed files; plugged into the engine's index as a
//!   [`cbt_core::SeedProvider`], and measured as one candidate by
//!   [`estimate_with_packages`];
//! - the plan ([`teleport_plan`]): rebuild the guest from the closest local
//!   image plus packages and its user data, or send its blocks, whichever
//!   costs less;
//! - apt mirrors ([`mirror`]): fetch a guest's exact package versions into
//!   a package cache ([`Mirror`], [`fetch_packages`]);
//! - the destination of a teleport ([`GuestRequest`], [`PackageSources`]):
//!   resolve a guest described over the network against local package
//!   caches and mirrors, decide whether fetching pays, fetch, and account
//!   for where the blocks came from.
//!
//! Modules, leaves first: [`deb822`] (the `Field: value` parser), `inspect`
//! (guest inspection), `debcache` (package caches as seeds), `plan` (uses
//! both), [`mirror`] (uses `deb822` and the inspection types), `destination` (uses
//! `mirror` and `debcache`). Errors are
//! the engine's [`cbt_core::Error`]: every one names the file concerned,
//! and the CLI maps them to exit codes in one place; the mirror client,
//! whose errors name URLs, has its own [`MirrorError`].
#![forbid(unsafe_code)]

pub mod deb822;
mod debcache;
mod destination;
mod inspect;
pub mod mirror;
mod plan;
pub mod rebuild;

pub use debcache::{
    estimate_with_packages, index_name, prepare_package_blobs, read_deb, read_index, BlobSource, DebControl,
    DebInfo, DebLimits, FileSink, IndexCompression, IndexInfo, IndexLimits, IndexName, Measure, PackageBlob,
    PackageBlobs, PackageCacheShare, PackageCaches, PackageEstimate, SkippedSource, SourceBlocks,
};
pub use destination::{
    block_origins, fetch_may_pay, BlockOrigins, DestinationPlan, FailedFetch, FetchOutcome, GuestRequest,
    MirrorStatus, PackageSources, Resolution,
};
pub use inspect::{
    describe_dir, describe_fs, describe_image, dpkg, DescribeOptions, Description, EntryKind, FilesystemInfo,
    GuestFs, HostDirFs, KeyFile, Manifest, ManifestEntry, OsRelease, Package, Repository, SpecialEntry,
    SpecialKind, SymlinkEntry,
};
pub use mirror::{
    fetch_packages, guest_dists, index_architectures, packages_to_fetch, Dist, FetchOptions, FetchReport,
    Mirror, MirrorError, MirrorLimits, MirrorOptions, PackageId,
};
pub use plan::{
    teleport_plan, CandidateScore, MirrorFetch, PackageChange, Rejected, TeleportCost, TeleportOptions,
    TeleportPlan, TransferCost,
};
