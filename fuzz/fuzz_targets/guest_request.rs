//! Fuzzes the guest description a teleport's sender sends (DESCRIBE):
//! `GuestRequest::from_json`, then the receiver's resolution against a
//! package cache (no mirror: nothing leaves the machine).
//!
//! Besides "no panic", it checks the parser's promises: every string is
//! within its bound and every list within its count; and resolution
//! accounts for every distinct package (cached or missing) without ever
//! deciding to fetch with no mirror.
#![no_main]

use cbt_teleport::{GuestRequest, PackageSources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = GuestRequest::from_json(data) else {
        return;
    };
    assert!(r.packages.len() <= 200_000 && r.dists.len() <= 32);
    for p in &r.packages {
        assert!(p.name.len() <= 256 && p.version.len() <= 256 && p.architecture.len() <= 256);
    }
    assert!(r.link_rate.is_none_or(|l| l.is_finite() && l > 0.0));
    let sources = PackageSources {
        caches: vec![std::env::temp_dir().join("cbt-fuzz-no-such-cache")],
        ..PackageSources::default()
    };
    let res = sources.resolve(&r);
    let distinct: std::collections::BTreeSet<_> = r.packages.iter().collect();
    if r.error.is_none() {
        assert_eq!(res.plan.packages, distinct.len());
        assert_eq!(res.plan.cached + res.plan.missing.len(), distinct.len());
    }
    assert!(!res.plan.fetch);
});
