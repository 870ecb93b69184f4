//! The receiving side of a transfer, whoever opened the connection.
//!
//! The receiver keeps a *cursor*: where in its local images it expects the
//! next group of the source to be (just after the last group it found). For
//! each data group it reads the predicted bytes, hashes their blocks and
//! compares the group digest; a match is written at once (the group digest
//! covers full 32-byte block digests, so this check is as strong as a
//! per-block one). Otherwise it asks for that group's block keys (NEED_KEYS:
//! 8 bytes per block instead of a 32-byte digest; see `keys`) or, in place,
//! its block digests (NEED_DIGESTS), looks every block up in the [`Index`]
//! (re-hashing what it reads), and asks for the blocks it still lacks
//! (NEED_BLOCKS). Groups that
//! keep finding nothing locally are fetched whole, without digests. Requests
//! are pipelined: many groups in flight, block requests bounded in bytes,
//! credit returned as data groups complete.
//!
//! Every block reaches the output through the assembly engine
//! ([`cbt_core::Assembly`]): checked once ([`Checked`]: against its own
//! digest, or with the rest of its group against the group digest; blocks
//! of a group fetched whole or found through keys are held until the whole
//! group checks out),
//! written with its digest recorded in the manifest. At the end the
//! manifest must reproduce the source's image digest (with
//! `verify_readback`, the output is also re-read and mismatching blocks are
//! fetched again over the same connection); only then is it published.
//!
//! The engine is synchronous and runs on a blocking thread; it owns the
//! protocol state. Checking predictions (read, hash, compare, write) runs on
//! a few predictor threads, whose verdicts come back on the engine's event
//! channel next to the peer's frames; the network tasks only move frames.
//!
//! ```text
//! reader task ─frames─▶ ┌────────┐ ─jobs (bounded)─▶ predictor × N ─┐
//!                       │ engine │ ◀──────────── verdicts ──────────┘
//! writer task ◀─frames─ └────────┘ ─▶ assembly (cbt-core)
//! ```
//!
//! The folder: this file (options, [`receive`], building the index and the
//! assembly, the end of a transfer), `engine` (protocol state and main
//! loop), `groups` (group entries, predictions, digests), `keys` (groups
//! resolved through keys, held groups), `blocks` (blocks,
//! credit, requests), `predict` (predictor threads), `window` (the block
//! window), `shared` (what the engine and predictors share), `repair`
//! (refetching for `--verify-readback`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cbt_core::{
    is_zero, Assembly, AssemblyOptions, BlockRef, BlockSource, BlockSpan, Candidate, Checked, Digest,
    Expected, Image, Index, IndexOptions, Layout, Location, OutputFormat, RawImage, ZeroDigests,
};
use tokio::sync::mpsc;

use crate::blockmap::{group_digest, BlockMap, GroupSpan};
use crate::compress::{Decompressor, MAX_PIECE_BYTES};
use crate::connection::{Counters, Link, Shutdown};
use crate::error::{Error, Result};
use crate::frame::{Begin, BlockRange, DoneStats, Encoding, Frame, GroupEntry, TeleportStage};
use crate::partials::{self, PartialLimits};
use crate::progress::{Phase, Progress};
use crate::resume;
use crate::teleport::{FinishReport, Prepared, TeleportLog, Teleporter};
use crate::TransferReport;

mod blocks;
mod engine;
mod groups;
mod keys;
mod predict;
mod repair;
mod shared;
mod window;

use engine::{Awaited, Engine, Fetch, Pending, WholeGroup};
use predict::{predictor, Event, Outcome, PredictJob};
use repair::Repair;
use shared::{Shared, OUT_IMAGE};
use window::Pace;

