//! `cbt teleport --functional`: a package-level rebuild at the destination
//! (see `cbt_teleport::rebuild`). `SRC` is a local image, or
//! `HOST:PORT/NAME` on a daemon that makes the user-data pack and sends it
//! through the block engine; `OUT` is the rebuilt image (a qcow2 overlay
//! over the best local candidate).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use cbt_core::{open_image, Image, ImageSpec};
use cbt_net::frame::TeleportStage;
use cbt_net::{parse_target, Prepared, ReceiveOptions, Teleporter, TransferReport, UserDataImage};
use cbt_teleport::rebuild::{
    finish_rebuild, hidden_path, pack_user_data, prepare_clone, PreparedClone, RebuildError, RebuildOptions,
    RebuildReport, UserData,
};
use cbt_teleport::GuestRequest;

use crate::cli::Config;
use crate::net_commands::{self, Tls};
use crate::teleport_commands::TransferArgs;

/// A functional copy finished, but some packages are at other versions
/// than the source's (exit code 6).
#[derive(Debug)]
pub struct VersionsDiffer(pub String);

impl std::fmt::Display for VersionsDiffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VersionsDiffer {}

/// The sender's side of a functional pull: the guest request and its
/// user-data pack, in a temporary directory that lives as long as the
/// transfer.
pub fn user_data_image(image: Arc<dyn Image>) -> Result<UserDataImage, String> {
    let dir = tempfile::Builder::new()
        .prefix("cbt-userdata")
        .tempdir()
        .map_err(|e| format!("no temporary directory for the user data: {e}"))?;
    let path = dir.path().join("user-data.pack");
    let (request, _) = pack_user_data(image, &path).map_err(|e| e.to_string())?;
    let pack = open_image(&ImageSpec::file(path)).map_err(|e| e.to_string())?;
    Ok(UserDataImage {
        description: request.to_json(),
        image: pack,
        scratch: Box::new(dir),
    })
}

/// The receiving side: keeps the description, and when it arrived (the
/// daemon describes and packs before it sends it), and starts preparing
/// the clone from it while the user data is still in transit.
#[derive(Debug)]
struct Recorder {
    description: Mutex<Option<(Vec<u8>, Instant)>>,
    clone: Mutex<Option<Background>>,
    options: RebuildOptions,
    out: PathBuf,
}

/// The clone being prepared on its own thread. Dropped before it was
/// taken (the transfer failed), it is stopped at its next phase and
/// joined, so its mounts are undone before cbt exits.
#[derive(Debug)]
struct Background {
    handle: Option<std::thread::JoinHandle<Result<PreparedClone, RebuildError>>>,
    stop: Arc<AtomicBool>,
}

impl Background {
    fn join(mut self) -> anyhow::Result<PreparedClone> {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => Ok(r?),
            _ => bail!("preparing the clone failed (its thread panicked)"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = h.join();
        }
    }
}

impl Teleporter for Recorder {
    fn describe(&self, _image: Arc<dyn Image>) -> Result<Vec<u8>, String> {
        Err("a functional pull's client does not describe".into())
    }

