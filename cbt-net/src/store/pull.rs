//! `cbt recv s3://BUCKET/PREFIX/NAME OUT --seed ROOT`: an image from the
//! store through the one engine (`cbt_core::reconstruct`): its manifest
//! gives every block's digest, the destination's index supplies the
//! blocks it holds, and [`StoreSource`] fetches the rest from their packs
//! with ranged GETs, many in flight. Every block is checked against its
//! digest and the output against the image digest, as for any transfer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use futures::StreamExt;
use serde::Serialize;

use cbt_core::{
    reconstruct, BlockKind, BlockRecord, BlockRef, BlockSource, Digest, ImageDigester, Index, IndexOptions,
    ReconstructOptions, Report,
};

use super::client::{hex, Store};
use super::format::{Manifest, Stored};
use crate::error::{Error, Result};

/// Largest manifest read (a 2 TiB image at 4 KiB blocks, all different).
const MAX_MANIFEST: u64 = 1 << 30;
/// Blocks of one pack closer than this are fetched with one request: about
/// what a request's headers cost, so merging never downloads more than
/// it saves (a wider gap made a pull of every tenth block fetch nearly
/// whole packs).
const MERGE_GAP: u64 = 512;
/// Largest ranged GET.
const MAX_REQUEST: u64 = 8 << 20;
/// Blocks gathered before their requests go out (more wait for the next round).
const BATCH_BLOCKS: usize = 4096;
/// Plain bytes of repeated blocks kept after their first delivery, so that
/// the image's later copies of them are not downloaded again.
const KEEP_REPEATS_BYTES: usize = 256 << 20;

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The engine's report (blocks local, missing, written, digest).
    #[serde(flatten)]
    pub engine: Report,
    /// Bytes downloaded from the store (manifest included).
    pub bytes_downloaded: u64,
    /// Requests made.
    pub requests: u64,
    /// Seconds in all, reading the manifest and building the index included.
    pub total_seconds: f64,
}

/// Reads the manifest of `name` (and its size in bytes).
pub async fn read_manifest(store: &Store, name: &str) -> Result<(Manifest, u64)> {
    find_manifest(store, name).await?.ok_or_else(|| {
        Error::Store(format!(
            "{}/{}: no such image in the store",
            store.name(),
            manifest_key(name)
        ))
    })
}

/// The key of `name`'s manifest, relative to the store's root.
pub(crate) fn manifest_key(name: &str) -> String {
    format!("images/{name}.cbtm")
}

/// Reads the manifest of `name`, `None` if there is none; one that does
/// not decode is [`Error::StoreDamaged`].
pub(crate) async fn find_manifest(store: &Store, name: &str) -> Result<Option<(Manifest, u64)>> {
    let rel = manifest_key(name);
    let Some(data) = store.get(&rel, MAX_MANIFEST).await? else {
        return Ok(None);
    };
    let m = Manifest::decode(&data).map_err(|e| store.damaged(&rel, e))?;
    Ok(Some((m, data.len() as u64)))
}

/// The manifest's blocks as the engine's records, zero blocks included.
fn records(m: &Manifest) -> Vec<BlockRecord> {
    let by_block: HashMap<u64, Digest> = m.blocks.iter().map(|b| (b.block, b.digest)).collect();
    m.layout
        .blocks()
        .enumerate()
        .map(|(i, span)| BlockRecord {
            offset: span.offset,
            len: span.len,
            kind: match by_block.get(&(i as u64)) {
                Some(d) => BlockKind::Data(*d),
                None => BlockKind::Zero,
            },
        })
        .collect()
}