/// Largest image accepted from a peer (1 PiB).
const MAX_IMAGE_LEN: u64 = 1 << 50;
/// Most ranges in one NEED_BLOCKS frame.
const MAX_RANGES_PER_FRAME: usize = 16 * 1024;
/// After this many groups in a row without a local block, groups are
/// fetched whole (with one group in [`PROBE_EVERY`] still resolved through
/// its digests, to notice when local data comes back).
const MISS_STREAK: u32 = 8;
const PROBE_EVERY: u32 = 8;
/// Predictor threads at most.
const MAX_PREDICTORS: usize = 4;
/// The block window never shrinks below this many bytes (see [`Pace`]).
const MIN_BLOCK_WINDOW: u64 = 1 << 20;
/// Blocks requested beyond twice the bandwidth-delay product: this long at
/// the delivery rate (room for hiccups at either end, cheap in queueing).
const WINDOW_SLACK: Duration = Duration::from_millis(50);
/// Delivery-rate samples kept; the window follows their maximum.
const RATE_SAMPLES: usize = 8;
/// Shortest delivery-rate sample.
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(25);

/// How to receive.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Where the image is published.
    pub output: PathBuf,
    /// Output format.
    pub format: OutputFormat,
    /// Images and directories to take blocks from.
    pub seeds: Vec<PathBuf>,
    /// Index settings (the block size is taken from the sender).
    pub index: IndexOptions,
    /// Data groups the sender may have in flight.
    pub window_groups: u32,
    /// Bytes of blocks requested and not yet received, at most. The
    /// receiver requests less when that is enough to keep the link busy
    /// (about twice the bandwidth-delay product, at least 1 MiB), so that
    /// DIGESTS and GROUPS do not queue behind megabytes of blocks.
    pub window_bytes: u64,
    /// Live counters for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// Bound the partial outputs kept in the output's directory (the
    /// daemon's data directory) before writing; None: leave them.
    pub partials: Option<PartialLimits>,
    /// Re-read the whole output before publishing (`--verify-readback`).
    pub verify_readback: bool,
    /// Update the output in place when it exists, writing only the blocks
    /// that differ (`--inplace`).
    pub in_place: bool,
    /// log2 of the largest compression window granted to the sender: the
    /// decoder's memory (see `compress`).
    pub max_window_log: u32,
    /// Turns a sender's guest description into seeds (teleporting); None:
    /// descriptions are answered with "no package sources".
    pub teleporter: Option<Arc<dyn Teleporter>>,
}

impl ReceiveOptions {
    /// Defaults for writing `output`.
    pub fn new(output: PathBuf) -> Self {
        ReceiveOptions {
            output,
            format: OutputFormat::Raw,
            seeds: Vec::new(),
            index: IndexOptions::default(),
            window_groups: 1024,
            max_window_log: crate::compress::LONG_WINDOW_LOG,
            window_bytes: 32 << 20,
            progress: None,
            partials: None,
            verify_readback: false,
            in_place: false,
            teleporter: None,
        }
    }
}

