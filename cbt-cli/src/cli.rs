//! Command-line options (clap derive), resolved into a [`Config`] before any
//! work starts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use cbt_core::{check_block_size, Backing, IndexOptions, OutputFormat, SeedProvider};
use cbt_teleport::PackageCaches;

/// cbt: content-based block transfer for virtual machine disk images.
#[derive(Debug, Parser)]
#[command(name = "cbt", version, about, long_about = None)]
pub struct Opts {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    pub common: CommonOpts,
}

/// Declares an option group twice, with the same options: `$lead` for
/// the top level, before the subcommand (`cbt --cache DIR copy ...`, as
/// scripts and README write it), and `$own` for the subcommands it
/// applies to, which list it in their help and take it after their name
/// too (global within them: `cbt teleport plan ... --package-cache D`).
/// A subcommand's own value wins; lists add up ([`Overlay`]).
macro_rules! option_group {
    (
        $(#[$doc:meta])*
        $lead:ident / $own:ident {
            $(
                $(#[$fdoc:meta])*
                [$($attr:tt)*] $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Args)]
        pub struct $lead {
            $(
                $(#[$fdoc])*
                // An id of its own: clap hands a global argument's value
                // to every command that has an argument of that id.
                #[arg(id = concat!("lead-", stringify!($field)), $($attr)*)]
                pub $field: $ty,
            )*
        }

        $(#[$doc])*
        #[derive(Debug, Clone, Default, Args)]
        pub struct $own {
            $(
                $(#[$fdoc])*
                #[arg(global = true, $($attr)*)]
                pub $field: $ty,
            )*
        }

        impl $own {
            /// These options over `lead`'s.
            pub fn over(self, lead: $lead) -> $own {
                $own {
                    $($field: Overlay::overlay(self.$field, lead.$field),)*
                }
            }
        }
    };
}

/// How a subcommand's value combines with the one given before it.
pub trait Overlay {
    /// `self` (the subcommand's) over `base` (the top level's).
    fn overlay(self, base: Self) -> Self;
}

impl<T> Overlay for Option<T> {
    fn overlay(self, base: Self) -> Self {
        self.or(base)
    }
}

impl<T> Overlay for Vec<T> {
    fn overlay(mut self, mut base: Self) -> Self {
        base.append(&mut self);
        base
    }
}

impl Overlay for bool {
    fn overlay(self, base: Self) -> Self {
        self || base
    }
}

option_group! {
    /// Index options: for the commands that hash images or build an index
    /// of seeds (copy, estimate, index, send, recv, serve, teleport, store,
    /// demo).
    LeadIndexOpts / IndexOpts {
        /// Block size in bytes (a power of two from 512 to 1048576) [default: 4096].
        [long = "block-size", value_name = "BYTES"] block_size: Option<u32>,
        /// Digest cache directory [default: $XDG_CACHE_HOME/cbt or ~/.cache/cbt].
        [long = "cache", value_name = "DIR"] cache: Option<PathBuf>,
        /// Do not read or write the digest cache.
        [long = "no-cache"] no_cache: bool,
        /// Worker threads for hashing and copying (0: one per core) [default: 0].
        [long = "threads", value_name = "N"] threads: Option<usize>,
        /// File extensions taken as raw images when walking seed directories
        /// [default: img,raw,bin,iso].
        [long = "raw-ext", value_delimiter = ',', value_name = "EXT"] raw_ext: Vec<String>,
        /// Directory of .deb package archives whose files also seed blocks, as
        /// do apt index files there (Packages, Release, ... plain or .xz, .gz,
        /// .zst; e.g. a mirror's dists/ or /var/lib/apt/lists). Repeatable.
        [long = "package-cache", value_name = "DIR"] package_cache: Vec<PathBuf>,
    }
}

option_group! {
    /// Read-back: for the commands that publish an image (copy, recv,
    /// serve, teleport, store, demo).
    LeadReadbackOpts / ReadbackOpts {
        /// Re-read the whole output and check every block before publishing
        /// it. Without it, every block is checked as it is written and the
        /// image digest is folded from those checks.
        [long = "verify-readback"] verify_readback: bool,
    }
}

option_group! {
    /// Progress: for the commands that move data (copy, send, recv,
    /// teleport, store, demo).
    LeadProgressOpts / ProgressOpts {
        /// How progress is reported on stderr [default: auto].
        [long = "progress", value_enum, value_name = "HOW"] progress: Option<ProgressArg>,
    }
}

/// Options given before the subcommand: each applies to the commands that
/// take it (their help lists it), and is accepted here for all of them.
#[derive(Debug, Args)]
#[command(next_help_heading = "Options for the commands that take them (also accepted after the command)")]
pub struct CommonOpts {
    #[command(flatten)]
    pub index: LeadIndexOpts,
    #[command(flatten)]
    pub readback: LeadReadbackOpts,
    #[command(flatten)]
    pub progress: LeadProgressOpts,
}

/// The option groups a subcommand takes, flattened into it.
#[derive(Debug, Clone, Default, Args)]
pub struct MovingOpts {
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub readback: ReadbackOpts,
    #[command(flatten)]
    pub progress: ProgressOpts,
}

/// [`MovingOpts`] less read-back: for commands that publish nothing.
#[derive(Debug, Clone, Default, Args)]
pub struct SendingOpts {
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub progress: ProgressOpts,
}

/// [`MovingOpts`] less progress: for the daemon.
#[derive(Debug, Clone, Default, Args)]
pub struct ServingOpts {
    #[command(flatten)]
    pub index: IndexOpts,
    #[command(flatten)]
    pub readback: ReadbackOpts,
}

/// What a subcommand took of the option groups (`None`: that group does
/// not apply to it).
#[derive(Debug, Clone, Default)]
pub struct OwnOpts {
    pub index: Option<IndexOpts>,
    pub readback: Option<ReadbackOpts>,
    pub progress: Option<ProgressOpts>,
}

impl From<&MovingOpts> for OwnOpts {
    fn from(m: &MovingOpts) -> Self {
        OwnOpts {
            index: Some(m.index.clone()),
            readback: Some(m.readback.clone()),
            progress: Some(m.progress.clone()),
        }
    }
}

impl From<&SendingOpts> for OwnOpts {
    fn from(m: &SendingOpts) -> Self {
        OwnOpts {
            index: Some(m.index.clone()),
            progress: Some(m.progress.clone()),
            ..OwnOpts::default()
        }
    }
}

impl From<&ServingOpts> for OwnOpts {
    fn from(m: &ServingOpts) -> Self {
        OwnOpts {
            index: Some(m.index.clone()),
            readback: Some(m.readback.clone()),
            ..OwnOpts::default()
        }
    }
}

impl From<&IndexOpts> for OwnOpts {
    fn from(m: &IndexOpts) -> Self {
        OwnOpts {
            index: Some(m.clone()),
            ..OwnOpts::default()
        }
    }
}

/// `--progress`: how progress is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal unless the command prints JSON; else nothing.
    Auto,
    /// A bar (drawn only when stderr is a terminal).
    Bar,
    /// One JSON object per line (phase, bytes_done, bytes_total, local,
    /// zero, sent, wire, rate, eta_seconds), at most 2 a second and a last one
    /// when the work ends.
    Json,
    /// Nothing.
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconstruct SRC at DST from local seed images, reading only the
    /// missing blocks from SRC (a local stand-in for a transfer).
    Copy {
        /// The source image (raw or qcow2).
        src: PathBuf,
        /// Where to write the copy.
        dst: PathBuf,
        /// Read this internal snapshot of SRC instead of its current state.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// An image or directory (walked recursively) to take blocks from;
        /// repeat for more (--seed A --seed B).
        #[arg(long = "seed", value_name = "ROOT")]
        seeds: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
        /// Accepted for old scripts: not re-reading is now the default
        /// (see --verify-readback).
        #[arg(long, hide = true)]
        no_readback: bool,
        /// Update DST in place when it exists (a raw image or a block
        /// device): only blocks that differ are written, zero blocks become
        /// holes. Killed midway, DST is inconsistent until the same command
        /// completes (a `.DST.cbt-inplace` journal says so).
        #[arg(long)]
        inplace: bool,
        /// Read SRC even if an interrupted in-place update left it partly
        /// old, partly new (its `.NAME.cbt-inplace` journal exists).
        #[arg(long)]
        allow_inconsistent: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shared: MovingOpts,
    },
    /// Estimate how much of SRC each candidate image (and all together) holds.
    Estimate {
        /// The source image.
        src: PathBuf,
        /// Read this internal snapshot of SRC.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// A candidate image or directory; repeat for more (--against A
        /// --against B). Required unless --package-cache is given.
        #[arg(long = "against", value_name = "ROOT")]
        against: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shared: IndexOpts,
    },
    /// Build or refresh the digest cache of the images under ROOT... and print totals.
    Index {
        /// Images or directories.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shared: IndexOpts,
    },
    /// Send an image over the network: to a one-shot receiver
    /// (`cbt recv --listen`) at HOST:PORT, or into a daemon's data
    /// directory as HOST:PORT/NAME.
    Send {
        /// The image to send (raw or qcow2).
        image: PathBuf,
        /// HOST:PORT (a one-shot receiver) or HOST:PORT/NAME (a daemon).
        dest: String,
        /// Send this internal snapshot of IMAGE instead of its current state.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        #[command(flatten)]
        send: crate::net_commands::SendOpts,
        #[command(flatten)]
        net: crate::net_commands::NetOpts,
        #[command(flatten)]
        tls: crate::net_commands::TlsClientOpts,
        /// Ask the daemon to update its existing image of that name in
        /// place, writing only the blocks that differ (it may refuse).
        #[arg(long)]
        inplace: bool,
        /// Replace the daemon's existing image of that name (a daemon
        /// refuses to unless it has overwrite = true).
        #[arg(long, conflicts_with = "inplace")]
        force: bool,
        /// Read IMAGE even if an interrupted in-place update left it partly
        /// old, partly new (its `.NAME.cbt-inplace` journal exists).
        #[arg(long)]
        allow_inconsistent: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shared: SendingOpts,
    },
    /// Receive an image over the network: pull HOST:PORT/NAME from a daemon
    /// into OUT, or (with --listen) wait for one `cbt send` and write OUT.
    Recv {
        /// HOST:PORT/NAME (or s3://BUCKET/PREFIX/NAME, a block store) and
        /// OUT, or only OUT with --listen.
        #[arg(value_name = "[HOST:PORT/NAME] OUT", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Listen on ADDR (e.g. 127.0.0.1:4730) for one sender.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// An image or directory (walked recursively) to take blocks from;
        /// repeat for more (--seed A --seed B).
        #[arg(long = "seed", value_name = "ROOT")]
        seeds: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
        #[command(flatten)]
        net: crate::net_commands::NetOpts,
        #[command(flatten)]
        tls: crate::net_commands::TlsClientOpts,
        #[command(flatten)]
        tls_server: crate::net_commands::TlsServerOpts,
        #[command(flatten)]
        mirror: crate::teleport_commands::MirrorOpts,
        #[command(flatten)]
        store: crate::store_commands::StoreOpts,
        /// Update OUT in place when it exists (a raw image or a block
        /// device): only blocks that differ are written.
        #[arg(long)]
        inplace: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shared: MovingOpts,
    },
    /// Run the transfer daemon: receive pushed images into DIR (seeding from
    /// the seed roots and DIR), serve pulls from the export directory.
    ///
    /// Settings come from the flags and from a TOML file (--config); a flag
    /// given wins over the file.
    Serve {
        /// TOML file with the daemon's settings (keys: listen, data, seeds,
        /// export, secret_file, max_connections, idle_timeout, package_cache,
        /// tls_cert, tls_key, format, compress, bwlimit, mirrors,
        /// mirror_timeout, mirror_jobs, ...).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:4730].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Directory pushed images are written to (and seeded from).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// One more image or directory to take blocks from; repeat for more
        /// (--seed A --seed B).
        #[arg(long = "seed", value_name = "ROOT")]
        seeds: Vec<PathBuf>,
        /// Directory whose images clients may pull (by file name).
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Transfers served at once [default: 8].
        #[arg(long, value_name = "N")]
        max_connections: Option<usize>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9730) [default: none].
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Format of pushed images written to DIR [default: raw].
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        #[command(flatten)]
        send: crate::net_commands::SendOpts,
        #[command(flatten)]
        net: crate::net_commands::NetOpts,
        #[command(flatten)]
        tls_server: crate::net_commands::TlsServerOpts,
        #[command(flatten)]
        mirror: crate::teleport_commands::MirrorOpts,
        #[command(flatten)]
        shared: ServingOpts,
    },
    /// Describe the guest on an image offline: OS, packages, repositories,
    /// hostname and the user-data manifest.
    Describe(crate::describe_commands::DescribeArgs),
    /// Teleport an image: `cbt teleport SRC HOST:PORT[/NAME]` pushes SRC,
    /// `cbt teleport HOST:PORT/NAME OUT` pulls; the sender describes the
    /// guest first and the receiver takes its packages from its package
    /// caches and mirrors (--mirror), so that only the rest crosses the
    /// link. Subcommands plan a rebuild or fill a package cache.
    Teleport(crate::describe_commands::TeleportArgs),
    /// The block store on S3-compatible object storage (docs/STORE.md):
    /// push an image's new blocks once, list, verify, collect garbage;
    /// `cbt recv s3://BUCKET/PREFIX/NAME OUT --seed ROOT` pulls. Keys come
    /// from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)
    /// or --credentials FILE; --credentials instance asks the cloud's
    /// instance metadata service, never contacted otherwise.
    Store {
        #[command(subcommand)]
        command: crate::store_commands::StoreCommand,
        #[command(flatten)]
        shared: MovingOpts,
    },
    /// Run a self-contained demonstration: generate two sample images,
    /// start a daemon on 127.0.0.1 holding the older one, push the newer one
    /// to it over TCP and show what crossed the wire.
    Demo {
        /// Keep the generated files in this directory instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Size of the sample images in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[command(flatten)]
        shared: MovingOpts,
    },
    /// Print a shell completion script to stdout, e.g.
    /// `cbt completions bash > /etc/bash_completion.d/cbt`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the cbt(1) manual page, or with --dir write it and one page
    /// per subcommand (cbt-copy.1, ...) into DIR.
    Man {
        /// Write the pages here (e.g. /usr/local/share/man/man1), creating
        /// it if needed, and list the files written.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

impl From<FormatArg> for OutputFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Raw => OutputFormat::Raw,
            FormatArg::Qcow2 => OutputFormat::Qcow2,
        }
    }
}

/// Warns when the output's name says another format than the one written
/// (`--format qcow2 out.raw`): tools that go by the name would misread it.
pub fn warn_format_mismatch(format: OutputFormat, out: &std::path::Path) {
    let Some(ext) = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    else {
        return;
    };
    let named = match ext.as_str() {
        "qcow2" | "qcow" => "qcow2",
        "raw" | "img" | "bin" => "raw",
        "vmdk" | "vhd" | "vhdx" | "vdi" | "qed" => "a format cbt does not write",
        _ => return,
    };
    let written = match format {
        OutputFormat::Raw => "raw",
        OutputFormat::Qcow2 => "qcow2",
    };
    if named != written {
        tracing::warn!(
            "{}: the name says {named}, but the image is written as {written} (--format {written})",
            out.display()
        );
    }
}

/// Settings shared by every command, checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Index settings (block size, cache, extensions, threads, and the
    /// package caches as extra seeds).
    pub index: IndexOptions,
    /// The `--package-cache` directories (already in `index.extra_seeds`).
    pub package_caches: Vec<PathBuf>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Re-read outputs before publishing them.
    pub verify_readback: bool,
    /// How progress is reported, with `auto` already decided against
    /// whether stderr is a terminal; see [`crate::progress::wanted`].
    pub progress: crate::progress::Choice,
}

impl Command {
    /// The option groups this command takes, as given after its name.
    pub fn own_opts(&self) -> OwnOpts {
        match self {
            Command::Copy { shared, .. } | Command::Recv { shared, .. } => shared.into(),
            Command::Store { shared, .. } | Command::Demo { shared, .. } => shared.into(),
            Command::Teleport(t) => (&t.shared).into(),
            Command::Estimate { shared, .. } | Command::Index { shared, .. } => shared.into(),
            Command::Send { shared, .. } => shared.into(),
            Command::Serve { shared, .. } => shared.into(),
            Command::Describe(_) | Command::Completions { .. } | Command::Man { .. } => OwnOpts::default(),
        }
    }
}

impl Opts {
    /// Checks the options, given before the subcommand or after it, and
    /// resolves defaults (the cache directory).
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let own = self.command.own_opts();
        let lead = &self.common;
        let index = own.index.unwrap_or_default().over(lead.index.clone());
        let readback = own.readback.unwrap_or_default().over(lead.readback.clone());
        let progress = own.progress.unwrap_or_default().over(lead.progress.clone());
        resolve(
            &index,
            readback.verify_readback,
            progress.progress.unwrap_or(ProgressArg::Auto),
        )
    }
}

