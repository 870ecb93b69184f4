//! Progress on stderr, for people or for programs (`--progress`): a bar
//! (indicatif) drawn only when stderr is a terminal, or JSON lines an
//! orchestrator can parse, so scripts and tests that capture the output
//! see only what they asked for.
//!
//! The work itself only bumps atomic counters (`cbt_core::Progress`,
//! `cbt_net::Progress`); a small thread samples them a few times a second
//! and draws or writes, so progress costs the transfer nothing.
//!
//! A JSON line is one object with these fields (bytes are image bytes
//! unless said otherwise):
//!
//! | field | meaning |
//! | --- | --- |
//! | `phase` | `connecting`, `indexing`, `sending`, `receiving`, `verifying` or `copying` |
//! | `bytes_done` | bytes settled so far (zero, found locally or moved) |
//! | `bytes_total` | the image's size |
//! | `local` | bytes the receiving side found in its seeds (on the sender: everything done that did not cross the link and is not `zero`) |
//! | `zero` | bytes of all-zero blocks (never sent nor looked up; on the sender, whole zero groups) |
//! | `sent` | bytes of the blocks that crossed the link (copy: read from the source) |
//! | `wire` | bytes on the socket, both directions (copy: 0) |
//! | `rate` | `bytes_done` per second over the last few seconds |
//! | `eta_seconds` | seconds left at that rate, `null` while the rate is 0 |
//!
//! Lines come at most [`JSON_INTERVAL`] apart, once the size is known, and
//! a last line when the work ends (`bytes_done == bytes_total` if it
//! succeeded).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use cbt_net::{Phase, ProgressSnapshot};

use crate::cli::ProgressArg;

/// How often the counters are sampled.
const TICK: Duration = Duration::from_millis(120);

/// The shortest time between two JSON lines: a log collector reading
/// stderr gets at most 2 lines a second, whatever the image size.
pub const JSON_INTERVAL: Duration = Duration::from_millis(500);

/// How far back the rate looks: long enough to smooth the bursts of a
/// pipelined transfer, short enough to follow a link that slows down.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The `--progress` choice, resolved once against the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// `auto` on a terminal: a bar unless the command prints a JSON summary
    /// (someone is reading that with a program, not watching).
    BarUnlessJson,
    /// `bar`.
    Bar,
    /// `json`.
    Json,
    /// `none`, or `auto` when stderr is not a terminal.
    None,
}

impl Choice {
    /// Resolves `--progress`: `auto` becomes a bar or nothing depending on
    /// whether stderr is a terminal.
    pub fn resolve(arg: ProgressArg) -> Choice {
        match arg {
            ProgressArg::Auto if std::io::stderr().is_terminal() => Choice::BarUnlessJson,
            ProgressArg::Auto | ProgressArg::None => Choice::None,
            ProgressArg::Bar => Choice::Bar,
            ProgressArg::Json => Choice::Json,
        }
    }
}

/// What one command shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// An indicatif bar.
    Bar,
    /// JSON lines.
    Json,
    /// Nothing.
    None,
}

/// What to show for a command given the configured choice and whether the
/// command prints a JSON summary (`--json`).
pub fn wanted(choice: Choice, json: bool) -> Show {
    match choice {
        Choice::BarUnlessJson if json => Show::None,
        Choice::BarUnlessJson | Choice::Bar => Show::Bar,
        Choice::Json => Show::Json,
        Choice::None => Show::None,
    }
}

/// One sample of the work's counters.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// What is happening ("indexing", "receiving", ...).
    pub stage: &'static str,
    /// Bytes in all (0: not known yet).
    pub total: u64,
    /// Bytes done.
    pub done: u64,
    /// See `local` in the module doc.
    pub local: u64,
    /// See `zero` in the module doc.
    pub zero: u64,
    /// See `sent` in the module doc.
    pub sent: u64,
    /// See `wire` in the module doc.
    pub wire: u64,
    /// The detail after the bar ("local 1.2 GiB · received 30 MiB").
    pub detail: String,
}

