//! End-to-end tests of `cbt copy` on images made by mkfs.ext4 and qemu-img:
//! seeds that are plain copies, internal snapshots, backing files; qcow2
//! sources with backing files, compressed and zero clusters; seeds that
//! changed behind the digest cache. Every output is checked with
//! `qemu-img compare`.

#[macro_use]
mod common;

use std::fs::{self, File};

use common::{json_f64, json_u64, nonzero_blocks, write_at, TestEnv, XorShift, MIB};
use serde_json::Value;

/// Non-zero blocks of the copied image, from a `cbt copy --json` report.
fn nonzero(report: &Value) -> u64 {
    json_u64(report, "blocks_total") - json_u64(report, "blocks_zero")
}

/// Checks the block counts of a copy report add up.
fn check_totals(report: &Value) {
    assert_eq!(
        json_u64(report, "blocks_zero")
            + json_u64(report, "blocks_local")
            + json_u64(report, "blocks_missing"),
        json_u64(report, "blocks_total"),
        "block counts do not add up:\n{report:#}"
    );
}

/// The commonality of the candidate whose path ends with `suffix`.
fn candidate(est: &Value, suffix: &str) -> f64 {
    let list = est["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("no candidates in:\n{est:#}"));
    let c = list
        .iter()
        .find(|c| c["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no candidate ending with {suffix:?} in:\n{est:#}"));
    json_f64(c, "found_fraction")
}

#[test]
fn identical_seed_supplies_every_block() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("tree", 1, 30), "src/a.img", 32);
    let seeds = env.dir("seeds");
    fs::copy(&a, seeds.join("copy-of-a.img")).expect("copy the image into the seeds");
    let out = env.path("out/a.img");

    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", &seeds]);

    check_totals(&r);
    assert_eq!(json_u64(&r, "blocks_missing"), 0, "{r:#}");
    assert_eq!(json_u64(&r, "bytes_missing"), 0, "{r:#}");
    assert!(
        json_u64(&r, "blocks_local") > 1000,
        "the tree alone is more than 1000 blocks:\n{r:#}"
    );
    assert_eq!(json_u64(&r, "index.images"), 1, "{r:#}");
    env.assert_identical(&a, &out);
}

#[test]
fn blocks_held_only_by_an_internal_snapshot_are_used() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("ta", 1, 30), "src/a.img", 32);
    let b = env.ext4(&env.tree("tb", 2, 30), "work/b.img", 32);
    // The seed held A when snapshot s1 was taken and holds B now.
    let seed = env.to_qcow2(&a, "seeds/vm.qcow2", &[]);
    env.qemu_img(&args!["snapshot", "-c", "s1", &seed]);
    env.write_over(&b, &seed);
    env.assert_identical(&seed, &b);

    let est = env.cbt_json(&args!["estimate", &a, "--against", &seed]);
    assert_eq!(candidate(&est, "vm.qcow2@s1"), 1.0, "the snapshot is A:\n{est:#}");
    assert!(
        candidate(&est, "vm.qcow2") < 0.5,
        "the current state is B, not A:\n{est:#}"
    );

    let out = env.path("out/a.img");
    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", env.root().join("seeds")]);
    check_totals(&r);
    assert_eq!(
        json_u64(&r, "blocks_missing"),
        0,
        "every block of A is in the snapshot:\n{r:#}"
    );
    assert!(json_u64(&r, "blocks_local") > 1000, "{r:#}");
    env.assert_identical(&a, &out);

    // The snapshot itself as the source, with nothing to seed from.
    let empty = env.dir("empty");
    let out2 = env.path("out/s1.raw");
    let r2 = env.cbt_json(&args!["copy", &seed, &out2, "--snapshot", "s1", "--seed", &empty]);
    check_totals(&r2);
    assert_eq!(json_u64(&r2, "blocks_local"), 0, "{r2:#}");
    assert_eq!(json_u64(&r2, "blocks_missing"), nonzero(&r2), "{r2:#}");
    env.assert_identical(&a, &out2);
}

