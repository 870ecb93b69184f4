//! qcow2 internal snapshots, read through their own L1/L2 tables.
//!
//! `imago` reads only an image's current state, but a destination often
//! holds older states of a disk as internal snapshots. Indexing each one as
//! an image of its own lets blocks that survive only in a snapshot be copied
//! locally instead of fetched over the network.
//!
//! [`parse_snapshot_table`] is a pure parser over the table bytes (fuzzed):
//! every count, length and size in the table is bounded before anything is
//! allocated. [`read_snapshot_table`] reads just enough of the file for it
//! and checks that each snapshot's L1 table lies inside the file.
//! [`SnapshotImage`] maps guest offsets through the snapshot's L1 table and
//! the L2 tables it points to (standard, zero and deflate-compressed
//! clusters, standard 64-bit L2 entries only; the header check refuses
//! extended L2). Unallocated clusters fall through to the image's backing
//! file as it is now: qcow2 snapshots do not record their own backing file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::backing::Backing;
use super::qcow2::{backing_chain, read_header};
use super::qcow2_header::{check_table, Qcow2Header, MAX_SNAPSHOTS};
use super::{
    check_range, open_image, pread_exact, pread_full, Extent, ExtentScope, Image, ImageSpec, RawImage,
};
use crate::error::{Error, Result};

/// Fixed part of a snapshot-table entry, before the extra data and strings.
const ENTRY_FIXED: usize = 40;
/// qemu's limit on a snapshot's extra data (`QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
const MAX_EXTRA_DATA: u32 = 1024;
/// qemu's limit on the whole snapshot table (`QCOW_MAX_SNAPSHOTS_SIZE`).
const MAX_TABLE_BYTES: usize = 64 << 20;
/// qemu's limit on an L1 table (`QCOW_MAX_L1_SIZE`), which bounds what we allocate.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest snapshot disk size we accept; matches the header's limit on the current size.
const MAX_DISK_SIZE: u64 = 1 << 56;
/// Bits 9..=55 of L1 and standard L2 entries: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry flag: the cluster is deflate-compressed.
const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry flag: the cluster reads as zeros (whatever else the entry says).
const L2_ZERO: u64 = 1;
/// Compressed lengths are counted in 512-byte sectors.
const SECTOR: u64 = 512;
/// Memory budget of the L2 table cache: 16 MiB covers 128 GiB of guest
/// space with 64 KiB clusters, so a sequential scan never misses twice.
const L2_CACHE_BYTES: u64 = 16 << 20;
/// Memory budget of the decompressed-cluster cache: the hashing pipeline reads
/// a cluster in several blocks, possibly from several threads at once, and
/// each block must not pay for inflating the whole cluster again.
const INFLATE_CACHE_BYTES: u64 = 4 << 20;

/// One entry of a qcow2 snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's unique id string.
    pub id: String,
    /// The snapshot's name.
    pub name: String,
    /// File offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in that L1 table.
    pub l1_size: u32,
    /// Virtual disk size when the snapshot was taken.
    pub disk_size: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The length of an entry without its trailing padding, from its fixed part
/// (at least [`ENTRY_FIXED`] bytes). Shared by the parser and by the reader,
/// which must know how much of the file to read before it can parse.
fn entry_len(fixed: &[u8], index: u32, path: &Path) -> Result<usize> {
    let extra = be32(fixed, 36);
    if extra > MAX_EXTRA_DATA {
        return Err(Error::malformed(
            path,
            format!("snapshot table entry {index}: extra data size {extra} exceeds {MAX_EXTRA_DATA}"),
        ));
    }
    // At most 40 + 1024 + 2 * 65535 bytes: no overflow possible.
    Ok(ENTRY_FIXED + extra as usize + usize::from(be16(fixed, 12)) + usize::from(be16(fixed, 14)))
}

/// Where the next entry starts: entries are padded to a multiple of 8 bytes.
fn next_entry(at: usize, len: usize, index: u32, path: &Path) -> Result<usize> {
    let end = at + len;
    if end > MAX_TABLE_BYTES {
        return Err(Error::malformed(
            path,
            format!("snapshot table entry {index} ends beyond qemu's {MAX_TABLE_BYTES}-byte table limit"),
        ));
    }
    Ok(end.next_multiple_of(8))
}

