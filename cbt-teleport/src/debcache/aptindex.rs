//! apt index files: `Packages`, `Sources`, `Release`, `InRelease`,
//! `Translation-*` and `Contents-*`, plain or compressed.
//!
//! apt keeps the decompressed index files of every configured repository
//! in `/var/lib/apt/lists`, named after their URL
//! (`deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages`). A mirror or an
//! apt-cacher-ng cache holds the same files under `dists/`, compressed
//! (`dists/bookworm/main/binary-amd64/Packages.xz`). For a stable release
//! the main `Packages` file only changes at point releases, so the two are
//! very often byte-identical, and the blocks of one are the other's.
//!
//! [`index_name`] recognises such files by name; [`read_index`] streams
//! the decompressed content, bounded by [`IndexLimits`]: a hostile file
//! can neither make it decompress without end nor allocate.

use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use cbt_core::{Error, Result};

use super::deb::{decompressor, Counting};

/// How an index file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexCompression {
    /// Uncompressed, as in `/var/lib/apt/lists`.
    Plain,
    /// `.xz`.
    Xz,
    /// `.zst`.
    Zstd,
    /// `.gz`.
    Gzip,
}

impl IndexCompression {
    /// The file name suffix, with its dot (empty for a plain file).
    pub fn suffix(self) -> &'static str {
        match self {
            IndexCompression::Plain => "",
            IndexCompression::Xz => ".xz",
            IndexCompression::Zstd => ".zst",
            IndexCompression::Gzip => ".gz",
        }
    }

    /// A short name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            IndexCompression::Plain => "plain",
            IndexCompression::Xz => "xz",
            IndexCompression::Zstd => "zstd",
            IndexCompression::Gzip => "gzip",
        }
    }
}

/// A recognised index file name: its compression and the name without
/// the compression suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexName<'a> {
    /// The name without the compression suffix (`Packages`).
    pub base: &'a [u8],
    /// How the file is compressed.
    pub compression: IndexCompression,
}

/// If `file_name` (the last path component) names an apt index file cbt
/// can read, what it is.
///
/// The name itself, or any part of it after a `_` (apt's lists are named
/// after their URL with `/` turned into `_`), must be `Packages`,
/// `Sources`, `Release`, `InRelease`, `Translation-<lang>` or
/// `Contents-<arch>`, optionally followed by `.xz`, `.gz` or `.zst`.
/// Other compressions (`.bz2`, `.lz4`, `.lzma`), signatures
/// (`Release.gpg`), pdiffs (`Packages.diff/Index`, `T-*.gz`) and
/// apt-cacher-ng's `.head` files are not index files here.
///
/// ```
/// use cbt_teleport::{index_name, IndexCompression};
/// let n = index_name(b"Packages.xz").unwrap();
/// assert_eq!((n.base, n.compression), (&b"Packages"[..], IndexCompression::Xz));
/// assert!(index_name(b"deb.debian.org_debian_dists_bookworm_main_i18n_Translation-pt_BR").is_some());
/// assert!(index_name(b"Release.gpg").is_none());
/// assert!(index_name(b"Packages.bz2").is_none());
/// ```
pub fn index_name(file_name: &[u8]) -> Option<IndexName<'_>> {
    let (base, compression) = [
        IndexCompression::Xz,
        IndexCompression::Zstd,
        IndexCompression::Gzip,
    ]
    .into_iter()
    .find_map(|c| Some((file_name.strip_suffix(c.suffix().as_bytes())?, c)))
    .unwrap_or((file_name, IndexCompression::Plain));
    let is_kind = |n: &[u8]| {
        let tail_ok = |t: &[u8]| {
            !t.is_empty()
                && t.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@'))
        };
        matches!(n, b"Packages" | b"Sources" | b"Release" | b"InRelease")
            || n.strip_prefix(b"Translation-").is_some_and(tail_ok)
            || n.strip_prefix(b"Contents-").is_some_and(tail_ok)
    };
    let after_underscores = base
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'_')
        .map(|(i, _)| &base[i + 1..]);
    std::iter::once(base)
        .chain(after_underscores)
        .any(is_kind)
        .then_some(IndexName { base, compression })
}

