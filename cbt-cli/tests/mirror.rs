//! End-to-end tests of `cbt teleport fetch` against a real apt repository
//! built at test time (`dpkg-deb --build`, `apt-ftparchive packages` and
//! `release`) and served on 127.0.0.1 by a small HTTP/1.1 file server in
//! this file, which can also corrupt one path or stall on another. The
//! guest is an ext4 image whose dpkg status lists the repository's
//! packages, plus one version the repository lacks and one package it
//! does not have at all.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{assert_clean_failure, assert_success, tool, TestEnv};

/// What the server does besides serving files.
#[derive(Default)]
struct Behaviour {
    /// URL path → bytes served instead of the file.
    corrupt: HashMap<String, Vec<u8>>,
    /// URL paths answered with silence.
    stall: HashSet<String>,
    /// Request targets as received (absolute URLs when sent through a proxy).
    seen: Vec<String>,
}

/// A std-only HTTP/1.1 file server: GET only, `Content-Length`, 404,
/// `Connection: close`. URL `/debian/X` serves `root/X`.
struct Server {
    addr: String,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let (root, b) = (root.to_path_buf(), Arc::clone(&behaviour));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, b) = (root.clone(), Arc::clone(&b));
                std::thread::spawn(move || serve(stream, &root, &b));
            }
        });
        Server { addr, behaviour }
    }

    fn url(&self) -> String {
        format!("http://{}/debian", self.addr)
    }

    fn corrupt(&self, path: &str, data: Vec<u8>) {
        self.behaviour
            .lock()
            .unwrap()
            .corrupt
            .insert(path.to_string(), data);
    }

    fn stall(&self, path: &str) {
        self.behaviour.lock().unwrap().stall.insert(path.to_string());
    }

    fn seen(&self) -> Vec<String> {
        self.behaviour.lock().unwrap().seen.clone()
    }
}

fn serve(mut stream: TcpStream, root: &Path, b: &Mutex<Behaviour>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // A proxy client opens a tunnel first (CONNECT host:port), then sends
    // its request through it: answer the CONNECT and read on.
    let (method, target) = loop {
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
            }
        }
        let mut words = request.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        b.lock().unwrap().seen.push(format!("{method} {target}"));
        if method != "CONNECT" {
            break (method, target);
        }
        if stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    };
    let (method, target) = (method.as_str(), target.as_str());
    // A proxy may also receive absolute URLs: serve them as if they were ours.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let respond = |stream: &mut TcpStream, status: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", b"");
    }
    let (corrupt, stall) = {
        let b = b.lock().unwrap();
        (b.corrupt.get(path).cloned(), b.stall.contains(path))
    };
    if stall {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    if let Some(data) = corrupt {
        return respond(&mut stream, "200 OK", &data);
    }
    let file = path
        .strip_prefix("/debian/")
        .filter(|rel| !rel.split('/').any(|c| c == ".." || c.is_empty()))
        .map(|rel| root.join(rel));
    match file.and_then(|f| fs::read(f).ok()) {
        Some(data) => respond(&mut stream, "200 OK", &data),
        None => respond(&mut stream, "404 Not Found", b"not found\n"),
    }
}

/// One package of the repository.
struct Deb {
    name: &'static str,
    version: &'static str,
    arch: &'static str,
    /// Its file under the repository root.
    pool: String,
}

