//! End-to-end tests of `cbt teleport SRC DEST`: the side holding the image
//! describes its guest (distribution, architecture, exact packages, apt
//! sources), the receiving side fetches the exact `.deb`s it lacks from
//! its apt mirrors into its package cache, and the block transfer that
//! follows takes the packages' blocks from them. Pushed to `cbt serve` and
//! to a one-shot `cbt recv --listen`, pulled from a daemon's export.
//!
//! The mirror is a real apt repository served on 127.0.0.1
//! (`common::aptrepo`), which can corrupt, stall or refuse one archive.
//! The guest is an ext4 image holding its packages' files, a dpkg
//! database and pseudo-random user data; every expected number (package
//! blocks, bytes on the wire) is computed from the files the test wrote.
//! The world and the checks every test makes are in
//! `common::teleport_world`; the index files a guest keeps in its apt
//! lists (Translation, InRelease) are tested in `teleport_indexes.rs`.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use common::aptrepo::{dead_mirror_url, index_repo, Drip, DRIP_FOR};
use common::proc::{noise_image, write_secret, Proc, HANG};
use common::teleport_world::{
    assert_same_bytes, check_teleport, dir_names, failed, missing, tp, world, REPO,
};
use common::{assert_no_output, check_summary, json_f64, json_u64, nonzero_blocks, BLOCK, MIB};

/// [`REPO`] plus `extra`, whose archive is taken out of the repository
/// before indexing (the guest has a version no mirror lists).
const REPO_AND_EXTRA: [(&str, &str, &str, usize); 5] = [
    REPO[0],
    REPO[1],
    REPO[2],
    REPO[3],
    ("extra", "2.0", "amd64", 400_000),
];

#[test]
fn push_fetches_the_packages_and_sends_little_more_than_the_user_data() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let package_blocks = w.package_blocks(&[]);
    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(dir_names(&data), ["guest.img"]);
    assert!(json_f64(&v, "teleport.describe_seconds") >= 0.0, "{v:#}");

    // The plan: every package at the one mirror, none at hand.
    assert_eq!(v["teleport"]["plan"]["fetch"], true, "{v:#}");
    assert_eq!(tp(&v, "plan.cached"), 0);
    assert_eq!(tp(&v, "plan.to_fetch"), n);
    assert_eq!(tp(&v, "plan.fetch_bytes"), w.archive_bytes(&[]), "{v:#}");
    assert!(missing(&v).is_empty(), "{v:#}");
    let mirrors = v["teleport"]["plan"]["mirrors"].as_array().unwrap();
    assert_eq!(mirrors.len(), 1, "{v:#}");
    assert_eq!(mirrors[0]["url"], w.s.server.url().as_str());
    assert_eq!(mirrors[0]["packages"], n, "{v:#}");
    assert!(mirrors[0].get("error").is_none(), "{v:#}");

    // Fetched, checked, kept; their blocks did not cross the link.
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched_bytes"), w.archive_bytes(&[]));
    assert!(failed(&v).is_empty(), "{v:#}");
    w.s.assert_cache_holds_all_but(&[]);
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        package_blocks,
        "{v:#}"
    );
    assert_eq!(tp(&v, "finished.blocks_from_cached_packages"), 0);
    assert_eq!(tp(&v, "finished.blocks_from_images"), 0);
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero - package_blocks, "{v:#}");

    // A plain send of the same image to an empty daemon, for comparison.
    let plain_data = w.s.env.dir("plain");
    let (_p, plain_addr) = w.s.daemon(&plain_data, &[]);
    let plain = w.run_json(&args!["send", w.s.guest, format!("{plain_addr}/guest.img")]);
    assert_same_bytes(&plain_data.join("guest.img"), &w.s.guest);
    let (teleported, sent) = (
        json_u64(&v, "wire_bytes_sent"),
        json_u64(&plain, "wire_bytes_sent"),
    );
    let package_bytes = package_blocks * BLOCK;
    eprintln!(
        "teleport: {teleported} wire bytes, plain send: {sent}; user data {} bytes, \
         package files {package_bytes} bytes, image {} non-zero blocks",
        w.user_bytes, w.nonzero
    );
    assert!(
        teleported + package_bytes * 9 / 10 <= sent,
        "the package files ({package_bytes} bytes) did not stay off the link: \
         teleport {teleported}, plain {sent}"
    );
    // What crosses: the user data (random, incompressible), the filesystem
    // metadata and dpkg database (small for 32 MiB), and the description.
    assert!(
        w.user_bytes > package_bytes / 4 && teleported >= w.user_bytes,
        "the user data crossed: {teleported} wire bytes, {} of user data",
        w.user_bytes
    );
    assert!(
        teleported <= w.user_bytes + MIB,
        "{teleported} wire bytes for {} bytes of user data (plus at most 1 MiB of metadata)",
        w.user_bytes
    );
}