/// Pulls `name` from `store` into `out`, taking what it can from the
/// images under `seeds`.
pub fn pull(
    store: &Store,
    runtime: &tokio::runtime::Handle,
    name: &str,
    out: &Path,
    seeds: &[std::path::PathBuf],
    index_options: &IndexOptions,
    options: &ReconstructOptions,
) -> Result<PullReport> {
    let started = Instant::now();
    let (manifest, manifest_bytes) = runtime.block_on(read_manifest(store, name))?;
    let records = records(&manifest);
    // A manifest whose blocks do not make its own image digest would only
    // fail at the end, after every download.
    let mut digester = ImageDigester::new(&manifest.layout);
    for r in &records {
        digester.push(r);
    }
    if digester.finish() != manifest.image_digest {
        return Err(store.damaged(manifest_key(name), "its blocks do not make its image digest"));
    }
    let mut index_options = index_options.clone();
    index_options.block_size = manifest.layout.block_size();
    let index = Index::build(seeds, &index_options)?;
    let mut source = StoreSource {
        store: store.clone(),
        runtime: runtime.clone(),
        manifest: manifest_key(name),
        locations: manifest
            .blocks
            .iter()
            .map(|b| (b.digest, (manifest.packs[b.pack as usize], b.stored)))
            .collect(),
        downloaded: Arc::new(AtomicU64::new(manifest_bytes)),
        requests: Arc::new(AtomicU64::new(1)),
        repeats: repeats(&manifest),
        kept: HashMap::new(),
        kept_bytes: 0,
    };
    let engine = reconstruct(
        &manifest.layout,
        records.into_iter().map(Ok),
        &index,
        &mut source,
        out,
        options,
        None,
    )?;
    Ok(PullReport {
        engine,
        bytes_downloaded: source.downloaded.load(Ordering::Relaxed),
        requests: source.requests.load(Ordering::Relaxed),
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// How many more times each repeated block of the manifest occurs after
/// its first occurrence.
fn repeats(m: &Manifest) -> HashMap<Digest, u32> {
    let mut count: HashMap<Digest, u32> = HashMap::new();
    for b in &m.blocks {
        *count.entry(b.digest).or_default() += 1;
    }
    count.retain(|_, n| *n > 1);
    count.values_mut().for_each(|n| *n -= 1);
    count
}

/// Missing blocks from the store's packs.
struct StoreSource {
    store: Store,
    /// The manifest's key, for messages.
    manifest: String,
    runtime: tokio::runtime::Handle,
    locations: HashMap<Digest, ([u8; 32], Stored)>,
    downloaded: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    /// Repeated blocks: deliveries still to come after the first.
    repeats: HashMap<Digest, u32>,
    /// Repeated blocks already downloaded, while deliveries remain
    /// (within [`KEEP_REPEATS_BYTES`]).
    kept: HashMap<Digest, Vec<u8>>,
    kept_bytes: usize,
}

/// One ranged GET: a pack, a byte range, and the blocks in it.
struct Request {
    pack: [u8; 32],
    start: u64,
    end: u64,
    blocks: Vec<(Digest, Stored)>,
}

impl BlockSource for StoreSource {
    fn name(&self) -> String {
        self.store.name()
    }

    fn fetch(
        &mut self,
        wanted: Receiver<BlockRef>,
        deliver: &mut dyn FnMut(BlockRef, &[u8]) -> cbt_core::Result<()>,
    ) -> cbt_core::Result<()> {
        let jobs = 16;
        loop {
            // Gather what is wanted now (at least one block, or the end).
            let Ok(first) = wanted.recv() else { return Ok(()) };
            let mut batch = vec![first];
            while batch.len() < BATCH_BLOCKS {
                match wanted.try_recv() {
                    Ok(b) => batch.push(b),
                    Err(_) => break,
                }
            }
            // A block wanted at several places of the image is fetched once.
            let mut waiting: HashMap<Digest, Vec<BlockRef>> = HashMap::new();
            for b in batch {
                if let Some(plain) = self.kept.get(&b.digest) {
                    deliver(b, plain)?;
                    self.delivered_repeat(b.digest);
                } else {
                    waiting.entry(b.digest).or_default().push(b);
                }
            }
            let requests = self.plan(&waiting)?;
            let store = &self.store;
            let results: Vec<_> = self.runtime.block_on(
                futures::stream::iter(requests)
                    .map(|r| async move {
                        let data = store.get_pack_range(&r.pack, r.start..r.end).await;
                        (r, data)
                    })
                    .buffer_unordered(jobs)
                    .collect(),
            );
            for (r, data) in results {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let data = data.map_err(|e| self.fail(e))?;
                self.downloaded.fetch_add(data.len() as u64, Ordering::Relaxed);
                for (digest, stored) in r.blocks {
                    let at = (stored.offset - r.start) as usize;
                    let bytes = &data[at..at + stored.stored_len as usize];
                    let damaged = |why: String| {
                        self.fail(self.store.damaged(
                            format!("packs/{}.pack", hex(&r.pack)),
                            format!(
                                "the block at {}: {why} (a damaged pack: see cbt store verify --read)",
                                stored.offset
                            ),
                        ))
                    };
                    let plain = stored.decode(bytes).map_err(damaged)?;
                    if Digest::of(&plain) != digest {
                        return Err(damaged("does not match its digest".into()));
                    }
                    let refs = waiting.remove(&digest).unwrap_or_default();
                    for (i, b) in refs.iter().enumerate() {
                        deliver(*b, &plain)?;
                        if i > 0 {
                            self.delivered_repeat(digest);
                        }
                    }
                    if self.repeats.get(&digest).is_some_and(|&n| n > 0)
                        && self.kept_bytes + plain.len() <= KEEP_REPEATS_BYTES
                    {
                        self.kept_bytes += plain.len();
                        self.kept.insert(digest, plain);
                    }
                }
            }
        }
    }
}

impl StoreSource {
    /// Counts a delivery of a repeated block after its first, and forgets
    /// the kept copy once no more are due.
    fn delivered_repeat(&mut self, digest: Digest) {
        if let Some(n) = self.repeats.get_mut(&digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                if let Some(plain) = self.kept.remove(&digest) {
                    self.kept_bytes -= plain.len();
                }
            }
        }
    }

    /// The engine's error for a failure of this source.
    fn fail(&self, e: Error) -> cbt_core::Error {
        cbt_core::Error::BlockSource {
            name: self.store.name(),
            source: Box::new(e),
        }
    }

    /// Groups wanted blocks into ranged GETs: by pack, in offset order,
    /// neighbours merged.
    fn plan(&self, waiting: &HashMap<Digest, Vec<BlockRef>>) -> cbt_core::Result<Vec<Request>> {
        let mut by_pack: BTreeMap<[u8; 32], Vec<(Digest, Stored)>> = BTreeMap::new();
        for (digest, refs) in waiting {
            let Some(&(pack, stored)) = self.locations.get(digest) else {
                return Err(self.fail(self.store.damaged(
                    &self.manifest,
                    format!(
                        "block {} is in no pack of the manifest",
                        refs.first().map_or(0, |b| b.index)
                    ),
                )));
            };
            by_pack.entry(pack).or_default().push((*digest, stored));
        }
        let mut out = Vec::new();
        for (pack, mut blocks) in by_pack {
            blocks.sort_by_key(|(_, s)| s.offset);
            let mut current: Option<Request> = None;
            for (b, s) in blocks {
                let end = s.offset + u64::from(s.stored_len);
                match current.as_mut() {
                    Some(r) if s.offset <= r.end + MERGE_GAP && end - r.start <= MAX_REQUEST => {
                        r.end = r.end.max(end);
                        r.blocks.push((b, s));
                    }
                    _ => {
                        out.extend(current.take());
                        current = Some(Request {
                            pack,
                            start: s.offset,
                            end,
                            blocks: vec![(b, s)],
                        });
                    }
                }
            }
            out.extend(current);
        }
        Ok(out)
    }
}