/// Parses `count` snapshot-table entries from `bytes`, the table as it
/// starts at the header's `snapshots_offset`; bytes after the last entry are
/// ignored. `default_disk_size` (the header's current size) is the disk size
/// of snapshots whose entry does not record one.
pub fn parse_snapshot_table(
    bytes: &[u8],
    count: u32,
    default_disk_size: u64,
    path: &Path,
) -> Result<Vec<SnapshotInfo>> {
    if count > MAX_SNAPSHOTS {
        return Err(Error::malformed(path, format!("absurd snapshot count {count}")));
    }
    // Bounded by what the bytes could hold, not by the count alone.
    let mut out = Vec::with_capacity((count as usize).min(bytes.len() / ENTRY_FIXED));
    let mut at = 0usize;
    for index in 0..count {
        let truncated = || {
            Error::malformed(
                path,
                format!("snapshot table is truncated: entry {index} at table offset {at} runs past its end"),
            )
        };
        let fixed = bytes
            .get(at..at.saturating_add(ENTRY_FIXED))
            .ok_or_else(truncated)?;
        let len = entry_len(fixed, index, path)?;
        let entry = bytes.get(at..at + len).ok_or_else(truncated)?;

        let l1_table_offset = be64(entry, 0);
        let l1_size = be32(entry, 8);
        let id_size = usize::from(be16(entry, 12));
        let name_size = usize::from(be16(entry, 14));
        let extra_size = be32(entry, 36) as usize;
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::malformed(
                path,
                format!("snapshot table entry {index}: absurd L1 table size {l1_size} entries"),
            ));
        }
        let extra = &entry[ENTRY_FIXED..ENTRY_FIXED + extra_size];
        // Extra data: vm_state_size_large (8 bytes), then disk_size (8 bytes);
        // older qemu wrote less, and then the snapshot has the image's size.
        let disk_size = if extra.len() >= 16 {
            be64(extra, 8)
        } else {
            default_disk_size
        };
        if disk_size > MAX_DISK_SIZE {
            return Err(Error::malformed(
                path,
                format!("snapshot table entry {index}: absurd disk size {disk_size}"),
            ));
        }
        let id_start = ENTRY_FIXED + extra_size;
        let name_start = id_start + id_size;
        let id = String::from_utf8_lossy(&entry[id_start..name_start]).into_owned();
        let name = String::from_utf8_lossy(&entry[name_start..name_start + name_size]).into_owned();
        out.push(SnapshotInfo {
            id,
            name,
            l1_table_offset,
            l1_size,
            disk_size,
        });
        at = next_entry(at, len, index, path)?;
    }
    Ok(out)
}

/// Reads the snapshot table of an open qcow2 file whose checked header is
/// `header` and whose length is `file_len`, and checks that every
/// snapshot's L1 table lies inside the file.
pub fn read_snapshot_table(
    file: &File,
    path: &Path,
    header: &Qcow2Header,
    file_len: u64,
) -> Result<Vec<SnapshotInfo>> {
    let count = header.nb_snapshots;
    if count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_SNAPSHOTS {
        return Err(Error::malformed(path, format!("absurd snapshot count {count}")));
    }
    let start = header.snapshots_offset;
    if start % 8 != 0 || start >= file_len {
        return Err(Error::malformed(
            path,
            format!(
                "snapshot table offset {start} is misaligned or past the end of the file ({file_len} bytes)"
            ),
        ));
    }
    // The table's length is only known by walking it, so read it in chunks
    // as the walk needs them, never more than the file or qemu's limit holds.
    let available = usize::try_from(file_len - start)
        .unwrap_or(usize::MAX)
        .min(MAX_TABLE_BYTES);
    let mut table: Vec<u8> = Vec::new();
    let fill = |table: &mut Vec<u8>, need: usize, index: u32| -> Result<()> {
        if need <= table.len() {
            return Ok(());
        }
        if need > available {
            return Err(Error::malformed(
                path,
                format!(
                    "snapshot table entry {index} runs past the end of the file or beyond qemu's \
                     {MAX_TABLE_BYTES}-byte table limit (table at offset {start}, file is {file_len} bytes)"
                ),
            ));
        }
        let old = table.len();
        let new = need.max(old + (64 << 10)).min(available);
        table.resize(new, 0);
        pread_exact(
            file,
            path,
            &mut table[old..],
            start + old as u64,
            "snapshot table",
        )
    };
    let mut at = 0usize;
    for index in 0..count {
        fill(&mut table, at + ENTRY_FIXED, index)?;
        let len = entry_len(&table[at..at + ENTRY_FIXED], index, path)?;
        fill(&mut table, at + len, index)?;
        at = next_entry(at, len, index, path)?;
    }
    table.truncate(at);
    let snapshots = parse_snapshot_table(&table, count, header.size, path)?;
    for s in &snapshots {
        check_table(
            path,
            &format!("L1 table of snapshot {:?} (id {})", s.name, s.id),
            s.l1_table_offset,
            u64::from(s.l1_size) * 8,
            header.cluster_size(),
            file_len,
        )?;
    }
    Ok(snapshots)
}

