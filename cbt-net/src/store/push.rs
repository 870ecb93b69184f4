//! `cbt store push`: uploads the blocks of an image the store lacks, in
//! packs, then its manifest (docs/STORE.md, "Push").
//!
//! ```text
//! hash (pipeline) ─▶ store index (list packs, read indexes, cached)
//!   ─▶ lease ─▶ packer thread: read + compress new blocks ─[bounded]─▶ uploads × jobs
//!   ─▶ manifest ─▶ lease deleted
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use cbt_core::{hash_image, BlockKind, Digest, HashOptions, Image, Layout};

use super::client::{hex, Located, Store};
use super::format::{BlockEntry, Manifest, PackWriter, Stored};
use crate::error::{Error, Result};

/// Stored bytes after which a pack is closed.
pub const PACK_BYTES: usize = 4 << 20;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Block size.
    pub block_size: u32,
    /// zstd level of each block.
    pub level: i32,
    /// Uploads at once.
    pub jobs: usize,
    /// Hashing threads (0: one per core).
    pub threads: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            block_size: cbt_core::DEFAULT_BLOCK_SIZE,
            level: 3,
            jobs: 8,
            threads: 0,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    /// The manifest written (`s3://.../images/NAME.cbtm`).
    pub manifest: String,
    /// Image size.
    pub image_bytes: u64,
    /// Blocks in the layout.
    pub blocks_total: u64,
    /// Zero blocks (never stored).
    pub blocks_zero: u64,
    /// Non-zero blocks the store already held (or that repeat in the image).
    pub blocks_already_stored: u64,
    /// Their bytes.
    pub bytes_already_stored: u64,
    /// Blocks uploaded.
    pub blocks_uploaded: u64,
    /// Their plain bytes.
    pub bytes_uploaded_plain: u64,
    /// Bytes uploaded (packs and manifest).
    pub bytes_uploaded: u64,
    /// Packs uploaded.
    pub packs_uploaded: u64,
    /// Requests made (lists, index reads, uploads).
    pub requests: u64,
    /// cbt's image digest.
    pub image_digest: String,
    /// Seconds.
    pub seconds: f64,
}

struct Hashed {
    layout: Layout,
    digest: Digest,
    /// (block number, offset, length, digest) of every non-zero block.
    blocks: Vec<(u64, u64, u32, Digest)>,
    zero: u64,
}

fn hash(image: &dyn Image, options: &PushOptions) -> Result<Hashed> {
    let layout = Layout::detect(image, options.block_size)?;
    let mut blocks = Vec::new();
    let mut n = 0u64;
    let mut zero = 0u64;
    let hash_options = HashOptions {
        threads: options.threads,
        ..HashOptions::default()
    };
    let summary = hash_image(image, &layout, &hash_options, |records| {
        for r in records {
            match r.kind {
                BlockKind::Data(d) => blocks.push((n, r.offset, r.len, d)),
                BlockKind::Zero => zero += 1,
            }
            n += 1;
        }
        Ok(())
    })?;
    Ok(Hashed {
        layout,
        digest: summary.image_digest,
        blocks,
        zero,
    })
}

/// A finished pack on its way to the store.
struct Finished {
    id: [u8; 32],
    data: Bytes,
}

