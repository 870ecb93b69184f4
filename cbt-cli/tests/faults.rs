//! Fault injection, end to end (issue 14): the real `cbt` binary on small
//! generated images, with processes killed at pseudo-random points, a full
//! disk, unwritable and non-regular paths, planted symbolic links, floods of
//! silent connections, a source written to while it is sent and a seed
//! rewritten behind the digest cache.
//!
//! What every case holds to: a run that was killed or failed never exits 0,
//! a run that exits 0 left a verified output, and no file appears at a
//! final path unless it is the whole, verified image. Kill points come from
//! a seeded generator, so a failure replays with the same schedule (up to
//! the scheduler's timing). `cargo run --release -p cbt-benches --bin soak`
//! runs the same faults hundreds of times.
//!
//! The full-disk cases mount a tmpfs and need root; as a normal user they
//! are skipped with a message on the terminal, and under CI (which runs
//! as root) they fail rather than skip (`common::root_or_skip`).

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proc::{daemon, noise_image, show, wait_allocated, write_secret, Proc};
use common::{assert_no_output, json_u64, tool, write_at, TestEnv, XorShift, BLOCK, MIB};
use serde_json::Value;

/// How long any single `cbt` run may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// Starts a one-shot `cbt recv --listen` writing `out`, seeded from `seed` only.
fn one_shot(env: &TestEnv, out: &Path, seed: &Path) -> (Proc, String) {
    let mut p = Proc::spawn(
        env,
        &args!["recv", "--listen", "127.0.0.1:0", out, "--seed", seed],
    );
    let addr = p.addr();
    (p, addr)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Watches a final path while a run that may be killed is under way: the
/// first time a file shows up there, it is read and compared with the
/// source. A file that appears must be the whole image (it is only ever
/// published by a rename after verification).
struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<bool>>,
}

impl Watch {
    fn start(path: &Path, want: &Arc<Vec<u8>>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, want, flag) = (path.to_path_buf(), Arc::clone(want), Arc::clone(&stop));
        let handle = std::thread::spawn(move || loop {
            if path.exists() {
                return Some(fs::read(&path).is_ok_and(|got| got == *want));
            }
            if flag.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        });
        Watch { stop, handle }
    }

    /// None: nothing appeared; Some(true): the right image appeared.
    fn stop(self) -> Option<bool> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// What a series of interrupted runs came to.
#[derive(Debug, Default)]
struct Tally {
    /// Interrupted runs.
    runs: u32,
    /// Processes we killed before they exited.
    killed: u32,
    /// Other exits that were not 0 (expected: the peer died).
    failed: u32,
    /// Runs that finished before the kill landed.
    finished_first: u32,
    /// A file at the final path that is not the source (must stay 0).
    wrong_images: u32,
    /// An exit 0 without the verified image at the final path (must stay 0).
    false_successes: u32,
    /// Failures that explain the counts above.
    notes: Vec<String>,
}

impl Tally {
    /// Records the exit of a process of an interrupted run, and whether its
    /// success is backed by the image at `out`.
    fn exit(&mut self, who: &str, status: ExitStatus, out: &Path, want: &[u8], err: &str) {
        if status.signal() == Some(9) {
            self.killed += 1;
        } else if status.success() {
            if fs::read(out).is_ok_and(|got| got == want) {
                self.finished_first += 1;
            } else {
                self.false_successes += 1;
                self.notes.push(format!(
                    "{who} exited 0 without the image at {}:\n{err}",
                    out.display()
                ));
            }
        } else {
            assert_ne!(status.code(), Some(101), "{who} panicked:\n{err}");
            self.failed += 1;
        }
    }

    /// Records what the watch saw at the final path.
    fn watched(&mut self, seen: Option<bool>, out: &Path) {
        if seen == Some(false) {
            self.wrong_images += 1;
            self.notes.push(format!(
                "a file other than the source appeared at {}",
                out.display()
            ));
        }
    }

    #[track_caller]
    fn check(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        assert_eq!(
            self.wrong_images,
            0,
            "{what}: wrong images\n{}",
            self.notes.join("\n")
        );
        assert_eq!(
            self.false_successes,
            0,
            "{what}: false successes\n{}",
            self.notes.join("\n")
        );
    }
}

/// Runs `cbt ARGS` to completion and asserts it succeeded; its stderr.
#[track_caller]
fn run_ok(env: &TestEnv, args: &[OsString]) -> String {
    let (status, out, err) = Proc::spawn(env, args).finish(HANG);
    assert!(
        status.success(),
        "cbt {} failed: {status}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
        show(args)
    );
    err
}

