//! Downloading `.deb`s into a package cache: a bounded number of worker
//! threads fed through a bounded channel, each package written to a
//! temporary file in the cache, checked against its index's `Size` and
//! `SHA256`, synced, and only then renamed into place. A download that is
//! short, long or does not hash right is deleted and reported, never
//! renamed.
//!
//! ```text
//!  resolve (main thread) ── jobs (bounded) ──> worker × N ── outcomes ──> FetchReport
//!                                              │ present and intact? → already present
//!                                              └ GET → .name.PID-N.cbt-download (+SHA256) → check → fsync → rename
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cbt_core::{Dir, DirEntry, Error};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{resolve, Mirror, MirrorError, PackageId, PoolEntry, Sha256Digest};

/// How [`fetch_packages`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Downloads at once (at least 1).
    pub jobs: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { jobs: 4 }
    }
}

/// A package downloaded into the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchedPackage {
    /// The package.
    #[serde(flatten)]
    pub id: PackageId,
    /// Size of its `.deb`.
    pub bytes: u64,
    /// Where it came from.
    pub url: String,
}

/// A package that could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedPackage {
    /// The package.
    #[serde(flatten)]
    pub id: PackageId,
    /// Why (names the URL or the file).
    pub reason: String,
}

/// What [`fetch_packages`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FetchReport {
    /// The package cache.
    pub dest: String,
    /// The mirrors, in the order they were asked.
    pub mirrors: Vec<String>,
    /// Distinct packages asked for.
    pub wanted: usize,
    /// Packages downloaded, sorted.
    pub fetched: Vec<FetchedPackage>,
    /// Bytes downloaded (sum of `fetched`).
    pub fetched_bytes: u64,
    /// Packages whose `.deb` was already in the cache (checked against the
    /// index when a mirror lists it), sorted.
    pub already_present: Vec<PackageId>,
    /// Packages no mirror has at that version (and not in the cache): they
    /// will have to come over the link. Sorted.
    pub missing: Vec<PackageId>,
    /// Packages whose download failed, with the reason. Sorted.
    pub failed: Vec<FailedPackage>,
    /// Index files (Release, Packages) written to the cache, and their bytes.
    pub index_files: usize,
    /// Bytes of them.
    pub index_bytes: u64,
    /// Wall-clock time, in seconds.
    pub seconds: f64,
}

impl FetchReport {
    /// True when no download failed (missing versions are not failures).
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

enum Outcome {
    Fetched(FetchedPackage),
    Present(PackageId),
    Failed(FailedPackage),
}

struct Job<'m> {
    id: PackageId,
    name: String,
    mirror: &'m Mirror,
    entry: &'m PoolEntry,
}

