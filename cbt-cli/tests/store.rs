//! End-to-end tests of the block store on S3-compatible object storage
//! (docs/STORE.md): `cbt store push | ls | verify | gc` and `cbt recv
//! s3://BUCKET/PREFIX/NAME OUT`, against a real S3 protocol server (moto's,
//! `common::s3`), each test with a server and bucket of its own.
//!
//! The images are made of pseudo-random 4 KiB blocks (incompressible, so
//! stored raw, and all different) and zero blocks, so that every expected
//! number (blocks uploaded, already stored, missing at a seeded pull,
//! packs a gc deletes) is computed from the data the test wrote and from
//! the objects the server holds, read independently of cbt (listings and
//! the packs' own indexes). Where a push must be caught at an exact step
//! (some packs uploaded, its lease not yet written), a proxy in front of
//! the server holds the next request of that kind (`common::s3::Gate`).

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cbt_core::Digest;
use serde_json::Value;

use common::proc::{Proc, HANG};
use common::s3::{cbt, cbt_command, cbt_command_as, cbt_json, cbt_ok, run, Gate, S3};
use common::{assert_clean_failure, assert_code, closed_port, json_u64, stderr, TestEnv, XorShift, BLOCK};

/// The block size, as an index.
const B: usize = BLOCK as usize;

/// A store: a server (its siblings share it), a bucket and a prefix in it.
struct Store {
    s3: Rc<S3>,
    bucket: String,
    prefix: String,
}

