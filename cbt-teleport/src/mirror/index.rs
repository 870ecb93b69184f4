//! The apt index files of a mirror, parsed from bytes already fetched (so
//! they can be unit-tested without a network): the SHA256 section of a
//! `Release` file, and the stanzas of a `Packages` file turned into a map
//! (package, version, architecture) → where the `.deb` is, its size and
//! its SHA256.
//!
//! Nothing read here is trusted: paths must be relative without `..`,
//! `.deb` paths must lie under `pool/`, sizes are bounded, and a stanza
//! that fails a check is skipped and counted (the rest of the index stays
//! usable); a `Release` or `Packages` file that is not deb822 at all is an
//! error.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::deb822;

use super::PackageId;

/// A SHA256 digest, checked to be 32 bytes when parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Option<Sha256Digest> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Sha256Digest(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One file a `Release` file lists (path relative to `dists/<suite>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Relative path, checked by [`check_relative_path`].
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Its SHA256.
    pub sha256: Sha256Digest,
}

/// Parses a `Release` file and returns the files of its `SHA256` section.
/// A Release without that section is an error (apt itself refuses to use
/// MD5-only Releases).
pub fn parse_release(data: &[u8]) -> Result<Vec<ReleaseFile>, String> {
    let paragraphs = deb822::parse(data, &|n| n.eq_ignore_ascii_case("SHA256")).map_err(|e| e.to_string())?;
    let section = paragraphs
        .iter()
        .find_map(|p| p.get("SHA256"))
        .ok_or("no SHA256 section (apt does not trust MD5-only Release files either)")?;
    let text = String::from_utf8_lossy(section);
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let [hash, size, path] = words.as_slice() else {
            return Err(format!("SHA256 line {line:?} is not 'digest size path'"));
        };
        let sha256 =
            Sha256Digest::from_hex(hash).ok_or_else(|| format!("SHA256 line {line:?}: bad digest"))?;
        let size = size
            .parse::<u64>()
            .map_err(|_| format!("SHA256 line {line:?}: bad size"))?;
        check_relative_path(path).map_err(|e| format!("SHA256 line {line:?}: {e}"))?;
        out.push(ReleaseFile {
            path: path.to_string(),
            size,
            sha256,
        });
    }
    Ok(out)
}

/// How a `Packages` index is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexCodec {
    /// `Packages.xz`.
    Xz,
    /// `Packages.gz`.
    Gzip,
    /// Plain `Packages`.
    Plain,
}

/// The `Packages` files of `component`/`arch` that `release` lists, in the
/// order to try them: xz, gzip, plain (mirrors often list a plain file
/// they do not carry).
pub fn packages_candidates<'r>(
    release: &'r [ReleaseFile],
    component: &str,
    arch: &str,
) -> Vec<(&'r ReleaseFile, IndexCodec)> {
    index_candidates(release, &format!("{component}/binary-{arch}/Packages"))
}

/// The files of the Release that are `stem` compressed (`.xz`, `.gz`) or
/// not, in order of preference.
pub fn index_candidates<'r>(release: &'r [ReleaseFile], stem: &str) -> Vec<(&'r ReleaseFile, IndexCodec)> {
    let mut out = Vec::new();
    for (suffix, codec) in [
        (".xz", IndexCodec::Xz),
        (".gz", IndexCodec::Gzip),
        ("", IndexCodec::Plain),
    ] {
        let want = format!("{stem}{suffix}");
        if let Some(f) = release.iter().find(|f| f.path == want) {
            out.push((f, codec));
        }
    }
    out
}

/// Most bytes one stanza of a `Packages` file may take while it is
/// parsed (Debian's longest are a few KiB; the long descriptions live in
/// the Translation files).
pub const MAX_STANZA: usize = 1 << 20;

/// Bytes decompressed per read.
const CHUNK: usize = 64 << 10;

