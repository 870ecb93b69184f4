//! End-to-end tests of the index files `cbt teleport` fetches besides the
//! packages: the guest keeps its suite's `InRelease` and its components'
//! `i18n/Translation-<lang>` in `/var/lib/apt/lists`, so the receiving
//! daemon downloads them from its mirror with the Packages index and saves
//! them into its package cache, where their blocks seed the guest's
//! copies. A Translation the mirror refuses, damages or never sends is a
//! warning (its blocks cross the link), never a reason to drop the mirror;
//! and the index files are saved even when every package is cached.
//!
//! The repository (`common::aptrepo`) publishes a `Translation-en` and an
//! `InRelease`; the guest's apt lists hold them, named as apt names them.
//! The world and the checks every teleport test makes are in
//! `common::teleport_world`.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::aptrepo::{lists_name, Deb};
use common::teleport_world::{
    assert_same_bytes, check_teleport, dir_names, failed, mirror_warnings, missing, tp, translated_world,
    World, REPO,
};
use common::{json_u64, BLOCK};

/// Least size of the published `Translation-en` (decompressed): its blocks
/// on the wire stand out from the metadata's.
const TRANSLATION_BYTES: usize = 512 * 1024;

/// The index files a receiver saves from the test mirror, under
/// `dists/stable`, as published: the Release and Packages it reads anyway,
/// the Translation compressed, the InRelease.
const INDEXES: [&str; 4] = [
    "Release",
    "main/binary-amd64/Packages.xz",
    "main/i18n/Translation-en.xz",
    "InRelease",
];

/// URL path of the published `Translation-en` and its `.xz`.
const TRANSLATION_PATHS: [&str; 2] = [
    "/debian/dists/stable/main/i18n/Translation-en",
    "/debian/dists/stable/main/i18n/Translation-en.xz",
];

/// `dists/stable/REL` as the repository publishes it.
fn published(w: &World, rel: &str) -> Vec<u8> {
    fs::read(w.s.repo.join("dists/stable").join(rel)).unwrap()
}

/// Bytes of the index files `rels` as published.
fn index_bytes(w: &World, rels: &[&str]) -> u64 {
    rels.iter().map(|r| published(w, r).len() as u64).sum()
}

/// Asserts `cache` holds exactly the archives of every package and the
/// index files `rels`, each byte for byte as the repository publishes it.
#[track_caller]
fn assert_cache_holds(w: &World, cache: &Path, rels: &[&str]) {
    let dist = format!("{}/dists/stable", w.s.server.url());
    let mut expected: Vec<String> = w.s.debs.iter().map(Deb::cache_name).collect();
    for d in &w.s.debs {
        let cached = fs::read(cache.join(d.cache_name()))
            .unwrap_or_else(|e| panic!("{} not in the package cache: {e}", d.cache_name()));
        assert!(
            cached == fs::read(w.s.repo.join(&d.pool)).unwrap(),
            "{} differs from the repository's",
            d.cache_name()
        );
    }
    for rel in rels {
        let name = lists_name(&format!("{dist}/{rel}"));
        let cached =
            fs::read(cache.join(&name)).unwrap_or_else(|e| panic!("{name} not in the package cache: {e}"));
        assert!(
            cached == published(w, rel),
            "{name} differs from the mirror's {rel}"
        );
        expected.push(name);
    }
    expected.sort();
    assert_eq!(dir_names(cache), expected);
}

