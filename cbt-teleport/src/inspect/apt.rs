//! Package repositories: apt's one-line `sources.list` format, its deb822
//! `.sources` files, and yum/dnf `.repo` files.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::deb822;

/// One repository the guest's package manager is configured with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Repository {
    /// `deb`, `deb-src` or `rpm-md`.
    pub kind: String,
    /// Base URI.
    pub uri: String,
    /// Suite (apt) or repository id (yum).
    pub suite: String,
    /// Components (apt).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Options (`arch=amd64`, `signed-by=...`, `enabled=0`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// The guest file it is configured in.
    pub file: String,
}

impl Repository {
    /// The identity used to compare repositories between guests: kind,
    /// URI (without a trailing slash), suite and sorted components.
    pub fn key(&self) -> (String, String, String, Vec<String>) {
        let mut c = self.components.clone();
        c.sort();
        (
            self.kind.clone(),
            self.uri.trim_end_matches('/').to_string(),
            self.suite.clone(),
            c,
        )
    }
}

/// Parses a one-line-style `sources.list` file.
pub fn parse_sources_list(text: &str, file: &str) -> Vec<Repository> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) if k == "deb" || k == "deb-src" => (k, r.trim_start()),
            _ => continue,
        };
        let mut options = BTreeMap::new();
        let rest = if let Some(inner) = rest.strip_prefix('[') {
            let Some((opts, after)) = inner.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                let (k, v) = o.split_once('=').unwrap_or((o, ""));
                options.insert(k.to_string(), v.to_string());
            }
            after
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Repository {
            kind: kind.to_string(),
            uri: uri.to_string(),
            suite: suite.to_string(),
            components: words.map(String::from).collect(),
            options,
            file: file.to_string(),
        });
    }
    out
}

/// Parses a deb822 `.sources` file. A file that does not parse yields an
/// error message instead (apt would refuse it too).
pub fn parse_sources_deb822(data: &[u8], file: &str) -> Result<Vec<Repository>, String> {
    let paragraphs = deb822::parse(data, &|_| true).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for p in paragraphs {
        let words = |name: &str| -> Vec<String> {
            p.text(name)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let mut options = BTreeMap::new();
        for f in &p.fields {
            let n = f.name.to_ascii_lowercase();
            if matches!(n.as_str(), "types" | "uris" | "suites" | "components") {
                continue;
            }
            let v = String::from_utf8_lossy(&f.value);
            // Signed-By may hold a whole armoured key: keep only a marker.
            let v = if v.contains('\n') {
                "(inline)".to_string()
            } else {
                v.trim().to_string()
            };
            options.insert(n, v);
        }
        if options
            .get("enabled")
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let components = words("Components");
        for kind in words("Types") {
            for uri in words("URIs") {
                for suite in words("Suites") {
                    out.push(Repository {
                        kind: kind.clone(),
                        uri: uri.clone(),
                        suite,
                        components: components.clone(),
                        options: options.clone(),
                        file: file.to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Parses a yum/dnf `.repo` file (INI sections with `baseurl` or `mirrorlist`).
pub fn parse_yum_repo(text: &str, file: &str) -> Vec<Repository> {
    let mut out = Vec::new();
    let mut section: Option<(String, BTreeMap<String, String>)> = None;
    let flush = |s: Option<(String, BTreeMap<String, String>)>, out: &mut Vec<Repository>| {
        if let Some((id, mut opts)) = s {
            let uri = opts
                .remove("baseurl")
                .or_else(|| opts.remove("mirrorlist"))
                .or_else(|| opts.remove("metalink"));
            if let Some(uri) = uri {
                out.push(Repository {
                    kind: "rpm-md".into(),
                    uri,
                    suite: id,
                    components: Vec::new(),
                    options: opts,
                    file: file.to_string(),
                });
            }
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(id) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            flush(section.take(), &mut out);
            section = Some((id.trim().to_string(), BTreeMap::new()));
        } else if let (Some((_, opts)), Some((k, v))) = (section.as_mut(), line.split_once('=')) {
            opts.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    flush(section.take(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line() {
        let r = parse_sources_list(
            "# comment\ndeb http://deb.debian.org/debian bookworm main contrib\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] https://x.example/apt stable main # tail\ndeb-src http://a b\nrpm nonsense\ndeb onlyuri\n",
            "/etc/apt/sources.list",
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].components, ["main", "contrib"]);
        assert_eq!(r[1].options["signed-by"], "/etc/apt/keyrings/x.gpg");
        assert_eq!(r[1].uri, "https://x.example/apt");
        assert_eq!(r[2].kind, "deb-src");
        assert!(r[2].components.is_empty());
    }

    #[test]
    fn deb822_sources() {
        let r = parse_sources_deb822(
            b"Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://x\nSuites: y\nEnabled: no\n",
            "f",
        )
        .unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0].options["signed-by"],
            "/usr/share/keyrings/debian-archive-keyring.gpg"
        );
        assert!(parse_sources_deb822(b"Types deb\n", "f").is_err());
    }

    #[test]
    fn yum() {
        let r = parse_yum_repo(
            "[base]\nname=Base\nbaseurl=http://mirror/centos/7/os/x86_64/\ngpgcheck=1\n[empty]\nname=x\n",
            "f",
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].suite, "base");
        assert_eq!(r[0].options["gpgcheck"], "1");
    }
}
