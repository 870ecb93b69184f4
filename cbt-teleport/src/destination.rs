//! Teleporting to a destination: what the source says about its guest
//! ([`GuestRequest`], sent over the network before the image), and what
//! the destination does with it ([`PackageSources`]): find the guest's
//! exact packages in its package caches, resolve the rest against its apt
//! mirrors, decide whether fetching them pays, fetch, and afterwards tell
//! where the image's blocks came from.
//!
//! ```text
//!  source: Description ─▶ GuestRequest (JSON) ══ network ══▶ destination:
//!    resolve: caches ─▶ cached │ mirrors (Release → Packages) ─▶ to fetch │ missing
//!    decide:  fetch time (mirror rate, unpacking) < link time saved?
//!    fetch:   fetch_packages into the first cache ─▶ seeds for the block transfer
//!    account: blocks confirmed per seed ─▶ images │ cached packages │ fetched packages
//! ```
//!
//! The request comes from the other host: it is parsed with bounds, and
//! every name in it is checked before it reaches a URL or a file name (by
//! [`PackageId::deb_file_name`] and [`Mirror::open`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cbt_core::{Dir, DirEntry, Index};
use serde::{Deserialize, Serialize};

use crate::debcache::PackageBlobs;
use crate::inspect::Description;
use crate::mirror::{
    fetch_packages, guest_dists, index_architectures, packages_to_fetch, Dist, FetchOptions, Mirror,
    MirrorOptions, PackageId,
};

/// Most packages a request may name (Debian has about 65 000 per architecture).
const MAX_PACKAGES: usize = 200_000;
/// Most suites a request may name.
const MAX_DISTS: usize = 32;
/// Longest string in a request.
const MAX_STRING: usize = 256;
// The decision's model, measured on the benchmark machine (2 cores; the
// Debian web image of docs/BENCHMARKS.md: 123 packages, 40 MB of `.deb`
// and 9 MB of index, 143 MB installed, made into seeds in about 2.7 s;
// sent plainly, their blocks took 56 MB on the wire).
/// Seconds of unpacking per byte of `.deb` (decompressing its data and
/// writing its blob): about 18 MB/s of archives.
const UNPACK_SECONDS_PER_BYTE: f64 = 1.0 / 18e6;
/// The same per installed byte: about 70 MB/s.
const UNPACK_SECONDS_PER_INSTALLED_BYTE: f64 = 1.0 / 70e6;
/// Bytes a package's blocks take on the wire, per byte of its `.deb`
/// (cbt's zstd on the installed files, and the apt lists that come with
/// them, against the archive's xz).
const WIRE_BYTES_PER_DEB_BYTE: f64 = 1.4;
/// The same per installed byte.
const WIRE_BYTES_PER_INSTALLED_BYTE: f64 = 0.39;
/// Resolving takes at least this long (Debian's main index: 9 MB to
/// download, 63 000 packages to parse).
const MIN_RESOLVE_SECONDS: f64 = 1.0;
/// Index downloads shorter than this say little about a mirror's rate.
const MIN_RATE_SAMPLE_BYTES: u64 = 1 << 20;

/// The guest, as the source describes it to the destination.
/// Every field is optional on the wire (a newer or older peer may send
/// more or less).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestRequest {
    /// Distribution id (`debian`).
    pub distro: Option<String>,
    /// Distribution version (`12`).
    pub version: Option<String>,
    /// Native architecture (`amd64`).
    pub architecture: Option<String>,
    /// Suites and components of the guest's apt sources.
    pub dists: Vec<Dist>,
    /// The guest's apt source URLs (for reports).
    pub sources: Vec<String>,
    /// Every installed package, exact version.
    pub packages: Vec<PackageId>,
    /// Their total installed size (dpkg's `Installed-Size`), in bytes.
    pub installed_bytes: u64,
    /// Link rate the source expects, bytes per second (for the decision).
    pub link_rate: Option<f64>,
    /// Why the source could not describe the guest (then nothing else is set).
    pub error: Option<String>,
}