#[test]
fn the_guests_translation_and_in_release_come_from_the_mirror() {
    let (w, p) = translated_world(&REPO, 11, TRANSLATION_BYTES);
    let n = w.s.debs.len() as u64;
    let (translation_blocks, in_release_blocks) = (p.translation_blocks(BLOCK), p.in_release_blocks(BLOCK));
    let package_blocks = w.package_blocks(&[]);
    let index_bytes = index_bytes(&w, &INDEXES);

    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "prepared.fetched"), n, "{v:#}");
    assert_eq!(tp(&v, "prepared.index_files"), INDEXES.len() as u64, "{v:#}");
    assert_eq!(tp(&v, "prepared.index_bytes"), index_bytes, "{v:#}");
    assert_eq!(
        v["teleport"]["plan"]["mirrors"][0]["index_bytes"], index_bytes,
        "{v:#}"
    );
    assert_cache_holds(&w, &w.s.cache, &INDEXES);
    let seen = w.s.server.seen();
    let get = |path: &str| format!("GET {path}");
    assert!(seen.contains(&get(TRANSLATION_PATHS[1])), "{seen:?}");
    assert!(!seen.contains(&get(TRANSLATION_PATHS[0])), "{seen:?}");
    // The guest's two apt lists were built from them, not sent.
    let seeded = package_blocks + translation_blocks + in_release_blocks;
    assert_eq!(tp(&v, "finished.blocks_from_fetched_packages"), seeded, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_sent"), w.nonzero - seeded, "{v:#}");

    // The same guest to a daemon with an empty package cache of its own,
    // the mirror now refusing the Translation: its blocks cross the link.
    for path in TRANSLATION_PATHS {
        w.s.server.not_found(path);
    }
    let cache2 = w.s.env.root().join("debs2");
    let (_e, addr2, data2) = w.receiver_in("data2", &cache2, &args!["--mirror", w.s.server.url()]);
    let without = w.push(&format!("{addr2}/guest.img"), &[]);
    check_teleport(&without, n);
    assert_same_bytes(&data2.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&without, "prepared.fetched"), n, "{without:#}");
    assert_eq!(
        tp(&without, "prepared.index_files"),
        INDEXES.len() as u64 - 1,
        "{without:#}"
    );
    let names = dir_names(&cache2);
    assert!(
        !names.iter().any(|n| n.contains("_i18n_Translation-")),
        "{names:?}"
    );
    assert_eq!(
        tp(&without, "finished.blocks_from_fetched_packages"),
        package_blocks + in_release_blocks,
        "{without:#}"
    );
    assert_eq!(
        json_u64(&without, "blocks_sent"),
        json_u64(&v, "blocks_sent") + translation_blocks,
        "{without:#}"
    );
    let (with_bytes, without_bytes) = (
        json_u64(&v, "wire_bytes_sent"),
        json_u64(&without, "wire_bytes_sent"),
    );
    eprintln!(
        "Translation-en {} bytes ({} as .xz): {with_bytes} wire bytes with it on the mirror, \
         {without_bytes} without",
        p.translation.len(),
        p.translation_xz
    );
    assert!(
        with_bytes + p.translation_xz / 2 <= without_bytes,
        "the Translation ({} bytes as .xz) did not stay off the link: {with_bytes} wire bytes \
         with it on the mirror, {without_bytes} without",
        p.translation_xz
    );
}

