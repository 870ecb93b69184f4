//! End-to-end tests of the functional-copy layer: `cbt describe`,
//! `cbt estimate --package-cache`, `cbt copy --package-cache` and
//! `cbt teleport plan`, on Debian-like guests built at test time.
//!
//! Each guest is a tree with a hand-made dpkg database (status, file
//! lists, md5sums, conffiles, a diversion) and merged `/usr`. Its packages
//! also exist as real `.deb` archives built with `dpkg-deb --build` (xz,
//! zstd, gzip and uncompressed members). The tree is put into ext4 images
//! with `mkfs.ext4 -d`, unpartitioned and inside a GPT partition. The tests
//! check the exact package list, the exact user-data manifest, and the
//! exact number of blocks the package cache supplies.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::{assert_success, copy_into, json_u64, sparse_file, tool, TestEnv, XorShift, BLOCK, MIB};

/// Exit code for malformed or unsupported input.
const EXIT_BAD_INPUT: i32 = 3;

use common::guest::*;

#[test]
fn describe_lists_packages_and_the_exact_user_data() {
    let env = TestEnv::new();
    let g = make_guest(&env, "guest", base_packages("1.0-1"), true, "12");
    let plain = env.ext4(&g.root, "plain.img", 32);
    let gpt = gpt_image(&env, &g.root, "gpt.img", 32);
    let qcow = env.to_qcow2(&gpt, "gpt.qcow2", &[]);
    let expected_packages: Vec<(String, String, String, String)> = {
        let mut v: Vec<_> = g
            .packages
            .iter()
            .map(|p| {
                (
                    p.name.to_string(),
                    p.version.to_string(),
                    p.arch.to_string(),
                    "installed".to_string(),
                )
            })
            .collect();
        v.push(("oldpkg".into(), "0.1".into(), "all".into(), "config-files".into()));
        v.sort();
        v
    };
    let expected = g.expected_manifest();
    assert!(expected
        .iter()
        .any(|e| e.0 == "/home/alice/notes.txt" && e.1 == "unowned"));
    assert!(
        expected
            .iter()
            .any(|e| e.0 == "/usr/bin/tool" && e.1 == "unowned"),
        "the admin's file at a diverted path"
    );

    for (img, partition) in [
        (&plain, Value::Null),
        (&gpt, Value::from(1)),
        (&qcow, Value::from(1)),
    ] {
        let v = env.cbt_json(&args!["describe", img]);
        let what = img.display();
        assert_eq!(v["distro"], "debian", "{what}");
        assert_eq!(v["version"], "12", "{what}");
        assert_eq!(v["os"]["version_codename"], "bookworm", "{what}");
        assert_eq!(v["architecture"], "amd64", "{what}");
        assert_eq!(v["package_manager"], "dpkg", "{what}");
        assert_eq!(v["hostname"], "web1", "{what}");
        assert_eq!(v["filesystems"][0]["partition"], partition, "{what}");
        assert_eq!(v["filesystems"][0]["kind"], "ext4", "{what}");
        assert_eq!(v["filesystems"][0]["root"], true, "{what}");
        assert_eq!(packages_of(&v), expected_packages, "{what}");
        let repos: Vec<(&str, &str)> = v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["uri"].as_str().unwrap(), r["suite"].as_str().unwrap()))
            .collect();
        assert_eq!(
            repos,
            [
                ("http://deb.debian.org/debian", "bookworm"),
                ("https://extra.example/apt", "stable")
            ],
            "{what}"
        );
        assert_eq!(v["keys"][0]["path"], "/etc/apt/trusted.gpg.d/extra.gpg", "{what}");
        assert_eq!(v["keys"][0]["size"], 1_200, "{what}");
        assert_eq!(manifest_of(&v), expected, "{what}");
        assert_eq!(
            v["user_data"]["missing_files"],
            serde_json::json!(["/usr/share/tool/README"]),
            "{what}"
        );
        // Symlinks no package lists (/bin and /lib are listed as directories).
        let links = serde_json::json!([
            {"path": "/etc/os-release", "target": "../usr/lib/os-release"},
            {"path": "/home/alice/site", "target": "/srv/www/index.html"},
            {"path": "/sbin", "target": "usr/sbin"},
        ]);
        assert_eq!(v["user_data"]["symlinks"], links, "{what}");
        let user_bytes: u64 = expected
            .iter()
            .filter(|e| e.1 != "package_state")
            .map(|e| e.2)
            .sum();
        assert_eq!(json_u64(&v, "user_data.user_data_bytes"), user_bytes, "{what}");
        assert_eq!(v["warnings"], serde_json::json!([]), "{what}");
    }

    // The unpacked tree gives the same answer.
    let tree = env.cbt_json(&args!["describe", &g.root]);
    assert_eq!(manifest_of(&tree), expected);
    // The text output is a summary; the lists come on request.
    let out = env.cbt_ok(&args!["describe", &gpt]);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let user_files = expected.iter().filter(|e| e.1 != "package_state").count();
    let user_bytes: u64 = expected
        .iter()
        .filter(|e| e.1 != "package_state")
        .map(|e| e.2)
        .sum();
    for needle in [
        "os: debian 12".to_string(),
        "hostname: web1".to_string(),
        "architecture: amd64".to_string(),
        format!(
            "package manager: dpkg, {} packages ({} installed)",
            expected_packages.len(),
            g.packages.len()
        ),
        "repositories: 2".to_string(),
        "https://extra.example/apt stable".to_string(),
        format!("user data: {user_bytes} bytes in {user_files} files"),
        "warnings: 0".to_string(),
        "(list them with --packages, --files)".to_string(),
    ] {
        assert!(summary.contains(&needle), "{needle:?} missing from:\n{summary}");
    }
    for absent in ["libfoo", "/home/alice/notes.txt"] {
        assert!(!summary.contains(absent), "{absent:?} in the summary:\n{summary}");
    }
    let listed = |flags: &[&str]| {
        let mut a = args!["describe", &gpt].to_vec();
        a.extend(flags.iter().map(Into::into));
        String::from_utf8_lossy(&env.cbt_ok(&a).stdout).into_owned()
    };
    let packages = listed(&["--packages"]);
    assert!(packages.contains("  libfoo 2.1-3 amd64\n"), "{packages}");
    assert!(
        packages.contains("  oldpkg 0.1 all [config-files]\n"),
        "{packages}"
    );
    assert!(!packages.contains("/home/alice/notes.txt"), "{packages}");
    assert!(packages.contains("(list them with --files)"), "{packages}");
    let files = listed(&["--files"]);
    assert!(!files.contains("libfoo 2.1-3"), "{files}");
    let both = listed(&["--packages", "--files"]);
    for needle in ["libfoo 2.1-3 amd64", "conffile", "/home/alice/notes.txt"] {
        assert!(
            files.contains(needle) || needle.starts_with("libfoo"),
            "{needle:?}:\n{files}"
        );
        assert!(both.contains(needle), "{needle:?} missing from:\n{both}");
    }
    assert!(!both.contains("list them with"), "{both}");
    // Every manifest entry has its line in --files.
    for e in &expected {
        let end = format!(" {}", e.0);
        assert!(files.lines().any(|l| l.ends_with(&end)), "{e:?}:\n{files}");
    }

    // --no-verify: modified package files are not found, user files still are.
    let v = env.cbt_json(&args!["describe", &plain, "--no-verify"]);
    let kinds: BTreeSet<String> = manifest_of(&v).into_iter().map(|e| e.1).collect();
    assert_eq!(kinds, ["package_state", "unowned"].map(String::from).into());
}

