//! The block store's objects (docs/STORE.md): packs of separately
//! compressed blocks with their own index, and image manifests. Both come
//! from a shared bucket, so every reader here bounds and checks what it
//! is given before allocating or trusting it.

use cbt_core::{Digest, Layout, Region, MAX_BLOCK_SIZE};

const PACK_MAGIC: &[u8; 8] = b"CBTPACK1";
const PACK_INDEX_MAGIC: &[u8; 8] = b"CBTPIDX1";
const MANIFEST_MAGIC: &[u8; 8] = b"CBTMANI1";
const MANIFEST_VERSION: u32 = 1;
/// Bytes of one pack index entry.
pub const PACK_ENTRY: usize = 56;
/// Bytes of the pack trailer (`count u32 · BLAKE3 [32] · magic [8]`).
pub const PACK_TRAILER: usize = 44;
/// Bytes of a manifest's header.
pub const MANIFEST_HEADER: usize = 64;
/// Largest manifest body accepted, decompressed.
const MAX_MANIFEST_PLAIN: u64 = 1 << 30;
const MAX_REGIONS: u32 = 4096;
const MAX_PACKS: u32 = 1 << 24;
const MAX_BLOCKS: u64 = 1 << 32;
/// Most bytes a stored block may exceed its plain length by (a zstd frame
/// of incompressible data is a little larger; raw is used then anyway).
const MAX_EXPANSION: u32 = 1024;

/// Why a store object was refused.
pub type FormatError = String;

/// How a block is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As it is.
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Encoding {
    fn from_u8(b: u8) -> Result<Encoding, FormatError> {
        match b {
            0 => Ok(Encoding::Raw),
            1 => Ok(Encoding::Zstd),
            _ => Err(format!("unknown block encoding {b}")),
        }
    }
}

/// Where a block lives in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Offset in the pack.
    pub offset: u64,
    /// Bytes stored.
    pub stored_len: u32,
    /// Bytes once decoded.
    pub plain_len: u32,
    /// How.
    pub encoding: Encoding,
}

impl Stored {
    fn check(&self) -> Result<(), FormatError> {
        if self.plain_len == 0 || self.plain_len > MAX_BLOCK_SIZE {
            return Err(format!("a block of {} bytes", self.plain_len));
        }
        if self.stored_len == 0 || self.stored_len > self.plain_len + MAX_EXPANSION {
            return Err(format!(
                "a block stored in {} bytes for {}",
                self.stored_len, self.plain_len
            ));
        }
        if self.encoding == Encoding::Raw && self.stored_len != self.plain_len {
            return Err("a raw block whose stored and plain lengths differ".into());
        }
        Ok(())
    }

    /// Decodes the stored bytes of this block, bounded by its plain length.
    pub fn decode(&self, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
        if stored.len() != self.stored_len as usize {
            return Err(format!(
                "{} bytes where {} are stored",
                stored.len(),
                self.stored_len
            ));
        }
        let plain = match self.encoding {
            Encoding::Raw => stored.to_vec(),
            Encoding::Zstd => zstd::bulk::decompress(stored, self.plain_len as usize)
                .map_err(|e| format!("a block does not decompress: {e}"))?,
        };
        if plain.len() != self.plain_len as usize {
            return Err(format!(
                "a block decodes to {} bytes, not {}",
                plain.len(),
                self.plain_len
            ));
        }
        Ok(plain)
    }
}

/// Builds a pack block by block.
#[derive(Debug)]
pub struct PackWriter {
    data: Vec<u8>,
    index: Vec<(Digest, Stored)>,
    level: i32,
}

impl PackWriter {
    /// A new pack whose blocks are compressed at zstd `level`.
    pub fn new(level: i32) -> PackWriter {
        PackWriter {
            data: PACK_MAGIC.to_vec(),
            index: Vec::new(),
            level,
        }
    }

    /// Stored bytes so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True with no block yet.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds a block (already known by its digest); stored compressed unless
    /// that is not smaller.
    pub fn add(&mut self, digest: Digest, block: &[u8]) -> Stored {
        let compressed = zstd::bulk::compress(block, self.level).ok();
        let (encoding, bytes) = match &compressed {
            Some(c) if c.len() < block.len() => (Encoding::Zstd, c.as_slice()),
            _ => (Encoding::Raw, block),
        };
        let stored = Stored {
            offset: self.data.len() as u64,
            stored_len: bytes.len() as u32,
            plain_len: block.len() as u32,
            encoding,
        };
        self.data.extend_from_slice(bytes);
        self.index.push((digest, stored));
        stored
    }

