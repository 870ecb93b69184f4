//! Shared helpers for the end-to-end tests: a [`TestEnv`] owning a temporary
//! directory, a deterministic file-tree generator, and thin wrappers around
//! the real tools (`cbt`, `qemu-img`, `mkfs.ext4`, `sfdisk`) that show the
//! tool's output when it fails.
//!
//! The external tools are required, never optional: a missing tool fails the
//! test with the Debian package to install, so a CI machine without them
//! cannot pass by skipping.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

/// Builds an array of `OsString`s from string slices, paths and strings alike.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        [$(::std::ffi::OsString::from(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$a))),*]
    };
}

pub mod aptrepo;
pub mod dpkg_guest;
pub mod guest;
pub mod proc;
pub mod s3;
pub mod store_world;
pub mod teleport_world;

/// The block size cbt uses by default (the tests rely on it).
pub const BLOCK: u64 = 4096;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// A temporary directory for one test, removed when dropped.
pub struct TestEnv {
    root: TempDir,
}

impl TestEnv {
    /// A fresh, empty environment.
    pub fn new() -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("cbt-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        TestEnv { root }
    }

    /// The environment's directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `rel` inside the environment; its parent directories are created.
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.root().join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent directory");
        }
        p
    }

    /// Creates (if needed) and returns directory `rel`.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.root().join(rel);
        fs::create_dir_all(&p).expect("create directory");
        p
    }

    /// The digest cache every `cbt` run of this environment uses.
    pub fn cache_dir(&self) -> PathBuf {
        self.root().join("cache")
    }

    /// Runs `cbt --cache <root>/cache ARGS...` in the environment's directory.
    pub fn cbt(&self, args: &[OsString]) -> Output {
        let mut full = args![OsStr::new("--cache"), self.cache_dir()].to_vec();
        full.extend_from_slice(args);
        self.cbt_bare(&full)
    }

    /// Runs `cbt ARGS...` without adding `--cache`.
    pub fn cbt_bare(&self, args: &[OsString]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
        cmd.args(args).current_dir(self.root()).env_remove("CBT_LOG");
        run(&mut cmd, "cbt")
    }

    /// Runs cbt and asserts it succeeded.
    #[track_caller]
    pub fn cbt_ok(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_success(&out, "cbt", args);
        out
    }

    /// Runs cbt with `--json` appended and parses its standard output.
    #[track_caller]
    pub fn cbt_json(&self, args: &[OsString]) -> Value {
        let mut full = args.to_vec();
        full.push("--json".into());
        let out = self.cbt_ok(&full);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cbt {}: stdout is not JSON ({e}):\n{}",
                show_args(&full),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs cbt, asserts it failed cleanly (a non-zero exit that is not a
    /// panic) and returns its output.
    #[track_caller]
    pub fn cbt_fail(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_clean_failure(&out, args);
        out
    }

    /// Runs `qemu-img ARGS...` in the environment's directory and asserts success.
    #[track_caller]
    pub fn qemu_img(&self, args: &[OsString]) -> Output {
        self.qemu_img_in(self.root(), args)
    }

    /// Runs `qemu-img ARGS...` in `dir` (relative backing names are
    /// resolved from there) and asserts success.
    #[track_caller]
    pub fn qemu_img_in(&self, dir: &Path, args: &[OsString]) -> Output {
        let mut cmd = Command::new(tool("qemu-img", "qemu-utils"));
        cmd.args(args).current_dir(dir);
        let out = run(&mut cmd, "qemu-img");
        assert_success(&out, "qemu-img", args);
        out
    }

    /// Asserts `qemu-img compare A B` reports identical guest contents.
    #[track_caller]
    pub fn assert_identical(&self, a: &Path, b: &Path) {
        let out = self.compare(a, b);
        assert!(
            out.status.code() == Some(0),
            "qemu-img compare {} {}: expected identical images, got {}\n{}{}",
            a.display(),
            b.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Asserts `qemu-img compare A B` reports different guest contents
    /// (used to check that a test set-up means something).
    #[track_caller]
    pub fn assert_different(&self, a: &Path, b: &Path) {
        let out = self.compare(a, b);
        assert!(
            out.status.code() == Some(1),
            "qemu-img compare {} {}: expected different images, got {}\n{}{}",
            a.display(),
            b.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn compare(&self, a: &Path, b: &Path) -> Output {
        let mut cmd = Command::new(tool("qemu-img", "qemu-utils"));
        cmd.arg("compare").arg(a).arg(b).current_dir(self.root());
        run(&mut cmd, "qemu-img")
    }

    /// Writes a deterministic tree of `files` pseudo-random files into
    /// directory `rel` and returns its path. The same `seed` always gives
    /// the same names and contents, so several trees can share files.
    pub fn tree(&self, rel: &str, seed: u64, files: usize) -> PathBuf {
        let dir = self.dir(rel);
        write_tree(&dir, seed, files);
        dir
    }

    /// Makes a sparse ext4 image `rel` of `size_mib` MiB holding `tree`
    /// (4 KiB filesystem blocks, as on real VM disks).
    pub fn ext4(&self, tree: &Path, rel: &str, size_mib: u64) -> PathBuf {
        let img = self.path(rel);
        let mut cmd = Command::new(tool("mkfs.ext4", "e2fsprogs"));
        cmd.args(["-q", "-F", "-b", "4096", "-d"])
            .arg(tree)
            .arg(&img)
            .arg(format!("{size_mib}M"))
            .current_dir(self.root());
        let out = run(&mut cmd, "mkfs.ext4");
        assert_success(&out, "mkfs.ext4", &args![tree, img]);
        img
    }

    /// Converts raw `src` to a new qcow2 image `rel` (`extra` goes before
    /// the file names, e.g. `-c` to compress).
    pub fn to_qcow2(&self, src: &Path, rel: &str, extra: &[&str]) -> PathBuf {
        let dst = self.path(rel);
        let mut a = args!["convert", "-f", "raw", "-O", "qcow2"].to_vec();
        a.extend(extra.iter().map(OsString::from));
        a.extend(args![src, dst]);
        self.qemu_img(&a);
        dst
    }

    /// Writes the guest content of raw `src` over the existing qcow2 image
    /// `dst` (`qemu-img convert -n`): areas zero in `src` become zero
    /// clusters, covering whatever a backing file or snapshot holds there.
    pub fn write_over(&self, src: &Path, dst: &Path) {
        self.qemu_img(&args!["convert", "-n", "-f", "raw", "-O", "qcow2", src, dst]);
    }

    /// Writes a partition table with `sfdisk`, fed `script` on stdin.
    pub fn sfdisk(&self, disk: &Path, script: &str) {
        let mut cmd = Command::new(tool("sfdisk", "fdisk (util-linux)"));
        cmd.arg("-q")
            .arg(disk)
            .current_dir(self.root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run sfdisk: {e}"));
        child
            .stdin
            .take()
            .expect("sfdisk stdin")
            .write_all(script.as_bytes())
            .expect("write the sfdisk script");
        let out = child.wait_with_output().expect("wait for sfdisk");
        assert_success(&out, "sfdisk", &args![disk, script]);
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().nth(1))
        == Some("0")
}

/// For a test that needs root (`why`: what for): true as root. Otherwise
/// the test is skipped, saying so on the terminal (written past the test
/// harness's capture, so a passing run shows it) — except under CI
/// (`CI` set), which runs as root and must run every test: there, a
/// missing root fails the test.
#[track_caller]
pub fn root_or_skip(why: &str) -> bool {
    if is_root() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test} needs root ({why}); CI must run as root");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root ({why}); run the tests as root to include it (CI does)"
    );
    false
}

/// Finds an external tool on `PATH` or in the sbin directories (mkfs.ext4
/// and sfdisk live there and a non-root `PATH` may lack them); panics with
/// the package to install when it is missing.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found on PATH or in /usr/sbin, /sbin: these tests need it; install the Debian package {package}");
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({:?}): {e}", cmd.get_program()))
}

fn show_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Panics with the tool's output unless it exited with 0.
#[track_caller]
/// The standard error of a finished `cbt`, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code (README, "Exit codes"), showing stderr if not.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {}\n--- stderr ---\n{}",
        out.status,
        stderr(out)
    );
}

/// A raw image of `mib` MiB of random bytes.
pub fn random_image(env: &TestEnv, rel: &str, mib: u64, seed: u64) -> PathBuf {
    let p = env.path(rel);
    fs::write(&p, XorShift::new(seed).bytes((mib * MIB) as usize)).expect("write image");
    p
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local address");
    drop(l);
    addr.to_string()
}

#[track_caller]
pub fn assert_success(out: &Output, what: &str, args: &[OsString]) {
    assert!(
        out.status.success(),
        "{what} {} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        show_args(args),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics unless cbt failed with a non-zero exit code that is not a panic
/// (Rust exits with 101 on a panic) and printed an error, never a panic message.
#[track_caller]
pub fn assert_clean_failure(out: &Output, args: &[OsString]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101) && !stderr.contains("panicked"),
        "cbt {}: expected a clean failure, got {}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        show_args(args),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("error"),
        "cbt {}: no error message on stderr:\n{stderr}",
        show_args(args)
    );
}

/// The unsigned integer `key` of a JSON object (dotted paths allowed).
#[track_caller]
pub fn json_u64(v: &Value, key: &str) -> u64 {
    lookup(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("JSON field {key} is not an unsigned integer in:\n{v:#}"))
}

/// The number `key` of a JSON object (dotted paths allowed).
#[track_caller]
pub fn json_f64(v: &Value, key: &str) -> f64 {
    lookup(v, key)
        .as_f64()
        .unwrap_or_else(|| panic!("JSON field {key} is not a number in:\n{v:#}"))
}

fn lookup<'a>(v: &'a Value, key: &str) -> &'a Value {
    key.split('.').fold(v, |v, k| {
        v.get(k)
            .unwrap_or_else(|| panic!("JSON field {key} missing in:\n{v:#}"))
    })
}

