//! The transfer runners: one case (a target image on host A, seed images on
//! host B) sent by a plain full copy, by rsync in its modes, and by cbt with
//! a warm and with a cold digest index on the receiver.
//!
//! Every run starts the receiving side first and waits until it listens,
//! then starts the clock and the sender; it stops the clock when both sides
//! have exited. Bytes on the wire are the link counters' delta over that
//! span. Each side runs under `/usr/bin/time` for its CPU time and peak RSS.
//! Every output is checked against the target (byte comparison, or
//! `qemu-img compare` when cbt wrote a raw copy of a qcow2 target).
//!
//! Set-up that a real destination would have done beforehand is done
//! untimed and its duration recorded apart: rsync's basis copy, and the
//! warm-up of cbt's digest cache (`cbt --cache DIR index SEED...` on B, as
//! the daemon `cbt serve` keeps one for its seeds).
//!
//! The disk figures of eq. (4) are measured here too: [`dd_read`] (v_d, a
//! read) and [`dd_copy`] (v_d,copy, a durable local copy).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::link::{ports, Link};
use super::proc::{run, Finished, Side, Usage};

/// Where a case's data lives and which programs to run.
pub struct Env<'a> {
    /// The link.
    pub link: &'a Link,
    /// This harness binary (for its helpers).
    pub exe: PathBuf,
    /// The cbt binary.
    pub cbt: PathBuf,
    /// Scratch directory for time files and configs.
    pub tmp: PathBuf,
    /// Root of the destination directories (host B's disk).
    pub dst_root: PathBuf,
}

/// One benchmark case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// Short name for tables.
    pub name: String,
    /// "synthetic" or "debian".
    pub group: String,
    /// The image sent (on host A).
    pub target: PathBuf,
    /// What host B already holds.
    pub seeds: Vec<PathBuf>,
    /// The controlled ΔD of a synthetic pair.
    pub delta_nominal: Option<f64>,
    /// Files that must sit next to a file-level copy of the target (a qcow2 backing file).
    pub companions: Vec<PathBuf>,
    /// What the case shows.
    pub note: String,
}

/// What `cbt estimate` said about a case.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Virtual size of the target.
    pub image_bytes: u64,
    /// Bytes of non-zero blocks no seed holds (must cross the link).
    pub bytes_missing: u64,
    /// bytes_missing / image_bytes: the ΔD of eq. (4).
    pub delta_d: f64,
    /// The single seed holding the most of the target (rsync's basis).
    pub best_candidate: Option<PathBuf>,
    /// Its found fraction.
    pub best_found_fraction: f64,
}

/// The untimed warm-up of cbt's digest cache on B before a [`CbtIndex::Warm`] run.
#[derive(Debug, Clone, Serialize)]
pub struct IndexWarmup {
    /// The command run (in B).
    pub command: String,
    /// Its wall time, s.
    pub seconds: f64,
    /// Its CPU time and peak RSS.
    pub usage: Option<Usage>,
    /// Image views indexed (`cbt index --json`: `images`).
    pub images: u64,
    /// Of those, taken from the cache (0: the cache directory is fresh).
    pub from_cache: u64,
    /// Bytes read to hash them.
    pub bytes_hashed: u64,
}

/// One transfer.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// "full copy", "rsync --inplace", "rsync", "rsync -z ...", "cbt",
    /// "cbt (cold index)".
    pub tool: String,
    /// Wall time, receiver listening to both sides exited.
    pub wall_s: f64,
    /// Bytes that crossed the link, both directions.
    pub wire_bytes: u64,
    /// Sender's usage.
    pub sender: Option<Usage>,
    /// Receiver's usage.
    pub receiver: Option<Usage>,
    /// Image size / wall, MiB/s.
    pub observed_mib_s: f64,
    /// Wire bytes / wall, MiB/s.
    pub real_mib_s: f64,
    /// Output equal to the target.
    pub verified: bool,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// The tool's own summary (rsync `--stats` lines, cbt's JSON), for reference.
    pub tool_report: Option<String>,
    /// rsync only: seconds the untimed set-up took to copy the basis to the
    /// target path (`cp --sparse=always`), which a user would also pay.
    pub basis_copy_s: Option<f64>,
    /// Warm cbt only: the untimed warm-up of the receiver's digest cache.
    pub index_warmup: Option<IndexWarmup>,
    /// Warm cbt only: whether the digest cache was left untouched by the
    /// timed run (no cache file written or rewritten), i.e. the receiver
    /// took every seed's digests from it instead of hashing the seed.
    pub index_reused: Option<bool>,
}

