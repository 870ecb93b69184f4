//! Committed tiny ext4 fixtures found by the `guest_image` fuzz target:
//! describing them fails with an error naming the image (or skips the
//! damaged part) instead of aborting the process.

use std::path::PathBuf;

use cbt_core::{open_image, ImageSpec};
use cbt_teleport::{describe_image, DescribeOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fixtures")
        .join(name)
}

/// Found by the `guest_image` fuzz target: a superblock whose block count
/// (high half set without the 64-bit feature) makes 1.6e9 groups. ext4-view
/// would allocate 24 GiB for their descriptors and abort the process; the
/// description must fail with an error naming the image instead.
#[test]
fn absurd_ext4_group_count_is_an_error_not_an_abort() {
    let name = "ext4-superblock-1.6e9-groups.raw";
    let image = open_image(&ImageSpec::file(fixture(name))).unwrap();
    match describe_image(image, &DescribeOptions::packages_only()) {
        Ok(d) => assert!(d.filesystems.iter().all(|f| !f.root), "{d:?}"),
        Err(e) => assert!(e.to_string().contains(name), "{e}"),
    }
}

/// Found by the `guest_image` fuzz target: a symlink inode claiming a
/// 188 GB target. ext4-view allocates a target's whole size before reading
/// it; the description must fail (or skip the link) instead of aborting.
#[test]
fn absurd_ext4_symlink_size_is_an_error_not_an_abort() {
    let name = "ext4-fuzz-crash-2-oom.raw";
    let image = open_image(&ImageSpec::file(fixture(name))).unwrap();
    match describe_image(image, &DescribeOptions::packages_only()) {
        Ok(d) => assert!(!d.filesystems.is_empty(), "{d:?}"),
        Err(e) => assert!(e.to_string().contains(name), "{e}"),
    }
}

/// Found by the `guest_image` fuzz target (as a 946 MB peak, then aborting
/// once the field was raised): a superblock with a 2 GiB block size, for
/// which ext4-view allocates its block cache before reading anything.
#[test]
fn absurd_ext4_block_size_is_an_error_not_an_abort() {
    let name = "ext4-superblock-2GiB-blocks.raw";
    let image = open_image(&ImageSpec::file(fixture(name))).unwrap();
    let e = describe_image(image, &DescribeOptions::packages_only()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(name) && msg.contains("block size"), "{msg}");
}