impl Store {
    /// Starts a server and creates `bucket`; the store lives under `prefix`.
    fn new(bucket: &str, prefix: &str) -> Store {
        let s3 = S3::start();
        s3.create_bucket(bucket);
        Store {
            s3: Rc::new(s3),
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// Another store in the same bucket, under `prefix`.
    fn sibling(&self, prefix: &str) -> Store {
        Store {
            s3: Rc::clone(&self.s3),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
        }
    }

    fn endpoint(&self) -> String {
        self.s3.endpoint()
    }

    /// `s3://BUCKET/PREFIX`.
    fn root(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// `s3://BUCKET/PREFIX/NAME`.
    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.root())
    }

    /// The key of `rel` in the store.
    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// The names of the objects under `PREFIX/dir/`.
    fn names(&self, dir: &str) -> Vec<String> {
        let under = format!("{}/{dir}/", self.prefix);
        self.s3
            .list(&self.bucket, &under)
            .into_iter()
            .map(|o| o.key[under.len()..].to_string())
            .collect()
    }

    /// The packs, by id (hex): their sizes. Checks every name is a pack's.
    fn packs(&self) -> BTreeMap<String, u64> {
        let under = format!("{}/packs/", self.prefix);
        self.s3
            .list(&self.bucket, &under)
            .into_iter()
            .map(|o| {
                let file = &o.key[under.len()..];
                let id = file
                    .strip_suffix(".pack")
                    .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    .unwrap_or_else(|| panic!("{}: not a pack's name", o.key));
                (id.to_string(), o.size)
            })
            .collect()
    }

    fn pack_key(&self, id: &str) -> String {
        self.key(&format!("packs/{id}.pack"))
    }

    /// A pack's bytes.
    fn pack(&self, id: &str) -> Vec<u8> {
        self.s3
            .get(&self.bucket, &self.pack_key(id))
            .unwrap_or_else(|| panic!("pack {id} does not exist"))
    }

    /// The index of a pack, read from its own bytes (docs/STORE.md, "Pack").
    fn pack_index(&self, id: &str) -> Vec<Entry> {
        parse_pack(&self.pack(id))
    }

    /// Deletes `rel` in the store.
    fn delete(&self, rel: &str) {
        self.s3.delete(&self.bucket, &self.key(rel));
    }

    /// `cbt store push IMAGE URL(NAME) --endpoint E EXTRA... --json`.
    #[track_caller]
    fn push(&self, env: &TestEnv, image: &Path, name: &str, extra: &[&str]) -> Value {
        let mut a = args![
            "store",
            "push",
            image,
            self.url(name),
            "--endpoint",
            self.endpoint()
        ]
        .to_vec();
        a.extend(extra.iter().map(OsString::from));
        let v = cbt_json(env, &a);
        check_push(&v);
        v
    }

    /// `cbt recv URL(NAME) OUT [--seed S]... --endpoint E --json`.
    #[track_caller]
    fn pull(&self, env: &TestEnv, name: &str, out: &Path, seeds: &[&Path]) -> Value {
        let mut a = args!["recv", self.url(name), out, "--endpoint", self.endpoint()].to_vec();
        for s in seeds {
            a.extend(args!["--seed", s]);
        }
        cbt_json(env, &a)
    }

    /// `cbt store gc ROOT --grace G --endpoint E EXTRA... --json`.
    #[track_caller]
    fn gc(&self, env: &TestEnv, grace: u64, extra: &[&str]) -> Value {
        let mut a = args![
            "store",
            "gc",
            self.root(),
            "--grace",
            grace.to_string(),
            "--endpoint",
            self.endpoint()
        ]
        .to_vec();
        a.extend(extra.iter().map(OsString::from));
        cbt_json(env, &a)
    }

    /// `cbt store verify ROOT --read --endpoint E --json`, asserted clean.
    #[track_caller]
    fn verify_clean(&self, env: &TestEnv, images: u64) -> Value {
        let v = cbt_json(
            env,
            &args![
                "store",
                "verify",
                self.root(),
                "--read",
                "--endpoint",
                self.endpoint()
            ],
        );
        assert_eq!(v["problems"], serde_json::json!([]), "{v:#}");
        assert_eq!(json_u64(&v, "images"), images, "{v:#}");
        assert!(json_u64(&v, "blocks_checked") > 0, "{v:#}");
        v
    }

    /// `cbt store ls ROOT --json`.
    #[track_caller]
    fn ls(&self, env: &TestEnv) -> Value {
        cbt_json(
            env,
            &args!["store", "ls", self.root(), "--endpoint", self.endpoint()],
        )
    }
}

/// One entry of a pack's index.
#[derive(Debug, Clone)]
struct Entry {
    digest: Digest,
    offset: u64,
    stored_len: u32,
}

/// Parses a pack (`"CBTPACK1" · blocks · index · count u32 · BLAKE3 · "CBTPIDX1"`).
fn parse_pack(data: &[u8]) -> Vec<Entry> {
    assert_eq!(&data[..8], b"CBTPACK1", "not a pack");
    let trailer = &data[data.len() - 44..];
    assert_eq!(&trailer[36..], b"CBTPIDX1", "no pack trailer");
    let count = u32::from_le_bytes(trailer[..4].try_into().unwrap()) as usize;
    let start = data.len() - 44 - count * 56;
    let index = &data[start..data.len() - 44];
    index
        .chunks(56)
        .map(|e| Entry {
            digest: Digest(e[..32].try_into().unwrap()),
            offset: u64::from_le_bytes(e[32..40].try_into().unwrap()),
            stored_len: u32::from_le_bytes(e[40..44].try_into().unwrap()),
        })
        .collect()
}

/// `n` blocks: block `i` is zero when `zero(i)`, else pseudo-random (all
/// different, incompressible).
fn blocks(n: usize, seed: u64, zero: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut data = vec![0u8; n * B];
    for (i, block) in data.chunks_mut(B).enumerate() {
        if !zero(i) {
            rng.fill(block);
        }
    }
    data
}

fn write_image(env: &TestEnv, rel: &str, data: &[u8]) -> PathBuf {
    let p = env.path(rel);
    fs::write(&p, data).unwrap();
    p
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Non-zero blocks of `data`.
fn nonzero(data: &[u8]) -> u64 {
    data.chunks(B).filter(|b| !is_zero(b)).count() as u64
}

/// The digests of the non-zero blocks of `data`.
fn digests(data: &[u8]) -> HashSet<Digest> {
    data.chunks(B).filter(|b| !is_zero(b)).map(Digest::of).collect()
}

/// Non-zero blocks of `image` whose content is nowhere in `seed` (at a
/// block boundary).
fn missing_blocks(image: &[u8], seed: &[u8]) -> u64 {
    let have: HashSet<&[u8]> = seed.chunks(B).collect();
    image
        .chunks(B)
        .filter(|b| !is_zero(b) && !have.contains(b))
        .count() as u64
}

/// Asserts the file at `path` holds exactly `data`.
#[track_caller]
fn assert_same(path: &Path, data: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got.len(), data.len(), "{}: wrong length", path.display());
    if let Some(i) = got.chunks(B).zip(data.chunks(B)).position(|(a, b)| a != b) {
        panic!("{}: block {i} differs from the image's", path.display());
    }
}

/// The counts of a push report add up.
#[track_caller]
fn check_push(v: &Value) {
    assert_eq!(
        json_u64(v, "blocks_zero") + json_u64(v, "blocks_already_stored") + json_u64(v, "blocks_uploaded"),
        json_u64(v, "blocks_total"),
        "push counts do not add up:\n{v:#}"
    );
    assert!(v["manifest"].as_str().unwrap().ends_with(".cbtm"), "{v:#}");
}

/// Waits until `done()` (at most `limit`).
#[track_caller]
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A background `cbt` with the test credentials.
fn spawn(env: &TestEnv, args: &[OsString], what: &str) -> Proc {
    Proc::start(env, cbt_command(env, args), what.to_string())
}

/// Finishes a background push, asserts it succeeded; its report.
#[track_caller]
/// `cbt store push IMAGE <store>/NAME --endpoint ENDPOINT --json`, started.
fn spawn_push(env: &TestEnv, st: &Store, image: &Path, name: &str, endpoint: &str, what: &str) -> Proc {
    spawn(
        env,
        &args![
            "store",
            "push",
            image,
            st.url(name),
            "--endpoint",
            endpoint,
            "--json"
        ],
        what,
    )
}

fn push_report(p: Proc, what: &str) -> Value {
    let (status, out, err) = p.finish(HANG);
    assert!(
        status.success(),
        "{what} failed: {status}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{out}"));
    check_push(&v);
    v
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

#[test]
fn push_then_pull_into_an_empty_and_a_seeded_destination() {
    let st = Store::new("pull-bucket", "vm/images");
    let env = TestEnv::new();
    // 8 MiB: 2048 blocks, one in 16 zero (block 0 among them: no
    // partition table is ever seen in random data).
    let data = blocks(2048, 1, |i| i % 16 == 0);
    let img = write_image(&env, "disk.raw", &data);
    let n = nonzero(&data);
    assert_eq!(n, 1920);

    let v = st.push(&env, &img, "disk", &[]);
    assert_eq!(v["manifest"], format!("{}/images/disk.cbtm", st.root()), "{v:#}");
    assert_eq!(json_u64(&v, "image_bytes"), data.len() as u64, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_total"), 2048, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_zero"), 128, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_already_stored"), 0, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_uploaded"), n, "{v:#}");
    assert_eq!(json_u64(&v, "bytes_uploaded_plain"), n * BLOCK, "{v:#}");
    let packs = st.packs();
    assert_eq!(json_u64(&v, "packs_uploaded"), packs.len() as u64, "{v:#}");
    assert!(packs.len() >= 2, "{packs:?}");
    // Every non-zero block is in exactly one pack; the packs hold nothing else.
    let mut in_packs: Vec<Digest> = packs
        .keys()
        .flat_map(|id| st.pack_index(id))
        .map(|e| e.digest)
        .collect();
    in_packs.sort_by_key(|d| d.0);
    let mut want: Vec<Digest> = digests(&data).into_iter().collect();
    want.sort_by_key(|d| d.0);
    assert_eq!(
        in_packs, want,
        "the packs do not hold exactly the image's non-zero blocks"
    );
    let pack_bytes: u64 = packs.values().sum();
    let manifest = st.s3.get(&st.bucket, &st.key("images/disk.cbtm")).unwrap();
    assert_eq!(
        json_u64(&v, "bytes_uploaded"),
        pack_bytes + manifest.len() as u64,
        "{v:#}"
    );
    assert_eq!(st.names("images"), ["disk.cbtm"]);
    assert_eq!(
        st.names("leases"),
        Vec::<String>::new(),
        "the push left its lease"
    );

    // Into an empty destination: every non-zero block from the store.
    let plain_out = env.path("out/plain.raw");
    let plain = st.pull(&env, "disk", &plain_out, &[]);
    assert_same(&plain_out, &data);
    assert_eq!(json_u64(&plain, "blocks_total"), 2048, "{plain:#}");
    assert_eq!(json_u64(&plain, "blocks_zero"), 128, "{plain:#}");
    assert_eq!(json_u64(&plain, "blocks_local"), 0, "{plain:#}");
    assert_eq!(json_u64(&plain, "blocks_missing"), n, "{plain:#}");
    assert_eq!(json_u64(&plain, "bytes_missing"), n * BLOCK, "{plain:#}");
    assert_eq!(plain["image_digest"], v["image_digest"], "{plain:#}");
    let plain_bytes = json_u64(&plain, "bytes_downloaded");
    assert!(plain_bytes >= n * BLOCK, "{plain:#}");

    // A seed holding an older version: three regions rewritten.
    let mut old = data.clone();
    let mut rng = XorShift::new(99);
    for i in (100..160).chain(700..760).chain(1500..1580) {
        rng.fill(&mut old[i * B..(i + 1) * B]);
    }
    let seed = write_image(&env, "seeds/old.raw", &old);
    let expect_missing = missing_blocks(&data, &old);
    assert!(
        (150..=200).contains(&expect_missing),
        "{expect_missing} blocks differ"
    );
    let seeded_out = env.path("out/seeded.raw");
    let seeded = st.pull(&env, "disk", &seeded_out, &[&seed]);
    assert_same(&seeded_out, &data);
    assert_eq!(json_u64(&seeded, "blocks_missing"), expect_missing, "{seeded:#}");
    assert_eq!(
        json_u64(&seeded, "bytes_missing"),
        expect_missing * BLOCK,
        "{seeded:#}"
    );
    assert_eq!(
        json_u64(&seeded, "blocks_local"),
        n - expect_missing,
        "{seeded:#}"
    );
    assert_eq!(json_u64(&seeded, "blocks_zero"), 128, "{seeded:#}");
    assert_eq!(seeded["image_digest"], v["image_digest"], "{seeded:#}");
    let seeded_bytes = json_u64(&seeded, "bytes_downloaded");
    eprintln!("downloaded: {plain_bytes} bytes unseeded, {seeded_bytes} seeded");
    assert!(seeded_bytes >= expect_missing * BLOCK, "{seeded:#}");
    assert!(
        seeded_bytes < plain_bytes / 4,
        "a seeded pull downloaded {seeded_bytes} bytes for {expect_missing} missing blocks \
         (an unseeded one {plain_bytes})"
    );
    // Only the changed blocks and the manifest (ranged GETs of whole runs).
    assert!(
        seeded_bytes <= expect_missing * BLOCK + manifest.len() as u64 + 64 * 1024,
        "{seeded:#}"
    );

    // The same image again: nothing new to upload.
    let again = st.push(&env, &img, "disk-again", &[]);
    assert_eq!(json_u64(&again, "blocks_uploaded"), 0, "{again:#}");
    assert_eq!(json_u64(&again, "bytes_uploaded_plain"), 0, "{again:#}");
    assert_eq!(json_u64(&again, "packs_uploaded"), 0, "{again:#}");
    assert_eq!(json_u64(&again, "blocks_already_stored"), n, "{again:#}");
    assert_eq!(json_u64(&again, "bytes_already_stored"), n * BLOCK, "{again:#}");
    assert_eq!(again["image_digest"], v["image_digest"], "{again:#}");
    assert_eq!(
        st.packs(),
        packs,
        "a second push of the same image changed the packs"
    );

    let ls = st.ls(&env);
    let listed: Vec<(&str, u64, &str)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap(),
                i["image_bytes"].as_u64().unwrap(),
                i["image_digest"].as_str().unwrap(),
            )
        })
        .collect();
    let digest = v["image_digest"].as_str().unwrap();
    let len = data.len() as u64;
    assert_eq!(
        listed,
        [("disk", len, digest), ("disk-again", len, digest)],
        "{ls:#}"
    );
    st.verify_clean(&env, 2);
}