/// Checks the options and resolves defaults (the cache directory).
fn resolve(o: &IndexOpts, verify_readback: bool, progress: ProgressArg) -> anyhow::Result<Config> {
    let block_size = o.block_size.unwrap_or(cbt_core::DEFAULT_BLOCK_SIZE);
    check_block_size(block_size)?;
    let raw_ext: Vec<String> = if o.raw_ext.is_empty() {
        ["img", "raw", "bin", "iso"].map(String::from).to_vec()
    } else {
        o.raw_ext.clone()
    };
    if raw_ext.iter().any(|e| e.is_empty() || e.contains('/')) {
        crate::bail_usage!("--raw-ext: extensions must be non-empty and contain no '/'");
    }
    if o.no_cache && o.cache.is_some() {
        crate::bail_usage!("--cache and --no-cache cannot be used together");
    }
    let cache_dir = if o.no_cache {
        None
    } else {
        Some(match &o.cache {
            Some(d) => d.clone(),
            None => default_cache_dir()
                .context("cannot find a cache directory; pass --cache DIR or --no-cache")?,
        })
    };
    let threads = o.threads.unwrap_or(0);
    let index = IndexOptions {
        block_size,
        raw_extensions: raw_ext
            .iter()
            .map(|e| e.trim_start_matches('.').to_string())
            .collect(),
        cache_dir,
        threads,
        exclude: Vec::new(),
        extra_seeds: package_seeds(&o.package_cache),
        stop: None,
        // A local command's seeds are the user's; `cbt serve` confines them.
        backing: Backing::Anywhere,
    };
    Ok(Config {
        index,
        package_caches: o.package_cache.clone(),
        threads,
        verify_readback,
        progress: crate::progress::Choice::resolve(progress),
    })
}

