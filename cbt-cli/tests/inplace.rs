//! `--inplace`: updating an existing image or block device, writing only
//! the blocks that differ, on images made by mkfs.ext4 and on a loop device.
#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{json_u64, TestEnv, BLOCK, MIB};

/// Bytes of the 4 KiB blocks where `a` and `b` differ (`b` padded or cut
/// to `a`'s length).
fn changed_bytes(a: &Path, b: &Path) -> u64 {
    let (a, mut b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    b.resize(a.len(), 0);
    a.chunks(BLOCK as usize)
        .zip(b.chunks(BLOCK as usize))
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.len() as u64)
        .sum()
}

fn copy_in_place(env: &TestEnv, src: &Path, dst: &Path) -> serde_json::Value {
    let v = env.cbt_json(&args!["copy", "--inplace", src, dst]);
    env.assert_identical(src, dst);
    assert!(
        !dst.with_file_name(format!(
            ".{}.cbt-inplace",
            dst.file_name().unwrap().to_string_lossy()
        ))
        .exists(),
        "the journal is removed once the update completed"
    );
    v
}

#[test]
fn identical_image_writes_nothing() {
    let env = TestEnv::new();
    let tree = env.tree("t", 1, 80);
    let src = env.ext4(&tree, "src.img", 48);
    let dst = env.path("dst.img");
    fs::copy(&src, &dst).unwrap();
    let v = copy_in_place(&env, &src, &dst);
    assert_eq!(json_u64(&v, "bytes_written"), 0, "{v:#}");
    assert!(json_u64(&v, "blocks_unchanged") > 0, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_missing"), 0, "{v:#}");
}

#[test]
fn slightly_different_image_writes_only_what_changed() {
    let env = TestEnv::new();
    let tree = env.tree("t", 1, 80);
    let old = env.ext4(&tree, "old.img", 48);
    // The new version: the same files plus a few more (mkfs.ext4 again).
    common::write_tree(&tree, 7, 6);
    let src = env.ext4(&tree, "src.img", 48);
    let dst = env.path("dst.img");
    fs::copy(&old, &dst).unwrap();
    let changed = changed_bytes(&src, &dst);
    assert!(changed > 0);
    let v = copy_in_place(&env, &src, &dst);
    let written = json_u64(&v, "bytes_written");
    // Target of issue 8: at most 1.05 x the bytes of the blocks that changed.
    assert!(
        written as f64 <= changed as f64 * 1.05,
        "wrote {written} bytes for {changed} changed:\n{v:#}"
    );
}

#[test]
fn longer_and_shorter_outputs_are_resized() {
    let env = TestEnv::new();
    let src = env.path("src.raw");
    let mut rng = common::XorShift::new(3);
    fs::write(&src, rng.bytes((6 * MIB) as usize)).unwrap();
    for extra in [-(3 * MIB as i64), 2 * MIB as i64] {
        let dst = env.path("dst.raw");
        let mut data = fs::read(&src).unwrap();
        data.resize((6 * MIB as i64 + extra) as usize, 0x55);
        fs::write(&dst, &data).unwrap();
        copy_in_place(&env, &src, &dst);
    }
}

#[test]
fn zero_blocks_become_holes() {
    let env = TestEnv::new();
    let src = env.path("src.raw");
    common::sparse_file(&src, 8 * MIB);
    common::write_at(&src, MIB, &[7u8; 4096]);
    let dst = env.path("dst.raw");
    fs::write(&dst, vec![0xAAu8; (8 * MIB) as usize]).unwrap();
    copy_in_place(&env, &src, &dst);
    // The old data was punched out, not overwritten with written zeros.
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&dst).unwrap().blocks() * 512
    };
    assert!(allocated < MIB, "{allocated} bytes still allocated");
}

#[test]
fn in_place_needs_a_raw_output() {
    let env = TestEnv::new();
    let src = env.path("src.raw");
    fs::write(&src, vec![1u8; MIB as usize]).unwrap();
    let dst = env.path("dst.qcow2");
    fs::write(&dst, vec![2u8; MIB as usize]).unwrap();
    let out = env.cbt_fail(&args!["copy", "--inplace", "--format", "qcow2", src, dst]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("raw"));
    assert_eq!(fs::read(&dst).unwrap(), vec![2u8; MIB as usize]);
}

/// A loop device as the output (root only; CI runs as root).
#[test]
fn loop_device_as_output() {
    if !common::root_or_skip("losetup") {
        return;
    }
    let env = TestEnv::new();
    let src = env.path("src.raw");
    let mut rng = common::XorShift::new(9);
    let mut data = rng.bytes((4 * MIB) as usize);
    data[(2 * MIB) as usize..(3 * MIB) as usize].fill(0);
    fs::write(&src, &data).unwrap();
    let backing = env.path("disk.raw");
    fs::write(&backing, vec![0x33u8; (4 * MIB) as usize]).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let v = env.cbt_json(&args!["copy", "--inplace", src, dev]);
    let mut got = vec![0u8; (4 * MIB) as usize];
    use std::io::Read;
    fs::File::open(&dev).unwrap().read_exact(&mut got).unwrap();
    assert!(got == data, "the device does not hold the image");
    assert!(json_u64(&v, "bytes_written") >= 4 * MIB, "{v:#}");
    // A device of another size is refused.
    let small = env.path("small.raw");
    fs::write(&small, vec![1u8; MIB as usize]).unwrap();
    env.cbt_fail(&args!["copy", "--inplace", small, dev]);
}