#[test]
fn blocks_held_only_by_a_backing_file_of_a_seed_are_used() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("ta", 1, 30), "src/a.img", 32);
    let b = env.ext4(&env.tree("tb", 2, 30), "work/b.img", 32);
    // The base lies outside the seed directory: only the overlay's backing
    // chain (a relative name) leads to it.
    env.to_qcow2(&a, "backing/base.qcow2", &[]);
    let seeds = env.dir("seeds");
    env.qemu_img_in(
        &seeds,
        &args![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../backing/base.qcow2",
            "-F",
            "qcow2",
            "overlay.qcow2"
        ],
    );
    let overlay = seeds.join("overlay.qcow2");
    env.write_over(&b, &overlay);
    env.assert_identical(&overlay, &b);

    let out = env.path("out/a.img");
    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", &seeds]);
    check_totals(&r);
    assert_eq!(
        json_u64(&r, "index.images"),
        2,
        "the overlay and its backing file:\n{r:#}"
    );
    assert_eq!(
        json_u64(&r, "blocks_missing"),
        0,
        "every block of A is in the backing file:\n{r:#}"
    );
    assert!(json_u64(&r, "blocks_local") > 1000, "{r:#}");
    env.assert_identical(&a, &out);
}

/// The done-criterion: a qcow2 overlay whose backing file and an internal
/// snapshot holding its own data sit among the seeds is reconstructed, as
/// qcow2 and as raw, without reading a block from the source.
#[test]
fn overlay_source_is_rebuilt_from_its_backing_file_and_a_snapshot() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("ta", 1, 30), "work/a.img", 32);
    let b = env.ext4(&env.tree("tb", 2, 30), "work/b.img", 32);
    // M: A with a few 64 KiB runs rewritten, not aligned to clusters or blocks.
    let m = env.path("work/m.img");
    fs::copy(&a, &m).expect("copy A");
    let mut rng = XorShift::new(77);
    for k in 0..6 {
        write_at(&m, (3 + 4 * k) * MIB + 12 * 1024 + 512, &rng.bytes(64 * 1024));
    }

    let base = env.to_qcow2(&a, "seeds/base.qcow2", &[]);
    // A snapshot holds M; the current state of that image is B.
    let snap = env.to_qcow2(&m, "seeds/snap.qcow2", &[]);
    env.qemu_img(&args!["snapshot", "-c", "s1", &snap]);
    env.write_over(&b, &snap);

    // The source: an overlay on seeds/base.qcow2 holding only what M
    // changed (made by rebasing an overlay of M onto the base).
    let src = env.dir("src");
    env.qemu_img_in(
        &src,
        &args![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../work/m.img",
            "-F",
            "raw",
            "vm.qcow2"
        ],
    );
    env.qemu_img_in(
        &src,
        &args!["rebase", "-b", "../seeds/base.qcow2", "-F", "qcow2", "vm.qcow2"],
    );
    let overlay = src.join("vm.qcow2");
    env.assert_identical(&overlay, &m);
    env.assert_different(&overlay, &base);
    env.assert_different(&overlay, &snap);
    let info: Value = serde_json::from_slice(&env.qemu_img(&args!["info", "--output=json", &overlay]).stdout)
        .expect("qemu-img info JSON");
    assert_eq!(info["backing-filename"], "../seeds/base.qcow2", "{info:#}");

    let seeds = env.root().join("seeds");
    for format in ["qcow2", "raw"] {
        let out = env.path(&format!("out/vm.{format}"));
        let r = env.cbt_json(&args![
            "copy", &overlay, &out, "--seed", &seeds, "--format", format
        ]);
        check_totals(&r);
        assert_eq!(
            json_u64(&r, "blocks_missing"),
            0,
            "--format {format}: every block is in a seed:\n{r:#}"
        );
        assert!(json_u64(&r, "blocks_local") > 1000, "{r:#}");
        env.assert_identical(&overlay, &out);
        let info: Value = serde_json::from_slice(&env.qemu_img(&args!["info", "--output=json", &out]).stdout)
            .expect("info JSON");
        assert_eq!(info["format"], format, "{info:#}");
        if format == "qcow2" {
            env.qemu_img(&args!["check", &out]);
        }
    }
}