    /// The pack's bytes, its id (BLAKE3 of them) and its index.
    pub fn finish(mut self) -> (Vec<u8>, [u8; 32], Vec<(Digest, Stored)>) {
        let mut index = Vec::with_capacity(self.index.len() * PACK_ENTRY);
        for (d, s) in &self.index {
            index.extend_from_slice(&d.0);
            index.extend_from_slice(&s.offset.to_le_bytes());
            index.extend_from_slice(&s.stored_len.to_le_bytes());
            index.extend_from_slice(&s.plain_len.to_le_bytes());
            index.push(s.encoding as u8);
            index.extend_from_slice(&[0u8; 7]);
        }
        self.data.extend_from_slice(&index);
        self.data
            .extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        self.data.extend_from_slice(blake3::hash(&index).as_bytes());
        self.data.extend_from_slice(PACK_INDEX_MAGIC);
        let id = *blake3::hash(&self.data).as_bytes();
        (self.data, id, self.index)
    }
}

/// Reads a pack's trailer (its last [`PACK_TRAILER`] bytes) of a pack of
/// `pack_len` bytes: the range of its index.
pub fn pack_index_range(trailer: &[u8], pack_len: u64) -> Result<(u64, u64, [u8; 32]), FormatError> {
    if trailer.len() != PACK_TRAILER || &trailer[36..44] != PACK_INDEX_MAGIC {
        return Err("not a cbt pack (no index trailer)".into());
    }
    let count = u64::from(u32::from_le_bytes(trailer[..4].try_into().unwrap_or_default()));
    let index_len = count * PACK_ENTRY as u64;
    let end = pack_len
        .checked_sub(PACK_TRAILER as u64)
        .ok_or("shorter than its trailer")?;
    let start = end
        .checked_sub(index_len)
        .filter(|&s| s >= PACK_MAGIC.len() as u64)
        .ok_or_else(|| format!("an index of {count} entries does not fit in {pack_len} bytes"))?;
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&trailer[4..36]);
    Ok((start, end, sum))
}

/// Parses a pack's index (the bytes [`pack_index_range`] named), checking
/// it against its checksum and every entry against the data area
/// `[8, index_start)`: in order, not overlapping.
pub fn parse_pack_index(
    index: &[u8],
    checksum: &[u8; 32],
    index_start: u64,
) -> Result<Vec<(Digest, Stored)>, FormatError> {
    if index.len() % PACK_ENTRY != 0 || blake3::hash(index).as_bytes() != checksum {
        return Err("the pack index does not match its checksum".into());
    }
    let mut out = Vec::with_capacity(index.len() / PACK_ENTRY);
    let mut next = PACK_MAGIC.len() as u64;
    for e in index.chunks_exact(PACK_ENTRY) {
        let mut d = [0u8; 32];
        d.copy_from_slice(&e[..32]);
        let stored = Stored {
            offset: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
            stored_len: u32::from_le_bytes(e[40..44].try_into().unwrap_or_default()),
            plain_len: u32::from_le_bytes(e[44..48].try_into().unwrap_or_default()),
            encoding: Encoding::from_u8(e[48])?,
        };
        stored.check()?;
        let end = stored.offset + u64::from(stored.stored_len);
        if stored.offset < next || end > index_start {
            return Err("pack index entries overlap or run past the data".into());
        }
        next = end;
        out.push((Digest(d), stored));
    }
    Ok(out)
}

/// A block of a manifest: its digest and where it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// The block's number in the layout.
    pub block: u64,
    /// Its digest.
    pub digest: Digest,
    /// Its pack, as an index into [`Manifest::packs`].
    pub pack: u32,
    /// Where in that pack.
    pub stored: Stored,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The layout the image was cut with.
    pub layout: Layout,
    /// cbt's image digest.
    pub image_digest: Digest,
    /// Pack ids.
    pub packs: Vec<[u8; 32]>,
    /// Every non-zero block, in increasing block order.
    pub blocks: Vec<BlockEntry>,
}

