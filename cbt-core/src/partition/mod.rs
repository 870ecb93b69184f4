//! Partition tables: MBR (primary partitions and the logical partitions of
//! extended ones) and GPT (512- and 4096-byte sectors).
//!
//! Filesystems align their files to the start of their partition, not of
//! the disk: a partition at sector 63 shifts every 4 KiB file block by
//! 3584 bytes relative to the disk. The block layout therefore aligns
//! blocks to each partition's start, and this module finds those starts.
//!
//! A partition table only steers alignment, never correctness: a block cut
//! at an unlucky offset still transfers, it just deduplicates worse. So a
//! damaged or implausible table degrades to "no partitions" (or drops the
//! entries that make no sense) with a `tracing` warning, like `blkid` and
//! the kernel do, instead of refusing to transfer the disk. The only errors
//! returned are those of the `read` callback. Every offset, count and size
//! taken from the disk is bounded before it is used to read or allocate,
//! and no read ever reaches past the disk's length.
//!
//! MBR entries count 512-byte sectors: the MBR cannot say otherwise, and
//! MBR disks with 4096-byte logical sectors are vanishingly rare in images.

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::Image;

/// One partition: a byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Byte offset of the first sector.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Sector size assumed for MBR and EBR entries.
const MBR_SECTOR: u64 = 512;
/// Offset of the first of the four entries in an MBR or EBR.
const MBR_ENTRIES_AT: usize = 446;
/// Size of one MBR entry.
const MBR_ENTRY_LEN: usize = 16;
/// Type of the single entry of a protective MBR: the disk is GPT.
const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// Types of extended partitions (CHS, LBA and Linux flavours).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Most EBRs followed over all extended partitions of a disk. Each EBR
/// holds at most a few logical partitions and real tools stop far earlier
/// (Linux numbers at most a few hundred), so this only stops hostile chains.
const MAX_EBRS: usize = 256;

/// Logical sector sizes tried for GPT, most common first.
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];
/// First 8 bytes of a GPT header.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Smallest header size: the fields defined by UEFI 2.x.
const GPT_MIN_HEADER: u32 = 92;
/// Smallest entry size allowed by the UEFI specification.
const GPT_MIN_ENTRY: u32 = 128;
/// Largest entry size accepted; real tables use 128.
const GPT_MAX_ENTRY: u32 = 4096;
/// Largest entry count accepted; real tables use 128.
const GPT_MAX_ENTRIES: u32 = 16384;
/// Largest entry array read, whatever count and size claim (the usual
/// array is 16 KiB); a bigger one is treated as corrupt.
const GPT_MAX_ARRAY: u64 = 4 << 20;
/// The entry array is read and checked in pieces of about this size, so
/// memory stays small even for the largest array accepted.
const GPT_READ_CHUNK: usize = 64 << 10;

/// Parses the partition table found in the first bytes of a disk of `disk_len`
/// bytes. `read` returns the bytes at an offset (used for GPT entries and
/// extended-partition chains). Returns no partitions when there is no table.
///
/// The result is sorted by start, non-overlapping, free of empty
/// partitions and clipped to the disk. `read` is only asked for ranges that
/// lie within `disk_len`; its errors are the only errors returned (a
/// damaged table is logged and yields fewer or no partitions).
pub fn parse_partitions(
    disk_len: u64,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    path: &Path,
) -> Result<Vec<Partition>> {
    let mut disk = Disk {
        len: disk_len,
        read,
        path,
    };
    let mut sector0 = [0u8; MBR_SECTOR as usize];
    if !disk.read(0, &mut sector0)? {
        return Ok(Vec::new());
    }
    let found = match classify_mbr(&sector0) {
        MbrTable::Absent(why) => {
            // Not a warning: a bare filesystem image is the common case.
            tracing::debug!(path = %path.display(), "no partition table: {why}");
            Vec::new()
        }
        MbrTable::Protective => find_gpt(&mut disk)?,
        MbrTable::Dos(entries) => parse_dos(&mut disk, &entries)?,
    };
    Ok(normalize(found, disk_len, path))
}