#[test]
fn seed_changed_behind_the_cache_is_detected_block_by_block() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("tree", 1, 30), "src/a.img", 32);
    let seeds = env.dir("seeds");
    let seed = seeds.join("a.img");
    fs::copy(&a, &seed).expect("copy A into the seeds");

    let idx = env.cbt_json(&args!["index", &seeds]);
    assert_eq!(json_u64(&idx, "images"), 1, "{idx:#}");
    assert!(json_u64(&idx, "bytes_hashed") > 0, "{idx:#}");

    // Rewrite some non-zero blocks in place, keeping size, inode and mtime:
    // the cache cannot notice.
    let before = fs::metadata(&seed).expect("stat seed");
    let mtime = before.modified().expect("mtime");
    let blocks = nonzero_blocks(&seed);
    let mut rng = XorShift::new(5);
    let changed: Vec<u64> = blocks.iter().copied().step_by(40).collect();
    assert!(changed.len() >= 10, "too few blocks to change: {}", changed.len());
    for &off in &changed {
        write_at(&seed, off, &rng.bytes(common::BLOCK as usize));
    }
    File::options()
        .write(true)
        .open(&seed)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    let after = fs::metadata(&seed).expect("stat seed");
    assert_eq!(after.modified().expect("mtime"), mtime);
    assert_eq!(after.len(), before.len());
    env.assert_different(&a, &seed);

    let out = env.path("out/a.img");
    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", &seeds]);
    check_totals(&r);
    assert_eq!(
        json_u64(&r, "index.from_cache"),
        1,
        "the stale cache entry must have been used:\n{r:#}"
    );
    assert!(
        json_u64(&r, "local_rejected") > 0,
        "changed seed blocks must be rejected:\n{r:#}"
    );
    assert!(json_u64(&r, "blocks_missing") > 0, "{r:#}");
    assert!(json_u64(&r, "blocks_local") > 1000, "{r:#}");
    env.assert_identical(&a, &out);
}

#[test]
fn compressed_qcow2_source_is_copied_exactly() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("tree", 3, 30), "work/a.img", 32);
    let src = env.to_qcow2(&a, "src/a.qcow2", &["-c"]);
    let map = env.qemu_img(&args!["map", "--output=json", &src]);
    assert!(
        String::from_utf8_lossy(&map.stdout).contains("\"compressed\": true"),
        "qemu-img made no compressed clusters:\n{}",
        String::from_utf8_lossy(&map.stdout)
    );

    // Everything comes from the source: every compressed cluster is read.
    let empty = env.dir("empty");
    let out = env.path("out/a.raw");
    let r = env.cbt_json(&args!["copy", &src, &out, "--seed", &empty]);
    check_totals(&r);
    assert_eq!(json_u64(&r, "blocks_missing"), nonzero(&r), "{r:#}");
    env.assert_identical(&src, &out);
    env.assert_identical(&a, &out);

    // And with the uncompressed image as a seed, nothing is read from the source.
    let seeds = env.dir("seeds");
    fs::copy(&a, seeds.join("a.img")).expect("copy A into the seeds");
    let out2 = env.path("out/a2.qcow2");
    let r2 = env.cbt_json(&args!["copy", &src, &out2, "--seed", &seeds, "--format", "qcow2"]);
    assert_eq!(json_u64(&r2, "blocks_missing"), 0, "{r2:#}");
    env.assert_identical(&src, &out2);
}

/// True if `qemu-img map` shows zero clusters in the image's own layer.
fn has_own_zero_clusters(env: &TestEnv, img: &std::path::Path) -> bool {
    let map: Value =
        serde_json::from_slice(&env.qemu_img(&args!["map", "--output=json", img]).stdout).expect("map JSON");
    map.as_array()
        .expect("map list")
        .iter()
        .any(|e| e["depth"] == 0 && e["present"] == true && e["zero"] == true)
}

#[test]
fn zero_clusters_read_as_zeros_over_old_data_and_backing_files() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("ta", 1, 30), "work/a.img", 32);
    let b = env.ext4(&env.tree("tb", 2, 30), "work/b.img", 32);
    // Seeds hold A, whose data the zero clusters hide.
    let seeds = env.dir("seeds");
    fs::copy(&a, seeds.join("a.img")).expect("copy A into the seeds");

    // A standalone image that held A and now holds B: where B is zero and
    // A was not, qemu writes zero clusters.
    let flat = env.to_qcow2(&a, "src/flat.qcow2", &[]);
    env.write_over(&b, &flat);
    // An overlay on A holding B: its zero clusters hide the backing file's data.
    let src = env.dir("src");
    env.to_qcow2(&a, "src/base.qcow2", &[]);
    env.qemu_img_in(
        &src,
        &args![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "overlay.qcow2"
        ],
    );
    let overlay = src.join("overlay.qcow2");
    env.write_over(&b, &overlay);

    for img in [&flat, &overlay] {
        env.assert_identical(img, &b);
        assert!(
            has_own_zero_clusters(&env, img),
            "{}: no zero clusters to test",
            img.display()
        );
        let name = img.file_name().expect("name").to_string_lossy().into_owned();
        let out = env.path(&format!("out/{name}.raw"));
        let r = env.cbt_json(&args!["copy", img, &out, "--seed", &seeds]);
        check_totals(&r);
        env.assert_identical(&b, &out);
    }
}
