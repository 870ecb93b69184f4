//! Live counters of one transfer, written by the sender or the receiver and
//! read from another thread (the command line's progress bar). Relaxed
//! atomics: a display needs no more.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::connection::Counters;

/// What a transfer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Connecting and authenticating.
    Connecting,
    /// The receiver indexes its seeds (the sender waits for it).
    Indexing,
    /// Blocks are being matched locally and moved.
    Transferring,
    /// The receiver re-reads and checks the written image.
    Verifying,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Indexing,
            2 => Phase::Transferring,
            3 => Phase::Verifying,
            _ => Phase::Connecting,
        }
    }
}

/// Live counters of one transfer (see the field docs for each side's view).
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    /// Image size in bytes (0 until the layout is known).
    pub image_bytes: AtomicU64,
    /// Image bytes settled: zero, found locally or received (receiver); the
    /// receiver's in-order progress as its credit reports it (sender).
    pub bytes_done: AtomicU64,
    /// Image bytes found at the receiver (receiver only).
    pub bytes_local: AtomicU64,
    /// Image bytes of all-zero blocks settled (never sent, never looked
    /// up): in the receiver's blocks; whole zero groups on the sender.
    pub bytes_zero: AtomicU64,
    /// Image bytes of the blocks that crossed the network.
    pub bytes_moved: AtomicU64,
    /// Bytes this side wrote to the socket.
    pub wire_sent: AtomicU64,
    /// Bytes this side read from the socket.
    pub wire_received: AtomicU64,
    /// Plain bytes of the blocks sent or received in pieces.
    pub uncompressed_bytes: AtomicU64,
    /// What those pieces took on the wire.
    pub compressed_bytes: AtomicU64,
    /// The zstd level the sender uses now (0: none; sender only).
    pub level: AtomicU64,
}

/// A consistent-enough copy of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See [`Phase`].
    pub phase: Phase,
    /// See [`Progress::image_bytes`].
    pub image_bytes: u64,
    /// See [`Progress::bytes_done`].
    pub bytes_done: u64,
    /// See [`Progress::bytes_local`].
    pub bytes_local: u64,
    /// See [`Progress::bytes_zero`].
    pub bytes_zero: u64,
    /// See [`Progress::bytes_moved`].
    pub bytes_moved: u64,
    /// See [`Progress::wire_sent`].
    pub wire_sent: u64,
    /// See [`Progress::wire_received`].
    pub wire_received: u64,
    /// See [`Progress::uncompressed_bytes`].
    pub uncompressed_bytes: u64,
    /// See [`Progress::compressed_bytes`].
    pub compressed_bytes: u64,
    /// See [`Progress::level`].
    pub level: u64,
}

impl Progress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let image_bytes = self.image_bytes.load(Ordering::Relaxed);
        ProgressSnapshot {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            image_bytes,
            bytes_done: self.bytes_done.load(Ordering::Relaxed).min(image_bytes),
            bytes_local: self.bytes_local.load(Ordering::Relaxed),
            bytes_zero: self.bytes_zero.load(Ordering::Relaxed),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
            wire_sent: self.wire_sent.load(Ordering::Relaxed),
            wire_received: self.wire_received.load(Ordering::Relaxed),
            uncompressed_bytes: self.uncompressed_bytes.load(Ordering::Relaxed),
            compressed_bytes: self.compressed_bytes.load(Ordering::Relaxed),
            level: self.level.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        let v = match phase {
            Phase::Connecting => 0,
            Phase::Indexing => 1,
            Phase::Transferring => 2,
            Phase::Verifying => 3,
        };
        self.phase.store(v, Ordering::Relaxed);
    }

    pub(crate) fn set_wire(&self, counters: &Counters) {
        self.wire_sent
            .store(counters.sent.load(Ordering::Relaxed), Ordering::Relaxed);
        self.wire_received
            .store(counters.received.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Ordering::Relaxed);
    }
}
