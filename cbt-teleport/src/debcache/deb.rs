//! Reading a `.deb`: an `ar` archive holding `debian-binary`,
//! `control.tar[.gz|.xz|.zst]` and `data.tar[.gz|.xz|.zst|.lzma]`.
//!
//! The reader streams: it never seeks, never holds a member in memory
//! (only the small `control` file), and hands each regular file of the
//! data archive to a callback as a reader. Every size and count from the
//! archive is checked against the bytes actually present and against
//! [`DebLimits`], so a hostile archive can neither make it allocate nor
//! decompress without bound.

use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use cbt_core::{Error, Result};

use crate::deb822;

/// The `ar` global header.
const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
/// Size of one `ar` member header.
const AR_HEADER: usize = 60;
/// Memory the xz decoder may use (dpkg's presets need 8 to 64 MiB).
pub(super) const XZ_MEMLIMIT: u64 = 512 << 20;

/// Bounds applied while reading one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebLimits {
    /// Most `ar` members (a .deb has three, maybe a signature or two).
    pub max_members: usize,
    /// Most entries in the data archive.
    pub max_entries: u64,
    /// Most bytes of regular files in the data archive, decompressed.
    pub max_data_bytes: u64,
    /// Largest `control` file read.
    pub max_control_bytes: u64,
}

impl Default for DebLimits {
    fn default() -> Self {
        DebLimits {
            max_members: 16,
            max_entries: 1 << 20,
            max_data_bytes: 64 << 30,
            max_control_bytes: 1 << 20,
        }
    }
}

/// The package a `.deb` holds, from its `control` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebControl {
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`.
    pub architecture: String,
    /// `Installed-Size` in bytes, if given.
    pub installed_size: Option<u64>,
}

/// The callback of [`read_deb`]: `(path, size, reader)` for each regular file.
pub type FileSink<'a> = dyn FnMut(&[u8], u64, &mut dyn Read) -> Result<()> + 'a;

/// What [`read_deb`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebInfo {
    /// The control fields, if the archive has a `control` file.
    pub control: Option<DebControl>,
    /// Regular files in the data archive.
    pub files: u64,
    /// Their total size.
    pub data_bytes: u64,
}

/// Reads the `.deb` from `input` (named `origin` in errors), calling
/// `on_file(path, size, reader)` for every regular file of its data
/// archive, in archive order. The callback must read the file to its end
/// (or fail).
pub fn read_deb(
    input: impl Read,
    origin: &Path,
    limits: &DebLimits,
    on_file: &mut FileSink<'_>,
) -> Result<DebInfo> {
    let bad = |reason: String| Error::malformed(origin, reason);
    let mut input = Counting {
        inner: input,
        count: 0,
    };
    let mut magic = [0u8; 8];
    read_exact_or(&mut input, &mut magic, origin, || {
        bad("not a .deb: shorter than the ar header".into())
    })?;
    if &magic != AR_MAGIC {
        return Err(bad("not a .deb: no ar archive header".into()));
    }
    let mut info = DebInfo::default();
    let mut seen_data = false;
    let mut members = 0usize;
    loop {
        let mut header = [0u8; AR_HEADER];
        let got = read_full(&mut input, &mut header).map_err(|e| Error::io(origin, "read", e))?;
        if got == 0 {
            break;
        }
        let at = input.count - got as u64;
        if got < AR_HEADER {
            return Err(bad(format!(
                "truncated: ar member header at offset {at} has {got} of {AR_HEADER} bytes"
            )));
        }
        members += 1;
        if members > limits.max_members {
            return Err(bad(format!("more than {} ar members", limits.max_members)));
        }
        if &header[58..60] != b"`\n" {
            return Err(bad(format!(
                "ar member header at offset {at} is damaged (no end marker)"
            )));
        }
        let name = parse_name(&header[..16]);
        let size = parse_size(&header[48..58])
            .ok_or_else(|| bad(format!("ar member {name:?} at offset {at}: bad size field")))?;
        if members == 1 && name != "debian-binary" {
            return Err(bad(format!("first ar member is {name:?}, not debian-binary")));
        }
        let mut member = (&mut input).take(size);
        let what = format!("member {name}");
        if name == "debian-binary" {
            let mut v = Vec::new();
            (&mut member)
                .take(64)
                .read_to_end(&mut v)
                .map_err(|e| Error::io(origin, "read", e))?;
            if !v.starts_with(b"2.") {
                return Err(bad(format!(
                    "unsupported .deb format version {:?}",
                    String::from_utf8_lossy(&v).trim()
                )));
            }
        } else if let Some(suffix) = name.strip_prefix("control.tar") {
            let mut dec = decompressor(suffix, &mut member).map_err(|r| bad(format!("{what}: {r}")))?;
            info.control = read_control(&mut dec, limits).map_err(|r| bad(format!("{what}: {r}")))?;
            drain(&mut dec).map_err(|e| bad(format!("{what}: {e}")))?;
        } else if let Some(suffix) = name.strip_prefix("data.tar") {
            if seen_data {
                return Err(bad("two data.tar members".into()));
            }
            seen_data = true;
            let mut dec = decompressor(suffix, &mut member).map_err(|r| bad(format!("{what}: {r}")))?;
            read_data(&mut dec, origin, &what, limits, &mut info, on_file)?;
            drain(&mut dec).map_err(|e| bad(format!("{what}: {e}")))?;
        }
        // Whatever a step left unread (or an unknown member) is skipped.
        io::copy(&mut member, &mut io::sink()).map_err(|e| Error::io(origin, "read", e))?;
        if member.limit() > 0 {
            return Err(bad(format!(
                "truncated: {what} declares {size} bytes, the archive ends {} bytes early",
                member.limit()
            )));
        }
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            // The padding byte of the last member may be missing.
            let _ = read_full(&mut input, &mut pad).map_err(|e| Error::io(origin, "read", e))?;
        }
    }
    if members == 0 {
        return Err(bad("empty ar archive".into()));
    }
    if !seen_data {
        return Err(bad("no data.tar member".into()));
    }
    Ok(info)
}

