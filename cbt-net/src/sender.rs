//! The sending side of a transfer, whoever opened the connection.
//!
//! ```text
//!  image ─▶ hasher thread (hash_image, groups of G blocks) ──bounded──▶ main loop ─┐
//!                                                                                 ├─▶ writer task ─▶ socket
//!  NEED_BLOCKS ─▶ block server thread (read, zstd) ─────────────────bounded──────┘
//!  socket ─▶ reader task ─▶ main loop (CREDIT, NEED_DIGESTS, NEED_BLOCKS, DONE)
//! ```
//!
//! The main loop streams one 32-byte digest per data group and a count per
//! run of zero groups, never more data groups ahead of the receiver's
//! credit than its window allows. It keeps the block digests of the groups
//! in that window (and only those) to answer NEED_DIGESTS, so memory stays
//! bounded whatever the image size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cbt_core::{hash_image, BlockRecord, Digest, HashOptions, HashSummary, Image, Layout, ZeroDigests};
use tokio::sync::mpsc;

use crate::blockmap::{group_digest, BlockMap};
use crate::compress::{
    Compression, CompressionStats, Compressor, LONG_WINDOW_LOG, MAX_PIECE_BYTES, PIECE_BYTES,
};
use crate::connection::Link;
use crate::error::{Error, Result};
use crate::frame::{Begin, BlockRange, DoneStats, Frame, GroupEntry, TeleportStage, MAX_PIECE_RANGES};
use crate::progress::{Phase, Progress};
use crate::teleport::{Description, ReportSink, TeleportLog, MAX_DESCRIPTION_BYTES};
use crate::TransferReport;

/// Blocks per group: one 32-byte digest covers 64 blocks (256 KiB at the
/// default block size), 0.013% of the image on the wire.
pub const GROUP_BLOCKS: u16 = 64;
/// The largest window a receiver may grant (bounds the sender's memory).
const MAX_WINDOW: u32 = 1 << 14;
/// Most entries in one GROUPS frame.
const MAX_ENTRIES_PER_FRAME: usize = 16 * 1024;
/// Bytes read from the image at once when serving blocks.
const READ_CHUNK: usize = 1 << 20;
/// Most block requests a receiver may have queued at the sender.
const MAX_QUEUED_BLOCKS: u64 = 1 << 22;

/// How to send.
#[derive(Clone)]
pub struct SendOptions {
    /// Block size of the layout.
    pub block_size: u32,
    /// Hasher threads (0: one per core).
    pub threads: usize,
    /// Compression of the blocks sent.
    pub compression: Compression,
    /// Live counters for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// A teleport: the guest description to send before the image.
    pub description: Option<Description>,
    /// Called with each teleport report of the receiver as it arrives.
    pub on_teleport: Option<ReportSink>,
}

impl std::fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendOptions")
            .field("block_size", &self.block_size)
            .field("threads", &self.threads)
            .field("compression", &self.compression)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            block_size: cbt_core::DEFAULT_BLOCK_SIZE,
            threads: 0,
            compression: Compression::default(),
            progress: None,
            description: None,
            on_teleport: None,
        }
    }
}

/// From the hasher thread.
enum Hashed {
    Group { zero: bool, digests: Vec<Digest> },
    End(HashSummary),
    Failed(cbt_core::Error),
}

/// Totals of the block server thread.
#[derive(Default)]
struct Served {
    blocks: AtomicU64,
    bytes: AtomicU64,
    wire_bytes: AtomicU64,
}