/// Lists the internal snapshots of the qcow2 image at `path`.
pub fn list_snapshots(path: &Path) -> Result<Vec<SnapshotInfo>> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let (header, file_len) = read_header(&file, path)?;
    read_snapshot_table(&file, path, &header, file_len)
}

/// A small least-recently-used cache keyed by host offset. Linear eviction
/// is fine: it holds at most a few hundred entries and runs only on a miss,
/// which already costs a read from disk.
#[derive(Debug)]
struct Cache<T: ?Sized> {
    capacity: usize,
    tick: u64,
    entries: HashMap<u64, (u64, Arc<T>)>,
}

impl<T: ?Sized> Cache<T> {
    fn new(budget: u64, item_bytes: u64, min: usize, max: usize) -> Self {
        let capacity = usize::try_from(budget / item_bytes)
            .unwrap_or(max)
            .clamp(min, max);
        Cache {
            capacity,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: u64) -> Option<Arc<T>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(used, value)| {
            *used = tick;
            Arc::clone(value)
        })
    }

    fn insert(&mut self, key: u64, value: Arc<T>) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.tick += 1;
        self.entries.insert(key, (self.tick, value));
    }
}

/// Locks a cache; a panic elsewhere cannot leave one half-updated, so a
/// poisoned lock is still usable.
fn lock<T: ?Sized>(m: &Mutex<Cache<T>>) -> MutexGuard<'_, Cache<T>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the bytes of one guest cluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not allocated in this snapshot: the backing file, or zeros.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored as is at this cluster-aligned host offset.
    Data(u64),
    /// Deflate-compressed, `len` bytes at `host` (the last sector may be partial).
    Compressed { host: u64, len: u64 },
}

/// An internal snapshot of a qcow2 image, read through its own L1/L2 tables.
pub struct SnapshotImage {
    path: PathBuf,
    info: SnapshotInfo,
    file: File,
    file_len: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    backing: Option<Arc<dyn Image>>,
    l2_cache: Mutex<Cache<[u64]>>,
    inflate_cache: Mutex<Cache<[u8]>>,
}

impl std::fmt::Debug for SnapshotImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotImage")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("backing", &self.backing)
            .finish()
    }
}