    fn prepare(
        &self,
        description: &[u8],
        _dry_run: bool,
        _stop: &AtomicBool,
        _report: &mut dyn FnMut(TeleportStage, Vec<u8>),
    ) -> Result<Prepared, String> {
        if let Ok(mut d) = self.description.lock() {
            *d = Some((description.to_vec(), Instant::now()));
        }
        if let Ok(request) = GuestRequest::from_json(description) {
            if request.error.is_none() {
                let (options, out) = (self.options.clone(), self.out.clone());
                let stop = Arc::clone(&options.stop);
                let handle = std::thread::Builder::new()
                    .name("cbt-clone".into())
                    .spawn(move || prepare_clone(&request, &out, &options))
                    .ok();
                if let Ok(mut c) = self.clone.lock() {
                    *c = Some(Background { handle, stop });
                }
            }
        }
        Ok(Prepared {
            seeds: Vec::new(),
            finish: None,
        })
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `cbt teleport --functional SRC OUT`.
pub fn functional(config: &Config, args: TransferArgs, src: &str, out: &str) -> anyhow::Result<()> {
    if args.dry_run || args.force || args.snapshot.is_some() {
        crate::bail_usage!("--functional does not take --dry-run, --force or --snapshot");
    }
    if args.seeds.is_empty() {
        crate::bail_usage!("--functional needs the images to build on: give --seed ROOT");
    }
    if config.package_caches.is_empty() {
        crate::bail_usage!("--functional needs a package cache to use and fill: give --package-cache DIR");
    }
    if !is_root() {
        crate::bail_usage!(
            "--functional must run as root: it attaches the clone (FUSE, a loop device), mounts it and runs the guest's package manager in a chroot"
        );
    }
    let looks_remote = parse_target(out).is_ok_and(|t| t.name.is_some());
    let parent = Path::new(out).parent().filter(|p| !p.as_os_str().is_empty());
    if looks_remote && parent.is_some_and(|p| !p.exists()) {
        crate::bail_usage!(
            "{out}: a functional rebuild runs at the destination; there, run cbt teleport --functional HOST:PORT/NAME OUT (a pull from the daemon that exports the image)"
        );
    }
    let out = PathBuf::from(out);
    if out.exists() {
        bail!("{}: already exists; give the path of a new image", out.display());
    }
    for s in &args.seeds {
        if !s.exists() {
            bail!("{}: seed root does not exist", s.display());
        }
    }
    // Archives are downloaded into the first cache; the index of a pull
    // reads all of them, so it must exist from the start.
    if let Some(first) = config.package_caches.first() {
        std::fs::create_dir_all(first)
            .with_context(|| format!("cannot create the package cache {}", first.display()))?;
    }
    let options = RebuildOptions {
        seeds: args.seeds.clone(),
        index: config.index.clone(),
        sources: args.mirror.sources(&config.package_caches)?,
        keep_going: args.keep_going,
        stop: stop_on_signal()?,
    };
    let pack_path = hidden_path(&out, "cbt-userdata");
    let _ = std::fs::remove_file(&pack_path);
    let _cleanup = RemoveOnDrop(pack_path.clone());
    let started = Instant::now();
    let local = Path::new(src);
    let (request, transfer, describe_seconds, clone) = if local.exists() {
        let started = Instant::now();
        let image = open_image(&ImageSpec::file(local))?;
        let (request, _) = pack_user_data(image, &pack_path).with_context(|| format!("describing {src}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let clone = prepare_clone(&request, &out, &options)?;
        (request, None, seconds, clone)
    } else {
        let target = parse_target(src).map_err(anyhow::Error::msg)?;
        let Some(name) = target.name else {
            bail!("{src}: no such image, and not HOST:PORT/NAME");
        };
        pull_user_data(config, &args, &target.addr, &name, &pack_path, &out, &options)?
    };
    let user = UserData::open(&pack_path)?;
    let mut report = finish_rebuild(clone, &request, &user, &out, &options)?;
    report.phases.describe = describe_seconds;
    report.phases.total = started.elapsed().as_secs_f64();
    if let Some(t) = &transfer {
        report.phases.transfer = (t.seconds - describe_seconds).max(0.0);
    }
    print(&report, transfer.as_ref(), args.json)?;
    if !report.functional_match {
        let mut why = Vec::new();
        let versions = report.verification.version_differences.len();
        if versions > 0 {
            why.push(format!(
                "{} differ in version from the source",
                crate::stdout::counted(versions as u64, "package", "packages")
            ));
        }
        let skipped = report.skipped.len();
        if skipped > 0 {
            why.push(format!(
                "{} could not be carried",
                crate::stdout::counted(skipped as u64, "user-data entry", "user-data entries")
            ));
        }
        return Err(VersionsDiffer(format!(
            "{}: rebuilt and verified, but {} (listed above)",
            out.display(),
            why.join(" and ")
        ))
        .into());
    }
    Ok(())
}

/// Pulls the user-data pack of `name` into `pack_path`; returns the
/// guest request, the transfer and the seconds the daemon took to describe.
fn pull_user_data(
    config: &Config,
    args: &TransferArgs,
    addr: &str,
    name: &str,
    pack_path: &Path,
    out: &Path,
    options: &RebuildOptions,
) -> anyhow::Result<(GuestRequest, Option<TransferReport>, f64, PreparedClone)> {
    let client = net_commands::client_options(&args.net, None, Tls::Client(&args.tls))?;
    let mut receive = ReceiveOptions::new(pack_path.to_path_buf());
    receive.seeds = args.seeds.clone();
    receive.index = config.index.clone();
    receive.verify_readback = config.verify_readback;
    let recorder = Arc::new(Recorder {
        description: Mutex::new(None),
        clone: Mutex::new(None),
        options: options.clone(),
        out: out.to_path_buf(),
    });
    receive.teleporter = Some(Arc::clone(&recorder) as Arc<dyn Teleporter>);
    let counters = Arc::new(cbt_net::Progress::default());
    receive.progress = Some(Arc::clone(&counters));
    let show = crate::progress::wanted(config.progress, args.json);
    let bar = crate::progress::Bar::start(show, move || crate::progress::receiving(&counters.snapshot()));
    let (a, n) = (addr.to_string(), name.to_string());
    let started = Instant::now();
    let pulled = net_commands::run_with_signals(|shutdown| async move {
        cbt_net::pull_functional(&a, &n, receive, &client, shutdown).await
    });
    drop(bar);
    // Whatever happened to the transfer, the clone's thread is ours now:
    // on an error below, dropping it stops and joins it.
    let clone = recorder.clone.lock().ok().and_then(|mut c| c.take());
    let report = pulled?;
    let body = recorder.description.lock().ok().and_then(|mut d| d.take());
    let Some((body, described)) = body else {
        bail!("{addr}: sent the user data without describing the guest");
    };
    let request = GuestRequest::from_json(&body).map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    if let Some(e) = &request.error {
        bail!("{addr}: could not describe {name}: {e}");
    }
    let describe = described.saturating_duration_since(started).as_secs_f64();
    let Some(clone) = clone else {
        bail!("{addr}: the guest description could not be used to prepare a clone");
    };
    Ok((request, Some(report), describe, clone.join()?))
}

/// A flag set on SIGINT or SIGTERM, so that the rebuild stops between
/// phases and unmounts its clone instead of dying with it mounted.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the signal handler")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            // Registered before the rebuild starts, so no signal is missed.
            let (Ok(mut int), Ok(mut term)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                let _ = ready_tx.send(());
                return;
            };
            let _ = ready_tx.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("cbt: signal received: stopping after this phase (the clone is removed)");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    });
    let _ = ready_rx.recv();
    Ok(stop)
}

/// Removes the received pack (and a partial one) however the command ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(cbt_core::temp_path_for(&self.0));
    }
}

