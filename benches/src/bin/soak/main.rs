//! `soak`: the fault-injection cases of `cbt-cli/tests/faults.rs`, run
//! hundreds of times on loopback against the release binary, with a
//! Markdown table of what happened on stdout (progress on stderr).
//!
//! ```text
//! cargo build --release -p cbt-cli -p cbt-benches
//! target/release/soak [--runs 300] [--quick] [--cbt target/release/cbt]
//! ```
//!
//! Runs are dealt round-robin over the fault kinds; kill points and
//! written blocks come from a seeded generator (`--seed`). For every run
//! the faulted command may fail (that is expected and counted), but:
//! - a file at a final path is always the whole source (else: a *wrong image*);
//! - an exit 0 always comes with that file (else: a *false success*);
//! - the rerun after the fault, or the legitimate client next to it,
//!   succeeds with the exact source (else: a *rerun failure*).
//!
//! The program exits with 1 if any of those three counts is not zero. The
//! full-disk kind mounts a tmpfs and runs only as root (it is left out,
//! with a note, otherwise).

use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cbt_benches::{random_bytes, splitmix64, write_random_image, MemStatus, MIB};
use clap::Parser;

mod procs;
mod race;

use procs::{peak_rss, tail, Proc, Tmpfs, Watch};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// cbt's default block size (the soak does not change it).
const BLOCK: u64 = 4096;
/// Longest any single cbt run may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(120);
/// Silent connections opened against the daemon in the flood kind.
const SILENT: usize = 1000;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Fault-injection soak of cbt: kills, full disk, links, floods, a changing source")]
struct Opts {
    /// Total runs, dealt round-robin over the fault kinds.
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// A short smoke run: 40 runs of 2 MiB images.
    #[arg(long)]
    quick: bool,
    /// The cbt binary under test.
    #[arg(long, default_value = "target/release/cbt")]
    cbt: PathBuf,
    /// Work directory (default: a new temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the kill points and written blocks.
    #[arg(long, default_value_t = 14)]
    seed: u64,
    /// Size of the images pushed, in MiB.
    #[arg(long, default_value_t = 4)]
    image_mib: u64,
    /// Sender rate limit while a fault is injected (so kills land mid-transfer).
    #[arg(long, default_value = "4M")]
    bwlimit: String,
    /// Run only these kinds (repeat for more), e.g. `--only seed-rewritten`.
    #[arg(long, value_enum)]
    only: Vec<Kind>,
}

/// The faults injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
enum Kind {
    KillSender,
    KillReceiver,
    KillDaemon,
    Takeover,
    SourceWritten,
    FullDisk,
    PlantedLink,
    SilentFlood,
    SeedRewritten,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::KillSender,
        Kind::KillReceiver,
        Kind::KillDaemon,
        Kind::Takeover,
        Kind::SourceWritten,
        Kind::FullDisk,
        Kind::PlantedLink,
        Kind::SilentFlood,
        Kind::SeedRewritten,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::KillSender => "SIGKILL sender, rerun",
            Kind::KillReceiver => "SIGKILL one-shot receiver, rerun",
            Kind::KillDaemon => "SIGKILL daemon, restart, rerun",
            Kind::Takeover => "SIGKILL sender, rerun at once",
            Kind::SourceWritten => "source written during send",
            Kind::FullDisk => "full disk (16 MiB tmpfs), smaller push",
            Kind::PlantedLink => "planted symlinks, other name",
            Kind::SilentFlood => "1000 silent connections, push",
            Kind::SeedRewritten => "seed rewritten during copy (new, in place)",
        }
    }
}

/// What the runs of one kind came to.
#[derive(Debug, Default, Clone)]
struct Stats {
    runs: u64,
    /// Non-zero exits of the faulted processes (killed ones included): expected.
    failures: u64,
    wrong_images: u64,
    false_successes: u64,
    rerun_failures: u64,
    /// Reruns that resumed (a kill came first) and what they sent.
    resumes: u64,
    resent_bytes: u64,
    /// Non-zero bytes those reruns had to deliver in all.
    resume_image_bytes: u64,
    /// Peak resident set of the daemon (or one-shot receiver), in bytes.
    peak_rss: u64,
    /// What went wrong, for the report.
    notes: Vec<String>,
}