impl RunResult {
    /// Seconds of untimed set-up before the run (basis copy or index
    /// warm-up), if there was any.
    pub fn setup_s(&self) -> Option<f64> {
        self.basis_copy_s
            .or(self.index_warmup.as_ref().map(|w| w.seconds))
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    let _ = fs::remove_file(to);
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
}

/// Host B's directories for a case: `seeds/` (links to the seed images),
/// `out/` (where outputs land; holds the companions) and `cbt-cache/` (the
/// receiver's digest cache for the warm cbt run, made fresh per case).
pub struct CaseDirs {
    /// Seed directory.
    pub seeds: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// cbt's digest cache directory on B.
    pub cache: PathBuf,
    /// The seed files, as host B sees them.
    pub seed_files: Vec<PathBuf>,
}

/// Prepares host B's directories for `case`.
pub fn prepare(env: &Env, case: &Case) -> io::Result<CaseDirs> {
    let root = env.dst_root.join(slug(&case.name));
    let _ = fs::remove_dir_all(&root);
    let seeds = root.join("seeds");
    let out = root.join("out");
    let cache = root.join("cbt-cache");
    fs::create_dir_all(&seeds)?;
    fs::create_dir_all(&out)?;
    let mut seed_files = Vec::new();
    for s in &case.seeds {
        let to = seeds.join(
            s.file_name()
                .ok_or_else(|| io::Error::other("seed without a name"))?,
        );
        link_or_copy(s, &to)?;
        seed_files.push(to);
    }
    for c in &case.companions {
        link_or_copy(
            c,
            &out.join(
                c.file_name()
                    .ok_or_else(|| io::Error::other("companion without a name"))?,
            ),
        )?;
    }
    Ok(CaseDirs {
        seeds,
        out,
        cache,
        seed_files,
    })
}

/// Runs `cbt estimate` for the case (not timed, not over the link).
pub fn estimate(env: &Env, case: &Case, dirs: &CaseDirs) -> io::Result<Estimate> {
    let mut cmd = Command::new(&env.cbt);
    cmd.arg("estimate")
        .arg(&case.target)
        .arg("--json")
        .arg("--no-cache")
        .arg("--against");
    cmd.args(&dirs.seed_files);
    let out = run(&mut cmd)?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
    let image_bytes = v["image_bytes"]
        .as_u64()
        .ok_or_else(|| io::Error::other("estimate: no image_bytes"))?;
    let bytes_missing = v["union"]["bytes_missing"]
        .as_u64()
        .ok_or_else(|| io::Error::other("estimate: no union.bytes_missing"))?;
    let mut best: Option<(f64, PathBuf)> = None;
    for c in v["candidates"].as_array().into_iter().flatten() {
        let f = c["found_fraction"].as_f64().unwrap_or(0.0);
        if let Some(p) = c["path"].as_str() {
            if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
                best = Some((f, PathBuf::from(p)));
            }
        }
    }
    Ok(Estimate {
        image_bytes,
        bytes_missing,
        delta_d: bytes_missing as f64 / image_bytes.max(1) as f64,
        best_found_fraction: best.as_ref().map(|b| b.0).unwrap_or(0.0),
        best_candidate: best.map(|b| b.1),
    })
}

fn is_qcow2(p: &Path) -> bool {
    let mut m = [0u8; 4];
    File::open(p).and_then(|mut f| f.read_exact(&mut m)).is_ok() && &m == b"QFI\xfb"
}

/// Byte comparison of two files.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether `out` holds the target's content: the same bytes, or (a raw
/// output of a qcow2 target) the same virtual disk by `qemu-img compare`.
pub fn verify(out: &Path, target: &Path) -> io::Result<bool> {
    if is_qcow2(target) && !is_qcow2(out) {
        let st = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(out)
            .arg(target)
            .status()?;
        return Ok(st.success());
    }
    same_bytes(out, target)
}