/// Receives an image over an established link, verifies it and publishes
/// it at `options.output`. On failure nothing appears there; after a lost
/// connection the partial output is kept for the next attempt.
pub async fn receive(
    mut link: Link,
    mut options: ReceiveOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    let started = Instant::now();
    let counters = Arc::clone(&link.counters);
    let peer = link.peer.clone();
    let mut first = next_frame(&mut link).await;
    let mut teleport: Option<(TeleportLog, Option<FinishReport>)> = None;
    if let Ok(Frame::Describe { dry_run, body }) = first {
        let (log, prepared, next) = prepare_teleport(&mut link, &options, body, dry_run, &shutdown).await;
        if dry_run {
            if let Err(e) = prepared {
                link.fail(e.to_string()).await;
                return Err(e);
            }
            link.close(Duration::from_secs(10)).await;
            let seconds = started.elapsed().as_secs_f64();
            return Ok(TransferReport::dry_run(
                "receiver",
                &peer,
                String::new(),
                log,
                &counters,
                seconds,
            ));
        }
        let finish = match prepared {
            Ok(Some(p)) => {
                options.index.extra_seeds.extend(p.seeds);
                p.finish
            }
            Ok(None) => None,
            Err(e) => {
                link.fail(e.to_string()).await;
                return Err(e);
            }
        };
        teleport = Some((log, finish));
        first = match next {
            Some(f) => f,
            None => next_frame(&mut link).await,
        };
    }
    let begin = match first {
        Ok(Frame::Begin(b)) => Ok(b),
        Ok(Frame::Error { message }) => Err(Error::Remote {
            peer: peer.clone(),
            message,
        }),
        Ok(f) => Err(Error::protocol(
            &peer,
            format!("expected BEGIN, got {}", f.name()),
        )),
        Err(e) => Err(e),
    };
    let (mut log, finish) = match teleport {
        Some((log, finish)) => (Some(log), finish),
        None => (None, None),
    };
    let result = match begin {
        Ok(begin) => {
            // Frames and predictor verdicts share one channel to the engine.
            let (dummy_tx, dummy_rx) = mpsc::unbounded_channel();
            drop(dummy_tx);
            let mut incoming = std::mem::replace(&mut link.incoming, dummy_rx);
            let (events_tx, events) = mpsc::unbounded_channel();
            let frames = events_tx.clone();
            // Set the moment the connection fails, so that stages which do
            // not read frames (building the index) stop at once too.
            let peer_gone = Arc::new(AtomicBool::new(false));
            let gone = Arc::clone(&peer_gone);
            let forward = tokio::spawn(async move {
                while let Some(f) = incoming.recv().await {
                    if f.is_err() {
                        gone.store(true, Ordering::SeqCst);
                    }
                    if frames.send(Event::Frame(f)).is_err() {
                        break;
                    }
                }
                gone.store(true, Ordering::SeqCst);
            });
            let channels = Channels {
                peer_gone,
                events,
                events_tx,
                outgoing: link.outgoing.clone(),
                counters: Arc::clone(&counters),
            };
            let label = begin.label.clone();
            let peer2 = peer.clone();
            let r = tokio::task::spawn_blocking(move || {
                run_engine(begin, options, channels, shutdown, peer2, finish)
            })
            .await
            .map_err(|e| Error::Internal(format!("receiver thread failed: {e}")))
            .and_then(|r| r)
            .map(|r| (r, label));
            forward.abort();
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((r, label)) => {
            link.close(Duration::from_secs(10)).await;
            let mut report = TransferReport::new(
                "receiver",
                &peer,
                label,
                Some(r.output),
                &r.layout,
                r.stats,
                &counters,
                started.elapsed().as_secs_f64(),
                r.digest,
            )
            .with_compression(&r.compression);
            report.bytes_written = Some(r.bytes_written);
            report.blocks_unchanged = Some(r.blocks_unchanged);
            report.bytes_cloned = Some(r.bytes_cloned);
            report.index = Some(r.index);
            if let (Some(log), Some(body)) = (log.as_mut(), r.finished) {
                log.record(TeleportStage::Finished, &body);
            }
            report.teleport = log;
            Ok(report)
        }
        Err(e) => {
            match &e {
                Error::Remote { .. } | Error::Closed { .. } | Error::Io { .. } | Error::Timeout { .. } => {
                    link.close(Duration::from_secs(2)).await
                }
                _ => link.fail(e.to_string()).await,
            }
            Err(e)
        }
    }
}

/// What the engine hands back once the image is published.
struct Received {
    layout: Layout,
    stats: DoneStats,
    digest: Digest,
    output: PathBuf,
    bytes_written: u64,
    blocks_unchanged: u64,
    bytes_cloned: u64,
    compression: crate::compress::CompressionStats,
    /// The teleport's `finished` report, if any.
    finished: Option<Vec<u8>>,
    index: crate::IndexSummary,
}

/// The next frame from the peer, a closed connection as an error.
async fn next_frame(link: &mut Link) -> Result<Frame> {
    match link.incoming.recv().await {
        Some(f) => f,
        None => Err(Error::Closed {
            peer: link.peer.clone(),
        }),
    }
}

/// Answers a DESCRIBE: runs the teleporter (on a blocking thread; its
/// reports go to the sender as they are made) while watching the
/// connection, so that a peer that leaves stops it. Returns the reports,
/// the seeds (None without a teleporter) and a frame read meanwhile.
async fn prepare_teleport(
    link: &mut Link,
    options: &ReceiveOptions,
    body: bytes::Bytes,
    dry_run: bool,
    shutdown: &Shutdown,
) -> (TeleportLog, Result<Option<Prepared>>, Option<Result<Frame>>) {
    let peer = link.peer.clone();
    let mut log = TeleportLog::default();
    let Some(teleporter) = options.teleporter.clone() else {
        let body = crate::teleport::unsupported();
        let stages: &[TeleportStage] = if dry_run {
            &[TeleportStage::Planned]
        } else {
            &[TeleportStage::Planned, TeleportStage::Prepared]
        };
        for &stage in stages {
            log.record(stage, &body);
            let _ = link
                .outgoing
                .send(Frame::Teleport {
                    stage,
                    body: body.clone().into(),
                })
                .await;
        }
        return (log, Ok(None), None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let out = link.outgoing.clone();
    let stop2 = Arc::clone(&stop);
    let mut task = tokio::task::spawn_blocking(move || {
        let mut log = TeleportLog::default();
        let r = teleporter.prepare(&body, dry_run, &stop2, &mut |stage, report| {
            log.record(stage, &report);
            let _ = out.blocking_send(Frame::Teleport {
                stage,
                body: report.into(),
            });
        });
        (r, log)
    });
    let mut stash: Option<Result<Frame>> = None;
    let mut stopping = shutdown.clone();
    let mut shut = false;
    let joined = loop {
        tokio::select! {
            j = &mut task => break j,
            f = link.incoming.recv(), if stash.is_none() => {
                let f = f.unwrap_or_else(|| Err(Error::Closed { peer: peer.clone() }));
                if f.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                stash = Some(f);
            }
            _ = stopping.wait(), if !shut => {
                shut = true;
                stop.store(true, Ordering::SeqCst);
            }
        }
    };
    let result = match joined {
        Ok((r, l)) => {
            log = l;
            r.map(Some).map_err(|reason| Error::Teleport {
                peer: peer.clone(),
                reason,
            })
        }
        Err(e) => Err(Error::Internal(format!("teleport thread failed: {e}"))),
    };
    let result = match (&stash, shut) {
        // A dry run's sender leaves once it has the plan.
        (Some(Err(_)), false) if dry_run && result.is_ok() => {
            stash = None;
            result
        }
        (Some(Err(_)), _) => Err(stash
            .take()
            .and_then(|f| f.err())
            .unwrap_or(Error::Closed { peer })),
        (_, true) => Err(Error::Cancelled),
        _ => result,
    };
    (log, result, stash)
}

/// The engine's connections to the rest of the receiver.
struct Channels {
    /// True once the connection failed or closed.
    peer_gone: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<Event>,
    /// For the predictor threads' verdicts.
    events_tx: mpsc::UnboundedSender<Event>,
    outgoing: mpsc::Sender<Frame>,
    /// The link's byte counters (for progress).
    counters: Arc<Counters>,
}

fn run_engine(
    begin: Begin,
    options: ReceiveOptions,
    channels: Channels,
    shutdown: Shutdown,
    peer: String,
    finish: Option<FinishReport>,
) -> Result<Received> {
    if begin.image_len > MAX_IMAGE_LEN {
        return Err(Error::protocol(
            &peer,
            format!("image of {} bytes is too large", begin.image_len),
        ));
    }
    let layout = Layout::from_regions(begin.image_len, begin.block_size, begin.regions.clone())
        .map_err(|e| Error::protocol(&peer, format!("invalid layout: {e}")))?;
    let map = BlockMap::new(&layout, begin.group_blocks);
    if let Some(p) = &options.progress {
        Progress::set(&p.image_bytes, layout.len());
        p.set_phase(Phase::Indexing);
    }
    if options.output.is_dir() {
        return Err(Error::Config(format!(
            "{}: is a directory",
            options.output.display()
        )));
    }

    if let (Some(limits), Some(dir)) = (&options.partials, options.output.parent()) {
        partials::make_room(dir, &options.output, layout.len(), limits);
    }
    // Seeds: the roots given, earlier partial outputs, and the previous
    // version of the output itself.
    let mut seeds = options.seeds.clone();
    seeds.extend(resume::prepare(&options.output)?);
    // Updated in place, the output is not hashed up front: each group is
    // first predicted at its own offset in it, which reads and checks it
    // once, as the transfer goes.
    if options.output.is_file() && !options.in_place {
        seeds.push(options.output.clone());
    }
    let mut index_options = options.index.clone();
    index_options.block_size = layout.block_size();
    index_options.stop = Some(Arc::clone(&channels.peer_gone));
    let index = match Index::build(&seeds, &index_options) {
        Ok(i) => Arc::new(i),
        Err(_) if channels.peer_gone.load(Ordering::SeqCst) => return Err(Error::Closed { peer }),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        images = index.stats().images,
        unique_blocks = index.stats().unique_blocks,
        "seed index ready"
    );
    if let Some(p) = &options.progress {
        p.set_phase(Phase::Transferring);
    }

    let assembly = Arc::new(Assembly::create(
        &options.output,
        &layout,
        &AssemblyOptions {
            format: options.format,
            durable: true,
            verify_readback: options.verify_readback,
            in_place: options.in_place,
        },
    )?);
    // In place, blocks the output already holds at their own offset are
    // recorded, not rewritten.
    let out: Option<Arc<dyn Image>> = if assembly.is_in_place() {
        Some(Arc::new(RawImage::open(&options.output)?))
    } else {
        None
    };
    let shared = Shared {
        index,
        assembly: Some(assembly),
        map,
        out_image: out.as_ref().map(|_| OUT_IMAGE),
        out,
        unchanged: Default::default(),
    };
    let window_log = u32::from(begin.window_log).min(
        options
            .max_window_log
            .clamp(crate::compress::WINDOW_LOG, crate::compress::MAX_WINDOW_LOG),
    );
    let mut engine = Engine::new(
        peer,
        shared,
        channels,
        shutdown,
        &options,
        layout.block_size(),
        window_log,
    )?;
    let result = engine.run();
    engine.stop_predictors();
    let Engine {
        shared,
        stats,
        outgoing,
        compression,
        ..
    } = engine;
    shared.index.refresh_changed_seeds();
    let index_summary = crate::IndexSummary::from(shared.index.stats());
    let finished = match (&result, finish) {
        (Ok(_), Some(f)) => Some(f(&shared.index)),
        _ => None,
    };
    let blocks_unchanged = shared.unchanged.load(std::sync::atomic::Ordering::Relaxed);
    let Some(Ok(assembly)) = shared.assembly.map(Arc::try_unwrap) else {
        return Err(Error::Internal("the output is still in use".into()));
    };
    match result {
        Ok(digest) => {
            let (bytes_written, bytes_cloned) = (assembly.bytes_written(), assembly.bytes_cloned());
            let published = assembly.publish()?;
            resume::cleanup(&options.output);
            if let Some(body) = &finished {
                let _ = outgoing.blocking_send(Frame::Teleport {
                    stage: TeleportStage::Finished,
                    body: body.clone().into(),
                });
            }
            // The sender waits for this before it reports success.
            let _ = outgoing.blocking_send(Frame::Done(stats));
            Ok(Received {
                layout,
                stats,
                digest,
                output: published,
                bytes_written,
                blocks_unchanged,
                bytes_cloned,
                compression,
                finished,
                index: index_summary,
            })
        }
        Err(e) => {
            if !(e.is_connection_loss() || matches!(e, Error::Remote { .. })) {
                // A verification failure, a full disk, a protocol error: what
                // was written is not worth keeping (and a partial left by a
                // full disk would make every later push fail the same way).
                assembly.discard();
            } else {
                // Keep what arrived for the next attempt.
                let kept = assembly.keep();
                tracing::info!("partial output kept at {} for a later resume", kept.display());
            }
            Err(e)
        }
    }
}