/// Reads the partition table of `image`.
pub fn read_partitions(image: &dyn Image) -> Result<Vec<Partition>> {
    let len = image.len();
    let path = image.path().to_path_buf();
    parse_partitions(len, &mut |off, buf| image.read_at(buf, off), &path)
}

/// The disk being parsed: its length, how to read it, and its name.
struct Disk<'a> {
    len: u64,
    read: &'a mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    path: &'a Path,
}

impl Disk<'_> {
    /// Fills `buf` from `offset` and returns true, or returns false without
    /// reading if the range is not entirely on the disk: the offsets come
    /// from the table, and a table pointing past the end is a defect of the
    /// table, not a reason to fail the read.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {
                (self.read)(offset, buf)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Little-endian `u32` at `at`; callers pass offsets inside buffers whose
/// size they chose, never offsets read from the disk.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Little-endian `u64` at `at`; same contract as [`u32_at`].
fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A partition from a table entry counted in sectors of `sector` bytes,
/// saturating: a start that overflows lands past any disk and is dropped
/// by [`normalize`], a length that overflows is clipped there.
fn from_sectors(first: u64, count: u64, sector: u64) -> Partition {
    Partition {
        start: first.saturating_mul(sector),
        len: count.saturating_mul(sector),
    }
}

// ---------------------------------------------------------------- MBR

/// One of the four entries of an MBR or EBR.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    boot: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

/// The four entries of an MBR or EBR sector.
fn mbr_entries(sector: &[u8; MBR_SECTOR as usize]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let e = MBR_ENTRIES_AT + i * MBR_ENTRY_LEN;
        MbrEntry {
            boot: sector[e],
            kind: sector[e + 4],
            start: u32_at(sector, e + 8),
            sectors: u32_at(sector, e + 12),
        }
    })
}

/// Whether a sector ends with the 0x55 0xAA boot signature.
fn has_boot_signature(sector: &[u8; MBR_SECTOR as usize]) -> bool {
    sector[510] == 0x55 && sector[511] == 0xAA
}

/// What sector 0 holds.
enum MbrTable {
    /// No partition table, and why we think so.
    Absent(String),
    /// A protective MBR: the real table is GPT.
    Protective,
    /// A DOS partition table.
    Dos([MbrEntry; 4]),
}

/// Decides whether sector 0 is a partition table. Filesystem boot sectors
/// (FAT, NTFS, exFAT) also end with 0x55 0xAA and carry boot code or
/// messages where the entries would be, so a plausible signature is not
/// enough: like `blkid`, reject filesystem boot sectors and tables whose
/// boot flags are not 0x00 or 0x80.
fn classify_mbr(sector: &[u8; MBR_SECTOR as usize]) -> MbrTable {
    if !has_boot_signature(sector) {
        return MbrTable::Absent("no 0x55AA signature at byte 510".into());
    }
    if let Some(fs) = boot_sector_filesystem(sector) {
        return MbrTable::Absent(format!("sector 0 is a {fs} boot sector"));
    }
    let entries = mbr_entries(sector);
    for (i, e) in entries.iter().enumerate() {
        if e.boot != 0x00 && e.boot != 0x80 {
            return MbrTable::Absent(format!(
                "MBR entry {} has boot flag {:#04x}, not 0x00 or 0x80",
                i + 1,
                e.boot
            ));
        }
    }
    if entries.iter().any(|e| e.kind == TYPE_GPT_PROTECTIVE) {
        return MbrTable::Protective;
    }
    for (i, e) in entries.iter().enumerate() {
        // Sector 0 is the table itself; an entry claiming it is boot code.
        if e.kind != 0 && e.start == 0 {
            return MbrTable::Absent(format!("MBR entry {} starts at sector 0", i + 1));
        }
    }
    MbrTable::Dos(entries)
}

