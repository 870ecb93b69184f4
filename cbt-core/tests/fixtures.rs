//! Committed tiny fixtures: every defect and unsupported feature gets an
//! error that names the file and the problem.

use std::path::PathBuf;

use cbt_core::{open_image, ImageSpec};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fixtures")
        .join(name)
}

fn open_err(name: &str) -> String {
    match open_image(&ImageSpec::file(fixture(name))) {
        Ok(img) => panic!("{name} opened: {img:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "error does not name the file: {msg}");
            msg
        }
    }
}

#[test]
fn valid_empty_qcow2_reads_as_zeros() {
    let img = open_image(&ImageSpec::file(fixture("qcow2-v3-c512-1MiB-empty.qcow2"))).unwrap();
    assert_eq!(img.len(), 1 << 20);
    let mut buf = vec![1u8; 4096];
    img.read_at(&mut buf, 8192).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert!(img
        .data_extents(0, 1 << 20, cbt_core::ExtentScope::All)
        .unwrap()
        .is_empty());
}

#[test]
fn unsupported_features_are_named() {
    assert!(open_err("qcow2-dirty-c512-1MiB.qcow2").contains("dirty"));
    assert!(open_err("qcow2-zstd-c512-1MiB.qcow2").contains("zstd"));
    assert!(open_err("qcow2-extl2-c16k-1MiB.qcow2").contains("extended L2"));
}

#[test]
fn defects_are_described() {
    let e = open_err("qcow2-l1-past-eof-c512.qcow2");
    assert!(e.contains("L1 table") && e.contains("past the end"), "{e}");
    let e = open_err("qcow2-truncated-100b.qcow2");
    assert!(e.contains("truncated") || e.contains("header"), "{e}");
}

/// Found by the `guest_image` fuzz target: a superblock whose block count
/// (high half set without the 64-bit feature) makes 1.6e9 groups. ext4-view
/// would allocate 24 GiB for their descriptors and abort the process; the
/// description must fail with an error naming the image instead.
#[test]
fn absurd_ext4_group_count_is_an_error_not_an_abort() {
    let name = "ext4-superblock-1.6e9-groups.raw";
    let image = open_image(&ImageSpec::file(fixture(name))).unwrap();
    match cbt_core::describe_image(image, &cbt_core::DescribeOptions::packages_only()) {
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
    match cbt_core::describe_image(image, &cbt_core::DescribeOptions::packages_only()) {
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
    let e = cbt_core::describe_image(image, &cbt_core::DescribeOptions::packages_only()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(name) && msg.contains("block size"), "{msg}");
}
