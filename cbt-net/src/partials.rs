//! The daemon's bound on what failed pushes leave behind.
//!
//! A push cut short keeps its partial output (`.NAME.cbt-partial`, later
//! `.NAME.cbt-resume-N`) so that a retry resends little (see
//! [`crate::resume`]). Left unbounded, those files fill the data directory:
//! after a push that ran out of disk, the kept partial makes every later
//! push fail the same way. Before each push the daemon therefore removes
//! side files older than [`PartialLimits::max_age`], then the oldest ones
//! while their total exceeds [`PartialLimits::max_bytes`] or the disk has
//! less free space than the new image needs. The pushed name's own files
//! are kept: they are its resume seeds. Every removal is logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cbt_core::{Dir, DirEntry};

/// Bounds on kept partial outputs in a data directory.
#[derive(Debug, Clone, Copy)]
pub struct PartialLimits {
    /// Total bytes (allocated on disk) of partial and resume files.
    pub max_bytes: u64,
    /// Older partial and resume files are removed.
    pub max_age: Duration,
}

impl Default for PartialLimits {
    fn default() -> Self {
        PartialLimits {
            max_bytes: 64 << 30,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// One side file left by an earlier push.
#[derive(Debug)]
struct Leftover {
    name: String,
    allocated: u64,
    modified: SystemTime,
}

/// True for the hidden side files a receiver leaves (partial outputs,
/// resume files, verification manifests).
fn is_side_file(name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".cbt-partial")
            || name.ends_with(".cbt-manifest")
            || name.contains(".cbt-resume-"))
}

/// Makes room in `dir` before a push to `output` of an image of `needed`
/// bytes, within `limits`. Returns the files removed.
pub fn make_room(dir: &Path, output: &Path, needed: u64, limits: &PartialLimits) -> Vec<PathBuf> {
    let own_prefix = format!(
        ".{}.cbt-",
        output
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let Ok(handle) = Dir::open(dir) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut remove = |name: &str, why: String| match handle.remove(name) {
        Ok(()) => {
            tracing::info!(file = %dir.join(name).display(), "removed a kept partial output: {why}");
            removed.push(dir.join(name));
        }
        Err(e) => tracing::warn!("cannot remove a kept partial output: {e}"),
    };
    let mut kept: Vec<Leftover> = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_side_file(&name) || name.starts_with(&own_prefix) {
            continue;
        }
        // Only regular files (never follow a link to size or age it).
        let Ok(meta) = e.metadata() else { continue };
        if !matches!(handle.entry(&name), Ok(DirEntry::File(_))) {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        let age = now.duration_since(modified).unwrap_or_default();
        if age > limits.max_age {
            remove(&name, format!("older than {} s", limits.max_age.as_secs()));
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        kept.push(Leftover {
            name,
            allocated: meta.blocks() * 512,
            modified,
        });
    }
    kept.sort_by_key(|l| l.modified);
    let mut total: u64 = kept.iter().map(|l| l.allocated).sum();
    let mut free = free_bytes(dir);
    for l in kept {
        let over = total > limits.max_bytes;
        let short = free.is_some_and(|f| f < needed);
        if !over && !short {
            break;
        }
        let why = if over {
            format!(
                "partial outputs take {total} bytes, more than max_partial_bytes {}",
                limits.max_bytes
            )
        } else {
            format!(
                "the new image needs {needed} bytes and the disk has {} free",
                free.unwrap_or(0)
            )
        };
        remove(&l.name, why);
        total = total.saturating_sub(l.allocated);
        free = free.map(|f| f.saturating_add(l.allocated));
    }
    removed
}

/// Free bytes for unprivileged writers on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn removes_old_then_oldest_over_budget_and_keeps_the_pushed_names_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let write = |name: &str, len: usize, secs: u64| {
            fs::write(dir.join(name), vec![1u8; len]).unwrap();
            age(&dir.join(name), secs);
        };
        write(".ancient.cbt-partial", 4096, 3 * 24 * 3600);
        write(".a.cbt-partial", 64 << 10, 300);
        write(".b.cbt-resume-0", 64 << 10, 200);
        write(".c.cbt-partial", 64 << 10, 100);
        write(".me.cbt-resume-3", 256 << 10, 500);
        write("image.raw", 256 << 10, 1000);
        std::os::unix::fs::symlink("/etc/passwd", dir.join(".link.cbt-partial")).unwrap();
        let limits = PartialLimits {
            max_bytes: 100 << 10,
            max_age: Duration::from_secs(24 * 3600),
        };
        let removed = make_room(dir, &dir.join("me"), 0, &limits);
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [".ancient.cbt-partial", ".a.cbt-partial", ".b.cbt-resume-0"]
        );
        for kept in [
            ".c.cbt-partial",
            ".me.cbt-resume-3",
            "image.raw",
            ".link.cbt-partial",
        ] {
            assert!(fs::symlink_metadata(dir.join(kept)).is_ok(), "{kept}");
        }
        // Short of disk: everything but the pushed name's own files goes.
        let removed = make_room(dir, &dir.join("me"), u64::MAX, &limits);
        assert_eq!(removed.len(), 1);
        assert!(dir.join(".me.cbt-resume-3").exists());
    }
}