/// The filesystem whose boot sector `sector` is, judged by the names
/// those filesystems write at fixed offsets and (for FAT) a sane BPB.
fn boot_sector_filesystem(sector: &[u8; MBR_SECTOR as usize]) -> Option<&'static str> {
    let oem = &sector[3..11];
    if oem == b"NTFS    " {
        return Some("NTFS");
    }
    if oem == b"EXFAT   " {
        return Some("exFAT");
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    let sectors_per_cluster = sector[13];
    let bpb_sane =
        matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) && sectors_per_cluster.is_power_of_two();
    // FAT12/16 name their type at 0x36, FAT32 at 0x52.
    if bpb_sane && (&sector[0x36..0x39] == b"FAT" || &sector[0x52..0x57] == b"FAT32") {
        return Some("FAT");
    }
    None
}

/// The partitions of a DOS table: primary ones, and the logical ones of
/// each extended partition (the extended container itself overlaps its
/// logical partitions and holds no filesystem, so it is not reported).
fn parse_dos(disk: &mut Disk<'_>, entries: &[MbrEntry; 4]) -> Result<Vec<Partition>> {
    let mut found = Vec::new();
    let mut ebr_budget = MAX_EBRS;
    for e in entries {
        if e.kind == 0 {
            continue;
        }
        if e.is_extended() {
            read_logical(disk, u64::from(e.start), &mut ebr_budget, &mut found)?;
        } else {
            found.push(from_sectors(u64::from(e.start), u64::from(e.sectors), MBR_SECTOR));
        }
    }
    Ok(found)
}

/// Follows the EBR chain of the extended partition starting at sector
/// `ext_start`. In each EBR, data entries are relative to that EBR and
/// the first extended entry links to the next EBR, relative to
/// `ext_start`. The chain is bounded by `budget` (shared by all extended
/// partitions) and stops if it comes back to an EBR already read.
fn read_logical(
    disk: &mut Disk<'_>,
    ext_start: u64,
    budget: &mut usize,
    found: &mut Vec<Partition>,
) -> Result<()> {
    let path = disk.path.display();
    let mut visited: Vec<u64> = Vec::new();
    let mut ebr = ext_start;
    loop {
        if visited.contains(&ebr) {
            tracing::warn!(%path, "EBR chain of the extended partition at sector {ext_start} loops back to sector {ebr}; ignoring the rest");
            return Ok(());
        }
        if *budget == 0 {
            tracing::warn!(%path, "more than {MAX_EBRS} EBRs in extended partitions; ignoring the rest");
            return Ok(());
        }
        *budget -= 1;
        visited.push(ebr);

        let mut sector = [0u8; MBR_SECTOR as usize];
        let offset = ebr.checked_mul(MBR_SECTOR);
        if !offset.map_or(Ok(false), |off| disk.read(off, &mut sector))? {
            tracing::warn!(%path, "EBR at sector {ebr} is past the end of the disk; ignoring it and the rest of its chain");
            return Ok(());
        }
        if !has_boot_signature(&sector) {
            tracing::warn!(%path, "EBR at sector {ebr} has no 0x55AA signature; ignoring it and the rest of its chain");
            return Ok(());
        }
        let mut next = None;
        for (i, e) in mbr_entries(&sector).iter().enumerate() {
            if e.kind == 0 || e.sectors == 0 {
                continue;
            }
            if e.is_extended() {
                // Only the first link counts, as in Linux: one chain, not a tree.
                if next.is_none() {
                    next = Some(ext_start.saturating_add(u64::from(e.start)));
                }
            } else if e.start == 0 {
                tracing::warn!(%path, "EBR at sector {ebr}: entry {} starts on the EBR itself; ignoring it", i + 1);
            } else {
                let first = ebr.saturating_add(u64::from(e.start));
                found.push(from_sectors(first, u64::from(e.sectors), MBR_SECTOR));
            }
        }
        match next {
            Some(n) => ebr = n,
            None => return Ok(()),
        }
    }
}

