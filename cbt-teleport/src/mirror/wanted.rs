//! What to fetch: a guest's installed packages as [`PackageId`]s, the
//! suites and components of its apt sources, and the architectures whose
//! indexes list them. Everything here comes from a guest image, so names
//! are checked before they become file names or URL parts.

use serde::{Deserialize, Serialize};

use crate::inspect::Description;

/// A package as apt names it: (name, version, architecture).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageId {
    /// Package name.
    pub name: String,
    /// Full version, with its epoch if any (`1:2.0-1`).
    pub version: String,
    /// Architecture (`amd64`, `all`, ...).
    pub architecture: String,
}

impl PackageId {
    /// Shorthand constructor.
    pub fn new(name: &str, version: &str, architecture: &str) -> PackageId {
        PackageId {
            name: name.to_string(),
            version: version.to_string(),
            architecture: architecture.to_string(),
        }
    }

    /// True if the name, version and architecture each use only the
    /// characters Debian policy allows them (§5.6.1, §5.6.12, §11.1):
    /// a name of letters, digits, `+`, `-` and `.` starting with a letter
    /// or digit; a version of letters, digits and `.+-:~` starting with a
    /// letter or digit; an architecture of letters, digits and `-`; none
    /// empty or longer than 255 bytes.
    ///
    /// The values come from a guest image or a mirror's index, and become
    /// file names in the package cache and parts of URLs: a control
    /// character, a space, `/` or `_` (apt's separator in file names) in
    /// any of them is never a package apt could have installed, so such an
    /// id is refused rather than escaped. Upper case is tolerated (dpkg
    /// reads it, and refusing it would only cost a seed).
    pub fn is_well_formed(&self) -> bool {
        fn ok(s: &str, extra: &str) -> bool {
            s.len() <= 255
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
        }
        ok(&self.name, "+-.") && ok(&self.version, ".+-:~") && ok(&self.architecture, "-")
    }

    /// The file name apt gives the archive in its cache:
    /// `name_version_arch.deb`, with `:` (the epoch) written `%3a`; `None`
    /// if the id is not [well formed](PackageId::is_well_formed).
    pub fn deb_file_name(&self) -> Option<String> {
        if !self.is_well_formed() {
            return None;
        }
        Some(format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        ))
    }
}

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} {}", self.name, self.architecture, self.version)
    }
}

/// One suite of a mirror and the components wanted from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dist {
    /// Suite or codename (`bookworm`, `stable`, `bookworm-updates`).
    pub suite: String,
    /// Components (`main`, `contrib`, ...).
    pub components: Vec<String>,
    /// Languages whose `i18n/Translation-<lang>` indexes the guest keeps
    /// (they seed its apt lists as the Packages indexes do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<String>,
    /// The guest keeps the suite's `InRelease`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_release: bool,
}

