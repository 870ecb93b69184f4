//! Fuzzes the qcow2 header parser and the snapshot-table parser.
//!
//! The input is taken as a whole qcow2 file: when its header parses, the
//! snapshot table it points to is parsed from the input's own bytes. Few
//! inputs get a valid header, so the snapshot-table parser is also fed the
//! input directly (first byte: entry count), which lets the fuzzer explore
//! entry layouts without first solving the header.
//!
//! Besides "no panic", the target checks the parsers' promises: accepted
//! headers and entries have their sizes and offsets within the bounds the
//! readers rely on before allocating or seeking.
#![no_main]

use std::path::Path;

use cbt_core::{parse_header, parse_snapshot_table, Qcow2Header, SnapshotInfo};
use libfuzzer_sys::fuzz_target;

/// The bounds `cbt-core` promises for parsed values (qemu's own limits).
const MAX_VIRTUAL_SIZE: u64 = 1 << 56;
const MAX_L1_ENTRIES: u32 = (32 << 20) / 8;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz");
    if let Ok(header) = parse_header(data, data.len() as u64, path) {
        check_header(&header, data.len() as u64);
        let table = usize::try_from(header.snapshots_offset)
            .ok()
            .and_then(|at| data.get(at..));
        if let Some(table) = table {
            if let Ok(snapshots) = parse_snapshot_table(table, header.nb_snapshots, header.size, path) {
                check_snapshots(&snapshots, header.nb_snapshots, table.len());
            }
        }
    }
    if let Some((&count, table)) = data.split_first() {
        if let Ok(snapshots) = parse_snapshot_table(table, u32::from(count), 1 << 30, path) {
            check_snapshots(&snapshots, u32::from(count), table.len());
        }
    }
});

fn check_header(h: &Qcow2Header, file_len: u64) {
    assert!(h.version == 2 || h.version == 3);
    assert!((9..=21).contains(&h.cluster_bits));
    assert!(h.size <= MAX_VIRTUAL_SIZE);
    assert!(h.l1_size <= MAX_L1_ENTRIES);
    if h.l1_size > 0 {
        assert!(h.l1_table_offset + u64::from(h.l1_size) * 8 <= file_len);
    }
    if h.nb_snapshots > 0 {
        assert!(h.snapshots_offset + u64::from(h.nb_snapshots) * 40 <= file_len);
    }
}

fn check_snapshots(snapshots: &[SnapshotInfo], count: u32, table_len: usize) {
    assert_eq!(snapshots.len(), count as usize);
    // Every entry takes at least 40 bytes of the table.
    assert!(snapshots.len() * 40 <= table_len);
    for s in snapshots {
        assert!(s.l1_size <= MAX_L1_ENTRIES);
        assert!(s.disk_size <= MAX_VIRTUAL_SIZE);
    }
}
