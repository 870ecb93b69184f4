//! `cbt-net`: moving an image between two hosts with content-based block
//! transfer. The protocol is specified in `docs/PROTOCOL.md`.
//!
//! Components:
//! - [`frame`]: the preamble and the length-prefixed frames, with a decoder
//!   hardened for untrusted input;
//! - [`handshake`]: versioned handshake and mutual challenge-response
//!   authentication with a shared [`Secret`];
//! - [`connection`]: framed reader and writer, byte counters, `--bwlimit`
//!   token bucket, and the [`Link`] tasks that keep both directions flowing;
//! - [`sender`] and [`receiver`]: the two roles of a transfer, independent of
//!   who connected; the receiver predicts where each group of blocks lives
//!   locally, asks for block digests only where the prediction fails, and
//!   for blocks only where its [`cbt_core::Index`] has nothing;
//! - [`client`] and [`daemon`]: the one-shot pair and the `cbt serve`
//!   daemon (push and pull), with connection cap, idle timeouts and graceful
//!   shutdown;
//! - [`observe`]: the [`DaemonObserver`] hook that hears of the daemon's
//!   transfers (the command line's metrics);
//! - [`resume`]: partial outputs kept after a failure and used as seeds;
//!   [`partials`]: the daemon's bound on them (total bytes, age);
//! - `preauth`: the budget and deadline of unauthenticated connections;
//! - [`teleport`]: the guest description a sender may send first, and the
//!   [`Teleporter`] that turns it into seeds at the receiver;
//! - [`tls`]: optional TLS (rustls) beneath the framing;
//! - [`Progress`]: live counters of a transfer, for a progress display.
#![forbid(unsafe_code)]

pub mod blockmap;
pub mod client;
pub mod compress;
pub mod connection;
pub mod daemon;
mod error;
pub mod frame;
pub mod handshake;
pub mod names;
pub mod observe;
pub mod partials;
mod preauth;
mod progress;
pub mod receiver;
pub mod resume;
pub mod sender;
pub mod store;
pub mod teleport;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use serde::Serialize;

pub use client::{
    parse_target, pull, pull_functional, pull_teleport, push, receive_once, ClientOptions, Target,
    DEFAULT_PORT,
};
pub use compress::Compression;
pub use connection::{Counters, Link, Shutdown, ShutdownTrigger, Timeouts};
pub use daemon::{serve, ServeOptions};
pub use error::{Error, Result};
pub use handshake::Secret;
pub use observe::{DaemonObserver, Direction, FailureReason, PushDetails};
pub use progress::{Phase, Progress, ProgressSnapshot};
pub use receiver::{receive, ReceiveOptions};
pub use sender::{send, SendOptions};
pub use teleport::{Prepared, TeleportLog, Teleporter, UserDataImage};
pub use tls::{TlsClient, TlsServer};

/// What a transfer did, from one side's point of view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferReport {
    /// "sender" or "receiver".
    pub role: &'static str,
    /// The other side's address.
    pub peer: String,
    /// The source image (as the sender names it).
    pub source: String,
    /// Where the image was published (receiver only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Blocks in the image.
    pub blocks_total: u64,
    /// All-zero blocks (never sent, written as holes).
    pub blocks_zero: u64,
    /// Blocks found at the receiver.
    pub blocks_local: u64,
    /// Blocks that crossed the network (repairs included).
    pub blocks_sent: u64,
    /// Blocks fetched again after verification found them wrong.
    pub blocks_repaired: u64,
    /// Bytes this side wrote to the socket.
    pub wire_bytes_sent: u64,
    /// Bytes this side read from the socket.
    pub wire_bytes_received: u64,
    /// Wall-clock seconds of the transfer (from the connection to the end).
    pub seconds: f64,
    /// Image bytes per wall-clock second.
    pub observed_bandwidth: f64,
    /// The image digest both sides agreed on.
    pub image_digest: String,
    /// Bytes written to the output (receiver only): with `--inplace`, only
    /// the blocks that differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// In place: blocks the output already held at their own offset,
    /// recorded and not rewritten (receiver only; as `cbt copy` reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks_unchanged: Option<u64>,
    /// Bytes of local blocks the kernel copied from raw seeds (receiver
    /// only; shared, not written, on XFS with reflink and btrfs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_cloned: Option<u64>,
    /// Plain bytes of the blocks that crossed the network.
    pub uncompressed_bytes: u64,
    /// The bytes they took on the wire (frame headers aside).
    pub compressed_bytes: u64,
    /// Plain bytes per encoding: `zstd:N` for each level used, `raw`
    /// (sender only: the receiver cannot tell levels apart).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub levels: std::collections::BTreeMap<String, u64>,
    /// A teleport: the receiver's reports (and the describing side's time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teleport: Option<teleport::TeleportLog>,
    /// A dry run: only the teleport plan was made; nothing was transferred.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The receiver's seed index (receiver only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexSummary>,
}

/// The size of a receiver's seed index.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IndexSummary {
    /// Image views indexed (images, backing files, snapshots, package blobs).
    pub images: usize,
    /// Distinct non-zero blocks.
    pub unique_blocks: u64,
    /// Bytes of RAM it held.
    pub memory_bytes: u64,
}

impl From<&cbt_core::IndexStats> for IndexSummary {
    fn from(s: &cbt_core::IndexStats) -> Self {
        IndexSummary {
            images: s.images,
            unique_blocks: s.unique_blocks,
            memory_bytes: s.memory_bytes,
        }
    }
}

impl TransferReport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        role: &'static str,
        peer: &str,
        source: String,
        output: Option<PathBuf>,
        layout: &cbt_core::Layout,
        stats: frame::DoneStats,
        counters: &Counters,
        seconds: f64,
        digest: cbt_core::Digest,
    ) -> Self {
        TransferReport {
            role,
            peer: peer.to_string(),
            source,
            output,
            image_bytes: layout.len(),
            blocks_total: layout.block_count(),
            blocks_zero: stats.blocks_zero,
            blocks_local: stats.blocks_local,
            blocks_sent: stats.blocks_sent,
            blocks_repaired: stats.blocks_repaired,
            wire_bytes_sent: counters.sent.load(Ordering::Relaxed),
            wire_bytes_received: counters.received.load(Ordering::Relaxed),
            seconds,
            observed_bandwidth: if seconds > 0.0 {
                layout.len() as f64 / seconds
            } else {
                0.0
            },
            image_digest: digest.to_hex(),
            ..TransferReport::default()
        }
    }

    /// The report of a dry run: the plan, no transfer.
    pub(crate) fn dry_run(
        role: &'static str,
        peer: &str,
        source: String,
        log: teleport::TeleportLog,
        counters: &Counters,
        seconds: f64,
    ) -> Self {
        TransferReport {
            role,
            peer: peer.to_string(),
            source,
            wire_bytes_sent: counters.sent.load(Ordering::Relaxed),
            wire_bytes_received: counters.received.load(Ordering::Relaxed),
            seconds,
            teleport: Some(log),
            dry_run: true,
            ..TransferReport::default()
        }
    }

    /// Adds what compression did.
    pub(crate) fn with_compression(mut self, stats: &compress::CompressionStats) -> Self {
        self.uncompressed_bytes = stats.uncompressed_bytes;
        self.compressed_bytes = stats.compressed_bytes;
        self.levels = stats
            .levels
            .iter()
            .map(|(level, bytes)| match level {
                0 => ("raw".to_string(), *bytes),
                l => (format!("zstd:{l}"), *bytes),
            })
            .collect();
        self
    }
}