impl GuestRequest {
    /// The request for a described guest.
    pub fn of(desc: &Description, link_rate: Option<f64>) -> GuestRequest {
        let mut sources: Vec<String> = desc
            .repositories
            .iter()
            .filter(|r| r.kind == "deb")
            .map(|r| r.uri.trim_end_matches('/').to_string())
            .collect();
        sources.dedup();
        GuestRequest {
            distro: desc.distro.clone(),
            version: desc.version.clone(),
            architecture: desc.architecture.clone(),
            dists: guest_dists(desc),
            sources,
            packages: packages_to_fetch(desc),
            installed_bytes: desc.installed().filter_map(|p| p.installed_size).sum(),
            link_rate,
            error: None,
        }
    }

    /// The JSON sent over the network.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a request from a peer, with bounds on every list and string.
    pub fn from_json(bytes: &[u8]) -> Result<GuestRequest, String> {
        let r: GuestRequest =
            serde_json::from_slice(bytes).map_err(|e| format!("the guest description is not valid: {e}"))?;
        if r.packages.len() > MAX_PACKAGES || r.dists.len() > MAX_DISTS || r.sources.len() > MAX_DISTS {
            return Err("the guest description names too many packages or suites".into());
        }
        let strings = r
            .packages
            .iter()
            .flat_map(|p| [&p.name, &p.version, &p.architecture])
            .chain(r.dists.iter().flat_map(|d| {
                std::iter::once(&d.suite)
                    .chain(&d.components)
                    .chain(&d.translations)
            }))
            .chain(&r.sources)
            .chain([&r.distro, &r.version, &r.architecture].into_iter().flatten());
        if strings.into_iter().any(|s| s.len() > MAX_STRING) {
            return Err("the guest description holds a string that is too long".into());
        }
        if r.dists
            .iter()
            .any(|d| d.components.len() > MAX_DISTS || d.translations.len() > MAX_DISTS)
        {
            return Err("the guest description names too many components".into());
        }
        if r.link_rate.is_some_and(|l| !(l.is_finite() && l > 0.0)) {
            return Err("the guest description's link rate is not a positive number".into());
        }
        Ok(r)
    }
}

/// Where the destination takes packages from, and how.
#[derive(Debug, Clone, Default)]
pub struct PackageSources {
    /// Package caches; fetched packages go into the first.
    pub caches: Vec<PathBuf>,
    /// apt mirror base URLs, in order of preference.
    pub mirrors: Vec<String>,
    /// How to talk to the mirrors.
    pub network: MirrorOptions,
    /// How to download.
    pub fetch: FetchOptions,
}

/// One mirror as the plan saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MirrorStatus {
    /// Base URL.
    pub url: String,
    /// Packages its indexes list.
    pub packages: usize,
    /// Bytes of index files downloaded.
    pub index_bytes: u64,
    /// Seconds the indexes took, downloading and parsing.
    pub index_seconds: f64,
    /// Seconds of that spent downloading (the mirror's rate, for the decision).
    pub download_seconds: f64,
    /// Why it could not be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was odd but not fatal (a suite or translation it lacks, a
    /// damaged translation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The destination's plan for a guest: reported before anything is fetched.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DestinationPlan {
    /// `distro version arch` of the guest, as described.
    pub guest: String,
    /// Installed packages of the guest.
    pub packages: usize,
    /// Packages already in a package cache.
    pub cached: usize,
    /// Packages a mirror has and the caches lack.
    pub to_fetch: usize,
    /// Bytes of their `.deb`s.
    pub fetch_bytes: u64,
    /// Packages no cache or mirror has at that version (`name:arch version`):
    /// their blocks come over the link.
    pub missing: Vec<String>,
    /// The mirrors asked.
    pub mirrors: Vec<MirrorStatus>,
    /// Seconds spent resolving (mostly downloading indexes).
    pub resolve_seconds: f64,
    /// Whether the packages will be fetched.
    pub fetch: bool,
    /// Why (or why not).
    pub reason: String,
}

/// What fetching did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FetchOutcome {
    /// Packages downloaded.
    pub fetched: usize,
    /// Their bytes.
    pub fetched_bytes: u64,
    /// Packages whose download failed or did not check out (`package`, `reason`).
    pub failed: Vec<FailedFetch>,
    /// Seconds spent.
    pub fetch_seconds: f64,
    /// Index files (Release, Packages) saved into the cache, and their bytes.
    pub index_files: usize,
    /// Bytes of them.
    pub index_bytes: u64,
    /// The package cache filled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The files this fetch added to the cache (packages and index files).
    #[serde(skip)]
    pub new_files: BTreeSet<PathBuf>,
}

