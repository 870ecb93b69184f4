//! Offline guest inspection: what operating system an image holds, which
//! packages and repositories it uses, and which files are its own (the
//! user data), read straight from the image: no booting, no root, no
//! libguestfs.
//!
//! [`describe_image`] finds the root filesystem (the whole image, or one
//! of its MBR/GPT partitions), reads it with `ext4-view`, and reports:
//! `/etc/os-release`, the hostname, the dpkg database (status, file lists,
//! checksums, conffiles, diversions), apt and yum repositories and keys,
//! and the user-data [`Manifest`]. [`describe_dir`] does the same for an
//! unpacked root directory. An image whose OS cannot be recognised is
//! described with what was found (its filesystems and warnings); a damaged
//! filesystem or package database is an error naming the file.
//!
//! Teleport planning (`crate::plan`) builds on it.

mod apt;
pub mod dpkg;
mod guestfs;
mod manifest;
mod osrelease;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use cbt_core::{read_partitions, Error, Image, Result};

pub use apt::Repository;
pub use dpkg::Package;
pub use guestfs::{GuestFs, HostDirFs, SpecialKind};
pub use manifest::{EntryKind, Manifest, ManifestEntry, SpecialEntry, SymlinkEntry};
pub use osrelease::OsRelease;

use guestfs::{guest_name, read_file, Resolver};
pub(crate) use guestfs::{Ext4Fs, Kind};

/// Largest configuration file read (os-release, hostname, sources).
const MAX_CONFIG_FILE: u64 = 4 << 20;
/// Largest key file hashed.
const MAX_KEY_FILE: u64 = 64 << 20;

/// What [`describe_image`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescribeOptions {
    /// Read the package database (package list, repositories).
    pub packages: bool,
    /// Build the user-data manifest (reads every file).
    pub manifest: bool,
    /// Compare package files with their recorded checksums (reads every package file).
    pub verify: bool,
}

impl Default for DescribeOptions {
    fn default() -> Self {
        DescribeOptions {
            packages: true,
            manifest: true,
            verify: true,
        }
    }
}

impl DescribeOptions {
    /// Only what identifies the guest and its packages: no file walk.
    pub fn packages_only() -> Self {
        DescribeOptions {
            packages: true,
            manifest: false,
            verify: false,
        }
    }
}

/// A filesystem (or other content) found on the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemInfo {
    /// 1-based partition number; `None` for an unpartitioned image.
    pub partition: Option<u32>,
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `ext2`, `ext3`, `ext4`, `xfs`, `btrfs`, `vfat`, `swap`, `lvm2`,
    /// `luks`, `iso9660`, `ntfs` or `unknown`.
    pub kind: String,
    /// True for the filesystem described as the guest's root.
    pub root: bool,
    /// Why it could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A repository signing key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyFile {
    /// Guest path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub blake3: String,
}

/// Everything [`describe_image`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Description {
    /// The image (or directory) described.
    pub image: String,
    /// Filesystems found, in disk order.
    pub filesystems: Vec<FilesystemInfo>,
    /// `/etc/os-release`, if the guest has one.
    pub os: Option<OsRelease>,
    /// Distribution id (`debian`, `ubuntu`, ...).
    pub distro: Option<String>,
    /// Distribution version (`VERSION_ID`, else the codename, else `/etc/debian_version`).
    pub version: Option<String>,
    /// Native architecture (`amd64`, ...).
    pub architecture: Option<String>,
    /// `dpkg` or `rpm`.
    pub package_manager: Option<String>,
    /// From `/etc/hostname`.
    pub hostname: Option<String>,
    /// Packages in any state but `not-installed`, sorted by name and architecture.
    pub packages: Vec<Package>,
    /// Configured repositories.
    pub repositories: Vec<Repository>,
    /// The index files apt keeps in `/var/lib/apt/lists` (file names, as
    /// apt names them: `deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apt_lists: Vec<String>,
    /// Repository keys found in the usual places.
    pub keys: Vec<KeyFile>,
    /// The user-data manifest, if asked for.
    pub user_data: Option<Manifest>,
    /// What was odd but not fatal.
    pub warnings: Vec<String>,
}

