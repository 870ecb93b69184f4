//! Finding what to index under the roots: raw images (by extension), qcow2
//! images (by magic), every backing file and every internal snapshot, each
//! once (by canonical path).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{
    backing_chain, detect_format, read_header, read_snapshot_table, Backing, ExtentScope, ImageFormat,
    ImageSpec,
};

/// One thing to index: an image's current state or one of its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Candidate {
    pub spec: ImageSpec,
    pub scope: ExtentScope,
}

/// Walks `roots` and returns what to index, sorted and without duplicates.
/// Explicitly named files are taken whatever their extension; inside
/// directories raw images are recognised by `raw_extensions`. Paths in
/// `exclude` (canonical) are left out. `optional` files (extra seeds a
/// provider prepared) are taken too, but one that is gone meanwhile (a
/// cache another process cleaned) is skipped with a warning, where a
/// missing root is an error. Under [`Backing::Within`], files that lie
/// outside it (links out of a root) and backing files outside it are
/// skipped with a warning.
pub(crate) fn discover(
    roots: &[PathBuf],
    optional: &[PathBuf],
    raw_extensions: &[String],
    exclude: &[PathBuf],
    backing: &Backing,
) -> Result<Vec<Candidate>> {
    let mut files = BTreeSet::new();
    for file in optional {
        match file.canonicalize() {
            Ok(f) => {
                files.insert(f);
            }
            Err(e) => tracing::warn!("skipping the extra seed {}: {e}", file.display()),
        }
    }
    for root in roots {
        let meta = fs::metadata(root).map_err(|e| Error::io(root, "index root", e))?;
        if meta.is_dir() {
            walk(root, raw_extensions, &mut files)?;
        } else if meta.is_file() || meta.file_type().is_block_device() {
            files.insert(root.canonicalize().map_err(|e| Error::io(root, "resolve", e))?);
        } else {
            return Err(Error::malformed(
                root,
                "index root is neither a file, a block device nor a directory",
            ));
        }
    }
    let mut out = BTreeSet::new();
    for file in files {
        if exclude.contains(&file) {
            continue;
        }
        if !backing.allows(&file) && !optional.iter().any(|o| o.canonicalize().is_ok_and(|o| o == file)) {
            tracing::warn!(
                "skipping {}: it lies outside the seed directories (a link out of them?)",
                file.display()
            );
            continue;
        }
        if let Err(e) = crate::assemble::check_consistent(&file) {
            // Its blocks would be verified anyway, but the operator should
            // know that this seed is half-updated.
            tracing::warn!("not using {} as a seed: {e}", file.display());
            continue;
        }
        if let Err(e) = add_image(&file, exclude, backing, &mut out) {
            // One unreadable or broken seed must not stop the index.
            tracing::warn!("skipping {}: {e}", file.display());
        }
    }
    Ok(out.into_iter().collect())
}

fn walk(dir: &Path, raw_extensions: &[String], out: &mut BTreeSet<PathBuf>) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", d.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            // Symlinked directories are not followed (no loops); symlinked files are.
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else { continue };
            if !meta.is_file() {
                continue;
            }
            let by_ext = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| raw_extensions.iter().any(|r| r.eq_ignore_ascii_case(e)));
            let format = detect_format(&path);
            if let Err(e @ Error::UnsupportedFormat { .. }) = &format {
                // Said once here, not silently passed over: the operator
                // may expect this image to seed the transfer.
                tracing::warn!("skipping {e}");
                continue;
            }
            let is_qcow2 = matches!(format, Ok(ImageFormat::Qcow2));
            if by_ext || is_qcow2 {
                if let Ok(c) = path.canonicalize() {
                    out.insert(c);
                }
            }
        }
    }
    Ok(())
}

fn add_image(
    path: &Path,
    exclude: &[PathBuf],
    backing: &Backing,
    out: &mut BTreeSet<Candidate>,
) -> Result<()> {
    if detect_format(path)? != ImageFormat::Qcow2 {
        out.insert(Candidate {
            spec: ImageSpec::file(path).with_backing(backing.clone()),
            scope: ExtentScope::All,
        });
        return Ok(());
    }
    let chain = backing_chain(path, backing)?;
    let mut layer = path.to_path_buf();
    let mut rest = chain.iter();
    loop {
        let has_backing = rest.len() > 0;
        // With a backing file in the index, each layer contributes only its own data.
        let scope = if has_backing {
            ExtentScope::TopLayer
        } else {
            ExtentScope::All
        };
        if !exclude.contains(&layer) {
            out.insert(Candidate {
                spec: ImageSpec::file(&layer).with_backing(backing.clone()),
                scope,
            });
            if detect_format(&layer)? == ImageFormat::Qcow2 {
                let file = File::open(&layer).map_err(|e| Error::io(&layer, "open", e))?;
                let (header, file_len) = read_header(&file, &layer)?;
                let snapshots = read_snapshot_table(&file, &layer, &header, file_len)?;
                for s in &snapshots {
                    let unique_name = snapshots.iter().filter(|o| o.name == s.name).count() == 1;
                    let name = if unique_name { s.name.clone() } else { s.id.clone() };
                    out.insert(Candidate {
                        spec: ImageSpec {
                            path: layer.clone(),
                            snapshot: Some(name),
                            backing: backing.clone(),
                        },
                        scope,
                    });
                }
            }
        }
        match rest.next() {
            Some(next) => layer = next.clone(),
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_extra_seed_is_skipped_but_a_missing_root_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let seed = d.path().join("seed.blob");
        std::fs::write(&seed, vec![1u8; 8192]).unwrap();
        let gone = d.path().join("gone.blob");
        let found = discover(&[], &[seed.clone(), gone.clone()], &[], &[], &Backing::Anywhere).unwrap();
        assert_eq!(found.len(), 1);
        assert!(discover(&[gone], &[seed], &[], &[], &Backing::Anywhere).is_err());
    }
}