#[test]
fn a_killed_push_resumes_where_it_stopped() {
    let st = Store::new("resume-bucket", "r");
    let env = TestEnv::new();
    // 64 MiB: about 16 packs of 4 MiB.
    let data = blocks(16384, 2, |i| i == 0 || i % 64 == 63);
    let img = write_image(&env, "big.raw", &data);
    let n = nonzero(&data);

    // Three pack uploads go through; the next ones wait at the gate.
    let gate = Gate::start(st.s3.addr());
    gate.hold("PUT", "/packs/", 3);
    let mut p = spawn(
        &env,
        &args![
            "store",
            "push",
            img,
            st.url("big"),
            "--endpoint",
            gate.endpoint(),
            "--jobs",
            "4",
            "--json"
        ],
        "store push (to be killed)",
    );
    gate.wait_held(1, HANG);
    wait_until("three packs in the store", HANG, || st.packs().len() >= 3);
    let status = p.kill9();
    assert!(
        !status.success(),
        "the push finished before it was killed:\n{}",
        p.log()
    );
    gate.discard();
    drop(p);

    let packs = st.packs();
    assert_eq!(packs.len(), 3, "{packs:?}");
    assert_eq!(
        st.names("images"),
        Vec::<String>::new(),
        "a killed push wrote its manifest"
    );
    assert_eq!(st.names("leases").len(), 1, "the killed push's lease");
    let stored: u64 = packs.keys().map(|id| st.pack_index(id).len() as u64).sum();
    assert!(stored > 0 && stored < n, "{stored} of {n} blocks stored");

    // The re-run finds the complete packs and uploads only the rest.
    let v = st.push(&env, &img, "big", &["--jobs", "4"]);
    assert_eq!(json_u64(&v, "blocks_already_stored"), stored, "{v:#}");
    assert_eq!(json_u64(&v, "bytes_already_stored"), stored * BLOCK, "{v:#}");
    assert!(json_u64(&v, "bytes_already_stored") > 0, "{v:#}");
    assert_eq!(json_u64(&v, "blocks_uploaded"), n - stored, "{v:#}");
    assert!(json_u64(&v, "blocks_uploaded") < n, "{v:#}");
    let all = st.packs();
    assert_eq!(
        json_u64(&v, "packs_uploaded"),
        (all.len() - packs.len()) as u64,
        "{v:#}"
    );
    assert!(packs.keys().all(|id| all.contains_key(id)));

    let out = env.path("out/big.raw");
    let pulled = st.pull(&env, "big", &out, &[]);
    assert_same(&out, &data);
    assert_eq!(json_u64(&pulled, "blocks_missing"), n, "{pulled:#}");
    st.verify_clean(&env, 1);

    // The killed push's lease is stale once older than the grace period.
    std::thread::sleep(Duration::from_millis(1100));
    let gc = st.gc(&env, 0, &[]);
    assert_eq!(json_u64(&gc, "stale_leases"), 1, "{gc:#}");
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), all.len() as u64, "{gc:#}");
    assert_eq!(st.names("leases"), Vec::<String>::new());
}

