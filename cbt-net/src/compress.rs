//! Block compression: one zstd stream per connection, cut into pieces.
//!
//! The missing blocks travel in pieces: the sender feeds consecutive
//! requested blocks to one zstd stream that lives as long as the
//! connection and flushes it when the piece holds [`PIECE_BYTES`] or when
//! no more blocks are waiting to be sent (so the link never idles behind a
//! half-full piece). A piece is one BLOCKS frame; the receiver decodes the
//! pieces in the order they arrive, and each can refer back to everything
//! in the window sent before it. Flushing after every 4 KiB block, as
//! earlier versions did, restarts zstd's entropy tables at every block and
//! cost about 9% against rsync's zlib stream; a quarter-MiB piece costs
//! almost nothing more than one unbroken stream.
//!
//! **Levels.** `zstd:N` fixes the level. `auto` (the default) starts at
//! level 3 and re-chooses every [`ADAPT_BYTES`] from what it measured: how
//! fast the current level compresses on this data, and how fast blocks are
//! asked for. It takes the highest level expected to keep the compressor
//! busy at most [`TARGET_BUSY`] of the time, so on a slow link it spends
//! the idle core on a smaller stream, and on a fast one it drops back to
//! level 3 (never below) before it would starve the link (as `zstd
//! --adapt` does for files). A single-threaded zstd stream applies a new level only at a new
//! frame, so a change ends the frame at the end of a piece and the history
//! restarts: hence hysteresis ([`next_level`]): it goes down only when the
//! compressor would starve the link, up only for a gain of two levels or
//! more, only early in the stream ([`RISE_WINDOW_BYTES`]) and at most
//! [`MAX_LEVEL_RISES`] times.
//!
//! **Window and long matches.** The sender asks for a window in BEGIN
//! ([`LONG_WINDOW_LOG`], 128 MiB, with zstd's long-distance matching) and
//! the receiver grants at most its own limit in READY; its decoder refuses
//! any frame that needs more, so a hostile peer cannot make it hold a
//! larger window. Whole repeated blocks never travel twice (the receiver
//! asks once); long matching finds repeats that are not block-aligned.
//!
//! **Incompressible data.** A piece that does not shrink still costs a few
//! bytes more than raw; after [`GIVE_UP_AFTER`] of them in a row
//! (encrypted or already compressed data), only one piece in
//! [`RETRY_EVERY`] is fed to the stream and the others are sent raw,
//! bypassing it, so incompressible data costs little CPU.
//!
//! Decompression is bounded by the piece's known length, so a peer cannot
//! make the receiver inflate more than the blocks it asked for.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::frame::Encoding;

/// Compression of missing blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Blocks travel as they are.
    None,
    /// zstd at this level (1..=19; 3 is zstd's default).
    Zstd(i32),
    /// zstd at a level chosen from the measured link and compressor speed.
    #[default]
    Auto,
}

impl FromStr for Compression {
    type Err = String;

    /// `auto`, `none`, `zstd` or `zstd:LEVEL`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "auto" => Ok(Compression::Auto),
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::Zstd(3)),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (1..=MAX_LEVEL).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!("zstd level must be 1 to {MAX_LEVEL}, not {level:?}")),
            },
            _ => Err(format!(
                "unknown compression {s:?} (auto, none, zstd or zstd:LEVEL)"
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::Auto => f.write_str("auto"),
        }
    }
}

