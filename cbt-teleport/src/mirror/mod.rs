//! Fetching a guest's exact packages from an apt mirror into a package
//! cache (a directory of `.deb` files that [`crate::PackageCaches`] then
//! uses as seeds).
//!
//! A [`Mirror`] is opened on a base URL (`http://deb.debian.org/debian`)
//! for some suites, components and architectures: it reads
//! `dists/<suite>/Release`, takes its `SHA256` section, fetches each
//! `<component>/binary-<arch>/Packages` (`.xz`, `.gz` or plain, whichever
//! the Release lists and the mirror serves), checks its size and SHA256
//! against the Release, and keeps a map (package, version, architecture) →
//! (`Filename`, `Size`, `SHA256`). `Architecture: all` packages are listed
//! in every `binary-<arch>` index and found the same way.
//!
//! [`fetch_packages`] then downloads the wanted `.deb`s not already in the
//! cache, with a few worker threads, each into a temporary file that is
//! checked against `Size` and `SHA256`, synced, and only then renamed to
//! the name apt gives it (`name_version_arch.deb`, `:` written `%3a`).
//!
//! **No GPG check.** The Release file's signature is not verified: the
//! packages fetched here are only ever used as *seeds*, and every block
//! they yield is checked against the source image's own digests before it
//! is written, so a wrong or malicious mirror can cost time (blocks that
//! do not match are sent over the link instead) but never corrupt an
//! image. The Release digests still catch truncated and stale indexes.
//!
//! Everything read from the network is bounded ([`MirrorLimits`]) and every
//! path from an index is checked before use (relative, no `..`, under
//! `pool/`).
//!
//! ```text
//!  Mirror::open ── Release ──> SHA256 list ── Packages.{xz,gz,} ──> (name, version, arch) → PoolEntry
//!  fetch_packages: wanted ─> [bounded channel] ─> N workers: GET → temp file (+SHA256) → fsync → rename
//! ```

mod fetch;
mod http;
mod index;
mod wanted;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

pub(crate) use fetch::intact;
pub use fetch::{fetch_packages, FailedPackage, FetchOptions, FetchReport, FetchedPackage};
pub use index::{
    check_pool_path, check_relative_path, parse_packages, parse_packages_from, parse_packages_index,
    parse_release, IndexCodec, PoolEntry, ReleaseFile, Sha256Digest, SkippedStanzas, MAX_STANZA,
};

pub use wanted::{guest_dists, index_architectures, packages_to_fetch, Dist, PackageId};

use http::Http;

/// Errors of the mirror client. Each names the URL (or local file) concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// The request could not be made or the body not read: no route, refused
    /// connection, DNS failure, timeout, TLS error, too many redirects.
    #[error("{url}: {source}")]
    Transfer {
        /// The URL requested.
        url: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url}: HTTP status {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body arrived slower than the minimum rate
    /// ([`MirrorOptions::min_rate`]): a mirror that drips bytes.
    #[error("{url}: too slow: {received} bytes in {seconds:.1} s, below the minimum of {min_rate} bytes/s")]
    TooSlow {
        /// The URL requested.
        url: String,
        /// Bytes received before giving up.
        received: u64,
        /// Seconds since the response headers.
        seconds: f64,
        /// The minimum rate, in bytes per second.
        min_rate: u64,
    },
    /// The body is larger than allowed.
    #[error("{url}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The content does not match the size or digest it was listed with.
    #[error("{url}: {reason}")]
    Mismatch {
        /// The URL requested.
        url: String,
        /// What differs.
        reason: String,
    },
    /// An index could not be parsed or is unusable.
    #[error("{url}: {reason}")]
    Malformed {
        /// The URL of the index.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The mirror holds no usable Packages index for what was asked.
    #[error("{url}: {reason}")]
    NoIndex {
        /// The mirror's base URL.
        url: String,
        /// What was tried.
        reason: String,
    },
    /// An invalid option (a URL that is not http(s), an unsafe suite name).
    #[error("invalid mirror configuration: {0}")]
    Config(String),
    /// A local file error (the package cache).
    #[error(transparent)]
    Local(#[from] cbt_core::Error),
}

impl MirrorError {
    /// True for an HTTP 404 or 410 (the file is not on the mirror).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            MirrorError::Status {
                status: 404 | 410,
                ..
            }
        )
    }
}

