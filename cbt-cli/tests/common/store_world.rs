//! The block-store tests' world (`store.rs`, `store_gc.rs`): a store (a
//! moto server, a bucket, a prefix) with the requests the tests make of
//! it, images of pseudo-random blocks, and the packs read back
//! independently of cbt.
// Test helpers: a failed unwrap is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cbt_core::Digest;
use serde_json::Value;

use super::proc::{Proc, HANG};
use super::s3::{cbt_command, cbt_json, S3};
use super::{json_u64, stderr, TestEnv, XorShift, BLOCK};

/// The block size, as an index.
pub const B: usize = BLOCK as usize;

/// A store: a server (its siblings share it), a bucket and a prefix in it.
pub struct Store {
    pub s3: Rc<S3>,
    pub bucket: String,
    pub prefix: String,
}

impl Store {
    /// Starts a server and creates `bucket`; the store lives under `prefix`.
    pub fn new(bucket: &str, prefix: &str) -> Store {
        let s3 = S3::start();
        s3.create_bucket(bucket);
        Store {
            s3: Rc::new(s3),
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// Another store in the same bucket, under `prefix`.
    pub fn sibling(&self, prefix: &str) -> Store {
        Store {
            s3: Rc::clone(&self.s3),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
        }
    }

    pub fn endpoint(&self) -> String {
        self.s3.endpoint()
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn root(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// `s3://BUCKET/PREFIX/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.root())
    }

    /// The key of `rel` in the store.
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// The names of the objects under `PREFIX/dir/`.
    pub fn names(&self, dir: &str) -> Vec<String> {
        let under = format!("{}/{dir}/", self.prefix);
        self.s3
            .list(&self.bucket, &under)
            .into_iter()
            .map(|o| o.key[under.len()..].to_string())
            .collect()
    }

    /// The packs, by id (hex): their sizes. Checks every name is a pack's.
    pub fn packs(&self) -> BTreeMap<String, u64> {
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

    pub fn pack_key(&self, id: &str) -> String {
        self.key(&format!("packs/{id}.pack"))
    }

    /// A pack's bytes.
    pub fn pack(&self, id: &str) -> Vec<u8> {
        self.s3
            .get(&self.bucket, &self.pack_key(id))
            .unwrap_or_else(|| panic!("pack {id} does not exist"))
    }

    /// The index of a pack, read from its own bytes (docs/STORE.md, "Pack").
    pub fn pack_index(&self, id: &str) -> Vec<Entry> {
        parse_pack(&self.pack(id))
    }

    /// Deletes `rel` in the store.
    pub fn delete(&self, rel: &str) {
        self.s3.delete(&self.bucket, &self.key(rel));
    }

    /// `cbt store push IMAGE URL(NAME) --endpoint E EXTRA... --json`.
    #[track_caller]
    pub fn push(&self, env: &TestEnv, image: &Path, name: &str, extra: &[&str]) -> Value {
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
    pub fn pull(&self, env: &TestEnv, name: &str, out: &Path, seeds: &[&Path]) -> Value {
        let mut a = args!["recv", self.url(name), out, "--endpoint", self.endpoint()].to_vec();
        for s in seeds {
            a.extend(args!["--seed", s]);
        }
        cbt_json(env, &a)
    }

    /// `cbt store gc ROOT --grace G --endpoint E EXTRA... --json`.
    #[track_caller]
    pub fn gc(&self, env: &TestEnv, grace: u64, extra: &[&str]) -> Value {
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
    pub fn verify_clean(&self, env: &TestEnv, images: u64) -> Value {
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
    pub fn ls(&self, env: &TestEnv) -> Value {
        cbt_json(
            env,
            &args!["store", "ls", self.root(), "--endpoint", self.endpoint()],
        )
    }
}

/// One entry of a pack's index.
#[derive(Debug, Clone)]
pub struct Entry {
    pub digest: Digest,
    pub offset: u64,
    pub stored_len: u32,
}

/// Parses a pack (`"CBTPACK1" · blocks · index · count u32 · BLAKE3 · "CBTPIDX1"`).
pub fn parse_pack(data: &[u8]) -> Vec<Entry> {
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
pub fn blocks(n: usize, seed: u64, zero: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut data = vec![0u8; n * B];
    for (i, block) in data.chunks_mut(B).enumerate() {
        if !zero(i) {
            rng.fill(block);
        }
    }
    data
}

pub fn write_image(env: &TestEnv, rel: &str, data: &[u8]) -> PathBuf {
    let p = env.path(rel);
    fs::write(&p, data).unwrap();
    p
}

pub fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Non-zero blocks of `data`.
pub fn nonzero(data: &[u8]) -> u64 {
    data.chunks(B).filter(|b| !is_zero(b)).count() as u64
}

/// The digests of the non-zero blocks of `data`.
pub fn digests(data: &[u8]) -> HashSet<Digest> {
    data.chunks(B).filter(|b| !is_zero(b)).map(Digest::of).collect()
}

/// Non-zero blocks of `image` whose content is nowhere in `seed` (at a
/// block boundary).
pub fn missing_blocks(image: &[u8], seed: &[u8]) -> u64 {
    let have: HashSet<&[u8]> = seed.chunks(B).collect();
    image
        .chunks(B)
        .filter(|b| !is_zero(b) && !have.contains(b))
        .count() as u64
}

/// Asserts the file at `path` holds exactly `data`.
#[track_caller]
pub fn assert_same(path: &Path, data: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got.len(), data.len(), "{}: wrong length", path.display());
    if let Some(i) = got.chunks(B).zip(data.chunks(B)).position(|(a, b)| a != b) {
        panic!("{}: block {i} differs from the image's", path.display());
    }
}

/// The counts of a push report add up.
#[track_caller]
pub fn check_push(v: &Value) {
    assert_eq!(
        json_u64(v, "blocks_zero") + json_u64(v, "blocks_already_stored") + json_u64(v, "blocks_uploaded"),
        json_u64(v, "blocks_total"),
        "push counts do not add up:\n{v:#}"
    );
    assert!(v["manifest"].as_str().unwrap().ends_with(".cbtm"), "{v:#}");
}

/// Waits until `done()` (at most `limit`).
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A background `cbt` with the test credentials.
pub fn spawn(env: &TestEnv, args: &[OsString], what: &str) -> Proc {
    Proc::start(env, cbt_command(env, args), what.to_string())
}

/// Finishes a background push, asserts it succeeded; its report.
#[track_caller]
/// `cbt store push IMAGE <store>/NAME --endpoint ENDPOINT --json`, started.
pub fn spawn_push(env: &TestEnv, st: &Store, image: &Path, name: &str, endpoint: &str, what: &str) -> Proc {
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

pub fn push_report(p: Proc, what: &str) -> Value {
    let (status, out, err) = p.finish(HANG);
    assert!(
        status.success(),
        "{what} failed: {status}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{out}"));
    check_push(&v);
    v
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}
