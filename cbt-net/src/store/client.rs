//! Talking to the object store: where a store lives (`s3://BUCKET/PREFIX`),
//! how to reach it (endpoint, region, path-style, and where the keys come
//! from: [`CredentialSource`]), and the store's objects by name. Every
//! request error names the object and the store, never a credential.
//!
//! The S3 client is built from explicit values only, never from the
//! environment (`AmazonS3Builder::from_env`): given no keys, object_store
//! falls back to credential providers that ask hosts nobody named (the
//! instance metadata service at 169.254.169.254, ECS and EKS container
//! endpoints, STS for a web identity token). cbt contacts the store's
//! endpoint and nothing else, unless the caller asks for the instance
//! metadata service ([`CredentialSource::Instance`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use cbt_core::Digest;

use super::format::{pack_index_range, parse_pack_index, Stored, PACK_TRAILER};
use crate::error::{Error, Result};

/// Most pack indexes fetched at once when loading the store's index.
const INDEX_FETCHES: usize = 16;
/// Largest pack index accepted (a 4 MiB pack of 512-byte blocks).
const MAX_PACK_INDEX: u64 = 64 << 20;
/// Longest name of an image in the store.
const MAX_NAME: usize = 255;

/// `s3://BUCKET/PREFIX/NAME`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The store's root inside it (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// The image's name, when the URL names one.
    pub name: Option<String>,
}

impl StoreUrl {
    /// Parses `s3://BUCKET[/PREFIX...]`; with `with_name`, the last
    /// component is the image's name.
    pub fn parse(url: &str, with_name: bool) -> std::result::Result<StoreUrl, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?}: a store URL starts with s3://"))?;
        let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err(format!("{url:?}: no bucket"));
        }
        let ok = |p: &str| {
            p != "." && p != ".." && p.len() <= MAX_NAME && p.chars().all(|c| !c.is_control() && c != '\\')
        };
        if !parts.iter().all(|p| ok(p)) {
            return Err(format!("{url:?}: a component is not a usable name"));
        }
        let bucket = parts.remove(0).to_string();
        let name = if with_name {
            if parts.is_empty() {
                return Err(format!("{url:?}: give the image's name: s3://BUCKET/PREFIX/NAME"));
            }
            parts.pop().map(str::to_string)
        } else {
            None
        };
        Ok(StoreUrl {
            bucket,
            prefix: parts.join("/"),
            name,
        })
    }

    /// `s3://BUCKET/PREFIX` for messages.
    pub fn root(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Keys read from a credentials file. Never printed.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, if any.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// Reads the `[default]` section of an AWS-style credentials file
    /// (`aws_access_key_id = ...`); a file others may read is refused.
    pub fn read(path: &std::path::Path) -> Result<Credentials> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |reason: String| Error::Config(format!("{}: {reason}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad("readable by others: make it mode 600".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut c = Credentials::default();
        let mut section = "default".to_string();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if section != "default" {
                continue;
            }
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => c.access_key_id = v,
                "aws_secret_access_key" => c.secret_access_key = v,
                "aws_session_token" => c.session_token = Some(v),
                _ => {}
            }
        }
        if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
            return Err(bad(
                "no aws_access_key_id and aws_secret_access_key in its [default] section".into(),
            ));
        }
        Ok(c)
    }
}

/// Where the keys for the store come from: always the caller's choice.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// These keys (the caller read them from its environment or a file).
    Keys(Credentials),
    /// The cloud's instance metadata service (EC2's IMDSv2), at
    /// `http://169.254.169.254` or at `metadata_endpoint`.
    Instance {
        /// Another address of the service (`AWS_EC2_METADATA_SERVICE_ENDPOINT`).
        metadata_endpoint: Option<String>,
    },
}

/// Variables that make object_store's S3 builder exchange a web identity
/// token with STS, read from the environment by `build()` itself whenever
/// it is given no keys: with [`CredentialSource::Instance`] they would win
/// over the metadata service.
const WEB_IDENTITY_VARS: [&str; 2] = ["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"];