impl Stats {
    fn note(&mut self, s: String) {
        eprintln!("  !! {s}");
        if self.notes.len() < 10 {
            self.notes.push(s);
        }
    }

    /// Records the exit of a faulted process whose success must be backed
    /// by the image `want` at `out`.
    fn exit(&mut self, who: &str, status: ExitStatus, out: &Path, want: &[u8], log: &str) {
        if status.success() {
            if !fs::read(out).is_ok_and(|got| got == want) {
                self.false_successes += 1;
                self.note(format!(
                    "{who} exited 0 without the image at {}: {}",
                    out.display(),
                    tail(log)
                ));
            }
        } else {
            self.failures += 1;
            if status.code() == Some(101) || log.contains("panicked") {
                self.rerun_failures += 1;
                self.note(format!("{who} panicked: {}", tail(log)));
            }
        }
    }

    fn watched(&mut self, seen: Option<bool>, out: &Path) {
        if seen == Some(false) {
            self.wrong_images += 1;
            self.note(format!(
                "a file other than the source appeared at {}",
                out.display()
            ));
        }
    }

    fn rss(&mut self, pid: u32) {
        if let Some(peak) = peak_rss(pid) {
            self.peak_rss = self.peak_rss.max(peak);
        }
    }

    fn bad(&self) -> u64 {
        self.wrong_images + self.false_successes + self.rerun_failures
    }
}

/// The soak's settings and scratch space.
struct Soak {
    cbt: PathBuf,
    dir: PathBuf,
    mib: u64,
    bwlimit: String,
    /// Milliseconds from start within which kills land.
    kill_window: u64,
    rng_seed: u64,
    draws: u64,
}

impl Soak {
    fn rand(&mut self) -> u64 {
        self.draws += 1;
        splitmix64(self.rng_seed, self.draws)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rand() % (hi - lo + 1)
    }

    fn cmd(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut c = Command::new(&self.cbt);
        c.arg("--cache").arg(self.dir.join("cache"));
        for a in args {
            c.arg(a);
        }
        c
    }