/// Most bytes accepted from a mirror, per kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorLimits {
    /// A `Release` file (real ones are well under 1 MiB).
    pub release: u64,
    /// A `Packages` file, compressed or decompressed (Debian's main amd64
    /// index is about 100 MiB decompressed).
    pub packages: u64,
    /// A `.deb` (never more than the `Size` its index gives either).
    pub deb: u64,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        MirrorLimits {
            release: 16 << 20,
            packages: 512 << 20,
            deb: 2 << 30,
        }
    }
}

/// The default [`MirrorOptions::min_rate`]: 64 KiB/s. A mirror slower
/// than that on average is not worth waiting for (a teleport sends the
/// package's blocks over its own link instead), and it still gives a
/// 2 MiB package 32 s beyond the grace period, a 100 MiB one 27 minutes.
pub const DEFAULT_MIN_RATE: u64 = 64 << 10;

/// How the mirror client talks to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for each read (the server stalling longer fails the
    /// request), for the response headers as a whole, and the grace
    /// period before [`min_rate`](Self::min_rate) applies.
    pub read_timeout: Duration,
    /// Slowest average rate a body may arrive at once `read_timeout` has
    /// passed, in bytes per second (0: none): a download of `N` bytes has
    /// at most `read_timeout + N / min_rate`. Default
    /// [`DEFAULT_MIN_RATE`]; see the `http` module's doc for why.
    pub min_rate: u64,
    /// Redirects followed per request.
    pub max_redirects: u32,
    /// Size limits.
    pub limits: MirrorLimits,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_rate: DEFAULT_MIN_RATE,
            max_redirects: 5,
            limits: MirrorLimits::default(),
        }
    }
}

/// An apt mirror with its Packages indexes loaded.
#[derive(Debug)]
pub struct Mirror {
    url: String,
    http: Http,
    options: MirrorOptions,
    packages: HashMap<PackageId, PoolEntry>,
    indexes: Vec<String>,
    /// The Release and Packages files as published, checked: apt-lists
    /// file name (URL without scheme, `/` as `_`) and bytes.
    index_files: Vec<(String, Vec<u8>)>,
    skipped: SkippedStanzas,
    warnings: Vec<String>,
    /// Time spent downloading index files (not parsing them).
    download_time: Duration,
}

