//! deb822 paragraphs: the `Field: value` format of dpkg's status file, of
//! a package's `control` file and of apt's `.sources` files.
//!
//! The parser works on bytes (descriptions of old packages are not always
//! UTF-8), keeps only the fields the caller asks for, and bounds what one
//! paragraph may hold. A line that is neither a field, a continuation nor
//! blank is an error with its line number; so is a file that stops in the
//! middle of a line, the usual sign of truncation (dpkg always ends its
//! files with a newline).

use std::fmt;

/// Most fields accepted in one paragraph (dpkg's own status entries have
/// about 20; control files a few dozen).
pub const MAX_FIELDS: usize = 512;
/// Longest field name accepted.
pub const MAX_FIELD_NAME: usize = 128;

/// One field of a paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The name as written (compare with [`str::eq_ignore_ascii_case`]).
    pub name: String,
    /// The value: the rest of the first line (trimmed), then each
    /// continuation line after a `\n`, its leading white space removed.
    pub value: Vec<u8>,
}

/// One paragraph: the fields kept, and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Paragraph {
    /// Line of the paragraph's first field.
    pub line: usize,
    /// The fields kept, in file order.
    pub fields: Vec<Field>,
}

impl Paragraph {
    /// The value of field `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_slice())
    }

    /// The value of field `name` as text (lossy), trimmed.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
    }
}

/// Why a deb822 file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb822Error {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Deb822Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for Deb822Error {}

/// Parses `data` into paragraphs, keeping only the fields for which `keep`
/// returns true (every paragraph is still checked in full). Comment lines
/// (`#` in the first column) are ignored.
pub fn parse(data: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Vec<Paragraph>, Deb822Error> {
    let mut out = Vec::new();
    let mut current = Paragraph::default();
    let mut fields_seen = 0usize;
    // Whether the last field line was kept (continuations follow it).
    let mut in_field: Option<bool> = None;
    let mut names: Vec<String> = Vec::new();
    let mut line_no = 0usize;
    let ends_with_newline = data.last().is_none_or(|&b| b == b'\n');
    for raw in data.split(|&b| b == b'\n') {
        line_no += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if fields_seen > 0 {
                out.push(std::mem::take(&mut current));
            }
            fields_seen = 0;
            in_field = None;
            names.clear();
            continue;
        }
        if line[0] == b'#' {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match in_field {
                None => {
                    return Err(Deb822Error {
                        line: line_no,
                        reason: "continuation line outside a field".into(),
                    });
                }
                Some(false) => {}
                Some(true) => {
                    if let Some(f) = current.fields.last_mut() {
                        f.value.push(b'\n');
                        f.value.extend_from_slice(trim(line));
                    }
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Deb822Error {
                line: line_no,
                reason: format!("expected 'Field: value', found {:?}", preview(line)),
            });
        };
        let name = &line[..colon];
        if name.is_empty() || name.len() > MAX_FIELD_NAME || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Deb822Error {
                line: line_no,
                reason: format!("invalid field name {:?}", preview(name)),
            });
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            return Err(Deb822Error {
                line: line_no,
                reason: format!("field {name} appears twice in one paragraph"),
            });
        }
        fields_seen += 1;
        if fields_seen > MAX_FIELDS {
            return Err(Deb822Error {
                line: line_no,
                reason: format!("more than {MAX_FIELDS} fields in one paragraph"),
            });
        }
        if fields_seen == 1 {
            current.line = line_no;
        }
        let kept = keep(&name);
        if kept {
            current.fields.push(Field {
                name: name.clone(),
                value: trim(&line[colon + 1..]).to_vec(),
            });
        }
        names.push(name);
        in_field = Some(kept);
    }
    if !ends_with_newline {
        return Err(Deb822Error {
            line: line_no,
            reason: "file ends in the middle of a line (truncated?)".into(),
        });
    }
    if fields_seen > 0 {
        out.push(current);
    }
    Ok(out)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// The start of a line, for messages.
fn preview(s: &[u8]) -> String {
    let mut p: String = String::from_utf8_lossy(&s[..s.len().min(40)]).into_owned();
    if s.len() > 40 {
        p.push('…');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text = b"Package: a\nDescription: short\n long line\n .\n more\n\n\n# comment\nPackage: b\nStatus: install ok installed\n";
        let p = parse(text, &all).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].line, 1);
        assert_eq!(p[0].get("description").unwrap(), b"short\nlong line\n.\nmore");
        assert_eq!(p[1].line, 9);
        assert_eq!(p[1].text("Status").unwrap(), "install ok installed");
    }

    #[test]
    fn keeps_only_requested_fields() {
        let p = parse(b"Package: a\nDescription: x\n y\nVersion: 1\n", &|n| {
            n != "Description"
        })
        .unwrap();
        assert_eq!(p[0].fields.len(), 2);
        assert_eq!(p[0].text("Version").unwrap(), "1");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(b"Package: a\nnot a field\n", &all).unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse(b" leading continuation\n", &all).unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse(b"Package: a\nPackage: b\n", &all).unwrap_err();
        assert!(e.reason.contains("twice"));
        let e = parse(b"Package: a\nVersion: 1.", &all).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
        assert!(parse(b"", &all).unwrap().is_empty());
        assert!(parse(b"\n\n", &all).unwrap().is_empty());
    }

    #[test]
    fn crlf_and_empty_values() {
        let p = parse(b"Conffiles:\r\n /etc/x 0123\r\n", &all).unwrap();
        assert_eq!(p[0].get("Conffiles").unwrap(), b"\n/etc/x 0123");
    }
}