/// Sends `image` over an established link and waits until the receiver
/// has verified and published it.
pub async fn send(mut link: Link, image: Arc<dyn Image>, options: &SendOptions) -> Result<TransferReport> {
    let started = Instant::now();
    let counters = Arc::clone(&link.counters);
    let peer = link.peer.clone();
    let label = image.label();
    let mut log = Reports::new(options);
    let result = match &options.description {
        Some(d) => describe(&mut link, d, &mut log).await,
        None => Ok(()),
    };
    if result.is_ok() && options.description.as_ref().is_some_and(|d| d.dry_run) {
        link.close(Duration::from_secs(10)).await;
        let log = log.log.unwrap_or_default();
        let seconds = started.elapsed().as_secs_f64();
        return Ok(TransferReport::dry_run(
            "sender", &peer, label, log, &counters, seconds,
        ));
    }
    let result = match result {
        Ok(()) => run(&mut link, image, options, &mut log).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((layout, stats, digest, compression)) => {
            link.close(Duration::from_secs(10)).await;
            let mut report = TransferReport::new(
                "sender",
                &peer,
                label,
                None,
                &layout,
                stats,
                &counters,
                started.elapsed().as_secs_f64(),
                digest,
            )
            .with_compression(&compression);
            report.teleport = log.log;
            Ok(report)
        }
        Err(e) => {
            let e = match e {
                Error::Closed { .. } | Error::Io { .. } => {
                    match link.peer_error(Duration::from_secs(2)).await {
                        Some(message) => Error::Remote { peer, message },
                        None => e,
                    }
                }
                e => e,
            };
            match &e {
                Error::Remote { .. } | Error::Closed { .. } | Error::Io { .. } => {
                    link.close(Duration::from_secs(2)).await
                }
                _ => link.fail(e.to_string()).await,
            }
            Err(e)
        }
    }
}

/// The receiver's teleport reports, kept and passed on as they arrive.
struct Reports {
    log: Option<TeleportLog>,
    sink: Option<ReportSink>,
}

impl Reports {
    fn new(options: &SendOptions) -> Reports {
        Reports {
            log: options.description.as_ref().map(|d| TeleportLog {
                describe_seconds: Some(d.seconds),
                ..TeleportLog::default()
            }),
            sink: options.on_teleport.clone(),
        }
    }

    fn record(&mut self, peer: &str, stage: TeleportStage, body: &[u8]) -> Result<()> {
        let Some(log) = self.log.as_mut() else {
            return Err(Error::protocol(peer, "TELEPORT report without a description"));
        };
        log.record(stage, body);
        if let Some(sink) = &self.sink {
            let value = match stage {
                TeleportStage::Planned => &log.plan,
                TeleportStage::Prepared => &log.prepared,
                TeleportStage::Finished => &log.finished,
            };
            if let Some(v) = value {
                sink(stage, v);
            }
        }
        Ok(())
    }
}