// ---------------------------------------------------------------- GPT

/// The result of looking for a GPT at one place.
enum Gpt {
    /// A valid header and entry array, and the partitions they list.
    Found(Vec<Partition>),
    /// Why this header cannot be used.
    Invalid(String),
}

/// The partitions of a disk with a protective MBR: from the primary GPT
/// header (trying both sector sizes), else from the backup header in the
/// disk's last sector, else none: a protective MBR says the disk is GPT,
/// so its 0xEE entry is no partition to align to.
fn find_gpt(disk: &mut Disk<'_>) -> Result<Vec<Partition>> {
    let mut problems = Vec::new();
    for sector in GPT_SECTOR_SIZES {
        match read_gpt(disk, sector, 1)? {
            Gpt::Found(parts) => return Ok(parts),
            Gpt::Invalid(why) => problems.push(why),
        }
    }
    for sector in GPT_SECTOR_SIZES {
        let Some(last) = (disk.len / sector).checked_sub(1) else {
            continue;
        };
        // A backup header in sector 1 would be the primary one again.
        if last <= 1 {
            continue;
        }
        match read_gpt(disk, sector, last)? {
            Gpt::Found(parts) => {
                let err = Error::malformed(
                    disk.path,
                    format!("primary GPT header unusable: {}", problems.join("; ")),
                );
                tracing::warn!(%err, "using the backup GPT header at sector {last} ({sector}-byte sectors)");
                return Ok(parts);
            }
            Gpt::Invalid(why) => problems.push(why),
        }
    }
    let err = Error::malformed(
        disk.path,
        format!("protective MBR but no usable GPT: {}", problems.join("; ")),
    );
    tracing::warn!(%err, "treating the disk as unpartitioned");
    Ok(Vec::new())
}