#[test]
fn a_damaged_or_stalled_translation_is_a_warning_and_the_mirror_still_serves() {
    let (w, p) = translated_world(&REPO, 13, TRANSLATION_BYTES);
    let n = w.s.debs.len() as u64;
    let (translation_blocks, in_release_blocks) = (p.translation_blocks(BLOCK), p.in_release_blocks(BLOCK));
    let package_blocks = w.package_blocks(&[]);
    // With a good Translation, the receiver would send this many blocks.
    let with_translation = w.nonzero - package_blocks - translation_blocks - in_release_blocks;
    let translation_url = format!("{}/dists/stable/main/i18n/Translation-en", w.s.server.url());
    let good = published(&w, "main/i18n/Translation-en.xz");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0xff;
    let truncated = good[..good.len() / 2].to_vec();
    // Each case adds to the server's behaviour: a stalled path is silent
    // whatever else it would serve. `None` stalls both Translation paths.
    let cases = [
        ("a flipped byte", Some(flipped)),
        ("half the file", Some(truncated)),
        ("a stall", None),
    ];
    let saved = ["Release", "main/binary-amd64/Packages.xz", "InRelease"];

    for (i, (damage, bytes)) in cases.into_iter().enumerate() {
        let mut extra = args!["--mirror", w.s.server.url()].to_vec();
        match bytes {
            Some(bytes) => w.s.server.corrupt(TRANSLATION_PATHS[1], bytes),
            None => {
                for path in TRANSLATION_PATHS {
                    w.s.server.stall(path);
                }
                extra.extend(args!["--mirror-timeout", "1"]);
            }
        }
        // A daemon with an empty package cache of its own.
        let cache = w.s.env.root().join(format!("debs-{i}"));
        let (_d, addr, data) = w.receiver_in(&format!("data-{i}"), &cache, &extra);
        let start = Instant::now();
        let v = w.push(&format!("{addr}/guest.img"), &[]);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{damage}: took {took:?} with a 1 s timeout"
        );
        check_teleport(&v, n);
        assert_same_bytes(&data.join("guest.img"), &w.s.guest);

        // The mirror is used, with a warning naming the Translation.
        let mirror = &v["teleport"]["plan"]["mirrors"][0];
        assert!(
            mirror.get("error").is_none(),
            "{damage}: the mirror was dropped:\n{v:#}"
        );
        assert_eq!(mirror["packages"], n, "{damage}:\n{v:#}");
        let warnings = mirror_warnings(&v, 0);
        assert!(
            warnings.iter().any(|w| w.contains(&translation_url)),
            "{damage}: no warning naming {translation_url}:\n{v:#}"
        );

        // Every package fetched; every index file but the Translation saved.
        assert_eq!(tp(&v, "plan.to_fetch"), n, "{damage}:\n{v:#}");
        assert!(missing(&v).is_empty(), "{damage}:\n{v:#}");
        assert_eq!(tp(&v, "prepared.fetched"), n, "{damage}:\n{v:#}");
        assert!(failed(&v).is_empty(), "{damage}:\n{v:#}");
        assert_eq!(
            tp(&v, "prepared.index_files"),
            saved.len() as u64,
            "{damage}:\n{v:#}"
        );
        assert_eq!(
            tp(&v, "prepared.index_bytes"),
            index_bytes(&w, &saved),
            "{damage}:\n{v:#}"
        );
        assert_cache_holds(&w, &cache, &saved);

        // The Translation's blocks, and only they, crossed the link.
        assert_eq!(
            tp(&v, "finished.blocks_from_fetched_packages"),
            package_blocks + in_release_blocks,
            "{damage}:\n{v:#}"
        );
        assert_eq!(
            json_u64(&v, "blocks_sent"),
            with_translation + translation_blocks,
            "{damage}:\n{v:#}"
        );
    }
}

#[test]
fn with_every_package_cached_the_index_files_are_still_saved() {
    let (w, p) = translated_world(&REPO, 17, TRANSLATION_BYTES);
    let n = w.s.debs.len() as u64;
    let (translation_blocks, in_release_blocks) = (p.translation_blocks(BLOCK), p.in_release_blocks(BLOCK));
    let package_blocks = w.package_blocks(&[]);
    // The package cache holds every archive, no index file.
    w.cache_all_debs(&w.s.cache);

    let (_d, addr, data) = w.mirrored("data");
    let v = w.push(&format!("{addr}/guest.img"), &[]);
    check_teleport(&v, n);
    assert_same_bytes(&data.join("guest.img"), &w.s.guest);
    assert_eq!(tp(&v, "plan.cached"), n, "{v:#}");
    assert_eq!(tp(&v, "plan.to_fetch"), 0, "{v:#}");
    assert_eq!(tp(&v, "plan.fetch_bytes"), 0, "{v:#}");
    assert!(missing(&v).is_empty(), "{v:#}");
    assert!(
        v["teleport"]["plan"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("every package is in the package cache")),
        "{v:#}"
    );
    assert_eq!(w.s.pool_gets(), 0, "{:?}", w.s.server.seen());

    // The index files read to plan were saved all the same.
    assert_eq!(tp(&v, "prepared.fetched"), 0, "{v:#}");
    assert_eq!(tp(&v, "prepared.index_files"), INDEXES.len() as u64, "{v:#}");
    assert_eq!(tp(&v, "prepared.index_bytes"), index_bytes(&w, &INDEXES), "{v:#}");
    assert_cache_holds(&w, &w.s.cache, &INDEXES);

    // As few blocks crossed as when the packages were fetched with them.
    assert_eq!(
        tp(&v, "finished.blocks_from_cached_packages"),
        package_blocks,
        "{v:#}"
    );
    assert_eq!(
        tp(&v, "finished.blocks_from_fetched_packages"),
        translation_blocks + in_release_blocks,
        "{v:#}"
    );
    assert_eq!(
        json_u64(&v, "blocks_sent"),
        w.nonzero - package_blocks - translation_blocks - in_release_blocks,
        "{v:#}"
    );
}
