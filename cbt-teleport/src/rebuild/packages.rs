//! Changing the clone's packages to the source's with the guest's own
//! package manager: the archives come from the package caches, else the
//! mirrors (exact version, else the nearest one listed: see
//! [`super::version::nearest`]), downloaded and checked against the
//! mirror's index by [`crate::mirror`]; `dpkg` then runs in a chroot of
//! the mounted clone, with `/proc` and `/dev` mounted and services kept
//! from starting (`policy-rc.d`). dnf/rpm would be another `run_*` here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use cbt_core::{Dir, DirEntry, Error};

use super::{RebuildError, Result};

use super::apply::GuestRoot;
use super::version;
use crate::mirror::{fetch_packages, index_architectures, Mirror, PackageId};
use crate::{GuestRequest, PackageSources};

/// Where the archives are copied inside the clone while dpkg runs.
const STAGING: &str = "/var/cache/cbt-rebuild";
/// The policy file that keeps maintainer scripts from starting services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Most output kept per failure report.
const MAX_OUTPUT: usize = 8 << 10;

/// A package to install, and the version chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Install {
    /// The source's package (`name:arch version`).
    pub wanted: String,
    /// The version installed.
    pub version: String,
    /// True if it is the source's version.
    pub exact: bool,
    /// `cache` or the mirror's URL.
    pub from: String,
    /// The clone's version before, if it had the package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    #[serde(skip)]
    archive: PathBuf,
}

/// A package whose maintainer scripts or unpacking failed.
#[derive(Debug, Clone, Serialize)]
pub struct PackageFailure {
    /// Package name (or archive, if dpkg named only that).
    pub package: String,
    /// What dpkg said (its last lines).
    pub output: String,
}

/// What the package phase did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PackageChanges {
    /// Packages installed or upgraded.
    pub installed: Vec<Install>,
    /// Packages removed (`name:arch version`).
    pub removed: Vec<String>,
    /// Packages of the source no cache or mirror has in any version.
    pub unavailable: Vec<String>,
    /// Failures (with `--keep-going`; otherwise the first stops the rebuild).
    pub failures: Vec<PackageFailure>,
    /// Bytes of archives downloaded from mirrors.
    pub downloaded_bytes: u64,
}

type Key = (String, String);

fn by_key(ids: &[PackageId]) -> BTreeMap<Key, &PackageId> {
    ids.iter()
        .map(|p| ((p.name.clone(), p.architecture.clone()), p))
        .collect()
}

/// Chooses and fetches the archives that turn `clone`'s package set into
/// `request`'s: every source package the clone lacks or has at another
/// version. Returns the installs and the packages to remove.
pub fn prepare(
    request: &GuestRequest,
    clone: &[PackageId],
    sources: &PackageSources,
    keep_going: bool,
) -> Result<(PackageChanges, Vec<PackageId>)> {
    let want = by_key(&request.packages);
    let have = by_key(clone);
    let remove: Vec<PackageId> = have
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(_, p)| (*p).clone())
        .collect();
    let install: Vec<(&PackageId, Option<&PackageId>)> = want
        .iter()
        .filter(|(k, p)| have.get(*k).is_none_or(|h| h.version != p.version))
        .map(|(k, p)| (*p, have.get(k).copied()))
        .collect();
    let mut changes = PackageChanges::default();
    let caches: Vec<(PathBuf, Dir)> = sources
        .caches
        .iter()
        .filter_map(|c| Dir::open(c).ok().map(|d| (c.clone(), d)))
        .collect();
    let in_cache = |id: &PackageId| -> Option<PathBuf> {
        let name = id.deb_file_name()?;
        caches
            .iter()
            .find(|(_, d)| matches!(d.entry(&name), Ok(DirEntry::File(_))))
            .map(|(p, _)| p.join(&name))
    };
    let mut need_mirror = Vec::new();
    for (wanted, before) in &install {
        match in_cache(wanted) {
            Some(archive) => changes.installed.push(Install {
                wanted: wanted.to_string(),
                version: wanted.version.clone(),
                exact: true,
                from: "cache".into(),
                replaces: before.map(|b| b.version.clone()),
                archive,
            }),
            None => need_mirror.push((*wanted, *before)),
        }
    }
    if need_mirror.is_empty() {
        return Ok((changes, remove));
    }
    let mirrors = open_mirrors(request, sources);
    let mut fetch = Vec::new();
    for (wanted, before) in need_mirror {
        let exact = mirrors.iter().find(|m| m.lookup(wanted).is_some());
        let chosen = match exact {
            Some(m) => Some((wanted.clone(), m.url().to_string())),
            None => mirrors.iter().find_map(|m| {
                let versions = m.versions(&wanted.name, &wanted.architecture);
                version::nearest(&wanted.version, versions.iter().copied()).map(|v| {
                    (
                        PackageId::new(&wanted.name, v, &wanted.architecture),
                        m.url().to_string(),
                    )
                })
            }),
        };
        let Some((id, from)) = chosen else {
            changes.unavailable.push(wanted.to_string());
            continue;
        };
        // A nearest version may already be cached from an earlier run.
        if let Some(archive) = in_cache(&id) {
            changes.installed.push(Install {
                wanted: wanted.to_string(),
                exact: id.version == wanted.version,
                version: id.version.clone(),
                from: "cache".into(),
                replaces: before.map(|b| b.version.clone()),
                archive,
            });
            continue;
        }
        fetch.push((wanted.clone(), id, from, before.map(|b| b.version.clone())));
    }
    if !changes.unavailable.is_empty() && !keep_going {
        return Err(RebuildError::Failed(format!(
            "no package cache or mirror has any version of: {} (give a --mirror that does, or --keep-going to rebuild without them)",
            changes.unavailable.join(", ")
        )));
    }
    if fetch.is_empty() {
        return Ok((changes, remove));
    }
    let Some(dest) = sources.caches.first() else {
        return Err(RebuildError::Failed(
            "no package cache to download packages into: give --package-cache DIR".into(),
        ));
    };
    let ids: Vec<PackageId> = fetch.iter().map(|(_, id, _, _)| id.clone()).collect();
    let report = fetch_packages(&mirrors, &ids, dest, &sources.fetch)
        .map_err(|e| RebuildError::Failed(e.to_string()))?;
    changes.downloaded_bytes = report.fetched.iter().map(|f| f.bytes).sum();
    if let Some(f) = report.failed.first() {
        return Err(RebuildError::Failed(format!(
            "package {}: download failed: {}",
            f.id, f.reason
        )));
    }
    for (wanted, id, from, replaces) in fetch {
        let Some(name) = id.deb_file_name() else { continue };
        changes.installed.push(Install {
            wanted: wanted.to_string(),
            exact: id.version == wanted.version,
            version: id.version,
            from,
            replaces,
            archive: dest.join(name),
        });
    }
    Ok((changes, remove))
}

