//! Teleport planning: rebuild a guest at the destination from a similar
//! local image plus packages, sending only its user data, or send its
//! blocks with cbt, whichever the numbers favour.
//!
//! Smart-migrate picked its candidate with one rsync dry run per local VM.
//! Here the candidates (images, backing files, internal snapshots) are
//! first filtered by inspection (same distribution, version and
//! architecture), then ranked by the bytes the destination index says
//! would still have to be sent if each were the only seed, on a few
//! threads, abandoning a candidate as soon as it falls behind the best.
//!
//! The cost model (also in docs/DESCRIBE.md):
//! - plain cbt transfer: the bytes of the source's non-zero blocks found in
//!   no local image nor package cache (`union`), over the link;
//! - teleport: the user data (the manifest, package-manager state
//!   excluded), plus the packages to install that are not in a local
//!   package cache, counted at their installed size (an upper bound on
//!   the download: archives are compressed, but sizes of archives not at
//!   hand are unknown), over the same link; plus a fixed time per package
//!   installed or removed. Nothing is charged for booting the candidate.
//!
//! With a link rate, the faster one is chosen; without, the one that sends
//! fewer bytes. A tie goes to cbt, whose result is bit-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use serde::Serialize;

use cbt_core::{backing_chain, open_image, ImageSpec, Index, IndexOptions, Result};

use crate::debcache::{merged_keys, PackageBlobs, SourceBlocks};
use crate::inspect::{describe_image, DescribeOptions, Description, EntryKind, Repository};

/// How to plan.
#[derive(Debug, Clone)]
pub struct TeleportOptions {
    /// Index settings (block size, cache, extra seeds such as
    /// [`PackageCaches`](crate::PackageCaches), threads).
    pub index: IndexOptions,
    /// Threads for hashing and ranking (0: one per core).
    pub threads: usize,
    /// Link rate in bytes per second, if known.
    pub link_rate: Option<f64>,
    /// Seconds charged per package installed or removed.
    pub seconds_per_package: f64,
}

/// One candidate of the same distribution, version and architecture.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateScore {
    /// The image (and snapshot).
    pub image: String,
    /// Bytes still to send with this candidate alone (a lower bound once abandoned).
    pub bytes_missing: u64,
    /// Share of the source's non-zero blocks it holds (`None` once abandoned).
    pub found_fraction: Option<f64>,
    /// True if ranking stopped early: it could not beat the best.
    pub abandoned: bool,
    /// Packages to install plus packages to remove to match the source.
    pub package_changes: usize,
}

/// A candidate left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// The image (and snapshot).
    pub image: String,
    /// Why.
    pub reason: String,
}

/// A package to install or remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// Name.
    pub name: String,
    /// Architecture.
    pub architecture: String,
    /// Version wanted (install) or present (remove).
    pub version: String,
    /// For an install, the candidate's version if it has another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_version: Option<String>,
    /// Installed size in bytes, if the database says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_size: Option<u64>,
    /// For an install, true if this exact version is in a local package cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_package_cache: Option<bool>,
}

/// Bytes over the link and the time they take.
#[derive(Debug, Clone, Serialize)]
pub struct TransferCost {
    /// Bytes sent over the link.
    pub bytes: u64,
    /// Estimated seconds (with a link rate).
    pub seconds: Option<f64>,
}

/// The cost of a teleport to the best candidate.
#[derive(Debug, Clone, Serialize)]
pub struct TeleportCost {
    /// User data sent.
    pub user_data_bytes: u64,
    /// Package downloads (installed sizes of packages not in a local cache).
    pub package_download_bytes: u64,
    /// Packages to install found in a local package cache.
    pub packages_from_cache: usize,
    /// Packages installed or removed.
    pub package_operations: usize,
    /// Bytes over the link in all.
    pub bytes: u64,
    /// Estimated seconds, transfer plus package operations.
    pub seconds: Option<f64>,
}