fn time_file(env: &Env, name: &str) -> PathBuf {
    env.tmp.join(format!("{name}.time"))
}

/// Runs one transfer: `receiver` (waits for `ready` on its stderr), then
/// `sender`; returns both results, the wall time and the wire bytes.
fn transfer(
    env: &Env,
    receiver: (&str, Vec<String>),
    ready: &str,
    sender: (&str, Vec<String>),
) -> io::Result<(Finished, Finished, Duration, u64)> {
    let link = env.link;
    let mut rx = Side::spawn(&link.in_b(), &time_file(env, "receiver"), receiver.0, &receiver.1)?;
    if let Err(e) = rx.wait_for_line(ready, Duration::from_secs(30)) {
        rx.kill();
        return Err(e);
    }
    let wire0 = link.wire_bytes()?;
    let t0 = Instant::now();
    let tx = Side::spawn(&link.in_a(), &time_file(env, "sender"), sender.0, &sender.1)?;
    let txf = tx.wait()?;
    // A sender that failed may leave the receiver waiting: give it a moment.
    let rxf = rx.wait()?;
    let end = txf.ended.max(rxf.ended);
    let wall = end.duration_since(t0);
    let wire = link.wire_bytes()?.saturating_sub(wire0);
    Ok((txf, rxf, wall, wire))
}

fn result(
    tool: &str,
    image_bytes: u64,
    r: io::Result<(Finished, Finished, Duration, u64)>,
    out: &Path,
    target: &Path,
    report: impl Fn(&Finished, &Finished) -> Option<String>,
) -> RunResult {
    let mut res = RunResult {
        tool: tool.to_string(),
        wall_s: f64::NAN,
        wire_bytes: 0,
        sender: None,
        receiver: None,
        observed_mib_s: f64::NAN,
        real_mib_s: f64::NAN,
        verified: false,
        error: None,
        tool_report: None,
        basis_copy_s: None,
        index_warmup: None,
        index_reused: None,
    };
    match r {
        Err(e) => res.error = Some(e.to_string()),
        Ok((tx, rx, wall, wire)) => {
            let w = wall.as_secs_f64();
            res.wall_s = w;
            res.wire_bytes = wire;
            res.sender = tx.usage;
            res.receiver = rx.usage;
            res.observed_mib_s = image_bytes as f64 / w / (1 << 20) as f64;
            res.real_mib_s = wire as f64 / w / (1 << 20) as f64;
            res.tool_report = report(&tx, &rx);
            if let Err(e) = tx
                .check(&format!("{tool} sender"))
                .and(rx.check(&format!("{tool} receiver")))
            {
                res.error = Some(e.to_string());
            } else {
                match verify(out, target) {
                    Ok(true) => res.verified = true,
                    Ok(false) => {
                        res.error = Some(format!("output {} differs from the target", out.display()))
                    }
                    Err(e) => res.error = Some(format!("cannot verify {}: {e}", out.display())),
                }
            }
        }
    }
    res
}

fn out_path(case: &Case, dirs: &CaseDirs) -> PathBuf {
    dirs.out.join(case.target.file_name().unwrap_or_default())
}

/// A plain full copy: `cat` into a TCP connection, `cat` out of it.
pub fn full_copy(env: &Env, case: &Case, dirs: &CaseDirs, image_bytes: u64) -> RunResult {
    let out = out_path(case, dirs);
    let exe = env.exe.display().to_string();
    let link = env.link;
    let r = transfer(
        env,
        (
            &exe,
            vec![
                "helper".into(),
                "inetd".into(),
                "--listen".into(),
                link.listen_addr(ports::COPY),
                "--stdout".into(),
                out.display().to_string(),
                "--".into(),
                "cat".into(),
            ],
        ),
        "listening",
        (
            &exe,
            vec![
                "helper".into(),
                "connect".into(),
                "--to".into(),
                link.dial_addr(ports::COPY),
                "--stdin".into(),
                case.target.display().to_string(),
                "--".into(),
                "cat".into(),
            ],
        ),
    );
    let res = result("full copy", image_bytes, r, &out, &case.target, |_, _| None);
    let _ = fs::remove_file(&out);
    res
}