#[test]
fn a_second_teleport_fetches_nothing() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let (_d, addr, data) = w.mirrored("data");
    let first = w.push(&format!("{addr}/first.img"), &[]);
    assert_eq!(tp(&first, "prepared.fetched"), n, "{first:#}");
    let gets = w.s.pool_gets();
    assert_eq!(gets, REPO.len(), "{:?}", w.s.server.seen());

    // The same daemon, a new name: packages cached, image blocks at hand.
    let v = w.push(&format!("{addr}/second.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("second.img"), &w.s.guest);
    assert_eq!(tp(&v, "plan.cached"), n, "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), 0, "{v:#}");
    assert_eq!(tp(&v, "plan.fetch_bytes"), 0, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), 0, "{v:#}");
    assert_eq!(tp(&v, "finished.blocks_from_fetched_packages"), 0, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_sent"), 0, "{v:#}");

    // Another daemon sharing the package cache, with an empty data
    // directory, and the guest as qcow2: the package blocks come from the
    // cached archives.
    let qcow2 = w.s.env.to_qcow2(&w.s.guest, "guest.qcow2", &[]);
    let (_e, addr2, data2) = w.mirrored("data2");
    let v = w.run_json(&args!["teleport", qcow2, format!("{addr2}/third.img")]);
    check_teleport(&v, n);
    assert_same_bytes(&data2.join("third.img"), &w.s.guest);
    assert_eq!(tp(&v, "plan.cached"), n, "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), 0, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), 0, "{v:#}");
    assert_eq!(
        tp(&v, "finished.blocks_from_cached_packages"),
        w.package_blocks(&[]),
        "{v:#}"
    );
    assert_eq!(tp(&v, "finished.blocks_from_images"), 0, "{v:#}");
    assert_eq!(w.s.pool_gets(), gets, "no archive downloaded again");
    w.s.assert_cache_holds_all_but(&[]);
}

#[test]
fn a_dry_run_plans_and_writes_nothing() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &["--dry-run"]);
    assert_eq!(v["dry_run"], true, "{v:#}");
    assert_eq!(tp(&v, "plan.packages"), n, "{v:#}");
    assert_eq!(tp(&v, "plan.cached"), 0, "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), n, "{v:#}");
    assert_eq!(tp(&v, "plan.fetch_bytes"), w.archive_bytes(&[]), "{v:#}");
    assert!(missing(&v).is_empty(), "{v:#}");
    for stage in ["prepared", "finished"] {
        assert!(v["teleport"].get(stage).is_none(), "{stage} in a dry run:\n{v:#}");
    }
    assert_eq!(
        dir_names(&data),
        Vec::<String>::new(),
        "nothing written at the destination"
    );
    assert_eq!(w.s.cache_names(), Vec::<String>::new(), "nothing fetched");
    assert_eq!(w.s.pool_gets(), 0, "{:?}", w.s.server.seen());

    // The daemon is none the worse: the real thing follows.
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
}

#[test]
fn pull_fetches_from_the_local_mirror() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let export = w.s.env.dir("export");
    w.s.env.to_qcow2(&w.s.guest, "export/guest.qcow2", &[]);
    let data = w.s.env.dir("data");
    let (_d, addr) = w.s.daemon(&data, &args!["--export", export]);

    // A dry run: the plan only; no output, nothing fetched.
    let dry = w.s.env.path("dry/pulled.img");
    let v = w.run_json(&args![
        "--package-cache",
        w.s.cache,
        "teleport",
        format!("{addr}/guest.qcow2"),
        dry,
        "--mirror",
        w.s.server.url(),
        "--dry-run"
    ]);
    assert_eq!(v["dry_run"], true, "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), n, "{v:#}");
    assert!(v["teleport"].get("prepared").is_none(), "{v:#}");
    assert_no_output(&dry);
    assert_eq!(w.s.cache_names(), Vec::<String>::new(), "nothing fetched");
    assert_eq!(w.s.pool_gets(), 0, "{:?}", w.s.server.seen());

    let out = w.s.env.path("out/pulled.img");
    let v = w.run_json(&args![
        "--package-cache",
        w.s.cache,
        "teleport",
        format!("{addr}/guest.qcow2"),
        out,
        "--mirror",
        w.s.server.url()
    ]);
    check_teleport(&v, n);
    assert_same_bytes(&out, &w.s.guest);
    assert_eq!(tp(&v, "plan.to_fetch"), n, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&[]),
        "{v:#}"
    );
    w.s.assert_cache_holds_all_but(&[]);

    // A plain pull brings the package blocks over the link as well.
    let plain_out = w.s.env.path("out/plain.img");
    let plain = w.run_json(&args!["recv", format!("{addr}/guest.qcow2"), plain_out]);
    assert_same_bytes(&plain_out, &w.s.guest);
    let (teleported, received) = (
        json_u64(&v, "wire_bytes_received"),
        json_u64(&plain, "wire_bytes_received"),
    );
    assert!(
        teleported + w.package_blocks(&[]) * BLOCK * 9 / 10 <= received,
        "teleport pull received {teleported} bytes, a plain pull {received}"
    );

    // Pulling again, seeded with the first pull: nothing fetched, nothing sent.
    let out2 = w.s.env.path("again/pulled.img");
    let v = w.run_json(&args![
        "--package-cache",
        w.s.cache,
        "teleport",
        format!("{addr}/guest.qcow2"),
        out2,
        "--mirror",
        w.s.server.url(),
        "--seed",
        w.s.env.root().join("out")
    ]);
    check_teleport(&v, n);
    assert_same_bytes(&out2, &w.s.guest);
    assert_eq!(tp(&v, "plan.cached"), n, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_sent"), 0, "{v:#}");
}

#[test]
fn a_corrupt_or_refused_archive_comes_over_the_link() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let libbar = w.deb("libbar");
    let mut bad = fs::read(w.s.repo.join(&libbar.pool)).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    w.s.server.corrupt(&libbar.url_path(), bad);
    let tool = w.deb("tool");
    w.s.server.not_found(&tool.url_path());

    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "plan.to_fetch"), n, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), n - 2, "{v:#}");
    assert_eq!(
        tp(&v, "prepared.fetched_bytes"),
        w.archive_bytes(&["libbar", "tool"]),
        "{v:#}"
    );
    let f = failed(&v);
    let names: Vec<&str> = f.iter().map(|(p, _)| p.as_str()).collect();
    let mut expected = [libbar.id(), tool.id()];
    expected.sort();
    assert_eq!(names, expected, "{v:#}");
    for (deb, why) in [(libbar, "SHA256"), (tool, "404")] {
        let reason = &f.iter().find(|(p, _)| *p == deb.id()).unwrap().1;
        assert!(
            reason.contains(&deb.pool) && reason.contains(why),
            "{}: {reason}",
            deb.name
        );
    }
    w.s.assert_cache_holds_all_but(&["libbar", "tool"]);
    let package_blocks = w.package_blocks(&["libbar", "tool"]);
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        package_blocks,
        "{v:#}"
    );
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero - package_blocks, "{v:#}");

    // A damaged archive under the right name in the cache is not taken
    // for the package: it is fetched again.
    let hello = w.deb("hello");
    let good = fs::read(w.s.cache.join(hello.cache_name())).unwrap();
    fs::write(w.s.cache.join(hello.cache_name()), &good[..good.len() / 2]).unwrap();
    let v = w.push(&format!("{addr}/again.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("again.img"), &w.s.guest);
    assert_eq!(
        tp(&v, "plan.cached"),
        1,
        "only dpkg is intact in the cache:\n{v:#}"
    );
    assert_eq!(tp(&v, "prepared.fetched"), 1, "{v:#}");
    w.s.assert_cache_holds_all_but(&["libbar", "tool"]);
}

#[test]
fn a_version_no_mirror_has_comes_over_the_link() {
    let w = world(&REPO_AND_EXTRA);
    let extra = w.deb("extra");
    fs::remove_file(w.s.repo.join(&extra.pool)).unwrap();
    index_repo(&w.s.repo);
    let all = w.s.debs.len() as u64;

    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, all);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(missing(&v), [extra.id()], "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), all - 1, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), all - 1, "{v:#}");
    assert!(failed(&v).is_empty(), "{v:#}");
    w.s.assert_cache_holds_all_but(&["extra"]);
    let package_blocks = w.package_blocks(&["extra"]);
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        package_blocks,
        "{v:#}"
    );
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero - package_blocks, "{v:#}");
}

#[test]
fn a_dead_mirror_is_reported_and_the_transfer_completes() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let dead = dead_mirror_url();

    // The only mirror is dead: everything crosses the link.
    let (_d, addr, data) = w.receiver("data", &args!["--mirror", dead]);
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    let mirror = &v["teleport"]["plan"]["mirrors"][0];
    assert_eq!(mirror["url"], dead.as_str(), "{v:#}");
    assert!(
        mirror["error"].as_str().is_some_and(|e| e.contains(&dead)),
        "no error naming the dead mirror:\n{v:#}"
    );
    assert_eq!(tp(&v, "plan.to_fetch"), 0, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), 0, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero, "{v:#}");
    assert!(w.s.cached_debs().is_empty(), "{:?}", w.s.cache_names());

    // A dead mirror first, a live one second: the live one supplies all.
    let (_e, addr2, data2) = w.receiver("data2", &args!["--mirror", dead, "--mirror", w.s.server.url()]);
    let v = w.push(&format!("{addr2}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data2.join("guest.img"), &w.s.guest);
    let mirrors = v["teleport"]["plan"]["mirrors"].as_array().unwrap();
    assert_eq!(mirrors.len(), 2, "{v:#}");
    assert!(mirrors[0]["error"].is_string(), "{v:#}");
    assert!(mirrors[1].get("error").is_none(), "{v:#}");
    assert_eq!(mirrors[1]["packages"], n, "{v:#}");
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&[]),
        "{v:#}"
    );

    // A daemon with no package source at all: it says so, and the image
    // crosses as with `cbt send`.
    let bare = w.s.env.dir("bare");
    let (_f, addr3) = w.s.daemon(&bare, &[]);
    let v = w.push(&format!("{addr3}/guest.img"), &[]);
    check_summary(&v);
    assert_same_bytes(&bare.join("guest.img"), &w.s.guest);
    assert_eq!(v["teleport"]["plan"]["fetch"], false, "{v:#}");
    assert!(
        v["teleport"]["plan"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{v:#}"
    );
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero, "{v:#}");
}

#[test]
fn a_stalled_download_gives_up_and_the_transfer_completes() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let hello = w.deb("hello");
    w.s.server.stall(&hello.url_path());
    let (_d, addr, data) = w.receiver(
        "data",
        &args!["--mirror", w.s.server.url(), "--mirror-timeout", "1"],
    );
    let start = Instant::now();
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?} with a 1 s timeout");
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    let f = failed(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0].0, hello.id(), "{v:#}");
    w.s.assert_cache_holds_all_but(&["hello"]);
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&["hello"]),
        "{v:#}"
    );

    // A mirror whose Release stalls is given up as a whole, in time.
    w.s.server.stall("/debian/dists/stable/Release");
    let start = Instant::now();
    let v = w.push(&format!("{addr}/again.img"), &[]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?} with a 1 s timeout");
    check_teleport(&v, n);
    assert_same_bytes(&data.join("again.img"), &w.s.guest);
    let error = v["teleport"]["plan"]["mirrors"][0]["error"].as_str();
    assert!(
        error.is_some_and(|e| e.contains("dists/stable/Release")),
        "no error naming the stalled index:\n{v:#}"
    );
}

