//! `cbt teleport SRC HOST:PORT[/NAME]` (push) and `cbt teleport
//! HOST:PORT/NAME OUT` (pull): a transfer whose sender first describes the
//! guest, so that the receiver takes its packages from its own caches and
//! mirrors and only the rest crosses the link. Also the receiving side's
//! package sources (`--mirror`, for `recv`, `serve` and a teleport pull),
//! and the [`CliTeleporter`] that joins `cbt-net` (which knows nothing of
//! packages) to `cbt-teleport`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use cbt_core::{open_image, Image, ImageSpec};
use cbt_net::frame::TeleportStage;
use cbt_net::teleport::{Description, ReportSink};
use cbt_net::{parse_target, Prepared, ReceiveOptions, Teleporter, TransferReport};
use cbt_teleport::{
    block_origins, describe_image, DescribeOptions, FetchOptions, GuestRequest, MirrorOptions, PackageSources,
};

use crate::cli::{Config, FormatArg};
use crate::net_commands::{self, NetOpts, SendOpts, Tls, TlsClientOpts};

/// Package sources of a receiving side.
#[derive(Debug, Clone, Default, Args)]
pub struct MirrorOpts {
    /// Base URL of an apt mirror or proxy (http:// or https://) from which
    /// a teleported guest's packages are fetched into the first
    /// --package-cache. Repeatable; the first mirror with a version wins.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// Seconds a mirror may stay silent [default: 30].
    #[arg(long, value_name = "SECS")]
    pub mirror_timeout: Option<f64>,
    /// Package downloads at once [default: 4].
    #[arg(long, value_name = "N")]
    pub mirror_jobs: Option<usize>,
}

impl MirrorOpts {
    /// The package sources: these mirrors and the package caches.
    pub fn sources(&self, caches: &[PathBuf]) -> anyhow::Result<PackageSources> {
        package_sources(
            self.mirrors.clone(),
            caches,
            self.mirror_timeout.unwrap_or(30.0),
            self.mirror_jobs.unwrap_or(4),
        )
    }
}

/// Checks the mirror settings and builds the package sources.
pub fn package_sources(
    mirrors: Vec<String>,
    caches: &[PathBuf],
    timeout: f64,
    jobs: usize,
) -> anyhow::Result<PackageSources> {
    if !mirrors.is_empty() && caches.is_empty() {
        crate::bail_usage!("--mirror needs a package cache to fetch into: give --package-cache DIR");
    }
    for m in &mirrors {
        let lower = m.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            crate::bail_usage!("--mirror {m:?}: a mirror URL must start with http:// or https://");
        }
    }
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
        crate::bail_usage!("--mirror-timeout must be a number of seconds between 0 and 3600");
    }
    if !(1..=64).contains(&jobs) {
        crate::bail_usage!("--mirror-jobs must be between 1 and 64");
    }
    let read_timeout = Duration::from_secs_f64(timeout);
    Ok(PackageSources {
        caches: caches.to_vec(),
        mirrors,
        network: MirrorOptions {
            connect_timeout: read_timeout.min(Duration::from_secs(10)),
            read_timeout,
            ..MirrorOptions::default()
        },
        fetch: FetchOptions { jobs },
    })
}

/// Describes images and prepares seeds with `cbt-teleport`.
#[derive(Clone)]
pub struct CliTeleporter {
    /// Where packages come from.
    pub sources: PackageSources,
    /// The link rate to announce when describing (bytes per second).
    pub link_rate: Option<f64>,
    /// Also shows the reports here (a teleport pull prints its plan).
    pub echo: Option<ReportSink>,
}

impl std::fmt::Debug for CliTeleporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliTeleporter")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// The guest request for `image`, or why there is none.
fn describe(image: Arc<dyn Image>, link_rate: Option<f64>) -> Result<GuestRequest, String> {
    let label = image.label();
    let desc = describe_image(image, &DescribeOptions::packages_only()).map_err(|e| e.to_string())?;
    let request = GuestRequest::of(&desc, link_rate);
    if request.packages.is_empty() {
        return Err(format!("{label}: no installed packages found"));
    }
    Ok(request)
}

impl Teleporter for CliTeleporter {
    fn user_data(&self, image: Arc<dyn Image>) -> Result<cbt_net::UserDataImage, String> {
        crate::rebuild_commands::user_data_image(image)
    }

