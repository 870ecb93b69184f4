//! The soak's processes and fixtures: a child `cbt` with its log and peak
//! memory, a watcher of a final path, a tmpfs for the full-disk case.

use super::*;

/// The last lines of a log, on one line.
pub(super) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// `VmHWM` of a live process, in bytes.
pub(super) fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    MemStatus::parse(&status).map(|m| m.peak)
}

/// A cbt process, its stderr collected line by line.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) log: Arc<Mutex<String>>,
}

impl Proc {
    pub(super) fn start(mut cmd: Command) -> Result<Proc> {
        cmd.env_remove("CBT_LOG")
            .env_remove("CBT_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {:?}: {e}", cmd.get_program()))?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Ok(Proc { child, log })
    }

    pub(super) fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address announced on stderr by `serve` or `recv --listen`.
    pub(super) fn addr(&mut self) -> Result<String> {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.starts_with("cbt: listening on ")) {
                return Ok(line.trim_start_matches("cbt: listening on ").trim().to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("cbt exited ({status}) before listening: {}", tail(&log)).into());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("cbt did not listen within 30 s: {}", tail(&log)).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL unless it already exited; its status.
    pub(super) fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s);
        }
        let _ = self.child.kill();
        Ok(self.child.wait()?)
    }

    /// Waits at most `HANG`; status, stdout, stderr. A hang is an error.
    pub(super) fn finish(mut self) -> Result<(ExitStatus, String, String)> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > HANG {
                let _ = self.child.kill();
                return Err(format!("cbt hung for {HANG:?}: {}", tail(&self.log())).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok((status, out, self.log()))
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

/// Watches a final path while a faulted run is under way; the first file
/// seen there is compared with the source.
pub(super) struct Watch {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) handle: JoinHandle<Option<bool>>,
}

impl Watch {
    pub(super) fn start(path: &Path, want: &Arc<Vec<u8>>) -> Watch {
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

    pub(super) fn stop(self) -> Option<bool> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().ok().flatten()
    }
}

/// A tmpfs mounted for the full-disk kind, unmounted when dropped.
pub(super) struct Tmpfs {
    pub(super) dir: PathBuf,
}

impl Tmpfs {
    pub(super) fn mount(dir: PathBuf, mib: u64) -> Result<Tmpfs> {
        fs::create_dir_all(&dir)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()?
            .success();
        if !ok {
            return Err(format!("mount -t tmpfs on {} failed", dir.display()).into());
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