/// The highest zstd level offered (zstd's 20..=22 need far more memory).
pub const MAX_LEVEL: i32 = 19;
/// Where `auto` starts, and the lowest level it uses: below it zstd
/// saves little time (level 1 is about 1.7× as fast as 3) and costs 5-10%
/// more bytes, and a compressor that looks busy on a loaded machine (the
/// sender hashes its image meanwhile) misled `auto` into level 1, which
/// sent 9% more bytes than level 3 on `user ← web`.
pub const AUTO_START_LEVEL: i32 = 3;
/// Incompressible pieces in a row before compression is tried less often.
pub const GIVE_UP_AFTER: u32 = 4;
/// While giving up, one piece in this many is still tried.
pub const RETRY_EVERY: u32 = 8;
/// log2 of the window without long matching (8 MiB), and the least any
/// receiver grants.
pub const WINDOW_LOG: u32 = 23;
/// log2 of the window a sender asks for (128 MiB), with long matching.
pub const LONG_WINDOW_LOG: u32 = 27;
/// The largest window a receiver may be configured to grant (1 GiB).
pub const MAX_WINDOW_LOG: u32 = 30;
/// Plain bytes after which a piece is flushed.
pub const PIECE_BYTES: usize = 256 << 10;
/// The most plain bytes a receiver accepts in one piece.
pub const MAX_PIECE_BYTES: usize = 8 << 20;
/// `auto` re-chooses its level after this many plain bytes.
pub const ADAPT_BYTES: u64 = 4 << 20;
/// `auto` re-chooses at the latest after this long.
const ADAPT_TIME: Duration = Duration::from_secs(1);
/// The share of time `auto` lets the compressor be busy.
pub const TARGET_BUSY: f64 = 0.6;
/// Busier than this, the compressor is what the link waits for: `auto`
/// lowers its level at once.
pub const STARVING_BUSY: f64 = 0.85;
/// `auto` raises its level only within the first this many plain bytes of
/// a connection. A change starts a new frame, which loses the history
/// (the long-match window) and every later match into it: on `user ← web`
/// (440 MB of missing blocks with duplicated files far apart), a dozen
/// changes cost 15 MB (8%) against a steady level 3, and even two
/// changes after 64 MiB cost 10 MB, more than the higher levels saved.
/// Early, little history is lost.
pub const RISE_WINDOW_BYTES: u64 = 32 << 20;
/// The most times `auto` raises its level on one connection (it lowers it
/// whenever the compressor would starve the link: early measurements,
/// before the link fills, overstate the time there is to compress).
pub const MAX_LEVEL_RISES: u32 = 2;
/// A wait for work longer than this is the pipeline idling (the receiver
/// has nothing to ask), not the link pacing requests: it does not count
/// as time the compressor could have used.
pub const IDLE_GAP: Duration = Duration::from_millis(200);

/// zstd's single-core speed by level, relative to level 1 (from zstd's own
/// benchmarks; only ratios matter, scaled by what is measured).
const RELATIVE_SPEED: [f64; MAX_LEVEL as usize] = [
    1.0, 0.75, 0.6, 0.5, 0.28, 0.22, 0.18, 0.15, 0.12, 0.1, 0.08, 0.07, 0.04, 0.032, 0.024, 0.016, 0.012,
    0.01, 0.007,
];

fn relative_speed(level: i32) -> f64 {
    RELATIVE_SPEED[(level.clamp(1, MAX_LEVEL) - 1) as usize]
}

/// What a compressor did, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressionStats {
    /// Plain bytes of the blocks sent.
    pub uncompressed_bytes: u64,
    /// Bytes they took in BLOCKS frames' data.
    pub compressed_bytes: u64,
    /// Plain bytes per zstd level (0: sent raw).
    pub levels: BTreeMap<i32, u64>,
}

/// The `auto` controller's measurements since its last choice.
#[derive(Debug)]
struct Adapt {
    since: Instant,
    busy: Duration,
    idle: Duration,
    plain: u64,
    /// Pieces finished, and of those, how many found frames still queued
    /// for the link (see [`Compressor::link_backlog`]).
    pieces: u32,
    backlogged: u32,
}

impl Adapt {
    fn new() -> Self {
        Adapt {
            since: Instant::now(),
            busy: Duration::ZERO,
            idle: Duration::ZERO,
            plain: 0,
            pieces: 0,
            backlogged: 0,
        }
    }

    /// True unless the link had frames waiting for most pieces of this
    /// window: then the compressor cannot be what the link waits for,
    /// whatever the speeds computed from timings say.
    fn link_may_starve(&self) -> bool {
        self.pieces == 0 || self.backlogged * 2 < self.pieces
    }
}

