//! Fuzzes the dpkg database parsers: the deb822 paragraph parser, the
//! status file interpretation on top of it, `md5sums`, `.list` and
//! `diversions` files.
//!
//! Besides "no panic", the target checks the parsers' promises: every
//! package returned has a name, a version and a 3-word status state that
//! is not `not-installed`; paragraphs start on a line of the input; every
//! md5sums path is absolute; diversions come in whole triples.
#![no_main]

use std::path::Path;

use cbt_teleport::{deb822, dpkg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|&b| b == b'\n').count();
    if let Ok(paragraphs) = deb822::parse(data, &|_| true) {
        for p in &paragraphs {
            assert!(
                p.line >= 1 && p.line <= lines,
                "paragraph line {} of {lines}",
                p.line
            );
            assert!(!p.fields.is_empty() && p.fields.len() <= deb822::MAX_FIELDS);
        }
    }
    match dpkg::parse_status(data, Path::new("status")) {
        Ok(packages) => {
            for p in &packages {
                assert!(!p.name.is_empty() && !p.version.is_empty(), "{p:?}");
                assert!(p.state != "not-installed", "{p:?}");
            }
        }
        Err(e) => assert!(
            e.to_string().starts_with("status: "),
            "error does not name the file: {e}"
        ),
    }
    let (entries, bad) = dpkg::parse_md5sums(data);
    assert!(entries.len() + bad <= lines);
    assert!(entries.iter().all(|(p, _)| p.starts_with(b"/") && p.len() > 1));
    assert!(dpkg::parse_list(data).iter().all(|p| p.starts_with(b"/")));
    if let Ok(d) = dpkg::parse_diversions(data, Path::new("diversions")) {
        assert!(d.len() * 3 <= lines);
    }
});
