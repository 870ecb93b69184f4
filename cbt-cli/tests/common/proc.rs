//! Background `cbt` processes for the network and fault tests: [`Proc`]
//! (stderr collected, the announced address, signals, a bounded wait), a
//! daemon on a free port, and the images and secrets those tests use.
#![allow(clippy::unwrap_used)] // Test helpers fail loudly on any unexpected error.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TestEnv, XorShift, MIB};

/// How long any single `cbt` run may take before a test calls it a hang.
pub const HANG: Duration = Duration::from_secs(120);

/// A `cbt` process running in the background, its stderr collected.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
    what: String,
}

impl Proc {
    /// Starts `cbt --cache <env cache> ARGS...` in the environment.
    pub fn spawn(env: &TestEnv, args: &[OsString]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
        cmd.arg("--cache").arg(env.cache_dir()).args(args);
        Proc::start(env, cmd, show(args))
    }

    /// Starts `cmd` in the environment with stdout and stderr collected.
    pub fn start(env: &TestEnv, mut cmd: Command, what: String) -> Proc {
        cmd.current_dir(env.root())
            .env_remove("CBT_LOG")
            .env_remove("CBT_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start cbt");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc { child, log, what }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    #[track_caller]
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "cbt {} exited ({status}) before printing {needle:?}:\n{}",
                    self.what,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "cbt {}: no {needle:?} after {limit:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address announced by `serve` or `recv --listen`.
    #[track_caller]
    pub fn addr(&mut self) -> String {
        self.wait_log("cbt: listening on ", Duration::from_secs(30));
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.starts_with("cbt: listening on "))
            .unwrap_or_default();
        line.trim_start_matches("cbt: listening on ").trim().to_string()
    }

    /// The process id, for `kill`.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends `sig` (e.g. "-KILL", "-TERM") with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Kills the process with SIGKILL unless it already exited; its status.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // Child::kill sends SIGKILL (harmless if it exited meanwhile).
        let _ = self.child.kill();
        self.child.wait().expect("wait for the killed process")
    }

    /// Waits for the process (at most `limit`, else the test fails as a
    /// hang); its status, stdout and stderr.
    #[track_caller]
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "cbt {} did not finish in {limit:?} (a hang):\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        // Let the stderr thread catch up with the last lines.
        std::thread::sleep(Duration::from_millis(50));
        (status, out, self.log())
    }

    /// Waits for success and parses the JSON summary on stdout.
    #[track_caller]
    pub fn json(self) -> Value {
        let what = self.what.clone();
        let (status, out, err) = self.finish(HANG);
        assert!(
            status.success(),
            "cbt {what} failed: {status}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cbt {what}: not JSON ({e}):\n{out}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn show(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts `cbt serve` on a free port with these extra arguments.
pub fn daemon(env: &TestEnv, data: &Path, extra: &[OsString]) -> (Proc, String) {
    let mut a = args!["serve", "--listen", "127.0.0.1:0", "--data", data].to_vec();
    a.extend_from_slice(extra);
    let mut p = Proc::spawn(env, &a);
    let addr = p.addr();
    (p, addr)
}

/// A raw image of `mib` MiB of incompressible data (with a zero MiB every 8).
pub fn noise_image(env: &TestEnv, rel: &str, mib: u64, seed: u64) -> PathBuf {
    let path = env.path(rel);
    let mut rng = XorShift::new(seed);
    let mut f = fs::File::create(&path).unwrap();
    for m in 0..mib {
        let chunk = if m % 8 == 7 {
            vec![0u8; MIB as usize]
        } else {
            rng.bytes(MIB as usize)
        };
        f.write_all(&chunk).unwrap();
    }
    path
}

pub fn write_secret(env: &TestEnv, rel: &str, secret: &str) -> PathBuf {
    let p = env.path(rel);
    fs::write(&p, format!("{secret}\n")).unwrap();
    p
}

/// Bytes actually allocated to a file (a sparse partial output grows as
/// blocks arrive).
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

#[track_caller]
pub fn wait_allocated(path: &Path, bytes: u64, limit: Duration) {
    let start = Instant::now();
    while allocated(path) < bytes {
        assert!(
            start.elapsed() < limit,
            "{} did not reach {bytes} bytes",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