impl Description {
    /// The installed packages (state `installed`).
    pub fn installed(&self) -> impl Iterator<Item = &Package> {
        self.packages.iter().filter(|p| p.is_installed())
    }
}

/// Describes the guest on `image`. See the module documentation.
pub fn describe_image(image: Arc<dyn Image>, options: &DescribeOptions) -> Result<Description> {
    let label = image.label();
    let mut d = Description {
        image: label.clone(),
        ..Default::default()
    };
    let parts = read_partitions(image.as_ref())?;
    let windows: Vec<(Option<u32>, u64, u64)> = if parts.is_empty() {
        vec![(None, 0, image.len())]
    } else {
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| (Some(i as u32 + 1), p.start, p.len))
            .collect()
    };
    let mut root: Option<(usize, Ext4Fs)> = None;
    let mut first_error: Option<Error> = None;
    for (partition, offset, len) in windows {
        let kind = probe(image.as_ref(), offset, len)?;
        let mut info = FilesystemInfo {
            partition,
            offset,
            len,
            kind: kind.to_string(),
            root: false,
            error: None,
        };
        if kind.starts_with("ext") {
            let fs_label = match partition {
                Some(n) => format!("{label} (partition {n})"),
                None => label.clone(),
            };
            match Ext4Fs::load(Arc::clone(&image), offset, len, fs_label) {
                Ok(fs) => {
                    if root.is_none() && looks_like_root(&fs)? {
                        info.root = true;
                        root = Some((d.filesystems.len(), fs));
                    }
                }
                Err(e) => {
                    info.error = Some(e.to_string());
                    first_error.get_or_insert(e);
                }
            }
        } else if kind == "xfs" || kind == "btrfs" {
            info.error = Some(format!("{kind} is not readable by cbt yet"));
        }
        d.filesystems.push(info);
    }
    match root {
        Some((i, fs)) => {
            for (j, f) in d.filesystems.iter().enumerate() {
                if j != i {
                    if let Some(e) = &f.error {
                        d.warnings.push(format!("filesystem at offset {}: {e}", f.offset));
                    }
                }
            }
            describe_fs(&fs, options, &mut d)?;
        }
        None => {
            if let Some(e) = first_error {
                return Err(e);
            }
            let found: Vec<String> = d.filesystems.iter().map(|f| f.kind.clone()).collect();
            d.warnings.push(format!(
                "no readable Linux root filesystem found (found: {})",
                found.join(", ")
            ));
        }
    }
    Ok(d)
}

/// Describes an unpacked root directory (a chroot, a debootstrap tree).
pub fn describe_dir(root: &Path, options: &DescribeOptions) -> Result<Description> {
    let fs = HostDirFs::new(root)?;
    let mut d = Description {
        image: root.display().to_string(),
        ..Default::default()
    };
    describe_fs(&fs, options, &mut d)?;
    Ok(d)
}

/// True if `fs` has the directories of a Linux root.
fn looks_like_root(fs: &dyn GuestFs) -> Result<bool> {
    let is_dir = |p: &[u8]| -> Result<bool> {
        Ok(match Resolver::new(fs).resolve(p, true)? {
            Some(r) => fs.lstat(&r)?.is_some_and(|m| m.kind == Kind::Dir),
            None => false,
        })
    };
    Ok(is_dir(b"/etc")? && (is_dir(b"/usr")? || is_dir(b"/bin")?))
}

