//! `cbt teleport fetch`: fill a package cache with a guest's exact
//! packages from apt mirrors. The options are resolved into a
//! [`FetchJob`] before any work; the work itself is in
//! `cbt_teleport::mirror`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use cbt_core::{open_image, ImageSpec};
use cbt_teleport::{
    describe_dir, describe_image, fetch_packages, guest_dists, index_architectures, packages_to_fetch,
    DescribeOptions, Description, Dist, FetchOptions, FetchReport, Mirror, MirrorOptions,
};

use crate::cli::Config;

/// `cbt teleport fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The image (raw or qcow2) whose packages to fetch, or an unpacked root directory.
    pub src: PathBuf,
    /// Read this internal snapshot of SRC.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Base URL of an apt mirror (http:// or https://, e.g.
    /// `http://deb.debian.org/debian`). Repeatable: each package comes from
    /// the first mirror that has its exact version.
    #[arg(long = "mirror", value_name = "URL", required = true)]
    pub mirrors: Vec<String>,
    /// Suite to read (repeatable) [default: the suites of the guest's apt sources].
    #[arg(long = "suite", value_name = "S")]
    pub suites: Vec<String>,
    /// Components to read [default: those of the guest's apt sources, else main].
    #[arg(long, value_name = "C,C", value_delimiter = ',')]
    pub components: Vec<String>,
    /// Architecture of the indexes to read [default: the guest's, plus any
    /// foreign architecture among its packages].
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Downloads at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Seconds a mirror may stay silent (connecting takes at most 10 s, or
    /// this if shorter).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Print JSON (the fetch report).
    #[arg(long)]
    pub json: bool,
}

/// A resolved `cbt teleport fetch`.
#[derive(Debug, Clone)]
pub struct FetchJob {
    /// The guest image or directory.
    pub src: ImageSpec,
    /// Mirror base URLs, in order.
    pub mirrors: Vec<String>,
    /// Suites from the command line (empty: the guest's).
    pub suites: Vec<String>,
    /// Components from the command line (empty: the guest's).
    pub components: Vec<String>,
    /// Architecture override.
    pub arch: Option<String>,
    /// The package cache to fill.
    pub dest: PathBuf,
    /// Network settings.
    pub network: MirrorOptions,
    /// Download settings.
    pub fetch: FetchOptions,
    /// Print JSON.
    pub json: bool,
}

impl FetchArgs {
    /// Checks the options.
    pub fn resolve(self, config: &Config) -> anyhow::Result<FetchJob> {
        let dest = match config.package_caches.as_slice() {
            [one] => one.clone(),
            [] => {
                crate::bail_usage!("teleport fetch: give the package cache to fill with --package-cache DIR")
            }
            _ => crate::bail_usage!("teleport fetch: give exactly one --package-cache DIR (the one to fill)"),
        };
        if !(1..=64).contains(&self.jobs) {
            crate::bail_usage!("--jobs must be between 1 and 64");
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            crate::bail_usage!("--timeout must be a number of seconds between 0 and 3600");
        }
        let read_timeout = Duration::from_secs_f64(self.timeout);
        Ok(FetchJob {
            src: ImageSpec {
                path: self.src,
                snapshot: self.snapshot,
                backing: Default::default(),
            },
            mirrors: self.mirrors,
            suites: self.suites,
            components: self.components,
            arch: self.arch,
            dest,
            network: MirrorOptions {
                connect_timeout: read_timeout.min(Duration::from_secs(10)),
                read_timeout,
                ..MirrorOptions::default()
            },
            fetch: FetchOptions { jobs: self.jobs },
            json: self.json,
        })
    }
}

/// `cbt teleport fetch`.
pub fn fetch(config: &Config, args: FetchArgs) -> anyhow::Result<()> {
    let job = args.resolve(config)?;
    let desc = describe(&job.src)?;
    let wanted = packages_to_fetch(&desc);
    if wanted.is_empty() {
        eprintln!("warning: {}: no installed packages found", job.src);
    }
    let dists = dists(&job, &desc)?;
    let archs = match &job.arch {
        Some(a) => vec![a.clone()],
        None => index_architectures(&wanted, desc.architecture.as_deref()),
    };
    if archs.is_empty() {
        bail!("{}: the guest's architecture is unknown; pass --arch", job.src);
    }
    let mut mirrors = Vec::with_capacity(job.mirrors.len());
    for url in &job.mirrors {
        let m = Mirror::open(url, &dists, &archs, &job.network)
            .with_context(|| format!("cannot use mirror {url}"))?;
        for w in m.warnings() {
            eprintln!("warning: {w}");
        }
        mirrors.push(m);
    }
    let report = fetch_packages(&mirrors, &wanted, &job.dest, &job.fetch)
        .with_context(|| format!("fetching into {}", job.dest.display()))?;
    if job.json {
        crate::describe_commands::println_json(&report)?;
    } else {
        print_report(&mirrors, &report)?;
    }
    if !report.complete() {
        bail!(
            "{} of {} packages could not be downloaded (see the report)",
            report.failed.len(),
            report.wanted
        );
    }
    Ok(())
}

