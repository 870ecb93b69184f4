//! The user-data manifest: every regular file no package owns, and every
//! package file or conffile whose content differs from what dpkg recorded.
//!
//! Ownership comes from `info/<pkg>.list`; each listed path is matched to
//! the filesystem through its resolved parent directory (merged `/usr`:
//! `/bin/sh` is the file at `/usr/bin/sh`) and through dpkg's diversions.
//! Package files are checked against `info/<pkg>.md5sums`, conffiles
//! against the checksums in the status file. Every file in the manifest
//! carries its size and BLAKE3 digest. The filesystem is walked without
//! following symlinks, so each file is seen once, at its real path.

use std::collections::HashMap;
use std::io::Read;

use md5::Digest as _;
use serde::Serialize;

use cbt_core::{Error, Result};

use super::dpkg::{self, Diversion, Package};
use super::guestfs::{guest_name, join, read_file, GuestFs, Kind, Resolver, SpecialKind};

/// Largest per-package info file read (`.list`, `.md5sums`).
const MAX_INFO_FILE: u64 = 64 << 20;
/// Directories whose files are the package manager's own state, not user data.
const PACKAGE_STATE_DIRS: [&str; 4] = [
    "/var/lib/dpkg/",
    "/var/lib/apt/lists/",
    "/var/cache/apt/",
    "/var/cache/debconf/",
];

/// Why a file is in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// No package owns it.
    Unowned,
    /// A package file whose content differs from the package's md5sums.
    Modified,
    /// A conffile changed since the package installed it.
    ModifiedConffile,
    /// An unowned file of the package manager's own state (the dpkg
    /// database, apt's lists and caches): rebuilt by installing packages.
    PackageState,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    /// Absolute guest path (lossy UTF-8).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content, hexadecimal.
    pub blake3: String,
    /// Why it is listed.
    pub kind: EntryKind,
    /// The owning package, for modified files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A symlink no package owns (configuration such as enabled services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymlinkEntry {
    /// Guest path.
    pub path: String,
    /// Its target, as stored.
    pub target: String,
}

/// A device node, fifo or socket no package owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialEntry {
    /// Guest path.
    pub path: String,
    /// What it is.
    pub kind: SpecialKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The user data of a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Files to carry over, sorted by path.
    pub files: Vec<ManifestEntry>,
    /// Sum of their sizes, `package_state` files excluded.
    pub user_data_bytes: u64,
    /// Sum of the sizes of `package_state` files.
    pub package_state_bytes: u64,
    /// Regular files owned by a package.
    pub package_files: u64,
    /// Of those, files whose checksum was compared (and matched or is listed as modified).
    pub verified_files: u64,
    /// Package files present with no checksum to compare (or checks disabled).
    pub unverified_files: u64,
    /// Package files with a checksum in the database but absent from the filesystem.
    pub missing_files: Vec<String>,
    /// Symlinks no package owns.
    pub symlinks: Vec<SymlinkEntry>,
    /// Device nodes, fifos and sockets no package owns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub specials: Vec<SpecialEntry>,
    /// Entries the reader could not reach, and why (a path longer than
    /// the ext4 reader resolves): not in the manifest, never silently.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

struct Owner {
    package: u32,
    md5: Option<[u8; 16]>,
    conffile: bool,
    /// An obsolete conffile: its absence is normal.
    obsolete: bool,
    seen: bool,
}

impl Owner {
    fn new(package: u32) -> Owner {
        Owner {
            package,
            md5: None,
            conffile: false,
            obsolete: false,
            seen: false,
        }
    }
}

/// Builds the manifest of `fs` for the dpkg packages `packages`.
/// `verify` compares package files with their recorded MD5.
pub(crate) fn build(
    fs: &dyn GuestFs,
    packages: &[Package],
    diversions: &[Diversion],
    verify: bool,
    warnings: &mut Vec<String>,
) -> Result<Manifest> {
    let owned = ownership(fs, packages, diversions, warnings)?;
    walk(fs, packages, owned, verify)
}

/// Maps the canonical path of every file the packages own to its owner.
fn ownership(
    fs: &dyn GuestFs,
    packages: &[Package],
    diversions: &[Diversion],
    warnings: &mut Vec<String>,
) -> Result<HashMap<Vec<u8>, Owner>> {
    let diverted: HashMap<&[u8], &Diversion> = diversions.iter().map(|d| (d.from.as_slice(), d)).collect();
    let mut resolver = Resolver::new(fs);
    let mut owned: HashMap<Vec<u8>, Owner> = HashMap::new();
    for (i, p) in packages.iter().enumerate() {
        let i = i as u32;
        let real = |path: &[u8]| -> Vec<u8> {
            match diverted.get(path) {
                Some(d) if d.applies_to(&p.name) => d.to.clone(),
                _ => path.to_vec(),
            }
        };
        let Some((list, stem)) = info_file(fs, p, "list")? else {
            warnings.push(format!("package {}: no file list in /var/lib/dpkg/info", p.name));
            continue;
        };
        for path in dpkg::parse_list(&list) {
            if let Some(c) = resolver.canonical(&real(&path))? {
                owned.entry(c).or_insert(Owner::new(i));
            }
        }
        let md5s = read_file(
            fs,
            format!("/var/lib/dpkg/info/{stem}.md5sums").as_bytes(),
            MAX_INFO_FILE,
        )?;
        if let Some(data) = md5s {
            let (entries, bad) = dpkg::parse_md5sums(&data);
            if bad > 0 {
                warnings.push(format!(
                    "/var/lib/dpkg/info/{stem}.md5sums: {bad} malformed lines skipped"
                ));
            }
            for (path, md5) in entries {
                if let Some(c) = resolver.canonical(&real(&path))? {
                    let o = owned.entry(c).or_insert(Owner::new(i));
                    if !o.conffile {
                        o.md5 = Some(md5);
                    }
                }
            }
        }
        for cf in &p.conffiles {
            if let Some(c) = resolver.canonical(&real(&cf.path))? {
                let o = owned.entry(c).or_insert(Owner::new(i));
                o.conffile = true;
                o.obsolete = cf.obsolete;
                o.md5 = cf.md5;
                o.package = i;
            }
        }
    }
    Ok(owned)
}