/// Sends the guest description; in a dry run, waits for the plan.
async fn describe(link: &mut Link, d: &Description, log: &mut Reports) -> Result<()> {
    let peer = link.peer.clone();
    if d.body.len() > MAX_DESCRIPTION_BYTES {
        return Err(Error::Config(format!(
            "the guest description is {} bytes, more than the {} a peer accepts",
            d.body.len(),
            MAX_DESCRIPTION_BYTES
        )));
    }
    link.outgoing
        .send(Frame::Describe {
            dry_run: d.dry_run,
            body: d.body.clone(),
        })
        .await
        .map_err(|_| Error::Closed { peer: peer.clone() })?;
    if !d.dry_run {
        return Ok(());
    }
    loop {
        match link.incoming.recv().await {
            Some(Ok(Frame::Teleport { stage, body })) => {
                log.record(&peer, stage, &body)?;
                if stage == TeleportStage::Planned {
                    return Ok(());
                }
            }
            Some(Ok(Frame::Error { message })) => return Err(Error::Remote { peer, message }),
            Some(Ok(f)) => {
                return Err(Error::protocol(
                    &peer,
                    format!("expected TELEPORT, got {}", f.name()),
                ))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(Error::Closed { peer }),
        }
    }
}

async fn run(
    link: &mut Link,
    image: Arc<dyn Image>,
    options: &SendOptions,
    log: &mut Reports,
) -> Result<(Layout, DoneStats, Digest, CompressionStats)> {
    let peer = link.peer.clone();
    let bs = options.block_size;
    let img = Arc::clone(&image);
    let layout = tokio::task::spawn_blocking(move || Layout::detect(img.as_ref(), bs))
        .await
        .map_err(|e| Error::Internal(format!("layout task failed: {e}")))??;
    let map = BlockMap::new(&layout, GROUP_BLOCKS);
    let closed = || Error::Closed { peer: peer.clone() };
    let progress = options.progress.clone();
    if let Some(p) = &progress {
        Progress::set(&p.image_bytes, layout.len());
        p.set_phase(Phase::Indexing);
    }
    link.outgoing
        .send(Frame::Begin(Begin {
            image_len: layout.len(),
            block_size: layout.block_size(),
            group_blocks: GROUP_BLOCKS,
            regions: layout.regions().to_vec(),
            label: image.label(),
            window_log: match options.compression {
                Compression::None => 0,
                _ => LONG_WINDOW_LOG as u8,
            },
        }))
        .await
        .map_err(|_| closed())?;

    // Hash while the receiver builds its index.
    let (group_tx, mut groups) = mpsc::channel::<Hashed>(256);
    {
        let (image, layout) = (Arc::clone(&image), layout.clone());
        let threads = options.threads;
        thread::Builder::new()
            .name("cbt-send-hash".into())
            .spawn(move || hash_groups(image.as_ref(), &layout, threads, group_tx))
            .map_err(|e| Error::Internal(format!("cannot start the hasher thread: {e}")))?;
    }

    // A teleporting receiver reports while it prepares its seeds.
    let ready = loop {
        match link.incoming.recv().await {
            Some(Ok(Frame::Teleport { stage, body })) => log.record(&peer, stage, &body)?,
            other => break other,
        }
    };
    let (window, window_log) = match ready {
        Some(Ok(Frame::Ready { window, window_log })) => {
            if u32::from(window_log) > crate::compress::MAX_WINDOW_LOG {
                return Err(Error::protocol(
                    &peer,
                    format!("compression window 2^{window_log} granted"),
                ));
            }
            (window.clamp(1, MAX_WINDOW), u32::from(window_log))
        }
        Some(Ok(Frame::Error { message })) => return Err(Error::Remote { peer, message }),
        Some(Ok(f)) => {
            return Err(Error::protocol(
                &peer,
                format!("expected READY, got {}", f.name()),
            ))
        }
        Some(Err(e)) => return Err(e),
        None => return Err(closed()),
    };
    tracing::debug!(%peer, window, window_log, "receiver ready");
    // Serve block requests on their own thread.
    let (req_tx, req_rx) = crossbeam_channel::unbounded::<BlockRange>();
    let (fail_tx, mut failures) = mpsc::unbounded_channel::<Error>();
    let served = Arc::new(Served::default());
    let queued = Arc::new(AtomicU64::new(0));
    let block_server = {
        let (image, map, out) = (Arc::clone(&image), map.clone(), link.outgoing.clone());
        let counters = Arc::clone(&link.counters);
        let (served, queued, compression) = (Arc::clone(&served), Arc::clone(&queued), options.compression);
        let progress = progress.clone();
        thread::Builder::new()
            .name("cbt-send-blocks".into())
            .spawn(move || {
                let mut compressor = match Compressor::new(compression, window_log) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = fail_tx.send(Error::Internal(format!("cannot start the compressor: {e}")));
                        return CompressionStats::default();
                    }
                };
                let server = BlockServer {
                    image: image.as_ref(),
                    map: &map,
                    out: &out,
                    served: &served,
                    queued: &queued,
                    progress: progress.as_deref(),
                    link: &counters,
                };
                if let Err(e) = server.run(&mut compressor, &req_rx) {
                    let _ = fail_tx.send(e);
                }
                compressor.stats().clone()
            })
            .map_err(|e| Error::Internal(format!("cannot start the block thread: {e}")))?
    };

    if let Some(p) = &progress {
        p.set_phase(Phase::Transferring);
    }

    // Data groups sent and not yet completed by the receiver, oldest first.
    let mut pending: VecDeque<(u64, Vec<Digest>)> = VecDeque::new();
    let (mut data_sent, mut completed) = (0u64, 0u64);
    let mut next_group = 0u64;
    let mut summary: Option<HashSummary> = None;
    // Zero groups not yet behind the receiver's progress, in order, and the
    // bytes of those behind it (progress counts zeros apart from local).
    let mut zero_groups: VecDeque<u64> = VecDeque::new();
    let mut zero_done = 0u64;
    let stats = loop {
        if let Some(p) = &progress {
            // The receiver's in-order progress: the first group not credited yet.
            let first_open = pending.front().map_or(next_group, |(g, _)| *g);
            let done = map.group(first_open).map_or(layout.len(), |s| s.offset);
            while let Some(&g) = zero_groups.front().filter(|g| **g < first_open) {
                zero_groups.pop_front();
                zero_done += map.group(g).map_or(0, |s| s.len);
            }
            Progress::set(&p.bytes_zero, zero_done);
            Progress::set(&p.bytes_done, done);
            Progress::set(&p.bytes_moved, served.bytes.load(Ordering::Relaxed));
            p.set_wire(&link.counters);
            if summary.is_some() && pending.is_empty() {
                p.set_phase(Phase::Verifying);
            }
        }
        let credit = summary.is_none() && data_sent - completed < u64::from(window);
        tokio::select! {
            biased;
            msg = link.incoming.recv() => match msg {
                Some(Ok(Frame::Credit { completed: c })) => {
                    if c < completed || c > data_sent {
                        return Err(Error::protocol(&peer, format!("credit {c} outside {completed}..={data_sent}")));
                    }
                    for _ in completed..c {
                        pending.pop_front();
                    }
                    completed = c;
                }
                Some(Ok(Frame::NeedDigests { groups: wanted })) => {
                    answer_lookups(&link.outgoing, &peer, &pending, &wanted, Lookup::Digests).await?;
                }
                Some(Ok(Frame::NeedKeys { groups: wanted })) => {
                    answer_lookups(&link.outgoing, &peer, &pending, &wanted, Lookup::Keys).await?;
                }
                Some(Ok(Frame::NeedBlocks { ranges })) => {
                    for r in ranges {
                        if r.first.checked_add(u64::from(r.count)).is_none_or(|end| end > map.blocks()) {
                            return Err(Error::protocol(&peer, format!("block range {}+{} is outside the image", r.first, r.count)));
                        }
                        if queued.fetch_add(u64::from(r.count), Ordering::Relaxed) > MAX_QUEUED_BLOCKS {
                            return Err(Error::protocol(&peer, "too many blocks requested at once"));
                        }
                        req_tx.send(r).map_err(|_| Error::Internal("block thread stopped".into()))?;
                    }
                }
                Some(Ok(Frame::Done(stats))) => break stats,
                Some(Ok(Frame::Teleport { stage: stage @ TeleportStage::Finished, body })) => log.record(&peer, stage, &body)?,
                Some(Ok(Frame::Error { message })) => return Err(Error::Remote { peer, message }),
                Some(Ok(f)) => return Err(Error::protocol(&peer, format!("unexpected {} frame", f.name()))),
                Some(Err(e)) => return Err(e),
                None => return Err(closed()),
            },
            Some(e) = failures.recv() => return Err(e),
            first = groups.recv(), if credit => {
                let mut entries = Vec::new();
                let mut zero_run = 0u64;
                let mut item = first;
                loop {
                    match item {
                        Some(Hashed::Group { zero: true, .. }) => {
                            zero_run += 1;
                            zero_groups.push_back(next_group);
                        }
                        Some(Hashed::Group { zero: false, digests }) => {
                            if zero_run > 0 {
                                entries.push(GroupEntry::Zeros(zero_run));
                                zero_run = 0;
                            }
                            entries.push(GroupEntry::Data(group_digest(&digests)));
                            pending.push_back((next_group, digests));
                            data_sent += 1;
                        }
                        Some(Hashed::End(s)) => {
                            summary = Some(s);
                            break;
                        }
                        Some(Hashed::Failed(e)) => return Err(e.into()),
                        None => return Err(Error::Internal("the hasher thread stopped".into())),
                    }
                    next_group += 1;
                    if entries.len() >= MAX_ENTRIES_PER_FRAME || data_sent - completed >= u64::from(window) {
                        break;
                    }
                    match groups.try_recv() {
                        Ok(h) => item = Some(h),
                        Err(_) => break,
                    }
                }
                if zero_run > 0 {
                    entries.push(GroupEntry::Zeros(zero_run));
                }
                if !entries.is_empty() {
                    link.outgoing.send(Frame::Groups { entries }).await.map_err(|_| closed())?;
                }
                if let Some(s) = &summary {
                    if next_group != map.groups() {
                        return Err(Error::Internal(format!("hashed {next_group} groups of {}", map.groups())));
                    }
                    link.outgoing
                        .send(Frame::End { image_digest: s.image_digest, groups: next_group })
                        .await
                        .map_err(|_| closed())?;
                }
            }
        }
    };
    if let Some(p) = &progress {
        // The receiver's count: zero blocks inside data groups too, so the
        // last progress line agrees with the report.
        Progress::set(&p.bytes_zero, stats.blocks_zero * u64::from(layout.block_size()));
    }
    drop(req_tx);
    let compression = tokio::task::spawn_blocking(move || block_server.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let digest = summary
        .map(|s| s.image_digest)
        .ok_or_else(|| Error::protocol(&peer, "DONE before END"))?;
    tracing::info!(
        %peer,
        blocks = served.blocks.load(Ordering::Relaxed),
        bytes = served.bytes.load(Ordering::Relaxed),
        wire = served.wire_bytes.load(Ordering::Relaxed),
        levels = ?compression.levels,
        "blocks served"
    );
    Ok((layout, stats, digest, compression))
}

