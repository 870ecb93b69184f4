//! Shared helpers for cbt's benchmarks: seeded pseudo-random data, generated
//! raw images, throughput arithmetic and the process's memory counters.
//!
//! Two kinds of measurement live in this crate:
//! - criterion microbenchmarks under `benches/` (`cargo bench -p cbt-benches`):
//!   `digest` (BLAKE3 and `is_zero` on 4 KiB blocks), `index` (lookups of
//!   hits and misses) and `pipeline` (`hash_image` over a 64 MiB raw file);
//! - the end-to-end harness `hashbench` (`src/bin/hashbench.rs`), whose
//!   results are recorded in `docs/BENCHMARKS.md`.
//!
//! Not written yet: benchmarks of plan building and of frame encode/decode
//! belong here once `cbt-net` exists.
//!
//! Data is generated, never committed. Word `i` of a stream is
//! `splitmix64(seed, i)`, a bijection of `i` for a given seed, so two blocks
//! drawn from disjoint word ranges of the same seed never have equal
//! content: images built from consecutive ranges share no block.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

/// Word `index` of the stream `seed` (SplitMix64).
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut z = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(index.wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the stream `seed` starting at word `first_word`.
pub fn fill_random(buf: &mut [u8], seed: u64, first_word: u64) {
    let mut chunks = buf.chunks_exact_mut(8);
    let mut i = first_word;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&splitmix64(seed, i).to_le_bytes());
        i = i.wrapping_add(1);
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&splitmix64(seed, i).to_le_bytes()[..n]);
}

/// `len` bytes of the stream `seed` starting at word `first_word`.
pub fn random_bytes(len: usize, seed: u64, first_word: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v, seed, first_word);
    v
}

/// Writes a raw image of `len` bytes of the stream `seed`, starting at word
/// `first_word`, to `path`: into a temporary file in the same directory,
/// synced, then renamed, so an interrupted run never leaves a short image
/// that a later run would reuse.
pub fn write_random_image(path: &Path, len: u64, seed: u64, first_word: u64) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    const CHUNK: u64 = 8 * MIB;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        let part = &mut buf[..n as usize];
        fill_random(part, seed, first_word + done / 8);
        tmp.write_all(part)?;
        done += n;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Like [`write_random_image`], but keeps an existing file at `path` whose
/// length is `len` (generated images are named by their parameters).
/// Returns true if the image was written.
pub fn ensure_random_image(path: &Path, len: u64, seed: u64, first_word: u64) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == len => Ok(false),
        _ => write_random_image(path, len, seed, first_word).map(|()| true),
    }
}

/// Reads `path` front to back in chunks of `chunk` bytes, discarding the
/// data. Returns the bytes read.
pub fn read_sequential(path: &Path, chunk: usize) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        match io::Read::read(&mut f, &mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Throughput in MiB/s.
pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// The process's resident set, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStatus {
    /// Current resident set size in bytes (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size in bytes (`VmHWM`).
    pub peak: u64,
}

impl MemStatus {
    /// Reads the current figures (Linux only).
    pub fn now() -> io::Result<MemStatus> {
        Self::parse(&fs::read_to_string("/proc/self/status")?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS/VmHWM in /proc/self/status"))
    }

    /// Extracts `VmRSS` and `VmHWM` (given in kB) from the text of a status file.
    pub fn parse(status: &str) -> Option<MemStatus> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                Some(kb * 1024)
            })
        };
        Some(MemStatus {
            rss: field("VmRSS")?,
            peak: field("VmHWM")?,
        })
    }
}

/// CPU time the whole process (every thread, live or finished) has used,
/// from `/proc/self/stat`, in seconds; resolution one clock tick (10 ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime {
    /// Time in user mode.
    pub user: f64,
    /// Time in the kernel (for reads: mostly copying out of the page cache).
    pub system: f64,
}

impl CpuTime {
    /// Reads the current figures (Linux only).
    pub fn now() -> io::Result<CpuTime> {
        Self::parse(&fs::read_to_string("/proc/self/stat")?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/self/stat"))
    }

    /// Extracts `utime` and `stime` (fields 14 and 15) from the text of a stat file.
    pub fn parse(stat: &str) -> Option<CpuTime> {
        // The command name (field 2) may hold spaces; count fields after its ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        // USER_HZ is 100 on every Linux architecture's user-space ABI.
        let ticks = |f: Option<&str>| f?.parse::<u64>().ok().map(|t| t as f64 / 100.0);
        Some(CpuTime {
            user: ticks(fields.next())?,
            system: ticks(fields.next())?,
        })
    }

    /// User plus system time.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// The system's 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the peak resident set (`VmHWM`) to the current one by writing
/// `5` to `/proc/self/clear_refs` (Linux ≥ 4.0). Returns false if the
/// kernel refused, in which case the peak keeps its earlier value.
pub fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_seeded_and_offsettable() {
        let a = random_bytes(4096 + 5, 7, 0);
        assert_eq!(a, random_bytes(4096 + 5, 7, 0));
        assert_ne!(a, random_bytes(4096 + 5, 8, 0));
        // A stream read from word 512 equals the tail of one read from 0.
        assert_eq!(&random_bytes(8192, 7, 0)[4096..], &random_bytes(4096, 7, 512)[..]);
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            MemStatus::parse(s),
            Some(MemStatus {
                rss: 1 << 20,
                peak: 2 << 20
            })
        );
        assert_eq!(MemStatus::parse("VmRSS: 1 kB\n"), None);
    }

    #[test]
    fn stat_parsing() {
        let s = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20";
        let t = CpuTime::parse(s).expect("parses");
        assert!((t.user - 2.5).abs() < 1e-9 && (t.system - 0.3).abs() < 1e-9);
        assert!(CpuTime::now().is_ok());
    }

    #[test]
    fn images_are_written_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.raw");
        assert!(ensure_random_image(&p, 10_000, 3, 0).expect("write"));
        assert!(!ensure_random_image(&p, 10_000, 3, 0).expect("reuse"));
        assert_eq!(fs::read(&p).expect("read"), random_bytes(10_000, 3, 0));
        assert_eq!(read_sequential(&p, 4096).expect("read"), 10_000);
    }
}