/// Parses a `Packages` index as published (`data`, compressed by `codec`)
/// into `into`, as [`parse_packages`] would parse its decompressed text,
/// but while decompressing it: at most `limit` decompressed bytes are
/// read, and only the stanza being read (at most [`MAX_STANZA`] bytes)
/// and one read buffer are held, never the decompressed whole. A bomb
/// (a small `.xz` that inflates to gigabytes) is refused after `limit`
/// bytes without the memory it claims.
pub fn parse_packages_index(
    data: &[u8],
    codec: IndexCodec,
    limit: u64,
    max_deb: u64,
    into: &mut HashMap<PackageId, PoolEntry>,
    skipped: &mut SkippedStanzas,
) -> Result<u64, String> {
    let reader: Box<dyn Read + '_> = match codec {
        IndexCodec::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(data)),
        IndexCodec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        IndexCodec::Plain => Box::new(data),
    };
    parse_packages_from(reader, limit, max_deb, into, skipped)
}

/// Parses a `Packages` file read from `reader` stanza by stanza (see
/// [`parse_packages_index`]); returns the bytes read. The result, errors
/// and line numbers included, is that of [`parse_packages`] on the whole
/// text, except that more than `limit` bytes, or a stanza longer than
/// [`MAX_STANZA`], is an error.
pub fn parse_packages_from(
    mut reader: impl Read,
    limit: u64,
    max_deb: u64,
    into: &mut HashMap<PackageId, PoolEntry>,
    skipped: &mut SkippedStanzas,
) -> Result<u64, String> {
    let mut pending: Vec<u8> = Vec::new();
    // `pending[..scanned]` has been searched for blank lines; `scanned`
    // is always at the start of a line.
    let mut scanned = 0usize;
    // Lines already parsed, for the line numbers of errors.
    let mut lines_before = 0usize;
    let mut total = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot decompress: {e}")),
        };
        if n == 0 {
            parse_stanzas(&pending, lines_before, max_deb, into, skipped)?;
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(format!("more than {limit} bytes once decompressed"));
        }
        pending.extend_from_slice(&chunk[..n]);
        // The end of the last blank line: everything before it is whole
        // stanzas (deb822 ends a paragraph at a line of white space).
        let mut cut = 0;
        while let Some(nl) = pending[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + nl + 1;
            if pending[scanned..end].iter().all(u8::is_ascii_whitespace) {
                cut = end;
            }
            scanned = end;
        }
        if cut > 0 {
            parse_stanzas(&pending[..cut], lines_before, max_deb, into, skipped)?;
            lines_before += pending[..cut].iter().filter(|&&b| b == b'\n').count();
            pending.drain(..cut);
            scanned -= cut;
        }
        if pending.len() > MAX_STANZA {
            return Err(format!(
                "line {}: a stanza longer than {MAX_STANZA} bytes",
                lines_before + 1
            ));
        }
    }
}

/// Where a package's `.deb` lies on a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolEntry {
    /// Path relative to the mirror's base URL (`pool/...`), checked by
    /// [`check_pool_path`].
    pub filename: String,
    /// Size in bytes (at most the limit it was parsed with).
    pub size: u64,
    /// SHA256 of the `.deb`.
    pub sha256: Sha256Digest,
}

/// Stanzas of a `Packages` file that were not taken, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkippedStanzas {
    /// Missing Package, Version, Architecture, Filename or Size.
    pub incomplete: usize,
    /// No (valid) SHA256: the download could not be checked.
    pub no_sha256: usize,
    /// A Filename that is absolute, has `..`, or is not under `pool/`.
    pub bad_filename: usize,
    /// A Size above the `.deb` limit.
    pub oversize: usize,
    /// A Package, Version or Architecture that is empty or holds a
    /// character Debian policy does not allow there (see
    /// [`PackageId::is_well_formed`]).
    pub bad_id: usize,
}

impl SkippedStanzas {
    /// All stanzas skipped.
    pub fn total(&self) -> usize {
        self.incomplete + self.no_sha256 + self.bad_filename + self.oversize + self.bad_id
    }
}