/// Compresses blocks into pieces of the connection's zstd stream.
pub struct Compressor {
    /// `None` without compression, or after the stream failed (the blocks
    /// then travel raw; the receiver's stream state is untouched, since
    /// nothing of a failed piece was sent).
    zstd: Option<Encoder<'static>>,
    level: i32,
    /// The level the next frame starts with, once `auto` chose another.
    next_level: Option<i32>,
    adapt: Option<Adapt>,
    /// Plain bytes compressed since `auto` last changed its level.
    /// Times `auto` raised its level so far.
    level_rises: u32,
    /// Plain bytes of the current piece (kept so that a piece whose
    /// compression fails can go raw).
    plain: Vec<u8>,
    /// The compressed piece so far.
    packed: Vec<u8>,
    /// The current piece bypasses the stream.
    bypass: bool,
    /// Incompressible pieces in a row.
    misses: u32,
    /// Pieces left to send raw without trying.
    skip: u32,
    stats: CompressionStats,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("zstd", &self.zstd.is_some())
            .field("level", &self.level)
            .finish()
    }
}

impl Compressor {
    /// A compressor for `c` with a window of `2^window_log` bytes (long
    /// matching above [`WINDOW_LOG`]).
    pub fn new(c: Compression, window_log: u32) -> std::io::Result<Self> {
        let (zstd, level, adapt) = match c {
            Compression::None => (None, 0, None),
            Compression::Zstd(level) => (Some(encoder(level, window_log)?), level, None),
            Compression::Auto => (
                Some(encoder(AUTO_START_LEVEL, window_log)?),
                AUTO_START_LEVEL,
                Some(Adapt::new()),
            ),
        };
        Ok(Compressor {
            zstd,
            level,
            next_level: None,
            adapt,
            level_rises: 0,
            plain: Vec::with_capacity(PIECE_BYTES + (64 << 10)),
            packed: Vec::new(),
            bypass: false,
            misses: 0,
            skip: 0,
            stats: CompressionStats::default(),
        })
    }

    /// The level pieces are compressed at now (0: none).
    pub fn level(&self) -> i32 {
        if self.zstd.is_some() {
            self.level
        } else {
            0
        }
    }

    /// What was compressed so far.
    pub fn stats(&self) -> &CompressionStats {
        &self.stats
    }

    /// Plain bytes in the current piece.
    pub fn piece_len(&self) -> usize {
        self.plain.len()
    }

    /// The sender waited `gap` for more blocks to send (`auto` tells the
    /// link pacing requests from an idle pipeline).
    pub fn waited(&mut self, gap: Duration) {
        if let Some(a) = self.adapt.as_mut() {
            if gap > IDLE_GAP {
                a.idle += gap;
            }
        }
    }

    /// The sender, about to hand a piece to the link, says whether frames
    /// are still queued for it. `auto` lowers its level only when they
    /// were not for most pieces: timings alone mislead it (a burst of
    /// requests while buffers fill, a wait counted as idle) into lowering
    /// on a slow link, and each change restarts the stream's history (a
    /// 10 Mbit/s pull switched five times and sent 7% more than level 3).
    pub fn link_backlog(&mut self, queued: bool) {
        if let Some(a) = self.adapt.as_mut() {
            a.pieces += 1;
            a.backlogged += u32::from(queued);
        }
    }

    /// Adds a block to the current piece.
    pub fn push(&mut self, data: &[u8]) {
        let started = Instant::now();
        if self.plain.is_empty() {
            self.packed.clear();
            self.bypass = self.zstd.is_none() || self.skip > 0;
            if self.skip > 0 {
                self.skip -= 1;
            }
        }
        self.plain.extend_from_slice(data);
        if !self.bypass {
            if let Some(z) = self.zstd.as_mut() {
                if let Err(e) = feed(z, data, &mut self.packed) {
                    self.fail(e);
                }
            }
        }
        self.charge(started);
    }

