//! One blob: building it from its source (archive or apt index file)
//! into a temporary file renamed into place, its checksummed sidecar
//! (`.src`) saying what it was made from, and the removal of blobs whose
//! source changed or vanished.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cbt_core::{Error, Result};

use super::{
    read_deb, read_index, BlobSource, DebControl, DebLimits, IndexCompression, IndexLimits, PackageBlob,
    PackageBlobs,
};

/// First line of a sidecar file. Version 2 added apt index files (the
/// `kind` and `capped` lines; `deb-hex` became `source-hex`).
const SIDECAR_MAGIC: &str = "cbt-debblob 2";
/// Temporary files older than this are left-overs of a crashed run.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

/// The identity of a source file: what must not change for its blob to stay valid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp> {
        let m = fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?;
        Ok(Stamp {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

/// What a sidecar records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sidecar {
    source: PathBuf,
    kind: BlobSource,
    stamp: Stamp,
    block_size: u32,
    blob_len: u64,
    files: u64,
    data_bytes: u64,
    capped: bool,
    control: Option<DebControl>,
}

impl Sidecar {
    fn render(&self) -> String {
        let mut s = format!(
            "{SIDECAR_MAGIC}\nkind {}\nsource-hex {}\nsize {}\nmtime-ns {}\ninode {}\nblock-size {}\nblob-len {}\nfiles {}\ndata-bytes {}\ncapped {}\n",
            self.kind.tag(),
            hex(self.source.as_os_str().as_bytes()),
            self.stamp.size,
            self.stamp.mtime_ns,
            self.stamp.inode,
            self.block_size,
            self.blob_len,
            self.files,
            self.data_bytes,
            u8::from(self.capped)
        );
        if let Some(c) = &self.control {
            s += &format!(
                "package-hex {}\nversion-hex {}\narch-hex {}\ninstalled-size {}\n",
                hex(c.package.as_bytes()),
                hex(c.version.as_bytes()),
                hex(c.architecture.as_bytes()),
                c.installed_size.map_or(-1, |v| v as i128)
            );
        }
        let check = blake3::hash(s.as_bytes()).to_hex();
        s + &format!("check {check}\n")
    }

    fn parse(text: &str) -> Option<Sidecar> {
        let body_end = text.rfind("check ")?;
        let (body, check) = text.split_at(body_end);
        if check.trim_end() != format!("check {}", blake3::hash(body.as_bytes()).to_hex()) {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != SIDECAR_MAGIC {
            return None;
        }
        let mut get = std::collections::HashMap::new();
        for l in lines {
            let (k, v) = l.split_once(' ')?;
            get.insert(k, v);
        }
        let num = |k: &str| get.get(k)?.parse::<u64>().ok();
        let text_of = |k: &str| String::from_utf8(unhex(get.get(k)?)?).ok();
        let control = match get.contains_key("package-hex") {
            true => Some(DebControl {
                package: text_of("package-hex")?,
                version: text_of("version-hex")?,
                architecture: text_of("arch-hex")?,
                installed_size: get
                    .get("installed-size")?
                    .parse::<i128>()
                    .ok()
                    .and_then(|v| u64::try_from(v).ok()),
            }),
            false => None,
        };
        Some(Sidecar {
            source: PathBuf::from(std::ffi::OsStr::from_bytes(&unhex(get.get("source-hex")?)?)),
            kind: BlobSource::from_tag(get.get("kind")?)?,
            stamp: Stamp {
                size: num("size")?,
                mtime_ns: get.get("mtime-ns")?.parse().ok()?,
                inode: num("inode")?,
            },
            block_size: u32::try_from(num("block-size")?).ok()?,
            blob_len: num("blob-len")?,
            files: num("files")?,
            data_bytes: num("data-bytes")?,
            capped: match *get.get("capped")? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            control,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Returns the current blob of `source`, building it if needed.
pub(super) fn blob_for(
    source: &Path,
    kind: BlobSource,
    blob_dir: &Path,
    block_size: u32,
) -> Result<PackageBlob> {
    let stamp = Stamp::of(source)?;
    let mut h = blake3::Hasher::new();
    h.update(source.as_os_str().as_bytes());
    h.update(&[0]);
    h.update(
        format!(
            "{}:{}:{}:{block_size}:{}",
            stamp.size,
            stamp.mtime_ns,
            stamp.inode,
            kind.tag()
        )
        .as_bytes(),
    );
    let name = &h.finalize().to_hex()[..32];
    let blob = blob_dir.join(format!("{name}.blob"));
    let side = blob_dir.join(format!("{name}.src"));
    let found = |sc: Sidecar, reused: bool| -> Result<PackageBlob> {
        Ok(PackageBlob {
            blob: blob.canonicalize().map_err(|e| Error::io(&blob, "resolve", e))?,
            source: source.to_path_buf(),
            kind,
            control: sc.control,
            files: sc.files,
            data_bytes: sc.data_bytes,
            capped: sc.capped,
            reused,
        })
    };
    if let Some(sc) = fs::read_to_string(&side).ok().and_then(|t| Sidecar::parse(&t)) {
        let blob_ok = fs::metadata(&blob).is_ok_and(|m| m.len() == sc.blob_len);
        if blob_ok
            && sc.source == source
            && sc.kind == kind
            && sc.stamp == stamp
            && sc.block_size == block_size
        {
            return found(sc, true);
        }
    }
    let tmp = temp_name(&blob);
    let result = match kind {
        BlobSource::Archive => write_blob(source, &tmp, block_size),
        BlobSource::AptIndex(c) => write_index_blob(source, c, &tmp, block_size),
    };
    let (built, blob_len) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The source must not have changed while it was read.
    if Stamp::of(source)? != stamp {
        let _ = fs::remove_file(&tmp);
        return Err(Error::malformed(source, "changed while it was read"));
    }
    if built.capped {
        tracing::warn!(
            "{}: apt index file of more than {} bytes: only its first {} bytes are used",
            source.display(),
            IndexLimits::default().max_bytes,
            built.data_bytes
        );
    }
    fs::rename(&tmp, &blob).map_err(|e| Error::io(&blob, "rename", e))?;
    let sc = Sidecar {
        source: source.to_path_buf(),
        kind,
        stamp,
        block_size,
        blob_len,
        files: built.files,
        data_bytes: built.data_bytes,
        capped: built.capped,
        control: built.control,
    };
    let side_tmp = temp_name(&side);
    fs::write(&side_tmp, sc.render()).map_err(|e| Error::io(&side_tmp, "write", e))?;
    fs::rename(&side_tmp, &side).map_err(|e| Error::io(&side, "rename", e))?;
    found(sc, false)
}

/// What went into a new blob.
struct Built {
    control: Option<DebControl>,
    files: u64,
    data_bytes: u64,
    capped: bool,
}

/// Writes a padded blob: one zero block, then pieces of content, each
/// zero-padded to the block size.
struct PaddedWriter<'a> {
    w: BufWriter<File>,
    path: &'a Path,
    block: u64,
    zeros: Vec<u8>,
    /// Bytes written, padding included.
    len: u64,
    /// Bytes of the current piece so far.
    piece: u64,
}

impl<'a> PaddedWriter<'a> {
    fn create(path: &'a Path, block_size: u32) -> Result<PaddedWriter<'a>> {
        let file = File::create(path).map_err(|e| Error::io(path, "create", e))?;
        let mut w = PaddedWriter {
            w: BufWriter::with_capacity(1 << 20, file),
            path,
            block: u64::from(block_size),
            zeros: vec![0u8; block_size as usize],
            len: 0,
            piece: 0,
        };
        w.write(&vec![0u8; block_size as usize])?;
        w.end_piece()?;
        Ok(w)
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.w
            .write_all(data)
            .map_err(|e| Error::io(self.path, "write", e))?;
        self.piece += data.len() as u64;
        Ok(())
    }

    /// Pads the current piece to the block size.
    fn end_piece(&mut self) -> Result<()> {
        let pad = (self.block - self.piece % self.block) % self.block;
        self.w
            .write_all(&self.zeros[..pad as usize])
            .map_err(|e| Error::io(self.path, "write", e))?;
        self.len += self.piece + pad;
        self.piece = 0;
        Ok(())
    }

    /// Flushes; returns the blob's length.
    fn finish(mut self) -> Result<u64> {
        self.w.flush().map_err(|e| Error::io(self.path, "write", e))?;
        Ok(self.len)
    }
}

fn temp_name(final_path: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!("{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes the padded blob of `deb` to `out`; returns what was read and the blob's length.
fn write_blob(deb: &Path, out: &Path, block_size: u32) -> Result<(Built, u64)> {
    let input = File::open(deb).map_err(|e| Error::io(deb, "open", e))?;
    let mut w = PaddedWriter::create(out, block_size)?;
    let mut buf = vec![0u8; 256 << 10];
    let info = read_deb(
        std::io::BufReader::with_capacity(256 << 10, input),
        deb,
        &DebLimits::default(),
        &mut |_, size, r| {
            let mut done = 0u64;
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::malformed(deb, format!("data archive: {e}"))),
                };
                w.write(&buf[..n])?;
                done += n as u64;
            }
            if done != size {
                // read_deb reports the truncation with the member's name.
                return Ok(());
            }
            w.end_piece()
        },
    )?;
    let len = w.finish()?;
    let built = Built {
        control: info.control,
        files: info.files,
        data_bytes: info.data_bytes,
        capped: false,
    };
    Ok((built, len))
}

/// Writes the padded blob of the apt index file `index` to `out`.
fn write_index_blob(
    index: &Path,
    compression: IndexCompression,
    out: &Path,
    block_size: u32,
) -> Result<(Built, u64)> {
    let input = File::open(index).map_err(|e| Error::io(index, "open", e))?;
    let mut w = PaddedWriter::create(out, block_size)?;
    let info = read_index(
        std::io::BufReader::with_capacity(256 << 10, input),
        index,
        compression,
        &IndexLimits::default(),
        &mut |data| w.write(data),
    )?;
    w.end_piece()?;
    let len = w.finish()?;
    let built = Built {
        control: None,
        files: 1,
        data_bytes: info.bytes,
        capped: info.capped,
    };
    Ok((built, len))
}

/// Removes blobs whose source changed or vanished (or whose sidecar is of
/// another version), and stale temporary files.
pub(super) fn collect_garbage(blob_dir: &Path, current: &PackageBlobs) {
    let Ok(entries) = fs::read_dir(blob_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > STALE_TEMP);
            if old {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".src") else {
            continue;
        };
        let blob = blob_dir.join(format!("{stem}.blob"));
        if blob.canonicalize().is_ok_and(|b| current.contains(&b)) {
            continue;
        }
        let stale = match fs::read_to_string(&path).ok().and_then(|t| Sidecar::parse(&t)) {
            Some(sc) => Stamp::of(&sc.source).map_or(true, |s| s != sc.stamp),
            None => true,
        };
        if stale {
            tracing::debug!("removing stale package blob {}", blob.display());
            let _ = fs::remove_file(&blob);
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trip_and_checksum() {
        let sc = Sidecar {
            source: PathBuf::from("/var/cache/apt/archives/a b.deb"),
            kind: BlobSource::Archive,
            stamp: Stamp {
                size: 10,
                mtime_ns: -5,
                inode: 7,
            },
            block_size: 4096,
            blob_len: 8192,
            files: 1,
            data_bytes: 3,
            capped: false,
            control: Some(DebControl {
                package: "a".into(),
                version: "1:2.0-1".into(),
                architecture: "amd64".into(),
                installed_size: None,
            }),
        };
        let text = sc.render();
        assert_eq!(Sidecar::parse(&text), Some(sc.clone()));
        assert_eq!(Sidecar::parse(&text.replace("files 1", "files 2")), None);
        assert_eq!(Sidecar::parse(&text[..text.len() - 3]), None);
        let index = Sidecar {
            source: PathBuf::from("/m/dists/x/main/binary-amd64/Packages.xz"),
            kind: BlobSource::AptIndex(IndexCompression::Xz),
            capped: true,
            control: None,
            ..sc
        };
        assert_eq!(Sidecar::parse(&index.render()), Some(index));
        // A sidecar of version 1 (archives only) is not current: the blob is rebuilt.
        let v1 = text
            .lines()
            .filter(|l| !l.starts_with("kind ") && !l.starts_with("capped ") && !l.starts_with("check "))
            .map(|l| {
                l.replace(SIDECAR_MAGIC, "cbt-debblob 1")
                    .replace("source-hex", "deb-hex")
                    + "\n"
            })
            .collect::<String>();
        let v1 = format!("{v1}check {}\n", blake3::hash(v1.as_bytes()).to_hex());
        assert_eq!(Sidecar::parse(&v1), None);
    }
}
