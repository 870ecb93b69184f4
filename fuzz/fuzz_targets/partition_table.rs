//! Fuzzes the partition-table parser (MBR, EBR chains, GPT) with the input
//! as the first bytes of a disk.
//!
//! Each input is parsed as a disk of exactly its own length and as a 1 TiB
//! disk whose bytes past the input read as zeros (so tables may point far
//! beyond the input). A copy with the GPT CRCs fixed up is parsed too:
//! otherwise the fuzzer would almost never get past the header CRC check
//! and the entry parser would go unexplored.
//!
//! Besides "no panic", the target checks the parser's promises: it reads
//! only within the disk, reads a bounded amount, and returns partitions
//! that are non-empty, inside the disk, sorted and non-overlapping.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Generous bound on the bytes one parse may read: four GPT headers and
/// arrays of at most 4 MiB each, 256 EBRs and the MBR come to about 17 MiB.
const MAX_TOTAL_READ: u64 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    parse(data, data.len() as u64);
    parse(data, 1 << 40);
    let fixed = fix_gpt_crcs(data);
    if fixed != data {
        parse(&fixed, fixed.len() as u64);
        parse(&fixed, 1 << 40);
    }
});

/// Parses `data` as the start of a disk of `disk_len` bytes and checks
/// the result.
fn parse(data: &[u8], disk_len: u64) {
    let mut total = 0u64;
    let mut read = |off: u64, buf: &mut [u8]| -> cbt_core::Result<()> {
        let end = off.checked_add(buf.len() as u64);
        assert!(
            end.is_some_and(|e| e <= disk_len),
            "read of {} bytes at {off} past the disk ({disk_len} bytes)",
            buf.len()
        );
        total += buf.len() as u64;
        buf.fill(0);
        if let Ok(start) = usize::try_from(off) {
            if start < data.len() {
                let n = (data.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&data[start..start + n]);
            }
        }
        Ok(())
    };
    let parts = match cbt_core::parse_partitions(disk_len, &mut read, Path::new("fuzz.img")) {
        Ok(parts) => parts,
        Err(e) => panic!("the read callback never fails, yet parsing did: {e}"),
    };
    assert!(total <= MAX_TOTAL_READ, "read {total} bytes");
    let mut end = 0u64;
    for p in &parts {
        assert!(p.len > 0, "empty partition {p:?}");
        assert!(p.start >= end, "unsorted or overlapping partitions {parts:?}");
        end = p.start.checked_add(p.len).expect("partition end overflows");
        assert!(
            end <= disk_len,
            "partition {p:?} past the disk ({disk_len} bytes)"
        );
    }
}

/// A copy of `data` in which every primary GPT header (512- or
/// 4096-byte sectors) has a correct entry-array CRC, where the array lies
/// within `data`, and a correct header CRC.
fn fix_gpt_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for sector in [512usize, 4096] {
        let Some(h) = out.get(sector..sector + 92) else {
            continue;
        };
        if &h[..8] != b"EFI PART" {
            continue;
        }
        let header_size = u32_from(&out, sector + 12) as usize;
        let entries_lba = u64::from_le_bytes(out[sector + 72..sector + 80].try_into().unwrap_or_default());
        let count = u32_from(&out, sector + 80) as usize;
        let size = u32_from(&out, sector + 84) as usize;
        let array = usize::try_from(entries_lba)
            .ok()
            .and_then(|lba| lba.checked_mul(sector))
            .zip(count.checked_mul(size))
            .and_then(|(start, len)| out.get(start..start.checked_add(len)?));
        if let Some(array) = array {
            let crc = crc32(array).to_le_bytes();
            out[sector + 88..sector + 92].copy_from_slice(&crc);
        }
        if (92..=sector).contains(&header_size) {
            if let Some(header) = out.get(sector..sector + header_size) {
                let mut header = header.to_vec();
                header[16..20].fill(0);
                let crc = crc32(&header).to_le_bytes();
                out[sector + 16..sector + 20].copy_from_slice(&crc);
            }
        }
    }
    out
}

/// Little-endian `u32` at `at` (callers checked the bounds).
fn u32_from(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default())
}

/// CRC-32 (IEEE, as GPT uses) with a table built at compile time:
/// dependency-free (the fuzz crate may not add dependencies), and fast
/// enough that the fix-up does not dominate each run on 64 KiB inputs.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}