/// Downloads the `.deb`s of `wanted` that are not already in `dest`, each
/// from the first of `mirrors` that lists that exact (name, version,
/// architecture). Files are named as apt names them
/// ([`PackageId::deb_file_name`]). A `.deb` already there is kept if its
/// size and SHA256 match the index (else it is downloaded again).
///
/// Per-package problems (a failed, short or corrupt download, an unsafe
/// name) are reported in [`FetchReport::failed`]; the error return is for
/// a cache directory that cannot be created or opened.
pub fn fetch_packages(
    mirrors: &[Mirror],
    wanted: &[PackageId],
    dest: &Path,
    options: &FetchOptions,
) -> Result<FetchReport, MirrorError> {
    let start = Instant::now();
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, "create directory", e))?;
    let dir = Dir::open(dest)?;
    remove_stale_downloads(dest);
    let wanted: Vec<PackageId> = wanted
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut report = FetchReport {
        dest: dest.display().to_string(),
        mirrors: mirrors.iter().map(|m| m.url().to_string()).collect(),
        wanted: wanted.len(),
        ..Default::default()
    };
    let mut named = Vec::with_capacity(wanted.len());
    for id in wanted {
        match id.deb_file_name() {
            Some(name) => named.push((id, name)),
            None => report.failed.push(FailedPackage {
                reason: "name, version or architecture holds characters a package file name cannot".into(),
                id,
            }),
        }
    }
    let ids: Vec<PackageId> = named.iter().map(|(id, _)| id.clone()).collect();
    let (found, missing) = resolve(mirrors, &ids);
    let missing: BTreeSet<PackageId> = missing.into_iter().collect();
    for (id, name) in &named {
        if !missing.contains(id) {
            continue;
        }
        // Not on any mirror: a file of that name already here (from apt's
        // own cache, say) is kept as it is; it cannot be checked.
        if matches!(dir.entry(name), Ok(DirEntry::File(_))) {
            report.already_present.push(id.clone());
        } else {
            report.missing.push(id.clone());
        }
    }
    let jobs: Vec<Job<'_>> = named
        .into_iter()
        .filter_map(|(id, name)| {
            let (mirror, entry) = found.get(&id).copied()?;
            Some(Job {
                id,
                name,
                mirror,
                entry,
            })
        })
        .collect();
    let workers = options.jobs.clamp(1, 64).min(jobs.len().max(1));
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job<'_>>(workers * 2);
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Outcome>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let out_tx = out_tx.clone();
            let dir = &dir;
            s.spawn(move || {
                for job in job_rx {
                    if out_tx.send(run_job(dir, &job)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(out_tx);
        for job in jobs {
            if job_tx.send(job).is_err() {
                break;
            }
        }
        drop(job_tx);
    });
    let mut any_fetched = false;
    for outcome in out_rx {
        match outcome {
            Outcome::Fetched(f) => {
                any_fetched = true;
                report.fetched_bytes += f.bytes;
                report.fetched.push(f);
            }
            Outcome::Present(id) => report.already_present.push(id),
            Outcome::Failed(f) => report.failed.push(f),
        }
    }
    for m in mirrors {
        for (name, data) in m.index_files() {
            if save_index(&dir, name, data)? {
                any_fetched = true;
                report.index_files += 1;
                report.index_bytes += data.len() as u64;
            }
        }
    }
    if any_fetched {
        dir.sync()?;
    }
    report.fetched.sort_by(|a, b| a.id.cmp(&b.id));
    report.already_present.sort();
    report.missing.sort();
    report.failed.sort_by(|a, b| a.id.cmp(&b.id));
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes a checked index file into the cache unless it is there with the
/// same bytes (temporary file, fsync, rename). Returns whether it wrote.
/// Downloads older than this are left-overs of a killed process.
const STALE_DOWNLOAD: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes temporary downloads (`.NAME.PID-N.cbt-download`) left in
/// `dest` by a process killed mid-download, once they are a day old (a
/// younger one may belong to a transfer running now).
fn remove_stale_downloads(dest: &Path) {
    let Ok(entries) = std::fs::read_dir(dest) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(".cbt-download")) {
            continue;
        }
        // Not following links: a link of that name is not ours to judge.
        let stale = entry.file_type().is_ok_and(|t| t.is_file())
            && entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_DOWNLOAD);
        if stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!("removed a stale download {}", entry.path().display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

/// A temporary name for `name` in the cache, unique to this download:
/// several transfers (threads or processes) may fill one cache at once,
/// and none may rename another's half-written file into place.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}-{n}.cbt-download", std::process::id())
}

fn save_index(dir: &Dir, name: &str, data: &[u8]) -> Result<bool, MirrorError> {
    let holds_data = || -> Result<bool, MirrorError> {
        let Some(mut f) = dir.open_existing(name, false)? else {
            return Ok(false);
        };
        let mut have = Vec::new();
        Ok(f.metadata().is_ok_and(|m| m.len() == data.len() as u64)
            && f.read_to_end(&mut have).is_ok()
            && have == data)
    };
    if holds_data()? {
        return Ok(false);
    }
    let temp = temp_name(name);
    let temp_path = dir.join(&temp);
    let written = dir.create_replacing(&temp).and_then(|mut f| {
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&temp_path, "write", e))
    });
    // As for packages: not over the same bytes another transfer saved
    // meanwhile (their blob may be in use), over other bytes, yes.
    let placed = written.map_err(MirrorError::from).and_then(|()| {
        if dir.rename_no_replace(&temp, name)? {
            return Ok(true);
        }
        if holds_data()? {
            return Ok(false);
        }
        dir.rename(&temp, name)?;
        Ok(true)
    });
    let _ = dir.remove(&temp);
    placed
}