/// Asserts the file at `out` is byte-identical to `want`.
#[track_caller]
fn assert_bytes(out: &Path, want: &[u8]) {
    let got = fs::read(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    assert!(
        got == want,
        "{} differs from the source ({} bytes, source {})",
        out.display(),
        got.len(),
        want.len()
    );
}

#[test]
fn sigkill_of_the_sender_at_random_points_then_rerun() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &[]);
    let mut rng = XorShift::new(1401);
    let mut tally = Tally::default();
    for run in 0..6u64 {
        // A new source each run: earlier outputs in the data directory
        // (its seeds) must not make the next push instant.
        let src = noise_image(&env, &format!("src{run}.img"), 4, 1410 + run);
        let want = Arc::new(fs::read(&src).unwrap());
        let name = format!("vm{run}.img");
        let out = data.join(&name);
        let args = args!["send", src, format!("{addr}/{name}"), "--bwlimit", "2M"];

        let watch = Watch::start(&out, &want);
        let mut sender = Proc::spawn(&env, &args);
        sleep_ms(rng.range(0, 2200));
        let status = sender.kill9();
        let err = sender.log();
        tally.runs += 1;
        tally.exit("the sender", status, &out, &want, &err);
        // The daemon notices the dead sender; nothing may be published
        // meanwhile but the whole image.
        sleep_ms(100);
        tally.watched(watch.stop(), &out);

        // The same command again completes the image.
        run_ok(&env, &args);
        assert_bytes(&out, &want);
        fs::remove_file(&out).unwrap();
    }
    tally.check("sender killed");
}

#[test]
fn sigkill_of_a_one_shot_receiver_at_random_points_then_rerun() {
    let env = TestEnv::new();
    let empty = env.dir("empty");
    let mut rng = XorShift::new(1402);
    let mut tally = Tally::default();
    for run in 0..5u64 {
        let src = noise_image(&env, &format!("src{run}.img"), 4, 1420 + run);
        let want = Arc::new(fs::read(&src).unwrap());
        let out = env.path(&format!("out/vm{run}.img"));
        let send_args = args!["send", src, "ADDR", "--bwlimit", "2M"];
        let with_addr = |addr: &str| {
            let mut a = send_args.to_vec();
            a[2] = addr.into();
            a
        };

        let watch = Watch::start(&out, &want);
        let (mut recv, addr) = one_shot(&env, &out, &empty);
        let sender = Proc::spawn(&env, &with_addr(&addr));
        sleep_ms(rng.range(0, 2200));
        let status = recv.kill9();
        tally.runs += 1;
        tally.exit("the receiver", status, &out, &want, &recv.log());
        let (status, _, err) = sender.finish(HANG);
        tally.exit("the sender", status, &out, &want, &err);
        tally.watched(watch.stop(), &out);

        let (recv, addr) = one_shot(&env, &out, &empty);
        run_ok(&env, &with_addr(&addr));
        let (status, _, err) = recv.finish(HANG);
        assert!(
            status.success(),
            "the receiver of the rerun failed: {status}\n{err}"
        );
        assert_bytes(&out, &want);
    }
    tally.check("one-shot receiver killed");
}

#[test]
fn sigkill_of_the_daemon_at_random_points_then_rerun() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let mut rng = XorShift::new(1403);
    let mut tally = Tally::default();
    for run in 0..5u64 {
        let src = noise_image(&env, &format!("src{run}.img"), 4, 1430 + run);
        let want = Arc::new(fs::read(&src).unwrap());
        let name = format!("vm{run}.img");
        let out = data.join(&name);

        let watch = Watch::start(&out, &want);
        let (mut d, addr) = daemon(&env, &data, &[]);
        let sender = Proc::spawn(
            &env,
            &args!["send", src, format!("{addr}/{name}"), "--bwlimit", "2M"],
        );
        sleep_ms(rng.range(0, 2200));
        let status = d.kill9();
        tally.runs += 1;
        tally.exit("the daemon", status, &out, &want, &d.log());
        let (status, _, err) = sender.finish(HANG);
        tally.exit("the sender", status, &out, &want, &err);
        tally.watched(watch.stop(), &out);
        // A kill that lands just after the daemon published (a 4 MiB push
        // at 2M takes about as long as the latest kill point) leaves the
        // whole image, which a plain push may not replace: checked, then
        // removed, so that the rerun is a push again.
        if out.exists() {
            assert_bytes(&out, &want);
            fs::remove_file(&out).unwrap();
        }

        // A new daemon on the same data directory; the same push again.
        let (_d, addr) = daemon(&env, &data, &[]);
        run_ok(
            &env,
            &args!["send", src, format!("{addr}/{name}"), "--bwlimit", "2M"],
        );
        assert_bytes(&out, &want);
        fs::remove_file(&out).unwrap();
    }
    tally.check("daemon killed");
}

