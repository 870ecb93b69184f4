//! The qcow2 header: parsed and checked by us before `imago` sees the file,
//! so every defect and every unsupported feature gets an error that names
//! the file and the feature.

use std::path::Path;

use crate::error::{Error, Result};

/// The four bytes every qcow2 file starts with.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Largest L1 table qemu itself accepts (32 MiB), which bounds what we allocate.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the backing file name.
const MAX_BACKING_NAME: u32 = 1023;
/// qemu's limit on the number of internal snapshots.
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// Largest virtual size we accept (qemu's limit is 2^61 bytes... we use 2^56, 64 PiB).
const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// The fields of a qcow2 header that cbt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// File offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// File offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Backing file name as written in the header (relative to the image's directory).
    pub backing_file: Option<String>,
    /// Backing format from the header extension ("qcow2", "raw"), if present.
    pub backing_format: Option<String>,
}

impl Qcow2Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Parses and checks a qcow2 header.
///
/// `bytes` is the start of the file (at least its first cluster, or the
/// whole file if shorter); `file_len` is the file's length, used to reject
/// tables that point past the end.
pub fn parse_header(bytes: &[u8], file_len: u64, path: &Path) -> Result<Qcow2Header> {
    let bad = |reason: String| Error::malformed(path, reason);
    if bytes.len() < 72 {
        return Err(bad(format!(
            "truncated qcow2 header: {} bytes, need at least 72",
            bytes.len()
        )));
    }
    if bytes[..4] != QCOW2_MAGIC {
        return Err(bad("not a qcow2 image (bad magic)".into()));
    }
    let version = be32(bytes, 4);
    if version != 2 && version != 3 {
        return Err(bad(format!("unknown qcow2 version {version}")));
    }
    let backing_file_offset = be64(bytes, 8);
    let backing_file_size = be32(bytes, 16);
    let cluster_bits = be32(bytes, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits} out of range 9..=21")));
    }
    let cluster_size = 1u64 << cluster_bits;
    let size = be64(bytes, 24);
    if size > MAX_VIRTUAL_SIZE {
        return Err(bad(format!("absurd virtual size {size}")));
    }
    let crypt_method = be32(bytes, 32);
    if crypt_method != 0 {
        return Err(Error::Unsupported {
            path: path.into(),
            feature: format!("encryption (method {crypt_method})"),
        });
    }
    let l1_size = be32(bytes, 36);
    let l1_table_offset = be64(bytes, 40);
    let nb_snapshots = be32(bytes, 60);
    let snapshots_offset = be64(bytes, 64);

    let mut header_length = 72usize;
    if version == 3 {
        if bytes.len() < 104 {
            return Err(bad(format!(
                "truncated qcow2 v3 header: {} bytes, need 104",
                bytes.len()
            )));
        }
        let incompatible = be64(bytes, 72);
        header_length = be32(bytes, 100) as usize;
        if header_length < 104 || header_length as u64 > cluster_size || header_length > bytes.len() {
            return Err(bad(format!("header_length {header_length} is invalid")));
        }
        let named = [
            (
                INCOMPAT_DIRTY,
                "dirty bit (image was not closed cleanly; run `qemu-img check -r all`)",
            ),
            (INCOMPAT_CORRUPT, "corrupt bit (qemu marked the image corrupt)"),
            (
                INCOMPAT_DATA_FILE,
                "external data file (`qemu-img convert -O qcow2 IN OUT` writes a copy without it)",
            ),
            (
                INCOMPAT_EXTL2,
                "extended L2 entries (subclusters) (`qemu-img convert -O qcow2 IN OUT` writes a copy without them)",
            ),
        ];
        for (bit, name) in named {
            if incompatible & bit != 0 {
                return Err(Error::Unsupported {
                    path: path.into(),
                    feature: name.into(),
                });
            }
        }
        if incompatible & INCOMPAT_COMPRESSION != 0 {
            let kind = if header_length > 104 { bytes[104] } else { 0 };
            let feature = match kind {
                1 => "zstd compression (`qemu-img convert -O qcow2 IN OUT` writes an uncompressed copy)"
                    .to_string(),
                k => format!("compression type {k}"),
            };
            if kind != 0 {
                return Err(Error::Unsupported {
                    path: path.into(),
                    feature,
                });
            }
        }
        let known =
            INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
        if incompatible & !known != 0 {
            return Err(Error::Unsupported {
                path: path.into(),
                feature: format!("unknown incompatible feature bits {:#x}", incompatible & !known),
            });
        }
    }

    // The L1 table must cover the disk and lie inside the file.
    let l2_entries = cluster_size / 8;
    let needed_l1 = size.div_ceil(cluster_size * l2_entries);
    if u64::from(l1_size) < needed_l1 {
        return Err(bad(format!(
            "L1 table has {l1_size} entries, {needed_l1} needed for a {size}-byte disk"
        )));
    }
    let l1_bytes = u64::from(l1_size) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(bad(format!("absurd L1 table size {l1_size} entries")));
    }
    if l1_size > 0 {
        check_table(
            path,
            "L1 table",
            l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
        )?;
    }
    if nb_snapshots > MAX_SNAPSHOTS {
        return Err(bad(format!("absurd snapshot count {nb_snapshots}")));
    }
    if nb_snapshots > 0 {
        // Each entry is at least 40 bytes.
        check_table(
            path,
            "snapshot table",
            snapshots_offset,
            u64::from(nb_snapshots) * 40,
            cluster_size,
            file_len,
        )?;
    }

    let backing_file = if backing_file_offset != 0 {
        if backing_file_size == 0 || backing_file_size > MAX_BACKING_NAME {
            return Err(bad(format!(
                "backing file name length {backing_file_size} is invalid"
            )));
        }
        let start = usize::try_from(backing_file_offset)
            .ok()
            .filter(|&s| s < bytes.len());
        let end = start
            .and_then(|s| s.checked_add(backing_file_size as usize))
            .filter(|&e| e <= bytes.len());
        match (start, end) {
            (Some(s), Some(e)) => Some(
                String::from_utf8(bytes[s..e].to_vec())
                    .map_err(|_| bad("backing file name is not UTF-8".into()))?,
            ),
            _ => {
                return Err(bad(format!(
                    "backing file name at offset {backing_file_offset} lies outside the first cluster"
                )))
            }
        }
    } else {
        None
    };

    let backing_format = parse_extensions(bytes, header_length, path)?;
    Ok(Qcow2Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_table_offset,
        nb_snapshots,
        snapshots_offset,
        backing_file,
        backing_format,
    })
}

