//! Package-level rebuild (smart-migrate, done offline): when the source's
//! exact package versions are gone from the mirrors, make a functionally
//! equal machine from the most similar image at the destination.
//!
//! ```text
//! pick      candidates under the seed roots, same distro/version/arch,
//!           fewest package changes                      (inspection only)
//! clone     qcow2 overlay over the candidate            (attach.rs)
//! packages  install the source's versions (or nearest), remove extras,
//!           with the guest's dpkg in a chroot           (packages.rs)
//! user data write the pack's files, symlinks, directories; delete the
//!           clone's user files the source lacks         (apply.rs)
//! verify    re-read the clone through cbt's own readers: package set,
//!           every user file's digest
//! ```
//!
//! The user data arrives as a pack (pack.rs) that the block engine moved
//! like an image. The clone is built at `.OUT.cbt-partial` and renamed to
//! `OUT` only once it verified; neither the source nor the candidate is
//! ever written.

mod apply;
mod attach;
mod pack;
mod packages;
mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use cbt_core::{open_image, Dir, Error, Image, ImageFormat, ImageSpec, IndexOptions};

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// Reading an image or a pack, writing a file (names the file).
    #[error(transparent)]
    Core(#[from] Error),
    /// A step that could not be done: no candidate, a package nowhere, a
    /// host tool or the guest's package manager failed (says which).
    #[error("{0}")]
    Failed(String),
    /// The rebuilt image, read back, does not hold the source's user data;
    /// it was not published.
    #[error("{output}: the rebuild does not hold the source's user data: {}", .files.join(", "))]
    Differs {
        /// The image that would have been published.
        output: String,
        /// Paths that differ or are missing.
        files: Vec<String>,
    },
}

/// The result of a rebuild step.
pub type Result<T> = std::result::Result<T, RebuildError>;

pub use apply::{Applied, GuestRoot};
pub use pack::{
    check_path, write_pack, PackDir, PackFifo, PackFile, PackIndex, PackLink, ALIGN as PACK_ALIGN,
};
pub use packages::{Install, PackageChanges, PackageFailure};
pub use version::{compare as compare_versions, nearest as nearest_version};

use crate::inspect::{describe_image, DescribeOptions, Description, EntryKind, Ext4Fs, GuestFs};
use crate::mirror::PackageId;
use crate::{packages_to_fetch, GuestRequest, PackageSources};

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Where candidates are looked for (images and directories of images).
    pub seeds: Vec<PathBuf>,
    /// Discovery settings (raw image extensions).
    pub index: IndexOptions,
    /// Package caches and mirrors.
    pub sources: PackageSources,
    /// Go on after a maintainer script fails or a package is nowhere.
    pub keep_going: bool,
    /// Set (by a signal handler) to stop between phases; the clone is
    /// then detached and removed, nothing published.
    pub stop: Arc<AtomicBool>,
}

impl RebuildOptions {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(RebuildError::Failed(
                "stopped by a signal: nothing was published".into(),
            ));
        }
        Ok(())
    }
}

/// One candidate as the pick saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The image.
    pub image: String,
    /// Packages to install or change plus packages to remove (`None` if rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_changes: Option<usize>,
    /// Why it cannot be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// A package whose version differs between the source and the rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionDifference {
    /// `name:arch`.
    pub package: String,
    /// The source's version (`None`: the source lacks it).
    pub source: Option<String>,
    /// The rebuild's version (`None`: the rebuild lacks it).
    pub rebuild: Option<String>,
}

/// The verification of the rebuilt image, read back through cbt's readers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Installed packages of the rebuild.
    pub packages: usize,
    /// Every package whose version differs, or that one side lacks.
    pub version_differences: Vec<VersionDifference>,
    /// User-data files whose digest was compared.
    pub files_checked: u64,
    /// Files (and symlinks and fifos) that differ or are missing.
    pub files_differing: Vec<String>,
}

impl Verification {
    /// The same packages at the same versions and the same user data.
    pub fn functional_match(&self) -> bool {
        self.version_differences.is_empty() && self.files_differing.is_empty()
    }
}

