//! Fuzzes the block store's objects, which come from a shared bucket:
//! `Manifest::decode` and a pack's trailer and index
//! (`pack_index_range`, `parse_pack_index`).
//!
//! Besides "no panic", it checks the parsers' promises: a manifest's
//! blocks are in increasing order, inside its layout, with the layout's
//! block lengths and a known pack; a pack's entries lie inside its data
//! area without overlapping; and a decoded manifest encodes back to one
//! that decodes to the same.
#![no_main]

use cbt_net::store::format::{pack_index_range, parse_pack_index, Manifest, PACK_TRAILER};
use libfuzzer_sys::fuzz_target;

/// Keeps only manifests small enough to list every block length of.
trait FilterSize {
    fn filter_size(self) -> Self;
}

impl FilterSize for Result<Manifest, String> {
    fn filter_size(self) -> Self {
        self.and_then(|m| {
            if m.layout.block_count() <= 1 << 20 {
                Ok(m)
            } else {
                Err("large".into())
            }
        })
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data).filter_size() {
        let lens: Vec<u32> = m.layout.blocks().map(|b| b.len).collect();
        let mut prev = None;
        for b in &m.blocks {
            assert!(prev.is_none_or(|p| b.block > p));
            assert!((b.pack as usize) < m.packs.len());
            assert_eq!(lens[b.block as usize], b.stored.plain_len);
            prev = Some(b.block);
        }
        assert_eq!(Manifest::decode(&m.encode()).as_ref(), Ok(&m));
    }
    if data.len() >= PACK_TRAILER {
        let trailer = &data[data.len() - PACK_TRAILER..];
        if let Ok((start, end, sum)) = pack_index_range(trailer, data.len() as u64) {
            assert!(start >= 8 && start <= end && end as usize + PACK_TRAILER == data.len());
            if let Ok(entries) = parse_pack_index(&data[start as usize..end as usize], &sum, start) {
                let mut next = 8;
                for (_, s) in entries {
                    assert!(s.offset >= next);
                    next = s.offset + u64::from(s.stored_len);
                    assert!(next <= start);
                }
            }
        }
    }
});