/// A package that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedFetch {
    /// `name:arch version`.
    pub package: String,
    /// Why.
    pub reason: String,
}

/// Where a teleported image's blocks came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockOrigins {
    /// From images at the destination (seeds, earlier versions).
    pub blocks_from_images: u64,
    /// From packages that were already in a cache.
    pub blocks_from_cached_packages: u64,
    /// From packages fetched for this transfer.
    pub blocks_from_fetched_packages: u64,
}

/// A resolved request: the plan, and what fetching needs.
#[derive(Debug)]
pub struct Resolution {
    /// The plan, for reports.
    pub plan: DestinationPlan,
    mirrors: Vec<Mirror>,
    to_fetch: Vec<PackageId>,
}

impl PackageSources {
    /// Resolves `request`: packages in the caches, on the mirrors, nowhere;
    /// and whether fetching pays (see the module documentation).
    pub fn resolve(&self, request: &GuestRequest) -> Resolution {
        let started = Instant::now();
        let mut plan = DestinationPlan {
            guest: [&request.distro, &request.version, &request.architecture]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            ..DestinationPlan::default()
        };
        let done = |mut plan: DestinationPlan, reason: String| Resolution {
            plan: {
                plan.reason = reason;
                plan.resolve_seconds = started.elapsed().as_secs_f64();
                plan
            },
            mirrors: Vec::new(),
            to_fetch: Vec::new(),
        };
        if let Some(e) = &request.error {
            return done(plan, format!("the source could not describe the guest: {e}"));
        }
        let wanted: Vec<PackageId> = request
            .packages
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        plan.packages = wanted.len();
        if wanted.is_empty() {
            return done(
                plan,
                "the guest has no installed packages to take from elsewhere".into(),
            );
        }
        let dirs: Vec<Option<Dir>> = self.caches.iter().map(|c| Dir::open(c).ok()).collect();
        let cached = Self::cached(&dirs, &wanted);
        let lacking = wanted.iter().filter(|p| !cached.contains_key(*p)).count();
        if self.mirrors.is_empty() || self.caches.is_empty() {
            plan.cached = cached.len();
            plan.missing = wanted
                .iter()
                .filter(|p| !cached.contains_key(*p))
                .map(|p| p.to_string())
                .collect();
            let why = if self.mirrors.is_empty() {
                "no mirror is configured"
            } else {
                "no package cache to fetch into"
            };
            let reason = if lacking == 0 {
                "every package is in the package cache".to_string()
            } else {
                format!("{why}; the packages not cached come over the link")
            };
            return done(plan, reason);
        }
        // Before asking any mirror: could fetching pay even at best?
        let share = lacking as f64 / wanted.len() as f64;
        let hopeless = request
            .link_rate
            .filter(|_| lacking > 0)
            .and_then(|link| not_worth_resolving(request.installed_bytes as f64 * share, link));
        if let Some(reason) = hopeless {
            plan.cached = cached.len();
            plan.missing = wanted
                .iter()
                .filter(|p| !cached.contains_key(*p))
                .map(|p| p.to_string())
                .collect();
            return done(plan, reason);
        }
        let archs = index_architectures(&wanted, request.architecture.as_deref());
        let mut mirrors = Vec::new();
        for url in &self.mirrors {
            let t = Instant::now();
            match Mirror::open(url, &request.dists, &archs, &self.network) {
                Ok(m) => {
                    plan.mirrors.push(MirrorStatus {
                        url: m.url().to_string(),
                        packages: m.len(),
                        index_bytes: m.index_files().iter().map(|(_, d)| d.len() as u64).sum(),
                        index_seconds: t.elapsed().as_secs_f64(),
                        download_seconds: m.download_time().as_secs_f64(),
                        error: None,
                        warnings: m.warnings().to_vec(),
                    });
                    mirrors.push(m);
                }
                Err(e) => plan.mirrors.push(MirrorStatus {
                    url: url.clone(),
                    index_seconds: t.elapsed().as_secs_f64(),
                    error: Some(e.to_string()),
                    ..MirrorStatus::default()
                }),
            }
        }
        let mut to_fetch = Vec::new();
        for id in wanted {
            let entry = mirrors.iter().find_map(|m| m.lookup(&id));
            let name = id.deb_file_name();
            // A cached file the mirror lists is checked against the index
            // (a truncated or damaged one is fetched again); one it does
            // not list cannot be checked and is used as it is.
            let cached_ok = match (cached.get(&id), entry, &name) {
                (Some(&i), Some(e), Some(n)) => dirs[i]
                    .as_ref()
                    .is_some_and(|d| matches!(crate::mirror::intact(d, n, e), Ok(true))),
                (Some(_), _, _) => true,
                (None, _, _) => false,
            };
            match entry {
                _ if cached_ok => plan.cached += 1,
                Some(entry) if name.is_some() => {
                    plan.fetch_bytes += entry.size;
                    to_fetch.push(id);
                }
                _ => plan.missing.push(id.to_string()),
            }
        }
        plan.to_fetch = to_fetch.len();
        let (fetch, reason) = decide(&plan, request.link_rate);
        plan.fetch = fetch;
        // With no package to fetch, the index files already downloaded
        // (they seed the guest's apt lists) are still worth keeping.
        let keep_indexes = fetch || plan.to_fetch == 0;
        let mut r = done(plan, reason);
        if keep_indexes {
            r.mirrors = mirrors;
        }
        if fetch {
            r.to_fetch = to_fetch;
        }
        r
    }