/// The hasher thread: hashes the image and hands over one message per group.
fn hash_groups(image: &dyn Image, layout: &Layout, threads: usize, out: mpsc::Sender<Hashed>) {
    let per_group = usize::from(GROUP_BLOCKS);
    let mut zeros = ZeroDigests::default();
    let mut current: Vec<Digest> = Vec::with_capacity(per_group);
    let mut all_zero = true;
    let stopped = || cbt_core::Error::Stopped("transfer stopped".into());
    let result = hash_image(
        image,
        layout,
        &HashOptions {
            threads,
            ..Default::default()
        },
        |records: &[BlockRecord]| {
            for r in records {
                all_zero &= r.kind == cbt_core::BlockKind::Zero;
                current.push(r.digest(&mut zeros));
                if current.len() == per_group {
                    let digests = std::mem::replace(&mut current, Vec::with_capacity(per_group));
                    let zero = std::mem::replace(&mut all_zero, true);
                    let digests = if zero { Vec::new() } else { digests };
                    out.blocking_send(Hashed::Group { zero, digests })
                        .map_err(|_| stopped())?;
                }
            }
            Ok(())
        },
    );
    let msg = match result {
        Ok(summary) => {
            if !current.is_empty() {
                let digests = if all_zero { Vec::new() } else { current };
                if out
                    .blocking_send(Hashed::Group {
                        zero: all_zero,
                        digests,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Hashed::End(summary)
        }
        Err(e) => Hashed::Failed(e),
    };
    let _ = out.blocking_send(msg);
}

/// The block server thread: reads the requested blocks (contiguous ones
/// with one read) and sends them in pieces of the compressed stream.
struct BlockServer<'a> {
    image: &'a dyn Image,
    map: &'a BlockMap,
    out: &'a mpsc::Sender<Frame>,
    served: &'a Served,
    queued: &'a AtomicU64,
    progress: Option<&'a Progress>,
    link: &'a crate::Counters,
}

/// The blocks of the piece being built.
#[derive(Default)]
struct Piece {
    ranges: Vec<BlockRange>,
    blocks: u64,
}

impl BlockServer<'_> {
    fn run(
        &self,
        compressor: &mut Compressor,
        requests: &crossbeam_channel::Receiver<BlockRange>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let mut piece = Piece::default();
        loop {
            // A piece goes out when nothing more is waiting to join it, so
            // the link never idles behind a half-built piece.
            let range = match requests.try_recv() {
                Ok(r) => r,
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    if !self.flush(compressor, &mut piece) {
                        return Ok(());
                    }
                    let waiting = Instant::now();
                    match requests.recv() {
                        Ok(r) => {
                            compressor.waited(waiting.elapsed());
                            r
                        }
                        Err(_) => return Ok(()),
                    }
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            };
            if !self.serve(range, compressor, &mut piece, &mut buf)? {
                return Ok(());
            }
        }
        self.flush(compressor, &mut piece);
        Ok(())
    }

    /// Reads and compresses the blocks of `range`; false once the link is gone.
    fn serve(
        &self,
        range: BlockRange,
        compressor: &mut Compressor,
        piece: &mut Piece,
        buf: &mut Vec<u8>,
    ) -> Result<bool> {
        let map = self.map;
        let end = range.first + u64::from(range.count);
        let mut i = range.first;
        while i < end {
            let Some(first) = map.span(i) else { break };
            let mut j = i;
            let mut bytes = 0usize;
            while j < end {
                let Some(s) = map.span(j) else { break };
                if bytes + s.len as usize > READ_CHUNK && j > i {
                    break;
                }
                bytes += s.len as usize;
                j += 1;
            }
            buf.resize(bytes, 0);
            self.image.read_at(buf, first.offset)?;
            let mut pos = 0usize;
            for index in i..j {
                let len = map.span(index).map_or(0, |s| s.len as usize);
                let full =
                    compressor.piece_len() + len > MAX_PIECE_BYTES || piece.ranges.len() >= MAX_PIECE_RANGES;
                if full && !self.flush(compressor, piece) {
                    return Ok(false);
                }
                compressor.push(&buf[pos..pos + len]);
                pos += len;
                piece.blocks += 1;
                match piece.ranges.last_mut() {
                    Some(r) if r.first + u64::from(r.count) == index => r.count += 1,
                    _ => piece.ranges.push(BlockRange {
                        first: index,
                        count: 1,
                    }),
                }
                self.served.blocks.fetch_add(1, Ordering::Relaxed);
                self.served.bytes.fetch_add(len as u64, Ordering::Relaxed);
                if compressor.piece_len() >= PIECE_BYTES && !self.flush(compressor, piece) {
                    return Ok(false);
                }
            }
            i = j;
        }
        Ok(true)
    }

    /// Sends the piece built so far, if any; false once the link is gone.
    fn flush(&self, compressor: &mut Compressor, piece: &mut Piece) -> bool {
        if compressor.piece_len() > 0 {
            // Frames queued, or the writer still pushing earlier ones into
            // a full socket buffer: the link has work without this piece.
            let queued =
                self.out.capacity() < self.out.max_capacity() || self.link.writing.load(Ordering::Relaxed);
            compressor.link_backlog(queued);
        }
        let Some((encoding, data)) = compressor.finish() else {
            return true;
        };
        self.served
            .wire_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(p) = self.progress {
            let stats = compressor.stats();
            Progress::set(&p.compressed_bytes, stats.compressed_bytes);
            Progress::set(&p.uncompressed_bytes, stats.uncompressed_bytes);
            Progress::set(&p.level, compressor.level() as u64);
        }
        let blocks = std::mem::take(&mut piece.blocks);
        let frame = Frame::Blocks {
            ranges: std::mem::take(&mut piece.ranges),
            encoding,
            data,
        };
        if self.out.blocking_send(frame).is_err() {
            return false;
        }
        self.queued.fetch_sub(blocks, Ordering::Relaxed);
        true
    }
}

/// What a receiver asked to look a group's blocks up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Digests,
    Keys,
}