fn run_job(dir: &Dir, job: &Job<'_>) -> Outcome {
    let failed = |reason: String| {
        Outcome::Failed(FailedPackage {
            id: job.id.clone(),
            reason,
        })
    };
    match intact(dir, &job.name, job.entry) {
        Ok(true) => return Outcome::Present(job.id.clone()),
        Ok(false) => {}
        Err(e) => return failed(e.to_string()),
    }
    match download(dir, job) {
        Ok(bytes) => {
            tracing::info!("fetched {} ({bytes} bytes)", job.name);
            Outcome::Fetched(FetchedPackage {
                id: job.id.clone(),
                bytes,
                url: job.mirror.entry_url(job.entry),
            })
        }
        Err(e) => {
            tracing::warn!("{}: {e}", job.name);
            failed(e.to_string())
        }
    }
}

/// True if `name` is in the cache with the entry's size and SHA256.
pub(crate) fn intact(dir: &Dir, name: &str, entry: &PoolEntry) -> Result<bool, MirrorError> {
    match dir.entry(name)? {
        DirEntry::File(size) if size == entry.size => {}
        DirEntry::Missing | DirEntry::File(_) => return Ok(false),
        DirEntry::Other => {
            return Err(Error::NotRegular {
                path: dir.join(name),
                reason: "is in the way of a package file (a link or directory?); remove it".into(),
            }
            .into())
        }
    }
    let Some(mut f) = dir.open_existing(name, false)? else {
        return Ok(false);
    };
    Ok(sha256_of(&mut f).map_err(|e| Error::io(dir.join(name), "read", e))? == entry.sha256)
}

fn sha256_of(f: &mut File) -> std::io::Result<Sha256Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(Sha256Digest(h.finalize().into())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Downloads the job's `.deb` to a temporary file, checks it and renames
/// it into place; on any failure the temporary file is removed.
fn download(dir: &Dir, job: &Job<'_>) -> Result<u64, MirrorError> {
    let temp = temp_name(&job.name);
    let result = download_to(dir, &temp, job);
    let placed = result.and_then(|n| {
        // Not over a file another transfer filling the same cache put in
        // place meanwhile (its blob, stamped with its inode, may be in
        // use); over a damaged one, yes.
        if dir.rename_no_replace(&temp, &job.name)? || matches!(intact(dir, &job.name, job.entry), Ok(true)) {
            return Ok(n);
        }
        dir.rename(&temp, &job.name)?;
        Ok(n)
    });
    // Whatever happened, the temporary file goes (a no-op once renamed).
    let _ = dir.remove(&temp);
    placed
}

fn download_to(dir: &Dir, temp: &str, job: &Job<'_>) -> Result<u64, MirrorError> {
    let url = job.mirror.entry_url(job.entry);
    let temp_path = dir.join(temp);
    let mut file = dir.create_replacing(temp)?;
    let mut hasher = Sha256::new();
    let got = job.mirror.http().get(&url, job.entry.size, &mut |chunk| {
        hasher.update(chunk);
        file.write_all(chunk)
            .map_err(|e| Error::io(&temp_path, "write", e).into())
    });
    let got = match got {
        Err(MirrorError::TooLarge { url, .. }) => {
            return Err(MirrorError::Mismatch {
                url,
                reason: format!(
                    "longer than the {} bytes its index gives (deleted)",
                    job.entry.size
                ),
            })
        }
        r => r?,
    };
    if got != job.entry.size {
        return Err(MirrorError::Mismatch {
            url,
            reason: format!(
                "truncated: {got} of the {} bytes its index gives (deleted)",
                job.entry.size
            ),
        });
    }
    let digest = Sha256Digest(hasher.finalize().into());
    if digest != job.entry.sha256 {
        return Err(MirrorError::Mismatch {
            url,
            reason: format!(
                "SHA256 {digest}, but its index says {} (deleted)",
                job.entry.sha256
            ),
        });
    }
    file.sync_all().map_err(|e| Error::io(&temp_path, "sync", e))?;
    Ok(got)
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    #[test]
    fn only_day_old_downloads_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".a_1_all.deb.7-0.cbt-download");
        let young = dir.path().join(".b_1_all.deb.7-1.cbt-download");
        let other = dir.path().join("c_1_all.deb");
        for p in [&old, &young, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let day_ago = std::time::SystemTime::now() - STALE_DOWNLOAD - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        remove_stale_downloads(dir.path());
        assert!(!old.exists() && young.exists() && other.exists());
    }
}

