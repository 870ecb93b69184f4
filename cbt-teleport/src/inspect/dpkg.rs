//! The dpkg database: `/var/lib/dpkg/status` (which packages are in which
//! state, their conffiles and their checksums), `info/<pkg>.list` (the
//! files each package owns), `info/<pkg>.md5sums` and `diversions`.
//!
//! Everything here parses bytes already read from the guest, so it can be
//! unit-tested and fuzzed without a filesystem. The status file is parsed
//! strictly (dpkg writes it, so a defect means damage or truncation and is
//! reported with its line); the per-package files leniently (a bad line is
//! skipped and counted).

use std::path::Path;

use serde::Serialize;

use cbt_core::{Error, Result};

use crate::deb822;

/// Largest status file read (real ones are a few MiB).
pub const MAX_STATUS_BYTES: u64 = 256 << 20;

/// One package known to dpkg, in any state but `not-installed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version string, as dpkg writes it.
    pub version: String,
    /// Architecture (`amd64`, `all`, ...); empty if the status file has none.
    pub architecture: String,
    /// dpkg's state: `installed`, `config-files`, `half-installed`, ...
    pub state: String,
    /// `Installed-Size`, in bytes (the field counts KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_size: Option<u64>,
    /// True for `Multi-Arch: same` (its info files are named `name:arch`).
    #[serde(skip)]
    pub multi_arch_same: bool,
    /// Conffiles with the checksum dpkg recorded for each.
    #[serde(skip)]
    pub conffiles: Vec<Conffile>,
}

impl Package {
    /// True if dpkg considers the package installed.
    pub fn is_installed(&self) -> bool {
        self.state == "installed"
    }
}

/// A conffile as the status file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conffile {
    /// Absolute path as the package ships it.
    pub path: Vec<u8>,
    /// MD5 of the file as shipped, if the field holds one
    /// (`newconffile` and damaged values give `None`).
    pub md5: Option<[u8; 16]>,
    /// Marked `obsolete` (no longer shipped by the package).
    pub obsolete: bool,
}

/// Parses dpkg's status file. `origin` names it in errors. Packages in
/// state `not-installed` (purged, kept only for their selection) are left out.
pub fn parse_status(data: &[u8], origin: &Path) -> Result<Vec<Package>> {
    const KEEP: [&str; 7] = [
        "Package",
        "Status",
        "Version",
        "Architecture",
        "Installed-Size",
        "Multi-Arch",
        "Conffiles",
    ];
    let paragraphs = deb822::parse(data, &|n| KEEP.iter().any(|k| k.eq_ignore_ascii_case(n)))
        .map_err(|e| Error::malformed(origin, e.to_string()))?;
    let mut out = Vec::with_capacity(paragraphs.len());
    for p in paragraphs {
        let bad = |reason: String| Error::malformed(origin, format!("line {}: {reason}", p.line));
        let name = p
            .text("Package")
            .ok_or_else(|| bad("paragraph without a Package field (truncated?)".into()))?;
        if !is_package_name(&name) {
            return Err(bad(format!("invalid package name {name:?}")));
        }
        let Some(status) = p.text("Status") else {
            return Err(bad(format!("package {name}: no Status field (truncated?)")));
        };
        let words: Vec<&str> = status.split_ascii_whitespace().collect();
        let [_want, _flag, state] = words.as_slice() else {
            return Err(bad(format!(
                "package {name}: Status {status:?} is not 'want flag state'"
            )));
        };
        let state = state.to_string();
        if state == "not-installed" {
            continue;
        }
        let version = p
            .text("Version")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("package {name} ({state}): no Version field (truncated?)")))?;
        let installed_size = p
            .text("Installed-Size")
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| bad(format!("package {name}: Installed-Size {s:?} is not a number")))
            })
            .transpose()?
            .map(|kib| kib.saturating_mul(1024));
        let conffiles = p.get("Conffiles").map(parse_conffiles).unwrap_or_default();
        let architecture = p.text("Architecture").unwrap_or_default();
        if !architecture.is_empty() && !is_package_name(&architecture) {
            return Err(bad(format!(
                "package {name}: invalid architecture {architecture:?}"
            )));
        }
        out.push(Package {
            architecture,
            multi_arch_same: p.text("Multi-Arch").is_some_and(|m| m == "same"),
            name,
            version,
            state,
            installed_size,
            conffiles,
        });
    }
    Ok(out)
}