/// Seconds per phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Describing the source (at the source).
    pub describe: f64,
    /// Moving the user data (the block transfer of the pack).
    pub transfer: f64,
    /// Choosing the candidate.
    pub pick: f64,
    /// Making and attaching the clone.
    pub clone: f64,
    /// Fetching archives and running the package manager.
    pub packages: f64,
    /// Writing the user data.
    pub user_data: f64,
    /// Reading the result back.
    pub verify: f64,
    /// From start to publication (less than the sum: in a pull, the
    /// packages phase runs while the user data is in transit).
    pub total: f64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The rebuilt image (a qcow2 overlay over the candidate).
    pub output: String,
    /// The candidate it is built on.
    pub candidate: String,
    /// Every candidate considered.
    pub candidates: Vec<Candidate>,
    /// Package changes.
    pub packages: PackageChanges,
    /// User data written.
    pub user_data: Applied,
    /// User-data entries the source could not carry (device nodes,
    /// sockets, unreachable paths, ...), and why.
    pub skipped: Vec<String>,
    /// The check of the result.
    pub verification: Verification,
    /// True if packages and user data match the source exactly: same
    /// versions, every entry carried and read back the same.
    pub functional_match: bool,
    /// Time per phase.
    pub phases: Phases,
}

/// The user data of the source: its pack file and index.
#[derive(Debug)]
pub struct UserData {
    /// The pack.
    pub file: File,
    /// Its name, for messages.
    pub path: PathBuf,
    /// What it holds.
    pub index: PackIndex,
}

impl UserData {
    /// Opens a received pack and checks its index.
    pub fn open(path: &Path) -> Result<UserData> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let index = PackIndex::parse(&file, path)?;
        Ok(UserData {
            file,
            path: path.to_path_buf(),
            index,
        })
    }
}

/// Describes `image` for a functional copy: the guest request and its
/// user-data pack, written to `pack_path` (a new file).
pub fn pack_user_data(image: Arc<dyn Image>, pack_path: &Path) -> Result<(GuestRequest, PackIndex)> {
    let options = DescribeOptions {
        packages: true,
        manifest: true,
        verify: true,
    };
    let desc = describe_image(Arc::clone(&image), &options)?;
    let manifest = desc.user_data.clone().ok_or_else(|| {
        Error::malformed(
            image.label(),
            "no Linux root filesystem with a dpkg database found",
        )
    })?;
    let root = root_fs(&desc, image.as_ref())?;
    let fs = Ext4Fs::load(image, root.0, root.1, desc.image.clone())?;
    let mut out = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(pack_path)
        .map_err(|e| Error::io(pack_path, "create", e))?;
    let index = write_pack(&fs, &manifest, &mut out, pack_path)?;
    Ok((GuestRequest::of(&desc, None), index))
}

/// The root filesystem's (offset, length).
fn root_fs(desc: &Description, image: &dyn Image) -> Result<(u64, u64)> {
    desc.filesystems
        .iter()
        .find(|f| f.root)
        .map(|f| (f.offset, f.len))
        .ok_or_else(|| Error::malformed(image.label(), "no Linux root filesystem found").into())
}

/// Rebuilds the source described by `request`, with user data `user`,
/// at `out`: [`prepare_clone`] then [`finish_rebuild`]. See the module
/// documentation.
pub fn rebuild(
    request: &GuestRequest,
    user: &UserData,
    out: &Path,
    options: &RebuildOptions,
) -> Result<RebuildReport> {
    let clone = prepare_clone(request, out, options)?;
    finish_rebuild(clone, request, user, out, options)
}

/// A clone with the source's packages, still attached, waiting for the
/// user data. Dropping it detaches and removes the clone.
#[derive(Debug)]
pub struct PreparedClone {
    // Dropped in this order: the root's handle before the unmount, the
    // unmount before the clone's file is removed.
    root: GuestRoot,
    attached: attach::Attached,
    partial: PathBuf,
    guard: RemoveOnDrop,
    candidate: String,
    candidates: Vec<Candidate>,
    changes: PackageChanges,
    fs: (u64, u64),
    phases: Phases,
}