/// A member name: up to the first space or the GNU `/` terminator.
fn parse_name(field: &[u8]) -> String {
    let end = field
        .iter()
        .position(|&b| b == b' ' || b == b'/')
        .unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The decimal size field, space padded.
fn parse_size(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?.trim_end_matches(' ');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A decompressing reader for a `*.tar<suffix>` member (or another file
/// with that suffix), with the xz memory limit applied.
pub(super) fn decompressor<'a>(
    suffix: &str,
    r: &'a mut dyn Read,
) -> std::result::Result<Box<dyn Read + 'a>, String> {
    Ok(match suffix {
        "" => Box::new(r),
        ".gz" => Box::new(flate2::read::GzDecoder::new(r)),
        ".xz" => {
            let s = xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                .map_err(|e| e.to_string())?;
            Box::new(xz2::read::XzDecoder::new_stream(r, s))
        }
        ".lzma" => {
            let s = xz2::stream::Stream::new_lzma_decoder(XZ_MEMLIMIT).map_err(|e| e.to_string())?;
            Box::new(xz2::read::XzDecoder::new_stream(r, s))
        }
        ".zst" => Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| e.to_string())?),
        other => return Err(format!("unsupported compression {other:?}")),
    })
}

fn read_control(r: &mut dyn Read, limits: &DebLimits) -> std::result::Result<Option<DebControl>, String> {
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path_bytes().into_owned();
        let name = path.strip_prefix(b"./").unwrap_or(&path);
        if name != b"control" || !entry.header().entry_type().is_file() {
            continue;
        }
        if entry.size() > limits.max_control_bytes {
            return Err(format!("control file of {} bytes", entry.size()));
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(limits.max_control_bytes)
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        let paragraphs = deb822::parse(&data, &|_| true).map_err(|e| format!("control: {e}"))?;
        let Some(p) = paragraphs.first() else {
            return Err("control: empty".into());
        };
        let field = |n: &str| p.text(n).ok_or_else(|| format!("control: no {n} field"));
        return Ok(Some(DebControl {
            package: field("Package")?,
            version: field("Version")?,
            architecture: field("Architecture")?,
            installed_size: p
                .text("Installed-Size")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|k| k.saturating_mul(1024)),
        }));
    }
    Ok(None)
}

