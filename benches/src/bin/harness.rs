//! End-to-end transfer benchmark: cbt against a plain full copy and rsync,
//! over an emulated link, in the style of §5.2–5.3 of the seed paper.
//!
//! ```sh
//! cargo build --release -p cbt-cli -p cbt-benches
//! sudo target/release/harness --out docs/            # full run
//! sudo target/release/harness --quick --out /tmp/q   # under 5 minutes
//! ```
//!
//! For each case (a target image on host A, seed images on host B) it runs,
//! on the same link and in one run: a full copy (`cat` over TCP); rsync
//! through an rsync daemon with `--no-whole-file --stats -I`, the best single
//! seed (by `cbt estimate`) copied to the target path first, with and
//! without `--inplace` and once with `-z`; and `cbt recv --listen` on B with
//! every seed, `cbt send` on A, twice: "cbt", the receiver with a digest
//! cache of its seeds warmed untimed just before (as the daemon keeps one),
//! and "cbt (cold index)", with `--no-cache` on both sides. It records wall
//! time, bytes on the wire (link counters), CPU time and peak RSS of each
//! side, observed bandwidth, and eq. (4) of the seed with v_n and two disk
//! rates measured in the same run: v_d (a `dd iflag=direct` read) and
//! v_d,copy (a durable local copy, `dd oflag=direct conv=fsync`). It writes
//! `bench-harness.json`, `bench-harness.md` and the plot
//! `bench-observed-bandwidth.{svg,png}` into `--out` (with a `-quick`
//! suffix in quick mode).
//!
//! Modules (under `benches/src/harness/`): `link` (namespaces, tbf, counters),
//! `relay` (the RTT relay and the small TCP helpers), `proc` (timed child
//! processes), `data` (synthetic ΔD pairs), `runners` (the transfers),
//! `report` (tables, JSON, plot). Debian images come from
//! `testdata/make-debian-images.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[path = "../harness/data.rs"]
mod data;
#[path = "../harness/link.rs"]
mod link;
#[path = "../harness/proc.rs"]
mod proc;
#[path = "../harness/relay.rs"]
mod relay;
#[path = "../harness/report.rs"]
mod report;
#[path = "../harness/runners.rs"]
mod runners;

use link::Link;
use report::{CaseResult, LinkMeasurements, Machine, Report};
use runners::{Case, CbtIndex, Env, RsyncMode};

/// Transfer benchmark: cbt vs rsync vs a full copy over an emulated link.
#[derive(Parser, Debug)]
#[command(name = "harness", version)]
struct Opts {
    /// Directory for bench-harness.{json,md} and bench-observed-bandwidth.{svg,png}.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Small images and no Debian cases (under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// Link rate (tc units: 100mbit, 1gbit).
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Round-trip time in milliseconds, added by the delay relay.
    #[arg(long, default_value_t = 20.0)]
    rtt: f64,
    /// Generated data (cached between runs).
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    /// The cbt binary [default: `cbt` next to this binary].
    #[arg(long)]
    cbt: Option<PathBuf>,
    /// Size of the synthetic images in MiB [default: 64 with --quick, else 512].
    #[arg(long)]
    size_mib: Option<u64>,
    /// ΔD values of the synthetic pairs.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.25,0.5,0.75,1")]
    deltas: Vec<f64>,
    /// Include the Debian cases in quick mode too / exclude them in a full run.
    #[arg(long)]
    debian: Option<bool>,
    /// Where testdata/make-debian-images.sh builds (or has cached) the Debian images.
    #[arg(long)]
    debian_dir: Option<PathBuf>,
    /// Run only the cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Use loopback even when root.
    #[arg(long)]
    loopback: bool,
    /// v_d for eq. (4): "disk" (dd iflag=direct) or "cache" (page cache).
    #[arg(long, default_value = "disk")]
    vd: String,
    #[command(subcommand)]
    helper: Option<Top>,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Internal helpers the harness runs inside the namespaces.
    #[command(hide = true)]
    Helper {
        #[command(subcommand)]
        cmd: Helper,
    },
}

