//! What a daemon reads stays inside the directories it was given: a qcow2
//! naming a backing file elsewhere, or a link out of the export directory,
//! is refused, and seeds never pull outside files into the index. Locally,
//! backing files are followed as qemu-img does, and said. And an image
//! whose in-place update was interrupted is no source.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::Path;

use common::proc::daemon;
use common::{assert_code, closed_port, json_u64, random_image, stderr, TestEnv};

/// A qcow2 image at `path` of `size` over the raw backing file `backing`
/// (named as given: absolute, or relative to the image), as qemu-img
/// writes it.
fn overlay(env: &TestEnv, backing: &Path, path: &Path, size: &str) {
    env.qemu_img(&args![
        "create", "-f", "qcow2", "-F", "raw", "-b", backing, "-u", path, size
    ]);
}

#[test]
fn a_daemon_serves_no_backing_file_outside_its_directories() {
    let env = TestEnv::new();
    // The "secret": a file the daemon can read, outside its directories.
    let secret = random_image(&env, "private/secret.raw", 1, 7);
    let export = env.dir("export");
    let data = env.dir("data");
    overlay(&env, &secret, &export.join("x.qcow2"), "1M");
    // A link out of the export directory is no image either.
    std::os::unix::fs::symlink(&secret, export.join("link.raw")).unwrap();
    // A backing file inside the export directory is fine.
    let base = random_image(&env, "export/base.raw", 1, 8);
    env.qemu_img_in(
        &export,
        &args!["create", "-f", "qcow2", "-F", "raw", "-b", "base.raw", "-u", "ok.qcow2", "1M"],
    );
    let (d, addr) = daemon(&env, &data, &args!["--export", export]);

    for name in ["x.qcow2", "link.raw"] {
        let out = env.path(&format!("pulled-{name}.raw"));
        let r = env.cbt(&args!["recv", format!("{addr}/{name}"), out]);
        assert!(!r.status.success(), "{name}: pulled\n{}", stderr(&r));
        assert!(!out.exists(), "{name}: an output was left");
        let msg = stderr(&r);
        assert!(msg.contains(name), "{name}: {msg}");
        assert!(
            !msg.contains("secret.raw"),
            "the daemon must not tell its paths: {msg}"
        );
    }
    assert!(
        d.log().contains("secret.raw"),
        "the daemon logs what it refused:\n{}",
        d.log()
    );

    let out = env.path("pulled-ok.raw");
    let r = env.cbt(&args!["recv", format!("{addr}/ok.qcow2"), out]);
    assert_code(&r, 0);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&base).unwrap());

    // The same with the directories given relative to the daemon's
    // working directory: a backing file inside is still inside.
    drop(d);
    let (_d, addr) = daemon(&env, Path::new("data"), &args!["--export", "export"]);
    let out = env.path("pulled-ok-relative.raw");
    let r = env.cbt(&args!["recv", format!("{addr}/ok.qcow2"), out]);
    assert_code(&r, 0);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&base).unwrap());
}

#[test]
fn a_daemon_indexes_no_backing_file_outside_its_seed_roots() {
    let env = TestEnv::new();
    let secret = random_image(&env, "private/secret.raw", 2, 9);
    let seeds = env.dir("seeds");
    let data = env.dir("data");
    // Planted in a seed root: a qcow2 whose backing file is the secret, and
    // a link to it.
    overlay(&env, &secret, &seeds.join("planted.qcow2"), "2M");
    std::os::unix::fs::symlink(&secret, seeds.join("link.raw")).unwrap();
    let (d, addr) = daemon(&env, &data, &args!["--seed", seeds]);
    // A client pushing the secret's bytes would learn from blocks_local
    // whether the daemon holds them.
    let guess = env.path("guess.raw");
    std::fs::copy(&secret, &guess).unwrap();
    let v = common::cbt_json(&env, &args!["send", guess, format!("{addr}/guess.raw")]);
    assert_eq!(json_u64(&v, "blocks_local"), 0, "{v:#}\n{}", d.log());
    assert!(d.log().contains("outside"), "{}", d.log());
}

#[test]
fn a_local_copy_follows_backing_files_and_says_so() {
    let env = TestEnv::new();
    let base = random_image(&env, "elsewhere/base.raw", 1, 10);
    let dir = env.dir("images");
    overlay(&env, &base, &dir.join("top.qcow2"), "1M");
    let out = env.path("out.raw");
    let r = env.cbt(&args!["copy", dir.join("top.qcow2"), out]);
    assert_code(&r, 0);
    assert!(stderr(&r).contains("reading its backing file"), "{}", stderr(&r));
    assert!(stderr(&r).contains("base.raw"), "{}", stderr(&r));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&base).unwrap());
}

#[test]
fn an_interrupted_in_place_image_is_no_source_and_no_seed() {
    let env = TestEnv::new();
    let src = random_image(&env, "half.raw", 1, 11);
    // What a killed `cbt copy --inplace` leaves next to its output.
    std::fs::write(env.path(".half.raw.cbt-inplace"), b"cbt: in progress\n").unwrap();

    let out = env.path("out.raw");
    let r = env.cbt(&args!["copy", src, out]);
    assert_code(&r, 3);
    assert!(stderr(&r).contains(".half.raw.cbt-inplace"), "{}", stderr(&r));
    assert!(stderr(&r).contains("same cbt command"), "{}", stderr(&r));
    assert!(!out.exists());
    let r = env.cbt(&args!["send", src, format!("{}/x.raw", closed_port())]);
    assert_code(&r, 3);
    let r = env.cbt(&args!["copy", src, out, "--allow-inconsistent"]);
    assert_code(&r, 0);
    std::fs::remove_file(&out).unwrap();

    // As a seed it is skipped, with a warning.
    let copy = env.path("copy.raw");
    std::fs::copy(&src, &copy).unwrap();
    let again = env.path("again.raw");
    let r = env.cbt(&args!["copy", copy, again, "--seed", env.root(), "--json"]);
    assert_code(&r, 0);
    assert!(stderr(&r).contains("not using"), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(json_u64(&v, "blocks_local"), 0, "{v:#}");
}
