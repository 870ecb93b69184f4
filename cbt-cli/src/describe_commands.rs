//! The functional-copy commands: `cbt describe` (offline guest
//! inspection), `cbt teleport plan`, and `cbt estimate` with package
//! caches (the caches reported as one candidate).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use cbt_core::{open_image, ImageSpec, Index};
use cbt_teleport::{
    describe_dir, describe_image, estimate_with_packages, teleport_plan, DescribeOptions, Description,
    EntryKind, TeleportOptions, TeleportPlan,
};

use crate::cli::Config;
use crate::stdout::counted;

/// `cbt describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The image (raw or qcow2), or an unpacked root directory.
    pub image: PathBuf,
    /// Describe this internal snapshot of IMAGE.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Do not compare package files with their recorded checksums (faster;
    /// modified package files are then not reported).
    #[arg(long)]
    pub no_verify: bool,
    /// Skip the user-data manifest (no walk over the files).
    #[arg(long)]
    pub no_manifest: bool,
    /// List every package after the summary.
    #[arg(long, conflicts_with = "json")]
    pub packages: bool,
    /// List every user-data and package-state file after the summary.
    #[arg(long, conflicts_with = "json")]
    pub files: bool,
    /// Print JSON, everything included (schema in docs/DESCRIBE.md).
    #[arg(long)]
    pub json: bool,
}

/// `cbt teleport`: a transfer (SRC DEST) or one of the subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TeleportArgs {
    #[command(subcommand)]
    pub command: Option<TeleportCommand>,
    #[command(flatten)]
    pub transfer: crate::teleport_commands::TransferArgs,
    #[command(flatten)]
    pub shared: crate::cli::MovingOpts,
}

