//! The world of the teleport tests (`tests/teleport.rs`,
//! `tests/teleport_indexes.rs`): a served apt repository, a guest built
//! from all its packages and user data (and, if asked, the apt lists the
//! repository publishes), daemons that fetch from the repository into a
//! package cache, and the checks of a teleport's report every test makes.
// Test helpers: a failed unwrap is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::aptrepo::{guest_image, publish_translation, setup_with, Deb, GuestSpec, Published, Setup};
use super::proc::Proc;
use super::{check_summary, json_f64, json_u64, nonzero_blocks, BLOCK};

/// The guest's packages, all in the repository; their files are most of
/// the image.
pub const REPO: [(&str, &str, &str, usize); 4] = [
    ("dpkg", "1.21.22", "amd64", 300_000),
    ("hello", "1:2.0-1", "amd64", 1_500_000),
    ("tool", "0.5", "all", 600_000),
    ("libbar", "3.1-2", "amd64", 900_000),
];

/// One test's world: the served repository, the guest built from all its
/// packages (and user data), and what the tests compute from them.
pub struct World {
    pub s: Setup,
    /// Bytes of the guest's user data files.
    pub user_bytes: u64,
    /// Non-zero blocks of the guest image.
    pub nonzero: u64,
}

/// The world of `specs`; the guest's apt lists are empty.
pub fn world(specs: &[(&'static str, &'static str, &'static str, usize)]) -> World {
    world_with(specs, |_| Vec::new())
}

/// The world of `specs`, the guest's `/var/lib/apt/lists` holding the
/// files `lists` returns; it is given the repository's root first.
pub fn world_with(
    specs: &[(&'static str, &'static str, &'static str, usize)],
    lists: impl FnOnce(&Path) -> Vec<(String, Vec<u8>)>,
) -> World {
    let mut user_bytes = 0;
    let s = setup_with(specs, |env, repo, debs| {
        let installed: Vec<&Deb> = debs.iter().collect();
        let apt_lists = lists(repo);
        let spec = GuestSpec {
            installed: &installed,
            status_only: &[],
            user_data: Some(7),
            apt_lists: &apt_lists,
            size_mib: 32,
        };
        let g = guest_image(env, "guest", &spec);
        user_bytes = g.user_bytes;
        g.image
    });
    let nonzero = nonzero_blocks(&s.guest).len() as u64;
    World {
        s,
        user_bytes,
        nonzero,
    }
}

/// The world of `specs` whose repository publishes a `Translation-en` of
/// at least `min_bytes` (from `seed`) and an `InRelease`, both also in
/// the guest's apt lists; and what was published.
pub fn translated_world(
    specs: &[(&'static str, &'static str, &'static str, usize)],
    seed: u64,
    min_bytes: usize,
) -> (World, Published) {
    let mut published = None;
    let w = world_with(specs, |repo| {
        let p = publish_translation(repo, seed, min_bytes);
        let lists = p.guest_lists();
        published = Some(p);
        lists
    });
    (w, published.unwrap())
}

impl World {
    pub fn deb(&self, name: &str) -> &Deb {
        self.s.debs.iter().find(|d| d.name == name).unwrap()
    }

    /// Blocks of the guest's files from the packages not named in `except`.
    pub fn package_blocks(&self, except: &[&str]) -> u64 {
        self.s
            .debs
            .iter()
            .filter(|d| !except.contains(&d.name))
            .map(|d| d.blocks(BLOCK))
            .sum()
    }

    /// Bytes of the archives (as the repository has them) not named in `except`.
    pub fn archive_bytes(&self, except: &[&str]) -> u64 {
        self.s
            .debs
            .iter()
            .filter(|d| !except.contains(&d.name))
            .map(|d| fs::metadata(self.s.repo.join(&d.pool)).unwrap().len())
            .sum()
    }

    /// Copies every package's archive from the repository's pool into
    /// `cache` (created), under the name teleport gives it there.
    pub fn cache_all_debs(&self, cache: &Path) {
        fs::create_dir_all(cache).unwrap();
        for d in &self.s.debs {
            fs::copy(self.s.repo.join(&d.pool), cache.join(d.cache_name())).unwrap();
        }
    }

    /// A daemon whose data directory `<env>/<data>` starts empty, with the
    /// package cache `<env>/debs` (created: `serve` wants its seed roots to
    /// exist) and these extra arguments (mirrors).
    pub fn receiver(&self, data: &str, extra: &[OsString]) -> (Proc, String, PathBuf) {
        self.receiver_in(data, &self.s.cache, extra)
    }

    /// [`World::receiver`] with the package cache `cache` instead.
    pub fn receiver_in(&self, data: &str, cache: &Path, extra: &[OsString]) -> (Proc, String, PathBuf) {
        let data = self.s.env.dir(data);
        fs::create_dir_all(cache).unwrap();
        let mut a = args!["--package-cache", cache].to_vec();
        a.extend_from_slice(extra);
        let (d, addr) = self.s.daemon(&data, &a);
        (d, addr, data)
    }

    /// A receiver whose only package source is the test mirror.
    pub fn mirrored(&self, data: &str) -> (Proc, String, PathBuf) {
        self.receiver(data, &args!["--mirror", self.s.server.url()])
    }

    /// `cbt ARGS --json` to completion (a hang fails the test); its report.
    pub fn run_json(&self, args: &[OsString]) -> Value {
        let mut a = args.to_vec();
        a.push("--json".into());
        self.s.spawn(&a).json()
    }

    /// `cbt teleport GUEST DEST EXTRA... --json`; its report.
    pub fn push(&self, dest: &str, extra: &[&str]) -> Value {
        let mut a = args!["teleport", self.s.guest, dest].to_vec();
        a.extend(extra.iter().map(OsString::from));
        self.run_json(&a)
    }
}

/// Asserts two files hold the same bytes.
#[track_caller]
pub fn assert_same_bytes(out: &Path, src: &Path) {
    let (a, b) = (fs::read(out).unwrap(), fs::read(src).unwrap());
    assert!(
        a == b,
        "{} ({} bytes) differs from {} ({} bytes)",
        out.display(),
        a.len(),
        src.display(),
        b.len()
    );
}

/// Names of the entries of a directory, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// `teleport.KEY` as an unsigned integer.
#[track_caller]
pub fn tp(v: &Value, key: &str) -> u64 {
    json_u64(v, &format!("teleport.{key}"))
}

/// `teleport.plan.missing`, sorted.
#[track_caller]
pub fn missing(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["teleport"]["plan"]["missing"]
        .as_array()
        .unwrap_or_else(|| panic!("teleport.plan.missing is not a list:\n{v:#}"))
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// `teleport.plan.mirrors[i].warnings` (none when absent).
#[track_caller]
pub fn mirror_warnings(v: &Value, i: usize) -> Vec<String> {
    match v["teleport"]["plan"]["mirrors"][i].get("warnings") {
        None => Vec::new(),
        Some(w) => w
            .as_array()
            .unwrap_or_else(|| panic!("teleport.plan.mirrors[{i}].warnings is not a list:\n{v:#}"))
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect(),
    }
}

/// `teleport.prepared.failed` as (package, reason), sorted.
#[track_caller]
pub fn failed(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["teleport"]["prepared"]["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("teleport.prepared.failed is not a list:\n{v:#}"))
        .iter()
        .map(|f| {
            (
                f["package"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Checks the parts of a completed teleport every test relies on: the
/// transfer summary, the three reports, and that the block counts match
/// what the receiver says it found where.
#[track_caller]
pub fn check_teleport(v: &Value, packages: u64) {
    check_summary(v);
    assert!(v.get("dry_run").is_none_or(|d| d == false), "{v:#}");
    assert_eq!(tp(v, "plan.packages"), packages, "{v:#}");
    assert_eq!(
        tp(v, "plan.cached") + tp(v, "plan.to_fetch") + missing(v).len() as u64,
        packages,
        "every package is cached, to fetch or missing:\n{v:#}"
    );
    assert!(json_f64(v, "teleport.plan.resolve_seconds") >= 0.0);
    assert!(json_f64(v, "teleport.prepared.fetch_seconds") >= 0.0);
    assert_eq!(
        tp(v, "prepared.fetched") + failed(v).len() as u64,
        tp(v, "plan.to_fetch"),
        "every package to fetch is fetched or failed:\n{v:#}"
    );
    assert_eq!(
        tp(v, "finished.blocks_from_images")
            + tp(v, "finished.blocks_from_cached_packages")
            + tp(v, "finished.blocks_from_fetched_packages"),
        json_u64(v, "blocks_local"),
        "the local blocks by source add up:\n{v:#}"
    );
}
