//! Progress bars for people (indicatif), drawn on stderr only when it is a
//! terminal and no `--json` summary was asked for, so scripts and tests
//! that capture the output see none of it.
//!
//! The work itself only bumps atomic counters (`cbt_core::Progress`,
//! `cbt_net::Progress`); a small thread samples them a few times a second
//! and draws, so the bar costs the transfer nothing.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cbt_net::{Phase, ProgressSnapshot};

/// How often the counters are sampled.
const TICK: Duration = Duration::from_millis(120);

/// Whether to draw progress: stderr is a terminal and the output is not JSON.
pub fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
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
    /// The detail after the bar ("local 1.2 GiB · received 30 MiB").
    pub detail: String,
}

/// A bar on stderr, redrawn from a sampling function until dropped.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    /// Starts drawing when `show`; otherwise does nothing at all.
    pub fn start(show: bool, sample: impl Fn() -> Sample + Send + 'static) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !show {
            return Bar { stop, thread: None };
        }
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("cbt-progress".into())
            .spawn(move || draw(&flag, &sample))
            .ok();
        Bar { stop, thread }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
            std::thread::sleep(TICK);
            continue;
        }
        if bar.length() != Some(s.total) {
            bar.set_length(s.total);
        }
        bar.set_position(s.done);
        bar.set_prefix(s.stage);
        bar.set_message(s.detail);
        std::thread::sleep(TICK);
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
    Sample {
        stage: "copying",
        total,
        done: (planned * block_size).min(total),
        detail: format!(
            "local {}, from the source {}",
            HumanBytes(p.bytes_local.load(Ordering::Relaxed)),
            HumanBytes(p.bytes_fetched.load(Ordering::Relaxed))
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
        // Not a terminal here: nothing is drawn and dropping returns at once.
        drop(Bar::start(false, Sample::default));
    }
}