/// Reads and checks the GPT header at sector `lba` (of `sector` bytes)
/// and its entry array.
fn read_gpt(disk: &mut Disk<'_>, sector: u64, lba: u64) -> Result<Gpt> {
    let invalid = |what: String| {
        Ok(Gpt::Invalid(format!(
            "GPT header in {sector}-byte sector {lba}: {what}"
        )))
    };
    let Some(offset) = lba.checked_mul(sector) else {
        return invalid("offset overflows".into());
    };
    // `sector` is one of GPT_SECTOR_SIZES, not a value from the disk.
    let mut header = vec![0u8; sector as usize];
    if !disk.read(offset, &mut header)? {
        return invalid(format!("byte {offset} is past the end of the disk"));
    }
    if &header[0..8] != GPT_SIGNATURE {
        return invalid("no \"EFI PART\" signature".into());
    }
    let header_size = u32_at(&header, 12);
    if header_size < GPT_MIN_HEADER || u64::from(header_size) > sector {
        return invalid(format!(
            "header size {header_size} is outside {GPT_MIN_HEADER}..={sector}"
        ));
    }
    let stored_crc = u32_at(&header, 16);
    // The CRC covers the header with its own CRC field zeroed.
    let mut crc = flate2::Crc::new();
    crc.update(&header[..16]);
    crc.update(&[0; 4]);
    crc.update(&header[20..header_size as usize]);
    if crc.sum() != stored_crc {
        return invalid(format!(
            "header CRC is {:#010x}, header says {stored_crc:#010x}",
            crc.sum()
        ));
    }
    let my_lba = u64_at(&header, 24);
    if my_lba != lba {
        return invalid(format!("header says it is in sector {my_lba}"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84);
    let entries_crc = u32_at(&header, 88);
    if !(GPT_MIN_ENTRY..=GPT_MAX_ENTRY).contains(&entry_size) || entry_size % 8 != 0 {
        return invalid(format!(
            "entry size {entry_size} is not a multiple of 8 in {GPT_MIN_ENTRY}..={GPT_MAX_ENTRY}"
        ));
    }
    if count > GPT_MAX_ENTRIES {
        return invalid(format!("entry count {count} exceeds {GPT_MAX_ENTRIES}"));
    }
    // Both factors are bounded above, so this cannot overflow.
    let array_len = u64::from(count) * u64::from(entry_size);
    if array_len > GPT_MAX_ARRAY {
        return invalid(format!(
            "entry array of {array_len} bytes exceeds {GPT_MAX_ARRAY}"
        ));
    }
    let array_start = match entries_lba.checked_mul(sector) {
        Some(start) if start.checked_add(array_len).is_some_and(|end| end <= disk.len) => start,
        _ => {
            return invalid(format!(
                "entry array at sector {entries_lba} ({array_len} bytes) runs past the end of the disk ({} bytes)",
                disk.len
            ))
        }
    };

    // Read whole entries at a time, a bounded chunk at once.
    let entry_size = entry_size as usize;
    let per_chunk = (GPT_READ_CHUNK / entry_size).max(1);
    let mut chunk = vec![0u8; per_chunk * entry_size];
    let mut crc = flate2::Crc::new();
    let mut found = Vec::new();
    let mut reversed = 0usize;
    let mut left = count as usize;
    let mut pos = array_start;
    while left > 0 {
        let n = left.min(per_chunk);
        let buf = &mut chunk[..n * entry_size];
        if !disk.read(pos, buf)? {
            // Checked against the disk length above; kept for safety.
            return invalid("entry array runs past the end of the disk".into());
        }
        crc.update(buf);
        for entry in buf.chunks_exact(entry_size) {
            // An all-zero type GUID marks an unused entry.
            if entry[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let first = u64_at(entry, 32);
            let last = u64_at(entry, 40);
            match last.checked_sub(first) {
                Some(span) => found.push(from_sectors(first, span.saturating_add(1), sector)),
                None => reversed += 1,
            }
        }
        left -= n;
        pos = pos.saturating_add(buf.len() as u64);
    }
    if crc.sum() != entries_crc {
        return invalid(format!(
            "entry array CRC is {:#010x}, header says {entries_crc:#010x}",
            crc.sum()
        ));
    }
    if reversed > 0 {
        tracing::warn!(path = %disk.path.display(), "{reversed} GPT entries end before they start; ignoring them");
    }
    Ok(Gpt::Found(found))
}

// ---------------------------------------------------------------- checks

/// Makes the partition list usable for alignment: drops empty partitions
/// and those starting past the disk, clips those running past it, sorts
/// by start and drops any partition overlapping an earlier one (clipping
/// its start instead would align to an offset where no filesystem begins).
fn normalize(mut parts: Vec<Partition>, disk_len: u64, path: &Path) -> Vec<Partition> {
    let path = path.display();
    parts.retain_mut(|p| {
        if p.len == 0 {
            return false;
        }
        if p.start >= disk_len {
            tracing::warn!(%path, "partition at byte {} starts past the end of the disk ({disk_len} bytes); ignoring it", p.start);
            return false;
        }
        let room = disk_len - p.start;
        if p.len > room {
            tracing::warn!(%path, "partition at byte {} ({} bytes) runs past the end of the disk ({disk_len} bytes); clipping it", p.start, p.len);
            p.len = room;
        }
        true
    });
    // At equal starts the longer partition wins: it is the likelier container.
    parts.sort_by_key(|p| (p.start, std::cmp::Reverse(p.len)));
    let mut out: Vec<Partition> = Vec::with_capacity(parts.len());
    let mut end = 0u64;
    for p in parts {
        if p.start < end {
            tracing::warn!(%path, "partition at byte {} overlaps the one before it; ignoring it", p.start);
            continue;
        }
        // Clipped above, so start + len <= disk_len.
        end = p.start + p.len;
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests;