/// Answers NEED_DIGESTS or NEED_KEYS from the digests of the groups in
/// flight (`pending`, sorted by group).
async fn answer_lookups(
    outgoing: &mpsc::Sender<Frame>,
    peer: &str,
    pending: &VecDeque<(u64, Vec<Digest>)>,
    wanted: &[u64],
    lookup: Lookup,
) -> Result<()> {
    for &g in wanted {
        let Ok(i) = pending.binary_search_by_key(&g, |(gi, _)| *gi) else {
            let what = if lookup == Lookup::Keys { "keys" } else { "digests" };
            return Err(Error::protocol(
                peer,
                format!("{what} asked for group {g}, which is not in flight"),
            ));
        };
        let digests = &pending[i].1;
        let answer = match lookup {
            Lookup::Digests => Frame::Digests {
                group: g,
                digests: digests.clone(),
            },
            Lookup::Keys => Frame::Keys {
                group: g,
                keys: digests.iter().map(key_of).collect(),
            },
        };
        outgoing.send(answer).await.map_err(|_| Error::Closed {
            peer: peer.to_string(),
        })?;
    }
    Ok(())
}

/// The key of a block in KEYS: the first 8 bytes of its digest.
#[cfg(not(test))]
fn key_of(d: &Digest) -> u64 {
    d.short()
}

/// Tests make the sender lie about one key (as a collision would):
/// (the key to replace, the key sent instead).
#[cfg(test)]
pub(crate) static SWAP_KEY: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);

#[cfg(test)]
fn key_of(d: &Digest) -> u64 {
    let key = d.short();
    match *SWAP_KEY.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
        Some((from, to)) if from == key => to,
        _ => key,
    }
}