/// The `teleport` subcommands.
#[derive(Debug, Subcommand)]
pub enum TeleportCommand {
    /// Pick the local image closest to SRC (same distribution, version and
    /// architecture, fewest bytes still to send), list the packages to
    /// install and remove and the user data to send, and compare the time
    /// of a teleport with a plain cbt transfer.
    Plan {
        /// The image to move.
        src: PathBuf,
        /// Plan for this internal snapshot of SRC.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// A local image or directory (walked recursively) to consider:
        /// its images, backing files and internal snapshots. Repeat for
        /// more (--candidates A --candidates B).
        #[arg(long, value_name = "ROOT", required = true)]
        candidates: Vec<PathBuf>,
        /// Link rate: bytes per second, K, M, G = KiB, MiB, GiB (powers of
        /// 1024), or bits with kbit, Mbit, Gbit (powers of 1000); e.g.
        /// 100Mbit, 1Gbit/s, 20M.
        #[arg(long, value_name = "RATE", value_parser = crate::rates::parse_rate)]
        link: Option<f64>,
        /// Seconds charged per package installed or removed.
        #[arg(long, value_name = "S", default_value_t = 0.5)]
        seconds_per_package: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the exact versions of SRC's installed packages from apt
    /// mirrors into the package cache (--package-cache DIR, given once):
    /// reads SRC offline, resolves its packages against each mirror's
    /// indexes (first mirror wins), downloads what DIR lacks and checks
    /// every .deb against the index's size and SHA256. Versions no mirror
    /// has are reported and exit 0; an unreachable mirror or a failed
    /// download is an error (non-zero exit, after the report).
    Fetch(crate::mirror_commands::FetchArgs),
}

/// `cbt describe`.
pub fn describe(_config: &Config, args: DescribeArgs) -> anyhow::Result<()> {
    let options = DescribeOptions {
        packages: true,
        manifest: !args.no_manifest,
        verify: !args.no_verify,
    };
    let d = if args.image.is_dir() {
        if args.snapshot.is_some() {
            bail!(
                "{}: --snapshot needs an image, not a directory",
                args.image.display()
            );
        }
        describe_dir(&args.image, &options)?
    } else {
        let spec = ImageSpec {
            path: args.image.clone(),
            snapshot: args.snapshot,
            backing: Default::default(),
        };
        describe_image(open_image(&spec)?, &options).with_context(|| format!("describing {spec}"))?
    };
    if args.json {
        return println_json(&d);
    }
    print_description(&d, args.packages, args.files)
}

/// Warnings shown in the text summary; the rest are counted (all are in
/// the JSON).
const WARNINGS_SHOWN: usize = 10;

/// The text form: a summary a person reads at a glance, with the package
/// list (`packages`) and the file manifest (`files`) only on request: a
/// real guest has hundreds of packages and tens of thousands of files.
fn print_description(d: &Description, packages: bool, files: bool) -> anyhow::Result<()> {
    let mut out = crate::stdout::stdout();
    writeln!(out, "image: {}", d.image)?;
    for f in &d.filesystems {
        let part = f
            .partition
            .map_or("whole image".to_string(), |n| format!("partition {n}"));
        let root = if f.root { " (root)" } else { "" };
        let err = f.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        writeln!(
            out,
            "filesystem: {part} at {}, {} bytes, {}{root}{err}",
            f.offset, f.len, f.kind
        )?;
    }
    let pretty =
        d.os.as_ref()
            .and_then(|o| o.pretty_name.clone())
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
    match (&d.distro, &d.version) {
        (Some(distro), version) => writeln!(
            out,
            "os: {distro} {}{pretty}",
            version.as_deref().unwrap_or("(no version)")
        )?,
        (None, _) => writeln!(out, "os: unknown")?,
    }
    writeln!(
        out,
        "architecture: {}",
        d.architecture.as_deref().unwrap_or("unknown")
    )?;
    writeln!(out, "hostname: {}", d.hostname.as_deref().unwrap_or("(none)"))?;
    let installed = d.installed().count();
    writeln!(
        out,
        "package manager: {}, {} packages ({installed} installed)",
        d.package_manager.as_deref().unwrap_or("none found"),
        d.packages.len()
    )?;
    for p in d.packages.iter().filter(|_| packages) {
        let state = if p.is_installed() {
            String::new()
        } else {
            format!(" [{}]", p.state)
        };
        writeln!(out, "  {} {} {}{state}", p.name, p.version, p.architecture)?;
    }
    writeln!(out, "repositories: {}", d.repositories.len())?;
    for r in &d.repositories {
        writeln!(
            out,
            "  {} {} {} {}  ({})",
            r.kind,
            r.uri,
            r.suite,
            r.components.join(" "),
            r.file
        )?;
    }
    if !d.keys.is_empty() {
        writeln!(out, "keys:")?;
        for k in &d.keys {
            writeln!(out, "  {} ({} bytes)", k.path, k.size)?;
        }
    }
    if let Some(m) = &d.user_data {
        let count = |k: EntryKind| m.files.iter().filter(|f| f.kind == k).count();
        writeln!(
            out,
            "user data: {} bytes in {} files ({} unowned, {} modified package files, {} modified conffiles); \
             package-manager state: {} files, {} bytes",
            m.user_data_bytes,
            m.files.len() - count(EntryKind::PackageState),
            count(EntryKind::Unowned),
            count(EntryKind::Modified),
            count(EntryKind::ModifiedConffile),
            count(EntryKind::PackageState),
            m.package_state_bytes
        )?;
        writeln!(
            out,
            "package files: {} ({} verified, {} without checksum), {} missing, {} unowned symlinks",
            m.package_files,
            m.verified_files,
            m.unverified_files,
            m.missing_files.len(),
            m.symlinks.len()
        )?;
        for f in m.files.iter().filter(|_| files) {
            let kind = match f.kind {
                EntryKind::Unowned => "unowned",
                EntryKind::Modified => "modified",
                EntryKind::ModifiedConffile => "conffile",
                EntryKind::PackageState => "state",
            };
            writeln!(out, "  {kind:<9} {:>12} {} {}", f.size, &f.blake3[..16], f.path)?;
        }
        if !m.specials.is_empty() {
            writeln!(
                out,
                "unowned device nodes, fifos and sockets: {}",
                m.specials.len()
            )?;
        }
        for sp in m.specials.iter().filter(|_| files) {
            writeln!(
                out,
                "  {:<9} {:o} {}:{} {}",
                sp.kind.name(),
                sp.mode,
                sp.uid,
                sp.gid,
                sp.path
            )?;
        }
        // Never shortened: what was not read is not in the counts above.
        for u in &m.unreadable {
            writeln!(out, "not read: {u}")?;
        }
    }
    writeln!(out, "warnings: {}", d.warnings.len())?;
    for w in d.warnings.iter().take(WARNINGS_SHOWN) {
        writeln!(out, "  {w}")?;
    }
    if d.warnings.len() > WARNINGS_SHOWN {
        writeln!(
            out,
            "  ... and {} more (--json lists them all)",
            d.warnings.len() - WARNINGS_SHOWN
        )?;
    }
    let hidden: Vec<&str> = [
        (!packages && !d.packages.is_empty(), "--packages"),
        (
            !files && d.user_data.as_ref().is_some_and(|m| !m.files.is_empty()),
            "--files",
        ),
    ]
    .into_iter()
    .filter_map(|(hidden, flag)| hidden.then_some(flag))
    .collect();
    if !hidden.is_empty() {
        writeln!(out, "(list them with {})", hidden.join(", "))?;
    }
    Ok(())
}

/// `cbt teleport ...`.
pub fn teleport(config: &Config, args: TeleportArgs) -> anyhow::Result<()> {
    match args.command {
        None => crate::teleport_commands::teleport(config, args.transfer),
        Some(TeleportCommand::Plan {
            src,
            snapshot,
            candidates,
            link,
            seconds_per_package,
            json,
        }) => {
            if !(seconds_per_package >= 0.0 && seconds_per_package.is_finite()) {
                crate::bail_usage!("--seconds-per-package must be a non-negative number");
            }
            let spec = ImageSpec {
                path: src,
                snapshot,
                backing: Default::default(),
            };
            let options = TeleportOptions {
                index: config.index.clone(),
                threads: config.threads,
                link_rate: link,
                seconds_per_package,
            };
            let plan =
                teleport_plan(&spec, &candidates, &options).with_context(|| format!("planning {spec}"))?;
            if json {
                println_json(&plan)
            } else {
                print_plan(&plan)
            }
        }
        Some(TeleportCommand::Fetch(args)) => crate::mirror_commands::fetch(config, args),
    }
}

fn print_plan(p: &TeleportPlan) -> anyhow::Result<()> {
    let mut out = crate::stdout::stdout();
    let secs = |s: Option<f64>| s.map(|s| format!(", about {s:.1} s")).unwrap_or_default();
    writeln!(
        out,
        "source: {} ({} {} {}), user data: {} bytes in {} files",
        p.source,
        p.distro.as_deref().unwrap_or("unknown OS"),
        p.version.as_deref().unwrap_or("?"),
        p.architecture.as_deref().unwrap_or("?"),
        p.user_data_bytes,
        p.user_data_files
    )?;
    writeln!(
        out,
        "candidates (same distribution, version and architecture), each with its backing chain, best first:"
    )?;
    writeln!(
        out,
        "  {:>14}  {:>7}  {:>7}  image",
        "bytes to send", "found", "changes"
    )?;
    for c in &p.candidates {
        let found = c
            .found_fraction
            .map_or("abandoned".to_string(), |f| format!("{:.2}%", f * 100.0));
        let bytes = if c.abandoned {
            format!(">{}", c.bytes_missing.saturating_sub(1))
        } else {
            c.bytes_missing.to_string()
        };
        writeln!(
            out,
            "  {bytes:>14}  {found:>7}  {:>7}  {}",
            c.package_changes, c.image
        )?;
    }
    for r in &p.rejected {
        writeln!(out, "  rejected: {}: {}", r.image, r.reason)?;
    }
    if let Some(best) = &p.best {
        writeln!(out, "best: {best}")?;
        writeln!(out, "install ({}):", p.install.len())?;
        for c in &p.install {
            let from = c
                .candidate_version
                .as_deref()
                .map(|v| format!(" (candidate has {v})"))
                .unwrap_or_default();
            let cached = if c.in_package_cache == Some(true) {
                " [in package cache]"
            } else {
                ""
            };
            writeln!(out, "  {}:{} {}{from}{cached}", c.name, c.architecture, c.version)?;
        }
        writeln!(out, "remove ({}):", p.remove.len())?;
        for c in &p.remove {
            writeln!(out, "  {}:{} {}", c.name, c.architecture, c.version)?;
        }
        writeln!(out, "repositories to add ({}):", p.repositories_to_add.len())?;
        for r in &p.repositories_to_add {
            writeln!(
                out,
                "  {} {} {} {}",
                r.kind,
                r.uri,
                r.suite,
                r.components.join(" ")
            )?;
        }
    }
    writeln!(out, "cbt transfer: {} bytes{}", p.cbt.bytes, secs(p.cbt.seconds))?;
    if let Some(t) = &p.teleport {
        writeln!(
            out,
            "teleport: {} bytes (user data {} + package downloads {}; {} packages from the cache, {} package operations){}",
            t.bytes,
            t.user_data_bytes,
            t.package_download_bytes,
            t.packages_from_cache,
            t.package_operations,
            secs(t.seconds)
        )?;
    }
    writeln!(out, "choice: {} ({})", p.choice, p.reason)?;
    if let Some(m) = &p.mirror_fetch {
        let verdict = if m.fetch { "worth trying" } else { "not worth it" };
        writeln!(
            out,
            "cbt teleport with a mirror at the destination: {verdict} ({})",
            m.reason
        )?;
    }
    Ok(())
}

/// `cbt estimate` with package caches: the caches count as one candidate.
pub fn estimate(config: &Config, spec: &ImageSpec, against: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let image = open_image(spec)?;
    let mut options = config.index.clone();
    options.exclude = canonical(&spec.path).into_iter().collect();
    let index = Index::build_with_per_image(against, &options)?;
    let est = estimate_with_packages(image.as_ref(), spec, &index, config.threads)?;
    if json {
        return println_json(&est);
    }
    let e = &est.estimate;
    let pc = &est.package_cache;
    let mut out = crate::stdout::stdout();
    writeln!(
        out,
        "{}: {} bytes, {} non-zero blocks ({} bytes), {} zero blocks",
        e.source, e.image_bytes, e.blocks_nonzero, e.bytes_nonzero, e.blocks_zero
    )?;
    // Each candidate alone: a qcow2 overlay counts only its own layer
    // (its backing files are candidates of their own); `teleport plan`
    // counts a candidate with its whole backing chain.
    writeln!(
        out,
        "{:>8}  {:>14}  candidate (its own layer only, backing files counted separately)",
        "found", "bytes to send"
    )?;
    writeln!(
        out,
        "{:>7.2}%  {:>14}  (union of all {} and the package caches)",
        e.union.found_fraction * 100.0,
        e.union.bytes_missing,
        counted(e.candidates.len() as u64, "image", "images")
    )?;
    let skipped = match pc.archives_skipped + pc.index_files_skipped {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    writeln!(
        out,
        "{:>7.2}%  {:>14}  package caches ({}, {}{skipped})",
        pc.found_fraction * 100.0,
        pc.bytes_missing,
        counted(pc.archives as u64, "archive", "archives"),
        counted(pc.index_files as u64, "index file", "index files")
    )?;
    for c in &e.candidates {
        writeln!(
            out,
            "{:>7.2}%  {:>14}  {}",
            c.found_fraction * 100.0,
            c.bytes_missing,
            c.path.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn canonical(p: &Path) -> Option<PathBuf> {
    p.canonicalize().ok()
}

pub(crate) fn println_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    Ok(crate::stdout::print_json(v)?)
}