/// A mirror that drips bytes (a sized archive, then an endless chunked
/// Packages index; one byte every 200 ms, never silent for the 2 s
/// timeout) is given up at the minimum rate: what did not arrive crosses
/// the link, the image is right, and the push ends long before the server
/// would tire ([`DRIP_FOR`]).
#[test]
fn a_dripping_mirror_is_given_up_and_the_transfer_completes() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let hello = w.deb("hello");
    w.s.server
        .drip(&hello.url_path(), Drip::Sized, Duration::from_millis(200));
    let (_d, addr, data) = w.receiver(
        "data",
        &args!["--mirror", w.s.server.url(), "--mirror-timeout", "2"],
    );
    let start = Instant::now();
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    let took = start.elapsed();
    assert!(took < DRIP_FOR / 2, "took {took:?} with a 2 s timeout");
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    let f = failed(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0].0, hello.id(), "{v:#}");
    assert!(f[0].1.contains("too slow"), "{v:#}");
    w.s.assert_cache_holds_all_but(&["hello"]);
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&["hello"]),
        "{v:#}"
    );

    w.s.server.drip(
        "/debian/dists/stable/main/binary-amd64/Packages.xz",
        Drip::Endless,
        Duration::from_millis(200),
    );
    let start = Instant::now();
    let v = w.push(&format!("{addr}/again.img"), &[]);
    let took = start.elapsed();
    assert!(took < DRIP_FOR / 2, "took {took:?} with a 2 s timeout");
    check_teleport(&v, n);
    assert_same_bytes(&data.join("again.img"), &w.s.guest);
    let error = v["teleport"]["plan"]["mirrors"][0]["error"].as_str();
    assert!(
        error.is_some_and(|e| e.contains("Packages.xz") && e.contains("too slow")),
        "no error naming the dripping index:\n{v:#}"
    );
}

