//! The engine: the protocol state of one transfer and its main loop.

use super::*;

/// How a group that was not found where predicted is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    /// Ask for its block digests, look them up, ask for what is missing.
    Digests,
    /// Ask for all its blocks at once (when nothing is being found
    /// locally): no digests on the wire, the group digest checks the data.
    Whole,
}

/// A data group waiting for its digests or for missing blocks.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) span: GroupSpan,
    pub(super) digest: Digest,
    /// Where it was predicted to be, and the digests of the blocks found there.
    pub(super) predicted: Option<(u32, u64, Vec<Digest>)>,
    /// Whole-group fetch: the blocks received so far, held until the group
    /// digest over all of them can be checked.
    pub(super) whole: Option<WholeGroup>,
    /// Its block keys were asked for (NEED_KEYS): the blocks found through
    /// them are held in `whole` with the rest until the group digest
    /// proves them, and a mismatch falls back to full digests.
    pub(super) keyed: bool,
    pub(super) resolved: bool,
    pub(super) missing: u32,
}

/// The blocks of a group fetched whole, without their digests: nothing of
/// it is written before the group digest over all of them checks out. (At
/// most the block window's worth of such groups is in flight.)
pub(super) struct WholeGroup {
    pub(super) data: Vec<u8>,
    pub(super) received: Vec<bool>,
    /// Blocks found locally through their keys, and zero blocks among them.
    pub(super) local: u64,
    pub(super) zero: u64,
    /// Bytes of it counted in `Engine::keyed_bytes`.
    pub(super) reserved: u64,
    /// The image each block found locally came from (for reports, once
    /// the group checks out).
    pub(super) sources: Vec<u32>,
}

impl WholeGroup {
    pub(super) fn new(blocks: u32) -> Self {
        WholeGroup {
            data: Vec::new(),
            received: vec![false; blocks as usize],
            local: 0,
            zero: 0,
            reserved: 0,
            sources: Vec::new(),
        }
    }
}

pub(super) struct Awaited {
    pub(super) group: u64,
    /// What the block must hash to (None: fetched as part of a whole group).
    pub(super) digest: Option<Digest>,
    pub(super) len: u32,
}

pub(super) struct Engine {
    pub(super) peer: String,
    pub(super) shared: Shared,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    pub(super) outgoing: mpsc::Sender<Frame>,
    pub(super) shutdown: Shutdown,
    pub(super) counters: Arc<Counters>,
    pub(super) progress: Option<Arc<Progress>>,
    pub(super) block_size: u64,
    /// Jobs for the predictor threads (None once they were stopped).
    pub(super) jobs: Option<crossbeam_channel::Sender<PredictJob>>,
    pub(super) predictors: Vec<JoinHandle<()>>,
    /// Predictions asked for and not answered yet.
    pub(super) predicting: u64,
    /// Most predictions outstanding: the job queue's capacity, so handing
    /// over a job never blocks the engine (frames keep being handled while
    /// the predictors are busy; the rest of the groups wait in `deferred`).
    pub(super) max_predicting: u64,
    pub(super) decompressor: Decompressor,
    /// log2 of the compression window granted in READY.
    pub(super) window_log: u32,
    pub(super) zeros: ZeroDigests,
    pub(super) window_groups: u32,
    /// Next group of the stream.
    pub(super) head_group: u64,
    /// Data groups seen so far (their sequence numbers, for credit).
    pub(super) data_seq: u64,
    /// Entries received and not processed yet: first group, sequence
    /// number (data groups), entry.
    pub(super) deferred: VecDeque<(u64, u64, GroupEntry)>,
    /// Predicted local position of the next group to process: (image, offset).
    pub(super) cursor: Option<(u32, u64)>,
    /// A group whose digests were asked for to find the cursor; data
    /// groups wait for its answer.
    pub(super) probe: Option<u64>,
    /// Whether local data is worth looking for.
    pub(super) hopeful: bool,
    /// Groups resolved in a row without finding any block locally.
    pub(super) miss_streak: u32,
    /// Groups fetched whole since the streak began.
    pub(super) whole_count: u32,
    /// Groups queued for a whole fetch, oldest first, while their blocks
    /// may still all wait in `want` (see [`Engine::reconsider_whole`]).
    pub(super) whole_queued: VecDeque<u64>,
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) done_seqs: BTreeSet<u64>,
    /// Data groups complete, in order.
    pub(super) completed: u64,
    pub(super) credited: u64,
    /// Blocks to request, in order.
    pub(super) want: VecDeque<u64>,
    /// Every block wanted from the sender (queued or requested).
    pub(super) awaiting: HashMap<u64, Awaited>,
    /// Requested and not yet received: block → bytes.
    pub(super) outstanding: HashMap<u64, u32>,
    pub(super) outstanding_bytes: u64,
    /// How many bytes of blocks to keep requested.
    pub(super) pace: Pace,
    pub(super) need_digests: Vec<u64>,
    pub(super) need_keys: Vec<u64>,
    /// Bytes of groups holding blocks found through keys (at most
    /// `keys::MAX_KEYED_BYTES`; beyond it groups ask for full digests).
    pub(super) keyed_bytes: u64,
    pub(super) end: Option<(Digest, u64)>,
    pub(super) stats: DoneStats,
    /// Bytes of the pieces received, plain and on the wire.
    pub(super) compression: crate::compress::CompressionStats,
    pub(super) rejected: u64,
    pub(super) buf: Vec<u8>,
    /// The last piece decoded (its buffer is reused).
    pub(super) piece_buf: Vec<u8>,
}