#[test]
fn package_cache_supplies_the_package_blocks() {
    let env = TestEnv::new();
    let packages = base_packages("1.0-1");
    let debs = env.dir("debs");
    for p in &packages {
        p.build_deb(&env, &debs);
    }
    let g = make_guest(&env, "guest", packages, true, "12");
    let gpt = gpt_image(&env, &g.root, "gpt.img", 32);

    // Blocks of intact package files (all non-zero): each found in the cache.
    let files: BTreeMap<String, u64> = g
        .packages
        .iter()
        .flat_map(|p| p.files.iter().map(|(path, d)| (path.to_string(), d.len() as u64)))
        .map(|(p, len)| {
            (
                if p == "/usr/bin/tool" {
                    "/usr/bin/tool.distrib".to_string()
                } else {
                    merged(&p)
                },
                len,
            )
        })
        .collect();
    let intact = g.intact_package_files();
    let expected_blocks: u64 = files
        .iter()
        .filter(|(p, _)| intact.contains(*p))
        .map(|(_, len)| len.div_ceil(BLOCK))
        .sum();
    assert!(expected_blocks > 50, "{expected_blocks}");

    let v = env.cbt_json(&args!["estimate", &gpt, "--package-cache", &debs]);
    assert_eq!(json_u64(&v, "package_cache.archives"), 5);
    assert_eq!(json_u64(&v, "package_cache.archives_skipped"), 0);
    assert_eq!(
        json_u64(&v, "package_cache.blocks_found"),
        expected_blocks,
        "{v:#}"
    );
    assert_eq!(json_u64(&v, "union.blocks_found"), expected_blocks);
    let nonzero = json_u64(&v, "blocks_nonzero");
    let share = expected_blocks as f64 / nonzero as f64;
    assert!((common::json_f64(&v, "package_cache.found_fraction") - share).abs() < 1e-9);
    // The rest is filesystem metadata, user data and the dpkg database.
    assert!(
        share > 0.4,
        "package files are much of this image's data: {share}"
    );
    eprintln!(
        "package cache supplies {expected_blocks} of {nonzero} non-zero blocks ({:.1}%)",
        share * 100.0
    );

    // The blobs are cached: a second run reuses them and says the same.
    let again = env.cbt_json(&args!["estimate", &gpt, "--package-cache", &debs]);
    assert_eq!(json_u64(&again, "package_cache.blocks_found"), expected_blocks);
    let blobs = fs::read_dir(env.cache_dir().join("debs")).unwrap().count();
    assert_eq!(blobs, 10, "one blob and one sidecar per archive");

    // A copy takes exactly those blocks from the cache and verifies.
    let out = env.path("out/copy.img");
    let r = env.cbt_json(&args!["copy", &gpt, &out, "--package-cache", &debs]);
    assert_eq!(json_u64(&r, "blocks_local"), expected_blocks);
    env.assert_identical(&gpt, &out);

    // A malformed archive is skipped with a warning naming it.
    let bad = debs.join("broken_1.0_all.deb");
    let good = fs::read(debs.join("hello_1.0-1_amd64.deb")).unwrap();
    fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let args = args!["estimate", &gpt, "--package-cache", &debs, "--json"];
    let o = env.cbt_ok(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("broken_1.0_all.deb"),
        "no warning naming the archive:\n{stderr}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json_u64(&v, "package_cache.archives_skipped"), 1);
    assert_eq!(json_u64(&v, "package_cache.blocks_found"), expected_blocks);
}

/// Deterministic deb822 text shaped like a mirror's `Packages` file.
fn packages_index(stanzas: usize) -> Vec<u8> {
    let mut rng = XorShift::new(99);
    let mut s = String::new();
    for i in 0..stanzas {
        let size = rng.range(1_000, 5_000_000);
        let sha: String = (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect();
        s += &format!(
            "Package: pkg{i}\nVersion: {}.{}-{}\nInstalled-Size: {}\nMaintainer: Team {} <t{}@example.invalid>\n\
             Architecture: amd64\nDescription: generated package {i}\nFilename: pool/main/p/pkg{i}/pkg{i}_{}_amd64.deb\n\
             Size: {size}\nSHA256: {sha}\n\n",
            i % 9,
            i % 17,
            i % 3 + 1,
            size / 1024,
            i % 40,
            i % 40,
            i % 9
        );
    }
    s.into_bytes()
}

/// Compresses `path` in place with the `xz` tool (`path` becomes `path.xz`).
fn xz_file(path: &Path) -> PathBuf {
    let out = Command::new(tool("xz", "xz-utils"))
        .arg("-6")
        .arg(path)
        .output()
        .expect("run xz");
    assert_success(&out, "xz", &args![path]);
    let mut xz = path.as_os_str().to_owned();
    xz.push(".xz");
    PathBuf::from(xz)
}

#[test]
fn package_cache_supplies_apt_index_files() {
    let env = TestEnv::new();
    let packages = packages_index(1500);
    let release =
        b"Origin: Example\nSuite: x\nCodename: x\nComponents: main\nArchitectures: amd64\n".repeat(40);
    assert!(
        packages.len() > 300_000 && packages.len() as u64 % BLOCK != 0,
        "{}",
        packages.len()
    );

    // A guest whose apt lists hold the mirror's index files, beside other data.
    let tree = env.tree("guest", 11, 4);
    let lists = tree.join("var/lib/apt/lists");
    fs::create_dir_all(lists.join("partial")).unwrap();
    fs::write(
        lists.join("example.org_debian_dists_x_main_binary-amd64_Packages"),
        &packages,
    )
    .unwrap();
    fs::write(lists.join("example.org_debian_dists_x_InRelease"), &release).unwrap();
    fs::write(lists.join("lock"), b"").unwrap();
    let img = env.ext4(&tree, "guest.img", 32);
    let expected = (packages.len() as u64).div_ceil(BLOCK) + (release.len() as u64).div_ceil(BLOCK);

    // A local mirror holding the same files, compressed as mirrors keep them.
    let mirror = env.dir("mirror");
    let bin = env.dir("mirror/dists/x/main/binary-amd64");
    fs::write(bin.join("Packages"), &packages).unwrap();
    let packages_xz = xz_file(&bin.join("Packages"));
    assert!(!bin.join("Packages").exists() && packages_xz.exists());
    fs::write(mirror.join("dists/x/InRelease"), &release).unwrap();

    // Without them, nothing of this image is in a package cache.
    let empty = env.dir("empty");
    let v = env.cbt_json(&args!["estimate", &img, "--package-cache", &empty]);
    assert_eq!(json_u64(&v, "package_cache.blocks_found"), 0, "{v:#}");
    let nonzero = json_u64(&v, "blocks_nonzero");

    let v = env.cbt_json(&args!["estimate", &img, "--package-cache", &mirror]);
    assert_eq!(json_u64(&v, "package_cache.archives"), 0);
    assert_eq!(json_u64(&v, "package_cache.archives_skipped"), 0);
    assert_eq!(json_u64(&v, "package_cache.index_files"), 2);
    assert_eq!(json_u64(&v, "package_cache.index_files_skipped"), 0);
    assert_eq!(json_u64(&v, "package_cache.blocks_found"), expected, "{v:#}");
    assert_eq!(json_u64(&v, "union.blocks_found"), expected);
    assert_eq!(json_u64(&v, "blocks_nonzero"), nonzero);
    let share = expected as f64 / nonzero as f64;
    assert!((common::json_f64(&v, "package_cache.found_fraction") - share).abs() < 1e-9);
    let out = env.cbt_ok(&args!["estimate", &img, "--package-cache", &mirror]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("package caches (0 archives, 2 index files)"),
        "{text}"
    );

    // A copy takes those blocks from the decompressed index and verifies.
    let out = env.path("out/copy.img");
    let r = env.cbt_json(&args!["copy", &img, &out, "--package-cache", &mirror]);
    assert_eq!(json_u64(&r, "blocks_local"), expected);
    env.assert_identical(&img, &out);

    // The plain files of another host's /var/lib/apt/lists work as well.
    let v = env.cbt_json(&args!["estimate", &img, "--package-cache", &lists]);
    assert_eq!(json_u64(&v, "package_cache.index_files"), 2);
    assert_eq!(json_u64(&v, "package_cache.blocks_found"), expected, "{v:#}");

    // A truncated and a damaged Packages.xz: skipped with a warning naming
    // each, and the command still succeeds with what the rest holds.
    let good_xz = fs::read(&packages_xz).unwrap();
    let cut = env.dir("mirror/dists/y/main/binary-amd64").join("Packages.xz");
    fs::write(&cut, &good_xz[..good_xz.len() / 2]).unwrap();
    let mut flipped = good_xz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let damaged = env.dir("mirror/dists/z/main/binary-amd64").join("Packages.xz");
    fs::write(&damaged, &flipped).unwrap();
    let o = env.cbt_ok(&args!["estimate", &img, "--package-cache", &mirror, "--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    for name in [
        "dists/y/main/binary-amd64/Packages.xz",
        "dists/z/main/binary-amd64/Packages.xz",
    ] {
        assert!(stderr.contains(name), "no warning naming {name}:\n{stderr}");
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json_u64(&v, "package_cache.index_files"), 2);
    assert_eq!(json_u64(&v, "package_cache.index_files_skipped"), 2);
    assert_eq!(json_u64(&v, "package_cache.blocks_found"), expected);
    let out = env.cbt_ok(&args!["estimate", &img, "--package-cache", &mirror]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("package caches (0 archives, 2 index files, 2 skipped)"),
        "{text}"
    );
}

#[test]
fn bad_input_is_named_and_unknown_os_is_reported() {
    let env = TestEnv::new();
    let g = make_guest(&env, "guest", base_packages("1.0-1"), false, "12");
    let good = env.ext4(&g.root, "good.img", 16);

    // A damaged superblock.
    let corrupt = env.path("corrupt.img");
    fs::copy(&good, &corrupt).unwrap();
    common::write_at(&corrupt, 1024 + 4, &[0xff; 8]);
    let out = env.cbt_fail(&args!["describe", &corrupt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{err}");
    assert!(err.contains("corrupt.img") && err.contains("ext4"), "{err}");

    // A truncated status file.
    let status = g.root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).unwrap();
    let cut = text.find("Version: 2.1-3").unwrap();
    fs::write(&status, &text[..cut]).unwrap();
    let truncated = env.ext4(&g.root, "truncated.img", 16);
    let out = env.cbt_fail(&args!["describe", &truncated]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{err}");
    assert!(
        err.contains("truncated.img:/var/lib/dpkg/status")
            && err.contains("libfoo")
            && err.contains("truncated"),
        "{err}"
    );
    fs::write(&status, &text[..text.len() - 8]).unwrap();
    let cut_mid_line = env.ext4(&g.root, "cut.img", 16);
    let err = String::from_utf8_lossy(&env.cbt_fail(&args!["describe", &cut_mid_line]).stderr).into_owned();
    assert!(
        err.contains("/var/lib/dpkg/status") && err.contains("truncated"),
        "{err}"
    );

    // Unknown content: a report of what was found, not an error.
    let unknown = env.path("unknown.img");
    fs::write(&unknown, random(7, 2 * MIB as usize)).unwrap();
    let v = env.cbt_json(&args!["describe", &unknown]);
    assert_eq!(v["distro"], Value::Null);
    assert_eq!(v["filesystems"][0]["kind"], "unknown");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no readable Linux root filesystem"),
        "{v:#}"
    );

    // An ext4 filesystem that is not a Linux root, beside a swap partition.
    let data_tree = env.dir("data");
    fs::write(data_tree.join("file.txt"), "data\n").unwrap();
    let data_fs = env.ext4(&data_tree, "data.fs", 8);
    let disk = env.path("disk.img");
    sparse_file(&disk, 20 * MIB);
    env.sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=4096, type=swap\nstart=8192, size=16384, type=linux\n",
    );
    common::write_at(&disk, MIB + 4086, b"SWAPSPACE2");
    copy_into(&data_fs, &disk, 4 * MIB);
    let v = env.cbt_json(&args!["describe", &disk]);
    let kinds: Vec<&str> = v["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["swap", "ext4"]);
    assert_eq!(v["distro"], Value::Null);
    assert!(!v["warnings"].as_array().unwrap().is_empty());

    // A malformed .deb given directly as the package cache: skipped, named.
    let debs = env.dir("baddebs");
    fs::write(
        debs.join("junk.deb"),
        b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
    )
    .unwrap();
    let o = env.cbt_ok(&args!["estimate", &good, "--package-cache", &debs]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("junk.deb") && stderr.contains("no data.tar"),
        "{stderr}"
    );
}

#[test]
fn teleport_plan_picks_the_closest_candidate() {
    let env = TestEnv::new();
    let source = make_guest(&env, "src", base_packages("1.0-1"), true, "12");
    let src = env.ext4(&source.root, "src.img", 32);

    // Candidates: a minimal install, a close one (older hello, one extra
    // package) kept as the current state of a qcow2 whose internal snapshot
    // is the minimal install, and another Debian release.
    let mut minimal = base_packages("1.0-1");
    minimal.retain(|p| matches!(p.name, "base-files" | "dpkg" | "libfoo"));
    let minimal = make_guest(&env, "minimal", minimal, false, "12");
    let minimal_img = env.ext4(&minimal.root, "tmp/minimal.img", 32);
    let mut close = base_packages("0.9-1");
    close.push(Pkg::new("extra", "3.0", "amd64", "xz").file("/usr/bin/extra", random(8, 5_000)));
    let close = make_guest(&env, "close", close, false, "12");
    let close_img = env.ext4(&close.root, "tmp/close.img", 32);
    let cands = env.dir("cands");
    let layered = env.to_qcow2(&minimal_img, "cands/vm.qcow2", &[]);
    env.qemu_img(&args!["snapshot", "-c", "minimal", &layered]);
    env.write_over(&close_img, &layered);
    let old = make_guest(&env, "old", base_packages("1.0-1"), false, "11");
    env.ext4(&old.root, "cands/old.img", 32);

    let v = env.cbt_json(&args![
        "teleport",
        "plan",
        &src,
        "--candidates",
        &cands,
        "--link",
        // 10^6 bytes per second (byte units are powers of 1024).
        "8Mbit"
    ]);
    let layered_name = layered.canonicalize().unwrap().display().to_string();
    assert_eq!(v["best"], Value::from(layered_name.clone()), "{v:#}");
    let ranked: Vec<&str> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        ranked,
        [layered_name.clone(), format!("{layered_name}@minimal")],
        "{v:#}"
    );
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{v:#}");
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("debian 11"),
        "{v:#}"
    );

    let names = |k: &str| -> Vec<(String, Option<String>)> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p.get("candidate_version")
                        .and_then(|c| c.as_str())
                        .map(String::from),
                )
            })
            .collect()
    };
    assert_eq!(
        names("install"),
        [("hello".to_string(), Some("0.9-1".to_string()))]
    );
    assert_eq!(names("remove"), [("extra".to_string(), None)]);
    let added: Vec<&str> = v["repositories_to_add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(added, ["https://extra.example/apt"]);
    // The receiver's model: a few small packages can never repay resolving
    // a mirror's index, even at 1 MB/s.
    assert_eq!(v["mirror_fetch"]["fetch"], false, "{v:#}");
    assert!(
        v["mirror_fetch"]["reason"]
            .as_str()
            .unwrap()
            .contains("plain transfer"),
        "{v:#}"
    );

    let described = env.cbt_json(&args!["describe", &src]);
    assert_eq!(v["user_data_bytes"], described["user_data"]["user_data_bytes"]);
    let hello_size = v["install"][0]["installed_size"].as_u64().unwrap();
    assert_eq!(
        json_u64(&v, "teleport.bytes"),
        json_u64(&v, "user_data_bytes") + hello_size
    );
    let (cbt_s, tp_s) = (
        common::json_f64(&v, "cbt.seconds"),
        common::json_f64(&v, "teleport.seconds"),
    );
    assert!(
        (tp_s - (json_u64(&v, "teleport.bytes") as f64 / 1e6 + 2.0 * 0.5)).abs() < 1e-6,
        "{v:#}"
    );
    assert_eq!(v["choice"], if tp_s < cbt_s { "teleport" } else { "cbt" });

    // With hello 1.0-1 in a package cache, its download is free.
    let debs = env.dir("debs");
    base_packages("1.0-1")
        .iter()
        .find(|p| p.name == "hello")
        .unwrap()
        .build_deb(&env, &debs);
    let v = env.cbt_json(&args![
        "teleport",
        "plan",
        &src,
        "--candidates",
        &cands,
        "--package-cache",
        &debs
    ]);
    assert_eq!(v["install"][0]["in_package_cache"], true);
    assert_eq!(json_u64(&v, "teleport.package_download_bytes"), 0);
    assert_eq!(json_u64(&v, "teleport.packages_from_cache"), 1);
    assert_eq!(v["cbt"]["seconds"], Value::Null);

    // No candidate of the same release: only a block transfer.
    let v = env.cbt_json(&args![
        "teleport",
        "plan",
        &src,
        "--candidates",
        env.path("cands/old.img")
    ]);
    assert_eq!(v["best"], Value::Null);
    assert_eq!(v["choice"], "cbt");
}