    /// Downloads what the plan chose to fetch into the first cache, and
    /// saves the mirrors' index files there (unless fetching was judged
    /// not to pay).
    pub fn fetch(&self, resolution: &Resolution, stop: &AtomicBool) -> FetchOutcome {
        let started = Instant::now();
        let mut out = FetchOutcome::default();
        let Some(dest) = self.caches.first() else {
            return out;
        };
        if resolution.mirrors.is_empty() || stop.load(Ordering::SeqCst) {
            return out;
        }
        out.cache = Some(dest.display().to_string());
        let before = files_in(dest);
        match fetch_packages(&resolution.mirrors, &resolution.to_fetch, dest, &self.fetch) {
            Ok(report) => {
                out.fetched = report.fetched.len();
                out.fetched_bytes = report.fetched_bytes;
                out.index_files = report.index_files;
                out.index_bytes = report.index_bytes;
                out.failed = report
                    .failed
                    .iter()
                    .map(|f| FailedFetch {
                        package: f.id.to_string(),
                        reason: f.reason.clone(),
                    })
                    .collect();
            }
            Err(e) => out.failed.push(FailedFetch {
                package: "*".into(),
                reason: e.to_string(),
            }),
        }
        out.new_files = files_in(dest).difference(&before).cloned().collect();
        out.fetch_seconds = started.elapsed().as_secs_f64();
        out
    }

    /// The packages of `wanted` whose `.deb` is a regular file in one of
    /// the cache directories `dirs`, with the index of the first that has it.
    fn cached(dirs: &[Option<Dir>], wanted: &[PackageId]) -> BTreeMap<PackageId, usize> {
        wanted
            .iter()
            .filter_map(|id| {
                let name = id.deb_file_name()?;
                let i = dirs.iter().position(|d| {
                    d.as_ref()
                        .is_some_and(|d| matches!(d.entry(&name), Ok(DirEntry::File(_))))
                })?;
                Some((id.clone(), i))
            })
            .collect()
    }
}

/// Whether fetching a guest's packages (of `installed_bytes` installed)
/// from a mirror at the destination can pay over a link of `link_rate`
/// bytes per second, before any mirror is asked: the receiver's first
/// test, also shown by `cbt teleport plan --link`. The reason says why.
pub fn fetch_may_pay(installed_bytes: u64, link_rate: f64) -> (bool, String) {
    match not_worth_resolving(installed_bytes as f64, link_rate) {
        Some(reason) => (false, reason),
        None => {
            let saved = installed_bytes as f64 * WIRE_BYTES_PER_INSTALLED_BYTE / link_rate;
            (
                true,
                format!(
                    "fetching the packages from a mirror at the destination can save up to {saved:.1} s on this link ({:.1} MB/s)",
                    link_rate / 1e6
                ),
            )
        }
    }
}