impl Deb {
    /// The name `cbt teleport fetch` gives it in the cache.
    fn cache_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// The main repository: three packages (one `Architecture: all`, one
/// with an epoch).
const MAIN_REPO: [(&str, &str, &str, usize); 3] = [
    ("hello", "1:2.0-1", "amd64", 40_000),
    ("tool", "0.5", "all", 9_000),
    ("libbar", "3.1-2", "amd64", 20_000),
];

/// Builds an apt repository in `<env>/<rel>` holding `specs` (name,
/// version, architecture, data bytes; `seed` varies the content), with
/// Packages plain/xz/gz and Release.
fn build_repo(
    env: &TestEnv,
    rel: &str,
    specs: &[(&'static str, &'static str, &'static str, usize)],
    seed: u64,
) -> (PathBuf, Vec<Deb>) {
    let repo = env.dir(rel);
    let mut debs = Vec::new();
    for (i, &(name, version, arch, len)) in specs.iter().enumerate() {
        let src = env.dir(&format!("pkgsrc/{rel}/{name}"));
        fs::create_dir_all(src.join("DEBIAN")).unwrap();
        fs::write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Test <t@example.invalid>\nDescription: test package\n"
            ),
        )
        .unwrap();
        fs::create_dir_all(src.join("usr/share").join(name)).unwrap();
        fs::write(
            src.join("usr/share").join(name).join("data"),
            common::XorShift::new(seed + i as u64).bytes(len),
        )
        .unwrap();
        // Debian's pool names leave the epoch out.
        let file_version = version.split_once(':').map_or(version, |(_, v)| v);
        let pool = format!("pool/main/{}/{name}/{name}_{file_version}_{arch}.deb", &name[..1]);
        let deb = repo.join(&pool);
        fs::create_dir_all(deb.parent().unwrap()).unwrap();
        run_tool(
            Command::new(tool("dpkg-deb", "dpkg"))
                .args(["-Zxz", "--root-owner-group", "--build"])
                .arg(&src)
                .arg(&deb),
            "dpkg-deb",
        );
        debs.push(Deb {
            name,
            version,
            arch,
            pool,
        });
    }
    let bin = repo.join("dists/stable/main/binary-amd64");
    fs::create_dir_all(&bin).unwrap();
    let packages = run_tool(
        Command::new(tool("apt-ftparchive", "apt-utils"))
            .args(["packages", "pool"])
            .current_dir(&repo),
        "apt-ftparchive packages",
    );
    fs::write(bin.join("Packages"), &packages).unwrap();
    run_tool(
        Command::new(tool("xz", "xz-utils"))
            .args(["-k", "-f"])
            .arg(bin.join("Packages")),
        "xz",
    );
    run_tool(
        Command::new(tool("gzip", "gzip"))
            .args(["-k", "-f"])
            .arg(bin.join("Packages")),
        "gzip",
    );
    let release = run_tool(
        Command::new(tool("apt-ftparchive", "apt-utils"))
            .args(["release", "dists/stable"])
            .current_dir(&repo),
        "apt-ftparchive release",
    );
    fs::write(repo.join("dists/stable/Release"), release).unwrap();
    (repo, debs)
}

fn run_tool(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert_success(&out, what, &[]);
    out.stdout
}

/// An ext4 guest whose dpkg status lists the repository's packages, `dpkg`
/// (not in the repository) and `libbar` at... the repository's version, and
/// `newer` at a version the repository lacks.
fn build_guest(env: &TestEnv, debs: &[Deb]) -> PathBuf {
    let root = env.dir("guest");
    for d in ["etc/apt", "usr/bin", "usr/lib", "var/lib/dpkg/info"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/apt/sources.list"),
        "deb http://deb.debian.org/debian stable main\n",
    )
    .unwrap();
    let mut status = String::new();
    let mut add = |name: &str, version: &str, arch: &str| {
        status += &format!(
            "Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: {version}\nDescription: x\n\n"
        );
    };
    for d in debs {
        add(d.name, d.version, d.arch);
    }
    add("dpkg", "1.21.22", "amd64");
    add("newer", "9.9", "amd64");
    fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    env.ext4(&root, "guest.img", 16)
}

/// Repository, served, and guest image.
struct Setup {
    env: TestEnv,
    repo: PathBuf,
    debs: Vec<Deb>,
    server: Server,
    guest: PathBuf,
    cache: PathBuf,
}

fn setup() -> Setup {
    let env = TestEnv::new();
    let (repo, debs) = build_repo(&env, "repo", &MAIN_REPO, 1);
    let server = Server::start(&repo);
    let guest = build_guest(&env, &debs);
    let cache = env.root().join("debs");
    Setup {
        env,
        repo,
        debs,
        server,
        guest,
        cache,
    }
}

/// Proxy variables removed from every run (the tests talk to 127.0.0.1
/// directly unless a test sets one).
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

impl Setup {
    /// Runs `cbt --cache ... ARGS` without proxy variables, plus `vars`.
    fn cbt_with(&self, args: &[OsString], vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
        cmd.arg("--cache")
            .arg(self.env.cache_dir())
            .args(args)
            .current_dir(self.env.root())
            .env_remove("CBT_LOG");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().expect("run cbt")
    }

    fn cbt(&self, args: &[OsString]) -> Output {
        self.cbt_with(args, &[])
    }

    #[track_caller]
    fn cbt_ok(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_success(&out, "cbt", args);
        out
    }

    #[track_caller]
    fn cbt_json(&self, args: &[OsString]) -> Value {
        let mut full = args.to_vec();
        full.push("--json".into());
        json_of(&self.cbt_ok(&full))
    }

    #[track_caller]
    fn cbt_fail(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_clean_failure(&out, args);
        out
    }

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

    fn cache_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(&self.cache) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
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

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
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

#[test]
fn a_dead_or_useless_mirror_is_an_error_naming_it() {
    let s = setup();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}/debian");
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