/// The installed packages of a guest, as [`PackageId`]s (packages without
/// an architecture are left out: no index can name them).
pub fn packages_to_fetch(desc: &Description) -> Vec<PackageId> {
    let mut out: Vec<PackageId> = desc
        .installed()
        .filter(|p| !p.architecture.is_empty())
        .map(|p| PackageId::new(&p.name, &p.version, &p.architecture))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The suites (with their components, merged) of the guest's binary apt
/// repositories (`deb` lines and `.sources` entries), in the order found.
pub fn guest_dists(desc: &Description) -> Vec<Dist> {
    let mut out: Vec<Dist> = Vec::new();
    for r in desc.repositories.iter().filter(|r| r.kind == "deb") {
        let i = match out.iter().position(|d| d.suite == r.suite) {
            Some(i) => i,
            None => {
                out.push(Dist {
                    suite: r.suite.clone(),
                    components: Vec::new(),
                    translations: Vec::new(),
                    in_release: false,
                });
                out.len() - 1
            }
        };
        for c in &r.components {
            if !out[i].components.contains(c) {
                out[i].components.push(c.clone());
            }
        }
    }
    for d in &mut out {
        let (translations, in_release) = kept_indexes(&desc.apt_lists, &d.suite);
        d.translations = translations;
        d.in_release = in_release;
    }
    out
}

/// The Translation languages and whether an `InRelease` of `suite` are
/// among apt's list files (`<host>_<path>_dists_<suite>_...`, `/` as `_`).
fn kept_indexes(lists: &[String], suite: &str) -> (Vec<String>, bool) {
    let marker = format!("_dists_{}_", suite.replace('/', "_"));
    let mut langs: Vec<String> = Vec::new();
    let mut in_release = false;
    for name in lists {
        let Some((_, rest)) = name.split_once(&marker) else {
            continue;
        };
        if rest == "InRelease" {
            in_release = true;
        }
        let rest = [".xz", ".gz", ".bz2", ".lz4", ".zst"]
            .iter()
            .find_map(|s| rest.strip_suffix(s))
            .unwrap_or(rest);
        if let Some((_, lang)) = rest.split_once("_i18n_Translation-") {
            let ok = !lang.is_empty()
                && lang.len() <= 16
                && lang
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if ok && !langs.iter().any(|l| l == lang) {
                langs.push(lang.to_string());
            }
        }
    }
    (langs, in_release)
}

/// The architectures whose `binary-<arch>` indexes hold `wanted`: each
/// architecture but `all`, else `native` (where `all` packages are listed).
pub fn index_architectures(wanted: &[PackageId], native: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = native.map(String::from).into_iter().collect();
    for p in wanted {
        if p.architecture != "all" && !out.contains(&p.architecture) {
            out.push(p.architecture.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::inspect::{Package, Repository};

    #[test]
    fn deb_file_names() {
        assert_eq!(
            PackageId::new("hello", "1:2.0-1", "amd64")
                .deb_file_name()
                .unwrap(),
            "hello_1%3a2.0-1_amd64.deb"
        );
        assert_eq!(
            PackageId::new("g++", "12.2~rc1", "all").deb_file_name().unwrap(),
            "g++_12.2~rc1_all.deb"
        );
        for bad in [
            PackageId::new("../x", "1", "amd64"),
            PackageId::new("a/b", "1", "amd64"),
            PackageId::new("a", "1 2", "amd64"),
            PackageId::new("a", "1", ""),
            PackageId::new("a", "1", "am:d64"),
            PackageId::new("", "1", "amd64"),
            PackageId::new("a", "", "amd64"),
            PackageId::new("-a", "1", "amd64"),
            PackageId::new("a_b", "1", "amd64"),
            PackageId::new("a", "1\0", "amd64"),
            PackageId::new("a", ":1", "amd64"),
            PackageId::new("a\u{e9}", "1", "amd64"),
        ] {
            assert!(!bad.is_well_formed(), "{bad}");
            assert!(bad.deb_file_name().is_none(), "{bad}");
        }
    }

    fn pkg(name: &str, version: &str, arch: &str, state: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: arch.into(),
            state: state.into(),
            installed_size: None,
            multi_arch_same: false,
            conffiles: Vec::new(),
        }
    }

    fn repo(kind: &str, suite: &str, components: &[&str]) -> Repository {
        Repository {
            kind: kind.into(),
            uri: "http://deb.debian.org/debian".into(),
            suite: suite.into(),
            components: components.iter().map(|c| c.to_string()).collect(),
            options: BTreeMap::new(),
            file: "/etc/apt/sources.list".into(),
        }
    }

    #[test]
    fn wanted_list_and_dists_from_a_description() {
        let desc = Description {
            packages: vec![
                pkg("b", "1", "amd64", "installed"),
                pkg("a", "1:2", "all", "installed"),
                pkg("c", "1", "amd64", "config-files"),
                pkg("d", "1", "", "installed"),
                pkg("libx", "3", "i386", "installed"),
            ],
            repositories: vec![
                repo("deb", "bookworm", &["main"]),
                repo("deb-src", "bookworm", &["main", "non-free"]),
                repo("deb", "bookworm", &["main", "contrib"]),
                repo("deb", "bookworm-updates", &["main"]),
            ],
            ..Default::default()
        };
        let w = packages_to_fetch(&desc);
        assert_eq!(
            w,
            [
                PackageId::new("a", "1:2", "all"),
                PackageId::new("b", "1", "amd64"),
                PackageId::new("libx", "3", "i386"),
            ]
        );
        let d = guest_dists(&desc);
        assert_eq!(d.len(), 2);
        assert!(d[0].translations.is_empty() && !d[0].in_release);
        assert_eq!(d[0].components, ["main", "contrib"]);
        assert_eq!(d[1].suite, "bookworm-updates");
        assert_eq!(index_architectures(&w, Some("amd64")), ["amd64", "i386"]);
        assert_eq!(index_architectures(&w[..1], None), Vec::<String>::new());
    }

    #[test]
    fn translations_and_in_release_from_the_guests_apt_lists() {
        let lists: Vec<String> = [
            "deb.debian.org_debian_dists_bookworm_InRelease",
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
            "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en",
            "deb.debian.org_debian_dists_bookworm_contrib_i18n_Translation-de.xz",
            "deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-fr",
            "x_dists_bookworm_main_i18n_Translation-../../etc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            kept_indexes(&lists, "bookworm"),
            (vec!["en".to_string(), "de".to_string()], true)
        );
        assert_eq!(
            kept_indexes(&lists, "bookworm-updates"),
            (vec!["fr".to_string()], false)
        );
        assert_eq!(kept_indexes(&lists, "trixie"), (vec![], false));
    }
}