/// Measures the link's rate with a full copy of `bytes` zero bytes; returns
/// (wall, wire bytes).
pub fn measure_rate(env: &Env, bytes: u64) -> io::Result<(Duration, u64)> {
    let exe = env.exe.display().to_string();
    let link = env.link;
    let (tx, rx, wall, wire) = transfer(
        env,
        (
            &exe,
            vec![
                "helper".into(),
                "inetd".into(),
                "--listen".into(),
                link.listen_addr(ports::COPY),
                "--stdout".into(),
                "/dev/null".into(),
                "--".into(),
                "cat".into(),
            ],
        ),
        "listening",
        (
            &exe,
            vec![
                "helper".into(),
                "connect".into(),
                "--to".into(),
                link.dial_addr(ports::COPY),
                "--".into(),
                "head".into(),
                "-c".into(),
                bytes.to_string(),
                "/dev/zero".into(),
            ],
        ),
    )?;
    tx.check("rate probe sender")?;
    rx.check("rate probe receiver")?;
    Ok((wall, wire))
}

/// Measures `count` application-level round trips through the relay (ms).
pub fn measure_rtt(env: &Env, count: usize) -> io::Result<Vec<f64>> {
    let exe = env.exe.display().to_string();
    let link = env.link;
    let (tx, rx, _, _) = transfer(
        env,
        (
            &exe,
            vec![
                "helper".into(),
                "echo".into(),
                "--listen".into(),
                link.listen_addr(ports::ECHO),
            ],
        ),
        "listening",
        (
            &exe,
            vec![
                "helper".into(),
                "rtt-probe".into(),
                "--to".into(),
                link.dial_addr(ports::ECHO),
                "--count".into(),
                count.to_string(),
            ],
        ),
    )?;
    tx.check("rtt probe")?;
    rx.check("echo server")?;
    serde_json::from_str(tx.stdout.trim()).map_err(io::Error::other)
}

/// rsync's mode in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsyncMode {
    /// `--inplace`.
    pub inplace: bool,
    /// `-z`.
    pub compress: bool,
}

impl RsyncMode {
    /// The table label.
    pub fn label(&self) -> String {
        let mut s = String::from("rsync");
        if self.inplace {
            s.push_str(" --inplace");
        }
        if self.compress {
            s.push_str(" -z");
        }
        s
    }
}

/// rsync through a daemon (in inetd mode, one client) with
/// `--no-whole-file --stats -I`, after copying `basis` to the target path.
pub fn rsync(
    env: &Env,
    case: &Case,
    dirs: &CaseDirs,
    image_bytes: u64,
    basis: Option<&Path>,
    mode: RsyncMode,
) -> RunResult {
    let out = out_path(case, dirs);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = fs::remove_file(&out);
    let mut basis_copy_s = None;
    if let Some(b) = basis {
        // The basis copy is set-up, not part of the timed transfer.
        let t = Instant::now();
        if let Err(e) = run(Command::new("cp").arg("--sparse=always").arg(b).arg(&out)) {
            return result(&mode.label(), image_bytes, Err(e), &out, &case.target, |_, _| {
                None
            });
        }
        basis_copy_s = Some(t.elapsed().as_secs_f64());
    }
    let conf = env.tmp.join("rsyncd.conf");
    let conf_text = format!(
        "use chroot = no\nlog file = {}\n[bench]\npath = {}\nread only = false\nuid = root\ngid = root\n",
        env.tmp.join("rsyncd.log").display(),
        dirs.out.display()
    );
    if let Err(e) = fs::write(&conf, conf_text) {
        return result(&mode.label(), image_bytes, Err(e), &out, &case.target, |_, _| {
            None
        });
    }
    let exe = env.exe.display().to_string();
    let link = env.link;
    let mut client: Vec<String> = vec!["--no-whole-file".into(), "--stats".into(), "-I".into()];
    if mode.inplace {
        client.push("--inplace".into());
    }
    if mode.compress {
        client.push("-z".into());
    }
    client.push(case.target.display().to_string());
    client.push(format!("rsync://{}/bench/{name}", link.dial_addr(ports::RSYNC)));
    let r = transfer(
        env,
        (
            &exe,
            vec![
                "helper".into(),
                "inetd".into(),
                "--listen".into(),
                link.listen_addr(ports::RSYNC),
                "--".into(),
                "rsync".into(),
                "--daemon".into(),
                format!("--config={}", conf.display()),
            ],
        ),
        "listening",
        ("rsync", client),
    );
    let mut res = result(&mode.label(), image_bytes, r, &out, &case.target, |tx, _| {
        let keep = [
            "Literal data",
            "Matched data",
            "Total bytes sent",
            "Total bytes received",
        ];
        Some(
            tx.stdout
                .lines()
                .filter(|l| keep.iter().any(|k| l.starts_with(k)))
                .collect::<Vec<_>>()
                .join("; "),
        )
    });
    res.basis_copy_s = basis_copy_s;
    let _ = fs::remove_file(&out);
    res
}

