//! Fuzzes the apt mirror index parsers (`cbt_teleport::mirror`): the
//! SHA256 section of a `Release` file and the stanzas of a `Packages`
//! file.
//!
//! Besides "no panic", the target checks their promises: every Release
//! path is relative without `..`; every Packages entry's Filename is under
//! `pool/` without `..`, its Size within the limit given, its name,
//! version and architecture within Debian policy's charset, and the skipped
//! stanzas plus the entries never outnumber the paragraphs. The streaming
//! parser (`parse_packages_from`, what a mirror's index goes through while
//! it is decompressed) gives exactly the same entries, counts and errors
//! as `parse_packages` on the whole input.
#![no_main]

use std::collections::HashMap;

use cbt_teleport::mirror::{
    check_pool_path, check_relative_path, parse_packages, parse_packages_from, parse_release, SkippedStanzas,
};
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
    let whole = parse_packages(data, limit, &mut map, &mut skipped);
    // Inputs are far below MAX_STANZA, so the stream has no extra error.
    let mut streamed_map = HashMap::new();
    let mut streamed_skipped = SkippedStanzas::default();
    let streamed = parse_packages_from(data, u64::MAX, limit, &mut streamed_map, &mut streamed_skipped);
    assert_eq!(streamed.as_ref().err(), whole.as_ref().err());
    if whole.is_ok() {
        assert_eq!(streamed_map, map);
        assert_eq!(streamed_skipped, skipped);
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
