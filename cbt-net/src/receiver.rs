//! The receiving side of a transfer, whoever opened the connection.
//!
//! The receiver keeps a *cursor*: where in its local images it expects the
//! next group of the source to be (just after the last group it found). For
//! each data group it reads the predicted bytes, hashes their blocks and
//! compares the group digest; a match is written at once (the group digest
//! covers full 32-byte block digests, so this check is as strong as a
//! per-block one). Otherwise it asks for that group's block digests
//! (NEED_DIGESTS), looks every block up in the [`Index`] (re-hashing what it
//! reads), and asks for the blocks it still lacks (NEED_BLOCKS). Groups that
//! keep finding nothing locally are fetched whole, without digests. Requests
//! are pipelined: many groups in flight, block requests bounded in bytes,
//! credit returned as data groups complete.
//!
//! Every block reaches the output through the assembly engine
//! ([`cbt_core::Assembly`]): checked once ([`Checked`]: against its own
//! digest, or with the rest of its group against the group digest; blocks
//! of a group fetched whole are held until the whole group checks out),
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
//! writer task ◀─frames─ └────────┘ ─▶ output, manifest
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cbt_core::{
    is_zero, Assembly, AssemblyOptions, BlockRef, BlockSource, BlockSpan, Checked, Digest, Expected, Image,
    Index, IndexOptions, Layout, Location, OutputFormat, RawImage, ZeroDigests,
};
use tokio::sync::mpsc;

use crate::blockmap::{group_digest, BlockMap, GroupSpan};
use crate::compress::Decompressor;
use crate::connection::{Counters, Link, Shutdown};
use crate::error::{Error, Result};
use crate::frame::{Begin, BlockRange, DoneStats, Encoding, Frame, GroupEntry};
use crate::partials::{self, PartialLimits};
use crate::progress::{Phase, Progress};
use crate::resume;
use crate::TransferReport;

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
            window_bytes: 32 << 20,
            progress: None,
            partials: None,
            verify_readback: false,
            in_place: false,
        }
    }
}