/// Describes the guest whose root is `fs` into `d`.
pub fn describe_fs(fs: &dyn GuestFs, options: &DescribeOptions, d: &mut Description) -> Result<()> {
    let text = |p: &str| -> Result<Option<String>> {
        Ok(read_file(fs, p.as_bytes(), MAX_CONFIG_FILE)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let os = match text("/etc/os-release")? {
        Some(t) => Some(t),
        None => text("/usr/lib/os-release")?,
    }
    .map(|t| osrelease::parse(&t));
    let debian_version = text("/etc/debian_version")?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    d.distro = os
        .as_ref()
        .and_then(|o| o.id.clone())
        .or_else(|| debian_version.as_ref().map(|_| "debian".to_string()));
    d.version = os
        .as_ref()
        .and_then(|o| o.version_id.clone().or_else(|| o.version_codename.clone()))
        .or(debian_version);
    if os.is_none() {
        d.warnings
            .push("no /etc/os-release or /usr/lib/os-release".into());
    }
    d.os = os;
    d.hostname = text("/etc/hostname")?.and_then(|t| {
        t.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
    });

    let status_path = b"/var/lib/dpkg/status";
    let status = read_file(fs, status_path, dpkg::MAX_STATUS_BYTES)?;
    let mut diversions = Vec::new();
    if let Some(status) = &status {
        d.package_manager = Some("dpkg".into());
        if options.packages || options.manifest {
            let mut packages = dpkg::parse_status(status, &guest_name(fs.label(), status_path))?;
            packages.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
            d.packages = packages;
            let div_path = b"/var/lib/dpkg/diversions";
            if let Some(data) = read_file(fs, div_path, dpkg::MAX_STATUS_BYTES)? {
                diversions = dpkg::parse_diversions(&data, &guest_name(fs.label(), div_path))?;
            }
        }
    } else {
        for db in ["/var/lib/rpm", "/usr/lib/sysimage/rpm"] {
            if fs.lstat(db.as_bytes())?.is_some_and(|m| m.kind == Kind::Dir) {
                d.package_manager = Some("rpm".into());
                d.warnings.push(format!(
                    "RPM database found at {db}: listing RPM packages is not supported yet"
                ));
                break;
            }
        }
        if d.package_manager.is_none() {
            d.warnings.push("no package database found (dpkg or rpm)".into());
        }
    }
    if options.packages {
        read_repositories(fs, d)?;
        read_keys(fs, d)?;
        d.apt_lists = apt_lists(fs);
    }
    d.architecture = native_architecture(&d.packages).or_else(|| elf_architecture(fs).ok().flatten());
    if options.manifest {
        let mut warnings = Vec::new();
        d.user_data = Some(manifest::build(
            fs,
            &d.packages,
            &diversions,
            options.verify,
            &mut warnings,
        )?);
        d.warnings.extend(warnings);
    }
    Ok(())
}

/// Most names taken from `/var/lib/apt/lists`.
const MAX_APT_LISTS: usize = 1000;

/// The regular files in the guest's `/var/lib/apt/lists` (none if it
/// cannot be read), sorted.
fn apt_lists(fs: &dyn GuestFs) -> Vec<String> {
    let Ok(entries) = fs.list_dir(b"/var/lib/apt/lists") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|(_, kind)| *kind == Kind::File)
        .filter_map(|(name, _)| String::from_utf8(name).ok())
        .filter(|n| n != "lock")
        .take(MAX_APT_LISTS)
        .collect();
    names.sort();
    names
}

/// dpkg's own architecture, else the most common non-`all` one.
fn native_architecture(packages: &[Package]) -> Option<String> {
    if let Some(p) = packages
        .iter()
        .find(|p| p.name == "dpkg" && !p.architecture.is_empty())
    {
        return Some(p.architecture.clone());
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in packages
        .iter()
        .filter(|p| !p.architecture.is_empty() && p.architecture != "all")
    {
        *counts.entry(&p.architecture).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(a, _)| a.to_string())
}

/// The architecture of `/bin/sh`'s ELF header, in Debian's names.
fn elf_architecture(fs: &dyn GuestFs) -> Result<Option<String>> {
    let Some(real) = Resolver::new(fs).resolve(b"/bin/sh", true)? else {
        return Ok(None);
    };
    let mut head = [0u8; 20];
    let mut r = fs.open(&real)?;
    if std::io::Read::read_exact(&mut r, &mut head).is_err() || &head[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let little = head[5] == 1;
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    let class64 = head[4] == 2;
    Ok(Some(
        match (machine, class64, little) {
            (0x3E, _, _) => "amd64",
            (0x03, _, _) => "i386",
            (0xB7, _, _) => "arm64",
            (0x28, _, _) => "armhf",
            (0xF3, true, _) => "riscv64",
            (0x15, true, true) => "ppc64el",
            (0x15, true, false) => "ppc64",
            (0x16, _, _) => "s390x",
            (m, _, _) => return Ok(Some(format!("elf-machine-{m:#x}"))),
        }
        .to_string(),
    ))
}

fn read_repositories(fs: &dyn GuestFs, d: &mut Description) -> Result<()> {
    let mut repos = Vec::new();
    let text = |p: &[u8]| -> Result<Option<String>> {
        Ok(read_file(fs, p, MAX_CONFIG_FILE)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    if let Some(t) = text(b"/etc/apt/sources.list")? {
        repos.extend(apt::parse_sources_list(&t, "/etc/apt/sources.list"));
    }
    for (path, name) in dir_files(fs, b"/etc/apt/sources.list.d")? {
        let shown = String::from_utf8_lossy(&path).into_owned();
        if name.ends_with(b".list") {
            if let Some(t) = text(&path)? {
                repos.extend(apt::parse_sources_list(&t, &shown));
            }
        } else if name.ends_with(b".sources") {
            if let Some(data) = read_file(fs, &path, MAX_CONFIG_FILE)? {
                match apt::parse_sources_deb822(&data, &shown) {
                    Ok(r) => repos.extend(r),
                    Err(e) => d.warnings.push(format!("{shown}: {e}")),
                }
            }
        }
    }
    for (path, name) in dir_files(fs, b"/etc/yum.repos.d")? {
        if name.ends_with(b".repo") {
            if let Some(t) = text(&path)? {
                repos.extend(apt::parse_yum_repo(&t, &String::from_utf8_lossy(&path)));
            }
        }
    }
    d.repositories = repos;
    Ok(())
}

fn read_keys(fs: &dyn GuestFs, d: &mut Description) -> Result<()> {
    let mut paths: Vec<Vec<u8>> = vec![b"/etc/apt/trusted.gpg".to_vec()];
    for dir in [
        &b"/etc/apt/trusted.gpg.d"[..],
        b"/etc/apt/keyrings",
        b"/etc/pki/rpm-gpg",
    ] {
        paths.extend(dir_files(fs, dir)?.into_iter().map(|(p, _)| p));
    }
    for p in paths {
        if let Some(data) = read_file(fs, &p, MAX_KEY_FILE)? {
            d.keys.push(KeyFile {
                path: String::from_utf8_lossy(&p).into_owned(),
                size: data.len() as u64,
                blake3: blake3::hash(&data).to_hex().to_string(),
            });
        }
    }
    Ok(())
}

/// Files and symlinks directly in guest directory `dir` (none if it is absent).
fn dir_files(fs: &dyn GuestFs, dir: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let Some(real) = Resolver::new(fs).resolve(dir, true)? else {
        return Ok(Vec::new());
    };
    if !fs.lstat(&real)?.is_some_and(|m| m.kind == Kind::Dir) {
        return Ok(Vec::new());
    }
    Ok(fs
        .list_dir(&real)?
        .into_iter()
        .filter(|(_, k)| matches!(k, Kind::File | Kind::Symlink))
        .map(|(name, _)| (guestfs::join(dir, &name), name))
        .collect())
}

/// What the `len` bytes at `offset` of `image` hold, by magic numbers.
fn probe(image: &dyn Image, offset: u64, len: u64) -> Result<&'static str> {
    const WANT: u64 = 0x10040 + 8;
    let n = WANT.min(len) as usize;
    let mut buf = vec![0u8; n];
    image.read_at(&mut buf, offset)?;
    let at = |o: usize, magic: &[u8]| buf.get(o..o + magic.len()) == Some(magic);
    if at(1024 + 56, &[0x53, 0xEF]) {
        let word = |o: usize| {
            buf.get(o..o + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (compat, incompat) = (word(1024 + 0x5C), word(1024 + 0x60));
        // Extents, 64-bit or flex_bg mean ext4; a journal without them ext3.
        return Ok(if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        });
    }
    Ok(if at(0, b"XFSB") {
        "xfs"
    } else if at(0x10040, b"_BHRfS_M") {
        "btrfs"
    } else if at(0, b"LUKS\xba\xbe") {
        "luks"
    } else if at(512, b"LABELONE") {
        "lvm2"
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        "swap"
    } else if at(3, b"NTFS    ") {
        "ntfs"
    } else if at(510, &[0x55, 0xAA]) && (at(0x36, b"FAT") || at(0x52, b"FAT32")) {
        "vfat"
    } else if at(0x8001, b"CD001") {
        "iso9660"
    } else {
        "unknown"
    })
}