impl Engine {
    pub(super) fn new(
        peer: String,
        shared: Shared,
        channels: Channels,
        shutdown: Shutdown,
        options: &ReceiveOptions,
        block_size: u32,
        window_log: u32,
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
                .map_err(|e| Error::Internal(format!("cannot start a predictor thread: {e}")))?;
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
            decompressor: Decompressor::new(window_log).map_err(|e| Error::Internal(format!("zstd: {e}")))?,
            window_log,
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
            need_keys: Vec::new(),
            keyed_bytes: 0,
            end: None,
            stats: DoneStats::default(),
            compression: Default::default(),
            rejected: 0,
            buf: Vec::new(),
            piece_buf: Vec::new(),
        })
    }

    /// Stops the predictor threads and waits for them.
    pub(super) fn stop_predictors(&mut self) {
        self.jobs = None;
        for h in self.predictors.drain(..) {
            let _ = h.join();
        }
    }

    pub(super) fn send(&self, f: Frame) -> Result<()> {
        self.outgoing.blocking_send(f).map_err(|_| Error::Closed {
            peer: self.peer.clone(),
        })
    }

    /// Publishes the counters for a progress display (block counts times
    /// the block size: close enough for people).
    pub(super) fn publish(&self) {
        if let Some(p) = &self.progress {
            let (s, bs) = (&self.stats, self.block_size);
            Progress::set(
                &p.bytes_done,
                (s.blocks_zero + s.blocks_local + s.blocks_sent) * bs,
            );
            Progress::set(&p.bytes_local, s.blocks_local * bs);
            Progress::set(&p.bytes_zero, s.blocks_zero * bs);
            Progress::set(&p.bytes_moved, s.blocks_sent * bs);
            p.set_wire(&self.counters);
        }
    }

    pub(super) fn recv(&mut self) -> Result<Event> {
        self.publish();
        if self.shutdown.is_set() {
            return Err(Error::Cancelled);
        }
        self.events.blocking_recv().ok_or_else(|| Error::Closed {
            peer: self.peer.clone(),
        })
    }

    /// The next frame, once no prediction can be outstanding.
    pub(super) fn recv_frame(&mut self) -> Result<Frame> {
        match self.recv()? {
            Event::Frame(f) => f,
            Event::Predicted(..) => Err(Error::Internal("a prediction arrived after the transfer".into())),
        }
    }

    pub(super) fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::protocol(&self.peer, reason)
    }

    pub(super) fn run(&mut self) -> Result<Digest> {
        self.send(Frame::Ready {
            window: self.window_groups,
            window_log: self.window_log as u8,
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
                Frame::Keys { group, keys } => {
                    self.on_keys(group, keys)?;
                    self.drain()?;
                }
                Frame::Blocks {
                    ranges,
                    encoding,
                    data,
                } => self.on_blocks(&ranges, encoding, &data)?,
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
            // The peer ended the stream before the transfer did.
            return Err(Error::Closed {
                peer: self.peer.clone(),
            });
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
            None => Err(cbt_core::Error::Internal("the output is still shared".into())),
        };
        self.shared.assembly = assembly;
        let repaired = verified.map_err(|e| match e {
            cbt_core::Error::BlockSource { source, .. } => match source.downcast::<Error>() {
                Ok(net) => *net,
                Err(other) => Error::Internal(other.to_string()),
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
}