/// Progress on stderr, redrawn from a sampling function until dropped.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    /// Starts drawing a bar or writing JSON lines; with [`Show::None`] does
    /// nothing at all.
    pub fn start(show: Show, sample: impl Fn() -> Sample + Send + 'static) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let spawn = |f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name("cbt-progress".into())
                .spawn(f)
                .ok()
        };
        let thread = match show {
            Show::None => None,
            Show::Bar => spawn(Box::new(move || draw(&flag, &sample))),
            Show::Json => spawn(Box::new(move || {
                write_json(&flag, &sample, &mut std::io::stderr())
            })),
        };
        Bar { stop, thread }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Wakes the sampler from its tick so the last line comes now.
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The rate of `bytes_done` over the last [`RATE_WINDOW`].
#[derive(Debug, Default)]
struct Rate {
    points: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Adds a sample and returns bytes per second since the oldest sample
    /// kept (0 before two samples are apart in time). The newest sample
    /// older than the window is kept as the anchor, so that samples far
    /// apart (a stalled sampler) still give a rate.
    fn add(&mut self, at: Instant, done: u64) -> f64 {
        self.points.push_back((at, done));
        while self
            .points
            .get(1)
            .is_some_and(|&(t, _)| at.duration_since(t) >= RATE_WINDOW)
        {
            self.points.pop_front();
        }
        let Some(&(t0, d0)) = self.points.front() else {
            return 0.0;
        };
        let secs = at.duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        done.saturating_sub(d0) as f64 / secs
    }
}

/// One JSON progress line (see the module doc).
#[derive(Debug, Serialize)]
struct Line<'a> {
    phase: &'a str,
    bytes_done: u64,
    bytes_total: u64,
    local: u64,
    zero: u64,
    sent: u64,
    wire: u64,
    rate: u64,
    eta_seconds: Option<u64>,
}