#[test]
fn two_concurrent_pushes_of_images_sharing_blocks() {
    let st = Store::new("concurrent-bucket", "c");
    let env = TestEnv::new();
    // 16 MiB each; the first halves are the same.
    let x = blocks(4096, 3, |i| i % 32 == 0);
    let mut y = x[..2048 * B].to_vec();
    y.extend(blocks(2048, 4, |i| i % 32 == 7));
    let (xi, yi) = (write_image(&env, "x.raw", &x), write_image(&env, "y.raw", &y));

    let push = |img: &Path, name: &str| {
        spawn(
            &env,
            &args![
                "store",
                "push",
                img,
                st.url(name),
                "--endpoint",
                st.endpoint(),
                "--json"
            ],
            &format!("store push {name}"),
        )
    };
    let (px, py) = (push(&xi, "x"), push(&yi, "y"));
    let (vx, vy) = (push_report(px, "push x"), push_report(py, "push y"));
    assert_eq!(json_u64(&vx, "blocks_total"), 4096, "{vx:#}");
    assert_eq!(json_u64(&vy, "blocks_total"), 4096, "{vy:#}");
    assert_eq!(st.names("images"), ["x.cbtm", "y.cbtm"]);
    assert_eq!(st.names("leases"), Vec::<String>::new());
    // Every block of both is in some pack.
    let stored: HashSet<Digest> = st
        .packs()
        .keys()
        .flat_map(|id| st.pack_index(id))
        .map(|e| e.digest)
        .collect();
    assert!(digests(&x).is_subset(&stored) && digests(&y).is_subset(&stored));

    for (name, data) in [("x", &x), ("y", &y)] {
        let out = env.path(&format!("out/{name}.raw"));
        st.pull(&env, name, &out, &[]);
        assert_same(&out, data);
    }
    st.verify_clean(&env, 2);
}