impl SnapshotImage {
    /// Opens the snapshot named `name` of the qcow2 image at `path`; if no
    /// snapshot has that name, the one whose id is `name`.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        SnapshotImage::open_with(path, name, &Backing::Anywhere)
    }

    /// [`SnapshotImage::open`], its backing files only where `backing` allows.
    pub fn open_with(path: &Path, name: &str, backing: &Backing) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let (header, file_len) = read_header(&file, path)?;
        let snapshots = read_snapshot_table(&file, path, &header, file_len)?;
        let info = snapshots
            .iter()
            .find(|s| s.name == name)
            .or_else(|| snapshots.iter().find(|s| s.id == name))
            .cloned()
            .ok_or_else(|| Error::NoSuchSnapshot {
                path: path.into(),
                name: name.into(),
            })?;

        // Size and placement were checked by read_snapshot_table.
        let mut raw = vec![0u8; info.l1_size as usize * 8];
        pread_exact(&file, path, &mut raw, info.l1_table_offset, "snapshot L1 table")?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();

        // Refuses cycles, unsupported formats and files outside `backing`
        // before opening anything.
        let chain = backing_chain(path, backing)?;
        let backing = match chain.first() {
            Some(next) => {
                let image: Arc<dyn Image> = if header.backing_format.as_deref() == Some("raw") {
                    Arc::new(RawImage::from_file(next, backing.open(path, next)?)?)
                } else {
                    open_image(&ImageSpec::file(next).with_backing(backing.clone()))?
                };
                Some(image)
            }
            None => None,
        };

        let cluster_size = header.cluster_size();
        Ok(SnapshotImage {
            path: path.to_path_buf(),
            info,
            file,
            file_len,
            cluster_bits: header.cluster_bits,
            l1,
            backing,
            l2_cache: Mutex::new(Cache::new(L2_CACHE_BYTES, cluster_size, 4, 256)),
            inflate_cache: Mutex::new(Cache::new(INFLATE_CACHE_BYTES, cluster_size, 2, 64)),
        })
    }

    /// The snapshot-table entry.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest bytes covered by one L2 table.
    fn l2_span(&self) -> u64 {
        1 << (2 * self.cluster_bits - 3)
    }

    fn malformed(&self, reason: String) -> Error {
        Error::malformed(&self.path, format!("snapshot {:?}: {reason}", self.info.name))
    }

    /// The L2 table covering guest offset `guest`, or `None` if the L1 entry
    /// is unallocated (or beyond a snapshot L1 table shorter than the disk,
    /// which qemu also reads as unallocated).
    fn l2_table(&self, guest: u64) -> Result<Option<Arc<[u64]>>> {
        let index = guest / self.l2_span();
        let Some(&entry) = usize::try_from(index).ok().and_then(|i| self.l1.get(i)) else {
            return Ok(None);
        };
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        let cs = self.cluster_size();
        if offset % cs != 0 {
            return Err(self.malformed(format!(
                "L1 entry for guest offset {guest} points to unaligned L2 table offset {offset}"
            )));
        }
        if offset.checked_add(cs).is_none_or(|end| end > self.file_len) {
            return Err(self.malformed(format!(
                "L1 entry for guest offset {guest} points past the end of the file \
                 (L2 table at {offset}, file is {} bytes)",
                self.file_len
            )));
        }
        if let Some(table) = lock(&self.l2_cache).get(offset) {
            return Ok(Some(table));
        }
        // Read outside the lock so other threads' cache hits are not held up.
        let mut raw = vec![0u8; cs as usize];
        pread_exact(&self.file, &self.path, &mut raw, offset, "L2 table")?;
        let table: Arc<[u64]> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        lock(&self.l2_cache).insert(offset, Arc::clone(&table));
        Ok(Some(table))
    }

    /// Decodes the L2 entry of the cluster holding guest offset `guest`.
    fn classify(&self, entry: u64, guest: u64) -> Result<Mapping> {
        let past_end = |host: u64| {
            self.malformed(format!(
                "L2 entry for guest offset {guest} points past the end of the file \
                 (host offset {host}, file is {} bytes)",
                self.file_len
            ))
        };
        if entry & L2_COMPRESSED != 0 {
            // The split between offset and sector count depends on the cluster size.
            let size_bits = self.cluster_bits - 8;
            let shift = 62 - size_bits;
            let host = entry & ((1 << shift) - 1);
            let sectors = ((entry >> shift) & ((1 << size_bits) - 1)) + 1;
            if host >= self.file_len {
                return Err(past_end(host));
            }
            let len = sectors * SECTOR - (host & (SECTOR - 1));
            return Ok(Mapping::Compressed { host, len });
        }
        if entry & L2_ZERO != 0 {
            return Ok(Mapping::Zero);
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return Ok(Mapping::Unallocated);
        }
        if host % self.cluster_size() != 0 {
            return Err(self.malformed(format!(
                "L2 entry for guest offset {guest} points to unaligned host offset {host}"
            )));
        }
        if host >= self.file_len {
            return Err(past_end(host));
        }
        Ok(Mapping::Data(host))
    }

    /// How the cluster holding guest offset `guest` is stored.
    fn mapping(&self, guest: u64) -> Result<Mapping> {
        match self.l2_table(guest)? {
            None => Ok(Mapping::Unallocated),
            Some(table) => {
                let index = ((guest >> self.cluster_bits) as usize) & (table.len() - 1);
                self.classify(table[index], guest)
            }
        }
    }

    /// The decompressed contents of a compressed cluster.
    fn inflate(&self, host: u64, len: u64, guest: u64) -> Result<Arc<[u8]>> {
        if let Some(data) = lock(&self.inflate_cache).get(host) {
            return Ok(data);
        }
        // The last compressed cluster's sector count may reach past the end of the file.
        let len = len.min(self.file_len - host);
        let mut input = vec![0u8; len as usize];
        pread_exact(&self.file, &self.path, &mut input, host, "compressed cluster")?;
        let cs = self.cluster_size() as usize;
        let mut output = vec![0u8; cs];
        let mut inflater = flate2::Decompress::new(false);
        // Trailing bytes after the stream are padding; only a full cluster counts.
        let done = inflater.decompress(&input, &mut output, flate2::FlushDecompress::Finish);
        if done.is_err() || inflater.total_out() != cs as u64 {
            return Err(self.malformed(format!(
                "compressed cluster for guest offset {guest} (host offset {host}, {len} bytes) \
                 does not inflate to {cs} bytes"
            )));
        }
        let data: Arc<[u8]> = output.into();
        lock(&self.inflate_cache).insert(host, Arc::clone(&data));
        Ok(data)
    }

    /// Fills `buf` from the backing file at `offset`; zeros where there is
    /// no backing file or it is shorter than the snapshot.
    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let have = usize::try_from(backing.len().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (from_backing, beyond) = buf.split_at_mut(have);
        if !from_backing.is_empty() {
            backing.read_at(from_backing, offset)?;
        }
        beyond.fill(0);
        Ok(())
    }

    /// Appends the data extents of an unallocated run `[start, end)`: the
    /// backing file's, when asked for everything and there is one.
    fn push_unallocated(
        &self,
        out: &mut Vec<Extent>,
        start: u64,
        end: u64,
        scope: ExtentScope,
    ) -> Result<()> {
        if scope == ExtentScope::TopLayer {
            return Ok(());
        }
        if let Some(backing) = &self.backing {
            let end = end.min(backing.len());
            if start < end {
                for e in backing.data_extents(start, end, ExtentScope::All)? {
                    push_merged(out, e.start.max(start), e.end.min(end));
                }
            }
        }
        Ok(())
    }
}