/// `cbt serve --mirror URL` without `--package-cache` starts, fills
/// `DATA/.cbt-package-cache` and seeds from it (it used to refuse to start).
#[test]
fn a_daemon_with_a_mirror_and_no_package_cache_fills_one_under_its_data() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let data = w.s.env.dir("data");
    let (_d, addr) = w.s.daemon(&data, &args!["--mirror", w.s.server.url()]);
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    let cache = data.join(".cbt-package-cache");
    for d in &w.s.debs {
        let cached = fs::read(cache.join(d.cache_name()))
            .unwrap_or_else(|e| panic!("{} not in {}: {e}", d.cache_name(), cache.display()));
        assert!(
            cached == fs::read(w.s.repo.join(&d.pool)).unwrap(),
            "{}",
            d.cache_name()
        );
    }
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&[]),
        "{v:#}"
    );
    // The next push finds them there.
    let v = w.push(&format!("{addr}/again.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("again.img"), &w.s.guest);
    assert_eq!(tp(&v, "plan.cached"), n, "{v:#}");
}

#[test]
fn one_shot_receiver_and_mirrors_from_the_config_file() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;

    // `cbt recv --listen OUT --mirror URL`, pushed to.
    let out = w.s.env.path("oneshot/guest.img");
    let mut recv = w.s.spawn(&args![
        "--package-cache",
        w.s.cache,
        "recv",
        "--listen",
        "127.0.0.1:0",
        out,
        "--mirror",
        w.s.server.url(),
        "--json"
    ]);
    let addr = recv.addr();
    let v = w.push(&addr, &[]);
    let received = recv.json();
    check_teleport(&v, n);
    check_summary(&received);
    assert_same_bytes(&out, &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        w.package_blocks(&[]),
        "{v:#}"
    );
    assert_eq!(
        json_u64(&v, "wire_bytes_sent"),
        json_u64(&received, "wire_bytes_received")
    );

    // `cbt serve --config` with `mirrors` and `package_cache` in the file.
    let cache2 = w.s.env.dir("debs2");
    let data = w.s.env.dir("data");
    let config = w.s.env.path("etc/cbt.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = {:?}\npackage_cache = [{:?}]\nmirrors = [{:?}]\n",
            data.display().to_string(),
            cache2.display().to_string(),
            w.s.server.url()
        ),
    )
    .unwrap();
    let mut d = w.s.spawn(&args!["serve", "--config", config]);
    let addr = d.addr();
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(
        fs::read_dir(&cache2)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".deb"))
            .count() as u64,
        n,
        "the archives went into the configured package cache"
    );
}