impl Mirror {
    /// Opens the mirror at `url` (`http://` or `https://`) and loads the
    /// Packages indexes of `dists` × `architectures`.
    ///
    /// A suite whose Release the mirror does not have (404), or an index
    /// its Release does not list, is a warning; failing to reach the
    /// mirror, a Release or index that does not match its digests, or no
    /// index loaded at all is an error.
    pub fn open(
        url: &str,
        dists: &[Dist],
        architectures: &[String],
        options: &MirrorOptions,
    ) -> Result<Mirror, MirrorError> {
        let base = url.trim_end_matches('/').to_string();
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|s| base.len() > s.len() && base[..s.len()].eq_ignore_ascii_case(s));
        if !scheme_ok || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(MirrorError::Config(format!(
                "{url:?}: a mirror URL must start with http:// or https://"
            )));
        }
        for d in dists {
            check_word(&d.suite, "suite", true)?;
            for c in &d.components {
                check_word(c, "component", true)?;
            }
        }
        for a in architectures {
            check_word(a, "architecture", false)?;
        }
        let mut m = Mirror {
            url: base,
            http: Http::new(options),
            options: *options,
            packages: HashMap::new(),
            indexes: Vec::new(),
            index_files: Vec::new(),
            skipped: SkippedStanzas::default(),
            warnings: Vec::new(),
            download_time: Duration::ZERO,
        };
        for d in dists {
            m.load_dist(d, architectures)?;
        }
        if m.indexes.is_empty() {
            let tried: Vec<String> = dists
                .iter()
                .map(|d| format!("{} [{}]", d.suite, d.components.join(",")))
                .collect();
            let mut reason = format!(
                "no Packages index found for {} (architectures {})",
                if tried.is_empty() {
                    "no suite".to_string()
                } else {
                    tried.join(", ")
                },
                architectures.join(",")
            );
            if let Some(w) = m.warnings.first() {
                reason += &format!("; {w}");
            }
            return Err(MirrorError::NoIndex { url: m.url, reason });
        }
        if m.skipped.total() > 0 {
            m.warnings.push(format!(
                "{} index stanzas skipped ({} incomplete, {} without SHA256, {} with an unsafe Filename, {} too large, {} with an invalid name, version or architecture)",
                m.skipped.total(),
                m.skipped.incomplete,
                m.skipped.no_sha256,
                m.skipped.bad_filename,
                m.skipped.oversize,
                m.skipped.bad_id
            ));
        }
        Ok(m)
    }

    fn load_dist(&mut self, d: &Dist, architectures: &[String]) -> Result<(), MirrorError> {
        let limits = self.options.limits;
        let dist_url = format!("{}/dists/{}", self.url, d.suite);
        let release_url = format!("{dist_url}/Release");
        let started = std::time::Instant::now();
        let release = self.http.get_vec(&release_url, limits.release);
        self.download_time += started.elapsed();
        let release = match release {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                self.warnings.push(format!("{release_url}: not on the mirror"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let files = parse_release(&release).map_err(|reason| MirrorError::Malformed {
            url: release_url.clone(),
            reason,
        })?;
        for component in &d.components {
            for arch in architectures {
                let candidates = index::packages_candidates(&files, component, arch);
                if candidates.is_empty() {
                    self.warnings.push(format!(
                        "{release_url}: lists no {component}/binary-{arch}/Packages"
                    ));
                    continue;
                }
                let mut loaded = false;
                for (file, codec) in candidates {
                    let url = format!("{dist_url}/{}", url_path(&file.path));
                    if file.size > limits.packages {
                        return Err(MirrorError::TooLarge {
                            url,
                            limit: limits.packages,
                        });
                    }
                    let started = std::time::Instant::now();
                    let data = self.http.get_vec(&url, file.size);
                    self.download_time += started.elapsed();
                    let data = match data {
                        Ok(d) => d,
                        Err(e) if e.is_not_found() => continue,
                        Err(MirrorError::TooLarge { url, .. }) => {
                            return Err(MirrorError::Mismatch {
                                url,
                                reason: format!("larger than the {} bytes its Release gives", file.size),
                            })
                        }
                        Err(e) => return Err(e),
                    };
                    check_file(&url, &data, file.size, &file.sha256)?;
                    // Parsed while decompressed: a bomb costs at most
                    // `limits.packages` of reading, not of memory.
                    index::parse_packages_index(
                        &data,
                        codec,
                        limits.packages,
                        limits.deb,
                        &mut self.packages,
                        &mut self.skipped,
                    )
                    .map_err(|reason| MirrorError::Malformed {
                        url: url.clone(),
                        reason,
                    })?;
                    self.index_files.push((lists_name(&url), data));
                    tracing::info!("{url}: {} packages known so far", self.packages.len());
                    self.indexes.push(url);
                    loaded = true;
                    break;
                }
                if loaded
                    && !self
                        .index_files
                        .iter()
                        .any(|(n, _)| *n == lists_name(&release_url))
                {
                    self.index_files.push((lists_name(&release_url), release.clone()));
                }
                if !loaded {
                    self.warnings.push(format!(
                        "{dist_url}/{component}/binary-{arch}/: no Packages file the Release lists is on the mirror"
                    ));
                }
            }
            for lang in &d.translations {
                self.load_translation(&dist_url, &files, component, lang);
            }
        }
        if d.in_release && !self.indexes.is_empty() {
            // Not listed in the Release (it is the Release, signed): only
            // bounded. Like every seed, its blocks are checked before use.
            let url = format!("{dist_url}/InRelease");
            let started = std::time::Instant::now();
            match self.http.get_vec(&url, limits.release) {
                Ok(data) => self.index_files.push((lists_name(&url), data)),
                Err(e) => self
                    .warnings
                    .push(format!("{e} (the guest's InRelease will cross the link)")),
            }
            self.download_time += started.elapsed();
        }
        Ok(())
    }

    /// Downloads `<component>/i18n/Translation-<lang>` (checked against the
    /// Release) for the package cache: the guest keeps it in its apt lists.
    /// It is only a seed: a translation the mirror lacks or serves wrong
    /// is a warning, never a reason to drop the mirror.
    fn load_translation(&mut self, dist_url: &str, files: &[ReleaseFile], component: &str, lang: &str) {
        if let Err(e) = check_word(lang, "language", false) {
            self.warnings.push(e.to_string());
            return;
        }
        let limits = self.options.limits;
        for (file, _) in index::index_candidates(files, &format!("{component}/i18n/Translation-{lang}")) {
            let url = format!("{dist_url}/{}", url_path(&file.path));
            if file.size > limits.packages {
                continue;
            }
            let started = std::time::Instant::now();
            let data = self.http.get_vec(&url, file.size);
            self.download_time += started.elapsed();
            let checked = data.and_then(|d| check_file(&url, &d, file.size, &file.sha256).map(|()| d));
            match checked {
                Ok(data) => {
                    self.index_files.push((lists_name(&url), data));
                    return;
                }
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    self.warnings
                        .push(format!("{e} (the guest's translation will cross the link)"));
                    return;
                }
            }
        }
        self.warnings.push(format!(
            "{dist_url}: no {component}/i18n/Translation-{lang} on the mirror"
        ));
    }

    /// Time spent downloading its index files (a measure of its rate,
    /// with [`Mirror::index_files`]' sizes).
    pub fn download_time(&self) -> Duration {
        self.download_time
    }

    /// The base URL (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The index files read and checked (Release, Packages), as apt names
    /// them in its lists and with their bytes as published: saved in the
    /// package cache, they seed the blocks of the guest's own copies in
    /// `/var/lib/apt/lists`.
    pub fn index_files(&self) -> &[(String, Vec<u8>)] {
        &self.index_files
    }

    /// The Packages indexes loaded (URLs).
    pub fn indexes(&self) -> &[String] {
        &self.indexes
    }

    /// What was odd but not fatal while opening.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of (name, version, architecture) entries known.
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    /// True if no package is known.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// Where `id`'s `.deb` is, if the mirror has that exact version.
    pub fn lookup(&self, id: &PackageId) -> Option<&PoolEntry> {
        self.packages.get(id)
    }

    /// Every version of `name` for `architecture` the mirror lists.
    pub fn versions(&self, name: &str, architecture: &str) -> Vec<&str> {
        self.packages
            .keys()
            .filter(|id| id.name == name && id.architecture == architecture)
            .map(|id| id.version.as_str())
            .collect()
    }

    /// The full URL of a pool entry, its path percent-encoded
    /// ([`url_path`]).
    pub fn entry_url(&self, entry: &PoolEntry) -> String {
        format!("{}/{}", self.url, url_path(&entry.filename))
    }

    /// Downloads `wanted` into `dest` from this mirror: see [`fetch_packages`].
    pub fn fetch_packages(
        &self,
        wanted: &[PackageId],
        dest: &std::path::Path,
        options: &FetchOptions,
    ) -> Result<FetchReport, MirrorError> {
        fetch_packages(std::slice::from_ref(self), wanted, dest, options)
    }

    pub(crate) fn http(&self) -> &Http {
        &self.http
    }

    /// Adds an entry by hand (tests).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, id: PackageId, entry: PoolEntry) {
        self.packages.insert(id, entry);
    }

    /// A mirror with no index (tests).
    #[cfg(test)]
    pub(crate) fn empty(url: &str, options: &MirrorOptions) -> Mirror {
        Mirror {
            url: url.trim_end_matches('/').to_string(),
            http: Http::new(options),
            options: *options,
            packages: HashMap::new(),
            indexes: Vec::new(),
            index_files: Vec::new(),
            skipped: SkippedStanzas::default(),
            warnings: Vec::new(),
            download_time: Duration::ZERO,
        }
    }
}