fn print(report: &RebuildReport, transfer: Option<&TransferReport>, json: bool) -> anyhow::Result<()> {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            rebuild: &'a RebuildReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            transfer: Option<&'a TransferReport>,
        }
        return Ok(crate::stdout::print_json(&Out {
            rebuild: report,
            transfer,
        })?);
    }
    let mut out = crate::stdout::stdout();
    writeln!(out, "rebuilt {} on {}", report.output, report.candidate)?;
    for c in &report.candidates {
        match (&c.package_changes, &c.rejected) {
            (Some(n), _) => writeln!(out, "  candidate {}: {n} package changes", c.image)?,
            (None, Some(why)) => writeln!(out, "  candidate {}: not usable: {why}", c.image)?,
            _ => {}
        }
    }
    let p = &report.packages;
    let exact = p.installed.iter().filter(|i| i.exact).count();
    writeln!(
        out,
        "  packages: {} installed ({exact} at the source's version, {} nearest), {} removed, {:.1} MB downloaded",
        p.installed.len(),
        p.installed.len() - exact,
        p.removed.len(),
        p.downloaded_bytes as f64 / 1e6
    )?;
    for f in &p.failures {
        writeln!(
            out,
            "  package manager failed on {}:\n    {}",
            f.package,
            f.output.trim().replace('\n', "\n    ")
        )?;
    }
    for u in &p.unavailable {
        writeln!(out, "  not available anywhere: {u}")?;
    }
    let u = &report.user_data;
    writeln!(
        out,
        "  user data: {} files ({:.1} MB), {} symlinks, {} fifos, {} directories written; {} files deleted",
        u.files,
        u.bytes as f64 / 1e6,
        u.symlinks,
        u.fifos,
        u.dirs,
        u.deleted
    )?;
    for s in &report.skipped {
        writeln!(out, "  not carried: {s}")?;
    }
    if let Some(t) = transfer {
        writeln!(
            out,
            "  link: {} bytes received ({} of {} blocks sent, {} found locally)",
            t.wire_bytes_received, t.blocks_sent, t.blocks_total, t.blocks_local
        )?;
    }
    let v = &report.verification;
    writeln!(
        out,
        "  verified: {} packages, {} user files checked, {} version differences",
        v.packages,
        v.files_checked,
        v.version_differences.len()
    )?;
    for d in &v.version_differences {
        writeln!(
            out,
            "    {}: source {}, rebuild {}",
            d.package,
            d.source.as_deref().unwrap_or("(none)"),
            d.rebuild.as_deref().unwrap_or("(none)")
        )?;
    }
    let ph = &report.phases;
    writeln!(
        out,
        "  time: {:.1} s: describe {:.1} s, transfer {:.1} s, pick {:.1} s, clone {:.1} s, packages {:.1} s, user data {:.1} s, verify {:.1} s",
        ph.total, ph.describe, ph.transfer, ph.pick, ph.clone, ph.packages, ph.user_data, ph.verify
    )?;
    writeln!(
        out,
        "  result: {}",
        if report.functional_match {
            "functional match"
        } else {
            "rebuilt, but not a functional match (see above)"
        }
    )?;
    Ok(())
}