/// The fetch decision for a link rate (see [`crate::fetch_may_pay`]).
#[derive(Debug, Clone, Serialize)]
pub struct MirrorFetch {
    /// Fetching can pay.
    pub fetch: bool,
    /// Why.
    pub reason: String,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct TeleportPlan {
    /// The source image.
    pub source: String,
    /// Its distribution, version and architecture.
    pub distro: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Architecture.
    pub architecture: Option<String>,
    /// Matching candidates, best first.
    pub candidates: Vec<CandidateScore>,
    /// Images left out.
    pub rejected: Vec<Rejected>,
    /// The best candidate.
    pub best: Option<String>,
    /// Packages to install on the best candidate (missing or another version).
    pub install: Vec<PackageChange>,
    /// Packages to remove from it.
    pub remove: Vec<PackageChange>,
    /// Repositories the source uses and the candidate lacks.
    pub repositories_to_add: Vec<Repository>,
    /// User data to send (bytes), package-manager state excluded.
    pub user_data_bytes: u64,
    /// Files in the user data.
    pub user_data_files: usize,
    /// Link rate used, bytes per second.
    pub link_rate: Option<f64>,
    /// A plain cbt transfer using every local image and package cache.
    pub cbt: TransferCost,
    /// A teleport to the best candidate.
    pub teleport: Option<TeleportCost>,
    /// With a link rate: whether `cbt teleport` (the destination fetching
    /// the packages from its mirror) can pay on that link, by the model
    /// the receiver decides with, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_fetch: Option<MirrorFetch>,
    /// `cbt` or `teleport`.
    pub choice: String,
    /// Why.
    pub reason: String,
}

/// The fetch decision for packages of `installed` bytes (as installed)
/// when a block transfer would move `bytes_to_move`: fetching can save at
/// most what the transfer would move, and nothing when it moves nothing.
fn mirror_fetch(installed: u64, bytes_to_move: u64, link: Option<f64>) -> Option<MirrorFetch> {
    let link = link.filter(|r| *r > 0.0)?;
    let (fetch, reason) = if bytes_to_move == 0 {
        (
            false,
            "nothing to save: the local images already hold every block of the source".to_string(),
        )
    } else if installed == 0 {
        (
            false,
            "nothing to fetch: the local images and package caches hold every package".to_string(),
        )
    } else {
        crate::destination::fetch_may_pay_moving(installed, bytes_to_move, link)
    };
    Some(MirrorFetch { fetch, reason })
}

/// Plans the transfer of `source` given the local images under `roots`.
pub fn teleport_plan(
    source: &ImageSpec,
    roots: &[PathBuf],
    options: &TeleportOptions,
) -> Result<TeleportPlan> {
    let image = open_image(source)?;
    let desc = describe_image(image.clone(), &DescribeOptions::default())?;
    let manifest = desc.user_data.clone().unwrap_or_default();
    let user_data_files = manifest
        .files
        .iter()
        .filter(|f| f.kind != EntryKind::PackageState)
        .count();

    let mut index_options = options.index.clone();
    index_options.exclude.extend(source.path.canonicalize().ok());
    let index = Index::build_with_per_image(roots, &index_options)?;
    let src = SourceBlocks::hash(image.as_ref(), index.block_size(), options.threads)?;
    let union = src
        .measure(&|k| index.lookup_key(k).is_some(), u64::MAX)
        .unwrap_or_default();
    let seconds = |bytes: u64| options.link_rate.filter(|r| *r > 0.0).map(|r| bytes as f64 / r);
    let cbt = TransferCost {
        bytes: union.bytes_missing,
        seconds: seconds(union.bytes_missing),
    };

    let mut plan = TeleportPlan {
        source: source.to_string(),
        distro: desc.distro.clone(),
        version: desc.version.clone(),
        architecture: desc.architecture.clone(),
        candidates: Vec::new(),
        rejected: Vec::new(),
        best: None,
        install: Vec::new(),
        remove: Vec::new(),
        repositories_to_add: Vec::new(),
        user_data_bytes: manifest.user_data_bytes,
        user_data_files,
        link_rate: options.link_rate,
        cbt,
        teleport: None,
        mirror_fetch: mirror_fetch(
            desc.installed().filter_map(|p| p.installed_size).sum(),
            union.bytes_missing,
            options.link_rate,
        ),
        choice: "cbt".into(),
        reason: String::new(),
    };
    if desc.distro.is_none() {
        plan.reason =
            "the source's operating system is not recognised: only a block transfer is possible".into();
        return Ok(plan);
    }

    // Inspect every indexed image view; keep those like the source.
    let images = index.images();
    let blobs = PackageBlobs::of(&index);
    let is_blob = |i: usize| blobs.is_some_and(|b| b.contains(&images[i].spec.path));
    let mut matching: Vec<(usize, Description)> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        if is_blob(i) {
            continue;
        }
        let label = img.spec.to_string();
        let d = match open_image(&img.spec)
            .and_then(|im| describe_image(im, &DescribeOptions::packages_only()))
        {
            Ok(d) => d,
            Err(e) => {
                plan.rejected.push(Rejected {
                    image: label,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let same =
            d.distro == desc.distro && d.version == desc.version && d.architecture == desc.architecture;
        if same {
            matching.push((i, d));
        } else {
            let show = |d: &Description| {
                format!(
                    "{} {} {}",
                    d.distro.as_deref().unwrap_or("unknown OS"),
                    d.version.as_deref().unwrap_or("?"),
                    d.architecture.as_deref().unwrap_or("?")
                )
            };
            plan.rejected.push(Rejected {
                image: label,
                reason: format!("{} (source: {})", show(&d), show(&desc)),
            });
        }
    }

    // Rank by bytes still to send, each candidate with its backing chain.
    let best_so_far = AtomicU64::new(u64::MAX);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let scores: Vec<Mutex<Option<Score>>> = matching.iter().map(|_| Mutex::new(None)).collect();
    let workers = if options.threads == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        options.threads
    };
    thread::scope(|s| {
        for _ in 0..workers.clamp(1, matching.len().max(1)) {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((i, _)) = matching.get(n) else { break };
                let keys = merged_keys(&index, view_with_chain(&index, *i).into_iter());
                let bound = best_so_far.load(Ordering::Relaxed);
                let score = match src.measure(&|k| keys.binary_search(&k).is_ok(), bound) {
                    Some(m) => {
                        best_so_far.fetch_min(m.bytes_missing, Ordering::Relaxed);
                        let c = src.commonality(None, m);
                        Score {
                            bytes_missing: m.bytes_missing,
                            found_fraction: Some(c.found_fraction),
                            abandoned: false,
                        }
                    }
                    None => Score {
                        bytes_missing: bound.saturating_add(1),
                        found_fraction: None,
                        abandoned: true,
                    },
                };
                if let Ok(mut slot) = scores[n].lock() {
                    *slot = Some(score);
                }
            });
        }
    });
    let source_packages = package_map(&desc);
    let mut ranked: Vec<(CandidateScore, &Description)> = Vec::new();
    for ((i, d), score) in matching.iter().zip(scores) {
        let Some(Score {
            bytes_missing,
            found_fraction,
            abandoned,
        }) = score.into_inner().ok().flatten()
        else {
            continue;
        };
        let (install, remove) = diff_packages(&source_packages, &package_map(d));
        ranked.push((
            CandidateScore {
                image: images[*i].spec.to_string(),
                bytes_missing,
                found_fraction,
                abandoned,
                package_changes: install.len() + remove.len(),
            },
            d,
        ));
    }
    ranked.sort_by(|a, b| {
        (a.0.abandoned, a.0.bytes_missing, a.0.package_changes, &a.0.image).cmp(&(
            b.0.abandoned,
            b.0.bytes_missing,
            b.0.package_changes,
            &b.0.image,
        ))
    });
    plan.candidates = ranked.iter().map(|(c, _)| c.clone()).collect();
    let Some((best, best_desc)) = ranked.first() else {
        plan.reason = format!(
            "no local image runs {} {}: only a block transfer is possible",
            desc.distro.as_deref().unwrap_or("?"),
            desc.version.as_deref().unwrap_or("?")
        );
        return Ok(plan);
    };
    plan.best = Some(best.image.clone());
    let (mut install, remove) = diff_packages(&source_packages, &package_map(best_desc));
    let cached: BTreeSet<(String, String, String)> = blobs
        .map(|b| {
            b.blobs
                .iter()
                .filter_map(|b| b.control.as_ref())
                .map(|c| (c.package.clone(), c.architecture.clone(), c.version.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut download = 0u64;
    let mut from_cache = 0usize;
    for p in &mut install {
        let hit = cached.contains(&(p.name.clone(), p.architecture.clone(), p.version.clone()));
        p.in_package_cache = Some(hit);
        if hit {
            from_cache += 1;
        } else {
            download += p.installed_size.unwrap_or(0);
        }
    }
    let have: BTreeSet<_> = best_desc.repositories.iter().map(Repository::key).collect();
    plan.repositories_to_add = desc
        .repositories
        .iter()
        .filter(|r| !have.contains(&r.key()))
        .cloned()
        .collect();
    let operations = install.len() + remove.len();
    let bytes = plan.user_data_bytes + download;
    let tp_seconds = seconds(bytes).map(|s| s + operations as f64 * options.seconds_per_package);
    plan.teleport = Some(TeleportCost {
        user_data_bytes: plan.user_data_bytes,
        package_download_bytes: download,
        packages_from_cache: from_cache,
        package_operations: operations,
        bytes,
        seconds: tp_seconds,
    });
    // Only the packages the best candidate and the caches lack would come
    // from a mirror.
    plan.mirror_fetch = mirror_fetch(download, plan.cbt.bytes, options.link_rate);
    plan.install = install;
    plan.remove = remove;
    let (choice, reason) = match (plan.cbt.seconds, tp_seconds) {
        (Some(c), Some(t)) if t < c => (
            "teleport",
            format!("teleport takes about {t:.1} s, a block transfer {c:.1} s"),
        ),
        (Some(c), Some(t)) => (
            "cbt",
            format!("a block transfer takes about {c:.1} s, a teleport {t:.1} s"),
        ),
        _ if bytes < plan.cbt.bytes => (
            "teleport",
            format!(
                "teleport sends {bytes} bytes, a block transfer {} (no link rate given)",
                plan.cbt.bytes
            ),
        ),
        _ => (
            "cbt",
            format!(
                "a block transfer sends {} bytes, a teleport {bytes} (no link rate given)",
                plan.cbt.bytes
            ),
        ),
    };
    plan.choice = choice.into();
    plan.reason = reason;
    Ok(plan)
}

/// A candidate's measure: bytes missing (a lower bound once abandoned).
struct Score {
    bytes_missing: u64,
    found_fraction: Option<f64>,
    abandoned: bool,
}

/// Image view `i` plus, for a layer indexed on its own, its backing files.
fn view_with_chain(index: &Index, i: usize) -> Vec<usize> {
    let images = index.images();
    let mut out = vec![i];
    if images[i].top_layer_only {
        if let Ok(chain) = backing_chain(&images[i].spec.path, &images[i].spec.backing) {
            for p in chain {
                if let Some(j) = images
                    .iter()
                    .position(|im| im.spec.path == p && im.spec.snapshot.is_none())
                {
                    out.push(j);
                }
            }
        }
    }
    out
}

type PackageMap = BTreeMap<(String, String), (String, Option<u64>)>;

/// Installed packages by (name, architecture): version and installed size.
fn package_map(d: &Description) -> PackageMap {
    d.installed()
        .map(|p| {
            (
                (p.name.clone(), p.architecture.clone()),
                (p.version.clone(), p.installed_size),
            )
        })
        .collect()
}

/// What to install (missing, or at another version) and remove to turn
/// `candidate`'s package set into `source`'s.
fn diff_packages(source: &PackageMap, candidate: &PackageMap) -> (Vec<PackageChange>, Vec<PackageChange>) {
    let mut install = Vec::new();
    for ((name, arch), (version, size)) in source {
        let theirs = candidate.get(&(name.clone(), arch.clone()));
        if theirs.is_some_and(|(v, _)| v == version) {
            continue;
        }
        install.push(PackageChange {
            name: name.clone(),
            architecture: arch.clone(),
            version: version.clone(),
            candidate_version: theirs.map(|(v, _)| v.clone()),
            installed_size: *size,
            in_package_cache: None,
        });
    }
    let remove = candidate
        .iter()
        .filter(|(k, _)| !source.contains_key(*k))
        .map(|((name, arch), (version, size))| PackageChange {
            name: name.clone(),
            architecture: arch.clone(),
            version: version.clone(),
            candidate_version: None,
            installed_size: *size,
            in_package_cache: None,
        })
        .collect();
    (install, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_diff() {
        let m = |v: &[(&str, &str, &str)]| -> PackageMap {
            v.iter()
                .map(|(n, a, ver)| ((n.to_string(), a.to_string()), (ver.to_string(), Some(1024))))
                .collect()
        };
        let src = m(&[("a", "amd64", "1"), ("b", "amd64", "2"), ("c", "all", "1")]);
        let cand = m(&[("a", "amd64", "1"), ("b", "amd64", "1"), ("d", "amd64", "5")]);
        let (install, remove) = diff_packages(&src, &cand);
        let names: Vec<_> = install
            .iter()
            .map(|p| (p.name.as_str(), p.candidate_version.as_deref()))
            .collect();
        assert_eq!(names, [("b", Some("1")), ("c", None)]);
        assert_eq!(remove.len(), 1);
        assert_eq!(remove[0].name, "d");
    }
}