/// A relative path from an index (`Filename`, a Release entry) as the
/// path of a URL: each segment percent-encoded, `/` kept.
///
/// An index gives file names, not URLs: `apt-get download` saves
/// `dmsetup_2:1.02.185-2` as `dmsetup_2%3a1.02.185-2_amd64.deb`, and an
/// offline mirror built from such downloads lists that literal name, `%`
/// included; a server decodes `%3a` in a request to `:` and finds nothing.
/// Everything but RFC 3986's unreserved characters is encoded (`%` as
/// `%25`, `+` as `%2B`, which some servers would otherwise read as a space).
pub fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// apt's name for the list file of `url`: without the scheme, `/` as `_`
/// (`deb.debian.org_debian_dists_bookworm_Release`).
fn lists_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.replace('/', "_")
}

/// Checks downloaded `data` against the size and digest it was listed with.
fn check_file(url: &str, data: &[u8], size: u64, sha256: &Sha256Digest) -> Result<(), MirrorError> {
    if data.len() as u64 != size {
        return Err(MirrorError::Mismatch {
            url: url.to_string(),
            reason: format!("{} bytes, but its Release says {size}", data.len()),
        });
    }
    let got = Sha256Digest::of(data);
    if &got != sha256 {
        return Err(MirrorError::Mismatch {
            url: url.to_string(),
            reason: format!("SHA256 {got}, but its Release says {sha256} (a stale or damaged mirror?)"),
        });
    }
    Ok(())
}