/// [`fetch_may_pay`] when a block transfer would move `bytes_to_move`
/// bytes: the packages' share of the link cannot exceed that.
pub fn fetch_may_pay_moving(installed_bytes: u64, bytes_to_move: u64, link_rate: f64) -> (bool, String) {
    let most = (bytes_to_move as f64 / WIRE_BYTES_PER_INSTALLED_BYTE) as u64;
    fetch_may_pay(installed_bytes.min(most), link_rate)
}

/// Before any mirror is asked: `None` when fetching packages of
/// `installed` bytes (as installed) could save time over a link of `link`
/// bytes per second, else why not. The best case: an infinitely fast mirror,
/// against resolving (index downloads) and unpacking at this machine's pace.
fn not_worth_resolving(installed: f64, link: f64) -> Option<String> {
    let saved = installed * WIRE_BYTES_PER_INSTALLED_BYTE / link;
    let cost = MIN_RESOLVE_SECONDS + installed * UNPACK_SECONDS_PER_INSTALLED_BYTE;
    (cost >= saved).then(|| {
        format!(
            "the link ({:.1} MB/s) is fast: fetching packages would take at least {cost:.1} s to save at most {saved:.1} s; plain transfer",
            link / 1e6
        )
    })
}

/// Fetch when it costs less time than it saves: downloading at the rate
/// the mirror's indexes came at, plus unpacking, against the packages'
/// blocks crossing the link. Without a link rate, fetching is assumed to pay
/// (a teleport is asked for because the link is the slow part).
fn decide(plan: &DestinationPlan, link_rate: Option<f64>) -> (bool, String) {
    if plan.to_fetch == 0 {
        let why = if plan.missing.is_empty() {
            "every package is in the package cache"
        } else if plan.mirrors.iter().all(|m| m.error.is_some()) {
            "no mirror could be used"
        } else {
            "no mirror has the missing versions"
        };
        return (false, format!("nothing to fetch: {why}"));
    }
    let bytes = plan.fetch_bytes as f64;
    let sample = plan
        .mirrors
        .iter()
        .filter(|m| m.error.is_none() && m.index_bytes >= MIN_RATE_SAMPLE_BYTES && m.download_seconds > 0.0)
        .map(|m| m.index_bytes as f64 / m.download_seconds)
        .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))));
    let Some(link) = link_rate else {
        return (true, "the link rate is unknown: fetching from the mirror".into());
    };
    let mb = |r: f64| r / 1e6;
    let unpack = bytes * UNPACK_SECONDS_PER_BYTE;
    let download = sample.map_or(0.0, |r| bytes / r);
    let saved = bytes * WIRE_BYTES_PER_DEB_BYTE / link;
    let rates = match sample {
        Some(r) => format!("mirror {:.1} MB/s, link {:.1} MB/s", mb(r), mb(link)),
        None => format!("link {:.1} MB/s", mb(link)),
    };
    if download + unpack < saved {
        (
            true,
            format!(
                "fetching takes about {:.1} s and saves about {saved:.1} s ({rates})",
                download + unpack
            ),
        )
    } else {
        (
            false,
            format!(
                "fetching would take about {:.1} s to save about {saved:.1} s ({rates}): plain transfer",
                download + unpack
            ),
        )
    }
}

/// Counts, after a transfer, the blocks each kind of seed supplied: the
/// index's supplied blocks per image ([`Index::note_supplied`]), split by whether the image is a
/// package blob and whether its source is one of the files a fetch added
/// ([`FetchOutcome::new_files`]).
pub fn block_origins(index: &Index, fetched: &BTreeSet<PathBuf>) -> BlockOrigins {
    let blobs = PackageBlobs::of(index);
    let mut o = BlockOrigins::default();
    for (image, n) in index.images().iter().zip(index.blocks_supplied()) {
        let blob = blobs.and_then(|b| b.get(&image.spec.path));
        match blob {
            Some(b) if fetched.contains(&b.source) => o.blocks_from_fetched_packages += n,
            Some(_) => o.blocks_from_cached_packages += n,
            None => o.blocks_from_images += n,
        }
    }
    o
}