/// Describes the guest (packages and sources only, no file walk).
fn describe(src: &ImageSpec) -> anyhow::Result<Description> {
    let options = DescribeOptions::packages_only();
    if src.path.is_dir() {
        if src.snapshot.is_some() {
            bail!(
                "{}: --snapshot needs an image, not a directory",
                src.path.display()
            );
        }
        return Ok(describe_dir(&src.path, &options)?);
    }
    describe_image(open_image(src)?, &options).with_context(|| format!("describing {src}"))
}

/// The suites and components to read: the command line's, else the guest's.
fn dists(job: &FetchJob, desc: &Description) -> anyhow::Result<Vec<Dist>> {
    let guest = guest_dists(desc);
    let components_for = |suite: &str| -> Vec<String> {
        if !job.components.is_empty() {
            return job.components.clone();
        }
        guest
            .iter()
            .find(|d| d.suite == suite)
            .map(|d| d.components.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec!["main".to_string()])
    };
    let suites: Vec<String> = if job.suites.is_empty() {
        guest.iter().map(|d| d.suite.clone()).collect()
    } else {
        job.suites.clone()
    };
    if suites.is_empty() {
        bail!(
            "{}: the guest has no apt sources to take suites from; pass --suite",
            job.src
        );
    }
    Ok(suites
        .iter()
        .map(|s| {
            // What the guest keeps of that suite besides Packages.
            let kept = guest.iter().find(|d| d.suite == *s);
            Dist {
                suite: s.clone(),
                components: components_for(s),
                translations: kept.map(|d| d.translations.clone()).unwrap_or_default(),
                in_release: kept.is_some_and(|d| d.in_release),
            }
        })
        .collect())
}

fn print_report(mirrors: &[Mirror], r: &FetchReport) -> anyhow::Result<()> {
    let mut out = crate::stdout::stdout();
    for m in mirrors {
        writeln!(
            out,
            "mirror {}: {} packages in {} index{}",
            m.url(),
            m.len(),
            m.indexes().len(),
            if m.indexes().len() == 1 { "" } else { "es" }
        )?;
    }
    writeln!(out, "package cache: {}", r.dest)?;
    writeln!(out, "wanted: {} packages", r.wanted)?;
    writeln!(
        out,
        "fetched: {} packages, {} bytes",
        r.fetched.len(),
        r.fetched_bytes
    )?;
    writeln!(out, "already present: {}", r.already_present.len())?;
    writeln!(
        out,
        "index files saved (Release, Packages, Translations: they seed the guest's apt lists): {}, {} bytes",
        r.index_files, r.index_bytes
    )?;
    writeln!(
        out,
        "missing from the mirrors (will be sent over the link): {}",
        r.missing.len()
    )?;
    for p in &r.missing {
        writeln!(out, "  {p}")?;
    }
    writeln!(out, "failed: {}", r.failed.len())?;
    for f in &r.failed {
        writeln!(out, "  {}: {}", f.id, f.reason)?;
    }
    writeln!(out, "time: {:.1} s", r.seconds)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::parse;
    use crate::cli::Command;
    use crate::describe_commands::TeleportCommand;

    #[test]
    fn parses_fetch() {
        let o = parse([
            "cbt",
            "teleport",
            "fetch",
            "guest.img",
            "--mirror",
            "http://a/debian",
            "--mirror",
            "http://b/debian",
            "--package-cache",
            "debs",
            "--components",
            "main,contrib",
            "--suite",
            "stable",
            "--jobs",
            "2",
            "--timeout",
            "1.5",
        ])
        .unwrap();
        let config = o.resolve().unwrap();
        let Command::Teleport(t) = o.command else {
            panic!("wrong command")
        };
        let Some(TeleportCommand::Fetch(args)) = t.command else {
            panic!("wrong subcommand")
        };
        let job = args.resolve(&config).unwrap();
        assert_eq!(job.mirrors.len(), 2);
        assert_eq!(job.components, ["main", "contrib"]);
        assert_eq!(job.suites, ["stable"]);
        assert_eq!(job.dest, std::path::PathBuf::from("debs"));
        assert_eq!(job.fetch.jobs, 2);
        assert_eq!(job.network.read_timeout.as_millis(), 1500);
        assert!(parse(["cbt", "teleport", "fetch", "g.img", "--package-cache", "d"]).is_err());
    }

    #[test]
    fn fetch_needs_one_package_cache_and_sane_numbers() {
        for (extra, ok) in [
            (&[][..], false),
            (&["--package-cache", "a", "--package-cache", "b"][..], false),
            (&["--package-cache", "a", "--jobs", "0"][..], false),
            (&["--package-cache", "a", "--timeout", "0"][..], false),
            (&["--package-cache", "a"][..], true),
        ] {
            let mut argv = vec!["cbt", "teleport", "fetch", "g.img", "--mirror", "http://x/"];
            argv.extend_from_slice(extra);
            let o = parse(argv).unwrap();
            let config = o.resolve().unwrap();
            let Command::Teleport(t) = o.command else {
                panic!("wrong command")
            };
            let Some(TeleportCommand::Fetch(args)) = t.command else {
                panic!("wrong subcommand")
            };
            assert_eq!(args.resolve(&config).is_ok(), ok, "{extra:?}");
        }
    }
}
