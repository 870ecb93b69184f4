//! Fuzzes the user-data pack a functional pull receives
//! (`PackIndex::parse_bytes`, the same checks as `PackIndex::parse`).
//!
//! Besides "no panic", it checks the parser's promises: every path is a
//! clean absolute path, every file's content lies inside the pack, on a
//! 4 KiB boundary, in order and without overlap, and no owner is -1.
#![no_main]

use cbt_teleport::rebuild::{check_path, PackIndex, PACK_ALIGN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes pick the pack's claimed length (content may lie
    // beyond what the fuzzer gave, as in a sparse pack); an odd first byte
    // wraps the rest as the index under a valid header and checksum, so
    // the JSON and the bounds behind it are reached too.
    let (len, rest) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l) % (1 << 40), rest),
        None => return,
    };
    let pack = if len & 1 == 1 {
        let mut p = b"CBTUDAT1".to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        p.extend_from_slice(blake3::hash(rest).as_bytes());
        p.extend_from_slice(rest);
        p
    } else {
        rest.to_vec()
    };
    let len = len.max(pack.len() as u64);
    let Ok(index) = PackIndex::parse_bytes(&pack, len) else {
        return;
    };
    let mut next = 0;
    for f in &index.files {
        assert!(check_path(&f.path).is_ok());
        assert!(f.offset % PACK_ALIGN == 0 && f.offset >= next && f.offset + f.size <= len);
        assert!(f.uid != u32::MAX && f.gid != u32::MAX);
        next = f.offset + f.size.div_ceil(PACK_ALIGN) * PACK_ALIGN;
    }
    for d in &index.dirs {
        assert!(check_path(&d.path).is_ok());
    }
    for l in &index.symlinks {
        assert!(check_path(&l.path).is_ok() && !l.target.is_empty());
    }
});