/// True for names dpkg accepts for packages and architectures (letters,
/// digits, `+`, `-`, `.`; the underscore of old databases is tolerated).
/// They become parts of file names under `info/`, so nothing else passes.
fn is_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
        && !s.starts_with('.')
}

/// The `Conffiles` field: one ` /path md5 [obsolete] [remove-on-upgrade]` per line.
fn parse_conffiles(value: &[u8]) -> Vec<Conffile> {
    let mut out = Vec::new();
    for line in value.split(|&b| b == b'\n') {
        let words: Vec<&[u8]> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        // Paths may hold spaces: the checksum is the first word after the path
        // that parses as one, counted from the end.
        let Some(hash_at) = words.iter().rposition(|w| w.len() == 32 || *w == b"newconffile") else {
            continue;
        };
        if hash_at == 0 {
            continue;
        }
        let path = words[..hash_at].join(&b' ');
        if !path.starts_with(b"/") {
            continue;
        }
        let flags = &words[hash_at + 1..];
        out.push(Conffile {
            path,
            md5: parse_md5_hex(words[hash_at]),
            obsolete: flags.iter().any(|f| *f == b"obsolete"),
        });
    }
    out
}

/// Parses 32 hexadecimal digits.
pub fn parse_md5_hex(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// `info/<pkg>.list`: one absolute path per line. Returns the paths.
pub fn parse_list(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"/"))
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            // dpkg writes "/." for the root directory.
            if l == b"/." {
                b"/".to_vec()
            } else {
                l.to_vec()
            }
        })
        .collect()
}

/// One line of an `md5sums` file: the absolute path and its MD5.
pub type Md5Entry = (Vec<u8>, [u8; 16]);

/// `info/<pkg>.md5sums`: `<32 hex>  <path without leading slash>` per line.
/// Returns the entries (paths made absolute) and the count of bad lines.
pub fn parse_md5sums(data: &[u8]) -> (Vec<Md5Entry>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let parsed = (line.len() > 34)
            .then(|| parse_md5_hex(&line[..32]))
            .flatten()
            .filter(|_| line[32] == b' ')
            .map(|md5| {
                // Two spaces (text mode) or " *" (binary mode) separate the fields.
                let rest = &line[33..];
                let rest = rest
                    .strip_prefix(b" ")
                    .or_else(|| rest.strip_prefix(b"*"))
                    .unwrap_or(rest);
                let mut path = Vec::with_capacity(rest.len() + 1);
                if !rest.starts_with(b"/") {
                    path.push(b'/');
                }
                path.extend_from_slice(rest);
                (path, md5)
            });
        match parsed {
            Some(e) if e.0.len() > 1 => out.push(e),
            _ => bad += 1,
        }
    }
    (out, bad)
}

/// One diversion: files shipped at `from` by any package other than
/// `by` are installed at `to` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diversion {
    /// The path packages ship.
    pub from: Vec<u8>,
    /// Where the diverted file really is.
    pub to: Vec<u8>,
    /// The diverting package; `None` for a local diversion (dpkg writes `:`).
    pub by: Option<String>,
}

impl Diversion {
    /// True if a file that `package` ships at `from` is moved to `to`.
    pub fn applies_to(&self, package: &str) -> bool {
        self.by.as_deref() != Some(package)
    }
}