    /// Ends the current piece: the bytes to send and how they are encoded,
    /// or `None` if the piece is empty.
    pub fn finish(&mut self) -> Option<(Encoding, Bytes)> {
        if self.plain.is_empty() {
            return None;
        }
        let started = Instant::now();
        let plain_len = self.plain.len() as u64;
        let mut piece = None;
        if !self.bypass {
            if let Some(z) = self.zstd.as_mut() {
                match close(z, &mut self.packed, self.next_level.is_some()) {
                    Ok(()) => {
                        if self.packed.len() * 50 < self.plain.len() * 49 {
                            self.misses = 0;
                        } else {
                            self.misses = self.misses.saturating_add(1);
                            if self.misses >= GIVE_UP_AFTER {
                                self.skip = RETRY_EVERY - 1;
                            }
                        }
                        *self.stats.levels.entry(self.level).or_default() += plain_len;
                        piece = Some((Encoding::ZstdStream, Bytes::copy_from_slice(&self.packed)));
                    }
                    Err(e) => self.fail(e),
                }
            }
        }
        let piece = piece.unwrap_or_else(|| {
            *self.stats.levels.entry(0).or_default() += plain_len;
            (Encoding::Raw, Bytes::copy_from_slice(&self.plain))
        });
        self.stats.uncompressed_bytes += plain_len;
        self.stats.compressed_bytes += piece.1.len() as u64;
        self.plain.clear();
        if let Some(level) = self.next_level.take() {
            if let Some(z) = self.zstd.as_mut() {
                // The frame just ended: the next one starts at `level`.
                match z.set_parameter(CParameter::CompressionLevel(level)) {
                    Ok(()) => self.level = level,
                    Err(e) => self.fail(e),
                }
            }
        }
        self.charge(started);
        if let Some(a) = self.adapt.as_mut() {
            a.plain += plain_len;
        }
        self.adapt_level();
        Some(piece)
    }

    fn charge(&mut self, started: Instant) {
        if let Some(a) = self.adapt.as_mut() {
            a.busy += started.elapsed();
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::warn!("zstd failed, sending the rest uncompressed: {e}");
        self.zstd = None;
        self.bypass = true;
        self.adapt = None;
    }

    /// `auto`: every [`ADAPT_BYTES`] (or [`ADAPT_TIME`]), measures the
    /// current level and decides with [`next_level`]; a change waits at
    /// rises only within [`RISE_WINDOW_BYTES`] (a change restarts the frame),
    /// at most [`MAX_LEVEL_RISES`] times; it goes down whenever needed.
    fn adapt_level(&mut self) {
        let Some(a) = self.adapt.as_mut() else { return };
        let wall = a.since.elapsed().saturating_sub(a.idle);
        if a.plain < ADAPT_BYTES && wall < ADAPT_TIME {
            return;
        }
        let measured = std::mem::replace(a, Adapt::new());
        if measured.plain == 0 || measured.busy.is_zero() || wall.is_zero() {
            return;
        }
        let speed = measured.plain as f64 / measured.busy.as_secs_f64();
        let demand = measured.plain as f64 / wall.as_secs_f64();
        let mut choice = next_level(self.level, speed, demand);
        if choice < self.level && !measured.link_may_starve() {
            choice = self.level;
        }
        let may_rise =
            self.stats.uncompressed_bytes < RISE_WINDOW_BYTES && self.level_rises < MAX_LEVEL_RISES;
        if choice < self.level || (choice > self.level && may_rise) {
            tracing::debug!(
                from = self.level,
                to = choice,
                speed_mb_s = speed / 1e6,
                demand_mb_s = demand / 1e6,
                "compression level"
            );
            self.next_level = Some(choice);
            self.level_rises += u32::from(choice > self.level);
        }
    }
}

/// `auto`'s decision, with hysteresis: a level change restarts the zstd
/// frame (its history is lost), so it only goes down when the compressor
/// at `level` is busy more than [`STARVING_BUSY`] of the time (the link
/// would idle behind it), and only goes up when [`choose_level`] finds a
/// level at least two above; otherwise it stays.
pub fn next_level(level: i32, speed: f64, demand: f64) -> i32 {
    let busy = demand / speed;
    let choice = choose_level(level, speed, demand);
    if busy > STARVING_BUSY || choice >= level + 2 {
        choice
    } else {
        level
    }
}

/// The highest level whose expected speed (from `speed`, measured at
/// `level`) keeps the compressor busy at most [`TARGET_BUSY`] of the time
/// at `demand` plain bytes per second. Moves at most three levels up at
/// once (a level's speed is a guess until it has been measured), any
/// number down to [`AUTO_START_LEVEL`].
pub fn choose_level(level: i32, speed: f64, demand: f64) -> i32 {
    let fits = |l: i32| speed * relative_speed(l) / relative_speed(level) * TARGET_BUSY >= demand;
    let mut best = AUTO_START_LEVEL;
    for l in AUTO_START_LEVEL..=(level + 3).min(MAX_LEVEL) {
        if fits(l) {
            best = l;
        }
    }
    best
}

fn encoder(level: i32, window_log: u32) -> std::io::Result<Encoder<'static>> {
    let mut e = Encoder::new(level)?;
    let window_log = window_log.clamp(WINDOW_LOG, MAX_WINDOW_LOG);
    e.set_parameter(CParameter::WindowLog(window_log))?;
    if window_log > WINDOW_LOG {
        e.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
    }
    Ok(e)
}