/// Receives an image over an established link, verifies it and publishes
/// it at `options.output`. On failure nothing appears there; after a lost
/// connection the partial output is kept for the next attempt.
pub async fn receive(mut link: Link, options: ReceiveOptions, shutdown: Shutdown) -> Result<TransferReport> {
    let started = Instant::now();
    let counters = Arc::clone(&link.counters);
    let peer = link.peer.clone();
    let begin = match link.incoming.recv().await {
        Some(Ok(Frame::Begin(b))) => Ok(b),
        Some(Ok(Frame::Error { message })) => Err(Error::Remote {
            peer: peer.clone(),
            message,
        }),
        Some(Ok(f)) => Err(Error::protocol(
            &peer,
            format!("expected BEGIN, got {}", f.name()),
        )),
        Some(Err(e)) => Err(e),
        None => Err(Error::Closed { peer: peer.clone() }),
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
            let r =
                tokio::task::spawn_blocking(move || run_engine(begin, options, channels, shutdown, peer2))
                    .await
                    .map_err(|e| Error::Config(format!("receiver thread failed: {e}")))
                    .and_then(|r| r)
                    .map(|r| (r, label));
            forward.abort();
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(((layout, stats, digest, output, bytes_written), label)) => {
            link.close(Duration::from_secs(10)).await;
            let mut report = TransferReport::new(
                "receiver",
                &peer,
                label,
                Some(output),
                &layout,
                stats,
                &counters,
                started.elapsed().as_secs_f64(),
                digest,
            );
            report.bytes_written = Some(bytes_written.0);
            report.bytes_cloned = Some(bytes_written.1);
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

type EngineResult = (Layout, DoneStats, Digest, PathBuf, (u64, u64));

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
) -> Result<EngineResult> {
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
    };
    let mut engine = Engine::new(peer, shared, channels, shutdown, &options, layout.block_size())?;
    let result = engine.run();
    engine.stop_predictors();
    let Engine {
        shared,
        stats,
        outgoing,
        ..
    } = engine;
    shared.index.refresh_changed_seeds();
    let Some(Ok(assembly)) = shared.assembly.map(Arc::try_unwrap) else {
        return Err(Error::Config("the output is still in use".into()));
    };
    match result {
        Ok(digest) => {
            let bytes_written = (assembly.bytes_written(), assembly.bytes_cloned());
            let published = assembly.publish()?;
            resume::cleanup(&options.output);
            // The sender waits for this before it reports success.
            let _ = outgoing.blocking_send(Frame::Done(stats));
            Ok((layout, stats, digest, published, bytes_written))
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

/// What the engine and the predictor threads share.
#[derive(Clone)]
struct Shared {
    index: Arc<Index>,
    /// Always there, except while the engine finishes it.
    assembly: Option<Arc<Assembly>>,
    map: BlockMap,
    /// In place: [`OUT_IMAGE`], the output's number among the images
    /// blocks are read from.
    out_image: Option<u32>,
    /// In place: the output itself, read (not through the index).
    out: Option<Arc<dyn Image>>,
}

/// The image number that stands for the output updated in place.
const OUT_IMAGE: u32 = u32::MAX;

impl Shared {
    /// Image `i` of the index, or the output updated in place.
    fn open(&self, i: u32) -> Option<Arc<dyn Image>> {
        match (&self.out, i) {
            (Some(out), OUT_IMAGE) => Some(Arc::clone(out)),
            _ => self.index.open(i).ok(),
        }
    }

    /// Reads the block at `loc` into `buf` and says whether it hashes to
    /// `expected` (a seed probe; the block is checked again by the assembly).
    fn read_verified(&self, loc: Location, buf: &mut [u8], expected: &Digest) -> bool {
        if loc.image != OUT_IMAGE {
            return self.index.read_verified(loc, buf, expected).unwrap_or(false);
        }
        let Some(out) = &self.out else { return false };
        loc.offset
            .checked_add(buf.len() as u64)
            .is_some_and(|e| e <= out.len())
            && out.read_at(buf, loc.offset).is_ok()
            && Digest::of(buf) == *expected
    }

    fn assembly(&self) -> Result<&Assembly> {
        self.assembly
            .as_deref()
            .ok_or_else(|| Error::Config("the output is being verified".into()))
    }
}

/// What the engine waits for.
enum Event {
    /// A frame from the peer (or the connection's end).
    Frame(Result<Frame>),
    /// A predictor's verdict on a job.
    Predicted(PredictJob, Result<Outcome>),
}

/// Check whether a data group is at a predicted local position.
struct PredictJob {
    g: u64,
    seq: u64,
    digest: Digest,
    span: GroupSpan,
    image: u32,
    offset: u64,
}

enum Outcome {
    /// Found and written: its zero and non-zero blocks.
    Matched { zero: u64, local: u64 },
    /// Not there; the digests of the blocks found there, if readable.
    Missed(Option<Vec<Digest>>),
}

/// A predictor thread: checks data groups at their predicted local
/// position and writes those that match.
fn predictor(
    shared: &Shared,
    jobs: &crossbeam_channel::Receiver<PredictJob>,
    events: &mpsc::UnboundedSender<Event>,
) {
    let mut buf = Vec::new();
    let mut zeros = ZeroDigests::default();
    for job in jobs {
        let outcome = check_prediction(shared, &job, &mut buf, &mut zeros);
        if events.send(Event::Predicted(job, outcome)).is_err() {
            break;
        }
    }
}

fn check_prediction(
    shared: &Shared,
    job: &PredictJob,
    buf: &mut Vec<u8>,
    zeros: &mut ZeroDigests,
) -> Result<Outcome> {
    let span = &job.span;
    let Some(image) = shared.open(job.image) else {
        return Ok(Outcome::Missed(None));
    };
    if job
        .offset
        .checked_add(span.len)
        .is_none_or(|end| end > image.len())
    {
        return Ok(Outcome::Missed(None));
    }
    buf.resize(span.len as usize, 0);
    if image.read_at(buf, job.offset).is_err() {
        return Ok(Outcome::Missed(None));
    }
    let lens: Vec<u32> = shared.map.group_blocks_spans(span).map(|b| b.len).collect();
    // The group digest covers the full digests of its blocks: accepting
    // the group accepts every block in it.
    let checked = Checked::together(
        span.first_block,
        span.offset,
        buf,
        &lens,
        |digests| group_digest(digests) == job.digest,
        zeros,
    );
    if !checked.good().first().copied().unwrap_or(false) {
        return Ok(Outcome::Missed(Some(checked.digests().to_vec())));
    }
    // Found in the output itself at its own offset: in place, nothing moves.
    let same_place = shared.out_image == Some(job.image) && job.offset == span.offset;
    let assembly = shared.assembly()?;
    match image.raw_file().filter(|_| !same_place) {
        // From a raw seed: the kernel copies (shares, on XFS and btrfs).
        Some(seed) => {
            for run in checked.runs() {
                assembly.clone_run(&run, seed, job.offset + (run.offset() - span.offset))?;
            }
            assembly.zero_checked(&checked)?;
        }
        None => assembly.place(&checked, &vec![same_place; lens.len()])?,
    }
    let zero = checked.good_zero().filter(|z| *z).count() as u64;
    let local = lens.len() as u64 - zero;
    Ok(Outcome::Matched { zero, local })
}

/// How a group that was not found where predicted is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Ask for its block digests, look them up, ask for what is missing.
    Digests,
    /// Ask for all its blocks at once (when nothing is being found
    /// locally): no digests on the wire, the group digest checks the data.
    Whole,
}

/// A data group waiting for its digests or for missing blocks.
struct Pending {
    seq: u64,
    span: GroupSpan,
    digest: Digest,
    /// Where it was predicted to be, and the digests of the blocks found there.
    predicted: Option<(u32, u64, Vec<Digest>)>,
    /// Whole-group fetch: the blocks received so far, held until the group
    /// digest over all of them can be checked.
    whole: Option<WholeGroup>,
    resolved: bool,
    missing: u32,
}

/// The blocks of a group fetched whole, without their digests: nothing of
/// it is written before the group digest over all of them checks out. (At
/// most the block window's worth of such groups is in flight.)
struct WholeGroup {
    data: Vec<u8>,
    received: Vec<bool>,
}

impl WholeGroup {
    fn new(blocks: u32) -> Self {
        WholeGroup {
            data: Vec::new(),
            received: vec![false; blocks as usize],
        }
    }
}

struct Awaited {
    group: u64,
    /// What the block must hash to (None: fetched as part of a whole group).
    digest: Option<Digest>,
    len: u32,
}

/// Sizes the block window: the delivery rate times twice the shortest
/// time from a NEED_BLOCKS to its first block (about twice the
/// bandwidth-delay product) plus [`WINDOW_SLACK`], plus
/// [`MIN_BLOCK_WINDOW`], at most the configured `window_bytes`.
///
/// Requesting more than the link needs gains nothing: the surplus waits in
/// queues along the path (socket buffers, a shaper, a relay), and every
/// GROUPS and DIGESTS frame the sender sends waits behind it, so the
/// receiver learns which blocks it needs next seconds late, runs out of
/// blocks to request and the link idles. Starting at the floor, the window
/// at least doubles per rate sample while the link keeps up (the rate
/// measured with a window of `w` is at most `w` per latency, and the next
/// window is more than twice that), like TCP's slow start.
struct Pace {
    cap: u64,
    floor: u64,
    /// Shortest time seen from a NEED_BLOCKS to its first block.
    min_latency: Option<Duration>,
    /// The first block of a NEED_BLOCKS being timed, and when it was sent.
    timing: Option<(u64, Instant)>,
    /// The current rate sample: since when, bytes received; `None` while
    /// nothing is requested (idle time must not lower the rate).
    sample: Option<(Instant, u64)>,
    /// Recent delivery rates (bytes of blocks per second).
    rates: VecDeque<f64>,
}

impl Pace {
    fn new(cap: u64) -> Self {
        Pace {
            cap,
            floor: MIN_BLOCK_WINDOW.min(cap),
            min_latency: None,
            timing: None,
            sample: None,
            rates: VecDeque::with_capacity(RATE_SAMPLES + 1),
        }
    }

    /// Bytes of blocks to keep requested.
    fn window(&self) -> u64 {
        let rate = self.rates.iter().copied().fold(0.0, f64::max);
        let latency = self.min_latency.map_or(0.0, |d| d.as_secs_f64());
        let w = self.floor as f64 + rate * (2.0 * latency + WINDOW_SLACK.as_secs_f64());
        (w.min(self.cap as f64) as u64).max(self.floor)
    }

    /// A NEED_BLOCKS starting with `first` goes out; `idle`: nothing was
    /// outstanding before it.
    fn requested(&mut self, first: u64, idle: bool) {
        let now = Instant::now();
        if self.timing.is_none() {
            self.timing = Some((first, now));
        }
        if idle || self.sample.is_none() {
            self.sample = Some((now, 0));
        }
    }

    /// Block `index` of `len` bytes arrived; `idle`: nothing is outstanding
    /// any more.
    fn received(&mut self, index: u64, len: u32, idle: bool) {
        let now = Instant::now();
        if let Some((first, sent)) = self.timing {
            if first == index {
                let latency = now.duration_since(sent);
                self.min_latency = Some(self.min_latency.map_or(latency, |m| m.min(latency)));
                self.timing = None;
            }
        }
        let Some((since, bytes)) = self.sample.as_mut() else {
            return;
        };
        *bytes += u64::from(len);
        let span = now.duration_since(*since);
        let interval = self.min_latency.unwrap_or_default().max(MIN_RATE_INTERVAL);
        if span >= interval || (idle && span >= MIN_RATE_INTERVAL / 4) {
            let rate = *bytes as f64 / span.as_secs_f64();
            if self.rates.len() == RATE_SAMPLES {
                self.rates.pop_front();
            }
            self.rates.push_back(rate);
            self.sample = Some((now, 0));
        }
        if idle {
            self.sample = None;
        }
    }
}

struct Engine {
    peer: String,
    shared: Shared,
    events: mpsc::UnboundedReceiver<Event>,
    outgoing: mpsc::Sender<Frame>,
    shutdown: Shutdown,
    counters: Arc<Counters>,
    progress: Option<Arc<Progress>>,
    block_size: u64,
    /// Jobs for the predictor threads (None once they were stopped).
    jobs: Option<crossbeam_channel::Sender<PredictJob>>,
    predictors: Vec<JoinHandle<()>>,
    /// Predictions asked for and not answered yet.
    predicting: u64,
    /// Most predictions outstanding: the job queue's capacity, so handing
    /// over a job never blocks the engine (frames keep being handled while
    /// the predictors are busy; the rest of the groups wait in `deferred`).
    max_predicting: u64,
    decompressor: Decompressor,
    zeros: ZeroDigests,
    window_groups: u32,
    /// Next group of the stream.
    head_group: u64,
    /// Data groups seen so far (their sequence numbers, for credit).
    data_seq: u64,
    /// Entries received and not processed yet: first group, sequence
    /// number (data groups), entry.
    deferred: VecDeque<(u64, u64, GroupEntry)>,
    /// Predicted local position of the next group to process: (image, offset).
    cursor: Option<(u32, u64)>,
    /// A group whose digests were asked for to find the cursor; data
    /// groups wait for its answer.
    probe: Option<u64>,
    /// Whether local data is worth looking for.
    hopeful: bool,
    /// Groups resolved in a row without finding any block locally.
    miss_streak: u32,
    /// Groups fetched whole since the streak began.
    whole_count: u32,
    /// Groups queued for a whole fetch, oldest first, while their blocks
    /// may still all wait in `want` (see [`Engine::reconsider_whole`]).
    whole_queued: VecDeque<u64>,
    pending: HashMap<u64, Pending>,
    done_seqs: BTreeSet<u64>,
    /// Data groups complete, in order.
    completed: u64,
    credited: u64,
    /// Blocks to request, in order.
    want: VecDeque<u64>,
    /// Every block wanted from the sender (queued or requested).
    awaiting: HashMap<u64, Awaited>,
    /// Requested and not yet received: block → bytes.
    outstanding: HashMap<u64, u32>,
    outstanding_bytes: u64,
    /// How many bytes of blocks to keep requested.
    pace: Pace,
    need_digests: Vec<u64>,
    end: Option<(Digest, u64)>,
    stats: DoneStats,
    rejected: u64,
    buf: Vec<u8>,
    block_buf: Vec<u8>,
}

impl Engine {
    fn new(
        peer: String,
        shared: Shared,
        channels: Channels,
        shutdown: Shutdown,
        options: &ReceiveOptions,
        block_size: u32,
    ) -> Result<Self> {
        let threads = thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_PREDICTORS);
        let (jobs, job_rx) = crossbeam_channel::bounded::<PredictJob>(threads * 4);
        let mut predictors = Vec::with_capacity(threads);
        for i in 0..threads {
            let (shared, rx, tx) = (shared.clone(), job_rx.clone(), channels.events_tx.clone());
            let handle = thread::Builder::new()
                .name(format!("cbt-recv-predict-{i}"))
                .spawn(move || predictor(&shared, &rx, &tx))
                .map_err(|e| Error::Config(format!("cannot start a predictor thread: {e}")))?;
            predictors.push(handle);
        }
        let out_cursor = shared.out_image.map(|i| (i, 0));
        Ok(Engine {
            peer,
            hopeful: shared.index.stats().unique_blocks > 0 || shared.out.is_some(),
            shared,
            events: channels.events,
            outgoing: channels.outgoing,
            shutdown,
            counters: channels.counters,
            progress: options.progress.clone(),
            block_size: u64::from(block_size),
            jobs: Some(jobs),
            predictors,
            predicting: 0,
            max_predicting: (threads * 4) as u64,
            decompressor: Decompressor::new().map_err(|e| Error::Config(format!("zstd: {e}")))?,
            zeros: ZeroDigests::default(),
            window_groups: options.window_groups.max(1),
            head_group: 0,
            data_seq: 0,
            deferred: VecDeque::new(),
            // In place, every group is first looked for at its own offset.
            cursor: out_cursor,
            probe: None,
            miss_streak: 0,
            whole_count: 0,
            whole_queued: VecDeque::new(),
            pending: HashMap::new(),
            done_seqs: BTreeSet::new(),
            completed: 0,
            credited: 0,
            want: VecDeque::new(),
            awaiting: HashMap::new(),
            outstanding: HashMap::new(),
            outstanding_bytes: 0,
            pace: Pace::new(options.window_bytes.max(u64::from(cbt_core::MAX_BLOCK_SIZE) * 2)),
            need_digests: Vec::new(),
            end: None,
            stats: DoneStats::default(),
            rejected: 0,
            buf: Vec::new(),
            block_buf: Vec::new(),
        })
    }

    /// Stops the predictor threads and waits for them.
    fn stop_predictors(&mut self) {
        self.jobs = None;
        for h in self.predictors.drain(..) {
            let _ = h.join();
        }
    }

    fn send(&self, f: Frame) -> Result<()> {
        self.outgoing.blocking_send(f).map_err(|_| Error::Closed {
            peer: self.peer.clone(),
        })
    }

    /// Publishes the counters for a progress display (block counts times
    /// the block size: close enough for people).
    fn publish(&self) {
        if let Some(p) = &self.progress {
            let (s, bs) = (&self.stats, self.block_size);
            Progress::set(
                &p.bytes_done,
                (s.blocks_zero + s.blocks_local + s.blocks_sent) * bs,
            );
            Progress::set(&p.bytes_local, s.blocks_local * bs);
            Progress::set(&p.bytes_moved, s.blocks_sent * bs);
            p.set_wire(&self.counters);
        }
    }

    fn recv(&mut self) -> Result<Event> {
        self.publish();
        if self.shutdown.is_set() {
            return Err(Error::Cancelled);
        }
        self.events.blocking_recv().ok_or_else(|| Error::Closed {
            peer: self.peer.clone(),
        })
    }

    /// The next frame, once no prediction can be outstanding.
    fn recv_frame(&mut self) -> Result<Frame> {
        match self.recv()? {
            Event::Frame(f) => f,
            Event::Predicted(..) => Err(Error::Config("a prediction arrived after the transfer".into())),
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::protocol(&self.peer, reason)
    }

    fn run(&mut self) -> Result<Digest> {
        self.send(Frame::Ready {
            window: self.window_groups,
        })?;
        loop {
            if let Some((_, groups)) = self.end {
                if self.head_group == groups
                    && self.predicting == 0
                    && self.deferred.is_empty()
                    && self.pending.is_empty()
                    && self.awaiting.is_empty()
                {
                    break;
                }
            }
            let frame = match self.recv()? {
                Event::Frame(f) => f?,
                Event::Predicted(job, outcome) => {
                    self.on_prediction(job, outcome)?;
                    self.drain()?;
                    self.flush_requests()?;
                    continue;
                }
            };
            match frame {
                Frame::Groups { entries } => {
                    for e in entries {
                        self.on_entry(e)?;
                    }
                    self.drain()?;
                }
                Frame::Digests { group, digests } => {
                    self.on_digests(group, digests)?;
                    self.drain()?;
                }
                Frame::Block {
                    index,
                    encoding,
                    data,
                } => self.on_block(index, encoding, &data)?,
                Frame::End { image_digest, groups } => {
                    if groups != self.shared.map.groups() || self.head_group != groups || self.end.is_some() {
                        return Err(self.protocol(format!(
                            "END after {} of {} groups (announced {groups})",
                            self.head_group,
                            self.shared.map.groups()
                        )));
                    }
                    self.end = Some((image_digest, groups));
                }
                Frame::Error { message } => {
                    return Err(Error::Remote {
                        peer: self.peer.clone(),
                        message,
                    })
                }
                f => return Err(self.protocol(format!("unexpected {} frame", f.name()))),
            }
            self.flush_requests()?;
        }
        self.publish();
        let Some((expected, _)) = self.end else {
            return Err(Error::Config("stream ended without END".into()));
        };
        self.stop_predictors();
        // Tell the sender every group is in (it shows the verification).
        if self.completed > self.credited {
            self.credited = self.completed;
            self.send(Frame::Credit {
                completed: self.completed,
            })?;
        }

        tracing::info!(
            zero = self.stats.blocks_zero,
            local = self.stats.blocks_local,
            fetched = self.stats.blocks_sent,
            rejected = self.rejected,
            "all blocks written; verifying"
        );
        tracing::debug!(
            window = self.pace.window(),
            min_latency_ms = self.pace.min_latency.map(|d| d.as_secs_f64() * 1000.0),
            "block window"
        );
        if let Some(p) = &self.progress {
            p.set_phase(Phase::Verifying);
        }
        // The predictors are gone: the output is ours alone again. The
        // verified blocks must reproduce the source's image digest.
        let mut assembly = self.shared.assembly.take();
        let verified = match assembly.as_mut().and_then(Arc::get_mut) {
            Some(assembly) => assembly.finish(&expected, &mut Repair { engine: self }),
            None => Err(cbt_core::Error::Config("the output is still shared".into())),
        };
        self.shared.assembly = assembly;
        let repaired = verified.map_err(|e| match e {
            cbt_core::Error::BlockSource { source, .. } => match source.downcast::<Error>() {
                Ok(net) => *net,
                Err(other) => Error::Config(other.to_string()),
            },
            other => Error::Core(other),
        });
        self.stats.blocks_repaired = repaired?;
        self.publish();
        if self.shutdown.is_set() {
            return Err(Error::Cancelled);
        }
        Ok(expected)
    }

    /// Accepts one entry of the group stream (processed by [`Engine::drain`]).
    fn on_entry(&mut self, entry: GroupEntry) -> Result<()> {
        let g = self.head_group;
        let n = match entry {
            GroupEntry::Zeros(n) => n,
            GroupEntry::Data(_) => 1,
        };
        if g.checked_add(n).is_none_or(|end| end > self.shared.map.groups()) {
            return Err(self.protocol("group stream past the end of the image"));
        }
        self.head_group += n;
        let seq = self.data_seq;
        if let GroupEntry::Data(_) = entry {
            self.data_seq += 1;
            if self.data_seq - self.completed > u64::from(self.window_groups) {
                return Err(self.protocol("more data groups in flight than the window allows"));
            }
        }
        self.deferred.push_back((g, seq, entry));
        Ok(())
    }

    /// Processes the entries received, in order; data groups wait while a
    /// probe for the cursor is outstanding, and while the predictors are
    /// busy (the engine never blocks on them: a DIGESTS or BLOCK frame that
    /// arrives meanwhile is handled at once, not after the predictions of
    /// every group received before it).
    fn drain(&mut self) -> Result<()> {
        while let Some(&(g, seq, entry)) = self.deferred.front() {
            match entry {
                GroupEntry::Zeros(n) => {
                    self.deferred.pop_front();
                    self.zero_groups(g, n)?;
                }
                GroupEntry::Data(digest) => {
                    if self.probe.is_some() && self.cursor.is_none() {
                        break;
                    }
                    if self.cursor.is_some() && self.predicting >= self.max_predicting {
                        break;
                    }
                    self.deferred.pop_front();
                    self.data_group(g, seq, digest)?;
                }
            }
        }
        Ok(())
    }

    /// The source offset of the next group to process.
    fn next_offset(&self) -> u64 {
        let map = &self.shared.map;
        let g = self.deferred.front().map_or(self.head_group, |(g, _, _)| *g);
        map.group(g).map_or_else(
            || {
                map.group(map.groups().saturating_sub(1))
                    .map_or(0, |s| s.offset + s.len)
            },
            |s| s.offset,
        )
    }

    fn zero_groups(&mut self, first: u64, n: u64) -> Result<()> {
        let mut bytes = 0;
        for g in first..first + n {
            let span = self
                .shared
                .map
                .group(g)
                .ok_or_else(|| self.protocol("no such group"))?;
            bytes += span.len;
            // Zero blocks stay holes in the output and in the manifest (in
            // place: they are made zeros).
            self.stats.blocks_zero += u64::from(span.blocks);
            let len = u32::try_from(span.len).map_err(|_| self.protocol("group too large"))?;
            self.shared.assembly()?.zero(span.offset, len)?;
        }
        if let Some((_, off)) = self.cursor.as_mut() {
            *off += bytes;
        }
        Ok(())
    }

    fn data_group(&mut self, g: u64, seq: u64, digest: Digest) -> Result<()> {
        let span = self
            .shared
            .map
            .group(g)
            .ok_or_else(|| self.protocol("no such group"))?;
        if let Some((image, offset)) = self.cursor {
            self.cursor = Some((image, offset + span.len));
            let job = PredictJob {
                g,
                seq,
                digest,
                span,
                image,
                offset,
            };
            let jobs = self
                .jobs
                .as_ref()
                .ok_or_else(|| Error::Config("the predictors were stopped".into()))?;
            jobs.send(job)
                .map_err(|_| Error::Config("the predictor threads stopped".into()))?;
            self.predicting += 1;
            return Ok(());
        }
        self.unpredicted(g, seq, digest, span, None)
    }

    /// A predictor's verdict on a data group.
    fn on_prediction(&mut self, job: PredictJob, outcome: Result<Outcome>) -> Result<()> {
        self.predicting -= 1;
        match outcome? {
            Outcome::Matched { zero, local } => {
                self.stats.blocks_zero += zero;
                self.stats.blocks_local += local;
                self.miss_streak = 0;
                self.reconsider_whole();
                self.done_seqs.insert(job.seq);
                self.advance_credit()
            }
            Outcome::Missed(local) => {
                let predicted = local.map(|l| (job.image, job.offset, l));
                self.unpredicted(job.g, job.seq, job.digest, job.span, predicted)
            }
        }
    }

    /// A data group not found where predicted (or with no prediction):
    /// decides how to resolve it and asks the sender.
    fn unpredicted(
        &mut self,
        g: u64,
        seq: u64,
        digest: Digest,
        span: GroupSpan,
        predicted: Option<(u32, u64, Vec<Digest>)>,
    ) -> Result<()> {
        let fetch = if !self.hopeful && self.shared.index.stats().unique_blocks == 0 {
            Fetch::Whole
        } else if self.cursor.is_none() && self.hopeful {
            // Find the cursor first; later data groups wait for the answer.
            self.probe = Some(g);
            Fetch::Digests
        } else if self.miss_streak >= MISS_STREAK {
            self.whole_count += 1;
            if self.whole_count % PROBE_EVERY == 0 {
                Fetch::Digests
            } else {
                Fetch::Whole
            }
        } else {
            Fetch::Digests
        };
        let mut p = Pending {
            seq,
            span,
            digest,
            predicted,
            whole: None,
            resolved: false,
            missing: 0,
        };
        match fetch {
            Fetch::Digests => self.need_digests.push(g),
            Fetch::Whole => {
                p.whole = Some(WholeGroup::new(span.blocks));
                p.missing = span.blocks;
                for (i, b) in self.shared.map.group_blocks_spans(&span).enumerate() {
                    let block = span.first_block + i as u64;
                    self.awaiting.insert(
                        block,
                        Awaited {
                            group: g,
                            digest: None,
                            len: b.len,
                        },
                    );
                    self.want.push_back(block);
                }
                self.whole_queued.push_back(g);
                // Older ones were requested by now: at most a window of
                // data groups waits for its blocks.
                while self.whole_queued.len() > self.window_groups as usize {
                    self.whole_queued.pop_front();
                }
            }
        }
        self.pending.insert(g, p);
        Ok(())
    }

    /// The streak of misses ended (a group was found locally after all):
    /// groups queued for a whole fetch none of whose blocks was requested
    /// yet are resolved through their digests instead, since they may hold
    /// local blocks too. Without this, which groups were fetched whole
    /// depended on the order the predictors answered in, and a run sent
    /// several percent more blocks than `cbt estimate` counted.
    fn reconsider_whole(&mut self) {
        if self.whole_queued.is_empty() {
            return;
        }
        let mut withdrawn: HashSet<u64> = HashSet::new();
        for g in std::mem::take(&mut self.whole_queued) {
            let Some(p) = self.pending.get_mut(&g) else {
                continue;
            };
            let Some(whole) = &p.whole else { continue };
            let (first, end) = (p.span.first_block, p.span.first_block + u64::from(p.span.blocks));
            let untouched =
                whole.received.iter().all(|r| !r) && (first..end).all(|b| !self.outstanding.contains_key(&b));
            if !untouched {
                continue;
            }
            for b in first..end {
                self.awaiting.remove(&b);
                withdrawn.insert(b);
            }
            p.whole = None;
            p.missing = 0;
            self.need_digests.push(g);
        }
        if !withdrawn.is_empty() {
            self.want.retain(|b| !withdrawn.contains(b));
        }
    }

    /// The block digests of a group whose prediction failed.
    fn on_digests(&mut self, g: u64, digests: Vec<Digest>) -> Result<()> {
        let Some(mut p) = self.pending.remove(&g) else {
            return Err(self.protocol(format!("digests of group {g}, which was not asked for")));
        };
        if p.resolved
            || p.whole.is_some()
            || digests.len() != p.span.blocks as usize
            || group_digest(&digests) != p.digest
        {
            return Err(self.protocol(format!("digests of group {g} do not match its group digest")));
        }
        let blocks: Vec<BlockSpan> = self.shared.map.group_blocks_spans(&p.span).collect();
        self.buf.resize(p.span.len as usize, 0);
        let mut good = vec![false; blocks.len()];
        let mut same_place = vec![false; blocks.len()];
        let mut zero_blocks: Vec<(u64, u32)> = Vec::new();
        let mut predicted_hits = 0u32;
        let mut last_hit: Option<(u32, u64, u64)> = None;
        let mut pos = 0usize;
        for (i, (b, d)) in blocks.iter().zip(&digests).enumerate() {
            let range = pos..pos + b.len as usize;
            pos += b.len as usize;
            if *d == self.zeros.get(b.len) {
                self.stats.blocks_zero += 1;
                zero_blocks.push((b.offset, b.len));
                continue;
            }
            // In place, first the output itself at this very offset.
            if let Some(out) = self.shared.out_image {
                let loc = Location {
                    image: out,
                    offset: b.offset,
                };
                if self.shared.read_verified(loc, &mut self.buf[range.clone()], d) {
                    good[i] = true;
                    same_place[i] = true;
                    continue;
                }
            }
            // First where the group was predicted, then anywhere in the index.
            if let Some((img, off, local)) = &p.predicted {
                if local[i] == *d {
                    let loc = Location {
                        image: *img,
                        offset: off + (b.offset - p.span.offset),
                    };
                    if self.shared.read_verified(loc, &mut self.buf[range.clone()], d) {
                        good[i] = true;
                        predicted_hits += 1;
                        continue;
                    }
                }
            }
            if let Some(loc) = self.shared.index.lookup(d) {
                if self.shared.read_verified(loc, &mut self.buf[range.clone()], d) {
                    good[i] = true;
                    last_hit = Some((
                        loc.image,
                        loc.offset + u64::from(b.len),
                        b.offset + u64::from(b.len),
                    ));
                    continue;
                }
                self.rejected += 1;
            }
            let block = p.span.first_block + i as u64;
            self.awaiting.insert(
                block,
                Awaited {
                    group: g,
                    digest: Some(*d),
                    len: b.len,
                },
            );
            self.want.push_back(block);
            p.missing += 1;
        }
        self.stats.blocks_local += good.iter().filter(|g| **g).count() as u64;
        // The seed reads above chose where each block comes from; the one
        // check that lets bytes reach the output is this one.
        let lens: Vec<u32> = blocks.iter().map(|b| b.len).collect();
        let expected: Vec<Option<Digest>> = digests
            .iter()
            .zip(&good)
            .map(|(d, ok)| ok.then_some(*d))
            .collect();
        let checked = Checked::each(
            p.span.first_block,
            p.span.offset,
            &self.buf,
            &lens,
            Expected::Each(&expected),
            &mut self.zeros,
        );
        if checked.good() != good.as_slice() {
            return Err(Error::Config(format!(
                "a seed changed while group {g} was read from it"
            )));
        }
        self.shared.assembly()?.place(&checked, &same_place)?;
        for (offset, len) in zero_blocks {
            self.shared.assembly()?.zero(offset, len)?;
        }

        let hits = predicted_hits > 0 || same_place.contains(&true) || last_hit.is_some();
        if hits {
            self.miss_streak = 0;
            self.whole_count = 0;
            self.hopeful = true;
            self.reconsider_whole();
        } else {
            self.miss_streak += 1;
        }
        if self.probe == Some(g) {
            self.probe = None;
            self.hopeful = hits;
        }
        // Follow the data: if the prediction found nothing but the index
        // did, predict the next groups from the last block found.
        if predicted_hits == 0 {
            if let Some((img, loc_end, src_end)) = last_hit {
                self.cursor = Some((img, loc_end + (self.next_offset() - src_end)));
            }
        }
        p.resolved = true;
        let missing = p.missing;
        self.pending.insert(g, p);
        if missing == 0 {
            self.complete(g)?;
        }
        Ok(())
    }

    /// A block from the sender.
    fn on_block(&mut self, index: u64, encoding: Encoding, data: &[u8]) -> Result<()> {
        let Some(a) = self.awaiting.remove(&index) else {
            return Err(self.protocol(format!("block {index} was not asked for")));
        };
        let Some(len) = self.outstanding.remove(&index) else {
            return Err(self.protocol(format!("block {index} was not asked for yet")));
        };
        self.outstanding_bytes -= u64::from(len);
        self.pace.received(index, len, self.outstanding_bytes == 0);
        let span = self
            .shared
            .map
            .span(index)
            .ok_or_else(|| self.protocol("block index out of range"))?;
        let mut out = std::mem::take(&mut self.block_buf);
        let data = self
            .decompressor
            .decode(encoding, data, a.len as usize, &mut out)
            .map_err(|e| self.protocol(format!("block {index}: {e}")))?;
        if is_zero(data) {
            self.stats.blocks_zero += 1;
        } else {
            self.stats.blocks_sent += 1;
        }
        let p = self
            .pending
            .get_mut(&a.group)
            .ok_or_else(|| Error::Config("lost group".into()))?;
        p.missing -= 1;
        if let Some(digest) = a.digest {
            let checked = Checked::each(
                index,
                span.offset,
                data,
                &[a.len],
                Expected::Digests(&[digest]),
                &mut self.zeros,
            );
            if !checked.good().first().copied().unwrap_or(false) {
                return Err(Error::protocol(
                    &self.peer,
                    format!("block {index} does not match its digest (did the source image change?)"),
                ));
            }
            self.shared.assembly()?.place(&checked, &[])?;
        } else {
            let Some(whole) = p.whole.as_mut() else {
                return Err(Error::protocol(
                    &self.peer,
                    format!("block {index} has no digest to check"),
                ));
            };
            let at = (span.offset - p.span.offset) as usize;
            if whole.data.is_empty() {
                whole.data.resize(p.span.len as usize, 0);
            }
            whole.data[at..at + data.len()].copy_from_slice(data);
            whole.received[(index - p.span.first_block) as usize] = true;
            if p.missing == 0 {
                let lens: Vec<u32> = self
                    .shared
                    .map
                    .group_blocks_spans(&p.span)
                    .map(|b| b.len)
                    .collect();
                let expected = p.digest;
                let checked = Checked::together(
                    p.span.first_block,
                    p.span.offset,
                    &whole.data,
                    &lens,
                    |digests| group_digest(digests) == expected,
                    &mut self.zeros,
                );
                if !checked.good().first().copied().unwrap_or(false) {
                    return Err(Error::protocol(
                        &self.peer,
                        format!(
                            "the blocks of group {} do not match its group digest (did the source image change?)",
                            a.group
                        ),
                    ));
                }
                self.shared.assembly()?.place(&checked, &[])?;
                p.resolved = true;
                p.whole = None;
            }
        }
        self.block_buf = out;
        let complete = p.missing == 0 && p.resolved;
        if complete {
            self.complete(a.group)?;
        }
        Ok(())
    }

    fn complete(&mut self, g: u64) -> Result<()> {
        if let Some(p) = self.pending.remove(&g) {
            self.done_seqs.insert(p.seq);
        }
        self.advance_credit()
    }

    fn advance_credit(&mut self) -> Result<()> {
        while self.done_seqs.first() == Some(&self.completed) {
            self.done_seqs.pop_first();
            self.completed += 1;
        }
        let step = u64::from((self.window_groups / 8).max(1));
        if self.completed >= self.credited + step {
            self.credited = self.completed;
            self.send(Frame::Credit {
                completed: self.completed,
            })?;
        }
        Ok(())
    }

    /// Sends the digest requests gathered and as many block requests as the
    /// byte window allows.
    fn flush_requests(&mut self) -> Result<()> {
        if !self.need_digests.is_empty() {
            let groups = std::mem::take(&mut self.need_digests);
            for chunk in groups.chunks(MAX_RANGES_PER_FRAME) {
                self.send(Frame::NeedDigests {
                    groups: chunk.to_vec(),
                })?;
            }
        }
        // Refill the block window once an eighth of it drained, so requests
        // go out in runs rather than one block per block received.
        let window = self.pace.window();
        if self.want.is_empty() || self.outstanding_bytes + window / 8 > window {
            return Ok(());
        }
        let idle = self.outstanding_bytes == 0;
        if let Some(&first) = self.want.front() {
            self.pace.requested(first, idle);
        }
        let mut ranges: Vec<BlockRange> = Vec::new();
        while self.outstanding_bytes < window {
            let Some(block) = self.want.pop_front() else { break };
            let len = self.awaiting.get(&block).map_or(0, |a| a.len);
            self.outstanding.insert(block, len);
            self.outstanding_bytes += u64::from(len);
            match ranges.last_mut() {
                Some(r) if r.first + u64::from(r.count) == block && r.count < u32::MAX => r.count += 1,
                _ => ranges.push(BlockRange {
                    first: block,
                    count: 1,
                }),
            }
            if ranges.len() >= MAX_RANGES_PER_FRAME {
                self.send(Frame::NeedBlocks {
                    ranges: std::mem::take(&mut ranges),
                })?;
            }
        }
        if !ranges.is_empty() {
            self.send(Frame::NeedBlocks { ranges })?;
        }
        Ok(())
    }
}

/// The image digest of the digests in a manifest, as
/// [`cbt_core::ImageDigester`] computes it over block records.
/// Fetches blocks again over the connection for the readback's repair.
struct Repair<'e> {
    engine: &'e mut Engine,
}

impl BlockSource for Repair<'_> {
    fn name(&self) -> String {
        self.engine.peer.clone()
    }

    fn fetch(
        &mut self,
        wanted: crossbeam_channel::Receiver<BlockRef>,
        deliver: &mut dyn FnMut(BlockRef, &[u8]) -> cbt_core::Result<()>,
    ) -> cbt_core::Result<()> {
        let peer = self.engine.peer.clone();
        let wrap = move |e: Error| cbt_core::Error::BlockSource {
            name: peer.clone(),
            source: Box::new(e),
        };
        let e = &mut *self.engine;
        let mut expected: HashMap<u64, BlockRef> = HashMap::new();
        for b in wanted.iter() {
            let map = &e.shared.map;
            let Some(index) = map
                .index_of(b.offset)
                .filter(|i| map.span(*i).is_some_and(|s| s.len == b.len))
            else {
                return Err(cbt_core::Error::Config(format!(
                    "no block of the layout at offset {}",
                    b.offset
                )));
            };
            expected.insert(index, b);
            e.want.push_back(index);
            e.awaiting.insert(
                index,
                Awaited {
                    group: u64::MAX,
                    digest: Some(b.digest),
                    len: b.len,
                },
            );
        }
        while !expected.is_empty() {
            e.flush_requests().map_err(&wrap)?;
            let frame = e.recv_frame().map_err(&wrap)?;
            let Frame::Block {
                index,
                encoding,
                data,
            } = frame
            else {
                let reason = format!("unexpected {} frame during repair", frame.name());
                return Err(wrap(e.protocol(reason)));
            };
            let (Some(b), Some(_)) = (expected.remove(&index), e.awaiting.remove(&index)) else {
                return Err(wrap(e.protocol(format!("block {index} was not asked for"))));
            };
            if let Some(len) = e.outstanding.remove(&index) {
                e.outstanding_bytes -= u64::from(len);
                e.pace.received(index, len, e.outstanding_bytes == 0);
            }
            let mut out = std::mem::take(&mut e.block_buf);
            let data = e
                .decompressor
                .decode(encoding, &data, b.len as usize, &mut out)
                .map_err(|r| wrap(Error::protocol(&e.peer, format!("block {index}: {r}"))))?;
            e.stats.blocks_sent += 1;
            deliver(b, data)?;
            e.block_buf = out;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_window_follows_the_bandwidth_delay_product() {
        let mut p = Pace::new(32 << 20);
        assert_eq!(p.window(), MIN_BLOCK_WINDOW);
        p.min_latency = Some(Duration::from_millis(20));
        p.rates.push_back(10e6);
        assert!(p.window().abs_diff(MIN_BLOCK_WINDOW + 900_000) < 10);
        p.rates.push_back(1e9);
        assert_eq!(p.window(), 32 << 20);
        assert_eq!(Pace::new(1 << 20).window(), 1 << 20);
    }

    #[test]
    fn block_window_measures_latency_and_rate() {
        let mut p = Pace::new(32 << 20);
        p.requested(10, true);
        p.received(10, 4096, false);
        assert!(p.min_latency.is_some());
        thread::sleep(MIN_RATE_INTERVAL);
        p.received(11, 4096, true);
        assert_eq!(p.rates.len(), 1);
        assert!(p.sample.is_none(), "idle time is not sampled");
        assert!(p.rates[0] > 0.0);
    }
}