/// How the cbt receiver gets the digests of its seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbtIndex {
    /// From a digest cache warmed untimed before the run, as the daemon
    /// (`cbt serve`) keeps one for its seeds: `cbt --cache DIR recv ...`.
    Warm,
    /// Hashed inside the timed run: `cbt recv ... --no-cache`.
    Cold,
    /// Warm, and the receiver updates a copy of the basis in place
    /// (`cbt recv --inplace`), as `rsync --inplace` does: the copy is
    /// untimed set-up, like rsync's.
    InPlace,
}

impl CbtIndex {
    /// The table label.
    pub fn label(self) -> &'static str {
        match self {
            CbtIndex::Warm => "cbt",
            CbtIndex::Cold => "cbt (cold index)",
            CbtIndex::InPlace => "cbt --inplace",
        }
    }
}

/// Name, length and mtime of every file in `dir`: a fingerprint that shows
/// whether a run wrote to the cache.
fn dir_state(dir: &Path) -> io::Result<BTreeMap<String, (u64, SystemTime)>> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            (md.len(), md.modified()?),
        );
    }
    Ok(m)
}

/// Builds the digest cache of the case's seeds in `dirs.cache` on B
/// (`cbt --cache DIR index --json SEED...`), untimed as far as the transfer
/// is concerned.
fn warm_index(env: &Env, dirs: &CaseDirs) -> io::Result<IndexWarmup> {
    let _ = fs::remove_dir_all(&dirs.cache);
    fs::create_dir_all(&dirs.cache)?;
    let cbt = env.cbt.display().to_string();
    let mut args: Vec<String> = vec![
        "--cache".into(),
        dirs.cache.display().to_string(),
        "index".into(),
        "--json".into(),
    ];
    args.extend(dirs.seed_files.iter().map(|p| p.display().to_string()));
    let command = format!("cbt {}", args.join(" "));
    let t = Instant::now();
    let side = Side::spawn(&env.link.in_b(), &time_file(env, "index"), &cbt, &args)?;
    let f = side.wait()?;
    let seconds = t.elapsed().as_secs_f64();
    f.check("cbt index (warm-up)")?;
    let v: serde_json::Value =
        serde_json::from_str(&f.stdout).map_err(|e| io::Error::other(format!("cbt index --json: {e}")))?;
    let num = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| io::Error::other(format!("cbt index --json: no {k}")))
    };
    Ok(IndexWarmup {
        command,
        seconds,
        usage: f.usage,
        images: num("images")?,
        from_cache: num("from_cache")?,
        bytes_hashed: num("bytes_hashed")?,
    })
}