/// The part of a rebuild that needs only the description, not the user
/// data (so it can run while the user data is in transit): pick the
/// candidate, clone and attach it, change its packages.
pub fn prepare_clone(request: &GuestRequest, out: &Path, options: &RebuildOptions) -> Result<PreparedClone> {
    if out.exists() {
        return Err(RebuildError::Failed(format!(
            "{}: already exists; give a new name",
            out.display()
        )));
    }
    let mut phases = Phases::default();
    let t = Instant::now();
    let (candidates, best) = pick(request, options)?;
    phases.pick = t.elapsed().as_secs_f64();
    let Some((spec, format, desc)) = best else {
        let why: Vec<String> = candidates
            .iter()
            .map(|c| format!("{}: {}", c.image, c.rejected.as_deref().unwrap_or("?")))
            .collect();
        return Err(RebuildError::Failed(format!(
            "no image under the seed roots can be the base of a {} rebuild{}{}",
            guest_name(request),
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        )));
    };
    let fs = root_fs(&desc, open_image(&spec)?.as_ref())?;

    let t = Instant::now();
    let partial = cbt_core::temp_path_for(out);
    // Claimed before the partial clone is touched: a running rebuild of
    // the same name holds it (refused), a dead one's leftovers are undone.
    let work = attach::WorkDir::claim(&hidden_path(out, "cbt-rebuild"))?;
    let _ = std::fs::remove_file(&partial);
    let guard = RemoveOnDrop(partial.clone());
    attach::create_overlay(&spec.path, format, &partial)?;
    let mut attached = attach::Attached::attach(&partial, fs.0, fs.1, work)?;
    phases.clone = t.elapsed().as_secs_f64();
    options.check_stop()?;

    let t = Instant::now();
    let root = GuestRoot::open(attached.root())?;
    let (mut changes, remove) = packages::prepare(
        request,
        &packages_to_fetch(&desc),
        &options.sources,
        options.keep_going,
    )?;
    attached.mount_system_dirs()?;
    packages::apply(attached.root(), &root, &mut changes, &remove, options.keep_going)?;
    attached.unmount_system_dirs()?;
    phases.packages = t.elapsed().as_secs_f64();
    options.check_stop()?;
    Ok(PreparedClone {
        attached,
        root,
        partial,
        guard,
        candidate: spec.path.display().to_string(),
        candidates,
        changes,
        fs,
        phases,
    })
}

/// Writes the user data into a prepared clone, verifies it and publishes
/// it at `out`.
pub fn finish_rebuild(
    clone: PreparedClone,
    request: &GuestRequest,
    user: &UserData,
    out: &Path,
    options: &RebuildOptions,
) -> Result<RebuildReport> {
    let PreparedClone {
        root,
        attached,
        partial,
        guard,
        candidate,
        candidates,
        changes,
        fs: (fs_offset, fs_len),
        mut phases,
    } = clone;
    let t = Instant::now();
    let mut applied = root.apply(&user.file, &user.index)?;
    applied.deleted = delete_extras(attached.root(), &root, &user.index)?;
    drop(root);
    attached.detach()?;
    phases.user_data = t.elapsed().as_secs_f64();
    options.check_stop()?;

    let t = Instant::now();
    let verification = verify(request, &user.index, &partial, (fs_offset, fs_len))?;
    phases.verify = t.elapsed().as_secs_f64();
    if !verification.files_differing.is_empty() {
        return Err(RebuildError::Differs {
            output: out.display().to_string(),
            files: verification.files_differing,
        });
    }

    let dir_path = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = Dir::open(dir_path)?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if !dir.rename_no_replace(&name(&partial), &name(out))? {
        return Err(RebuildError::Failed(format!(
            "{}: appeared while rebuilding; the rebuild is left at {}",
            out.display(),
            partial.display()
        )));
    }
    std::mem::forget(guard);
    Ok(RebuildReport {
        output: out.display().to_string(),
        candidate,
        candidates,
        functional_match: verification.functional_match() && user.index.skipped.is_empty(),
        packages: changes,
        user_data: applied,
        skipped: user.index.skipped.clone(),
        verification,
        phases,
    })
}

