//! `cbt store ls`, `verify` and `gc` (docs/STORE.md, "Garbage collection").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use cbt_core::Digest;

use super::client::{hex, PackInfo, Store};
use super::pull::{find_manifest, manifest_key, read_manifest};
use crate::error::{Error, Result};

/// An image in the store: what its manifest says, or why it cannot be read.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// What its manifest says (`None` when it is damaged).
    #[serde(flatten)]
    pub image: Option<ListedImage>,
    /// Why its manifest cannot be read (bad checksum, cut short, unknown
    /// version, ...); the image cannot be pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// What a manifest says about its image.
#[derive(Debug, Clone, Serialize)]
pub struct ListedImage {
    /// Image size.
    pub image_bytes: u64,
    /// Non-zero blocks.
    pub blocks: u64,
    /// Packs it uses.
    pub packs: u64,
    /// Its image digest.
    pub image_digest: String,
}

/// The names of the images in the store (their manifests' names), sorted.
async fn image_names(store: &Store) -> Result<Vec<String>> {
    let mut names: Vec<String> = store
        .list("images")
        .await?
        .into_iter()
        .filter_map(|(file, _, _)| Some(file.strip_suffix(".cbtm")?.to_string()))
        .collect();
    names.sort();
    Ok(names)
}

/// The images in the store, by name. A manifest that does not decode is
/// listed as damaged, the others as they are; one deleted since the
/// listing is left out. Only a failed request fails the whole listing.
pub async fn list_images(store: &Store) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for name in image_names(store).await? {
        let (image, damaged) = match find_manifest(store, &name).await {
            Ok(Some((m, _))) => (
                Some(ListedImage {
                    image_bytes: m.layout.len(),
                    blocks: m.blocks.len() as u64,
                    packs: m.packs.len() as u64,
                    image_digest: m.image_digest.to_hex(),
                }),
                None,
            ),
            Ok(None) => continue,
            Err(Error::StoreDamaged { object, reason, .. }) => (None, Some(format!("{object}: {reason}"))),
            Err(e) => return Err(e),
        };
        out.push(Listed { name, image, damaged });
    }
    Ok(out)
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The store's root, `s3://BUCKET/PREFIX`.
    pub store: String,
    /// Images checked.
    pub images: u64,
    /// Packs checked.
    pub packs: u64,
    /// Blocks whose content was read and hashed.
    pub blocks_checked: u64,
    /// Every problem, once: the object (relative to the store's root) and
    /// what is wrong with it.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Records `e` as a problem if it is damage to the store; any other
    /// error (the store could not be reached, refused a request) ends the
    /// verification: it says nothing about the store's objects.
    fn problem(&mut self, e: Error) -> Result<()> {
        match e {
            Error::StoreDamaged { object, reason, .. } => {
                self.problems.push(format!("{object}: {reason}"));
                Ok(())
            }
            other => Err(other),
        }
    }
}

/// Checks every manifest (or the one of `only`): its packs exist, their
/// indexes agree with the manifest, and (with `read_blocks`) every block
/// decodes to its digest.
pub async fn verify(
    store: &Store,
    only: Option<&str>,
    read_blocks: bool,
    jobs: usize,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        store: store.name(),
        ..VerifyReport::default()
    };
    let names: Vec<String> = match only {
        Some(n) => vec![n.to_string()],
        None => image_names(store).await?,
    };
    let packs: BTreeMap<[u8; 32], PackInfo> =
        store.list_packs().await?.into_iter().map(|p| (p.id, p)).collect();
    let mut checked: BTreeSet<[u8; 32]> = BTreeSet::new();
    for name in names {
        report.images += 1;
        let m = match find_manifest(store, &name).await {
            Ok(Some((m, _))) => m,
            // Deleted since the listing.
            Ok(None) if only.is_none() => continue,
            Ok(None) => {
                return Err(Error::Store(format!(
                    "{}/{}: no such image in the store",
                    store.name(),
                    manifest_key(&name)
                )))
            }
            Err(e) => {
                report.problem(e)?;
                continue;
            }
        };
        for (i, id) in m.packs.iter().enumerate() {
            let pack = format!("packs/{}.pack", hex(id));
            let Some(info) = packs.get(id) else {
                report
                    .problems
                    .push(format!("{pack}: missing (image {name} uses it)"));
                continue;
            };
            let index: BTreeMap<Digest, _> = match store.pack_index(info).await {
                Ok(e) => e.into_iter().collect(),
                Err(e) => {
                    report.problem(e)?;
                    continue;
                }
            };
            for b in m.blocks.iter().filter(|b| b.pack as usize == i) {
                if index.get(&b.digest) != Some(&b.stored) {
                    report.problems.push(format!(
                        "{pack}: block {} of image {name} is not where its manifest says",
                        b.block
                    ));
                }
            }
            if read_blocks && checked.insert(*id) {
                report.packs += 1;
                match check_pack(store, info, &index, jobs).await {
                    Ok(n) => report.blocks_checked += n,
                    Err(e) => report.problem(e)?,
                }
            }
        }
    }
    Ok(report)
}