impl<'a> Line<'a> {
    fn new(s: &'a Sample, rate: f64) -> Line<'a> {
        let left = s.total.saturating_sub(s.done);
        let eta_seconds = if left == 0 {
            Some(0)
        } else if rate >= 1.0 {
            Some((left as f64 / rate).ceil() as u64)
        } else {
            None
        };
        Line {
            phase: s.stage,
            bytes_done: s.done,
            bytes_total: s.total,
            local: s.local,
            zero: s.zero,
            sent: s.sent,
            wire: s.wire,
            rate: rate as u64,
            eta_seconds,
        }
    }
}

/// Samples until `stop`, writing a line to `out` when the size is known and
/// [`JSON_INTERVAL`] has passed since the last one, and a last line at the
/// end. Write errors are ignored: a closed stderr must not fail the work.
fn write_json(stop: &AtomicBool, sample: &dyn Fn() -> Sample, out: &mut dyn Write) {
    let mut rate = Rate::default();
    let mut last: Option<Instant> = None;
    loop {
        // Read before sampling, so the last sample is taken after the work
        // has ended and shows its final counters.
        let stopping = stop.load(Ordering::Relaxed);
        let s = sample();
        let now = Instant::now();
        let r = rate.add(now, s.done);
        let due = last.is_none_or(|t| now.duration_since(t) >= JSON_INTERVAL);
        if s.total > 0 && (due || stopping) {
            if let Ok(mut text) = serde_json::to_string(&Line::new(&s, r)) {
                text.push('\n');
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            last = Some(now);
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(TICK);
    }
}

fn draw(stop: &AtomicBool, sample: &dyn Fn() -> Sample) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:20}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    while !stop.load(Ordering::Relaxed) {
        let s = sample();
        if s.total == 0 {
            // Nothing to show before the size is known (still connecting).
            std::thread::park_timeout(TICK);
            continue;
        }
        if bar.length() != Some(s.total) {
            bar.set_length(s.total);
        }
        bar.set_position(s.done);
        bar.set_prefix(s.stage);
        bar.set_message(s.detail);
        std::thread::park_timeout(TICK);
    }
    bar.finish_and_clear();
}

/// The receiver's view of a network transfer.
pub fn receiving(p: &ProgressSnapshot) -> Sample {
    Sample {
        stage: match p.phase {
            Phase::Connecting => "connecting",
            Phase::Indexing => "indexing",
            Phase::Verifying => "verifying",
            _ => "receiving",
        },
        total: p.image_bytes,
        done: p.bytes_done,
        local: p.bytes_local,
        zero: p.bytes_zero,
        sent: p.bytes_moved,
        wire: p.wire_received + p.wire_sent,
        detail: format!(
            "local {}, received {}, wire {}{}",
            HumanBytes(p.bytes_local),
            HumanBytes(p.bytes_moved),
            HumanBytes(p.wire_received + p.wire_sent),
            compression(p)
        ),
    }
}

/// The sender's view of a network transfer.
pub fn sending(p: &ProgressSnapshot) -> Sample {
    Sample {
        stage: match p.phase {
            Phase::Connecting => "connecting",
            Phase::Indexing => "indexing",
            Phase::Verifying => "verifying",
            _ => "sending",
        },
        total: p.image_bytes,
        done: p.bytes_done,
        local: p
            .bytes_done
            .saturating_sub(p.bytes_moved)
            .saturating_sub(p.bytes_zero),
        zero: p.bytes_zero,
        sent: p.bytes_moved,
        wire: p.wire_sent + p.wire_received,
        detail: format!(
            "at the peer {}, sent {}, wire {}{}",
            HumanBytes(p.bytes_done.saturating_sub(p.bytes_moved)),
            HumanBytes(p.bytes_moved),
            HumanBytes(p.wire_sent + p.wire_received),
            compression(p)
        ),
    }
}

/// ", zstd:9 2.31x": the level in use (sender) and the ratio so far.
fn compression(p: &ProgressSnapshot) -> String {
    if p.compressed_bytes == 0 {
        return String::new();
    }
    let ratio = p.uncompressed_bytes as f64 / p.compressed_bytes as f64;
    match p.level {
        0 => format!(", {ratio:.2}x"),
        l => format!(", zstd:{l} {ratio:.2}x"),
    }
}

/// `cbt copy`: blocks planned (zero, local or read from the source).
pub fn copying(p: &cbt_core::Progress, total: u64, block_size: u64) -> Sample {
    let planned = p.blocks_planned.load(Ordering::Relaxed);
    let (local, fetched) = (
        p.bytes_local.load(Ordering::Relaxed),
        p.bytes_fetched.load(Ordering::Relaxed),
    );
    let done = planned.saturating_mul(block_size).min(total);
    Sample {
        stage: "copying",
        total,
        done,
        local,
        zero: done.saturating_sub(local).saturating_sub(fetched),
        sent: fetched,
        wire: 0,
        detail: format!(
            "local {}, from the source {}",
            HumanBytes(local),
            HumanBytes(fetched)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_the_counters() {
        let p = cbt_net::Progress::default();
        p.image_bytes.store(100 << 20, Ordering::Relaxed);
        p.bytes_done.store(60 << 20, Ordering::Relaxed);
        p.bytes_local.store(50 << 20, Ordering::Relaxed);
        p.bytes_moved.store(10 << 20, Ordering::Relaxed);
        let s = receiving(&p.snapshot());
        assert_eq!((s.total, s.done), (100 << 20, 60 << 20));
        assert!(s.detail.contains("local 50.00 MiB"), "{}", s.detail);
        let s = sending(&p.snapshot());
        assert!(s.detail.contains("at the peer 50.00 MiB"), "{}", s.detail);
        assert_eq!((s.local, s.sent), (50 << 20, 10 << 20));
        drop(Bar::start(Show::None, Sample::default));
    }

    #[test]
    fn auto_shows_no_bar_under_a_json_summary() {
        assert_eq!(wanted(Choice::BarUnlessJson, true), Show::None);
        assert_eq!(wanted(Choice::BarUnlessJson, false), Show::Bar);
        // Asked for by name, progress comes whatever the summary.
        assert_eq!(wanted(Choice::Json, true), Show::Json);
        assert_eq!(wanted(Choice::Bar, true), Show::Bar);
        assert_eq!(wanted(Choice::None, false), Show::None);
        assert_eq!(Choice::resolve(ProgressArg::Json), Choice::Json);
        assert_eq!(Choice::resolve(ProgressArg::None), Choice::None);
    }

    #[test]
    fn rate_forgets_samples_older_than_the_window() {
        let t0 = Instant::now();
        let mut r = Rate::default();
        assert_eq!(r.add(t0, 0), 0.0);
        assert_eq!(r.add(t0 + Duration::from_secs(1), 100), 100.0);
        // 7 s in, the first sample is dropped; the second anchors the rate.
        let later = t0 + Duration::from_secs(7);
        assert_eq!(r.add(later, 100 + 6 * 50), 50.0);
    }

    #[test]
    fn lines_carry_eta_only_with_a_rate() {
        let s = Sample {
            stage: "copying",
            total: 1000,
            done: 400,
            ..Sample::default()
        };
        assert_eq!(Line::new(&s, 0.0).eta_seconds, None);
        assert_eq!(Line::new(&s, 100.0).eta_seconds, Some(6));
        let s = Sample { done: 1000, ..s };
        assert_eq!(Line::new(&s, 0.0).eta_seconds, Some(0));
    }

    #[test]
    fn stopped_writer_ends_with_the_final_counters() {
        let stop = AtomicBool::new(true);
        let mut out = Vec::new();
        let sample = || Sample {
            stage: "receiving",
            total: 4096,
            done: 4096,
            ..Sample::default()
        };
        write_json(&stop, &sample, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["phase"], "receiving");
        assert_eq!(lines[0]["bytes_done"], lines[0]["bytes_total"]);
        // Before the size is known there is nothing to say.
        let mut out = Vec::new();
        write_json(&stop, &Sample::default, &mut out);
        assert!(out.is_empty());
    }
}