/// A deterministic pseudo-random generator (xorshift64).
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// Writes `files` pseudo-random files of 1 KiB to 300 KiB into `dir`
/// (spread over a few subdirectories); returns their total size. Names
/// carry the seed, so trees of different seeds can be merged.
pub fn write_tree(dir: &Path, seed: u64, files: usize) -> u64 {
    let mut rng = XorShift::new(seed);
    let mut total = 0;
    for i in 0..files {
        let len = rng.range(1024, 300 * 1024);
        let sub = dir.join(format!("d{}", i % 3));
        fs::create_dir_all(&sub).expect("create tree subdirectory");
        let data = rng.bytes(len as usize);
        fs::write(sub.join(format!("s{seed}-f{i:03}.dat")), &data).expect("write tree file");
        total += len;
    }
    total
}

/// Offsets of the non-zero `BLOCK`-sized blocks of a raw file.
pub fn nonzero_blocks(path: &Path) -> Vec<u64> {
    let mut f = File::open(path).expect("open raw image");
    let mut buf = vec![0u8; BLOCK as usize];
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.push(offset);
        }
        offset += n as u64;
    }
    out
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]).expect("read") {
            0 => break,
            n => done += n,
        }
    }
    done
}

/// Writes `data` at `offset` of an existing file, keeping its length if the
/// data fits.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    f.write_all_at(data, offset).expect("write_at");
}

