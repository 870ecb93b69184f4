//! Fuzzes the apt index file reader: the input is read as each of the
//! compressions (plain, xz, zstd, gzip) with a small cap.
//!
//! Besides "no panic", the target checks that the reader hands out exactly
//! the bytes it declares, never more than the cap, reports a cap only when
//! it filled it, and that every error names the file.
#![no_main]

use std::path::Path;

use cbt_teleport::{read_index, IndexCompression, IndexLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: IndexLimits = IndexLimits { max_bytes: 1 << 20 };

fuzz_target!(|data: &[u8]| {
    for c in [
        IndexCompression::Plain,
        IndexCompression::Xz,
        IndexCompression::Zstd,
        IndexCompression::Gzip,
    ] {
        let mut got = 0u64;
        let result = read_index(data, Path::new("fuzz.idx"), c, &LIMITS, &mut |piece| {
            assert!(!piece.is_empty() || c != IndexCompression::Plain);
            got += piece.len() as u64;
            Ok(())
        });
        match result {
            Ok(info) => {
                assert_eq!(info.bytes, got);
                assert!(got <= LIMITS.max_bytes);
                assert!(!info.capped || got == LIMITS.max_bytes);
                if c == IndexCompression::Plain {
                    assert_eq!(got, (data.len() as u64).min(LIMITS.max_bytes));
                }
            }
            Err(e) => assert!(
                e.to_string().starts_with("fuzz.idx"),
                "error does not name the file: {e}"
            ),
        }
    }
});