#[test]
fn push_right_after_a_killed_sender_takes_over() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 8, 1404);
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &[]);
    let args = args!["send", src, format!("{addr}/vm.img"), "--bwlimit", "2M"];
    let mut sender = Proc::spawn(&env, &args);
    wait_allocated(&data.join(".vm.img.cbt-partial"), MIB, HANG);
    let status = sender.kill9();
    assert_eq!(status.signal(), Some(9), "{}", sender.log());
    // No pause: the daemon may not have noticed the dead sender yet.
    let err = run_ok(&env, &args);
    assert!(!err.contains("another transfer"), "{err}");
    assert_bytes(&data.join("vm.img"), &fs::read(&src).unwrap());
}

/// A tmpfs of `mib` MiB mounted at a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (the test skipped, saying so) when not root outside CI.
    #[track_caller]
    fn mount(dir: PathBuf, mib: u64) -> Option<Tmpfs> {
        if !common::root_or_skip(&format!("it mounts a {mib} MiB tmpfs to fill a disk")) {
            return None;
        }
        let out = Command::new(tool("mount", "mount (util-linux)"))
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = tool("umount", "mount (util-linux)");
        for _ in 0..50 {
            if Command::new(&umount)
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new(&umount).arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn full_disk_fails_the_push_and_a_smaller_push_still_succeeds() {
    let env = TestEnv::new();
    let big = noise_image(&env, "big.img", 40, 1405);
    let small = noise_image(&env, "small.img", 4, 1406);
    // Declared before the daemon, so the daemon is dropped (killed) first.
    let Some(disk) = Tmpfs::mount(env.dir("data"), 16) else {
        return;
    };
    let (_d, addr) = daemon(&env, &disk.dir, &[]);
    for attempt in 0..5 {
        let (status, _, err) = Proc::spawn(&env, &args!["send", big, format!("{addr}/big.img")]).finish(HANG);
        assert!(
            !status.success() && status.code() != Some(101),
            "push {attempt} of 40 MiB into 16 MiB: {status}\n{err}"
        );
        assert!(
            err.to_lowercase().contains("space"),
            "push {attempt}: the error does not mention the space problem:\n{err}"
        );
        assert!(!disk.dir.join("big.img").exists());
    }
    // Whatever the failed pushes left must not block another name.
    run_ok(&env, &args!["send", small, format!("{addr}/small.img")]);
    assert_bytes(&disk.dir.join("small.img"), &fs::read(&small).unwrap());
    assert!(!disk.dir.join("big.img").exists());
}

#[test]
fn copy_into_a_full_disk_fails_at_once() {
    let env = TestEnv::new();
    let big = noise_image(&env, "big.img", 40, 1407);
    let empty = env.dir("empty");
    let Some(disk) = Tmpfs::mount(env.dir("full"), 16) else {
        return;
    };
    let out = disk.dir.join("big.img");
    for format in ["raw", "qcow2"] {
        let (status, _, err) = Proc::spawn(
            &env,
            &args!["copy", big, out, "--seed", empty, "--format", format],
        )
        .finish(Duration::from_secs(30));
        assert_eq!(status.code(), Some(4), "{format}: {status}\n{err}");
        assert!(err.contains("error"), "{err}");
        assert!(!out.exists(), "{format}: a file at the final path");
    }
}

#[test]
fn copy_to_a_missing_directory_fails_at_once() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 2, 1408);
    let (status, _, err) =
        Proc::spawn(&env, &args!["copy", src, "nonexistent/dir/x.raw"]).finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(4), "{status}\n{err}");
    assert!(
        err.contains("nonexistent/dir"),
        "the error does not name the path:\n{err}"
    );
    assert!(!env.root().join("nonexistent").exists());
}