/// Feeds `data` to the stream, appending what it outputs to `out`.
fn feed(z: &mut Encoder<'static>, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut input = InBuffer::around(data);
    while input.pos() < data.len() {
        let pos = out.len();
        make_room(out);
        let mut buf = OutBuffer::around_pos(out, pos);
        z.run(&mut input, &mut buf)?;
    }
    Ok(())
}

/// Flushes the stream into `out`, or ends its frame if `end_frame`.
fn close(z: &mut Encoder<'static>, out: &mut Vec<u8>, end_frame: bool) -> std::io::Result<()> {
    loop {
        let pos = out.len();
        make_room(out);
        let mut buf = OutBuffer::around_pos(out, pos);
        let left = if end_frame {
            z.finish(&mut buf, true)?
        } else {
            z.flush(&mut buf)?
        };
        if left == 0 {
            return Ok(());
        }
    }
}

fn make_room(v: &mut Vec<u8>) {
    if v.capacity() - v.len() < 4096 {
        v.reserve(v.capacity().max(64 << 10));
    }
}

/// Decompresses blocks: the connection's zstd stream, and single zstd frames.
pub struct Decompressor {
    zstd: zstd::bulk::Decompressor<'static>,
    stream: Decoder<'static>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Decompressor {
    /// A decompressor that refuses frames needing a window larger than
    /// `2^window_log` bytes.
    pub fn new(window_log: u32) -> std::io::Result<Self> {
        let mut stream = Decoder::new()?;
        let window_log = window_log.clamp(WINDOW_LOG, MAX_WINDOW_LOG);
        stream.set_parameter(DParameter::WindowLogMax(window_log))?;
        Ok(Decompressor {
            zstd: zstd::bulk::Decompressor::new()?,
            stream,
        })
    }

