//! `cbt store push|ls|verify|gc` and `cbt recv s3://...`: the block store
//! on S3-compatible object storage (cbt-net's `store`, docs/STORE.md).
//! Credentials come from the environment only (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`): never a flag.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use cbt_core::{open_image, ImageSpec, ReconstructOptions};
use cbt_net::store::{self, Store, StoreOptions, StoreUrl};

use crate::cli::{Config, FormatArg};

/// How to reach the store.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreOpts {
    /// An S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS,
    /// or AWS_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Address buckets by host name (virtual-hosted style) instead of by
    /// path, which is the default with --endpoint.
    #[arg(long)]
    pub virtual_hosted: bool,
    /// Requests at once [default: 8].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Read the keys from this AWS-style credentials file (its [default]
    /// section; mode 600) instead of the environment. Keys are never
    /// taken from the command line.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

impl StoreOpts {
    fn open(&self, config: &Config, url: StoreUrl) -> anyhow::Result<Store> {
        let jobs = self.jobs.unwrap_or(8);
        if !(1..=64).contains(&jobs) {
            crate::bail_usage!("--jobs must be between 1 and 64");
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                crate::bail_usage!("--endpoint {e:?}: give an http:// or https:// URL");
            }
        }
        let credentials = match &self.credentials {
            Some(f) => Some(cbt_net::store::Credentials::read(f)?),
            None => None,
        };
        let options = StoreOptions {
            credentials,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: Some(!self.virtual_hosted),
            cache_dir: config.index.cache_dir.clone(),
            jobs,
        };
        Ok(Store::open(url, options)?)
    }
}