#[test]
fn devices_and_fifos_are_not_images() {
    let env = TestEnv::new();
    let out = env.path("out.raw");
    let (status, _, err) =
        Proc::spawn(&env, &args!["copy", "/dev/zero", out]).finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "/dev/zero: {status}\n{err}");
    assert_no_output(&out);

    // Opening a fifo for reading blocks until a writer comes: cbt must not.
    let fifo = env.path("pipe.img");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (status, _, err) = Proc::spawn(&env, &args!["copy", fifo, out]).finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "fifo: {status}\n{err}");
    assert_no_output(&out);
}

#[test]
fn planted_links_in_the_data_directory_are_refused() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 2, 1409);
    let data = env.dir("data");
    let victim = env.path("victim.txt");
    let precious = b"precious: never to be written by cbt\n";
    let (d, addr) = daemon(&env, &data, &[]);
    let partial = data.join(".evil.cbt-partial");
    let manifest = data.join(".evil.cbt-manifest");
    for links in [&[&partial][..], &[&manifest][..], &[&partial, &manifest][..]] {
        fs::write(&victim, precious).unwrap();
        for l in links {
            let _ = fs::remove_file(l);
            std::os::unix::fs::symlink(&victim, l).unwrap();
        }
        let (status, _, err) = Proc::spawn(&env, &args!["send", src, format!("{addr}/evil")]).finish(HANG);
        let names: Vec<_> = links.iter().map(|l| l.display().to_string()).collect();
        assert!(
            !status.success() && status.code() != Some(101),
            "push with {names:?} planted: {status}\n{err}"
        );
        assert_eq!(
            fs::read(&victim).unwrap(),
            precious,
            "{names:?}: the victim was written"
        );
        assert!(!data.join("evil").exists(), "{names:?}: data/evil was created");
        let log = format!("{err}\n{}", d.log());
        assert!(
            links.iter().any(|l| {
                let n = l.file_name().unwrap().to_string_lossy();
                log.contains(n.as_ref())
            }),
            "{names:?}: no error names the link:\n{log}"
        );
        for l in links {
            let _ = fs::remove_file(l);
        }
    }
    // The daemon keeps serving other names.
    run_ok(&env, &args!["send", src, format!("{addr}/good.img")]);
    assert_bytes(&data.join("good.img"), &fs::read(&src).unwrap());

    // A one-shot receiver refuses a planted partial output as well.
    fs::write(&victim, precious).unwrap();
    let out = env.path("oneshot/evil.img");
    std::os::unix::fs::symlink(&victim, env.path("oneshot/.evil.img.cbt-partial")).unwrap();
    let empty = env.dir("empty");
    let (recv, addr) = one_shot(&env, &out, &empty);
    let (status, _, err) = Proc::spawn(&env, &args!["send", src, addr]).finish(HANG);
    assert!(!status.success(), "{err}");
    let (status, _, err) = recv.finish(HANG);
    assert!(!status.success() && status.code() != Some(101), "{status}\n{err}");
    assert_eq!(fs::read(&victim).unwrap(), precious);
    assert!(!out.exists());
}

#[test]
fn planted_links_in_the_digest_cache_are_not_followed() {
    let env = TestEnv::new();
    let seeds = env.dir("seeds");
    let seed = noise_image(&env, "seeds/a.img", 2, 1410);
    let cache = env.dir("linkcache");
    let victim = env.path("victim.txt");
    let precious = b"precious: never to be written by cbt\n";
    fs::write(&victim, precious).unwrap();
    let index = |env: &TestEnv| {
        let (status, _, err) = Proc::start(
            env,
            {
                let mut c = Command::new(env!("CARGO_BIN_EXE_cbt"));
                c.arg("--cache").arg(&cache).arg("index").arg(&seeds);
                c
            },
            "index".into(),
        )
        .finish(HANG);
        assert_ne!(status.code(), Some(101), "{err}");
        assert!(status.code().is_some(), "{status}\n{err}");
    };
    // A new mtime makes the next run hash the seed again and store it.
    let touch = |secs: i64| {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs((1_700_000_000 + secs) as u64);
        fs::File::options()
            .write(true)
            .open(&seed)
            .and_then(|f| f.set_modified(t))
            .unwrap();
    };
    index(&env);
    let entries: Vec<PathBuf> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cbtdig"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = entries[0].clone();

    // The entry itself replaced by a link to the victim.
    fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(&victim, &entry).unwrap();
    touch(1);
    index(&env);
    assert_eq!(
        fs::read(&victim).unwrap(),
        precious,
        "written through {}",
        entry.display()
    );

    // The temporary name the next writer will use (`NAME.tmpPID`): the
    // process is started through a shell that waits, so its PID (kept
    // across the exec) is known before it runs.
    touch(2);
    let go = env.path("go");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"while [ ! -e "$0" ]; do sleep 0.02; done; shift; exec "$0" "$@""#)
        .arg(&go)
        .arg(env!("CARGO_BIN_EXE_cbt"))
        .arg("--cache")
        .arg(&cache)
        .arg("index")
        .arg(&seeds);
    let p = Proc::start(&env, cmd, "index (delayed)".into());
    let tmp = format!(
        "{}.tmp{}",
        entry.file_name().unwrap().to_string_lossy(),
        p.child.id()
    );
    std::os::unix::fs::symlink(&victim, cache.join(&tmp)).unwrap();
    fs::write(&go, b"").unwrap();
    let (status, _, err) = p.finish(HANG);
    assert_ne!(status.code(), Some(101), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), precious, "written through {tmp}");
}