/// Parses a (decompressed) `Packages` file into `into`; the first stanza
/// for a (name, version, architecture) wins. `max_deb` bounds `Size`.
pub fn parse_packages(
    data: &[u8],
    max_deb: u64,
    into: &mut HashMap<PackageId, PoolEntry>,
    skipped: &mut SkippedStanzas,
) -> Result<(), String> {
    parse_stanzas(data, 0, max_deb, into, skipped)
}

/// [`parse_packages`] on whole stanzas that follow `lines_before` lines.
fn parse_stanzas(
    data: &[u8],
    lines_before: usize,
    max_deb: u64,
    into: &mut HashMap<PackageId, PoolEntry>,
    skipped: &mut SkippedStanzas,
) -> Result<(), String> {
    const KEEP: [&str; 6] = ["Package", "Version", "Architecture", "Filename", "Size", "SHA256"];
    let paragraphs =
        deb822::parse(data, &|n| KEEP.iter().any(|k| k.eq_ignore_ascii_case(n))).map_err(|mut e| {
            e.line += lines_before;
            e.to_string()
        })?;
    for p in paragraphs {
        let (Some(name), Some(version), Some(architecture), Some(filename), Some(size)) = (
            p.text("Package"),
            p.text("Version"),
            p.text("Architecture"),
            p.text("Filename"),
            p.text("Size"),
        ) else {
            skipped.incomplete += 1;
            continue;
        };
        let Ok(size) = size.parse::<u64>() else {
            skipped.incomplete += 1;
            continue;
        };
        let Some(sha256) = p.text("SHA256").and_then(|h| Sha256Digest::from_hex(&h)) else {
            skipped.no_sha256 += 1;
            continue;
        };
        if check_pool_path(&filename).is_err() {
            skipped.bad_filename += 1;
            continue;
        }
        if size > max_deb {
            skipped.oversize += 1;
            continue;
        }
        let id = PackageId {
            name,
            version,
            architecture,
        };
        // `text` trims and decodes lossily, so an empty field, NUL bytes or
        // invalid UTF-8 would otherwise become a key no guest can ask for
        // (its dpkg only records policy-conforming ids) and, worse, a
        // cache file name built from index bytes: refuse what policy
        // refuses, as the guest side does.
        if !id.is_well_formed() {
            skipped.bad_id += 1;
            continue;
        }
        into.entry(id).or_insert(PoolEntry {
            filename,
            size,
            sha256,
        });
    }
    Ok(())
}

/// Checks a path read from an index: relative, no empty, `.` or `..`
/// component, only characters that need no escaping in a URL path.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') {
        return Err(format!("{path:?} is not a relative path"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{path:?} has an empty, '.' or '..' component"));
    }
    if let Some(c) = path.chars().find(|&c| !is_path_char(c)) {
        return Err(format!("{path:?} contains {c:?}"));
    }
    Ok(())
}

