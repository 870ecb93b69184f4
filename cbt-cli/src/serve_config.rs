//! `cbt serve --config FILE`: the daemon's settings in a TOML file, merged
//! with the command line into one resolved [`ServeSettings`] before the
//! daemon starts.
//!
//! ```toml
//! listen = "0.0.0.0:4730"
//! data = "/var/lib/cbt/incoming"
//! seeds = ["/var/lib/libvirt/images"]
//! export = "/var/lib/libvirt/images"
//! secret_file = "/etc/cbt/secret"
//! max_connections = 8
//! idle_timeout = 120            # seconds
//! package_cache = ["/var/cache/apt/archives"]
//! tls_cert = "/etc/cbt/cert.pem"
//! tls_key = "/etc/cbt/key.pem"
//! format = "raw"                # or "qcow2"
//! compress = "auto"             # or "none", "zstd:LEVEL"
//! bwlimit = "50M"               # bytes per second, per pull
//! max_partial_bytes = 68719476736  # partial outputs kept for resumes, in all
//! partial_max_age = 86400       # seconds; older partial outputs are removed
//! max_unauthenticated = 64      # connections still in their handshake
//! handshake_timeout = 5         # seconds for a new connection to authenticate
//! allow_inplace = true          # accept `cbt send --inplace` (update in place)
//! overwrite = false             # let a plain push replace an existing image
//!                               # (false: only `cbt send --force` may)
//! metrics = "127.0.0.1:9730"    # serve Prometheus metrics at /metrics
//! mirrors = ["http://deb.debian.org/debian"]  # apt mirrors for teleported guests' packages,
//!                               # fetched into the first package_cache (by default,
//!                               # with no package_cache: DATA/.cbt-package-cache)
//! mirror_timeout = 30           # seconds a mirror may stay silent
//! mirror_jobs = 4               # package downloads at once
//! ```
//!
//! Precedence: a flag given on the command line, then (for the secret) the
//! `CBT_SECRET_FILE` environment variable, then the file, then the default.
//! A list given on the command line (`--seed`, `--package-cache`) replaces
//! the file's. Relative paths in the file are relative to the file's
//! directory. An unknown key or a value of the wrong type is an error that
//! names the file, the line and the key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::Deserialize;

use cbt_core::OutputFormat;

use crate::cli::FormatArg;

/// The address `cbt serve` listens on by default (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4730";
/// Transfers served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// Seconds of silence after which a peer is dropped, by default.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 120;
/// Partial outputs kept for resumes, in all, by default (64 GiB).
pub const DEFAULT_MAX_PARTIAL_BYTES: u64 = 64 << 30;
/// Age after which a kept partial output is removed, by default (a day).
pub const DEFAULT_PARTIAL_MAX_AGE: u64 = 24 * 3600;
/// The package cache mirrors fill when none is given: under the data
/// directory, hidden (so it is neither an image the daemon seeds from or
/// serves, nor a name a peer can push to; see `cbt_net::names`).
pub const DEFAULT_PACKAGE_CACHE: &str = ".cbt-package-cache";

/// Unauthenticated connections at once, by default.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;
/// Seconds a new connection has to authenticate, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: u64 = 5;
/// Compression of blocks sent, by default.
pub const DEFAULT_COMPRESS: &str = "auto";

/// The TOML file, as written (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    listen: Option<String>,
    data: Option<PathBuf>,
    #[serde(alias = "seed")]
    seeds: Option<Vec<PathBuf>>,
    export: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    max_connections: Option<usize>,
    idle_timeout: Option<u64>,
    package_cache: Option<Vec<PathBuf>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    format: Option<String>,
    compress: Option<String>,
    bwlimit: Option<String>,
    max_partial_bytes: Option<u64>,
    partial_max_age: Option<u64>,
    max_unauthenticated: Option<usize>,
    handshake_timeout: Option<u64>,
    allow_inplace: Option<bool>,
    overwrite: Option<bool>,
    metrics: Option<String>,
    mirrors: Option<Vec<String>>,
    mirror_timeout: Option<f64>,
    mirror_jobs: Option<usize>,
}