/// Raises this process's soft limit on open files to its hard limit (with
/// `prlimit`, from util-linux) so that it can hold `need` sockets.
fn raise_nofile(need: u64) {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (soft, hard) = (nums[0], nums[1]);
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test needs {need} open files; the hard limit is {hard}"
    );
    let status = Command::new(tool("prlimit", "util-linux"))
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit --nofile={hard}:{hard} failed");
}

#[test]
fn silent_connections_do_not_keep_a_client_out() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 2, 1411);
    let data = env.dir("data");
    let secret = write_secret(&env, "secret", "a secret for the flood test");
    const SILENT: usize = 1000;
    raise_nofile(SILENT as u64 + 400);
    let (d, addr) = daemon(
        &env,
        &data,
        &args!["--secret-file", secret, "--max-connections", "2"],
    );
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let start = Instant::now();
    run_ok(
        &env,
        &args!["send", src, format!("{addr}/vm.img"), "--secret-file", secret],
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the push took {took:?}:\n{}",
        d.log()
    );
    assert_bytes(&data.join("vm.img"), &fs::read(&src).unwrap());
    drop(silent);

    // A one-shot receiver with silent connections open still takes a push
    // promptly (well within the 5 s handshake deadline).
    let out = env.path("oneshot/vm.img");
    let empty = env.dir("empty");
    let (recv, addr) = one_shot(&env, &out, &empty);
    let silent: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let start = Instant::now();
    run_ok(&env, &args!["send", src, addr]);
    let took = start.elapsed();
    let (status, _, err) = recv.finish(HANG);
    assert!(status.success(), "{err}");
    assert!(
        took < Duration::from_secs(4),
        "the push took {took:?} with 10 silent connections open"
    );
    assert_bytes(&out, &fs::read(&src).unwrap());
    drop(silent);
}

/// The image digest cbt computes for `path` (what `cbt copy --json` reports).
fn digest_of(env: &TestEnv, path: &Path) -> String {
    let tmp = env.path("digest/copy.raw");
    let empty = env.dir("digest/empty");
    let _ = fs::remove_file(&tmp);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
    cmd.args(args!["--no-cache", "copy", path, tmp, "--seed", empty, "--json"]);
    let v = Proc::start(env, cmd, format!("copy {} (for its digest)", path.display())).json();
    v["image_digest"].as_str().unwrap_or_default().to_string()
}