/// `cbt recv --listen` on B with every seed, `cbt send` on A. The sender
/// always runs with `--no-cache` (it reads and hashes the image in any
/// case); the receiver takes its seeds' digests from a cache warmed untimed
/// just before ([`CbtIndex::Warm`]) or hashes them inside the timed run
/// with `--no-cache` ([`CbtIndex::Cold`]).
pub fn cbt(
    env: &Env,
    case: &Case,
    dirs: &CaseDirs,
    image_bytes: u64,
    index: CbtIndex,
    basis: Option<&Path>,
) -> RunResult {
    let tool = index.label();
    let out = dirs.out.join("cbt-output.raw");
    let _ = fs::remove_file(&out);
    let mut basis_copy_s = None;
    if index == CbtIndex::InPlace {
        // The basis copy is set-up, not part of the timed transfer.
        let Some(b) = basis else {
            let e = io::Error::other("no basis to update in place");
            return result(tool, image_bytes, Err(e), &out, &case.target, |_, _| None);
        };
        let t = Instant::now();
        if let Err(e) = run(Command::new("cp").arg("--sparse=always").arg(b).arg(&out)) {
            return result(tool, image_bytes, Err(e), &out, &case.target, |_, _| None);
        }
        basis_copy_s = Some(t.elapsed().as_secs_f64());
    }
    let link = env.link;
    let cbt = env.cbt.display().to_string();
    let mut recv: Vec<String> = Vec::new();
    let mut warmup = None;
    let mut cache_before = None;
    match index {
        CbtIndex::Warm | CbtIndex::InPlace => {
            let w = warm_index(env, dirs).and_then(|w| dir_state(&dirs.cache).map(|s| (w, s)));
            match w {
                Ok((w, state)) => {
                    warmup = Some(w);
                    cache_before = Some(state);
                }
                Err(e) => {
                    return result(tool, image_bytes, Err(e), &out, &case.target, |_, _| None);
                }
            }
            recv.extend(["--cache".into(), dirs.cache.display().to_string()]);
        }
        CbtIndex::Cold => {}
    }
    recv.push("recv".into());
    if index == CbtIndex::InPlace {
        recv.push("--inplace".into());
    }
    recv.extend([
        "--listen".into(),
        link.listen_addr(ports::CBT),
        out.display().to_string(),
        "--json".into(),
    ]);
    if index == CbtIndex::Cold {
        recv.push("--no-cache".into());
    }
    recv.push("--seed".into());
    recv.extend(dirs.seed_files.iter().map(|p| p.display().to_string()));
    let send: Vec<String> = vec![
        "send".into(),
        case.target.display().to_string(),
        link.dial_addr(ports::CBT),
        "--json".into(),
        "--no-cache".into(),
    ];
    let r = transfer(env, (&cbt, recv), "listening", (&cbt, send));
    let mut res = result(tool, image_bytes, r, &out, &case.target, |tx, _| {
        serde_json::from_str::<serde_json::Value>(&tx.stdout)
            .ok()
            .map(|v| {
                format!(
                    "blocks_sent {}, blocks_local {}, blocks_zero {}, wire_bytes_sent {}",
                    v["blocks_sent"], v["blocks_local"], v["blocks_zero"], v["wire_bytes_sent"]
                )
            })
    });
    res.index_warmup = warmup;
    res.basis_copy_s = basis_copy_s;
    res.index_reused = cache_before
        .map(|before| !before.is_empty() && dir_state(&dirs.cache).is_ok_and(|after| after == before));
    let _ = fs::remove_file(&out);
    res
}

/// Reads `path` with `dd bs=1M` (with `iflag=direct` if `direct`); returns
/// MiB/s. `direct` bypasses the page cache: a disk read.
pub fn dd_read(path: &Path, direct: bool) -> io::Result<f64> {
    let len = fs::metadata(path)?.len();
    let mut cmd = Command::new("dd");
    cmd.arg(format!("if={}", path.display()))
        .arg("of=/dev/null")
        .arg("bs=1M");
    if direct {
        cmd.arg("iflag=direct");
    }
    let t = Instant::now();
    run(&mut cmd)?;
    Ok(len as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64)
}

/// A durable local copy of `src` to `dst` on the same disk:
/// `dd if=SRC of=DST bs=1M oflag=direct conv=fsync`, the source read from
/// the page cache first (as every tool's input in the harness is); returns
/// MiB/s and removes `dst`. This is the rate at which any tool can write a
/// new image to this disk: v_d,copy.
pub fn dd_copy(src: &Path, dst: &Path) -> io::Result<f64> {
    let len = fs::metadata(src)?.len();
    dd_read(src, false)?;
    let _ = fs::remove_file(dst);
    let mut cmd = Command::new("dd");
    cmd.arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=1M", "oflag=direct", "conv=fsync"]);
    let t = Instant::now();
    let r = run(&mut cmd);
    let secs = t.elapsed().as_secs_f64();
    let _ = fs::remove_file(dst);
    r?;
    Ok(len as f64 / secs / (1 << 20) as f64)
}