/// The index's extra seeds for package-cache directories: none, or one
/// [`PackageCaches`] holding them all.
pub fn package_seeds(dirs: &[PathBuf]) -> Vec<Arc<dyn SeedProvider>> {
    if dirs.is_empty() {
        return Vec::new();
    }
    vec![Arc::new(PackageCaches::new(dirs.to_vec()))]
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("cbt"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("cbt"))
}

/// Parses arguments (separate from `main` so it can be tested).
pub fn parse<I, T>(args: I) -> Result<Opts, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Opts::try_parse_from(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_copy() {
        let o = parse([
            "cbt", "copy", "a.img", "b.img", "--seed", "d1", "--seed", "d2", "--format", "qcow2", "--json",
        ])
        .unwrap();
        match o.command {
            Command::Copy {
                seeds, json, format, ..
            } => {
                assert_eq!(seeds.len(), 2);
                assert!(json);
                assert!(matches!(format, FormatArg::Qcow2));
            }
            _ => panic!("wrong command"),
        }
    }

    #[test]
    fn options_may_come_before_positionals() {
        let o = parse(["cbt", "copy", "--seed", "seeds", "img/b.raw", "out/x.raw"]).unwrap();
        match o.command {
            Command::Copy { src, dst, seeds, .. } => {
                assert_eq!(seeds, [PathBuf::from("seeds")]);
                assert_eq!(
                    (src, dst),
                    (PathBuf::from("img/b.raw"), PathBuf::from("out/x.raw"))
                );
            }
            _ => panic!("wrong command"),
        }
        let o = parse(["cbt", "estimate", "--against", "a", "--against", "b", "src.img"]).unwrap();
        match o.command {
            Command::Estimate { src, against, .. } => {
                assert_eq!(against, [PathBuf::from("a"), PathBuf::from("b")]);
                assert_eq!(src, PathBuf::from("src.img"));
            }
            _ => panic!("wrong command"),
        }
        // The old greedy form now leaves an extra positional: refused, not misread.
        assert!(parse(["cbt", "copy", "a.img", "b.img", "--seed", "d1", "d2"]).is_err());
    }

    #[test]
    fn serve_flags_are_optional_with_a_config_file() {
        let o = parse(["cbt", "serve", "--config", "cbt.toml", "--max-connections", "3"]).unwrap();
        match o.command {
            Command::Serve {
                config,
                data,
                listen,
                max_connections,
                ..
            } => {
                assert_eq!(config, Some(PathBuf::from("cbt.toml")));
                assert_eq!((data, listen, max_connections), (None, None, Some(3)));
            }
            _ => panic!("wrong command"),
        }
    }

    #[test]
    fn rejects_bad_block_size() {
        let o = parse(["cbt", "--block-size", "1000", "index", "x"]).unwrap();
        assert!(o.resolve().is_err());
        let o = parse(["cbt", "index", "x", "--block-size", "1000"]).unwrap();
        assert!(o.resolve().is_err());
        let o = parse(["cbt", "index", "x", "--block-size", "1024", "--no-cache"]).unwrap();
        assert_eq!(o.resolve().unwrap().index.block_size, 1024);
    }

    #[test]
    fn options_apply_where_they_mean_something() {
        // Before the command, as scripts write it, or after it.
        for argv in [
            &[
                "cbt",
                "--package-cache",
                "d",
                "--no-cache",
                "teleport",
                "plan",
                "s",
                "--candidates",
                "c",
            ][..],
            &[
                "cbt",
                "--no-cache",
                "teleport",
                "plan",
                "s",
                "--candidates",
                "c",
                "--package-cache",
                "d",
            ][..],
        ] {
            let c = parse(argv).unwrap().resolve().unwrap();
            assert_eq!(c.package_caches, [PathBuf::from("d")], "{argv:?}");
        }
        // Not after a command they do not apply to.
        assert!(parse(["cbt", "man", "--threads", "2"]).is_err());
        assert!(parse(["cbt", "describe", "x", "--progress", "json"]).is_err());
        assert!(parse(["cbt", "estimate", "a", "--verify-readback"]).is_err());
        assert!(parse(["cbt", "--threads", "2", "man"]).is_ok());
        assert!(parse(["cbt", "--no-cache", "describe", "x", "-v"]).is_ok());
    }
}