/// Appends `[start, end)`, merging it with the last extent if they touch.
fn push_merged(out: &mut Vec<Extent>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end >= start => last.end = last.end.max(end),
        _ => out.push(Extent { start, end }),
    }
}

impl Image for SnapshotImage {
    fn len(&self) -> u64 {
        self.info.disk_size
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn label(&self) -> String {
        // qemu allows snapshots without a name; the id then identifies them.
        let name = if self.info.name.is_empty() {
            &self.info.id
        } else {
            &self.info.name
        };
        format!("{}@{}", self.path.display(), name)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&|| self.label(), self.len(), offset, buf.len())?;
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_cluster = (pos & (cs - 1)) as usize;
            let n = (buf.len() - done).min(cs as usize - in_cluster);
            let chunk = &mut buf[done..done + n];
            match self.mapping(pos)? {
                Mapping::Unallocated => self.read_backing(chunk, pos)?,
                Mapping::Zero => chunk.fill(0),
                Mapping::Data(host) => {
                    // A file may end inside its last cluster; the rest reads as zeros, as in qemu.
                    let got = pread_full(&self.file, &self.path, chunk, host + in_cluster as u64)?;
                    chunk[got..].fill(0);
                }
                Mapping::Compressed { host, len } => {
                    let data = self.inflate(host, len, pos)?;
                    chunk.copy_from_slice(&data[in_cluster..in_cluster + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn data_extents(&self, start: u64, end: u64, scope: ExtentScope) -> Result<Vec<Extent>> {
        let end = end.min(self.len());
        let cs = self.cluster_size();
        let span = self.l2_span();
        let mut out = Vec::new();
        // Consecutive unallocated clusters are gathered into one run so the
        // backing file is asked once per run, not once per cluster.
        let mut hole: Option<(u64, u64)> = None;
        let mut pos = start;
        while pos < end {
            let table_end = ((pos / span + 1) * span).min(end);
            let Some(table) = self.l2_table(pos)? else {
                hole = Some((hole.map_or(pos, |h| h.0), table_end));
                pos = table_end;
                continue;
            };
            while pos < table_end {
                let stop = ((pos / cs + 1) * cs).min(table_end);
                let index = ((pos >> self.cluster_bits) as usize) & (table.len() - 1);
                let mapping = self.classify(table[index], pos)?;
                if mapping == Mapping::Unallocated {
                    hole = Some((hole.map_or(pos, |h| h.0), stop));
                } else {
                    if let Some((a, b)) = hole.take() {
                        self.push_unallocated(&mut out, a, b, scope)?;
                    }
                    if mapping != Mapping::Zero {
                        push_merged(&mut out, pos, stop);
                    }
                }
                pos = stop;
            }
        }
        if let Some((a, b)) = hole {
            self.push_unallocated(&mut out, a, b, scope)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