/// The canonical paths of the regular files in `dir` (not following
/// symbolic links; empty if it cannot be read).
fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.path().canonicalize().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(to_fetch: usize, bytes: u64, index_bytes: u64, index_seconds: f64) -> DestinationPlan {
        DestinationPlan {
            to_fetch,
            fetch_bytes: bytes,
            mirrors: vec![MirrorStatus {
                url: "http://m/debian".into(),
                packages: 10,
                index_bytes,
                index_seconds,
                download_seconds: index_seconds,
                error: None,
                warnings: Vec::new(),
            }],
            ..DestinationPlan::default()
        }
    }

    #[test]
    fn fetching_pays_on_a_slow_link_and_not_on_a_fast_one_or_from_a_slow_mirror() {
        // 40 MB from a 100 MB/s mirror.
        let p = plan(100, 40_000_000, 10_000_000, 0.1);
        assert!(decide(&p, Some(1.25e6)).0, "10 Mbit/s link");
        assert!(!decide(&p, Some(1.25e9)).0, "10 Gbit/s link");
        // The same from a 1 MB/s mirror over a 100 Mbit/s link.
        let slow = plan(100, 40_000_000, 10_000_000, 10.0);
        let (fetch, reason) = decide(&slow, Some(12.5e6));
        assert!(!fetch && reason.contains("plain transfer"), "{reason}");
        // Unknown link: fetch; nothing to fetch: no.
        assert!(decide(&p, None).0);
        assert!(!decide(&plan(0, 0, 1, 1.0), Some(1.0)).0);
    }

    #[test]
    fn a_fast_link_skips_the_mirrors_altogether() {
        // The web image: 143 MB installed.
        assert!(not_worth_resolving(143e6, 125e6).is_some(), "1 Gbit/s");
        assert!(not_worth_resolving(143e6, 12.5e6).is_none(), "100 Mbit/s");
        assert!(not_worth_resolving(143e6, 1.25e6).is_none(), "10 Mbit/s");
        let sources = PackageSources {
            caches: vec![PathBuf::from("/nonexistent")],
            // Never contacted: the decision comes first.
            mirrors: vec!["http://127.0.0.1:9/debian".into()],
            ..PackageSources::default()
        };
        let r = GuestRequest {
            packages: vec![PackageId::new("hello", "2.10-3", "amd64")],
            installed_bytes: 143_000_000,
            link_rate: Some(125e6),
            ..GuestRequest::default()
        };
        let res = sources.resolve(&r);
        assert!(!res.plan.fetch && res.plan.mirrors.is_empty(), "{:?}", res.plan);
        assert!(res.plan.reason.contains("plain transfer"), "{}", res.plan.reason);
        assert_eq!(res.plan.missing, ["hello:amd64 2.10-3"]);
    }

    #[test]
    fn requests_round_trip_and_hostile_ones_are_refused() {
        let r = GuestRequest {
            distro: Some("debian".into()),
            architecture: Some("amd64".into()),
            dists: vec![Dist {
                suite: "bookworm".into(),
                components: vec!["main".into()],
                ..Dist::default()
            }],
            packages: vec![PackageId::new("hello", "2.10-3", "amd64")],
            link_rate: Some(1.25e6),
            ..GuestRequest::default()
        };
        assert_eq!(GuestRequest::from_json(&r.to_json()).unwrap(), r);
        assert!(GuestRequest::from_json(b"[1,2]").is_err());
        assert!(GuestRequest::from_json(b"{\"link_rate\": -1}").is_err());
        let long = format!(
            "{{\"packages\":[{{\"name\":\"{}\",\"version\":\"1\",\"architecture\":\"all\"}}]}}",
            "a".repeat(300)
        );
        assert!(GuestRequest::from_json(long.as_bytes()).is_err());
        // Unknown fields from a newer peer are ignored.
        assert!(GuestRequest::from_json(b"{\"future\": 1}").is_ok());
    }

    #[test]
    fn resolving_without_mirrors_lists_what_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello_2.10-3_amd64.deb"), b"x").unwrap();
        let sources = PackageSources {
            caches: vec![dir.path().to_path_buf()],
            ..PackageSources::default()
        };
        let r = GuestRequest {
            packages: vec![
                PackageId::new("hello", "2.10-3", "amd64"),
                PackageId::new("libc6", "1:2.36-9", "amd64"),
            ],
            ..GuestRequest::default()
        };
        let res = sources.resolve(&r);
        assert_eq!((res.plan.packages, res.plan.cached, res.plan.to_fetch), (2, 1, 0));
        assert_eq!(res.plan.missing, ["libc6:amd64 1:2.36-9"]);
        assert!(!res.plan.fetch);
    }
}
