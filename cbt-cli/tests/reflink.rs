//! Shared extents: runs of local blocks read from raw seeds are placed by
//! `copy_file_range`, which on XFS with reflink shares the seed's extents
//! instead of writing. Run on a real XFS made by mkfs.xfs and loop-mounted
//! (root only: skipped, saying so, as a normal user; CI runs as root and
//! fails them rather than skip: `common::root_or_skip`).
#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json_u64, TestEnv, MIB};

/// An XFS filesystem with reflink, loop-mounted; unmounted when dropped.
struct Xfs {
    mnt: PathBuf,
}

impl Xfs {
    /// `None` (the test skipped, saying so) when not root outside CI.
    fn new(env: &TestEnv) -> Option<Xfs> {
        if !common::root_or_skip("it loop-mounts an XFS filesystem") {
            return None;
        }
        let img = env.path("xfs.img");
        fs::File::create(&img).unwrap().set_len(512 * MIB).unwrap();
        let mkfs = common::tool("mkfs.xfs", "xfsprogs");
        let out = Command::new(mkfs)
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mkfs.xfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mnt = env.dir("mnt");
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Xfs { mnt })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// (bytes in extents flagged shared, bytes in all extents) per `filefrag -v`.
fn shared_bytes(path: &Path) -> (u64, u64) {
    let out = Command::new(common::tool("filefrag", "e2fsprogs"))
        .arg("-v")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut shared, mut all) = (0, 0);
    for line in text
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
    {
        // "   0:        0..   32767:         24..     32791:  32768:             last,shared,eof"
        let fields: Vec<&str> = line.split(':').collect();
        let Some(len) = fields.get(3).and_then(|f| f.trim().parse::<u64>().ok()) else {
            continue;
        };
        all += len * 4096;
        if line.contains("shared") {
            shared += len * 4096;
        }
    }
    (shared, all)
}

#[test]
fn all_local_copy_on_reflink_xfs_shares_extents() {
    let env = TestEnv::new();
    let Some(xfs) = Xfs::new(&env) else {
        return;
    };
    let seeds = xfs.mnt.join("seeds");
    fs::create_dir(&seeds).unwrap();
    // A real filesystem image as the seed; the source is a copy of it elsewhere.
    let tree = env.tree("tree", 5, 120);
    let base = env.ext4(&tree, "base.img", 96);
    fs::copy(&base, seeds.join("base.img")).unwrap();
    let out = xfs.mnt.join("out.img");
    let v = env.cbt_json(&args!["copy", base, out, "--seed", seeds]);
    env.assert_identical(&base, &out);
    let data = common::nonzero_blocks(&base).len() as u64 * 4096;
    let (written, cloned) = (json_u64(&v, "bytes_written"), json_u64(&v, "bytes_cloned"));
    // Target of issue 8: at most 1% of the data bytes written, the rest shared.
    assert!(
        written * 100 <= data,
        "wrote {written} of {data} data bytes:\n{v:#}"
    );
    assert!(cloned >= data * 99 / 100, "cloned {cloned} of {data}:\n{v:#}");
    let (shared, all) = shared_bytes(&out);
    assert!(
        shared * 100 >= all * 99,
        "filefrag: {shared} of {all} bytes shared"
    );
}

#[test]
fn unaligned_runs_fall_back_to_writing() {
    let env = TestEnv::new();
    let mut rng = common::XorShift::new(11);
    let data = rng.bytes((2 * MIB) as usize);
    let src = env.path("src.raw");
    fs::write(&src, &data).unwrap();
    // The same bytes 512 bytes into the seed: found with 512-byte blocks,
    // but never at a 4 KiB-aligned seed offset.
    let seeds = env.dir("seeds");
    let mut shifted = vec![0u8; 512];
    shifted.extend_from_slice(&data);
    fs::write(seeds.join("shifted.raw"), &shifted).unwrap();
    let out = env.path("out.raw");
    let v = env.cbt_json(&args!["--block-size", "512", "copy", src, out, "--seed", seeds]);
    env.assert_identical(&src, &out);
    assert_eq!(json_u64(&v, "bytes_cloned"), 0, "{v:#}");
    assert_eq!(json_u64(&v, "bytes_written"), 2 * MIB, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_missing"), 0, "{v:#}");
}

/// The receiver too: groups found in a raw seed on reflink XFS are shared.
#[test]
fn received_image_on_reflink_xfs_shares_the_seeds_extents() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let env = TestEnv::new();
    let Some(xfs) = Xfs::new(&env) else {
        return;
    };
    let seeds = xfs.mnt.join("seeds");
    fs::create_dir(&seeds).unwrap();
    let tree = env.tree("tree", 6, 120);
    let base = env.ext4(&tree, "base.img", 96);
    fs::copy(&base, seeds.join("base.img")).unwrap();
    let out = xfs.mnt.join("out.img");
    let mut recv = Command::new(env!("CARGO_BIN_EXE_cbt"))
        .args(["--no-cache", "recv", "--json", "--listen", "127.0.0.1:0"])
        .arg(&out)
        .arg("--seed")
        .arg(&seeds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(recv.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("recv printed its address").unwrap();
        if let Some(a) = line.strip_prefix("cbt: listening on ") {
            break a.trim().to_string();
        }
    };
    env.cbt_ok(&args!["send", base, addr]);
    let output = recv.wait_with_output().unwrap();
    assert!(output.status.success());
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    env.assert_identical(&base, &out);
    let data = common::nonzero_blocks(&base).len() as u64 * 4096;
    let cloned = json_u64(&v, "bytes_cloned");
    assert!(cloned >= data * 99 / 100, "cloned {cloned} of {data}:\n{v:#}");
    assert!(json_u64(&v, "bytes_written") * 100 <= data, "{v:#}");
    let (shared, all) = shared_bytes(&out);
    assert!(
        shared * 100 >= all * 99,
        "filefrag: {shared} of {all} bytes shared"
    );
}