/// How to reach the object store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where the keys come from.
    pub credentials: CredentialSource,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS otherwise.
    pub endpoint: Option<String>,
    /// The region (default: us-east-1).
    pub region: Option<String>,
    /// Bucket in the URL path rather than the host name (the default with
    /// an endpoint, which is what most S3-compatible servers expect).
    pub path_style: Option<bool>,
    /// Where pack indexes are cached (they never change).
    pub cache_dir: Option<PathBuf>,
    /// Requests at once.
    pub jobs: usize,
}

/// A pack as listed.
#[derive(Debug, Clone)]
pub struct PackInfo {
    /// Its id (BLAKE3 of its bytes).
    pub id: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// When it was written.
    pub modified: SystemTime,
}

/// Where a block is in the store.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    /// Its pack.
    pub pack: [u8; 32],
    /// Where in it.
    pub stored: Stored,
}

/// One store.
#[derive(Clone)]
pub struct Store {
    url: StoreUrl,
    inner: Arc<dyn ObjectStore>,
    options: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url.root())
            .finish_non_exhaustive()
    }
}

/// Hex of a pack id.
pub fn hex(id: &[u8; 32]) -> String {
    Digest(*id).to_hex()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Store {
    /// Opens the store at `url` (nothing is requested yet).
    pub fn open(url: StoreUrl, options: StoreOptions) -> Result<Store> {
        // Never `from_env()`: see the module's doc.
        let mut b = AmazonS3Builder::new().with_bucket_name(&url.bucket);
        if let Some(e) = &options.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(!options.path_style.unwrap_or(true));
        } else if let Some(p) = options.path_style {
            b = b.with_virtual_hosted_style_request(!p);
        }
        if let Some(r) = &options.region {
            b = b.with_region(r);
        }
        match &options.credentials {
            CredentialSource::Keys(c) => {
                if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
                    return Err(Error::Config(format!(
                        "{}: an empty access key id or secret access key",
                        url.root()
                    )));
                }
                b = b
                    .with_access_key_id(&c.access_key_id)
                    .with_secret_access_key(&c.secret_access_key);
                if let Some(t) = &c.session_token {
                    b = b.with_token(t);
                }
                let _ = CREDENTIALS.set(c.clone());
            }
            CredentialSource::Instance { metadata_endpoint } => {
                if WEB_IDENTITY_VARS.iter().all(|v| std::env::var_os(v).is_some()) {
                    return Err(Error::Config(format!(
                        "{}: the instance metadata service was asked for, but {} are set, which \
                         would exchange a web identity token with STS instead: unset them",
                        url.root(),
                        WEB_IDENTITY_VARS.join(" and ")
                    )));
                }
                if let Some(e) = metadata_endpoint {
                    b = b.with_metadata_endpoint(e);
                }
            }
        }
        let inner = b
            .build()
            .map_err(|e| Error::Config(format!("{}: {}", url.root(), scrub(&e.to_string()))))?;
        Ok(Store {
            url,
            inner: Arc::new(inner),
            options,
        })
    }

    /// The store's root, for messages.
    pub fn name(&self) -> String {
        self.url.root()
    }

    fn key(&self, rel: &str) -> ObjectPath {
        if self.url.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.url.prefix))
        }
    }

    /// The error for a failed request on `what`: an I/O error when the
    /// store could not be reached (refused, reset, timed out), so that
    /// the exit code says so as for any connection.
    fn fail(&self, what: &str, e: object_store::Error) -> Error {
        let text = scrub(&e.to_string());
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                return Error::Io {
                    peer: format!("{}/{what}", self.url.root()),
                    op: "request",
                    source: std::io::Error::new(io.kind(), text),
                };
            }
            cause = c.source();
        }
        Error::Store(format!("{}/{what}: {text}", self.url.root()))
    }

    /// The error for an object of this store that is missing or damaged
    /// (`rel` relative to the store's root).
    pub fn damaged(&self, rel: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::StoreDamaged {
            store: self.url.root(),
            object: rel.into(),
            reason: reason.into(),
        }
    }

    /// Every pack in the store.
    pub async fn list_packs(&self) -> Result<Vec<PackInfo>> {
        let prefix = self.key("packs");
        let metas: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.fail("packs/", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let file = m.location.filename()?.to_string();
                let id = parse_hex(file.strip_suffix(".pack")?)?;
                Some(PackInfo {
                    id,
                    size: m.size,
                    modified: m.last_modified.into(),
                })
            })
            .collect())
    }

    /// Uploads a pack under its id.
    pub async fn put_pack(&self, id: &[u8; 32], data: Bytes) -> Result<()> {
        let rel = format!("packs/{}.pack", hex(id));
        self.inner
            .put(&self.key(&rel), PutPayload::from(data))
            .await
            .map_err(|e| self.fail(&rel, e))?;
        Ok(())
    }

    /// Bytes `range` of a pack. A pack that does not exist or ends before
    /// `range` does is damage to the store (a manifest or the pack's own
    /// index says these bytes are there).
    pub async fn get_pack_range(&self, id: &[u8; 32], range: std::ops::Range<u64>) -> Result<Bytes> {
        let rel = format!("packs/{}.pack", hex(id));
        let got = match self.inner.get_range(&self.key(&rel), range.clone()).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.damaged(&rel, "missing (a manifest names it)"))
            }
            Err(e) => {
                let e = self.fail(&rel, e);
                if matches!(e, Error::Store(_)) {
                    // A range past the end is refused: say so when that is why.
                    if let Ok(meta) = self.inner.head(&self.key(&rel)).await {
                        if meta.size < range.end {
                            return Err(self.short(&rel, meta.size, range.end));
                        }
                    }
                }
                return Err(e);
            }
        };
        if (got.len() as u64) < range.end - range.start {
            return Err(self.short(&rel, range.start + got.len() as u64, range.end));
        }
        if got.len() as u64 != range.end - range.start {
            return Err(Error::Store(format!(
                "{}/{rel}: {} bytes for a range of {}",
                self.url.root(),
                got.len(),
                range.end - range.start
            )));
        }
        Ok(got)
    }

    /// A pack that ends at `size`, before `needed`.
    fn short(&self, rel: &str, size: u64, needed: u64) -> Error {
        self.damaged(
            rel,
            format!("cut short: it ends at byte {size}, its blocks run to {needed}"),
        )
    }

    /// The index of a pack of `size` bytes: from the local cache, else its
    /// trailer and index, checked (then cached).
    pub async fn pack_index(&self, pack: &PackInfo) -> Result<Vec<(Digest, Stored)>> {
        let rel = format!("packs/{}.pack", hex(&pack.id));
        let bad = |reason: String| self.damaged(&rel, reason);
        let cached = self.cache_path(&pack.id);
        if let Some(path) = &cached {
            if let Ok(data) = std::fs::read(path) {
                if let Some((sum, rest)) = data.split_first_chunk::<32>() {
                    if let Ok(entries) = parse_pack_index(
                        rest,
                        sum,
                        pack.size.saturating_sub(PACK_TRAILER as u64 + rest.len() as u64),
                    ) {
                        return Ok(entries);
                    }
                }
            }
        }
        let opts = GetOptions {
            range: Some(GetRange::Suffix(PACK_TRAILER as u64)),
            ..GetOptions::default()
        };
        let trailer = match self.inner.get_opts(&self.key(&rel), opts).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(bad("missing".into())),
            Err(e) => return Err(self.fail(&rel, e)),
        }
        .bytes()
        .await
        .map_err(|e| self.fail(&rel, e))?;
        let (start, end, sum) = pack_index_range(&trailer, pack.size).map_err(bad)?;
        if end - start > MAX_PACK_INDEX {
            return Err(bad("its index is too large".into()));
        }
        let index = self.get_pack_range(&pack.id, start..end).await?;
        let entries = parse_pack_index(&index, &sum, start).map_err(bad)?;
        if let Some(path) = cached {
            let mut data = sum.to_vec();
            data.extend_from_slice(&index);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &data).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(entries)
    }

    fn cache_path(&self, id: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.options.cache_dir.as_ref()?;
        let store = blake3::hash(
            format!(
                "{}\n{}",
                self.options.endpoint.as_deref().unwrap_or("aws"),
                self.url.root()
            )
            .as_bytes(),
        );
        let dir = dir.join("store").join(&store.to_hex()[..16]);
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir.join(format!("{}.idx", hex(id))))
    }

    /// The store's block index: every block of every pack, by digest.
    pub async fn block_index(&self, packs: &[PackInfo]) -> Result<HashMap<Digest, Located>> {
        let jobs = self.options.jobs.clamp(1, 64).min(INDEX_FETCHES);
        let indexes: Vec<(usize, Vec<(Digest, Stored)>)> = futures::stream::iter(packs.iter().enumerate())
            .map(|(i, p)| async move { self.pack_index(p).await.map(|e| (i, e)) })
            .buffer_unordered(jobs)
            .try_collect()
            .await?;
        let mut map = HashMap::new();
        for (i, entries) in indexes {
            for (d, stored) in entries {
                map.entry(d).or_insert(Located {
                    pack: packs[i].id,
                    stored,
                });
            }
        }
        Ok(map)
    }

    /// Writes an object (a manifest, a lease).
    pub async fn put(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        self.inner
            .put(&self.key(rel), PutPayload::from(data))
            .await
            .map_err(|e| self.fail(rel, e))?;
        Ok(())
    }

    /// Reads a whole object of at most `max` bytes; `None` if it does not exist.
    pub async fn get(&self, rel: &str, max: u64) -> Result<Option<Bytes>> {
        let got = match self.inner.get(&self.key(rel)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fail(rel, e)),
        };
        if got.meta.size > max {
            return Err(self.damaged(
                rel,
                format!("{} bytes, more than the {max} accepted", got.meta.size),
            ));
        }
        Ok(Some(got.bytes().await.map_err(|e| self.fail(rel, e))?))
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.inner.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(rel, e)),
        }
    }

    /// Objects under `dir/` (relative names, sizes, times).
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64, SystemTime)>> {
        let prefix = self.key(dir);
        let metas: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.fail(dir, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.size, m.last_modified.into())))
            .collect())
    }

    /// How long ago `t` was (zero if in the future: clocks differ).
    pub fn age(t: SystemTime) -> Duration {
        SystemTime::now().duration_since(t).unwrap_or_default()
    }
}