/// Pushes `image` into `store` as `name`.
pub async fn push(
    store: &Store,
    image: Arc<dyn Image>,
    name: &str,
    options: &PushOptions,
) -> Result<PushReport> {
    let started = Instant::now();
    let mut report = PushReport::default();
    let hashed = {
        let (image, options) = (Arc::clone(&image), options.clone());
        tokio::task::spawn_blocking(move || hash(image.as_ref(), &options))
            .await
            .map_err(|e| Error::Internal(format!("hashing stopped: {e}")))??
    };
    // The lease is written before anything is read from the store, and a
    // gc writes its marker before it looks for leases: of a push and a gc
    // that overlap, at least one sees the other (S3 reads its writes), and
    // neither goes on while the other runs.
    let lease = format!("leases/{}-{}", name_key(name), random_suffix());
    store.put(&lease, b"[]".to_vec()).await?;
    report.requests += 2;
    if let Some(marker) = super::maintain::running_gc(store, super::maintain::DEFAULT_GRACE).await? {
        let _ = store.delete(&lease).await;
        return Err(Error::Store(format!(
            "{}: a garbage collection is running ({marker}); push again when it is done",
            store.name()
        )));
    }
    let result = async {
        let packs = store.list_packs().await?;
        let known = store.block_index(&packs).await?;
        report.requests += 1 + 2 * packs.len() as u64;
        // The packs this image reuses, for people reading the lease.
        let reused: std::collections::BTreeSet<String> = hashed
            .blocks
            .iter()
            .filter_map(|b| known.get(&b.3).map(|l| hex(&l.pack)))
            .collect();
        store
            .put(&lease, serde_json::to_vec(&reused).unwrap_or_default())
            .await?;
        let manifest = upload_and_describe(store, image, &hashed, known, options, &mut report).await?;
        // The manifest names the packs before the lease stops naming them.
        let bytes = manifest.encode();
        report.bytes_uploaded += bytes.len() as u64;
        store.put(&format!("images/{name}.cbtm"), bytes).await
    }
    .await;
    let _ = store.delete(&lease).await;
    report.requests += 2;
    result?;
    let rel = format!("images/{name}.cbtm");
    report.manifest = format!("{}/{rel}", store.name());
    report.image_bytes = hashed.layout.len();
    report.blocks_total = hashed.blocks.len() as u64 + hashed.zero;
    report.blocks_zero = hashed.zero;
    report.image_digest = hashed.digest.to_hex();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A lease name made of the image's name (its characters kept safe).
fn name_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Packs and uploads the blocks the store lacks; returns the manifest.
async fn upload_and_describe(
    store: &Store,
    image: Arc<dyn Image>,
    hashed: &Hashed,
    known: HashMap<Digest, Located>,
    options: &PushOptions,
    report: &mut PushReport,
) -> Result<Manifest> {
    let jobs = options.jobs.clamp(1, 64);
    let (tx, mut rx) = mpsc::channel::<Finished>(2);
    // The packer reads and compresses on its own thread; the bounded
    // channel holds it back while uploads are behind.
    let packer = {
        let blocks: Vec<(u64, u64, u32, Digest)> = hashed.blocks.clone();
        let level = options.level;
        tokio::task::spawn_blocking(move || pack_blocks(image.as_ref(), &blocks, known, level, &tx))
    };
    let mut uploads = JoinSet::new();
    let mut first_error = None;
    while let Some(f) = rx.recv().await {
        while uploads.len() >= jobs {
            if let Some(Ok(Err(e))) = uploads.join_next().await {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_some() {
            break;
        }
        report.packs_uploaded += 1;
        report.requests += 1;
        report.bytes_uploaded += f.data.len() as u64;
        let store = store.clone();
        uploads.spawn(async move { store.put_pack(&f.id, f.data).await });
    }
    drop(rx);
    while let Some(r) = uploads.join_next().await {
        if let Ok(Err(e)) = r {
            first_error.get_or_insert(e);
        }
    }
    let packed = packer
        .await
        .map_err(|e| Error::Internal(format!("packing stopped: {e}")))?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let packed = packed?;
    report.blocks_uploaded = packed.uploaded_blocks;
    report.bytes_uploaded_plain = packed.uploaded_bytes;
    report.blocks_already_stored = hashed.blocks.len() as u64 - packed.uploaded_blocks;
    report.bytes_already_stored =
        hashed.blocks.iter().map(|b| u64::from(b.2)).sum::<u64>() - packed.uploaded_bytes;
    // The manifest's pack list, and each block's place in it.
    let mut pack_ids: Vec<[u8; 32]> = Vec::new();
    let mut pack_no: HashMap<[u8; 32], u32> = HashMap::new();
    let mut entries = Vec::with_capacity(hashed.blocks.len());
    for &(block, _, _, digest) in &hashed.blocks {
        let Some(l) = packed.located.get(&digest) else {
            return Err(Error::Config(format!(
                "block {block} was neither stored nor uploaded"
            )));
        };
        let pack = *pack_no.entry(l.pack).or_insert_with(|| {
            pack_ids.push(l.pack);
            (pack_ids.len() - 1) as u32
        });
        entries.push(BlockEntry {
            block,
            digest,
            pack,
            stored: l.stored,
        });
    }
    Ok(Manifest {
        layout: hashed.layout.clone(),
        image_digest: hashed.digest,
        packs: pack_ids,
        blocks: entries,
    })
}

struct Packed {
    located: HashMap<Digest, Located>,
    uploaded_blocks: u64,
    uploaded_bytes: u64,
}

/// Reads and compresses every block not in `located` into packs sent on
/// `tx`; blocks repeated in the image go in once.
fn pack_blocks(
    image: &dyn Image,
    blocks: &[(u64, u64, u32, Digest)],
    mut located: HashMap<Digest, Located>,
    level: i32,
    tx: &mpsc::Sender<Finished>,
) -> Result<Packed> {
    let mut writer = PackWriter::new(level);
    let mut pending: Vec<(Digest, Stored)> = Vec::new();
    let mut in_pending: std::collections::HashSet<Digest> = std::collections::HashSet::new();
    let mut buf = Vec::new();
    let (mut uploaded_blocks, mut uploaded_bytes) = (0u64, 0u64);
    let close = |writer: PackWriter,
                 pending: &mut Vec<(Digest, Stored)>,
                 located: &mut HashMap<Digest, Located>|
     -> Result<()> {
        let (data, id, _) = writer.finish();
        for (d, stored) in pending.drain(..) {
            located.insert(d, Located { pack: id, stored });
        }
        tx.blocking_send(Finished {
            id,
            data: Bytes::from(data),
        })
        .map_err(|_| Error::Internal("the uploads stopped".into()))
    };
    for &(_, offset, len, digest) in blocks {
        if located.contains_key(&digest) || !in_pending.insert(digest) {
            continue;
        }
        buf.resize(len as usize, 0);
        image.read_at(&mut buf, offset)?;
        if Digest::of(&buf) != digest {
            return Err(Error::Config(format!(
                "{}: the block at {offset} changed while pushing",
                image.label()
            )));
        }
        let stored = writer.add(digest, &buf);
        pending.push((digest, stored));
        uploaded_blocks += 1;
        uploaded_bytes += u64::from(len);
        if writer.len() >= PACK_BYTES {
            let full = std::mem::replace(&mut writer, PackWriter::new(level));
            close(full, &mut pending, &mut located)?;
        }
    }
    if !writer.is_empty() {
        close(writer, &mut pending, &mut located)?;
    }
    Ok(Packed {
        located,
        uploaded_blocks,
        uploaded_bytes,
    })
}