/// Reads `info/<name>[:arch].<ext>`, trying the Multi-Arch name first for
/// `Multi-Arch: same` packages. Returns the content and the stem used.
fn info_file(fs: &dyn GuestFs, p: &Package, ext: &str) -> Result<Option<(Vec<u8>, String)>> {
    let qualified = format!("{}:{}", p.name, p.architecture);
    let stems = if p.multi_arch_same {
        [qualified, p.name.clone()]
    } else {
        [p.name.clone(), qualified]
    };
    for stem in stems {
        if let Some(d) = read_file(
            fs,
            format!("/var/lib/dpkg/info/{stem}.{ext}").as_bytes(),
            MAX_INFO_FILE,
        )? {
            return Ok(Some((d, stem)));
        }
    }
    Ok(None)
}

fn walk(
    fs: &dyn GuestFs,
    packages: &[Package],
    mut owned: HashMap<Vec<u8>, Owner>,
    verify: bool,
) -> Result<Manifest> {
    let mut m = Manifest::default();
    let mut buf = vec![0u8; 256 << 10];
    let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
    let max_path = fs.max_path_len().unwrap_or(usize::MAX);
    while let Some(dir) = stack.pop() {
        for (name, kind) in fs.list_dir(&dir)? {
            let path = join(&dir, &name);
            if path.len() > max_path {
                m.unreadable.push(format!(
                    "{}: path of {} bytes, longer than the {max_path} the ext4 reader resolves",
                    lossy(&path),
                    path.len()
                ));
                continue;
            }
            match kind {
                Kind::Dir => stack.push(path),
                Kind::Symlink => {
                    if !owned.contains_key(&path) {
                        let target = fs.read_link(&path)?;
                        m.symlinks.push(SymlinkEntry {
                            path: lossy(&path),
                            target: lossy(&target),
                        });
                    }
                }
                Kind::Other => {
                    if owned.contains_key(&path) {
                        continue;
                    }
                    let Some(meta) = fs.lstat(&path)? else { continue };
                    if let Some(kind) = meta.special {
                        m.specials.push(SpecialEntry {
                            path: lossy(&path),
                            kind,
                            mode: meta.mode & 0o7777,
                            uid: meta.uid,
                            gid: meta.gid,
                        });
                    }
                }
                Kind::File => {
                    let Some(meta) = fs.lstat(&path)? else { continue };
                    let mut entry_kind = EntryKind::Unowned;
                    let mut package = None;
                    if let Some(o) = owned.get_mut(&path) {
                        o.seen = true;
                        m.package_files += 1;
                        match o.md5.filter(|_| verify) {
                            None => {
                                m.unverified_files += 1;
                                continue;
                            }
                            Some(expected) => {
                                m.verified_files += 1;
                                if md5_of(fs, &path, &mut buf)? == expected {
                                    continue;
                                }
                                entry_kind = if o.conffile {
                                    EntryKind::ModifiedConffile
                                } else {
                                    EntryKind::Modified
                                };
                                package = Some(packages[o.package as usize].name.clone());
                            }
                        }
                    } else if PACKAGE_STATE_DIRS.iter().any(|d| path.starts_with(d.as_bytes())) {
                        entry_kind = EntryKind::PackageState;
                    }
                    let (size, digest) = blake3_of(fs, &path, &mut buf)?;
                    if size != meta.len {
                        return Err(fs.error(
                            &path,
                            format!("read {size} bytes from a file of {} bytes", meta.len),
                        ));
                    }
                    if entry_kind == EntryKind::PackageState {
                        m.package_state_bytes += size;
                    } else {
                        m.user_data_bytes += size;
                    }
                    m.files.push(ManifestEntry {
                        path: lossy(&path),
                        size,
                        blake3: digest,
                        kind: entry_kind,
                        package,
                        mode: meta.mode,
                        uid: meta.uid,
                        gid: meta.gid,
                    });
                }
            }
        }
    }
    let mut missing: Vec<String> = owned
        .iter()
        .filter(|(_, o)| !o.seen && !o.obsolete && o.md5.is_some())
        .filter(|(p, _)| fs.lstat(p).ok().flatten().is_none_or(|m| m.kind != Kind::File))
        .map(|(p, _)| lossy(p))
        .collect();
    missing.sort();
    m.missing_files = missing;
    m.files.sort_by(|a, b| a.path.cmp(&b.path));
    m.symlinks.sort_by(|a, b| a.path.cmp(&b.path));
    m.specials.sort_by(|a, b| a.path.cmp(&b.path));
    m.unreadable.sort();
    Ok(m)
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn read_all(fs: &dyn GuestFs, path: &[u8], buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> Result<u64> {
    let mut r = fs.open(path)?;
    let mut total = 0u64;
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                sink(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(guest_name(fs.label(), path), "read", e)),
        }
    }
}

fn md5_of(fs: &dyn GuestFs, path: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
    let mut h = md5::Md5::new();
    read_all(fs, path, buf, |d| h.update(d))?;
    Ok(h.finalize().into())
}

fn blake3_of(fs: &dyn GuestFs, path: &[u8], buf: &mut [u8]) -> Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let n = read_all(fs, path, buf, |d| {
        h.update(d);
    })?;
    Ok((n, h.finalize().to_hex().to_string()))
}