/// Reads a whole pack and checks every block against its digest.
async fn check_pack(
    store: &Store,
    info: &PackInfo,
    index: &BTreeMap<Digest, super::format::Stored>,
    _jobs: usize,
) -> Result<u64> {
    let data = store.get_pack_range(&info.id, 0..info.size).await?;
    let mut n = 0;
    for (d, s) in index {
        let at = s.offset as usize;
        let end = at + s.stored_len as usize;
        let bad = |why: String| {
            store.damaged(
                format!("packs/{}.pack", hex(&info.id)),
                format!("block at {at}: {why}"),
            )
        };
        let stored = data.get(at..end).ok_or_else(|| bad("outside the pack".into()))?;
        let plain = s.decode(stored).map_err(bad)?;
        if Digest::of(&plain) != *d {
            return Err(bad("does not match its digest (the pack is damaged)".into()));
        }
        n += 1;
    }
    Ok(n)
}

/// How long a lease or gc marker counts as live without a later one.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// The marker of a gc running on the store, if one younger than `grace` exists.
pub(crate) async fn running_gc(store: &Store, grace: Duration) -> Result<Option<String>> {
    Ok(store
        .list("locks")
        .await?
        .into_iter()
        .find(|(file, _, modified)| file.starts_with("gc-") && Store::age(*modified) <= grace)
        .map(|(file, _, _)| format!("locks/{file}")))
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Packs in the store.
    pub packs: u64,
    /// Packs named by a manifest or a live lease.
    pub referenced: u64,
    /// Unreferenced packs kept because they are younger than the grace period.
    pub kept_young: u64,
    /// Packs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Leases older than the grace period, deleted (pushes that died).
    pub stale_leases: u64,
    /// Pushes running (live leases): nothing was deleted.
    pub pushes_running: u64,
    /// Packs that would have been deleted but for a running push.
    pub deferred: u64,
}

/// Deletes the packs no manifest and no live lease names, older than `grace`.
pub async fn gc(store: &Store, grace: Duration, dry_run: bool, jobs: usize) -> Result<GcReport> {
    let marker = format!("locks/gc-{}", super::push::random_suffix());
    if !dry_run {
        store.put(&marker, Vec::new()).await?;
    }
    let result = collect(store, grace, dry_run, jobs).await;
    if !dry_run {
        let _ = store.delete(&marker).await;
    }
    result
}

/// `gc` once its marker is written: see [`gc`] and `push`'s lease.
async fn collect(store: &Store, grace: Duration, dry_run: bool, jobs: usize) -> Result<GcReport> {
    let mut report = GcReport::default();
    // A live lease is a push in progress: it may reuse any pack, even an
    // unreferenced one, so nothing is deleted until it is done.
    let leases = store.list("leases").await?;
    let packs = store.list_packs().await?;
    let mut marked: BTreeSet<String> = BTreeSet::new();
    for (file, _, modified) in &leases {
        if Store::age(*modified) > grace {
            if !dry_run {
                store.delete(&format!("leases/{file}")).await?;
            }
            report.stale_leases += 1;
            continue;
        }
        // Gone since it was listed: that push finished, and its manifest
        // (read below) names its packs.
        let Some(data) = store.get(&format!("leases/{file}"), 256 << 20).await? else {
            continue;
        };
        report.pushes_running += 1;
        let named: Vec<String> = serde_json::from_slice(&data)
            .map_err(|e| Error::Store(format!("{}/leases/{file}: not a lease: {e}", store.name())))?;
        marked.extend(named);
    }
    for (file, _, modified) in store.list("locks").await? {
        if file.starts_with("gc-") && Store::age(modified) > grace && !dry_run {
            store.delete(&format!("locks/{file}")).await?;
        }
    }
    for (file, _, _) in store.list("images").await? {
        let Some(name) = file.strip_suffix(".cbtm") else {
            continue;
        };
        let (m, _) = read_manifest(store, name).await?;
        marked.extend(m.packs.iter().map(hex));
    }
    report.packs = packs.len() as u64;
    let mut doomed = Vec::new();
    for p in &packs {
        if marked.contains(&hex(&p.id)) {
            report.referenced += 1;
        } else if Store::age(p.modified) <= grace {
            report.kept_young += 1;
        } else {
            report.deleted += 1;
            report.deleted_bytes += p.size;
            doomed.push(format!("packs/{}.pack", hex(&p.id)));
        }
    }
    if report.pushes_running > 0 {
        // A later gc deletes them.
        report.deferred = std::mem::take(&mut report.deleted);
        report.deleted_bytes = 0;
        return Ok(report);
    }
    if !dry_run {
        futures::stream::iter(doomed)
            .map(|rel| async move { store.delete(&rel).await })
            .buffer_unordered(jobs.clamp(1, 64))
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(report)
}