fn guest_name(r: &GuestRequest) -> String {
    [&r.distro, &r.version, &r.architecture]
        .into_iter()
        .map(|s| s.as_deref().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `.NAME.SUFFIX` next to `out`: where a rebuild keeps its work (the
/// mount, `cbt-rebuild`) and its received pack (`cbt-userdata`).
pub fn hidden_path(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.{suffix}"))
}

/// Removes the half-built clone unless defused (`mem::forget`).
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type Best = Option<(ImageSpec, ImageFormat, Description)>;

/// Every image under the seed roots of the source's distribution, version
/// and architecture, ranked by package changes (installs weigh by
/// installed size on ties).
fn pick(request: &GuestRequest, options: &RebuildOptions) -> Result<(Vec<Candidate>, Best)> {
    let specs = cbt_core::discover_images(&options.seeds, &options.index)?;
    let want: BTreeMap<(String, String), &str> = request
        .packages
        .iter()
        .map(|p| ((p.name.clone(), p.architecture.clone()), p.version.as_str()))
        .collect();
    let mut out = Vec::new();
    let mut best: Option<(usize, ImageSpec, ImageFormat, Description)> = None;
    for spec in specs.into_iter().filter(|s| s.snapshot.is_none()) {
        let label = spec.path.display().to_string();
        let reject = |out: &mut Vec<Candidate>, why: String| {
            out.push(Candidate {
                image: label.clone(),
                package_changes: None,
                rejected: Some(why),
            })
        };
        let image = match open_image(&spec) {
            Ok(i) => i,
            Err(e) => {
                reject(&mut out, e.to_string());
                continue;
            }
        };
        let format = match cbt_core::detect_format(&spec.path) {
            Ok(f) => f,
            Err(e) => {
                reject(&mut out, e.to_string());
                continue;
            }
        };
        let desc = match describe_image(image, &DescribeOptions::packages_only()) {
            Ok(d) => d,
            Err(e) => {
                reject(&mut out, e.to_string());
                continue;
            }
        };
        let same = desc.distro == request.distro
            && desc.version == request.version
            && desc.architecture == request.architecture;
        if !same {
            let got = GuestRequest::of(&desc, None);
            reject(
                &mut out,
                format!("{}, not {}", guest_name(&got), guest_name(request)),
            );
            continue;
        }
        let have: BTreeSet<(String, String, String)> = packages_to_fetch(&desc)
            .into_iter()
            .map(|p| (p.name, p.architecture, p.version))
            .collect();
        let keep = have
            .iter()
            .filter(|(n, a, v)| want.get(&(n.clone(), a.clone())) == Some(&v.as_str()))
            .count();
        let changes = (want.len() - keep) + (have.len() - keep);
        out.push(Candidate {
            image: label,
            package_changes: Some(changes),
            rejected: None,
        });
        if best.as_ref().is_none_or(|b| changes < b.0) {
            best = Some((changes, spec, format, desc));
        }
    }
    Ok((out, best.map(|(_, s, f, d)| (s, f, d))))
}

/// Deletes the clone's user files and symlinks (neither package files nor
/// package-manager state) that the source does not have.
fn delete_extras(root_path: &Path, root: &GuestRoot, pack: &PackIndex) -> Result<u64> {
    let options = DescribeOptions {
        packages: true,
        manifest: true,
        verify: false,
    };
    let desc = crate::describe_dir(root_path, &options)?;
    let Some(manifest) = desc.user_data else {
        return Ok(0);
    };
    let keep: BTreeSet<&str> = pack
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(pack.symlinks.iter().map(|l| l.path.as_str()))
        .collect();
    let mut deleted = 0;
    let extra_files = manifest
        .files
        .iter()
        .filter(|f| f.kind == EntryKind::Unowned)
        .map(|f| f.path.as_str());
    for path in extra_files.chain(manifest.symlinks.iter().map(|l| l.path.as_str())) {
        if !keep.contains(path) && pack::check_path(path).is_ok() && root.remove(path)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Reads the rebuilt image back through cbt's own readers (not the
/// mount): its packages against the source's, every pack file's digest
/// and every symlink's target.
fn verify(
    request: &GuestRequest,
    pack: &PackIndex,
    image_path: &Path,
    fs: (u64, u64),
) -> Result<Verification> {
    let image = open_image(&ImageSpec::file(image_path.to_path_buf()))?;
    let desc = describe_image(Arc::clone(&image), &DescribeOptions::packages_only())?;
    let rebuilt = packages_to_fetch(&desc);
    let mut v = Verification {
        packages: rebuilt.len(),
        version_differences: differences(&request.packages, &rebuilt),
        ..Verification::default()
    };
    let fs = Ext4Fs::load(image, fs.0, fs.1, image_path.display().to_string())?;
    for f in &pack.files {
        v.files_checked += 1;
        let same = match fs.open(f.path.as_bytes()) {
            Ok(mut r) => {
                let mut h = blake3::Hasher::new();
                std::io::copy(&mut r, &mut h).is_ok() && h.finalize().to_hex().as_str() == f.blake3
            }
            Err(_) => false,
        };
        if !same {
            v.files_differing.push(f.path.clone());
        }
    }
    for l in &pack.symlinks {
        if fs.read_link(l.path.as_bytes()).ok().as_deref() != Some(l.target.as_bytes()) {
            v.files_differing.push(l.path.clone());
        }
    }
    for f in &pack.fifos {
        let same = fs.lstat(f.path.as_bytes()).ok().flatten().is_some_and(|m| {
            m.special == Some(crate::inspect::SpecialKind::Fifo)
                && (m.mode & 0o7777, m.uid, m.gid) == (f.mode, f.uid, f.gid)
        });
        if !same {
            v.files_differing.push(f.path.clone());
        }
    }
    Ok(v)
}

fn differences(source: &[PackageId], rebuilt: &[PackageId]) -> Vec<VersionDifference> {
    let map = |ids: &[PackageId]| -> BTreeMap<String, String> {
        ids.iter()
            .map(|p| (format!("{}:{}", p.name, p.architecture), p.version.clone()))
            .collect()
    };
    let (a, b) = (map(source), map(rebuilt));
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| VersionDifference {
            package: n.clone(),
            source: a.get(n).cloned(),
            rebuild: b.get(n).cloned(),
        })
        .collect()
}