/// Keys from a credentials file, for [`scrub`].
static CREDENTIALS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();

/// Removes anything that looks like a credential from a message (an
/// object-store error may quote a request).
fn scrub(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(c) = CREDENTIALS.get() {
        for v in [
            Some(&c.access_key_id),
            Some(&c.secret_access_key),
            c.session_token.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if v.len() >= 4 {
                out = out.replace(v.as_str(), "[redacted]");
            }
        }
    }
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"] {
        if let Ok(v) = std::env::var(var) {
            if v.len() >= 4 {
                out = out.replace(&v, "[redacted]");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_prefix_and_name() {
        let u = StoreUrl::parse("s3://b/images/prod/debian", true).unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str(), u.name.as_deref()),
            ("b", "images/prod", Some("debian"))
        );
        assert_eq!(u.root(), "s3://b/images/prod");
        let u = StoreUrl::parse("s3://b", false).unwrap();
        assert_eq!(u.root(), "s3://b");
        assert!(StoreUrl::parse("s3://b", true).is_err());
        assert!(StoreUrl::parse("http://b/x", false).is_err());
        assert!(StoreUrl::parse("s3://b/../x", true).is_err());
        assert_eq!(parse_hex(&hex(&[7u8; 32])), Some([7u8; 32]));
    }
}