fn read_data(
    r: &mut dyn Read,
    origin: &Path,
    what: &str,
    limits: &DebLimits,
    info: &mut DebInfo,
    on_file: &mut FileSink<'_>,
) -> Result<()> {
    let bad = |reason: String| Error::malformed(origin, format!("{what}: {reason}"));
    let mut archive = tar::Archive::new(r);
    let mut entries = 0u64;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(bad(format!("more than {} entries", limits.max_entries)));
        }
        let kind = entry.header().entry_type();
        if !(kind == tar::EntryType::Regular || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry.size();
        info.data_bytes = info
            .data_bytes
            .checked_add(size)
            .filter(|&t| t <= limits.max_data_bytes)
            .ok_or_else(|| bad(format!("more than {} bytes of files", limits.max_data_bytes)))?;
        info.files += 1;
        let path = entry.path_bytes().into_owned();
        let mut counted = Counting {
            inner: &mut entry,
            count: 0,
        };
        on_file(&path, size, &mut counted)?;
        if counted.count != size {
            return Err(bad(format!(
                "{}: {} of {size} bytes present (truncated?)",
                String::from_utf8_lossy(&path),
                counted.count
            )));
        }
    }
    Ok(())
}

/// Reads a decompressor to its end so a damaged stream tail is noticed.
fn drain(r: &mut dyn Read) -> io::Result<u64> {
    io::copy(r, &mut io::sink())
}

/// Counts the bytes read through it.
pub(super) struct Counting<R> {
    pub(super) inner: R,
    pub(super) count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    origin: &Path,
    short: impl FnOnce() -> Error,
) -> Result<()> {
    match read_full(r, buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(short()),
        Err(e) => Err(Error::io(origin, "read", e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an ar archive from members.
    pub(crate) fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            out.extend_from_slice(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    100644,
                    data.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn deb(files: &[(&str, &[u8])]) -> Vec<u8> {
        let control = tar_of(&[(
            "./control",
            b"Package: t\nVersion: 1.0\nArchitecture: all\nInstalled-Size: 3\n",
        )]);
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &gz(&control)),
            ("data.tar.gz", &gz(&tar_of(files))),
        ])
    }

    type Files = Vec<(String, Vec<u8>)>;

    fn collect(data: &[u8]) -> Result<(DebInfo, Files)> {
        let mut files = Vec::new();
        let info = read_deb(data, Path::new("t.deb"), &DebLimits::default(), &mut |p, _, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)
                .map_err(|e| Error::malformed("t.deb", e.to_string()))?;
            files.push((String::from_utf8_lossy(p).into_owned(), v));
            Ok(())
        })?;
        Ok((info, files))
    }

    #[test]
    fn reads_files_and_control() {
        let d = deb(&[("./usr/bin/a", b"hello"), ("./usr/share/b", b"")]);
        let (info, files) = collect(&d).unwrap();
        assert_eq!(
            files,
            [
                ("usr/bin/a".to_string(), b"hello".to_vec()),
                ("usr/share/b".to_string(), vec![])
            ]
        );
        let c = info.control.unwrap();
        assert_eq!(
            (c.package.as_str(), c.version.as_str(), c.installed_size),
            ("t", "1.0", Some(3072))
        );
        assert_eq!((info.files, info.data_bytes), (2, 5));
    }

    #[test]
    fn malformed_archives_are_errors_naming_the_file() {
        let d = deb(&[("./x", &[7u8; 5000])]);
        for cut in [0, 4, 8, 30, 68, 100, d.len() / 2, d.len() - 30] {
            let e = collect(&d[..cut]).unwrap_err().to_string();
            assert!(e.starts_with("t.deb: "), "{cut}: {e}");
        }
        let e = collect(&ar(&[("debian-binary", b"2.0\n")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data.tar"), "{e}");
        let e = collect(&ar(&[("control.tar", b"")])).unwrap_err().to_string();
        assert!(e.contains("debian-binary"), "{e}");
        let e = collect(&ar(&[("debian-binary", b"3.0\n"), ("data.tar", b"")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("format version"), "{e}");
        let e = collect(&ar(&[("debian-binary", b"2.0\n"), ("data.tar.bz2", b"x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported compression"), "{e}");
        let mut bad_size = deb(&[("./x", b"y")]);
        bad_size[8 + 48] = b'x';
        assert!(collect(&bad_size).unwrap_err().to_string().contains("bad size"));
    }

    #[test]
    fn limits_hold() {
        let d = deb(&[("./a", &[1u8; 100]), ("./b", &[2u8; 100])]);
        let limits = DebLimits {
            max_data_bytes: 150,
            ..Default::default()
        };
        let e = read_deb(&d[..], Path::new("t.deb"), &limits, &mut |_, _, r| {
            io::copy(r, &mut io::sink())
                .map(|_| ())
                .map_err(|e| Error::io("x", "read", e))
        })
        .unwrap_err();
        assert!(e.to_string().contains("more than 150 bytes"), "{e}");
    }
}