/// Checks a `Filename` from a Packages file: a relative path under `pool/`.
pub fn check_pool_path(path: &str) -> Result<(), String> {
    check_relative_path(path)?;
    if !path.starts_with("pool/") {
        return Err(format!("{path:?} is not under pool/"));
    }
    Ok(())
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+%:@,=/".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn release() -> Vec<u8> {
        format!(
            "Origin: Test\nSuite: stable\nMD5Sum:\n 00000000000000000000000000000000 10 main/binary-amd64/Packages\nSHA256:\n {D1}   1234 main/binary-amd64/Packages\n {D2}    99 main/binary-amd64/Packages.xz\n {D1} 5 contrib/binary-amd64/Packages.gz\n"
        )
        .into_bytes()
    }

    #[test]
    fn release_sha256_section_and_candidates() {
        let r = parse_release(&release()).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].size, 1234);
        assert_eq!(r[1].sha256.to_string(), D2);
        let c = packages_candidates(&r, "main", "amd64");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1, IndexCodec::Xz);
        assert_eq!(c[1].0.path, "main/binary-amd64/Packages");
        assert_eq!(packages_candidates(&r, "contrib", "amd64")[0].1, IndexCodec::Gzip);
        assert!(packages_candidates(&r, "main", "i386").is_empty());
    }

    #[test]
    fn release_errors() {
        assert!(parse_release(b"Origin: x\nMD5Sum:\n 00 1 a\n")
            .unwrap_err()
            .contains("SHA256"));
        let bad_digest = b"SHA256:\n 1234 1 main/x\n";
        assert!(parse_release(bad_digest).unwrap_err().contains("digest"));
        let escape = format!("SHA256:\n {D1} 1 ../../etc/passwd\n");
        assert!(parse_release(escape.as_bytes()).unwrap_err().contains(".."));
        let absolute = format!("SHA256:\n {D1} 1 /etc/passwd\n");
        assert!(parse_release(absolute.as_bytes()).is_err());
        let size = format!("SHA256:\n {D1} -1 main/x\n");
        assert!(parse_release(size.as_bytes()).unwrap_err().contains("size"));
        assert!(parse_release(b"not deb822\n").is_err());
    }

    fn stanza(name: &str, version: &str, arch: &str, filename: &str, size: u64) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nFilename: {filename}\nSize: {size}\nSHA256: {D1}\nDescription: x\n long\n\n"
        )
    }

    #[test]
    fn packages_map_and_skips() {
        let mut text = stanza(
            "hello",
            "1:2.0-1",
            "amd64",
            "pool/main/h/hello/hello_2.0-1_amd64.deb",
            100,
        );
        text += &stanza("tool", "0.5", "all", "pool/main/t/tool/tool_0.5_all.deb", 10);
        text += &stanza("evil", "1", "amd64", "../x", 10);
        text += &stanza("evil2", "1", "amd64", "/etc/passwd", 10);
        text += &stanza("evil3", "1", "amd64", "dists/x.deb", 10);
        text += &stanza("evil4", "1", "amd64", "pool/../../x.deb", 10);
        text += &stanza("huge", "1", "amd64", "pool/h.deb", 1 << 40);
        text += "Package: nosha\nVersion: 1\nArchitecture: all\nFilename: pool/n.deb\nSize: 1\n\n";
        text += "Package: nosize\nVersion: 1\nArchitecture: all\nFilename: pool/n.deb\nSHA256: x\n\n";
        // A duplicate: the first one wins.
        text += &stanza("tool", "0.5", "all", "pool/other/tool_0.5_all.deb", 10);
        let mut map = HashMap::new();
        let mut skipped = SkippedStanzas::default();
        parse_packages(text.as_bytes(), 2 << 30, &mut map, &mut skipped).unwrap();
        assert_eq!(map.len(), 2);
        let hello = &map[&PackageId::new("hello", "1:2.0-1", "amd64")];
        assert_eq!(hello.size, 100);
        assert_eq!(
            map[&PackageId::new("tool", "0.5", "all")].filename,
            "pool/main/t/tool/tool_0.5_all.deb"
        );
        assert_eq!(
            skipped,
            SkippedStanzas {
                incomplete: 1,
                no_sha256: 1,
                bad_filename: 4,
                oversize: 1,
                bad_id: 0,
            }
        );
        assert!(parse_packages(b"garbage\n", 1, &mut map, &mut skipped).is_err());
    }

    #[test]
    fn ids_outside_policy_charset_are_skipped() {
        let mut text = stanza("", "1", "amd64", "pool/e.deb", 1);
        text += &stanza("nul", "1\0\0", "amd64", "pool/n.deb", 1);
        text += &stanza("space", "05 .", "all", "pool/s.deb", 1);
        text += &stanza("ctl\u{8}", "1", "all", "pool/c.deb", 1);
        text += &stanza("arch", "1", "am/d64", "pool/a.deb", 1);
        text += &stanza("ok", "1:2.0~rc1+b1", "amd64", "pool/o.deb", 1);
        let mut map = HashMap::new();
        let mut skipped = SkippedStanzas::default();
        parse_packages(text.as_bytes(), 1 << 20, &mut map, &mut skipped).unwrap();
        assert_eq!(map.keys().map(|id| id.name.as_str()).collect::<Vec<_>>(), ["ok"]);
        assert_eq!(skipped.bad_id, 5);
    }

    /// The `mirror_index` fuzz target's first finding (after 5.8 M
    /// executions): a stanza with an empty `Package` and NUL bytes in its
    /// `Version` was taken as a package (the literal is that stanza, cut
    /// out of the input by hand; the whole input is in the fuzz corpus as
    /// `fuzz/corpus/mirror_index/crash-e9471afd` and checked too).
    #[test]
    fn fuzz_crash_e9471afd_empty_name_and_nul_version() {
        const STANZA: &[u8] = b"Package: \nASuite: .deb\ndSize: 1\0\x002\0\xf4ool\nVackage: dool\n\
            Version:02 .\0\0\0\0\nArchitecture: all\nFilename: pool/eb\nSize: 10\n\
            SHA256: 1111111111111111111111111111111111111111111111111111111111111111\n\n";
        let whole = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/mirror_index/crash-e9471afd"
        ))
        .unwrap();
        for data in [STANZA, &whole] {
            let mut map = HashMap::new();
            let mut skipped = SkippedStanzas::default();
            parse_packages(data, 1 << 20, &mut map, &mut skipped).unwrap();
            assert!(map.is_empty(), "{map:?}");
            assert!(skipped.bad_id > 0);
        }
    }

    #[test]
    fn pool_paths() {
        assert!(check_pool_path("pool/main/a/a_1%3a2_all.deb").is_ok());
        for bad in [
            "../x",
            "/etc/passwd",
            "pool/../x",
            "pool//x",
            "dists/x",
            "pool/a b",
            "pool/x?y",
            "",
        ] {
            assert!(check_pool_path(bad).is_err(), "{bad}");
        }
    }

    type Parsed = Result<HashMap<PackageId, PoolEntry>, String>;

    /// Parses `text` whole and `packed` (`text` as `codec`) as a stream;
    /// returns both results.
    fn both_ways(text: &[u8], packed: &[u8], codec: IndexCodec, limit: u64) -> (Parsed, Parsed) {
        let mut whole = HashMap::new();
        let mut streamed = HashMap::new();
        let (mut s1, mut s2) = (SkippedStanzas::default(), SkippedStanzas::default());
        let a = parse_packages(text, 1 << 20, &mut whole, &mut s1).map(|()| whole);
        let b = parse_packages_index(packed, codec, limit, 1 << 20, &mut streamed, &mut s2).map(|_| streamed);
        if a.is_ok() && b.is_ok() {
            assert_eq!(s1, s2);
        }
        (a, b)
    }

    fn many_stanzas(n: usize) -> Vec<u8> {
        let mut text = String::new();
        for i in 0..n {
            text += &stanza(&format!("p{i}"), "1.0-1", "amd64", &format!("pool/p{i}.deb"), 10);
        }
        text.into_bytes()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        xz2::read::XzEncoder::new(data, 0).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn streamed_parse_matches_the_whole_and_is_bounded() {
        // About 900 KiB: many reads, stanzas cut across read boundaries.
        let text = many_stanzas(6000);
        let packed = xz(&text);
        let (whole, streamed) = both_ways(&text, &packed, IndexCodec::Xz, text.len() as u64);
        assert_eq!(whole.unwrap().len(), 6000);
        assert_eq!(streamed.unwrap(), parse_whole(&text));
        let (_, over) = both_ways(&text, &packed, IndexCodec::Xz, text.len() as u64 - 1);
        assert!(over.unwrap_err().contains("more than"));
        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(&text[..], flate2::Compression::fast())
            .read_to_end(&mut gz)
            .unwrap();
        let (_, streamed) = both_ways(&text, &gz, IndexCodec::Gzip, 1 << 30);
        assert_eq!(streamed.unwrap().len(), 6000);
        assert!(both_ways(&text, &gz, IndexCodec::Gzip, 100).1.is_err());
        let (_, plain) = both_ways(&text, &text, IndexCodec::Plain, 1 << 30);
        assert_eq!(plain.unwrap().len(), 6000);
        assert!(both_ways(&text, &text, IndexCodec::Plain, 100).1.is_err());
        assert!(both_ways(b"", b"not xz", IndexCodec::Xz, 100)
            .1
            .unwrap_err()
            .contains("decompress"));
    }

    fn parse_whole(text: &[u8]) -> HashMap<PackageId, PoolEntry> {
        let mut map = HashMap::new();
        parse_packages(text, 1 << 20, &mut map, &mut SkippedStanzas::default()).unwrap();
        map
    }

    #[test]
    fn streamed_errors_name_the_same_line() {
        let mut text = many_stanzas(3000);
        let line = text.iter().filter(|&&b| b == b'\n').count() + 2;
        text.extend_from_slice(b"Package: x\nnot a field\n\n");
        let (whole, streamed) = both_ways(&text, &xz(&text), IndexCodec::Xz, 1 << 30);
        let e = whole.unwrap_err();
        assert!(e.starts_with(&format!("line {line}:")), "{e}");
        assert_eq!(streamed.unwrap_err(), e);
        // Truncated in the middle of a line, as whole.
        let cut = &text[..text.len() - 30];
        let (whole, streamed) = both_ways(cut, &xz(cut), IndexCodec::Xz, 1 << 30);
        assert_eq!(streamed.unwrap_err(), whole.unwrap_err());
        // CRLF and white-space-only separator lines.
        let crlf = b"Package: a\r\nVersion: 1\r\nArchitecture: all\r\nFilename: pool/a.deb\r\nSize: 1\r\nSHA256: 1111111111111111111111111111111111111111111111111111111111111111\r\n \t\r\nPackage: b\n";
        let (whole, streamed) = both_ways(crlf, crlf, IndexCodec::Plain, 1 << 30);
        assert_eq!(streamed.unwrap(), whole.unwrap());
    }

    /// An xz bomb: many small streams of stanzas, concatenated (as
    /// `XzDecoder::new_multi_decoder` reads them), far more than the
    /// limit once decompressed. It is refused at the limit; the parser
    /// never holds more than a stanza and a read buffer (the point of the
    /// streaming; measured in docs/FUZZING.md's note, not timed here).
    #[test]
    fn an_xz_bomb_is_refused_at_the_limit() {
        let piece = xz(&many_stanzas(1000));
        let bomb: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * 64).collect();
        let mut map = HashMap::new();
        let e = parse_packages_index(
            &bomb,
            IndexCodec::Xz,
            4 << 20,
            1 << 20,
            &mut map,
            &mut SkippedStanzas::default(),
        )
        .unwrap_err();
        assert!(e.contains("more than 4194304 bytes"), "{e}");
        // One endless stanza is refused at MAX_STANZA, not at the limit.
        let endless = xz(&b"Description: x\n".repeat(MAX_STANZA / 8));
        let e = parse_packages_index(
            &endless,
            IndexCodec::Xz,
            1 << 30,
            1,
            &mut map,
            &mut SkippedStanzas::default(),
        )
        .unwrap_err();
        assert!(e.contains("stanza longer"), "{e}");
    }

    #[test]
    fn digests() {
        assert_eq!(
            Sha256Digest::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Sha256Digest::from_hex(&"g".repeat(64)).is_none());
        assert!(Sha256Digest::from_hex("00").is_none());
        assert_eq!(Sha256Digest::from_hex(D1).unwrap().to_string(), D1);
    }
}