/// Copies the non-zero 64 KiB chunks of `src` into `dst` at `offset`
/// (`dst` stays sparse where `src` is zero).
pub fn copy_into(src: &Path, dst: &Path, offset: u64) {
    let mut from = File::open(src).expect("open source");
    let to = OpenOptions::new()
        .write(true)
        .open(dst)
        .expect("open destination");
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0;
    loop {
        let n = read_full(&mut from, &mut buf);
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..n], offset + pos).expect("write");
        }
        pos += n as u64;
    }
}

/// Makes a sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) {
    File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("create sparse file");
}

/// Asserts that neither `dst` nor cbt's temporary `.DST.cbt-partial` exists.
#[track_caller]
pub fn assert_no_output(dst: &Path) {
    assert!(!dst.exists(), "{} was created although cbt failed", dst.display());
    let name = dst.file_name().expect("file name").to_string_lossy();
    let partial = dst.with_file_name(format!(".{name}.cbt-partial"));
    assert!(
        !partial.exists(),
        "{} was left behind although cbt failed",
        partial.display()
    );
}

/// Runs `cbt ARGS --json` to completion and returns its summary.
#[track_caller]
pub fn cbt_json(env: &TestEnv, args: &[OsString]) -> Value {
    let mut a = args.to_vec();
    a.push("--json".into());
    proc::Proc::spawn(env, &a).json()
}

/// Checks the summary has every field people and scripts rely on, and
/// that the block counts add up.
#[track_caller]
pub fn check_summary(v: &Value) {
    for key in [
        "image_bytes",
        "blocks_zero",
        "blocks_local",
        "blocks_sent",
        "wire_bytes_sent",
        "wire_bytes_received",
    ] {
        json_u64(v, key);
    }
    assert!(json_f64(v, "seconds") > 0.0);
    assert!(json_f64(v, "observed_bandwidth") > 0.0);
    assert_eq!(
        json_u64(v, "blocks_zero") + json_u64(v, "blocks_local") + json_u64(v, "blocks_sent")
            - json_u64(v, "blocks_repaired"),
        json_u64(v, "blocks_total"),
        "block counts do not add up:\n{v:#}"
    );
}