#[test]
fn a_peer_without_the_secret_makes_the_daemon_fetch_nothing() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let good = write_secret(&w.s.env, "good.key", "correct horse battery staple");
    let bad = write_secret(&w.s.env, "bad.key", "incorrect horse battery");
    let (_d, addr, data) = w.receiver(
        "data",
        &args!["--mirror", w.s.server.url(), "--secret-file", good],
    );
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut a = args![
            "teleport",
            w.s.guest,
            format!("{addr}/guest.img"),
            "--secret-file",
            bad
        ]
        .to_vec();
        a.extend(extra.iter().map(OsString::from));
        let (status, _, err) = w.s.spawn(&a).finish(HANG);
        assert!(!status.success() && status.code() != Some(101), "{status}\n{err}");
        assert!(err.contains("authentication failed"), "{err}");
    }
    assert_eq!(
        w.s.server.seen(),
        Vec::<String>::new(),
        "the mirror was asked for an unauthenticated peer"
    );
    assert_eq!(dir_names(&data), Vec::<String>::new());
    assert_eq!(w.s.cache_names(), Vec::<String>::new());

    let v = w.push(
        &format!("{addr}/guest.img"),
        &["--secret-file", good.to_str().unwrap()],
    );
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
}

#[test]
fn two_teleports_at_once_share_the_package_cache() {
    let w = world(&REPO);
    let n = w.s.debs.len() as u64;
    let package_blocks = w.package_blocks(&[]);
    let (_d, addr, data) = w.mirrored("data");
    // Several at once, so that their fetches overlap.
    let names = ["a.img", "b.img", "c.img", "d.img"];
    let runs: Vec<Proc> = names
        .iter()
        .map(|name| {
            w.s.spawn(&args!["teleport", w.s.guest, format!("{addr}/{name}"), "--json"])
        })
        .collect();
    for (name, run) in names.iter().zip(runs) {
        let v = run.json();
        // Not check_teleport: a package another transfer fetched meanwhile
        // is neither fetched nor failed by this one.
        check_summary(&v);
        assert_same_bytes(&data.join(name), &w.s.guest);
        assert_eq!(tp(&v, "plan.packages"), n, "{v:#}");
        assert!(tp(&v, "prepared.fetched") <= tp(&v, "plan.to_fetch"), "{v:#}");
        assert_eq!(
            failed(&v),
            [],
            "{name}: a fetch failed because of another:\n{v:#}"
        );
        assert!(
            json_u64(&v, "blocks_sent") <= w.nonzero - package_blocks,
            "{name}: package blocks crossed the link:\n{v:#}"
        );
    }
    w.s.assert_cache_holds_all_but(&[]);
}

#[test]
fn an_image_without_a_guest_crosses_as_with_send() {
    let w = world(&REPO);
    let noise = noise_image(&w.s.env, "noise.img", 4, 3);
    let nonzero = nonzero_blocks(&noise).len() as u64;
    let (_d, addr, data) = w.mirrored("data");
    let v = w.run_json(&args!["teleport", noise, format!("{addr}/noise.img")]);
    check_teleport(&v, 0);
    assert_same_bytes(&data.join("noise.img"), &noise);
    assert_eq!(v["teleport"]["plan"]["fetch"], false, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_sent"), nonzero, "{v:#}");
    assert_eq!(w.s.pool_gets(), 0, "{:?}", w.s.server.seen());
}
