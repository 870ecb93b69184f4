//! Block compression: zstd per block, or none. A block that does not
//! shrink is sent raw; after a run of such blocks (encrypted or already
//! compressed data) only one block in [`RETRY_EVERY`] is tried until one
//! shrinks again, so incompressible data costs little CPU. Decompression is bounded by the block's known length,
//! so a hostile peer cannot make us inflate more than one block.

use std::str::FromStr;

use bytes::Bytes;

use crate::frame::Encoding;

/// Compression of missing blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Blocks travel as they are.
    None,
    /// zstd at this level (1..=19; 3 is zstd's default).
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
    }
}

impl FromStr for Compression {
    type Err = String;

    /// `none`, `zstd` or `zstd:LEVEL`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::default()),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!("zstd level must be 1 to 19, not {level:?}")),
            },
            _ => Err(format!("unknown compression {s:?} (none, zstd or zstd:LEVEL)")),
        }
    }
}

/// Incompressible blocks in a row before compression is tried less often.
pub const GIVE_UP_AFTER: u32 = 16;
/// While giving up, one block in this many is still tried.
pub const RETRY_EVERY: u32 = 16;

/// Compresses blocks, reusing one zstd context.
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Incompressible blocks in a row.
    misses: u32,
    /// Blocks left to send raw without trying.
    skip: u32,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("zstd", &self.zstd.is_some())
            .finish()
    }
}

impl Compressor {
    /// A compressor for `c`.
    pub fn new(c: Compression) -> std::io::Result<Self> {
        let zstd = match c {
            Compression::None => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
        };
        Ok(Compressor {
            zstd,
            misses: 0,
            skip: 0,
        })
    }

    /// The bytes to send for `data`, and how they are encoded.
    pub fn encode(&mut self, data: &[u8]) -> (Encoding, Bytes) {
        if let Some(z) = self.zstd.as_mut() {
            if self.skip > 0 {
                self.skip -= 1;
            } else {
                if let Ok(c) = z.compress(data) {
                    if c.len() < data.len() {
                        self.misses = 0;
                        return (Encoding::Zstd, Bytes::from(c));
                    }
                }
                self.misses = self.misses.saturating_add(1);
                if self.misses >= GIVE_UP_AFTER {
                    self.skip = RETRY_EVERY - 1;
                }
            }
        }
        (Encoding::Raw, Bytes::copy_from_slice(data))
    }
}

/// Decompresses blocks, reusing one zstd context.
pub struct Decompressor {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Decompressor {
    /// A new decompressor.
    pub fn new() -> std::io::Result<Self> {
        Ok(Decompressor {
            zstd: zstd::bulk::Decompressor::new()?,
        })
    }

    /// The block's bytes, which must be exactly `len` long.
    pub fn decode<'a>(
        &mut self,
        encoding: Encoding,
        data: &'a [u8],
        len: usize,
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], String> {
        match encoding {
            Encoding::Raw => {
                if data.len() != len {
                    return Err(format!("raw block of {} bytes, expected {len}", data.len()));
                }
                Ok(data)
            }
            Encoding::Zstd => {
                out.clear();
                out.reserve(len);
                // Capacity-bounded: more than `len` bytes of output is an error.
                let n = self
                    .zstd
                    .decompress_to_buffer(data, out)
                    .map_err(|e| format!("zstd: {e}"))?;
                if n != len {
                    return Err(format!("block decompressed to {n} bytes, expected {len}"));
                }
                Ok(&out[..])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd(3)));
        assert_eq!("zstd:9".parse(), Ok(Compression::Zstd(9)));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut c = Compressor::new(Compression::Zstd(3)).unwrap();
        let mut d = Decompressor::new().unwrap();
        let text = b"hello hello hello hello hello hello hello hello ".repeat(80);
        let (enc, bytes) = c.encode(&text);
        assert_eq!(enc, Encoding::Zstd);
        assert!(bytes.len() < text.len());
        let mut out = Vec::new();
        assert_eq!(d.decode(enc, &bytes, text.len(), &mut out).unwrap(), &text[..]);
        // Claiming a shorter block must fail rather than overflow.
        assert!(d.decode(enc, &bytes, 100, &mut out).is_err());
        // Incompressible data goes raw.
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (enc, bytes) = c.encode(&noise);
        if enc == Encoding::Raw {
            assert_eq!(&bytes[..], &noise[..]);
        }
        assert!(d.decode(Encoding::Zstd, b"garbage", 4096, &mut out).is_err());
    }

    #[test]
    fn gives_up_on_incompressible_runs_and_comes_back() {
        let mut c = Compressor::new(Compression::Zstd(1)).unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut noise = || {
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>()
        };
        for _ in 0..GIVE_UP_AFTER {
            assert_eq!(c.encode(&noise()).0, Encoding::Raw);
        }
        // Giving up: compressible blocks go raw until the next try...
        let text = b"abcd".repeat(1024);
        let tries: Vec<Encoding> = (0..RETRY_EVERY).map(|_| c.encode(&text).0).collect();
        assert_eq!(tries.iter().filter(|e| **e == Encoding::Zstd).count(), 1);
        // ...which succeeds, and every block is tried again.
        assert_eq!(c.encode(&text).0, Encoding::Zstd);
        assert_eq!(c.encode(&text).0, Encoding::Zstd);
    }
}