fn open_mirrors(request: &GuestRequest, sources: &PackageSources) -> Vec<Mirror> {
    let archs = index_architectures(&request.packages, request.architecture.as_deref());
    sources
        .mirrors
        .iter()
        .filter_map(
            |url| match Mirror::open(url, &request.dists, &archs, &sources.network) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("mirror {url}: not usable: {e}");
                    None
                }
            },
        )
        .collect()
}

/// Installs and removes in a chroot of `root` (system directories already
/// mounted). A failure stops here unless `keep_going`.
pub fn apply(
    root_path: &Path,
    root: &GuestRoot,
    changes: &mut PackageChanges,
    remove: &[PackageId],
    keep_going: bool,
) -> Result<()> {
    let own_policy = !root.exists(POLICY_RC_D);
    if own_policy {
        root.put(
            POLICY_RC_D,
            b"#!/bin/sh\n# cbt rebuild: no service starts in a chroot\nexit 101\n",
            0o755,
        )?;
    }
    let result = (|| {
        if !changes.installed.is_empty() {
            let mut staged = Vec::new();
            let mut names = BTreeMap::new();
            for p in &changes.installed {
                let file = p
                    .archive
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let guest = format!("{STAGING}/{file}");
                let mut src = File::open(&p.archive).map_err(|e| Error::io(&p.archive, "open", e))?;
                root.put_from(&guest, &mut src)?;
                names.insert(guest.clone(), p.wanted.clone());
                staged.push(guest);
            }
            // apt orders the installs (pre-dependencies first) and reads
            // the archives given as files; a guest without apt gets dpkg.
            let (tool, mut args) = if root.exists("/usr/bin/apt-get") {
                (
                    "apt-get",
                    vec![
                        "install".to_string(),
                        "--yes".into(),
                        "--allow-downgrades".into(),
                        "--no-install-recommends".into(),
                        "-o".into(),
                        "Dpkg::Options::=--force-confold".into(),
                        "-o".into(),
                        "APT::Sandbox::User=root".into(),
                    ],
                )
            } else {
                ("dpkg", vec!["--install".to_string(), "--force-confold".into()])
            };
            args.extend(staged);
            let failures = run_in(root_path, tool, &args)?;
            changes.failures.extend(failures.into_iter().map(|mut f| {
                if let Some(n) = names.get(&f.package) {
                    f.package = n.clone();
                }
                f
            }));
            if !changes.failures.is_empty() && !keep_going {
                return Err(failed(&changes.failures));
            }
        }
        if !remove.is_empty() {
            let mut args = vec!["--purge".to_string()];
            args.extend(remove.iter().map(|p| format!("{}:{}", p.name, p.architecture)));
            let failures = run_in(root_path, "dpkg", &args)?;
            changes.removed = remove
                .iter()
                .map(|p| p.to_string())
                .filter(|id| {
                    !failures
                        .iter()
                        .any(|f| id.starts_with(&format!("{}:", f.package)))
                })
                .collect();
            changes.failures.extend(failures);
            if !changes.failures.is_empty() && !keep_going {
                return Err(failed(&changes.failures));
            }
        }
        Ok(())
    })();
    let _ = root.remove_tree(STAGING);
    if own_policy {
        let _ = root.remove(POLICY_RC_D);
    }
    result
}