impl ServeFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<ServeFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut file = ServeFile::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        file.relative_to(base);
        Ok(file)
    }

    /// Parses the file's text; errors name `path`, the line and the key.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<ServeFile> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count());
            let message = e.message().trim_end();
            // A bad key or value in the file is a usage error (exit 2), like a bad flag.
            match line {
                Some(l) => crate::exit_codes::usage(format!("{}:{l}: {message}", path.display())),
                None => crate::exit_codes::usage(format!("{}: {message}", path.display())),
            }
        })
    }

    fn relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut self.data,
            &mut self.export,
            &mut self.secret_file,
            &mut self.tls_cert,
            &mut self.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for list in [&mut self.seeds, &mut self.package_cache].into_iter().flatten() {
            list.iter_mut().for_each(fix);
        }
    }
}

/// What the command line said (None or empty: not given).
#[derive(Debug, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub seeds: Vec<PathBuf>,
    pub export: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<u64>,
    pub metrics: Option<String>,
    pub package_cache: Vec<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub format: Option<FormatArg>,
    pub compress: Option<String>,
    pub bwlimit: Option<String>,
    pub mirrors: Vec<String>,
    pub mirror_timeout: Option<f64>,
    pub mirror_jobs: Option<usize>,
}

/// The daemon's settings, resolved: every default applied, every path
/// checked to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// Address to listen on.
    pub listen: String,
    /// Where pushed images are written (an existing directory).
    pub data: PathBuf,
    /// More seed roots for pushed images.
    pub seeds: Vec<PathBuf>,
    /// Directory of images that may be pulled.
    pub export: Option<PathBuf>,
    /// The shared secret's file.
    pub secret_file: Option<PathBuf>,
    /// Transfers served at once (at least 1).
    pub max_connections: usize,
    /// Seconds of silence after which a peer is dropped (at least 5).
    pub idle_timeout: u64,
    /// Directories of .deb archives (and apt index files) that seed blocks
    /// too; mirrors fill the first. With mirrors and none given,
    /// `DATA/`[`DEFAULT_PACKAGE_CACHE`].
    pub package_cache: Vec<PathBuf>,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Format of pushed images.
    pub format: OutputFormat,
    /// Compression of blocks sent (`auto`, `none`, `zstd`, `zstd:LEVEL`).
    pub compress: String,
    /// Rate limit per pull, as given (`50M`).
    pub bwlimit: Option<String>,
    /// Bytes of partial outputs kept for resumes, in all.
    pub max_partial_bytes: u64,
    /// Seconds after which a partial output is removed.
    pub partial_max_age: u64,
    /// Connections still in their handshake, at most (the oldest is
    /// dropped for a new one).
    pub max_unauthenticated: usize,
    /// Seconds a new connection has to authenticate.
    pub handshake_timeout: u64,
    /// Accept pushes that update an existing image in place.
    pub allow_inplace: bool,
    /// Let a plain push replace an existing image (else only `--force`).
    pub overwrite: bool,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<String>,
    /// apt mirrors for teleported guests' packages.
    pub mirrors: Vec<String>,
    /// Seconds a mirror may stay silent.
    pub mirror_timeout: f64,
    /// Package downloads at once.
    pub mirror_jobs: usize,
}