#[test]
fn source_written_to_while_it_is_sent() {
    // What may the output be when the source changes under the sender? The
    // sender hashes each block once and the receiver accepts a block only
    // if it matches that digest, then checks the whole image against the
    // digest of the sender's hashing pass. So a published output holds, for
    // every block, a content that block had at some moment during the run
    // (never a mix of two writes within a block, never invented data), and
    // its image digest is the one the sender reported. It need not equal
    // the source at any single instant; that is what copying a live file
    // without a snapshot means. The assertions: exit 0 ⇒ the output exists,
    // each of its blocks is one of its block's versions, and cbt's digest
    // of it equals the digest the sender reported; any exit ⇒ a file at the
    // final path passes the same block check. Once the writes stopped, the
    // same push again must give exactly the final source.
    let env = TestEnv::new();
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &[]);
    let mut rng = XorShift::new(1412);
    let (mut wrong, mut false_ok, mut ok) = (0, 0, 0);
    for run in 0..4u64 {
        let src = noise_image(&env, &format!("src{run}.img"), 4, 1450 + run);
        let original = fs::read(&src).unwrap();
        let blocks = original.len() as u64 / BLOCK;
        // Run 0 writes in one burst at once, mostly before the sender
        // opens the file (so it usually succeeds and the digest check
        // runs); the others write during the transfer.
        let (delay, gap) = if run == 0 {
            (0, 0)
        } else {
            (rng.range(0, 1500), 20)
        };
        let seed = rng.next_u64();
        let name = format!("vm{run}.img");
        let out = data.join(&name);
        let sender = Proc::spawn(
            &env,
            &args!["send", src, format!("{addr}/{name}"), "--bwlimit", "2M", "--json"],
        );
        let writer = {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift::new(seed);
                let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
                sleep_ms(delay);
                for _ in 0..24 {
                    let off = rng.range(0, blocks - 1) * BLOCK;
                    let data = rng.bytes(BLOCK as usize);
                    write_at(&src, off, &data);
                    written.push((off, data));
                    sleep_ms(gap);
                }
                written
            })
        };
        let written = writer.join().unwrap();
        let (status, stdout, err) = sender.finish(HANG);
        assert_ne!(status.code(), Some(101), "{err}");
        let mut versions: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for (off, d) in written {
            versions.entry(off).or_default().push(d);
        }
        let consistent = |path: &Path| -> bool {
            let Ok(got) = fs::read(path) else { return false };
            got.len() == original.len()
                && got.chunks(BLOCK as usize).enumerate().all(|(i, b)| {
                    let off = i as u64 * BLOCK;
                    let o = &original[off as usize..off as usize + b.len()];
                    b == o || versions.get(&off).is_some_and(|v| v.iter().any(|x| x == b))
                })
        };
        if out.exists() && !consistent(&out) {
            wrong += 1;
        }
        if status.success() {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            let reported = v["image_digest"].as_str().unwrap_or_default().to_string();
            if !consistent(&out) || digest_of(&env, &out) != reported {
                false_ok += 1;
            } else {
                ok += 1;
            }
        }
        // The writes are over: the same push now gives the final source
        // (replacing the image the first push may have published).
        run_ok(
            &env,
            &args![
                "send",
                src,
                format!("{addr}/{name}"),
                "--bwlimit",
                "2M",
                "--json",
                "--force"
            ],
        );
        assert_bytes(&out, &fs::read(&src).unwrap());
    }
    eprintln!("source written during the send: {ok} of 4 succeeded, {wrong} wrong images, {false_ok} false successes");
    assert_eq!(wrong, 0, "outputs that were never the source's blocks");
    assert_eq!(false_ok, 0, "exit 0 without the image the sender hashed");
}

#[test]
fn seed_rewritten_under_the_same_mtime_is_rehashed_after_one_run() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 1413);
    let seeds = env.dir("seeds");
    let seed = seeds.join("a.img");
    fs::copy(&src, &seed).unwrap();
    let stamp = env.path("stamp");
    fs::write(&stamp, b"").unwrap();
    let touch_r = |from: &Path, to: &Path| {
        let s = Command::new("touch")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(s.success(), "touch -r");
    };
    touch_r(&seed, &stamp);
    env.cbt_ok(&args!["index", seeds]);

    // Rewrite one block in four in place and put the old mtime back.
    let mut rng = XorShift::new(1414);
    let len = fs::metadata(&seed).unwrap().len();
    let mut changed = 0;
    for off in (0..len).step_by(4 * BLOCK as usize) {
        write_at(&seed, off, &rng.bytes(BLOCK as usize));
        changed += 1;
    }
    touch_r(&stamp, &seed);
    assert_eq!(
        fs::metadata(&seed).unwrap().mtime(),
        fs::metadata(&stamp).unwrap().mtime()
    );

    let first = env.cbt_json(&args!["copy", src, env.path("out1.img"), "--seed", seeds]);
    assert!(
        json_u64(&first, "local_rejected") > 0,
        "{changed} blocks changed behind the cache:\n{first:#}"
    );
    assert_bytes(&env.path("out1.img"), &fs::read(&src).unwrap());
    let second = env.cbt_json(&args!["copy", src, env.path("out2.img"), "--seed", seeds]);
    assert_eq!(
        json_u64(&second, "local_rejected"),
        0,
        "the stale cache entry was kept:\n{second:#}"
    );
    assert_bytes(&env.path("out2.img"), &fs::read(&src).unwrap());
}
