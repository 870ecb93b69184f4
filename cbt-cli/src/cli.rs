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
    #[command(flatten)]
    pub common: CommonOpts,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct CommonOpts {
    /// Block size in bytes (a power of two from 512 to 1048576).
    #[arg(long, global = true, default_value_t = cbt_core::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// Digest cache directory [default: $XDG_CACHE_HOME/cbt or ~/.cache/cbt].
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write the digest cache.
    #[arg(long, global = true, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Worker threads for hashing and copying (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// File extensions taken as raw images when walking seed directories.
    #[arg(long, global = true, value_delimiter = ',', default_value = "img,raw,bin,iso")]
    pub raw_ext: Vec<String>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Re-read the whole output and check every block before publishing
    /// it (copy, recv, serve). Without it, every block is checked as it is
    /// written and the image digest is folded from those checks.
    #[arg(long, global = true)]
    pub verify_readback: bool,
    /// Directory of .deb package archives whose files also seed blocks, as
    /// do apt index files there (Packages, Release, ... plain or .xz, .gz,
    /// .zst; e.g. a mirror's dists/ or /var/lib/apt/lists). Repeatable;
    /// used by every command that builds an index.
    #[arg(long, global = true, value_name = "DIR")]
    pub package_cache: Vec<PathBuf>,
    /// How send, recv, copy and teleport report progress on stderr.
    #[arg(long, global = true, value_enum, value_name = "HOW", default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
}

/// `--progress`: how progress is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal unless the command prints JSON; else nothing.
    Auto,
    /// A bar (drawn only when stderr is a terminal).
    Bar,
    /// One JSON object per line (phase, bytes_done, bytes_total, local,
    /// sent, wire, rate, eta_seconds), at most 2 a second and a last one
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
    },
    /// Estimate how much of SRC each candidate image (and all together) holds.
    Estimate {
        /// The source image.
        src: PathBuf,
        /// Read this internal snapshot of SRC.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// A candidate image or directory; repeat for more (--against A
        /// --against B).
        #[arg(
            long = "against",
            value_name = "ROOT",
            required_unless_present = "package_cache"
        )]
        against: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build or refresh the digest cache of the images under ROOT... and print totals.
    Index {
        /// Images or directories.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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

impl CommonOpts {
    /// Checks the options and resolves defaults (the cache directory).
    pub fn resolve(&self) -> anyhow::Result<Config> {
        check_block_size(self.block_size)?;
        if self.raw_ext.iter().any(|e| e.is_empty() || e.contains('/')) {
            crate::bail_usage!("--raw-ext: extensions must be non-empty and contain no '/'");
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            Some(match &self.cache {
                Some(d) => d.clone(),
                None => default_cache_dir()
                    .context("cannot find a cache directory; pass --cache DIR or --no-cache")?,
            })
        };
        let index = IndexOptions {
            block_size: self.block_size,
            raw_extensions: self
                .raw_ext
                .iter()
                .map(|e| e.trim_start_matches('.').to_string())
                .collect(),
            cache_dir,
            threads: self.threads,
            exclude: Vec::new(),
            extra_seeds: package_seeds(&self.package_cache),
            stop: None,
            // A local command's seeds are the user's; `cbt serve` confines them.
            backing: Backing::Anywhere,
        };
        Ok(Config {
            index,
            package_caches: self.package_cache.clone(),
            threads: self.threads,
            verify_readback: self.verify_readback,
            progress: crate::progress::Choice::resolve(self.progress),
        })
    }
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
        assert!(o.common.resolve().is_err());
        assert!(parse(["cbt", "estimate", "a.img"]).is_err());
    }
}
