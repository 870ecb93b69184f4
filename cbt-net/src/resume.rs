//! Resume: what a receiver leaves behind when a transfer is cut, and how
//! the next attempt uses it.
//!
//! While receiving `DIR/NAME` the output is written at `DIR/.NAME.cbt-partial`
//! (see [`cbt_core::temp_path_for`]). If the transfer fails, that file is
//! kept. The next attempt renames it to `DIR/.NAME.cbt-resume-N` before
//! creating a fresh partial output, and indexes it as a seed like any other
//! image: the blocks that already arrived are found locally and not sent
//! again. (Every block read from a seed is re-hashed, so a resume file that
//! was cut mid-write can only cost time, never correctness.) At most
//! [`KEEP`] resume files are kept per output; all of them are removed once
//! the output is published.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// Resume files kept per output (the newest ones).
pub const KEEP: usize = 2;

/// The verification manifest written next to an output.
pub fn manifest_path(output: &Path) -> PathBuf {
    side_file(output, "cbt-manifest")
}

fn side_file(output: &Path, suffix: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.{suffix}"))
}

/// The resume files of `output`, oldest first, with their numbers.
pub fn resume_files(output: &Path) -> Vec<(u64, PathBuf)> {
    let prefix = side_file(output, "cbt-resume-");
    let (Some(dir), Some(prefix_name)) = (prefix.parent(), prefix.file_name().and_then(|n| n.to_str()))
    else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix_name)?.parse::<u64>().ok()?;
            e.file_type()
                .ok()?
                .is_file()
                .then(|| (n, prefix.with_file_name(&name)))
        })
        .collect();
    found.sort();
    found
}

/// Before a new attempt at `output`: turns a partial output left by an
/// earlier attempt into a resume file, drops the oldest resume files, and
/// returns the ones to use as seeds.
pub fn prepare(output: &Path) -> Result<Vec<PathBuf>> {
    let partial = cbt_core::temp_path_for(output);
    let mut files = resume_files(output);
    if fs::symlink_metadata(&partial).is_ok_and(|m| m.is_file() && m.len() > 0) {
        let next = files.last().map_or(0, |(n, _)| n + 1);
        let target = side_file(output, &format!("cbt-resume-{next}"));
        fs::rename(&partial, &target).map_err(|e| cbt_core::Error::io(&partial, "keep partial output", e))?;
        tracing::info!("resuming: {} is used as a seed", target.display());
        files.push((next, target));
    }
    while files.len() > KEEP {
        let (_, old) = files.remove(0);
        let _ = fs::remove_file(old);
    }
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// After `output` was published: removes its resume files.
pub fn cleanup(output: &Path) {
    for (_, p) in resume_files(output) {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_outputs_become_seeds_and_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vm.img");
        assert!(prepare(&out).unwrap().is_empty());
        for round in 0..4 {
            fs::write(cbt_core::temp_path_for(&out), format!("partial {round}")).unwrap();
            let seeds = prepare(&out).unwrap();
            assert_eq!(seeds.len(), (round + 1).min(KEEP));
            assert!(!cbt_core::temp_path_for(&out).exists());
            let newest = fs::read_to_string(seeds.last().unwrap()).unwrap();
            assert_eq!(newest, format!("partial {round}"));
        }
        cleanup(&out);
        assert!(resume_files(&out).is_empty());
        assert_eq!(manifest_path(&out), dir.path().join(".vm.img.cbt-manifest"));
    }
}