    fn spawn(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<Proc> {
        Proc::start(self.cmd(args))
    }

    fn daemon(&self, data: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<(Proc, String)> {
        fs::create_dir_all(data)?;
        let mut c = self.cmd(&[&"serve", &"--listen", &"127.0.0.1:0", &"--data", &data]);
        for a in extra {
            c.arg(a);
        }
        let mut p = Proc::start(c)?;
        let addr = p.addr()?;
        Ok((p, addr))
    }

    fn one_shot(&self, out: &Path) -> Result<(Proc, String)> {
        let empty = self.dir.join("empty");
        fs::create_dir_all(&empty)?;
        let mut p = self.spawn(&[&"recv", &"--listen", &"127.0.0.1:0", &out, &"--seed", &empty])?;
        let addr = p.addr()?;
        Ok((p, addr))
    }

    /// A fresh incompressible image for run `run`; its bytes.
    fn image(&self, rel: &str, run: u64) -> Result<(PathBuf, Arc<Vec<u8>>)> {
        let path = self.dir.join(rel);
        write_random_image(&path, self.mib * MIB, self.rng_seed ^ 0x5eed, run << 32)?;
        let bytes = Arc::new(fs::read(&path)?);
        Ok((path, bytes))
    }

    /// Runs a push to completion with `--json`; status, summary, stderr.
    fn push_json(
        &self,
        src: &Path,
        to: &str,
        extra: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> Result<(ExitStatus, serde_json::Value, String)> {
        // Reruns complete the image whatever the first attempt left: one
        // that published before it was killed must not be refused.
        let mut c = self.cmd(&[&"send", &src, &to, &"--json", &"--force"]);
        for a in extra {
            c.arg(a);
        }
        let (status, out, err) = Proc::start(c)?.finish()?;
        let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        Ok((status, v, err))
    }
}

/// Counts a rerun (or the legitimate run next to a fault): it must succeed
/// with exactly `want` at `out`. For a rerun that resumed after a kill,
/// adds what it sent.
fn rerun(
    st: &mut Stats,
    status: ExitStatus,
    v: &serde_json::Value,
    err: &str,
    out: &Path,
    want: &[u8],
    resumed: bool,
) {
    if !status.success() || !fs::read(out).is_ok_and(|got| got == want) {
        st.rerun_failures += 1;
        st.note(format!(
            "rerun to {} failed ({status}): {}",
            out.display(),
            tail(err)
        ));
        return;
    }
    if !resumed {
        return;
    }
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    st.resumes += 1;
    st.resent_bytes += n("blocks_sent") * BLOCK;
    st.resume_image_bytes += (n("blocks_total") - n("blocks_zero").min(n("blocks_total"))) * BLOCK;
}

fn kill_sender(s: &mut Soak, st: &mut Stats, d: &Proc, addr: &str, data: &Path, run: u64) -> Result<()> {
    let (src, want) = s.image("src.img", run)?;
    let name = format!("ks{run}.img");
    let out = data.join(&name);
    let to = format!("{addr}/{name}");
    let watch = Watch::start(&out, &want);
    let mut sender = s.spawn(&[&"send", &src, &to, &"--bwlimit", &s.bwlimit])?;
    std::thread::sleep(Duration::from_millis(s.range(0, s.kill_window)));
    let status = sender.kill9()?;
    let resumed = !status.success();
    st.exit("the sender", status, &out, &want, &sender.log());
    std::thread::sleep(Duration::from_millis(50));
    st.watched(watch.stop(), &out);
    let (status, v, err) = s.push_json(&src, &to, &[&"--bwlimit", &s.bwlimit])?;
    rerun(st, status, &v, &err, &out, &want, resumed);
    st.rss(d.pid());
    let _ = fs::remove_file(&out);
    Ok(())
}

fn kill_receiver(s: &mut Soak, st: &mut Stats, run: u64) -> Result<()> {
    let (src, want) = s.image("src.img", run)?;
    let out = s.dir.join(format!("oneshot/kr{run}.img"));
    fs::create_dir_all(s.dir.join("oneshot"))?;
    let watch = Watch::start(&out, &want);
    let (mut recv, addr) = s.one_shot(&out)?;
    let sender = s.spawn(&[&"send", &src, &addr, &"--bwlimit", &s.bwlimit])?;
    std::thread::sleep(Duration::from_millis(s.range(0, s.kill_window)));
    st.rss(recv.pid());
    let status = recv.kill9()?;
    st.exit("the receiver", status, &out, &want, &recv.log());
    let (status, _, err) = sender.finish()?;
    let resumed = !status.success();
    st.exit("the sender", status, &out, &want, &err);
    st.watched(watch.stop(), &out);
    let (recv, addr) = s.one_shot(&out)?;
    let (status, v, err) = s.push_json(&src, &addr, &[&"--bwlimit", &s.bwlimit])?;
    let (rstatus, _, rerr) = recv.finish()?;
    if !rstatus.success() {
        st.rerun_failures += 1;
        st.note(format!(
            "the rerun's receiver failed ({rstatus}): {}",
            tail(&rerr)
        ));
    }
    rerun(st, status, &v, &err, &out, &want, resumed);
    let _ = fs::remove_file(&out);
    Ok(())
}

fn kill_daemon(s: &mut Soak, st: &mut Stats, data: &Path, run: u64) -> Result<()> {
    let (src, want) = s.image("src.img", run)?;
    let name = format!("kd{run}.img");
    let out = data.join(&name);
    let watch = Watch::start(&out, &want);
    let (mut d, addr) = s.daemon(data, &[])?;
    let to = format!("{addr}/{name}");
    let sender = s.spawn(&[&"send", &src, &to, &"--bwlimit", &s.bwlimit])?;
    std::thread::sleep(Duration::from_millis(s.range(0, s.kill_window)));
    st.rss(d.pid());
    let status = d.kill9()?;
    st.exit("the daemon", status, &out, &want, &d.log());
    let (status, _, err) = sender.finish()?;
    let resumed = !status.success();
    st.exit("the sender", status, &out, &want, &err);
    st.watched(watch.stop(), &out);
    let (d, addr) = s.daemon(data, &[])?;
    let (status, v, err) = s.push_json(&src, &format!("{addr}/{name}"), &[&"--bwlimit", &s.bwlimit])?;
    rerun(st, status, &v, &err, &out, &want, resumed);
    st.rss(d.pid());
    let _ = fs::remove_file(&out);
    Ok(())
}

fn takeover(s: &mut Soak, st: &mut Stats, d: &Proc, addr: &str, data: &Path, run: u64) -> Result<()> {
    let (src, want) = s.image("src.img", run)?;
    let name = format!("to{run}.img");
    let out = data.join(&name);
    let partial = data.join(format!(".{name}.cbt-partial"));
    let to = format!("{addr}/{name}");
    let mut sender = s.spawn(&[&"send", &src, &to, &"--bwlimit", &s.bwlimit])?;
    let start = Instant::now();
    let min = s.range(BLOCK, s.mib * MIB / 2);
    while fs::metadata(&partial).map_or(0, |m| m.blocks() * 512) < min
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = sender.kill9()?;
    let resumed = !status.success();
    st.exit("the sender", status, &out, &want, &sender.log());
    let (status, v, err) = s.push_json(&src, &to, &[])?;
    if err.contains("another transfer") {
        st.note(format!("the rerun was refused: {}", tail(&err)));
    }
    rerun(st, status, &v, &err, &out, &want, resumed);
    st.rss(d.pid());
    let _ = fs::remove_file(&out);
    Ok(())
}

/// A published output must hold, in every block, a content that block had
/// at some moment (see `source_written_to_while_it_is_sent` in the tests),
/// and an exit 0 must come with cbt's digest of the output equal to the
/// digest the sender reported.
fn source_written(s: &mut Soak, st: &mut Stats, d: &Proc, addr: &str, data: &Path, run: u64) -> Result<()> {
    let (src, want) = s.image("src.img", run)?;
    let name = format!("sw{run}.img");
    let out = data.join(&name);
    let to = format!("{addr}/{name}");
    let blocks = want.len() as u64 / BLOCK;
    let delay = s.range(0, s.kill_window);
    let seed = s.rand();
    let sender = s.spawn(&[&"send", &src, &to, &"--bwlimit", &s.bwlimit, &"--json"])?;
    let writer = {
        let src = src.clone();
        std::thread::spawn(move || -> std::io::Result<Vec<(u64, Vec<u8>)>> {
            std::thread::sleep(Duration::from_millis(delay));
            let f = fs::OpenOptions::new().write(true).open(&src)?;
            let mut written = Vec::new();
            for i in 0..24 {
                let off = splitmix64(seed, 2 * i) % blocks * BLOCK;
                let data = random_bytes(BLOCK as usize, seed, 1000 + i * 512);
                f.write_all_at(&data, off)?;
                written.push((off, data));
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(written)
        })
    };
    let written = writer.join().map_err(|_| "the writer thread panicked")??;
    let (status, stdout, err) = sender.finish()?;
    let mut versions: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (off, d) in written {
        versions.entry(off).or_default().push(d);
    }
    let consistent = |path: &Path| -> bool {
        let Ok(got) = fs::read(path) else { return false };
        got.len() == want.len()
            && got.chunks(BLOCK as usize).enumerate().all(|(i, b)| {
                let off = i as u64 * BLOCK;
                b == &want[off as usize..off as usize + b.len()]
                    || versions.get(&off).is_some_and(|v| v.iter().any(|x| x == b))
            })
    };
    if out.exists() && !consistent(&out) {
        st.wrong_images += 1;
        st.note(format!("{} holds blocks the source never had", out.display()));
    }
    if status.success() {
        let reported = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| v.get("image_digest")?.as_str().map(str::to_string))
            .unwrap_or_default();
        if !consistent(&out) || digest_of(s, &out)? != reported {
            st.false_successes += 1;
            st.note(format!(
                "exit 0 but {} is not the image the sender hashed",
                out.display()
            ));
        }
    } else {
        st.failures += 1;
        if status.code() == Some(101) {
            st.rerun_failures += 1;
            st.note(format!("the sender panicked: {}", tail(&err)));
        }
    }
    let final_src = fs::read(&src)?;
    let (status, v, err) = s.push_json(&src, &to, &[])?;
    rerun(st, status, &v, &err, &out, &final_src, false);
    st.rss(d.pid());
    let _ = fs::remove_file(&out);
    Ok(())
}

/// cbt's image digest of `path`, from `cbt copy --json`.
fn digest_of(s: &Soak, path: &Path) -> Result<String> {
    let tmp = s.dir.join("digest.raw");
    let empty = s.dir.join("empty");
    fs::create_dir_all(&empty)?;
    let _ = fs::remove_file(&tmp);
    let mut c = Command::new(&s.cbt);
    c.args(["--no-cache", "copy"])
        .arg(path)
        .arg(&tmp)
        .arg("--seed")
        .arg(&empty)
        .arg("--json");
    let (status, out, err) = Proc::start(c)?.finish()?;
    let _ = fs::remove_file(&tmp);
    if !status.success() {
        return Err(format!("cbt copy {}: {}", path.display(), tail(&err)).into());
    }
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.get("image_digest")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_string())
}

fn full_disk(
    s: &mut Soak,
    st: &mut Stats,
    d: &Proc,
    addr: &str,
    disk: &Path,
    big: &Path,
    run: u64,
) -> Result<()> {
    let (status, _, err) = Proc::start(s.cmd(&[&"send", &big, &format!("{addr}/big.img")]))?.finish()?;
    let out = disk.join("big.img");
    st.exit("the push of 40 MiB into 16 MiB", status, &out, &[], &err);
    if !status.success() && !err.to_lowercase().contains("space") {
        st.note(format!(
            "the error does not mention the space problem: {}",
            tail(&err)
        ));
    }
    if out.exists() {
        st.wrong_images += 1;
        st.note("big.img exists on the 16 MiB disk".into());
        let _ = fs::remove_file(&out);
    }
    let (src, want) = s.image("small.img", run)?;
    let name = format!("small{run}.img");
    let (status, v, err) = s.push_json(&src, &format!("{addr}/{name}"), &[])?;
    let small = disk.join(&name);
    rerun(st, status, &v, &err, &small, &want, false);
    st.rss(d.pid());
    let _ = fs::remove_file(&small);
    Ok(())
}

fn planted_link(s: &mut Soak, st: &mut Stats, d: &Proc, addr: &str, data: &Path, run: u64) -> Result<()> {
    let victim = s.dir.join("victim.txt");
    let precious = b"precious: never to be written by cbt\n";
    fs::write(&victim, precious)?;
    let name = format!("evil{run}");
    let partial = data.join(format!(".{name}.cbt-partial"));
    let manifest = data.join(format!(".{name}.cbt-manifest"));
    let links: Vec<&Path> = match run % 3 {
        0 => vec![&partial],
        1 => vec![&manifest],
        _ => vec![&partial, &manifest],
    };
    for l in &links {
        std::os::unix::fs::symlink(&victim, l)?;
    }
    let (src, want) = s.image("src.img", run)?;
    let out = data.join(&name);
    let (status, _, err) = Proc::start(s.cmd(&[&"send", &src, &format!("{addr}/{name}")]))?.finish()?;
    // A link in the way must stop the push: an exit 0 is a false success
    // even if the image arrived.
    if status.success() {
        st.false_successes += 1;
        st.note(format!("the push to {name} succeeded with links planted"));
    } else {
        st.exit("the push", status, &out, &want, &err);
    }
    if fs::read(&victim)? != precious || out.exists() {
        st.wrong_images += 1;
        st.note(format!("{name}: the victim was written or {name} was created"));
    }
    for l in &links {
        let _ = fs::remove_file(l);
    }
    let _ = fs::remove_file(&out);
    let good = data.join(format!("good{run}.img"));
    let (status, v, err) = s.push_json(&src, &format!("{addr}/good{run}.img"), &[])?;
    rerun(st, status, &v, &err, &good, &want, false);
    st.rss(d.pid());
    let _ = fs::remove_file(&good);
    Ok(())
}

fn silent_flood(
    s: &mut Soak,
    st: &mut Stats,
    d: &Proc,
    addr: &str,
    data: &Path,
    secret: &Path,
    run: u64,
) -> Result<()> {
    let silent: Vec<TcpStream> = (0..SILENT)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    if silent.len() < SILENT {
        st.note(format!(
            "only {} of {SILENT} silent connections opened",
            silent.len()
        ));
    }
    let (src, want) = s.image("src.img", run)?;
    let name = format!("fl{run}.img");
    let start = Instant::now();
    let (status, v, err) = s.push_json(&src, &format!("{addr}/{name}"), &[&"--secret-file", &secret])?;
    let took = start.elapsed();
    let out = data.join(&name);
    rerun(st, status, &v, &err, &out, &want, false);
    if status.success() && took > Duration::from_secs(10) {
        st.rerun_failures += 1;
        st.note(format!(
            "the push took {took:?} behind {SILENT} silent connections"
        ));
    }
    drop(silent);
    st.rss(d.pid());
    let _ = fs::remove_file(&out);
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(opts: &Opts) -> Result<bool> {
    let runs = if opts.quick { 40 } else { opts.runs };
    let mib = if opts.quick { 2 } else { opts.image_mib.max(1) };
    if !opts.cbt.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p cbt-cli -p cbt-benches`",
            opts.cbt.display()
        )
        .into());
    }
    let cbt = fs::canonicalize(&opts.cbt)?;
    let _tmp;
    let dir = match &opts.dir {
        Some(d) => {
            fs::create_dir_all(d)?;
            fs::canonicalize(d)?
        }
        None => {
            _tmp = tempfile::Builder::new().prefix("cbt-soak-").tempdir()?;
            _tmp.path().to_path_buf()
        }
    };
    // Rate and window: a transfer lasts about mib / rate seconds; kills
    // land anywhere from the start to a little past the end.
    let rate = opts
        .bwlimit
        .trim_end_matches(['M', 'm'])
        .parse::<u64>()
        .unwrap_or(4)
        .max(1);
    let mut s = Soak {
        cbt,
        dir: dir.clone(),
        mib,
        bwlimit: opts.bwlimit.clone(),
        kill_window: mib * 1000 / rate + 300,
        rng_seed: opts.seed,
        draws: 0,
    };
    let root = is_root();
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| root || *k != Kind::FullDisk)
        .filter(|k| opts.only.is_empty() || opts.only.contains(k))
        .collect();
    let mut stats: HashMap<Kind, Stats> = HashMap::new();

    let data = dir.join("data");
    let (daemon, addr) = s.daemon(&data, &[])?;
    let kd_data = dir.join("kd-data");
    let secret = dir.join("secret");
    fs::write(&secret, "a soak secret\n")?;
    let flood_data = dir.join("flood-data");
    let (flood, flood_addr) = s.daemon(
        &flood_data,
        &[&"--secret-file", &secret, &"--max-connections", &"2"],
    )?;
    let full = if root {
        let disk = Tmpfs::mount(dir.join("full"), 16)?;
        let big = dir.join("big.img");
        write_random_image(&big, 40 * MIB, opts.seed ^ 0xb16, 0)?;
        let (d, a) = s.daemon(&disk.dir, &[])?;
        // The daemon is declared after the mount, so it is dropped first.
        Some((disk, big, d, a))
    } else {
        eprintln!("soak: not root: the full-disk kind is left out (it mounts a tmpfs)");
        None
    };

    let started = Instant::now();
    for i in 0..runs {
        let kind = kinds[i % kinds.len()];
        let run = i as u64;
        let st = stats.entry(kind).or_default();
        st.runs += 1;
        eprintln!(
            "[{:>4}/{runs}] {:>6.1} s  {}",
            i + 1,
            started.elapsed().as_secs_f64(),
            kind.label()
        );
        let r = match kind {
            Kind::KillSender => kill_sender(&mut s, st, &daemon, &addr, &data, run),
            Kind::KillReceiver => kill_receiver(&mut s, st, run),
            Kind::KillDaemon => kill_daemon(&mut s, st, &kd_data, run),
            Kind::Takeover => takeover(&mut s, st, &daemon, &addr, &data, run),
            Kind::SourceWritten => source_written(&mut s, st, &daemon, &addr, &data, run),
            Kind::FullDisk => match &full {
                Some((disk, big, d, a)) => full_disk(&mut s, st, d, a, &disk.dir, big, run),
                None => Ok(()),
            },
            Kind::PlantedLink => planted_link(&mut s, st, &daemon, &addr, &data, run),
            Kind::SilentFlood => silent_flood(&mut s, st, &flood, &flood_addr, &flood_data, &secret, run),
            Kind::SeedRewritten => race::seed_rewritten(&mut s, st, run),
        };
        if let Err(e) = r {
            st.rerun_failures += 1;
            st.note(format!("run {run}: {e}"));
        }
    }
    let elapsed = started.elapsed();
    drop(full);
    drop(flood);
    drop(daemon);

    let mut md = String::new();
    writeln!(
        md,
        "{runs} runs of {mib} MiB incompressible images (sender `--bwlimit {}` while faulted), seed {}, {:.0} s.\n",
        opts.bwlimit,
        opts.seed,
        elapsed.as_secs_f64()
    )?;
    writeln!(
        md,
        "| fault | runs | failures (non-zero exits, expected) | wrong images | false successes | rerun failures | sent by resuming reruns | peak RSS of the daemon/receiver |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut total = Stats::default();
    for k in &kinds {
        let st = stats.get(k).cloned().unwrap_or_default();
        let resent = if st.resume_image_bytes > 0 {
            format!(
                "{:.1} MiB of {:.1} MiB ({:.0}%)",
                st.resent_bytes as f64 / MIB as f64,
                st.resume_image_bytes as f64 / MIB as f64,
                st.resent_bytes as f64 * 100.0 / st.resume_image_bytes as f64
            )
        } else {
            "—".into()
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
            k.label(),
            st.runs,
            st.failures,
            st.wrong_images,
            st.false_successes,
            st.rerun_failures,
            resent,
            st.peak_rss as f64 / MIB as f64
        )?;
        total.runs += st.runs;
        total.failures += st.failures;
        total.wrong_images += st.wrong_images;
        total.false_successes += st.false_successes;
        total.rerun_failures += st.rerun_failures;
        total
            .notes
            .extend(st.notes.iter().map(|n| format!("{}: {n}", k.label())));
    }
    writeln!(
        md,
        "| **all** | {} | {} | {} | {} | {} | | |",
        total.runs, total.failures, total.wrong_images, total.false_successes, total.rerun_failures
    )?;
    if !root {
        writeln!(md, "\nThe full-disk kind did not run (not root).")?;
    }
    if !total.notes.is_empty() {
        writeln!(md, "\nNotes:\n")?;
        for n in &total.notes {
            writeln!(md, "- {n}")?;
        }
    }
    print!("{md}");
    Ok(total.bad() == 0)
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: wrong images, false successes or failed reruns (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