#[test]
fn gc_deletes_only_the_packs_of_a_removed_image_that_no_other_uses() {
    let st = Store::new("gc-bucket", "gc");
    let env = TestEnv::new();
    // A: 16 MiB (four packs or so); B: A's first 800 blocks, then its own.
    let a = blocks(4096, 10, |i| i % 32 == 0);
    let mut b = a[..800 * B].to_vec();
    b.extend(blocks(2048, 11, |i| i % 32 == 5));
    let (ai, bi) = (write_image(&env, "a.raw", &a), write_image(&env, "b.raw", &b));
    st.push(&env, &ai, "a", &[]);
    let packs_a = st.packs();
    let vb = st.push(&env, &bi, "b", &[]);
    assert_eq!(
        json_u64(&vb, "blocks_already_stored"),
        nonzero(&a[..800 * B]),
        "{vb:#}"
    );
    let all = st.packs();

    // The packs of A that hold a block of B (from the packs' own indexes).
    let in_b = digests(&b);
    let (used, doomed): (Vec<&String>, Vec<&String>) = packs_a
        .keys()
        .partition(|id| st.pack_index(id).iter().any(|e| in_b.contains(&e.digest)));
    assert!(
        !used.is_empty() && !doomed.is_empty(),
        "used {used:?}, doomed {doomed:?}"
    );
    let doomed_bytes: u64 = doomed.iter().map(|id| packs_a[*id]).sum();

    st.delete("images/a.cbtm");
    // Every pack older than a grace of 0 (the store's times are in seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let dry = st.gc(&env, 0, &["--dry-run"]);
    assert_eq!(json_u64(&dry, "deleted"), doomed.len() as u64, "{dry:#}");
    assert_eq!(st.packs(), all, "a dry run deleted packs");
    let gc = st.gc(&env, 0, &[]);
    assert_eq!(json_u64(&gc, "packs"), all.len() as u64, "{gc:#}");
    assert_eq!(json_u64(&gc, "deleted"), doomed.len() as u64, "{gc:#}");
    assert_eq!(json_u64(&gc, "deleted_bytes"), doomed_bytes, "{gc:#}");
    assert_eq!(
        json_u64(&gc, "referenced"),
        (all.len() - doomed.len()) as u64,
        "{gc:#}"
    );
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    let left = st.packs();
    let expected: BTreeMap<String, u64> = all
        .iter()
        .filter(|(id, _)| !doomed.contains(id))
        .map(|(id, size)| (id.clone(), *size))
        .collect();
    assert_eq!(left, expected, "gc deleted other packs than A's unshared ones");

    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
    st.verify_clean(&env, 1);
}