impl ServeSettings {
    /// Merges the flags over the file (if any) and the environment's
    /// `CBT_SECRET_FILE`, and checks the result.
    pub fn resolve(
        flags: ServeFlags,
        file: Option<(&Path, ServeFile)>,
        env_secret: Option<PathBuf>,
    ) -> anyhow::Result<ServeSettings> {
        let (origin, f) = match file {
            Some((p, f)) => (format!("{}", p.display()), f),
            None => ("the command line".to_string(), ServeFile::default()),
        };
        let format = match (flags.format, f.format.as_deref()) {
            (Some(x), _) => x,
            (None, Some(s)) => FormatArg::from_str(s, true)
                .map_err(|_| anyhow::anyhow!("{origin}: format = {s:?}: expected \"raw\" or \"qcow2\""))?,
            (None, None) => FormatArg::Raw,
        };
        let Some(data) = flags.data.or(f.data) else {
            bail!("give the data directory: --data DIR, or data = \"DIR\" in a --config file");
        };
        let list = |flag: Vec<PathBuf>, file: Option<Vec<PathBuf>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let tls_cert = flags.tls_cert.or(f.tls_cert);
        let tls_key = flags.tls_key.or(f.tls_key);
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => bail!("a TLS certificate needs its key: --tls-key FILE (or tls_key)"),
            (None, Some(_)) => bail!("a TLS key needs its certificate: --tls-cert FILE (or tls_cert)"),
        };
        let mirrors = if flags.mirrors.is_empty() {
            f.mirrors.unwrap_or_default()
        } else {
            flags.mirrors
        };
        let mut package_cache = list(flags.package_cache, f.package_cache);
        if package_cache.is_empty() && !mirrors.is_empty() {
            package_cache.push(data.join(DEFAULT_PACKAGE_CACHE));
        }
        let s = ServeSettings {
            listen: flags
                .listen
                .or(f.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            data,
            seeds: list(flags.seeds, f.seeds),
            export: flags.export.or(f.export),
            secret_file: flags.secret_file.or(env_secret).or(f.secret_file),
            max_connections: flags
                .max_connections
                .or(f.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: flags
                .idle_timeout
                .or(f.idle_timeout)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            package_cache,
            tls,
            format: format.into(),
            compress: flags
                .compress
                .or(f.compress)
                .unwrap_or_else(|| DEFAULT_COMPRESS.to_string()),
            bwlimit: flags.bwlimit.or(f.bwlimit),
            max_partial_bytes: f.max_partial_bytes.unwrap_or(DEFAULT_MAX_PARTIAL_BYTES),
            partial_max_age: f.partial_max_age.unwrap_or(DEFAULT_PARTIAL_MAX_AGE),
            max_unauthenticated: f.max_unauthenticated.unwrap_or(DEFAULT_MAX_UNAUTHENTICATED),
            handshake_timeout: f.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            allow_inplace: f.allow_inplace.unwrap_or(true),
            overwrite: f.overwrite.unwrap_or(false),
            metrics: flags.metrics.or(f.metrics),
            mirrors,
            mirror_timeout: flags.mirror_timeout.or(f.mirror_timeout).unwrap_or(30.0),
            mirror_jobs: flags.mirror_jobs.or(f.mirror_jobs).unwrap_or(4),
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.data.is_dir() {
            bail!("{}: the data directory does not exist", self.data.display());
        }
        if let Some(e) = &self.export {
            if !e.is_dir() {
                bail!("{}: the export directory does not exist", e.display());
            }
        }
        // The first package cache is created when mirrors fill it.
        let filled = usize::from(!self.mirrors.is_empty());
        for s in self.seeds.iter().chain(self.package_cache.iter().skip(filled)) {
            if !s.exists() {
                bail!("{}: seed root does not exist", s.display());
            }
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.max_unauthenticated == 0 {
            bail!("max_unauthenticated must be at least 1");
        }
        if !(1..=300).contains(&self.handshake_timeout) {
            bail!("handshake_timeout must be between 1 and 300 seconds");
        }
        if self.idle_timeout < 5 {
            bail!("the idle timeout must be at least 5 seconds");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> anyhow::Result<ServeFile> {
        ServeFile::parse(text, Path::new("/etc/cbt.toml"))
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let e = file("listen = \"127.0.0.1:1\"\ncolour = \"blue\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/cbt.toml:2: "), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = file("max_connections = \"eight\"\n").unwrap_err().to_string();
        assert!(e.contains("/etc/cbt.toml:1") && e.contains("invalid type"), "{e}");
        let e = file("data = \n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/cbt.toml:1"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_and_lists_replace() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = dir.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (data, other, s1, s2) = (d("data"), d("other"), d("s1"), d("s2"));
        let text = "listen = \"0.0.0.0:9\"\ndata = \"data\"\nseed = [\"s1\"]\nmax_connections = 2\n\
                    idle_timeout = 60\nformat = \"qcow2\"\ncompress = \"none\"\nsecret_file = \"secret\"\n\
                    overwrite = true\nmetrics = \"127.0.0.1:9\"\n";
        let path = dir.path().join("cbt.toml");
        std::fs::write(&path, text).unwrap();

        // The file alone: its paths are relative to its directory.
        let f = ServeFile::load(&path).unwrap();
        let s = ServeSettings::resolve(ServeFlags::default(), Some((&path, f)), None).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9");
        assert_eq!(s.data, data);
        assert_eq!(s.seeds, vec![s1.clone()]);
        assert_eq!((s.max_connections, s.idle_timeout), (2, 60));
        assert_eq!(s.format, OutputFormat::Qcow2);
        assert_eq!(s.compress, "none");
        assert_eq!(s.secret_file, Some(dir.path().join("secret")));
        assert_eq!((s.overwrite, s.metrics.as_deref()), (true, Some("127.0.0.1:9")));

        // Flags win; a list on the command line replaces the file's.
        let flags = ServeFlags {
            data: Some(other.clone()),
            seeds: vec![s2.clone()],
            max_connections: Some(5),
            metrics: Some("127.0.0.1:10".into()),
            format: Some(FormatArg::Raw),
            ..ServeFlags::default()
        };
        let f = ServeFile::load(&path).unwrap();
        let s = ServeSettings::resolve(flags, Some((&path, f)), Some("env-secret".into())).unwrap();
        assert_eq!((s.data, s.seeds), (other, vec![s2]));
        assert_eq!((s.max_connections, s.idle_timeout), (5, 60));
        assert_eq!(s.format, OutputFormat::Raw);
        assert_eq!(s.secret_file, Some(PathBuf::from("env-secret")));
        assert_eq!(s.listen, "0.0.0.0:9");
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:10"));
    }

    #[test]
    fn the_example_config_documents_every_key() {
        let text = include_str!("../../contrib/cbt.toml");
        file(text).unwrap();
        // With every example line enabled it still parses: the keys exist
        // and the values have the right types.
        let enabled: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let f = file(&enabled).unwrap();
        assert!(f.metrics.is_some() && f.overwrite.is_some(), "{f:?}");
        // Every key the parser knows (it lists them for an unknown one).
        let e = file("no_such_key = 1\n").unwrap_err().to_string();
        let known: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        assert!(known.len() > 20, "{e}");
        for key in known.iter().filter(|k| **k != "seed") {
            assert!(
                enabled.contains(&format!("\n{key} = ")),
                "{key} is not in contrib/cbt.toml"
            );
        }
    }

    #[test]
    fn defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let flags = ServeFlags {
            data: Some(dir.path().to_path_buf()),
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(flags, None, None).unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!((s.overwrite, s.metrics.as_deref()), (false, None));
        assert_eq!(s.tls, None);
        let e = ServeSettings::resolve(ServeFlags::default(), None, None).unwrap_err();
        assert!(e.to_string().contains("--data DIR"), "{e}");
        let flags = ServeFlags {
            data: Some(dir.path().to_path_buf()),
            tls_cert: Some("c.pem".into()),
            ..ServeFlags::default()
        };
        let e = ServeSettings::resolve(flags, None, None).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        let f = file("data = \"/nonexistent/cbt\"\nformat = \"vmdk\"\n").unwrap();
        let e =
            ServeSettings::resolve(ServeFlags::default(), Some((Path::new("x.toml"), f)), None).unwrap_err();
        assert!(e.to_string().contains("x.toml: format"), "{e}");
    }

    #[test]
    fn mirrors_without_a_package_cache_fill_one_under_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let mirrored = |package_cache: Vec<PathBuf>| ServeFlags {
            data: Some(data.clone()),
            mirrors: vec!["http://deb.example/debian".into()],
            package_cache,
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(mirrored(Vec::new()), None, None).unwrap();
        assert_eq!(s.package_cache, [data.join(".cbt-package-cache")]);
        // Not created yet (the daemon creates the first cache it fills),
        // and hidden: no peer can name it as an image.
        assert!(!s.package_cache[0].exists());
        assert!(cbt_net::names::check_name(DEFAULT_PACKAGE_CACHE).is_err());
        // A cache given (flag or file) is used instead; no mirror, no cache.
        let own = dir.path().join("debs");
        let s = ServeSettings::resolve(mirrored(vec![own.clone()]), None, None).unwrap();
        assert_eq!(s.package_cache, [own]);
        let f =
            file("mirrors = [\"http://deb.example/debian\"]\npackage_cache = [\"/var/cache/x\"]\n").unwrap();
        let bare = || ServeFlags {
            data: Some(data.clone()),
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(bare(), Some((Path::new("/etc/cbt.toml"), f)), None).unwrap();
        assert_eq!(s.package_cache, [PathBuf::from("/var/cache/x")]);
        let s = ServeSettings::resolve(bare(), None, None).unwrap();
        assert!(s.package_cache.is_empty());
    }
}
