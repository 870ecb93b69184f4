//! `/etc/os-release` (or `/usr/lib/os-release`): `KEY=value` lines, the
//! value optionally quoted, as systemd documents the format.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the guest says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`.
    pub id: Option<String>,
    /// `ID_LIKE`, split on spaces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub id_like: Vec<String>,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`, e.g. `bookworm`.
    pub version_codename: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// Every assignment in the file.
    #[serde(skip)]
    pub fields: BTreeMap<String, String>,
}

/// Parses os-release text. Malformed lines are ignored, as systemd does.
pub fn parse(text: &str) -> OsRelease {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        fields.insert(key.to_string(), unquote(value.trim()));
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    OsRelease {
        id: get("ID"),
        id_like: get("ID_LIKE")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        version_id: get("VERSION_ID"),
        version_codename: get("VERSION_CODENAME"),
        pretty_name: get("PRETTY_NAME"),
        fields,
    }
}

/// Removes shell-style quotes and backslash escapes.
fn unquote(v: &str) -> String {
    let mut chars = v.chars();
    let quote = match v.chars().next() {
        Some(q @ ('"' | '\'')) => {
            chars.next();
            Some(q)
        }
        _ => None,
    };
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' && quote != Some('\'') {
            escaped = true;
        } else if Some(c) == quote {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian() {
        let o = parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n# c\nbroken line\nID_LIKE='rhel fedora'\nX=\"a \\\"q\\\" b\"\n",
        );
        assert_eq!(o.id.as_deref(), Some("debian"));
        assert_eq!(o.version_id.as_deref(), Some("12"));
        assert_eq!(o.version_codename.as_deref(), Some("bookworm"));
        assert_eq!(o.pretty_name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(o.id_like, ["rhel", "fedora"]);
        assert_eq!(o.fields["X"], "a \"q\" b");
    }
}
