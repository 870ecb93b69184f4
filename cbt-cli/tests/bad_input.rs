//! Broken and hostile inputs: truncated qcow2 files, random bytes behind a
//! qcow2 magic, a dirty image, a backing chain that loops, a missing file,
//! a bad block size. Each must end in a clean error that names the file,
//! never a panic, and must leave no output (final or partial) behind.

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{assert_no_output, json_u64, stderr, TestEnv, XorShift};

/// Exit code for malformed or unsupported input (see `exit_codes.rs`).
const EXIT_BAD_INPUT: i32 = 3;
/// Exit code for a bad command line.
const EXIT_USAGE: i32 = 2;

fn file_name(p: &Path) -> String {
    p.file_name().expect("file name").to_string_lossy().into_owned()
}

/// Runs `cbt copy SRC out/NAME.raw --seed empty` and `cbt estimate SRC
/// --against empty`, asserts both fail cleanly naming SRC, and returns the
/// copy's output.
fn refuse(env: &TestEnv, src: &Path) -> Output {
    let empty = env.dir("empty");
    let name = file_name(src);
    let out = env.path(&format!("out/{name}.raw"));
    let copy = env.cbt_fail(&args!["copy", src, &out, "--seed", &empty]);
    assert!(
        stderr(&copy).contains(&name),
        "copy: the error does not name {name}:\n{}",
        stderr(&copy)
    );
    assert_no_output(&out);
    let est = env.cbt_fail(&args!["estimate", src, "--against", &empty]);
    assert!(
        stderr(&est).contains(&name),
        "estimate: the error does not name {name}:\n{}",
        stderr(&est)
    );
    copy
}

/// A small valid qcow2 v3 image with data spread over its whole file.
fn valid_qcow2(env: &TestEnv, rel: &str) -> std::path::PathBuf {
    let a = env.ext4(&env.tree("tree", 9, 20), "work/a.img", 16);
    env.to_qcow2(&a, rel, &["-o", "compat=1.1"])
}

#[test]
fn truncated_qcow2_is_refused() {
    let env = TestEnv::new();
    let q = valid_qcow2(&env, "work/good.qcow2");
    let len = fs::metadata(&q).expect("stat").len();
    for (name, cut) in [("cut-1000.qcow2", 1000), ("cut-half.qcow2", len / 2)] {
        let bad = env.path(&format!("bad/{name}"));
        fs::copy(&q, &bad).expect("copy");
        fs::OpenOptions::new()
            .write(true)
            .open(&bad)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        let out = refuse(&env, &bad);
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_INPUT),
            "{name}:\n{}",
            stderr(&out)
        );
    }
}

#[test]
fn random_bytes_behind_a_qcow2_magic_are_refused() {
    let env = TestEnv::new();
    let mut rng = XorShift::new(1234);
    for (i, len) in [104usize, 4096, 70_000, 1 << 20].into_iter().enumerate() {
        let mut data = rng.bytes(len);
        data[..4].copy_from_slice(b"QFI\xfb");
        let bad = env.path(&format!("bad/random-{i}.qcow2"));
        fs::write(&bad, &data).expect("write");
        let out = refuse(&env, &bad);
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_INPUT),
            "{}:\n{}",
            bad.display(),
            stderr(&out)
        );
    }
}

#[test]
fn dirty_qcow2_is_refused() {
    let env = TestEnv::new();
    let q = valid_qcow2(&env, "work/good.qcow2");
    let mut data = fs::read(&q).expect("read");
    assert_eq!(
        u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        3,
        "need a qcow2 v3 image"
    );
    // incompatible_features is the big-endian u64 at offset 72; bit 0 is "dirty".
    data[79] |= 1;
    let bad = env.path("bad/dirty.qcow2");
    fs::write(&bad, &data).expect("write");
    let out = refuse(&env, &bad);
    assert!(stderr(&out).contains("dirty"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{}", stderr(&out));
}

#[test]
fn backing_chain_cycle_is_refused() {
    let env = TestEnv::new();
    let dir = env.dir("bad");
    env.qemu_img_in(&dir, &args!["create", "-q", "-f", "qcow2", "b.qcow2", "16M"]);
    env.qemu_img_in(
        &dir,
        &args!["create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    );
    env.qemu_img_in(
        &dir,
        &args!["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"],
    );
    let out = refuse(&env, &dir.join("a.qcow2"));
    assert!(stderr(&out).contains("loops"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{}", stderr(&out));
}

#[test]
fn missing_source_is_a_clear_error() {
    let env = TestEnv::new();
    let empty = env.dir("empty");
    let src = env.root().join("no-such-image.qcow2");
    let dst = env.path("out/x.raw");
    let out = env.cbt_fail(&args!["copy", &src, &dst, "--seed", &empty]);
    assert!(stderr(&out).contains("no-such-image.qcow2"), "{}", stderr(&out));
    assert_no_output(&dst);
}

#[test]
fn bad_block_size_is_a_usage_error() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("tree", 9, 5), "work/a.img", 16);
    let dst = env.path("out/x.raw");
    let out = env.cbt_fail(&args!["--block-size", "1000", "copy", &a, &dst, "--seed", &a]);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("block size"), "{}", stderr(&out));
    assert_no_output(&dst);
}

#[test]
fn broken_seeds_are_skipped() {
    let env = TestEnv::new();
    let q = valid_qcow2(&env, "work/good.qcow2");
    let a = env.root().join("work/a.img");
    let seeds = env.dir("seeds");
    fs::copy(&a, seeds.join("a.img")).expect("copy");
    let len = fs::metadata(&q).expect("stat").len();
    let cut = seeds.join("cut.qcow2");
    fs::copy(&q, &cut).expect("copy");
    fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let mut junk = XorShift::new(3).bytes(8192);
    junk[..4].copy_from_slice(b"QFI\xfb");
    fs::write(seeds.join("junk.qcow2"), &junk).expect("write");

    let out = env.path("out/a.img");
    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", &seeds]);
    assert_eq!(json_u64(&r, "blocks_missing"), 0, "{r:#}");
    env.assert_identical(&a, &out);
}