/// `cbt store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Upload IMAGE's blocks that the store lacks, then its manifest, as
    /// s3://BUCKET/PREFIX/NAME. Re-running a killed push resumes it.
    Push {
        /// The image (raw or qcow2).
        image: PathBuf,
        /// s3://BUCKET/PREFIX/NAME.
        url: String,
        #[command(flatten)]
        store: StoreOpts,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// List the images in the store at s3://BUCKET/PREFIX.
    Ls {
        /// s3://BUCKET/PREFIX.
        url: String,
        #[command(flatten)]
        store: StoreOpts,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the store (or one image, s3://BUCKET/PREFIX/NAME with
    /// --image): every pack a manifest names exists and holds its blocks
    /// where the manifest says; with --read, every block decodes to its
    /// digest. Exits 5 if anything is wrong.
    Verify {
        /// s3://BUCKET/PREFIX, or s3://BUCKET/PREFIX/NAME with --image.
        url: String,
        /// The URL names one image.
        #[arg(long)]
        image: bool,
        /// Download every pack and check every block.
        #[arg(long)]
        read: bool,
        #[command(flatten)]
        store: StoreOpts,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the packs that no manifest and no running push names, once
    /// older than --grace.
    Gc {
        /// s3://BUCKET/PREFIX.
        url: String,
        /// Seconds a pack or lease is kept unreferenced (longer than the
        /// longest push) [default: 3600].
        #[arg(long, value_name = "SECS")]
        grace: Option<u64>,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreOpts,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A store's verification found problems (exit code 5).
#[derive(Debug)]
pub struct StoreDamaged(pub String);

impl std::fmt::Display for StoreDamaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreDamaged {}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
}

fn url(text: &str, with_name: bool) -> anyhow::Result<StoreUrl> {
    StoreUrl::parse(text, with_name).map_err(crate::exit_codes::usage)
}

/// Runs `cbt store ...`.
pub fn run(config: &Config, command: StoreCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match command {
        StoreCommand::Push {
            image,
            url: target,
            store,
            json,
        } => {
            let u = url(&target, true)?;
            let name = u.name.clone().unwrap_or_default();
            let s = store.open(config, u)?;
            let img = open_image(&ImageSpec::file(image.clone()))?;
            let options = store::PushOptions {
                block_size: config.index.block_size,
                jobs: s_jobs(&store),
                threads: config.threads,
                ..store::PushOptions::default()
            };
            let report = rt.block_on(store::push(&s, img, &name, &options))?;
            if json {
                return Ok(crate::stdout::print_json(&report)?);
            }
            let mut out = crate::stdout::stdout();
            writeln!(
                out,
                "pushed {} to {} in {:.2}s",
                image.display(),
                report.manifest,
                report.seconds
            )?;
            writeln!(
                out,
                "  blocks: {} ({} zero), {} already stored ({:.1} MB), {} uploaded ({:.1} MB plain)",
                report.blocks_total,
                report.blocks_zero,
                report.blocks_already_stored,
                report.bytes_already_stored as f64 / 1e6,
                report.blocks_uploaded,
                report.bytes_uploaded_plain as f64 / 1e6
            )?;
            writeln!(
                out,
                "  uploaded: {} bytes in {} packs; {} requests",
                report.bytes_uploaded, report.packs_uploaded, report.requests
            )?;
            Ok(())
        }
        StoreCommand::Ls {
            url: target,
            store,
            json,
        } => {
            let s = store.open(config, url(&target, false)?)?;
            let images = rt.block_on(store::list_images(&s))?;
            if json {
                return Ok(crate::stdout::print_json(&images)?);
            }
            let mut out = crate::stdout::stdout();
            for i in images {
                writeln!(
                    out,
                    "{}\t{} bytes\t{} blocks\t{} packs\t{}",
                    i.name, i.image_bytes, i.blocks, i.packs, i.image_digest
                )?;
            }
            Ok(())
        }
        StoreCommand::Verify {
            url: target,
            image,
            read,
            store,
            json,
        } => {
            let u = url(&target, image)?;
            let only = u.name.clone();
            let s = store.open(config, u)?;
            let report = rt.block_on(store::verify(&s, only.as_deref(), read, s_jobs(&store)))?;
            if json {
                crate::stdout::print_json(&report)?;
            } else {
                let mut out = crate::stdout::stdout();
                use crate::stdout::counted;
                // Without --read no block is read: say what was checked.
                let checked = if read {
                    format!(
                        "{} read, {} read and hashed",
                        counted(report.packs, "pack", "packs"),
                        counted(report.blocks_checked, "block", "blocks")
                    )
                } else {
                    "manifests checked against the pack indexes; block contents not read (--read reads and hashes them)"
                        .to_string()
                };
                writeln!(
                    out,
                    "{}: {}: {checked}; {}",
                    s.name(),
                    counted(report.images, "image", "images"),
                    counted(report.problems.len() as u64, "problem", "problems")
                )?;
                for p in &report.problems {
                    writeln!(out, "  {p}")?;
                }
            }
            if !report.problems.is_empty() {
                return Err(StoreDamaged(format!("{}: {}", s.name(), report.problems.join("; "))).into());
            }
            Ok(())
        }
        StoreCommand::Gc {
            url: target,
            grace,
            dry_run,
            store,
            json,
        } => {
            let s = store.open(config, url(&target, false)?)?;
            let grace = Duration::from_secs(grace.unwrap_or(3600));
            let report = rt.block_on(store::gc(&s, grace, dry_run, s_jobs(&store)))?;
            if json {
                return Ok(crate::stdout::print_json(&report)?);
            }
            let mut out = crate::stdout::stdout();
            if report.pushes_running > 0 {
                writeln!(
                    out,
                    "{}: {} pushes running: nothing deleted ({} unreferenced packs left for a later gc)",
                    s.name(),
                    report.pushes_running,
                    report.deferred
                )?;
                return Ok(());
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            writeln!(
                out,
                "{}: {} packs, {} referenced, {} young kept; {verb} {} ({} bytes) and {} stale leases",
                s.name(),
                report.packs,
                report.referenced,
                report.kept_young,
                report.deleted,
                report.deleted_bytes,
                report.stale_leases
            )?;
            Ok(())
        }
    }
}

fn s_jobs(store: &StoreOpts) -> usize {
    store.jobs.unwrap_or(8)
}

/// `cbt recv s3://BUCKET/PREFIX/NAME OUT --seed ROOT...`.
pub fn recv(
    config: &Config,
    source: &str,
    out: &Path,
    seeds: &[PathBuf],
    format: FormatArg,
    store: &StoreOpts,
    json: bool,
) -> anyhow::Result<()> {
    let u = url(source, true)?;
    let name = u.name.clone().unwrap_or_default();
    if out.is_dir() {
        bail!(
            "{}: is a directory; give the path of the image to write",
            out.display()
        );
    }
    for s in seeds {
        if !s.exists() {
            bail!("{}: seed root does not exist", s.display());
        }
    }
    let s = store.open(config, u)?;
    let rt = runtime()?;
    let options = ReconstructOptions {
        format: format.into(),
        threads: config.threads,
        verify_readback: config.verify_readback,
        ..ReconstructOptions::default()
    };
    let report = store::pull(&s, rt.handle(), &name, out, seeds, &config.index, &options)?;
    if json {
        return Ok(crate::stdout::print_json(&report)?);
    }
    let e = &report.engine;
    let mut o = crate::stdout::stdout();
    writeln!(
        o,
        "received {source} into {} in {:.2}s",
        out.display(),
        report.total_seconds
    )?;
    writeln!(
        o,
        "  blocks: {} ({} zero, {} local, {} from the store)",
        e.blocks_total, e.blocks_zero, e.blocks_local, e.blocks_missing
    )?;
    writeln!(
        o,
        "  downloaded: {} bytes in {} requests; image digest {}",
        report.bytes_downloaded, report.requests, e.image_digest
    )?;
    Ok(())
}