/// Checks a suite, component or architecture before it goes into a URL.
fn check_word(s: &str, what: &str, slash: bool) -> Result<(), MirrorError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._+~".contains(c) || (slash && c == '/'))
        && !s.starts_with('/')
        && !s.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if ok {
        Ok(())
    } else {
        Err(MirrorError::Config(format!("invalid {what} {s:?}")))
    }
}

/// A summary of what [`Mirror::open`] loaded, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorSummary {
    /// Base URL.
    pub url: String,
    /// Packages indexes loaded.
    pub indexes: Vec<String>,
    /// Packages known.
    pub packages: usize,
    /// Warnings.
    pub warnings: Vec<String>,
}

impl From<&Mirror> for MirrorSummary {
    fn from(m: &Mirror) -> Self {
        MirrorSummary {
            url: m.url.clone(),
            indexes: m.indexes.clone(),
            packages: m.packages.len(),
            warnings: m.warnings.clone(),
        }
    }
}

/// Groups `wanted` by the first mirror that has each (the index into
/// `mirrors`), and lists those no mirror has.
pub(crate) fn resolve<'m>(
    mirrors: &'m [Mirror],
    wanted: &[PackageId],
) -> (BTreeMap<PackageId, (&'m Mirror, &'m PoolEntry)>, Vec<PackageId>) {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for id in wanted {
        match mirrors.iter().find_map(|m| m.lookup(id).map(|e| (m, e))) {
            Some(hit) => {
                found.insert(id.clone(), hit);
            }
            None => missing.push(id.clone()),
        }
    }
    (found, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_refuses_bad_urls_and_names() {
        let o = MirrorOptions::default();
        let d = [Dist {
            suite: "stable".into(),
            components: vec!["main".into()],
            ..Dist::default()
        }];
        let arch = ["amd64".to_string()];
        assert!(matches!(
            Mirror::open("ftp://x/debian", &d, &arch, &o),
            Err(MirrorError::Config(_))
        ));
        assert!(matches!(
            Mirror::open("file:///etc", &d, &arch, &o),
            Err(MirrorError::Config(_))
        ));
        let evil = [Dist {
            suite: "../../etc".into(),
            components: vec!["main".into()],
            ..Dist::default()
        }];
        assert!(matches!(
            Mirror::open("http://127.0.0.1:9/debian", &evil, &arch, &o),
            Err(MirrorError::Config(_))
        ));
        let evil_arch = ["amd64/../x".to_string()];
        assert!(matches!(
            Mirror::open("http://127.0.0.1:9/debian", &d, &evil_arch, &o),
            Err(MirrorError::Config(_))
        ));
    }

    #[test]
    fn index_paths_are_percent_encoded_in_urls() {
        assert_eq!(
            url_path("pool/main/d/dmsetup/dmsetup_2%3a1.02.185-2_amd64.deb"),
            "pool/main/d/dmsetup/dmsetup_2%253a1.02.185-2_amd64.deb"
        );
        assert_eq!(
            url_path("pool/main/g/gcc-12/libstdc++6_12.2.0-14+deb12u1_amd64.deb"),
            "pool/main/g/gcc-12/libstdc%2B%2B6_12.2.0-14%2Bdeb12u1_amd64.deb"
        );
        assert_eq!(url_path("a:b@c,d=e~f"), "a%3Ab%40c%2Cd%3De~f");
        assert_eq!(
            url_path("main/binary-amd64/Packages.xz"),
            "main/binary-amd64/Packages.xz"
        );
        let mut m = Mirror::empty("http://h/debian/", &MirrorOptions::default());
        let entry = PoolEntry {
            filename: "pool/a/a_1%3a2+b1_all.deb".into(),
            size: 1,
            sha256: Sha256Digest([0; 32]),
        };
        m.insert(PackageId::new("a", "1:2+b1", "all"), entry.clone());
        assert_eq!(
            m.entry_url(&entry),
            "http://h/debian/pool/a/a_1%253a2%2Bb1_all.deb"
        );
    }

    #[test]
    fn release_and_index_digests_are_checked() {
        let data = b"Package: a\n";
        let good = Sha256Digest::of(data);
        assert!(check_file("u", data, data.len() as u64, &good).is_ok());
        let e = check_file("u", data, 3, &good).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        let e = check_file("u", data, data.len() as u64, &Sha256Digest([0; 32])).unwrap_err();
        assert!(matches!(e, MirrorError::Mismatch { .. }), "{e}");
    }
}
