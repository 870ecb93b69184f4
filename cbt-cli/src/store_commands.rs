//! `cbt store push|ls|verify|gc` and `cbt recv s3://...`: the block store
//! on S3-compatible object storage (cbt-net's `store`, docs/STORE.md).
//! Keys come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or a file
//! (`--credentials FILE`), never from the command line; the cloud's
//! instance metadata service is asked only with `--credentials instance`.
//! Without any of them a command fails before it contacts anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use cbt_core::{open_image, ImageSpec, ReconstructOptions};
use cbt_net::store::{self, CredentialSource, Credentials, Store, StoreOptions, StoreUrl};

use crate::cli::{Config, FormatArg};

/// How to reach the store.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreOpts {
    /// An S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default:
    /// AWS_ENDPOINT_URL or AWS_ENDPOINT, else AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, else AWS_DEFAULT_REGION,
    /// else us-east-1).
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
    /// section; mode 600) instead of AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY. `instance` asks the cloud's instance
    /// metadata service (EC2 IMDSv2 at 169.254.169.254, or
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT) instead; it is never asked
    /// otherwise (a file named instance: ./instance). Keys are never taken
    /// from the command line.
    #[arg(long, value_name = "FILE|instance", value_parser = parse_credentials)]
    pub credentials: Option<CredentialsArg>,
}

/// `--credentials FILE|instance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsArg {
    /// An AWS-style credentials file.
    File(PathBuf),
    /// The cloud's instance metadata service.
    Instance,
}

fn parse_credentials(text: &str) -> Result<CredentialsArg, String> {
    match text {
        "" => Err("give a credentials file, or instance".into()),
        "instance" => Ok(CredentialsArg::Instance),
        file => Ok(CredentialsArg::File(file.into())),
    }
}

/// What cbt says when it has no keys and was not told where to find them.
pub const NO_CREDENTIALS: &str = "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
     or --credentials FILE (--credentials instance asks the cloud's instance metadata service)";

/// Where the store's keys come from: `--credentials`, else the two key
/// variables of `env` (both set and not empty), else a usage error. Only
/// these variables are read: nothing in the environment can send cbt to
/// a metadata service or a token exchange the user did not ask for.
fn resolve_credentials(
    flag: Option<&CredentialsArg>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<CredentialSource> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    match flag {
        Some(CredentialsArg::File(f)) => Ok(CredentialSource::Keys(Credentials::read(f)?)),
        Some(CredentialsArg::Instance) => Ok(CredentialSource::Instance {
            metadata_endpoint: set("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        }),
        None => match (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(CredentialSource::Keys(Credentials {
                access_key_id,
                secret_access_key,
                session_token: set("AWS_SESSION_TOKEN"),
            })),
            _ => Err(crate::exit_codes::usage(NO_CREDENTIALS)),
        },
    }
}

impl StoreOpts {
    fn open(&self, config: &Config, url: StoreUrl) -> anyhow::Result<Store> {
        let jobs = self.jobs.unwrap_or(8);
        if !(1..=64).contains(&jobs) {
            crate::bail_usage!("--jobs must be between 1 and 64");
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"));
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                crate::bail_usage!("--endpoint {e:?}: give an http:// or https:// URL");
            }
        }
        let credentials = resolve_credentials(self.credentials.as_ref(), env)?;
        let region = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"));
        let options = StoreOptions {
            credentials,
            endpoint,
            region,
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
    /// List the images in the store at s3://BUCKET/PREFIX. An image whose
    /// manifest is damaged is listed as DAMAGED with the reason, among the
    /// others; the exit code is then 5.
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

/// A store's verification or listing found damaged objects (exit code 5);
/// the objects were listed in the command's output.
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
                crate::stdout::print_json(&images)?;
            } else {
                let mut out = crate::stdout::stdout();
                for i in &images {
                    match (&i.image, &i.damaged) {
                        (Some(m), _) => writeln!(
                            out,
                            "{}\t{} bytes\t{} blocks\t{} packs\t{}",
                            i.name, m.image_bytes, m.blocks, m.packs, m.image_digest
                        )?,
                        (None, damaged) => writeln!(
                            out,
                            "{}\tDAMAGED: {}",
                            i.name,
                            damaged.as_deref().unwrap_or("unreadable manifest")
                        )?,
                    }
                }
            }
            let damaged: Vec<&str> = images
                .iter()
                .filter(|i| i.image.is_none())
                .map(|i| i.name.as_str())
                .collect();
            if !damaged.is_empty() {
                return Err(StoreDamaged(format!(
                    "{}: {} of {} manifests damaged ({}): those images cannot be pulled",
                    s.name(),
                    damaged.len(),
                    images.len(),
                    damaged.join(", ")
                ))
                .into());
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
                // The store once, each problem once (relative to it).
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
                    report.store,
                    counted(report.images, "image", "images"),
                    counted(report.problems.len() as u64, "problem", "problems")
                )?;
                for p in &report.problems {
                    writeln!(out, "  {p}")?;
                }
            }
            if !report.problems.is_empty() {
                return Err(StoreDamaged(format!(
                    "the store is damaged: {} problems (listed in the report)",
                    report.problems.len()
                ))
                .into());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn keys_come_from_the_two_variables_or_the_flag_never_a_guess() {
        let keys = [
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
        ];
        match resolve_credentials(None, env(&keys)).unwrap() {
            CredentialSource::Keys(c) => {
                assert_eq!(
                    (c.access_key_id.as_str(), c.secret_access_key.as_str()),
                    ("id", "secret")
                );
                assert_eq!(c.session_token.as_deref(), Some("token"));
            }
            other => panic!("{other:?}"),
        }
        // Half a pair, empty values, or only what would lead object_store
        // to a credential service: no credentials, a usage error.
        for vars in [
            &[("AWS_ACCESS_KEY_ID", "id")][..],
            &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")][..],
            &[
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn"),
                ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
            ][..],
            &[][..],
        ] {
            let e = resolve_credentials(None, env(vars)).unwrap_err();
            assert_eq!(crate::exit_codes::Exit::of(&e), crate::exit_codes::Exit::Usage);
            assert_eq!(e.to_string(), NO_CREDENTIALS);
        }
        let instance = resolve_credentials(
            Some(&CredentialsArg::Instance),
            env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")]),
        )
        .unwrap();
        assert!(matches!(
            instance,
            CredentialSource::Instance { metadata_endpoint: Some(e) } if e == "http://127.0.0.1:9"
        ));
    }

    #[test]
    fn credentials_flag_is_a_file_or_instance() {
        assert_eq!(parse_credentials("instance"), Ok(CredentialsArg::Instance));
        assert_eq!(
            parse_credentials("./instance"),
            Ok(CredentialsArg::File("./instance".into()))
        );
        assert!(parse_credentials("").is_err());
    }
}
