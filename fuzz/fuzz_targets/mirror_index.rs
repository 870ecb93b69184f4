//! Fuzzes the apt mirror index parsers (`cbt_teleport::mirror`): the
//! SHA256 section of a `Release` file and the stanzas of a `Packages`
//! file.
//!
//! Besides "no panic", the target checks their promises: every Release
//! path is relative without `..`; every Packages entry's Filename is under
//! `pool/` without `..`, its Size within the limit given, its name,
//! version and architecture within Debian policy's charset, and the skipped
//! stanzas plus the entries never outnumber the paragraphs.
#![no_main]

use std::collections::HashMap;

use cbt_teleport::mirror::{check_pool_path, check_relative_path, parse_packages, parse_release, SkippedStanzas};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = parse_release(data) {
        for f in &files {
            assert!(check_relative_path(&f.path).is_ok(), "{f:?}");
        }
    }
    let mut map = HashMap::new();
    let mut skipped = SkippedStanzas::default();
    let limit = 1 << 20;
    if parse_packages(data, limit, &mut map, &mut skipped).is_ok() {
        let paragraphs = data.split(|&b| b == b'\n').count();
        assert!(map.len() + skipped.total() <= paragraphs);
        for (id, e) in &map {
            assert!(!id.name.is_empty(), "{id:?}");
            assert!(id.is_well_formed(), "{id:?}");
            assert!(check_pool_path(&e.filename).is_ok(), "{e:?}");
            assert!(e.size <= limit, "{e:?}");
        }
    }
});