    fn describe(&self, image: Arc<dyn Image>) -> Result<Vec<u8>, String> {
        describe(image, self.link_rate).map(|r| r.to_json())
    }

    fn prepare(
        &self,
        description: &[u8],
        dry_run: bool,
        stop: &AtomicBool,
        report: &mut dyn FnMut(TeleportStage, Vec<u8>),
    ) -> Result<Prepared, String> {
        let mut send = |stage: TeleportStage, value: serde_json::Value| {
            if let Some(echo) = &self.echo {
                echo(stage, &value);
            }
            report(stage, serde_json::to_vec(&value).unwrap_or_default());
        };
        let request = GuestRequest::from_json(description).unwrap_or_else(|e| GuestRequest {
            error: Some(e),
            ..GuestRequest::default()
        });
        let resolution = self.sources.resolve(&request);
        send(
            TeleportStage::Planned,
            serde_json::to_value(&resolution.plan).unwrap_or_default(),
        );
        if dry_run {
            return Ok(Prepared {
                seeds: Vec::new(),
                finish: None,
            });
        }
        let outcome = self.sources.fetch(&resolution, stop);
        send(
            TeleportStage::Prepared,
            serde_json::to_value(&outcome).unwrap_or_default(),
        );
        let fetched = outcome.new_files;
        // The package caches are already among the index's extra seeds
        // (--package-cache); fetched packages land in the first of them
        // before the index is built.
        Ok(Prepared {
            seeds: Vec::new(),
            finish: Some(Box::new(move |index| {
                serde_json::to_vec(&block_origins(index, &fetched)).unwrap_or_default()
            })),
        })
    }
}

/// `cbt teleport SRC DEST`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The image to send (raw or qcow2), or HOST:PORT/NAME to pull from a daemon.
    #[arg(value_name = "SRC")]
    pub src: Option<String>,
    /// HOST:PORT[/NAME] to push to, or the output path of a pull.
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// Send this internal snapshot of SRC.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Print the plan (what the destination has, fetches, lacks) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// The link's rate, for the decision whether fetching pays: bytes per
    /// second, K, M, G = KiB, MiB, GiB (powers of 1024), or bits with kbit,
    /// Mbit, Gbit (powers of 1000), e.g. 100Mbit [default: --bwlimit, else
    /// unknown: fetch].
    #[arg(long, value_name = "RATE", value_parser = crate::rates::parse_rate)]
    pub link: Option<f64>,
    /// Pull: an image or directory to take blocks from; repeat for more
    /// (--seed A --seed B).
    #[arg(long = "seed", value_name = "ROOT")]
    pub seeds: Vec<PathBuf>,
    /// Pull: output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    pub format: FormatArg,
    #[command(flatten)]
    pub mirror: MirrorOpts,
    #[command(flatten)]
    pub send: SendOpts,
    #[command(flatten)]
    pub net: NetOpts,
    #[command(flatten)]
    pub tls: TlsClientOpts,
    /// Push: replace the daemon's existing image of that name.
    #[arg(long)]
    pub force: bool,
    /// Rebuild at the destination instead of copying blocks: clone the
    /// closest --seed image, install and remove packages with the guest's
    /// own package manager (the source's versions, else the nearest a
    /// mirror has), then write the source's user data, moved through the
    /// block engine. SRC is a local image or HOST:PORT/NAME; DEST the new
    /// image (a qcow2 overlay over the candidate). Runs as root.
    #[arg(long)]
    pub functional: bool,
    /// --functional: go on when a maintainer script fails or a package is
    /// nowhere to be found (reported; the result is not a functional match).
    #[arg(long, requires = "functional")]
    pub keep_going: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// `cbt teleport SRC DEST`: a push when SRC is a local image, a pull when it