fn failed(failures: &[PackageFailure]) -> RebuildError {
    let mut text = String::from("the package manager failed in the clone (use --keep-going to go on):");
    for f in failures {
        text.push_str(&format!(
            "\n  {}: {}",
            f.package,
            f.output.trim().replace('\n', "\n    ")
        ));
    }
    RebuildError::Failed(text)
}

/// Runs the package manager `tool args` in a chroot of `root`; returns the
/// packages dpkg says it could not process, with its output.
fn run_in(root: &Path, tool: &str, args: &[String]) -> Result<Vec<PackageFailure>> {
    let out = Command::new("chroot")
        .arg(root)
        .arg(tool)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(root, "run chroot", e))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        return Ok(Vec::new());
    }
    let mut names = failed_packages(&text);
    if names.is_empty() {
        names.insert(format!("{tool} {}", args.first().map_or("", String::as_str)));
    }
    Ok(names
        .into_iter()
        .map(|package| PackageFailure {
            output: excerpt(&text, &package),
            package,
        })
        .collect())
}

/// The names under dpkg's "Errors were encountered while processing:".
fn failed_packages(output: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut lines = output.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("Errors were encountered while processing:") {
            for n in lines.by_ref() {
                let Some(n) = n.strip_prefix(' ') else { break };
                let n = n.trim();
                if n.is_empty() {
                    break;
                }
                names.insert(n.split(':').next().unwrap_or(n).to_string());
            }
        }
    }
    names
}

/// The lines of `output` about `package` and the maintainer script's own
/// output just before them, bounded.
fn excerpt(output: &str, package: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut keep = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(package) && !l.starts_with(' ') {
            for j in i.saturating_sub(6)..(i + 3).min(lines.len()) {
                keep.insert(j);
            }
        }
    }
    let mut text: String = keep.into_iter().map(|i| format!("{}\n", lines[i])).collect();
    if text.is_empty() {
        text = output.to_string();
    }
    if text.len() > MAX_OUTPUT {
        let cut = text.len() - MAX_OUTPUT;
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(cut);
        text = text[cut..].to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_failures_are_named() {
        let out = "Setting up broken (1.0) ...\npostinst says no\ndpkg: error processing package broken (--install):\n installed broken package post-installation script subprocess returned error exit status 1\nErrors were encountered while processing:\n broken\n /var/cache/cbt-rebuild/3.deb\n";
        let names = failed_packages(out);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["/var/cache/cbt-rebuild/3.deb", "broken"]
        );
        assert!(excerpt(out, "broken").contains("postinst says no"));
    }

    #[test]
    fn the_delta_installs_changed_versions_and_removes_extras() {
        let request = GuestRequest {
            packages: vec![PackageId::new("a", "1", "amd64"), PackageId::new("b", "2", "all")],
            ..GuestRequest::default()
        };
        let clone = [
            PackageId::new("a", "1", "amd64"),
            PackageId::new("b", "1", "all"),
            PackageId::new("c", "1", "amd64"),
        ];
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(cache.path().join("b_2_all.deb"), b"x").unwrap();
        let sources = PackageSources {
            caches: vec![cache.path().to_path_buf()],
            ..PackageSources::default()
        };
        let (changes, remove) = prepare(&request, &clone, &sources, false).unwrap();
        assert_eq!(changes.installed.len(), 1);
        assert_eq!(changes.installed[0].wanted, "b:all 2");
        assert_eq!(changes.installed[0].replaces.as_deref(), Some("1"));
        assert_eq!(remove, [PackageId::new("c", "1", "amd64")]);
        // Nothing anywhere: refused unless keep_going.
        let request = GuestRequest {
            packages: vec![PackageId::new("d", "1", "amd64")],
            ..GuestRequest::default()
        };
        assert!(prepare(&request, &[], &sources, false).is_err());
        let (changes, _) = prepare(&request, &[], &sources, true).unwrap();
        assert_eq!(changes.unavailable, ["d:amd64 1"]);
    }
}