#[test]
fn gc_keeps_the_packs_a_lease_names() {
    let st = Store::new("lease-bucket", "l");
    let env = TestEnv::new();
    let c = blocks(1536, 12, |i| i % 16 == 0);
    let ci = write_image(&env, "c.raw", &c);
    st.push(&env, &ci, "c", &[]);
    let packs = st.packs();
    let n = packs.len() as u64;
    assert!(n >= 2, "{packs:?}");

    // The packs become older than a grace of 2 s; then a lease names
    // them, and no manifest does.
    std::thread::sleep(Duration::from_millis(3200));
    let ids: Vec<&String> = packs.keys().collect();
    st.s3.put(
        &st.bucket,
        &st.key("leases/test-lease"),
        &serde_json::to_vec(&ids).unwrap(),
    );
    st.delete("images/c.cbtm");

    let gc = st.gc(&env, 3600, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    // Older than the grace period, kept by the (young) lease alone.
    let gc = st.gc(&env, 2, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    assert_eq!(st.packs(), packs);
    assert_eq!(st.names("leases"), ["test-lease"]);

    // Without the lease they go.
    st.delete("leases/test-lease");
    let gc = st.gc(&env, 2, &[]);
    assert_eq!(json_u64(&gc, "deleted"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), 0, "{gc:#}");
    assert_eq!(st.packs(), BTreeMap::new());
}

#[test]
fn gc_during_a_push_deletes_nothing_it_needs() {
    let st = Store::new("live-bucket", "live");
    let env = TestEnv::new();
    let a = blocks(1024, 20, |i| i % 16 == 0);
    let ai = write_image(&env, "a.raw", &a);
    st.push(&env, &ai, "a", &[]);
    let packs_a = st.packs();
    // B: all of A, then 24 MiB of its own (six packs or so).
    let mut b = a.clone();
    b.extend(blocks(6144, 21, |i| i % 64 == 1));
    let bi = write_image(&env, "b.raw", &b);

    // B stops after two pack uploads.
    let gate = Gate::start(st.s3.addr());
    gate.hold("PUT", "/packs/", 2);
    let p = spawn_push(&env, &st, &bi, "b", &gate.endpoint(), "store push b");
    gate.wait_held(1, HANG);
    wait_until("two packs of B", HANG, || st.packs().len() >= packs_a.len() + 2);
    let uploaded = st.packs().len() - packs_a.len();
    // B's lease names the packs of A it reuses (all of them).
    let leases = st.names("leases");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(leases[0].starts_with("b-"), "{leases:?}");
    let lease: Vec<String> = serde_json::from_slice(
        &st.s3
            .get(&st.bucket, &st.key(&format!("leases/{}", leases[0])))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lease, packs_a.keys().cloned().collect::<Vec<_>>());

    for _ in 0..3 {
        let gc = st.gc(&env, 600, &[]);
        assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
        assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
        assert_eq!(json_u64(&gc, "referenced"), packs_a.len() as u64, "{gc:#}");
        assert_eq!(json_u64(&gc, "kept_young"), uploaded as u64, "{gc:#}");
    }
    gate.open();
    let v = push_report(p, "push b");
    assert_eq!(json_u64(&v, "blocks_already_stored"), nonzero(&a), "{v:#}");
    assert_eq!(st.names("leases"), Vec::<String>::new(), "B left its lease");

    let gc = st.gc(&env, 600, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), st.packs().len() as u64, "{gc:#}");
    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
    st.verify_clean(&env, 2);
}

/// The steps of a push at which a gc runs in
/// [`gc_at_any_step_of_a_push_leaves_it_a_whole_image`]: what the gate
/// holds (method, a piece of the target, matching requests let through
/// first).
const PUSH_STEPS: [(&str, &str, &str, usize); 5] = [
    ("before its lease", "PUT", "/leases/", 0),
    ("at its second lease write", "PUT", "/leases/", 1),
    ("at its first pack upload", "PUT", "/packs/", 0),
    ("at its manifest", "PUT", "/images/", 0),
    ("at its lease's deletion", "DELETE", "/leases/", 0),
];

/// docs/STORE.md, "Garbage collection": a push and a gc exclude each
/// other, so a gc running at any moment of a push never deletes a pack
/// the push's manifest names. For each step of a push: image A was
/// removed (its manifest deleted) and its packs are older than the grace
/// period; B holds all of A's blocks and a few of its own; B's push waits
/// at that step (the gate holds its request) while a gc runs on the
/// store. A push that then succeeds must have written an image that pulls
/// back whole and verifies (one that fails must have written no
/// manifest).
#[test]
fn gc_at_any_step_of_a_push_leaves_it_a_whole_image() {
    const GRACE: u64 = 3;
    let base = Store::new("race-bucket", "base");
    let env = TestEnv::new();
    let a = blocks(1024, 30, |i| i % 16 == 0);
    let ai = write_image(&env, "a.raw", &a);
    let mut b = a.clone();
    b.extend(blocks(256, 31, |i| i % 16 == 3));
    let bi = write_image(&env, "b.raw", &b);
    // One store per step, each holding A's packs and no manifest.
    let stores: Vec<Store> = (0..PUSH_STEPS.len())
        .map(|i| {
            let st = base.sibling(&format!("step{i}"));
            st.push(&env, &ai, "a", &[]);
            st.delete("images/a.cbtm");
            st
        })
        .collect();
    std::thread::sleep(Duration::from_millis(GRACE * 1000 + 1200));

    let mut failures = Vec::new();
    for ((step, method, needle, pass), st) in PUSH_STEPS.iter().zip(&stores) {
        let packs_a = st.packs();
        let gate = Gate::start(st.s3.addr());
        gate.hold(method, needle, *pass);
        let mut p = spawn(
            &env,
            &args![
                "store",
                "push",
                bi,
                st.url("b"),
                "--endpoint",
                gate.endpoint(),
                "--json"
            ],
            &format!("store push b (gc {step})"),
        );
        // The push waits at the step (or finished without reaching it).
        wait_until("the push at its step", HANG, || {
            gate.held() > 0 || matches!(p.child.try_wait(), Ok(Some(_)))
        });
        let reached = gate.held() > 0;
        let gc = cbt(
            &env,
            &args![
                "store",
                "gc",
                st.root(),
                "--grace",
                GRACE.to_string(),
                "--endpoint",
                st.endpoint(),
                "--json"
            ],
        );
        gate.open();
        let (status, out, err) = p.finish(HANG);
        let left = st.packs();
        let gone = packs_a.keys().filter(|id| !left.contains_key(*id)).count();
        let about = format!(
            "gc {step} (reached: {reached}; gc {}: {}; {gone} of A's {} packs deleted)",
            gc.status,
            text(&gc).trim(),
            packs_a.len()
        );
        eprintln!("{about}");
        if !status.success() {
            if !st.names("images").is_empty() {
                failures.push(format!("{about}: the push failed ({err}) but wrote a manifest"));
            }
            continue;
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        let pulled_out = env.path(&format!("out/{}.raw", st.prefix));
        let pulled = cbt(
            &env,
            &args!["recv", st.url("b"), pulled_out, "--endpoint", st.endpoint()],
        );
        if !pulled.status.success() {
            failures.push(format!(
                "{about}: the push succeeded ({} blocks already stored), but its image cannot be pulled: {}",
                json_u64(&v, "blocks_already_stored"),
                stderr(&pulled).trim()
            ));
            continue;
        }
        assert_same(&pulled_out, &b);
        st.verify_clean(&env, 1);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A gc lists a lease, then the push it belongs to finishes and deletes
/// it before the gc reads it: the push is over (its manifest is written
/// before its lease goes), which is no reason for the gc to fail.
#[test]
fn gc_goes_on_when_a_lease_it_listed_is_gone() {
    let st = Store::new("vanish-bucket", "v");
    let env = TestEnv::new();
    let b = blocks(1024, 70, |i| i % 16 == 0);
    let bi = write_image(&env, "b.raw", &b);

    // The push waits at its first pack, its lease written.
    let to_push = Gate::start(st.s3.addr());
    to_push.hold("PUT", "/packs/", 0);
    let p = spawn_push(&env, &st, &bi, "b", &to_push.endpoint(), "store push b");
    to_push.wait_held(1, HANG);
    assert_eq!(st.names("leases").len(), 1);

    // The gc has listed the lease and is about to read it.
    let to_gc = Gate::start(st.s3.addr());
    to_gc.hold("GET", "/leases/", 0);
    let gc = spawn(
        &env,
        &args![
            "store",
            "gc",
            st.root(),
            "--grace",
            "600",
            "--endpoint",
            to_gc.endpoint(),
            "--json"
        ],
        "store gc",
    );
    to_gc.wait_held(1, HANG);

    // The push finishes meanwhile; then the gc reads.
    to_push.open();
    push_report(p, "push b");
    assert_eq!(st.names("leases"), Vec::<String>::new());
    to_gc.open();
    let (status, out, err) = gc.finish(HANG);
    assert!(
        status.success(),
        "gc failed because a lease it listed was deleted by its finished push: {status}\n{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json_u64(&v, "deleted"), 0, "{v:#}");

    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
}

#[test]
fn a_damaged_pack_fails_the_pull_and_verify_names_it() {
    let st = Store::new("damage-bucket", "d");
    let env = TestEnv::new();
    let data = blocks(2048, 40, |i| i % 16 == 0);
    let img = write_image(&env, "disk.raw", &data);
    st.push(&env, &img, "disk", &[]);
    let packs = st.packs();
    let id = packs.keys().next().unwrap().clone();

    // One bit of one block flipped (in the data area: after the magic,
    // before the index); same length, same index.
    let mut pack = st.pack(&id);
    let index = parse_pack(&pack);
    let e = &index[5];
    let at = (e.offset + u64::from(e.stored_len) / 2) as usize;
    let index_start = pack.len() - 44 - index.len() * 56;
    assert!(at >= 8 && at < index_start);
    pack[at] ^= 0x01;
    st.s3.put(&st.bucket, &st.pack_key(&id), &pack);
    let named = format!("packs/{id}.pack");

    let dir = env.dir("out");
    let out = dir.join("disk.raw");
    let a = args!["recv", st.url("disk"), out, "--endpoint", st.endpoint(), "--json"];
    let pulled = cbt(&env, &a);
    assert_clean_failure(&pulled, &a);
    assert!(stderr(&pulled).contains(&named), "{}", stderr(&pulled));
    let left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "a failed pull left {left:?} in {}",
        dir.display()
    );

    let a = args![
        "store",
        "verify",
        st.root(),
        "--read",
        "--endpoint",
        st.endpoint()
    ];
    let verified = cbt(&env, &a);
    assert_code(&verified, 5);
    assert!(text(&verified).contains(&named), "{}", text(&verified));
    let mut json = a.to_vec();
    json.push("--json".into());
    let verified = cbt(&env, &json);
    assert_code(&verified, 5);
    let v: Value = serde_json::from_slice(&verified.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    assert!(problems[0].as_str().unwrap().contains(&named), "{v:#}");

    // A damaged pack is not a bad command line: not exit 2 (usage), not an
    // "invalid configuration" (what cbt first said).
    let code = pulled.status.code();
    assert!(
        code != Some(2) && !stderr(&pulled).contains("invalid configuration"),
        "a pull from a damaged pack exits {code:?} (2 is for a bad command line):\n{}",
        stderr(&pulled)
    );
}

#[test]
fn no_credential_appears_in_any_output() {
    const ACCESS: &str = "AKIACBTLEAKPROBE7Q2Z";
    const SECRET: &str = "cbtLeakProbeSecret+9f8e7d6c5b4a3210";
    let st = Store::new("creds-bucket", "c");
    let env = TestEnv::new();
    let data = blocks(512, 50, |i| i % 16 == 0);
    let img = write_image(&env, "disk.raw", &data);
    let run_as = |args: &[OsString], log: bool| {
        let mut cmd = cbt_command_as(&env, ACCESS, SECRET, args);
        if log {
            cmd.env("CBT_LOG", "trace");
        }
        run(cmd, &common::proc::show(args))
    };
    let mut runs: Vec<(String, Output)> = Vec::new();

    let a = args![
        "store",
        "push",
        img,
        st.url("disk"),
        "--endpoint",
        st.endpoint(),
        "--json"
    ];
    let out = run_as(&a, false);
    common::assert_success(&out, "cbt", &a);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json_u64(&v, "blocks_uploaded"), nonzero(&data), "{v:#}");
    runs.push(("push --json".into(), out));

    let a = args![
        "store",
        "push",
        img,
        st.url("logged"),
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, true);
    common::assert_success(&out, "cbt", &a);
    runs.push(("push with CBT_LOG=trace".into(), out));

    let a = args![
        "recv",
        st.url("missing"),
        env.path("out/missing.raw"),
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains("images/missing.cbtm"), "{}", stderr(&out));
    runs.push(("recv of a missing image".into(), out));

    let closed = closed_port();
    let a = args![
        "store",
        "push",
        img,
        st.url("disk"),
        "--endpoint",
        format!("http://{closed}")
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains(&closed), "{}", stderr(&out));
    // A store that cannot be reached is a failed connection: exit 4.
    assert_code(&out, 4);
    runs.push(("push to a closed port".into(), out));

    let a = args![
        "store",
        "ls",
        "s3://no-such-bucket/c",
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    runs.push(("ls of a missing bucket".into(), out));

    for (what, out) in &runs {
        for value in [ACCESS, SECRET] {
            assert!(
                !text(out).contains(value),
                "{what}: the output shows a credential:\n{}",
                text(out)
            );
        }
    }
}

#[test]
fn bad_store_command_lines_are_usage_errors() {
    let env = TestEnv::new();
    let img = write_image(&env, "disk.raw", &blocks(16, 60, |i| i == 0));
    let out = cbt(&env, &args!["store", "push", img, "s3://bucket"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("NAME"), "{}", stderr(&out));
    let out = cbt(
        &env,
        &args![
            "store",
            "push",
            img,
            "s3://bucket/p/disk",
            "--endpoint",
            "ftp://x"
        ],
    );
    assert_code(&out, 2);
    assert!(stderr(&out).contains("ftp://x"), "{}", stderr(&out));
    let out = cbt(
        &env,
        &args!["store", "ls", "s3://bucket/p", "--endpoint", "ftp://x"],
    );
    assert_code(&out, 2);
    let out = cbt(&env, &args!["recv", "s3://bucket", env.path("out.raw")]);
    assert_code(&out, 2);
    assert!(!env.root().join("out.raw").exists());
    let out = cbt_ok(&env, &args!["store", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("push"));
}

#[test]
fn a_pull_of_scattered_missing_blocks_downloads_only_those() {
    let st = Store::new("scatter-bucket", "s");
    let env = TestEnv::new();
    // Random (incompressible) blocks are stored raw: 4 KiB each.
    let data = blocks(1024, 7, |i| i == 0);
    let img = write_image(&env, "disk.raw", &data);
    st.push(&env, &img, "disk", &[]);
    let manifest = st.s3.get(&st.bucket, &st.key("images/disk.cbtm")).unwrap().len() as u64;
    // The seed differs in every tenth block: 102 blocks scattered over
    // every pack.
    let mut old = data.clone();
    let mut rng = XorShift::new(5);
    for i in (5..1024).step_by(10) {
        rng.fill(&mut old[i * B..(i + 1) * B]);
    }
    let seed = write_image(&env, "seeds/old.raw", &old);
    let missing = missing_blocks(&data, &old);
    assert_eq!(missing, 102);
    let out = env.path("out/disk.raw");
    let v = st.pull(&env, "disk", &out, &[&seed]);
    assert_same(&out, &data);
    assert_eq!(json_u64(&v, "blocks_missing"), missing, "{v:#}");
    let fetched = json_u64(&v, "bytes_downloaded") - manifest;
    assert!(
        fetched * 100 <= missing * BLOCK * 105,
        "{fetched} bytes downloaded for {missing} missing blocks of {BLOCK} bytes: {v:#}"
    );
}

#[test]
fn a_block_repeated_in_the_image_is_downloaded_once() {
    let st = Store::new("repeat-bucket", "r");
    let env = TestEnv::new();
    // 64 distinct random blocks, each written 128 times over 8192 blocks:
    // more than the source gathers in one round of requests.
    let distinct = blocks(64, 11, |_| false);
    let mut data = Vec::with_capacity(8192 * B);
    for i in 0..8192 {
        let j = (i * 7 + 3) % 64;
        data.extend_from_slice(&distinct[j * B..(j + 1) * B]);
    }
    let img = write_image(&env, "disk.raw", &data);
    let v = st.push(&env, &img, "disk", &[]);
    assert_eq!(json_u64(&v, "blocks_uploaded"), 64, "{v:#}");
    let manifest = st.s3.get(&st.bucket, &st.key("images/disk.cbtm")).unwrap().len() as u64;
    let out = env.path("out/disk.raw");
    let pulled = st.pull(&env, "disk", &out, &[]);
    assert_same(&out, &data);
    assert_eq!(json_u64(&pulled, "blocks_missing"), 8192, "{pulled:#}");
    let fetched = json_u64(&pulled, "bytes_downloaded") - manifest;
    assert!(
        fetched * 100 <= 64 * BLOCK * 105,
        "{fetched} bytes downloaded for 64 distinct blocks: {pulled:#}"
    );
}

#[test]
fn keys_can_come_from_a_private_credentials_file() {
    let st = Store::new("keyfile-bucket", "k");
    let env = TestEnv::new();
    let data = blocks(64, 31, |_| false);
    let img = write_image(&env, "disk.raw", &data);
    let file = env.path("credentials");
    let secret = "file-secret-9d1c7b";
    fs::write(
        &file,
        format!("[other]\naws_access_key_id = nope\n[default]\naws_access_key_id = file-key-4e2a\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let push = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        let a = args![
            "store",
            "push",
            img,
            st.url("disk"),
            "--endpoint",
            st.endpoint(),
            "--credentials",
            file
        ];
        // The environment's keys are empty: only the file's can work.
        run(cbt_command_as(&env, "", "", &a), "store push --credentials")
    };
    let open = push(0o644);
    assert_code(&open, 2);
    assert!(stderr(&open).contains("mode 600"), "{}", stderr(&open));
    let ok = push(0o600);
    assert_code(&ok, 0);
    assert_eq!(st.names("images"), ["disk.cbtm"]);
    for out in [&open, &ok] {
        assert!(
            !text(out).contains(secret),
            "the secret was printed:\n{}",
            text(out)
        );
    }
}