    /// The piece's plain bytes, which must be exactly `len` long. Pieces of
    /// the stream must be given in the order they were sent, every one of
    /// them.
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
            Encoding::ZstdStream => {
                out.clear();
                out.resize(len, 0);
                let n = self.stream_piece(data, &mut out[..])?;
                if n != len {
                    return Err(format!("block decompressed to {n} bytes, expected {len}"));
                }
                Ok(&out[..])
            }
        }
    }

    /// Decodes one piece of the stream into `out`; an error if it holds
    /// more than `out` can take.
    fn stream_piece(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, String> {
        let cap = out.len();
        let mut input = InBuffer::around(data);
        let mut output = OutBuffer::around(out);
        loop {
            let (read, written) = (input.pos(), output.pos());
            self.stream
                .run(&mut input, &mut output)
                .map_err(|e| format!("zstd stream: {e}"))?;
            let progressed = input.pos() > read || output.pos() > written;
            if output.pos() == cap {
                break;
            }
            if !progressed {
                // Input used up and everything it held written out.
                return Ok(output.pos());
            }
        }
        // The block is full: anything more in this piece is an error.
        let n = output.pos();
        let mut extra = [0u8; 1];
        let mut spill = OutBuffer::around(&mut extra[..]);
        loop {
            let read = input.pos();
            self.stream
                .run(&mut input, &mut spill)
                .map_err(|e| format!("zstd stream: {e}"))?;
            if spill.pos() > 0 {
                return Err(format!("block decompresses to more than {cap} bytes"));
            }
            if input.pos() == read {
                return Ok(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        assert_eq!(Compression::default(), Compression::Auto);
        assert_eq!("auto".parse(), Ok(Compression::Auto));
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd(3)));
        assert_eq!("zstd:19".parse(), Ok(Compression::Zstd(19)));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("zstd:20".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        for c in [Compression::Auto, Compression::None, Compression::Zstd(7)] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }

    fn noise_source(mut x: u64) -> impl FnMut() -> Vec<u8> {
        move || {
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    }

    fn piece(c: &mut Compressor, blocks: &[&[u8]]) -> (Encoding, Bytes, Vec<u8>) {
        let mut plain = Vec::new();
        for b in blocks {
            c.push(b);
            plain.extend_from_slice(b);
        }
        assert_eq!(c.piece_len(), plain.len());
        let (enc, bytes) = c.finish().expect("a piece");
        (enc, bytes, plain)
    }

    fn round_trip(c: &mut Compressor, d: &mut Decompressor, blocks: &[&[u8]]) -> (Encoding, usize) {
        let (enc, bytes, plain) = piece(c, blocks);
        let mut out = Vec::new();
        assert_eq!(d.decode(enc, &bytes, plain.len(), &mut out).unwrap(), &plain[..]);
        (enc, bytes.len())
    }

    #[test]
    fn pieces_round_trip_and_refer_to_earlier_pieces() {
        let mut c = Compressor::new(Compression::Zstd(3), WINDOW_LOG).unwrap();
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        assert!(c.finish().is_none(), "no piece without blocks");
        let mut noise = noise_source(0x9e37_79b9_7f4a_7c15);
        let (a, b) = (noise(), noise());
        let text = b"hello ".repeat(700)[..4096].to_vec();
        let (enc, first) = round_trip(&mut c, &mut d, &[&a, &text, &b]);
        assert_eq!(enc, Encoding::ZstdStream);
        // Random data costs a few bytes more than raw the first time, the
        // text almost nothing, and all of it almost nothing once seen.
        assert!(first > 8192 && first < 8192 + 200, "{first}");
        let (_, again) = round_trip(&mut c, &mut d, &[&b, &a]);
        assert!(again < 100, "{again}");
        let stats = c.stats();
        assert_eq!(stats.uncompressed_bytes, 5 * 4096);
        assert_eq!(stats.compressed_bytes, (first + again) as u64);
        assert_eq!(stats.levels.get(&3), Some(&(5 * 4096)));
    }

    #[test]
    fn fewer_flushes_send_fewer_bytes() {
        // Text-like blocks: one piece for 64 of them against one per block.
        let blocks: Vec<Vec<u8>> = (0..64u32)
            .map(|i| {
                let mut b = Vec::new();
                let mut n = i;
                while b.len() < 4096 {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    b.extend_from_slice(
                        format!("line {} of log {i}: status {}\n", n % 997, n % 13).as_bytes(),
                    );
                }
                b.truncate(4096);
                b
            })
            .collect();
        let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
        let mut one = Compressor::new(Compression::Zstd(3), WINDOW_LOG).unwrap();
        let (_, together, _) = piece(&mut one, &refs);
        let mut each = Compressor::new(Compression::Zstd(3), WINDOW_LOG).unwrap();
        let apart: usize = refs.iter().map(|b| piece(&mut each, &[b]).1.len()).sum();
        assert!(together.len() * 100 < apart * 97, "{} vs {apart}", together.len());
    }

    #[test]
    fn a_new_level_starts_a_new_frame_that_still_decodes() {
        let mut c = Compressor::new(Compression::Auto, WINDOW_LOG).unwrap();
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(200);
        round_trip(&mut c, &mut d, &[&text]);
        c.next_level = Some(9);
        round_trip(&mut c, &mut d, &[&text[..1000]]);
        assert_eq!(c.level(), 9);
        let (enc, _) = round_trip(&mut c, &mut d, &[&text, &text[5..]]);
        assert_eq!(enc, Encoding::ZstdStream);
        let levels: Vec<i32> = c.stats().levels.keys().copied().collect();
        assert_eq!(levels, [AUTO_START_LEVEL, 9]);
    }

    #[test]
    fn a_window_larger_than_granted_is_refused() {
        let mut c = Compressor::new(Compression::Zstd(3), LONG_WINDOW_LOG).unwrap();
        let (enc, bytes, plain) = piece(&mut c, &[&b"abc".repeat(2000)]);
        let mut out = Vec::new();
        let mut small = Decompressor::new(WINDOW_LOG).unwrap();
        let err = small.decode(enc, &bytes, plain.len(), &mut out).unwrap_err();
        assert!(err.contains("zstd"), "{err}");
        let mut large = Decompressor::new(LONG_WINDOW_LOG).unwrap();
        assert_eq!(
            large.decode(enc, &bytes, plain.len(), &mut out).unwrap(),
            &plain[..]
        );
    }

    #[test]
    fn long_matching_finds_repeats_beyond_the_short_window() {
        // 12 MiB of 6-bit noise (compressible, so never bypassed), then its
        // first 64 KiB again: past an 8 MiB window.
        let mut noise = noise_source(7);
        let data: Vec<u8> = (0..3 * 1024).flat_map(|_| noise()).map(|b| b & 0x3f).collect();
        let sent = |window_log| {
            let mut c = Compressor::new(Compression::Zstd(1), window_log).unwrap();
            let mut d = Decompressor::new(window_log).unwrap();
            for chunk in data.chunks(PIECE_BYTES) {
                round_trip(&mut c, &mut d, &[chunk]);
            }
            round_trip(&mut c, &mut d, &[&data[..64 << 10]]).1
        };
        let (short, long) = (sent(WINDOW_LOG), sent(LONG_WINDOW_LOG));
        assert!(short > 40 << 10 && long < 1 << 10, "{short} {long}");
    }

    #[test]
    fn stream_pieces_are_bounded_and_checked() {
        let mut c = Compressor::new(Compression::Zstd(3), WINDOW_LOG).unwrap();
        let text = b"hello hello hello hello hello hello hello hello ".repeat(80);
        let (enc, first, _) = piece(&mut c, &[&text]);
        assert_eq!(enc, Encoding::ZstdStream);
        // Claiming a shorter piece must fail rather than overflow.
        let mut out = Vec::new();
        let err = Decompressor::new(WINDOW_LOG)
            .unwrap()
            .decode(enc, &first, 100, &mut out)
            .unwrap_err();
        assert!(err.contains("more than 100"), "{err}");
        // A longer claim fails too: the piece holds fewer bytes.
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        assert!(d.decode(enc, &first, text.len() + 1, &mut out).is_err());
        // Garbage, a truncated piece and a piece out of order are errors.
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        assert!(d
            .decode(Encoding::ZstdStream, b"garbage!", 4096, &mut out)
            .is_err());
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        let cut = &first[..first.len() - 3];
        assert!(d.decode(enc, cut, text.len(), &mut out).is_err());
        let (_, second, _) = piece(&mut c, &[&text]);
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        assert!(d
            .decode(Encoding::ZstdStream, &second, text.len(), &mut out)
            .is_err());
    }

    #[test]
    fn single_frames_still_decode() {
        let text = b"abcd".repeat(1024);
        let frame = zstd::bulk::compress(&text, 3).unwrap();
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            d.decode(Encoding::Zstd, &frame, text.len(), &mut out).unwrap(),
            &text[..]
        );
        assert!(d.decode(Encoding::Zstd, &frame, 100, &mut out).is_err());
        assert!(d.decode(Encoding::Raw, &text, 100, &mut out).is_err());
    }

    #[test]
    fn gives_up_on_incompressible_pieces_and_comes_back() {
        let mut c = Compressor::new(Compression::Zstd(1), WINDOW_LOG).unwrap();
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        let mut noise = noise_source(0x1234_5678_9abc_def1);
        for _ in 0..GIVE_UP_AFTER {
            let n = noise();
            assert_eq!(round_trip(&mut c, &mut d, &[&n]).0, Encoding::ZstdStream);
        }
        // Giving up: pieces bypass the stream until the next try...
        let text = b"abcd".repeat(1024);
        let tries: Vec<Encoding> = (0..RETRY_EVERY)
            .map(|_| round_trip(&mut c, &mut d, &[&text]).0)
            .collect();
        assert_eq!(tries.iter().filter(|e| **e == Encoding::ZstdStream).count(), 1);
        assert_eq!(
            tries.iter().filter(|e| **e == Encoding::Raw).count(),
            RETRY_EVERY as usize - 1
        );
        // ...which succeeds, and every piece is tried again.
        assert_eq!(round_trip(&mut c, &mut d, &[&text]).0, Encoding::ZstdStream);
        assert_eq!(round_trip(&mut c, &mut d, &[&text]).0, Encoding::ZstdStream);
        assert_eq!(
            c.stats().levels.get(&0),
            Some(&(4096 * u64::from(RETRY_EVERY - 1)))
        );
    }

    #[test]
    fn no_compression_sends_raw_pieces() {
        let mut c = Compressor::new(Compression::None, WINDOW_LOG).unwrap();
        let mut d = Decompressor::new(WINDOW_LOG).unwrap();
        assert_eq!(c.level(), 0);
        let text = b"abcd".repeat(1024);
        assert_eq!(round_trip(&mut c, &mut d, &[&text, &text]), (Encoding::Raw, 8192));
    }

    #[test]
    fn auto_levels_follow_the_measured_speeds() {
        // A compressor far faster than the demand climbs, three levels a time.
        assert_eq!(choose_level(3, 300e6, 1e6), 6);
        assert_eq!(choose_level(17, 50e6, 1e6), 19);
        // One that cannot keep up drops as far as needed.
        assert_eq!(choose_level(9, 10e6, 10e6), 6);
        assert_eq!(choose_level(9, 10e6, 100e6), 3);
        // Never below level 3.
        assert_eq!(choose_level(3, 10e6, 100e6), 3);
        // Busy 60% of the time is where it stays.
        assert_eq!(choose_level(6, 100e6, 59e6), 6);
        assert!(choose_level(6, 100e6, 61e6) < 6);
    }

    #[test]
    fn auto_changes_level_only_for_a_clear_gain() {
        // One level up is not worth a new frame...
        assert_eq!(choose_level(3, 100e6, 40e6), 4);
        assert_eq!(next_level(3, 100e6, 40e6), 3);
        // ...two are.
        assert_eq!(next_level(3, 300e6, 1e6), 6);
        // Busy 70%: above the target, but the link is not waiting yet.
        assert_eq!(next_level(6, 100e6, 70e6), 6);
        // Busy 90%: the link would idle, so down at once.
        assert!(next_level(6, 100e6, 90e6) < 6);
    }

    #[test]
    fn auto_does_not_lower_its_level_while_the_link_has_a_backlog() {
        let mut c = Compressor::new(Compression::Auto, WINDOW_LOG).unwrap();
        c.level = 9;
        let starving = |c: &mut Compressor, queued: bool| {
            let a = c.adapt.as_mut().unwrap();
            // 8 MiB compressed in 1 s of a 1.1 s window: busy 90%.
            a.plain = 8 << 20;
            a.busy = Duration::from_secs(1);
            a.since = Instant::now() - Duration::from_millis(1100);
            for _ in 0..4 {
                a.pieces += 1;
                a.backlogged += u32::from(queued);
            }
            c.adapt_level();
            c.next_level.take()
        };
        assert_eq!(starving(&mut c, true), None, "frames were waiting for the link");
        assert!(starving(&mut c, false).is_some_and(|l| l < 9), "the link waited");
    }
}