/// is HOST:PORT/NAME.
pub fn teleport(config: &Config, args: TransferArgs) -> anyhow::Result<()> {
    let (Some(src), Some(dest)) = (args.src.clone(), args.dest.clone()) else {
        crate::bail_usage!(
            "give SRC and DEST: an image and HOST:PORT[/NAME], or HOST:PORT/NAME and an output path"
        );
    };
    if args.functional {
        return crate::rebuild_commands::functional(config, args, &src, &dest);
    }
    let local = PathBuf::from(&src);
    if local.exists() {
        return push(config, &local, &dest, args);
    }
    match parse_target(&src) {
        Ok(t) if t.name.is_some() => pull(
            config,
            &t.addr,
            t.name.as_deref().unwrap_or_default(),
            &dest,
            args,
        ),
        _ => bail!("{src}: no such image, and not HOST:PORT/NAME"),
    }
}

fn push(config: &Config, src: &std::path::Path, dest: &str, args: TransferArgs) -> anyhow::Result<()> {
    if !args.mirror.mirrors.is_empty() || !args.seeds.is_empty() {
        crate::bail_usage!(
            "--mirror and --seed belong to the receiving side (cbt serve, cbt recv, a teleport pull)"
        );
    }
    let target = parse_target(dest).map_err(anyhow::Error::msg)?;
    let mut client = net_commands::client_options(&args.net, Some(&args.send), Tls::Client(&args.tls))?;
    // A dry run writes nothing, so an existing image is no reason to refuse it.
    client.push_replace = args.force || args.dry_run;
    let link_rate = args.link.or(client.bwlimit.map(|b| b as f64));
    let spec = ImageSpec {
        path: src.to_path_buf(),
        snapshot: args.snapshot.clone(),
        backing: Default::default(),
    };
    let image = open_image(&spec)?;
    let started = Instant::now();
    let request = describe(Arc::clone(&image), link_rate).unwrap_or_else(|reason| {
        eprintln!("warning: {reason}: the destination can only use what it has");
        GuestRequest {
            error: Some(reason),
            ..GuestRequest::default()
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    if !args.json {
        print_guest(&request, seconds)?;
    }
    let mut send_options = net_commands::send_options(config, args.send.compress.as_deref())?;
    send_options.description = Some(Description {
        body: request.to_json().into(),
        dry_run: args.dry_run,
        seconds,
    });
    if !args.json {
        send_options.on_teleport = Some(Arc::new(print_stage));
    }
    let show = crate::progress::wanted(config.progress, args.json);
    let report = net_commands::push(&target, image, send_options, client, show)?;
    finish(&report, args.json)
}

fn pull(config: &Config, addr: &str, name: &str, out: &str, args: TransferArgs) -> anyhow::Result<()> {
    if config.package_caches.is_empty() {
        crate::bail_usage!("a teleport pull needs a package cache to use and fill: give --package-cache DIR");
    }
    let out = PathBuf::from(out);
    if out.is_dir() {
        bail!(
            "{}: is a directory; give the path of the image to write",
            out.display()
        );
    }
    for s in &args.seeds {
        if !s.exists() {
            bail!("{}: seed root does not exist", s.display());
        }
    }
    let client = net_commands::client_options(&args.net, None, Tls::Client(&args.tls))?;
    let mut options = ReceiveOptions::new(out);
    options.format = args.format.into();
    options.seeds = args.seeds.clone();
    options.index = config.index.clone();
    options.verify_readback = config.verify_readback;
    let echo: Option<ReportSink> = if args.json {
        None
    } else {
        Some(Arc::new(print_stage))
    };
    options.teleporter = Some(Arc::new(CliTeleporter {
        sources: args.mirror.sources(&config.package_caches)?,
        link_rate: args.link,
        echo,
    }));
    let counters = Arc::new(cbt_net::Progress::default());
    options.progress = Some(Arc::clone(&counters));
    let show = crate::progress::wanted(config.progress, args.json);
    let bar = crate::progress::Bar::start(show, move || crate::progress::receiving(&counters.snapshot()));
    let (addr, name, dry_run) = (addr.to_string(), name.to_string(), args.dry_run);
    let report = net_commands::run_with_signals(|shutdown| async move {
        cbt_net::pull_teleport(&addr, &name, dry_run, options, &client, shutdown).await
    })?;
    drop(bar);
    finish(&report, args.json)
}

fn finish(report: &TransferReport, json: bool) -> anyhow::Result<()> {
    if json || !report.dry_run {
        net_commands::print_report(report, json)?;
    }
    if !json {
        if let Some(t) = &report.teleport {
            let secs = |v: &Option<serde_json::Value>, k: &str| {
                v.as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(|x| x.as_f64())
                    .unwrap_or(0.0)
            };
            let (resolve, fetch) = (
                secs(&t.plan, "resolve_seconds"),
                secs(&t.prepared, "fetch_seconds"),
            );
            let mut out = crate::stdout::stdout();
            let describe = t
                .describe_seconds
                .map(|d| format!("describe {d:.1} s, "))
                .unwrap_or_default();
            writeln!(
                out,
                "  time: {describe}resolve {resolve:.1} s, fetch {fetch:.1} s, transfer {:.1} s",
                (report.seconds - resolve - fetch).max(0.0)
            )?;
        }
        if let Some(origins) = report.teleport.as_ref().and_then(|t| t.finished.as_ref()) {
            let n = |k: &str| origins.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let mut out = crate::stdout::stdout();
            writeln!(
                out,
                "  blocks from: images {}, cached packages {}, fetched packages {}, the link {}",
                n("blocks_from_images"),
                n("blocks_from_cached_packages"),
                n("blocks_from_fetched_packages"),
                report.blocks_sent
            )?;
        }
    }
    Ok(())
}

fn print_guest(r: &GuestRequest, seconds: f64) -> anyhow::Result<()> {
    let mut out = crate::stdout::stdout();
    match &r.error {
        Some(e) => writeln!(out, "guest: not described ({e})")?,
        None => writeln!(
            out,
            "guest: {} {} {}, {} packages (described in {seconds:.1} s)",
            r.distro.as_deref().unwrap_or("?"),
            r.version.as_deref().unwrap_or("?"),
            r.architecture.as_deref().unwrap_or("?"),
            r.packages.len()
        )?,
    }
    Ok(())
}

/// Prints one of the destination's reports as it arrives.
fn print_stage(stage: TeleportStage, v: &serde_json::Value) {
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut out = crate::stdout::stdout();
    let _ = match stage {
        TeleportStage::Planned => {
            let mut text = format!(
                "plan: {} packages: {} cached, {} to fetch ({:.1} MB), {} missing (resolved in {:.1} s)\n",
                n("packages"),
                n("cached"),
                n("to_fetch"),
                n("fetch_bytes") as f64 / 1e6,
                v.get("missing").and_then(|m| m.as_array()).map_or(0, |m| m.len()),
                f("resolve_seconds"),
            );
            for m in v.get("mirrors").and_then(|m| m.as_array()).into_iter().flatten() {
                let url = m.get("url").and_then(|u| u.as_str()).unwrap_or("?");
                match m.get("error").and_then(|e| e.as_str()) {
                    Some(e) => text.push_str(&format!("  mirror {url}: not usable: {e}\n")),
                    None => text.push_str(&format!(
                        "  mirror {url}: {} packages listed\n",
                        m.get("packages").and_then(|p| p.as_u64()).unwrap_or(0)
                    )),
                }
                for w in m.get("warnings").and_then(|w| w.as_array()).into_iter().flatten() {
                    text.push_str(&format!("    warning: {}\n", w.as_str().unwrap_or("?")));
                }
            }
            for p in v.get("missing").and_then(|m| m.as_array()).into_iter().flatten() {
                text.push_str(&format!("  missing: {}\n", p.as_str().unwrap_or("?")));
            }
            let verdict = if v.get("fetch").and_then(|b| b.as_bool()).unwrap_or(false) {
                "fetch"
            } else {
                "no fetch"
            };
            text.push_str(&format!("  decision: {verdict}: {}\n", s("reason")));
            out.write_all(text.as_bytes())
        }
        TeleportStage::Prepared => {
            let mut text = format!(
                "fetched: {} packages, {:.1} MB, and {} index files, {:.1} MB, in {:.1} s\n",
                n("fetched"),
                n("fetched_bytes") as f64 / 1e6,
                n("index_files"),
                n("index_bytes") as f64 / 1e6,
                f("fetch_seconds")
            );
            for p in v.get("failed").and_then(|m| m.as_array()).into_iter().flatten() {
                let get = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
                text.push_str(&format!("  not usable: {}: {}\n", get("package"), get("reason")));
            }
            out.write_all(text.as_bytes())
        }
        TeleportStage::Finished => Ok(()),
    };
    let _ = out.flush();
}