/// Bounds applied while reading one index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Most bytes used, decompressed. A larger file is cut there (its
    /// first `max_bytes` are still good blocks) and reported as capped.
    pub max_bytes: u64,
}

impl Default for IndexLimits {
    fn default() -> Self {
        // Far above any Packages file (Debian 12 main, amd64: 50 MB).
        IndexLimits { max_bytes: 1 << 30 }
    }
}

/// What [`read_index`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexInfo {
    /// Decompressed bytes handed to the callback.
    pub bytes: u64,
    /// True if the file holds more than [`IndexLimits::max_bytes`]: the
    /// rest was neither read nor checked.
    pub capped: bool,
}

/// Reads the index file from `input` (named `origin` in errors),
/// decompressing it as `compression` says, and hands its content to
/// `on_data` in pieces, in order. A compressed stream must be complete
/// and undamaged up to the cap: anything else is an error naming
/// `origin`, after which the pieces already handed over must be dropped.
pub fn read_index(
    input: impl Read,
    origin: &Path,
    compression: IndexCompression,
    limits: &IndexLimits,
    on_data: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<IndexInfo> {
    let what = compression.name();
    let bad = |e: io::Error| Error::malformed(origin, format!("{what} stream: {e}"));
    let mut input = Counting {
        inner: input,
        count: 0,
    };
    let mut info = IndexInfo::default();
    {
        let mut dec: Box<dyn Read + '_> = match compression {
            IndexCompression::Plain => Box::new(&mut input),
            // Multi-member, unlike a .deb member: `gzip -c a b` concatenations occur.
            IndexCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut input)),
            c @ (IndexCompression::Xz | IndexCompression::Zstd) => decompressor(c.suffix(), &mut input)
                .map_err(|e| Error::malformed(origin, format!("{what} decoder: {e}")))?,
        };
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let room = limits.max_bytes.saturating_sub(info.bytes);
            if room == 0 {
                // One more byte tells a file of exactly the cap from a larger one.
                let mut probe = [0u8; 1];
                info.capped = loop {
                    match dec.read(&mut probe) {
                        Ok(n) => break n > 0,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(bad(e)),
                    }
                };
                break;
            }
            let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let n = match dec.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if compression == IndexCompression::Plain => return Err(Error::io(origin, "read", e)),
                Err(e) => return Err(bad(e)),
            };
            on_data(&buf[..n])?;
            info.bytes += n as u64;
        }
    }
    if compression != IndexCompression::Plain && input.count == 0 {
        // Some decoders take no input at all for no output.
        return Err(Error::malformed(origin, format!("{what} stream: empty file")));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Deterministic deb822 text, like a `Packages` file.
    fn packages_text(n: usize) -> Vec<u8> {
        let mut s = String::new();
        for i in 0..n {
            s += &format!(
                "Package: pkg{i}\nVersion: 1.{}-{}\nArchitecture: amd64\nSize: {}\nSHA256: {:064x}\n\n",
                i % 7,
                i % 3,
                i * 37 % 9973,
                (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
        }
        s.into_bytes()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn read(data: &[u8], c: IndexCompression, max: u64) -> Result<(Vec<u8>, IndexInfo)> {
        let mut out = Vec::new();
        let info = read_index(
            data,
            Path::new("/m/Packages.x"),
            c,
            &IndexLimits { max_bytes: max },
            &mut |d| {
                out.extend_from_slice(d);
                Ok(())
            },
        )?;
        Ok((out, info))
    }

    #[test]
    fn names() {
        let yes: &[(&str, &str, IndexCompression)] = &[
            ("Packages", "Packages", IndexCompression::Plain),
            ("Packages.xz", "Packages", IndexCompression::Xz),
            ("Sources.gz", "Sources", IndexCompression::Gzip),
            ("Release", "Release", IndexCompression::Plain),
            ("InRelease", "InRelease", IndexCompression::Plain),
            ("Translation-en.zst", "Translation-en", IndexCompression::Zstd),
            (
                "Contents-udeb-amd64.gz",
                "Contents-udeb-amd64",
                IndexCompression::Gzip,
            ),
            (
                "debootstrap.invalid_dists_bookworm_main_binary-amd64_Packages",
                "debootstrap.invalid_dists_bookworm_main_binary-amd64_Packages",
                IndexCompression::Plain,
            ),
            (
                "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-ca@valencia",
                "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-ca@valencia",
                IndexCompression::Plain,
            ),
            (
                "x_dists_y_InRelease",
                "x_dists_y_InRelease",
                IndexCompression::Plain,
            ),
        ];
        for (name, base, c) in yes {
            let n = index_name(name.as_bytes()).unwrap_or_else(|| panic!("{name}"));
            assert_eq!((n.base, n.compression), (base.as_bytes(), *c), "{name}");
        }
        for no in [
            "Release.gpg",
            "Packages.bz2",
            "Contents-amd64.lz4",
            "Packages.lzma",
            "Index",
            "T-2024-01-01-0000.00-F-2024-01-01-0000.00.gz",
            "Packages.xz.head",
            "Contents-amd64.gz.head",
            "MyPackages",
            "Packages-old",
            "Translation-",
            "x_Translation-en.txt",
            "hello_1.0_amd64.deb",
            "lock",
            "",
        ] {
            assert_eq!(index_name(no.as_bytes()), None, "{no}");
        }
    }

    #[test]
    fn every_compression_gives_the_same_content() {
        let text = packages_text(3000);
        for (data, c) in [
            (text.clone(), IndexCompression::Plain),
            (xz(&text), IndexCompression::Xz),
            (gz(&text), IndexCompression::Gzip),
            (zst(&text), IndexCompression::Zstd),
        ] {
            let (out, info) = read(&data, c, 1 << 30).unwrap();
            assert!(out == text, "{c:?}");
            assert_eq!(
                info,
                IndexInfo {
                    bytes: text.len() as u64,
                    capped: false
                },
                "{c:?}"
            );
        }
        // Concatenated gzip members, as `cat a.gz b.gz` makes them.
        let mut two = gz(&text[..1000]);
        two.extend(gz(&text[1000..]));
        assert!(read(&two, IndexCompression::Gzip, 1 << 30).unwrap().0 == text);
        // An empty plain file is fine (it seeds nothing).
        assert_eq!(read(b"", IndexCompression::Plain, 10).unwrap().1.bytes, 0);
    }

    #[test]
    fn damaged_streams_are_errors_naming_the_file() {
        let text = packages_text(3000);
        for (data, c) in [
            (xz(&text), IndexCompression::Xz),
            (gz(&text), IndexCompression::Gzip),
            (zst(&text), IndexCompression::Zstd),
        ] {
            let mut flipped = data.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x55;
            let cuts = [
                &data[..0],
                &data[..5],
                &data[..data.len() / 2],
                &data[..data.len() - 1],
            ];
            for (i, bad) in cuts
                .iter()
                .chain([&flipped[..], &b"not compressed"[..]].iter())
                .enumerate()
            {
                let e = read(bad, c, 1 << 30).unwrap_err().to_string();
                assert!(
                    e.starts_with("/m/Packages.x: ") && e.contains(c.name()),
                    "{c:?} case {i}: {e}"
                );
            }
        }
    }

    #[test]
    fn the_cap_holds() {
        let text = packages_text(3000);
        for (data, c) in [
            (text.clone(), IndexCompression::Plain),
            (xz(&text), IndexCompression::Xz),
        ] {
            let (out, info) = read(&data, c, 10_000).unwrap();
            assert!(out[..] == text[..10_000], "{c:?}");
            assert_eq!(
                info,
                IndexInfo {
                    bytes: 10_000,
                    capped: true
                },
                "{c:?}"
            );
            let exact = text.len() as u64;
            let (_, info) = read(&data, c, exact).unwrap();
            assert_eq!(
                info,
                IndexInfo {
                    bytes: exact,
                    capped: false
                },
                "{c:?}"
            );
        }
    }
}