impl Manifest {
    /// The manifest object.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.layout.len().to_le_bytes());
        b.extend_from_slice(&self.layout.block_size().to_le_bytes());
        b.extend_from_slice(&self.image_digest.0);
        b.extend_from_slice(&(self.layout.regions().len() as u32).to_le_bytes());
        for r in self.layout.regions() {
            for v in [r.start, r.end, r.base] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            b.extend_from_slice(p);
        }
        let runs = runs(&self.blocks);
        b.extend_from_slice(&(runs.len() as u64).to_le_bytes());
        for run in runs {
            b.extend_from_slice(&run[0].block.to_le_bytes());
            b.extend_from_slice(&(run.len() as u32).to_le_bytes());
            for e in run {
                b.extend_from_slice(&e.digest.0);
                b.extend_from_slice(&e.pack.to_le_bytes());
                b.extend_from_slice(&e.stored.offset.to_le_bytes());
                b.extend_from_slice(&e.stored.stored_len.to_le_bytes());
                b.extend_from_slice(&e.stored.plain_len.to_le_bytes());
                b.push(e.stored.encoding as u8);
            }
        }
        let body = zstd::bulk::compress(&b, 3).unwrap_or_default();
        let mut out = MANIFEST_MAGIC.to_vec();
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses and checks a manifest object.
    pub fn decode(data: &[u8]) -> Result<Manifest, FormatError> {
        if data.len() < MANIFEST_HEADER || &data[..8] != MANIFEST_MAGIC {
            return Err("not a cbt image manifest".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default());
        if u32_at(8) != MANIFEST_VERSION {
            return Err(format!(
                "manifest version {}, this cbt reads {MANIFEST_VERSION}",
                u32_at(8)
            ));
        }
        let (body_len, plain_len) = (u64_at(16), u64_at(24));
        if body_len != (data.len() - MANIFEST_HEADER) as u64 || plain_len > MAX_MANIFEST_PLAIN {
            return Err("the manifest's lengths do not match".into());
        }
        let body = &data[MANIFEST_HEADER..];
        if blake3::hash(body).as_bytes()[..] != data[32..64] {
            return Err("the manifest does not match its checksum".into());
        }
        let plain = zstd::bulk::decompress(body, plain_len as usize)
            .map_err(|e| format!("the manifest does not decompress: {e}"))?;
        if plain.len() as u64 != plain_len {
            return Err("the manifest's lengths do not match".into());
        }
        decode_body(&plain)
    }
}

/// Consecutive blocks grouped into runs.
fn runs(blocks: &[BlockEntry]) -> Vec<&[BlockEntry]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=blocks.len() {
        if i == blocks.len() || blocks[i].block != blocks[i - 1].block + 1 {
            if i > start {
                out.push(&blocks[start..i]);
            }
            start = i;
        }
    }
    out
}

/// A bounded reader over a manifest body.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        if self.0.len() < n {
            return Err("the manifest is cut short".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn digest(&mut self) -> Result<[u8; 32], FormatError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.take(32)?);
        Ok(d)
    }
}

fn decode_body(plain: &[u8]) -> Result<Manifest, FormatError> {
    let mut c = Cursor(plain);
    let (len, block_size) = (c.u64()?, c.u32()?);
    let image_digest = Digest(c.digest()?);
    let region_count = c.u32()?;
    if region_count > MAX_REGIONS {
        return Err(format!("{region_count} regions"));
    }
    let mut regions = Vec::with_capacity(region_count as usize);
    for _ in 0..region_count {
        regions.push(Region {
            start: c.u64()?,
            end: c.u64()?,
            base: c.u64()?,
        });
    }
    let layout = Layout::from_regions(len, block_size, regions).map_err(|e| format!("layout: {e}"))?;
    let pack_count = c.u32()?;
    if pack_count > MAX_PACKS || pack_count as usize * 32 > c.0.len() {
        return Err(format!("{pack_count} packs"));
    }
    let packs = (0..pack_count)
        .map(|_| c.digest())
        .collect::<Result<Vec<_>, _>>()?;
    let total = layout.block_count();
    if total > MAX_BLOCKS {
        return Err(format!("{total} blocks"));
    }
    // Block lengths come from the layout, walked once alongside the runs
    // (which are in order): nothing is allocated per block of the image.
    let blocks = decode_runs(&mut c, &layout, total, pack_count)?;
    if !c.0.is_empty() {
        return Err("bytes after the manifest's runs".into());
    }
    Ok(Manifest {
        layout,
        image_digest,
        packs,
        blocks,
    })
}