/// `/var/lib/dpkg/diversions`: groups of three lines (from, to, package).
pub fn parse_diversions(data: &[u8], origin: &Path) -> Result<Vec<Diversion>> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.len() % 3 != 0 {
        return Err(Error::malformed(
            origin,
            format!(
                "{} lines, not a multiple of 3 (from, to, package): truncated?",
                lines.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(lines.len() / 3);
    for (i, t) in lines.chunks(3).enumerate() {
        if !t[0].starts_with(b"/") || !t[1].starts_with(b"/") || t[2].is_empty() {
            return Err(Error::malformed(
                origin,
                format!("line {}: diversion is not 'from, to, package'", i * 3 + 1),
            ));
        }
        let by = String::from_utf8_lossy(t[2]).into_owned();
        out.push(Diversion {
            from: t[0].to_vec(),
            to: t[1].to_vec(),
            by: (by != ":").then_some(by),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = b"Package: base-files
Status: install ok installed
Priority: required
Installed-Size: 340
Maintainer: X
Architecture: amd64
Version: 12.4+deb12u5
Conffiles:
 /etc/debian_version 5b3c9f0b8e2b2c8a7c1c8f3a1e8b9d47
 /etc/host.conf 4eb63731c9f5e30903ac4fc07a7fe3d6 obsolete
 /etc/new newconffile
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.

Package: gone
Status: purge ok not-installed
Architecture: amd64

Package: libc6
Status: install ok installed
Multi-Arch: same
Architecture: i386
Version: 2.36-9

Package: oldconf
Status: deinstall ok config-files
Architecture: all
Version: 1.0
";

    #[test]
    fn status_packages() {
        let p = parse_status(STATUS, Path::new("status")).unwrap();
        let names: Vec<_> = p
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.version.as_str(),
                    p.architecture.as_str(),
                    p.state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("base-files", "12.4+deb12u5", "amd64", "installed"),
                ("libc6", "2.36-9", "i386", "installed"),
                ("oldconf", "1.0", "all", "config-files")
            ]
        );
        assert_eq!(p[0].installed_size, Some(340 * 1024));
        assert!(p[1].multi_arch_same);
        assert_eq!(p[0].conffiles.len(), 3);
        assert_eq!(p[0].conffiles[0].path, b"/etc/debian_version");
        assert!(p[0].conffiles[0].md5.is_some());
        assert!(p[0].conffiles[1].obsolete);
        assert_eq!(p[0].conffiles[2].md5, None);
    }

    #[test]
    fn truncated_status_is_an_error_naming_the_file() {
        // Cut in the middle of a paragraph, after a full line: Version is missing.
        let cut = STATUS
            .windows(17)
            .position(|w| w == b"Version: 2.36-9\n\n")
            .unwrap();
        let e = parse_status(&STATUS[..cut], Path::new("/img:/var/lib/dpkg/status"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/img:/var/lib/dpkg/status") && e.contains("libc6") && e.contains("truncated"),
            "{e}"
        );
        // Cut in the middle of a line.
        let e = parse_status(&STATUS[..40], Path::new("status"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_status(b"Package: x\nStatus: installed\nVersion: 1\n", Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("want flag state"), "{e}");
        for name in ["", "../x", "a b"] {
            let text = format!("Package: {name}\nStatus: install ok installed\nVersion: 1\n");
            let e = parse_status(text.as_bytes(), Path::new("s"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("package name") || e.contains("no Package"), "{e}");
        }
    }

    #[test]
    fn info_files() {
        assert_eq!(
            parse_list(b"/.\n/usr\n/usr/bin/x\n\n"),
            vec![b"/".to_vec(), b"/usr".to_vec(), b"/usr/bin/x".to_vec()]
        );
        let (m, bad) = parse_md5sums(b"0123456789abcdef0123456789abcdef  usr/bin/x\nnonsense\n0123456789abcdef0123456789abcdef *usr/a b\n");
        assert_eq!(bad, 1);
        assert_eq!(m[0].0, b"/usr/bin/x");
        assert_eq!(m[1].0, b"/usr/a b");
        assert_eq!(m[0].1[0], 0x01);
    }

    #[test]
    fn diversions() {
        let d = parse_diversions(
            b"/usr/bin/a\n/usr/bin/a.distrib\npkg\n/etc/b\n/etc/b.orig\n:\n",
            Path::new("d"),
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert!(!d[0].applies_to("pkg") && d[0].applies_to("other"));
        assert!(d[1].by.is_none() && d[1].applies_to("pkg"));
        assert!(parse_diversions(b"/a\n/b\n", Path::new("d")).is_err());
    }
}