/// Checks a metadata table's placement: cluster-aligned and inside the file.
pub(crate) fn check_table(
    path: &Path,
    what: &str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if offset % cluster_size != 0 && what != "snapshot table" {
        return Err(Error::malformed(
            path,
            format!("{what} offset {offset} is not cluster-aligned"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::malformed(
            path,
            format!(
                "{what} at offset {offset} ({len} bytes) points past the end of the file ({file_len} bytes)"
            ),
        )),
    }
}

/// Walks the header extensions; returns the backing format if one is given.
fn parse_extensions(bytes: &[u8], mut at: usize, path: &Path) -> Result<Option<String>> {
    let mut backing_format = None;
    // A bounded walk: each extension takes at least 8 bytes of the first cluster.
    while at + 8 <= bytes.len() {
        let kind = be32(bytes, at);
        let len = be32(bytes, at + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data_start = at + 8;
        let data_end = data_start
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                Error::malformed(
                    path,
                    format!("header extension {kind:#x} of {len} bytes runs past the first cluster"),
                )
            })?;
        if kind == EXT_BACKING_FORMAT {
            backing_format = Some(
                String::from_utf8(bytes[data_start..data_end].to_vec())
                    .map_err(|_| Error::malformed(path, "backing format name is not UTF-8"))?,
            );
        }
        at = data_start + len.div_ceil(8) * 8;
    }
    Ok(backing_format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_v3() -> Vec<u8> {
        let mut h = vec![0u8; 65536 * 3];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&65536u64.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn accepts_minimal() {
        let h = minimal_v3();
        let p = Path::new("x.qcow2");
        let hdr = parse_header(&h[..65536], h.len() as u64, p).unwrap();
        assert_eq!(hdr.size, 1 << 30);
        assert_eq!(hdr.cluster_size(), 65536);
    }

    #[test]
    fn names_unsupported_features() {
        let p = Path::new("x.qcow2");
        for (bit, word) in [(1u64, "dirty"), (4, "external data file"), (16, "extended L2")] {
            let mut h = minimal_v3();
            h[72..80].copy_from_slice(&bit.to_be_bytes());
            let e = parse_header(&h[..65536], h.len() as u64, p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(word) && e.contains("x.qcow2"), "{e}");
        }
        let mut h = minimal_v3();
        h[72..80].copy_from_slice(&8u64.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h[104] = 1;
        let e = parse_header(&h[..65536], h.len() as u64, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zstd"), "{e}");
    }

    #[test]
    fn rejects_tables_past_end() {
        let p = Path::new("x.qcow2");
        let h = minimal_v3();
        let e = parse_header(&h[..65536], 65536, p).unwrap_err().to_string();
        assert!(e.contains("L1 table") && e.contains("past the end"), "{e}");
        let mut h = minimal_v3();
        h[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
        assert!(parse_header(&h[..65536], h.len() as u64, p).is_err());
        assert!(parse_header(&h[..50], 50, p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