fn decode_runs(
    c: &mut Cursor<'_>,
    layout: &Layout,
    total: u64,
    pack_count: u32,
) -> Result<Vec<BlockEntry>, FormatError> {
    let mut spans = layout.blocks().enumerate().map(|(i, s)| (i as u64, s.len));
    let run_count = c.u64()?;
    let mut blocks = Vec::new();
    let mut next = 0u64;
    for _ in 0..run_count {
        let (first, count) = (c.u64()?, c.u32()?);
        let end = first.checked_add(u64::from(count)).ok_or("a run overflows")?;
        if count == 0 || first < next || end > total {
            return Err("manifest runs are out of order or outside the layout".into());
        }
        // Each entry is 53 bytes: a count the body cannot hold is refused
        // before anything is reserved for it.
        if u64::from(count) * 53 > c.0.len() as u64 {
            return Err("the manifest is cut short".into());
        }
        for block in first..end {
            let digest = Digest(c.digest()?);
            let pack = c.u32()?;
            let stored = Stored {
                offset: c.u64()?,
                stored_len: c.u32()?,
                plain_len: c.u32()?,
                encoding: Encoding::from_u8(c.u8()?)?,
            };
            stored.check()?;
            let len = spans.find(|&(i, _)| i == block).map(|(_, l)| l);
            if pack >= pack_count || Some(stored.plain_len) != len {
                return Err(format!("block {block}: unknown pack or wrong length"));
            }
            blocks.push(BlockEntry {
                block,
                digest,
                pack,
                stored,
            });
        }
        next = end;
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8, compressible: bool) -> Vec<u8> {
        if compressible {
            vec![seed; 4096]
        } else {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        }
    }

    #[test]
    fn a_pack_reads_back_and_refuses_damage() {
        let mut w = PackWriter::new(3);
        let blocks: Vec<Vec<u8>> = (0..5).map(|i| block(i, i % 2 == 0)).collect();
        for b in &blocks {
            w.add(Digest::of(b), b);
        }
        let (pack, id, index) = w.finish();
        assert_eq!(&id, blake3::hash(&pack).as_bytes());
        let trailer = &pack[pack.len() - PACK_TRAILER..];
        let (start, end, sum) = pack_index_range(trailer, pack.len() as u64).unwrap();
        let parsed = parse_pack_index(&pack[start as usize..end as usize], &sum, start).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed[0].1.encoding, Encoding::Zstd);
        assert_eq!(parsed[1].1.encoding, Encoding::Raw);
        for ((d, s), b) in parsed.iter().zip(&blocks) {
            let stored = &pack[s.offset as usize..(s.offset + u64::from(s.stored_len)) as usize];
            let plain = s.decode(stored).unwrap();
            assert_eq!(&plain, b);
            assert_eq!(Digest::of(&plain), *d);
        }
        let mut bad = pack.clone();
        bad[start as usize + 40] ^= 1;
        assert!(parse_pack_index(&bad[start as usize..end as usize], &sum, start).is_err());
        assert!(pack_index_range(&trailer[1..], pack.len() as u64).is_err());
        assert!(pack_index_range(trailer, 50).is_err());
    }

    #[test]
    fn a_manifest_round_trips_and_is_bounded() {
        let layout = Layout::flat(10 * 4096, 4096).unwrap();
        let mut w = PackWriter::new(3);
        let mut blocks = Vec::new();
        for i in [0u64, 1, 2, 5, 9] {
            let b = block(i as u8, true);
            let digest = Digest::of(&b);
            let stored = w.add(digest, &b);
            blocks.push(BlockEntry {
                block: i,
                digest,
                pack: 0,
                stored,
            });
        }
        let (_, id, _) = w.finish();
        let m = Manifest {
            layout,
            image_digest: Digest::of(b"image"),
            packs: vec![id],
            blocks,
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(runs(&m.blocks).len(), 3);
        for cut in [0, 10, MANIFEST_HEADER, bytes.len() - 1] {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(Manifest::decode(&bad).unwrap_err().contains("checksum"));
    }
}
