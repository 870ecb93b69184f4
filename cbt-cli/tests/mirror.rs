//! End-to-end tests of `cbt teleport fetch` against a real apt repository
//! built at test time and served on 127.0.0.1 (`common::aptrepo`: a small
//! HTTP/1.1 file server that can also corrupt one path or stall on
//! another). The guest is an ext4 image whose dpkg status lists the
//! repository's packages, plus one version the repository lacks and one
//! package it does not have at all.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::aptrepo::{
    apt_download_name, build_guest, build_repo, build_repo_named, dead_mirror_url, json_of, run_tool, setup,
    write_release, Drip, Server, Setup, DRIP_FOR,
};
use common::{assert_success, tool, TestEnv};

impl Setup {
    fn fetch_args(&self, extra: &[&str]) -> Vec<OsString> {
        let mut a = args![
            "teleport",
            "fetch",
            self.guest,
            "--mirror",
            self.server.url(),
            "--package-cache",
            self.cache
        ]
        .to_vec();
        a.extend(extra.iter().map(Into::into));
        a
    }
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not a list: {v}"))
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn fetches_the_exact_packages_then_nothing() {
    let s = setup();
    let v = s.cbt_json(&s.fetch_args(&[]));
    assert_eq!(
        ids(&v, "fetched"),
        ["hello 1:2.0-1 amd64", "libbar 3.1-2 amd64", "tool 0.5 all"],
        "{v}"
    );
    assert_eq!(ids(&v, "missing"), ["dpkg 1.21.22 amd64", "newer 9.9 amd64"]);
    assert!(v["failed"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["already_present"].as_array().unwrap().is_empty());
    let mut total = 0;
    for d in &s.debs {
        let fetched = fs::read(s.cache.join(d.cache_name())).unwrap();
        let original = fs::read(s.repo.join(&d.pool)).unwrap();
        assert!(
            fetched == original,
            "{} differs from the repository's",
            d.cache_name()
        );
        total += original.len() as u64;
    }
    assert_eq!(v["fetched_bytes"].as_u64().unwrap(), total);
    assert!(s.cache_names().contains(&"hello_1%3a2.0-1_amd64.deb".to_string()));
    let debs = s
        .cache_names()
        .into_iter()
        .filter(|n| n.ends_with(".deb"))
        .count();
    assert_eq!(debs, 3, "{:?}", s.cache_names());
    // The checked Release and Packages files are kept under apt's list
    // names, byte for byte, so they seed the guest's own apt lists.
    assert_eq!(v["index_files"].as_u64().unwrap(), 2, "{v}");
    for (suffix, published) in [
        ("_dists_stable_Release", "dists/stable/Release"),
        (
            "_dists_stable_main_binary-amd64_Packages.xz",
            "dists/stable/main/binary-amd64/Packages.xz",
        ),
    ] {
        let name = s
            .cache_names()
            .into_iter()
            .find(|n| n.ends_with(suffix) && !n.starts_with('.'))
            .unwrap_or_else(|| panic!("no *{suffix} in {:?}", s.cache_names()));
        assert_eq!(
            fs::read(s.cache.join(&name)).unwrap(),
            fs::read(s.repo.join(published)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(s.cache_names().len(), 5, "{:?}", s.cache_names());

    // A second run finds everything in place.
    let v = s.cbt_json(&s.fetch_args(&["--jobs", "1"]));
    assert!(v["fetched"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["index_files"].as_u64().unwrap(), 0, "{v}");
    assert_eq!(
        ids(&v, "already_present"),
        ["hello 1:2.0-1 amd64", "libbar 3.1-2 amd64", "tool 0.5 all"]
    );
    assert_eq!(v["missing"].as_array().unwrap().len(), 2);

    // The human summary, with explicit suite and components.
    let out = s.cbt_ok(&s.fetch_args(&["--suite", "stable", "--components", "main"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fetched: 0 packages, 0 bytes"), "{text}");
    assert!(text.contains("already present: 3"), "{text}");
    assert!(text.contains("newer:amd64 9.9"), "{text}");
}

/// An offline mirror built from `apt-get download`s lists file names
/// with a literal `%3a` (the epoch's `:`) and `+`: they are requested
/// percent-encoded (`%253a`, `%2B`), so the server finds the files.
#[test]
fn file_names_that_need_escaping_in_a_url_are_fetched() {
    let env = TestEnv::new();
    let specs = [
        ("dmsetup", "2:1.02.185-2+b1", "amd64", 3_000),
        ("libstdc++6", "12.2.0-14+deb12u1", "amd64", 5_000),
        ("tool", "0.5", "all", 2_000),
    ];
    let (repo, debs) = build_repo_named(&env, "repo", &specs, 3, apt_download_name);
    let packages = fs::read_to_string(repo.join("dists/stable/main/binary-amd64/Packages")).unwrap();
    assert!(
        packages.contains("Filename: pool/main/d/dmsetup/dmsetup_2%3a1.02.185-2+b1_amd64.deb\n"),
        "apt-ftparchive lists the literal name:\n{packages}"
    );
    let server = Server::start(&repo);
    let guest = build_guest(&env, &debs);
    let cache = env.root().join("debs");
    let s = Setup {
        env,
        repo,
        debs,
        server,
        guest,
        cache,
    };
    let v = s.cbt_json(&s.fetch_args(&[]));
    assert_eq!(
        ids(&v, "fetched"),
        [
            "dmsetup 2:1.02.185-2+b1 amd64",
            "libstdc++6 12.2.0-14+deb12u1 amd64",
            "tool 0.5 all"
        ],
        "{v}"
    );
    assert!(v["failed"].as_array().unwrap().is_empty(), "{v}");
    s.assert_cache_holds_all_but(&[]);
    let seen = s.server.seen();
    assert!(
        seen.iter()
            .any(|r| r == "GET /debian/pool/main/d/dmsetup/dmsetup_2%253a1.02.185-2%2Bb1_amd64.deb"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r
                == "GET /debian/pool/main/l/libstdc%2B%2B6/libstdc%2B%2B6_12.2.0-14%2Bdeb12u1_amd64.deb"),
        "{seen:?}"
    );
}

#[test]
fn a_corrupt_download_is_reported_and_not_kept() {
    let s = setup();
    let libbar = s.debs.iter().find(|d| d.name == "libbar").unwrap();
    let mut bad = fs::read(s.repo.join(&libbar.pool)).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    s.server.corrupt(&format!("/debian/{}", libbar.pool), bad);
    let out = s.cbt(&s.fetch_args(&["--json"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(ids(&v, "failed"), ["libbar 3.1-2 amd64"]);
    let reason = v["failed"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("SHA256") && reason.contains(&libbar.pool),
        "{reason}"
    );
    assert_eq!(ids(&v, "fetched"), ["hello 1:2.0-1 amd64", "tool 0.5 all"]);
    let debs_and_temps: Vec<String> = s
        .cache_names()
        .into_iter()
        .filter(|n| !n.contains("_dists_"))
        .collect();
    assert_eq!(
        debs_and_temps,
        ["hello_1%3a2.0-1_amd64.deb", "tool_0.5_all.deb"],
        "the corrupt download and its temporary file are gone"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be downloaded"), "{stderr}");

    // A truncated one too.
    let good = fs::read(s.repo.join(&libbar.pool)).unwrap();
    s.server.corrupt(
        &format!("/debian/{}", libbar.pool),
        good[..good.len() - 100].to_vec(),
    );
    let out = s.cbt(&s.fetch_args(&["--json"]));
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    let reason = v["failed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("truncated"), "{reason}");
    let not_indexes = s
        .cache_names()
        .into_iter()
        .filter(|n| !n.contains("_dists_"))
        .count();
    assert_eq!(not_indexes, 2, "{:?}", s.cache_names());
}

#[test]
fn a_stalled_download_times_out() {
    let s = setup();
    let hello = s.debs.iter().find(|d| d.name == "hello").unwrap();
    s.server.stall(&format!("/debian/{}", hello.pool));
    let start = Instant::now();
    let out = s.cbt(&s.fetch_args(&["--json", "--timeout", "1"]));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(ids(&v, "failed"), ["hello 1:2.0-1 amd64"]);
    let reason = v["failed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains(&hello.pool), "{reason}");
    assert_eq!(ids(&v, "fetched"), ["libbar 3.1-2 amd64", "tool 0.5 all"]);
    assert!(!s
        .cache_names()
        .iter()
        .any(|n| n.starts_with("hello") || n.starts_with('.')));

    // A mirror whose Release stalls is an error naming it.
    s.server.stall("/debian/dists/stable/Release");
    let out = s.cbt_fail(&s.fetch_args(&["--timeout", "1"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}/dists/stable/Release", s.server.url())),
        "{stderr}"
    );
}

/// A mirror that drips (one byte every 200 ms, well inside the 1 s read
/// timeout) is given up by the minimum rate, not after the server tires
/// ([`DRIP_FOR`], 60 s): a sized archive fails alone, an endless chunked
/// Release fails the mirror.
#[test]
fn a_dripping_download_is_given_up_at_the_minimum_rate() {
    let s = setup();
    let hello = s.debs.iter().find(|d| d.name == "hello").unwrap();
    s.server
        .drip(&hello.url_path(), Drip::Sized, Duration::from_millis(200));
    let start = Instant::now();
    let out = s.cbt(&s.fetch_args(&["--json", "--timeout", "1"]));
    let took = start.elapsed();
    assert!(took < DRIP_FOR / 3, "took {took:?} with a 1 s timeout");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(ids(&v, "failed"), ["hello 1:2.0-1 amd64"], "{v}");
    let reason = v["failed"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&hello.pool) && reason.contains("too slow"),
        "{reason}"
    );
    assert_eq!(ids(&v, "fetched"), ["libbar 3.1-2 amd64", "tool 0.5 all"]);
    assert!(!s
        .cache_names()
        .iter()
        .any(|n| n.starts_with("hello") || n.starts_with('.')));

    s.server.drip(
        "/debian/dists/stable/Release",
        Drip::Endless,
        Duration::from_millis(200),
    );
    let start = Instant::now();
    let out = s.cbt_fail(&s.fetch_args(&["--timeout", "1"]));
    let took = start.elapsed();
    assert!(took < DRIP_FOR / 3, "took {took:?} with a 1 s timeout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}/dists/stable/Release", s.server.url())) && stderr.contains("too slow"),
        "{stderr}"
    );
}

/// A `Packages.xz` bomb that its Release lists (so its size and SHA256
/// match): 600 concatenated xz streams of the repository's real index
/// (about 1 MiB each once decompressed, a few KiB compressed). It is
/// refused at the 512 MiB limit, and parsed while decompressed: cbt's
/// peak RSS stays far below what holding 512 MiB would take (it was
/// 540 MB when the whole output was kept). Measured by GNU time when it
/// is installed; the refusal is checked either way.
#[test]
fn a_packages_xz_bomb_is_refused_in_bounded_memory() {
    let s = setup();
    let bin = s.repo.join("dists/stable/main/binary-amd64");
    let index = fs::read(bin.join("Packages")).unwrap();
    let piece = s.env.root().join("piece");
    fs::write(&piece, index.repeat((1 << 20) / index.len() + 1)).unwrap();
    run_tool(
        std::process::Command::new(tool("xz", "xz-utils"))
            .args(["-k", "-f", "-0"])
            .arg(&piece),
        "xz",
    );
    let stream = fs::read(s.env.root().join("piece.xz")).unwrap();
    fs::write(bin.join("Packages.xz"), stream.repeat(600)).unwrap();
    fs::remove_file(bin.join("Packages")).unwrap();
    fs::remove_file(bin.join("Packages.gz")).unwrap();
    write_release(&s.repo);

    let time = ["/usr/bin/time", "/bin/time"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file());
    let rss_file = s.env.root().join("rss");
    let out = match time {
        Some(time) => {
            let cmd = s.command(&s.fetch_args(&[]), &[]);
            let mut wrapped = std::process::Command::new(time);
            wrapped
                .arg("-f")
                .arg("%M")
                .arg("-o")
                .arg(&rss_file)
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .current_dir(s.env.root());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            wrapped.output().unwrap()
        }
        None => {
            eprintln!("note: no /usr/bin/time (GNU time): the bomb's peak RSS is not measured");
            s.cbt(&s.fetch_args(&[]))
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("Packages.xz") && stderr.contains("more than 536870912 bytes once decompressed"),
        "{stderr}"
    );
    if time.is_some() {
        let text = fs::read_to_string(&rss_file).unwrap();
        let kib: u64 = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("GNU time wrote {text:?}"));
        assert!(kib < 128 << 10, "peak RSS {kib} KiB while refusing the bomb");
        eprintln!("peak RSS while refusing a 600 MiB Packages.xz bomb: {kib} KiB");
    }
    assert!(s.cached_debs().is_empty(), "{:?}", s.cache_names());
}

#[test]
fn a_dead_or_useless_mirror_is_an_error_naming_it() {
    let s = setup();
    let dead = dead_mirror_url();
    let mut a = s.fetch_args(&[]);
    a.extend(args!["--mirror", dead]);
    let out = s.cbt_fail(&a);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&dead), "{stderr}");
    assert!(
        s.cache_names().is_empty(),
        "nothing fetched before every mirror is open"
    );

    // A reachable server without the suite.
    let out = s.cbt_fail(&s.fetch_args(&["--suite", "nosuch"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&s.server.url()) && stderr.contains("no Packages index"),
        "{stderr}"
    );

    // An index that does not match its Release.
    s.server.corrupt(
        "/debian/dists/stable/main/binary-amd64/Packages.xz",
        b"junk".to_vec(),
    );
    let out = s.cbt_fail(&s.fetch_args(&[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Packages.xz"), "{stderr}");
}

#[test]
fn a_second_mirror_supplies_what_the_first_lacks() {
    let s = setup();
    // Another repository: `newer` at the guest's version, and a different
    // build of hello at the same version (the first mirror must win).
    let (repo2, debs2) = build_repo(
        &s.env,
        "repo2",
        &[
            ("newer", "9.9", "amd64", 5_000),
            ("hello", "1:2.0-1", "amd64", 1_000),
        ],
        100,
    );
    let server2 = Server::start(&repo2);
    let mut a = s.fetch_args(&[]);
    a.extend(args!["--mirror", server2.url()]);
    let v = s.cbt_json(&a);
    assert_eq!(
        ids(&v, "fetched"),
        [
            "hello 1:2.0-1 amd64",
            "libbar 3.1-2 amd64",
            "newer 9.9 amd64",
            "tool 0.5 all"
        ],
        "{v}"
    );
    assert_eq!(ids(&v, "missing"), ["dpkg 1.21.22 amd64"]);
    let hello = s.debs.iter().find(|d| d.name == "hello").unwrap();
    assert!(
        fs::read(s.cache.join(hello.cache_name())).unwrap() == fs::read(s.repo.join(&hello.pool)).unwrap()
    );
    let newer = &debs2[0];
    assert!(
        fs::read(s.cache.join(newer.cache_name())).unwrap() == fs::read(repo2.join(&newer.pool)).unwrap()
    );
    assert!(
        !server2.seen().iter().any(|t| t.contains("/pool/main/h/")),
        "hello came from the first mirror: {:?}",
        server2.seen()
    );
}

#[test]
fn the_proxy_from_the_environment_is_used() {
    let s = setup();
    let proxy = format!("http://{}", s.server.addr);
    let a = args![
        "teleport",
        "fetch",
        s.guest,
        "--mirror",
        "http://mirror.invalid/debian",
        "--package-cache",
        s.cache,
        "--json"
    ]
    .to_vec();
    let out = s.cbt_with(&a, &[("http_proxy", proxy.as_str())]);
    assert_success(&out, "cbt", &a);
    let v = json_of(&out);
    assert_eq!(v["fetched"].as_array().unwrap().len(), 3, "{v}");
    assert!(
        s.server.seen().iter().any(|t| t == "CONNECT mirror.invalid:80"),
        "{:?}",
        s.server.seen()
    );
}