#[derive(Subcommand, Debug)]
enum Helper {
    /// The delay relay.
    Relay {
        #[arg(long)]
        one_way_us: u64,
        /// LISTEN=UPSTREAM
        #[arg(long)]
        map: Vec<String>,
    },
    /// Accept one connection and run a command on it.
    Inetd {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        stdin: Option<String>,
        #[arg(long)]
        stdout: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Connect and run a command on the connection.
    Connect {
        #[arg(long)]
        to: String,
        #[arg(long)]
        stdin: Option<String>,
        #[arg(long)]
        stdout: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Echo one connection.
    Echo {
        #[arg(long)]
        listen: String,
    },
    /// Time round trips to an echo server.
    RttProbe {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
}

fn helper(h: Helper) -> std::io::Result<i32> {
    match h {
        Helper::Relay { one_way_us, map } => {
            let maps: Vec<(String, String)> = map
                .iter()
                .filter_map(|m| m.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect();
            relay::relay(&maps, Duration::from_micros(one_way_us)).map(|()| 0)
        }
        Helper::Inetd {
            listen,
            stdin,
            stdout,
            command,
        } => relay::inetd(&listen, &stdin, &stdout, &command),
        Helper::Connect {
            to,
            stdin,
            stdout,
            command,
        } => relay::connect(&to, &stdin, &stdout, &command),
        Helper::Echo { listen } => relay::echo(&listen).map(|()| 0),
        Helper::RttProbe { to, count } => relay::rtt_probe(&to, count).map(|()| 0),
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Some(Top::Helper { cmd }) = opts.helper {
        return match helper(cmd) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("harness helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    proc::run(std::process::Command::new(cmd).args(args))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn machine(cbt: &Path) -> Machine {
    let lscpu = proc::run(&mut std::process::Command::new("lscpu")).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
            .unwrap_or_default()
    };
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu: field(&lscpu, "Model name"),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory: field(&meminfo, "MemTotal"),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        rsync: first_line("rsync", &["--version"]),
        cbt: first_line(&cbt.display().to_string(), &["--version"]),
        source: first_line(
            "git",
            &[
                "-C",
                concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
                "describe",
                "--always",
                "--dirty",
            ],
        ),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// The Debian cases, building the images first if needed. `Err` is a note
/// saying why they are skipped.
fn debian_cases(dir: &Path) -> Result<Vec<Case>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/make-debian-images.sh");
    if !dir.join("done").exists() {
        eprintln!(
            "harness: building the Debian images with {} (cached afterwards)",
            script.display()
        );
        let st = std::process::Command::new("bash")
            .arg(&script)
            .arg(dir)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !st.success() {
            return Err(format!(
                "Debian cases skipped: {} failed ({st}); see its messages above",
                script.display()
            ));
        }
    }
    let done = fs::read_to_string(dir.join("done")).map_err(|e| format!("Debian cases skipped: {e}"))?;
    let get = |k: &str| {
        done.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let (r1, r2) = (get("r1"), get("r2"));
    let p = |n: &str| dir.join(n);
    let mut cases = vec![
        Case {
            name: format!("{r1} web ← min"),
            group: "debian".into(),
            target: p(&format!("{r1}-web.raw")),
            seeds: vec![p(&format!("{r1}-min.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "minbase plus a web-server package set, the destination holding minbase (raw ext4)".into(),
        },
        Case {
            name: format!("{r1} web in place ← min"),
            group: "debian".into(),
            target: p(&format!("{r1}-web-inplace.raw")),
            seeds: vec![p(&format!("{r1}-min.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "the web packages installed into a loop-mounted copy of minbase: an upgrade done in place, as in a running VM".into(),
        },
        Case {
            name: format!("{r1} data ← web, min"),
            group: "debian".into(),
            target: p(&format!("{r1}-data.raw")),
            seeds: vec![p(&format!("{r1}-web.raw")), p(&format!("{r1}-min.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "web plus ~300 MB of user data, a SQLite database and edited /etc files; two seeds".into(),
        },
        Case {
            name: format!("{r1} web partitioned (sector 63) ← web"),
            group: "debian".into(),
            target: p(&format!("{r1}-web-part.raw")),
            seeds: vec![p(&format!("{r1}-web.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "the same file system moved by 63 sectors (not 4 KiB-aligned) into an MBR partition".into(),
        },
        Case {
            name: format!("{r1} web.qcow2 ← min.qcow2"),
            group: "debian".into(),
            target: p(&format!("{r1}-web.qcow2")),
            seeds: vec![p(&format!("{r1}-min.qcow2"))],
            delta_nominal: None,
            companions: vec![],
            note: "qcow2 images (rsync compares the files, cbt the virtual disks)".into(),
        },
        Case {
            name: format!("{r1} overlay web-inplace-on-min.qcow2 ← min.qcow2"),
            group: "debian".into(),
            target: p(&format!("{r1}-web-inplace-on-min.qcow2")),
            seeds: vec![p(&format!("{r1}-min.qcow2"))],
            delta_nominal: None,
            companions: vec![p(&format!("{r1}-min.qcow2"))],
            note: "qcow2 backing chain holding the in-place upgrade: full copy and rsync send the overlay file only (the destination has its backing file); cbt sends the virtual disk".into(),
        },
        Case {
            name: format!("{r1} overlay web-on-min.qcow2 (rebuilt) ← min.qcow2"),
            group: "debian".into(),
            target: p(&format!("{r1}-web-on-min.qcow2")),
            seeds: vec![p(&format!("{r1}-min.qcow2"))],
            delta_nominal: None,
            companions: vec![p(&format!("{r1}-min.qcow2"))],
            note: "qcow2 backing chain over a rebuilt image (most clusters differ from the base): full copy and rsync send the overlay file only; cbt sends the virtual disk".into(),
        },
        Case {
            name: format!("{r1} data-snap.qcow2 ← web"),
            group: "debian".into(),
            target: p(&format!("{r1}-data-snap.qcow2")),
            seeds: vec![p(&format!("{r1}-web.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "qcow2 with an internal snapshot (of web); full copy and rsync send the whole file, cbt the current state".into(),
        },
    ];
    // Added by layout 3 of the script: an older cache has no such image.
    let user = p(&format!("{r1}-user.raw"));
    if user.exists() {
        cases.push(Case {
            name: format!("{r1} user ← web"),
            group: "debian".into(),
            target: user,
            seeds: vec![p(&format!("{r1}-web.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: "3 GiB: web plus ~400 MB of mixed user data (documents, logs, a SQLite database, media-like random files, duplicated backups)".into(),
        });
    }
    if !r2.is_empty() {
        cases.push(Case {
            name: format!("{r2} min ← {r1} min"),
            group: "debian".into(),
            target: p(&format!("{r2}-min.raw")),
            seeds: vec![p(&format!("{r1}-min.raw"))],
            delta_nominal: None,
            companions: vec![],
            note: format!("a release upgrade: minbase of {r2}, the destination holding minbase of {r1}"),
        });
    }
    Ok(cases)
}

fn run(opts: Opts) -> std::io::Result<()> {
    let started = Instant::now();
    let started_utc = first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let exe = std::env::current_exe()?;
    let cbt = match &opts.cbt {
        Some(p) => p.clone(),
        None => exe.with_file_name("cbt"),
    };
    if !cbt.exists() {
        return Err(std::io::Error::other(format!(
            "{} not found: build it with `cargo build --release -p cbt-cli` (or pass --cbt)",
            cbt.display()
        )));
    }
    for tool in ["rsync", proc::GNU_TIME, "qemu-img", "dd", "cp"] {
        if !proc::have(tool) {
            return Err(std::io::Error::other(format!(
                "{tool} not found (Debian: apt-get install -y rsync time qemu-utils coreutils)"
            )));
        }
    }
    // Recorded before the run, so `source` names the tree the binaries came from.
    let machine = machine(&cbt);
    let mut notes = Vec::new();
    let root = is_root();
    let emulate = root && !opts.loopback;
    if !emulate {
        let why = if root {
            "--loopback given"
        } else {
            "not running as root"
        };
        eprintln!("harness: {why}: PLAIN LOOPBACK, no namespaces, no rate shaping; the RTT relay still runs");
        notes.push(format!("{why}: the link is plain loopback (no network namespaces, no tbf rate shaping); the wire byte counts are loopback's and include other processes' traffic"));
    }
    let size_mib = opts.size_mib.unwrap_or(if opts.quick { 64 } else { 512 });
    let suffix = if opts.quick { "-quick" } else { "" };
    fs::create_dir_all(&opts.out)?;
    let work = opts.data.join("harness");
    let tmp = work.join("tmp");
    fs::create_dir_all(&tmp)?;

    // Data first (not timed against anything).
    let pairs = data::ensure_pairs(&opts.data.join("synthetic"), size_mib, 1, &opts.deltas)?;
    let mut cases: Vec<Case> = pairs
        .iter()
        .map(|p| Case {
            name: format!("synthetic ΔD={}", p.delta_d),
            group: "synthetic".into(),
            target: p.target.clone(),
            seeds: vec![p.base.clone()],
            delta_nominal: Some(p.delta_d),
            companions: vec![],
            note: format!(
                "{size_mib} MiB file-system-like image, {} of its data blocks replaced in file-sized runs",
                p.delta_d
            ),
        })
        .collect();
    let want_debian = opts.debian.unwrap_or(!opts.quick);
    if want_debian {
        if !root {
            notes.push("Debian cases skipped: building the images needs root (debootstrap)".into());
        } else {
            let dir = opts
                .debian_dir
                .clone()
                .unwrap_or_else(|| opts.data.join("debian"));
            match debian_cases(&dir) {
                Ok(c) => cases.extend(c),
                Err(note) => {
                    eprintln!("harness: {note}");
                    notes.push(note);
                }
            }
        }
    }
    if let Some(only) = &opts.only {
        cases.retain(|c| c.name.contains(only.as_str()));
    }

    // v_d: a non-sparse image read from the disk (O_DIRECT) and from the cache.
    let vd_file = opts
        .data
        .join("synthetic")
        .join(format!("vd-{size_mib}M-random.raw"));
    cbt_benches::ensure_random_image(&vd_file, size_mib << 20, 77, 0)?;
    let v_d_disk = runners::dd_read(&vd_file, true)?;
    runners::dd_read(&vd_file, false)?;
    let v_d_cache = runners::dd_read(&vd_file, false)?;
    let (v_d_used, v_d) = if opts.vd == "cache" {
        ("cache", v_d_cache)
    } else {
        ("disk", v_d_disk)
    };
    // v_d,copy: a durable local copy of the same image on the same disk as
    // the outputs; the median of three, as one copy is noisy on a shared disk.
    let copy_samples = (0..3)
        .map(|_| runners::dd_copy(&vd_file, &tmp.join("vd-copy.raw")))
        .collect::<std::io::Result<Vec<f64>>>()?;
    let v_d_copy = median(&copy_samples);
    eprintln!(
        "harness: v_d disk {v_d_disk:.0} MiB/s, cache {v_d_cache:.0} MiB/s, durable copy {v_d_copy:.0} MiB/s"
    );

    link::cleanup_on_signal();
    let load0 = cbt_benches::load_average().unwrap_or(f64::NAN);
    let rtt = Duration::from_secs_f64(opts.rtt / 1000.0);
    let link = Link::setup(emulate, &opts.rate, rtt, &exe)?;
    eprintln!("harness: link: {}", link.info.kind);
    let env = Env {
        link: &link,
        exe: exe.clone(),
        cbt: cbt.clone(),
        tmp: tmp.clone(),
        dst_root: work.join("dst"),
    };

    // The link, measured in this run.
    let rtt_samples = runners::measure_rtt(&env, 20)?;
    let probe = if opts.quick { 32u64 << 20 } else { 128u64 << 20 };
    let (probe_wall, probe_wire) = runners::measure_rate(&env, probe)?;
    let v_n = probe as f64 / probe_wall.as_secs_f64() / (1 << 20) as f64;
    eprintln!(
        "harness: v_n {v_n:.2} MiB/s ({} bytes on the wire for {probe}), RTT median {:.1} ms",
        probe_wire,
        median(&rtt_samples)
    );
    if let Some(bits) = link.info.rate_bit_s {
        let nominal = bits as f64 / 8.0 / (1 << 20) as f64;
        if v_n < 0.8 * nominal || v_n > 1.05 * nominal {
            notes.push(format!(
                "the measured v_n ({v_n:.2} MiB/s) is far from the tbf rate ({nominal:.2} MiB/s)"
            ));
        }
    }
    let measured = LinkMeasurements {
        rate_probe_bytes: probe,
        rate_probe_s: probe_wall.as_secs_f64(),
        rate_probe_wire_bytes: probe_wire,
        v_n_mib_s: v_n,
        rtt_median_ms: median(&rtt_samples),
        rtt_samples_ms: rtt_samples,
        v_d_disk_mib_s: v_d_disk,
        v_d_cache_mib_s: v_d_cache,
        v_d_used: v_d_used.into(),
        v_d_mib_s: v_d,
        v_d_copy_mib_s: v_d_copy,
        v_d_copy_samples_mib_s: copy_samples,
        v_d_image_bytes: size_mib << 20,
    };

    let mut results = Vec::new();
    for case in &cases {
        eprintln!("harness: case {}", case.name);
        let mut cr = CaseResult::new(case.clone());
        let prepared =
            runners::prepare(&env, case).and_then(|d| runners::estimate(&env, case, &d).map(|e| (d, e)));
        let (dirs, est) = match prepared {
            Ok(x) => x,
            Err(e) => {
                eprintln!("harness:   skipped: {e}");
                cr.error = Some(e.to_string());
                results.push(cr);
                continue;
            }
        };
        let size = est.image_bytes;
        let basis = est.best_candidate.clone();
        let show = |r: &runners::RunResult| {
            eprintln!(
                "harness:   {:<20} {:>8.2} s {:>9.1} MiB/s observed, {:>8.1} MiB on the wire{}",
                r.tool,
                r.wall_s,
                r.observed_mib_s,
                r.wire_bytes as f64 / (1 << 20) as f64,
                if r.verified {
                    String::new()
                } else {
                    format!("  FAILED: {}", r.error.clone().unwrap_or_default())
                }
            )
        };
        let r = runners::full_copy(&env, case, &dirs, size);
        show(&r);
        cr.runs.push(r);
        for inplace in [true, false] {
            let r = runners::rsync(
                &env,
                case,
                &dirs,
                size,
                basis.as_deref(),
                RsyncMode {
                    inplace,
                    compress: false,
                },
            );
            show(&r);
            cr.runs.push(r);
        }
        // -z once, in the faster of the two modes.
        let inplace_faster = cr.runs[1].wall_s <= cr.runs[2].wall_s || !cr.runs[2].verified;
        let r = runners::rsync(
            &env,
            case,
            &dirs,
            size,
            basis.as_deref(),
            RsyncMode {
                inplace: inplace_faster,
                compress: true,
            },
        );
        show(&r);
        cr.runs.push(r);
        // The cold run first (the position the only cbt run had before),
        // then the warm one, whose untimed index warm-up runs just before it.
        // In place only where there is a basis to update, as for rsync.
        let indexes: &[CbtIndex] = if basis.is_some() {
            &[CbtIndex::Cold, CbtIndex::Warm, CbtIndex::InPlace]
        } else {
            &[CbtIndex::Cold, CbtIndex::Warm]
        };
        for &index in indexes {
            let r = runners::cbt(&env, case, &dirs, size, index, basis.as_deref());
            show(&r);
            if let Some(w) = &r.index_warmup {
                eprintln!(
                    "harness:   (index warm-up before it, untimed: {:.2} s, {} images, {:.1} MiB hashed; cache {})",
                    w.seconds,
                    w.images,
                    w.bytes_hashed as f64 / (1 << 20) as f64,
                    match r.index_reused {
                        Some(true) => "untouched by the run",
                        Some(false) => "WRITTEN by the run: not warm",
                        None => "state unknown",
                    }
                );
            }
            cr.runs.push(r);
        }
        cr.estimate = Some(est);
        cr.summarize(v_d, v_d_copy, v_n);
        let _ = fs::remove_dir_all(&dirs.seeds);
        let _ = fs::remove_dir_all(&dirs.cache);
        results.push(cr);
    }
    let info = link.info.clone();
    drop(link);
    let load1 = cbt_benches::load_average().unwrap_or(f64::NAN);

    let report = Report {
        command,
        started: started_utc,
        duration_s: started.elapsed().as_secs_f64(),
        quick: opts.quick,
        machine,
        link: info,
        measured,
        load: (load0, load1),
        cases: results,
        notes,
    };
    let json = opts.out.join(format!("bench-harness{suffix}.json"));
    fs::write(
        &json,
        serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?,
    )?;
    let md = report.markdown();
    fs::write(opts.out.join(format!("bench-harness{suffix}.md")), &md)?;
    let svg = opts.out.join(format!("bench-observed-bandwidth{suffix}.svg"));
    let png = opts.out.join(format!("bench-observed-bandwidth{suffix}.png"));
    if let Some(note) = report.plot(&svg, &png)? {
        eprintln!("harness: {note}");
    }
    println!("{md}");
    eprintln!(
        "harness: done in {:.0} s; wrote {}, {}, {} and {}",
        report.duration_s,
        json.display(),
        opts.out.join(format!("bench-harness{suffix}.md")).display(),
        svg.display(),
        png.display()
    );
    Ok(())
}