#[cfg(test)]
mod tests {
    use super::super::MirrorOptions;
    use super::*;

    #[test]
    fn present_missing_and_unsafe_names_need_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"a tiny deb";
        std::fs::write(dir.path().join("tool_0.5_all.deb"), data).unwrap();
        std::fs::write(dir.path().join("stale_1_all.deb"), b"old").unwrap();
        // Nothing listens on port 9 of 127.0.0.1 (discard) in a test box; no
        // request is made anyway: every job is settled locally.
        let mut m = Mirror::empty("http://127.0.0.1:9/debian", &MirrorOptions::default());
        m.insert(
            PackageId::new("tool", "0.5", "all"),
            PoolEntry {
                filename: "pool/main/t/tool_0.5_all.deb".into(),
                size: data.len() as u64,
                sha256: Sha256Digest::of(data),
            },
        );
        let wanted = [
            PackageId::new("tool", "0.5", "all"),
            PackageId::new("tool", "0.5", "all"),
            PackageId::new("stale", "1", "all"),
            PackageId::new("gone", "1:1", "amd64"),
            PackageId::new("../evil", "1", "amd64"),
        ];
        let r = m
            .fetch_packages(&wanted, dir.path(), &FetchOptions::default())
            .unwrap();
        assert_eq!(r.wanted, 4);
        assert!(r.fetched.is_empty());
        assert_eq!(
            r.already_present,
            [
                PackageId::new("stale", "1", "all"),
                PackageId::new("tool", "0.5", "all")
            ]
        );
        assert_eq!(r.missing, [PackageId::new("gone", "1:1", "amd64")]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].id.name, "../evil");
        assert!(!r.complete());
    }

    #[test]
    fn a_corrupt_cached_file_is_fetched_again_and_a_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool_0.5_all.deb"), b"corrupt!!!").unwrap();
        let options = MirrorOptions {
            connect_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        // A port nothing listens on: bind one and drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Mirror::empty(&format!("http://127.0.0.1:{port}/debian"), &options);
        m.insert(
            PackageId::new("tool", "0.5", "all"),
            PoolEntry {
                filename: "pool/main/t/tool_0.5_all.deb".into(),
                size: 10,
                sha256: Sha256Digest::of(b"a tiny deb"),
            },
        );
        let r = m
            .fetch_packages(
                &[PackageId::new("tool", "0.5", "all")],
                dir.path(),
                &FetchOptions::default(),
            )
            .unwrap();
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert!(r.failed[0].reason.contains(&format!("127.0.0.1:{port}")), "{r:?}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["tool_0.5_all.deb"], "no temporary file left");
    }
}
