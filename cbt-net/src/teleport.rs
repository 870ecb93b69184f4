//! Teleporting over the protocol: the sender describes the guest in its
//! image (DESCRIBE, before BEGIN), the receiver takes what it can of it
//! from its own package sources, reports what it did (TELEPORT frames),
//! and the block transfer that follows uses those packages as seeds.
//!
//! ```text
//! sender                                              receiver
//!   DESCRIBE {dry_run, description} ────────────────▶ Teleporter::prepare:
//!   ◀──────────────────────────── TELEPORT planned     resolve the packages
//!        (dry run: the sender closes here)             fetch what is missing
//!   ◀──────────────────────────── TELEPORT prepared    seeds ready
//!   BEGIN ... (the usual transfer, packages as seeds)
//!   ◀──────────────────────────── TELEPORT finished    where blocks came from
//!   ◀──────────────────────────── DONE
//! ```
//!
//! This crate knows nothing of guests or packages: describing an image and
//! preparing seeds from a description are a [`Teleporter`]'s job (the
//! `cbt-teleport` crate provides one through the command line). The
//! description and the reports are JSON, opaque here; nothing in the
//! transfer's correctness depends on them, since every seed block is
//! checked against the source's digests like any other.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use cbt_core::{Image, Index, SeedProvider};
use serde::Serialize;

use crate::frame::TeleportStage;

/// Largest description accepted (it travels in one frame).
pub const MAX_DESCRIPTION_BYTES: usize = crate::frame::MAX_PAYLOAD - 16;

/// Reports, after a transfer, where its blocks came from (given the index).
pub type FinishReport = Box<dyn FnOnce(&Index) -> Vec<u8> + Send>;

/// What a receiver made of a description: seeds for the index, and what
/// to report once the transfer is over.
pub struct Prepared {
    /// Extra seed sources (package caches) for this transfer's index.
    pub seeds: Vec<Arc<dyn SeedProvider>>,
    /// Called with the index after the transfer: the TELEPORT `finished`
    /// report (where the blocks came from).
    pub finish: Option<FinishReport>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

/// A guest's user data, as an image to send instead of the guest's image
/// (a functional pull, [`crate::frame::Mode::PullFunctional`]).
pub struct UserDataImage {
    /// The guest's description (JSON), sent before the image.
    pub description: Vec<u8>,
    /// The user data (a pack the receiver's [`Teleporter`] understands).
    pub image: Arc<dyn Image>,
    /// Owns what the image lives in (a temporary file) until the
    /// transfer is over.
    pub scratch: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for UserDataImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDataImage")
            .field("image", &self.image.label())
            .finish_non_exhaustive()
    }
}

/// Describes images and prepares seeds from descriptions.
pub trait Teleporter: Send + Sync + std::fmt::Debug {
    /// Sender side of a functional pull: the guest's description and its
    /// user data as an image. By default there is none.
    fn user_data(&self, image: Arc<dyn Image>) -> std::result::Result<UserDataImage, String> {
        let _ = image;
        Err("this server cannot make functional copies".into())
    }

    /// Sender side: the description of the guest in `image` (JSON), or
    /// why there is none (the transfer then goes on without it).
    fn describe(&self, image: Arc<dyn Image>) -> std::result::Result<Vec<u8>, String>;

    /// Receiver side: resolves `description` against this host's package
    /// sources and, unless `dry_run`, fetches what is missing. `report` is
    /// called with the `planned` report, then (not in a dry run) the
    /// `prepared` one; `stop` becomes true when the peer goes away or the
    /// process shuts down. An error is reported to the sender and ends the
    /// transfer.
    fn prepare(
        &self,
        description: &[u8],
        dry_run: bool,
        stop: &AtomicBool,
        report: &mut dyn FnMut(TeleportStage, Vec<u8>),
    ) -> std::result::Result<Prepared, String>;
}

/// The TELEPORT reports of one transfer, as seen by either side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TeleportLog {
    /// Seconds the sender took to describe the image (the side that
    /// described it only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub describe_seconds: Option<f64>,
    /// The receiver's plan: packages resolved against its sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
    /// What the receiver fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared: Option<serde_json::Value>,
    /// Where the blocks came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<serde_json::Value>,
}

impl TeleportLog {
    /// Records a report. A body that is not JSON (a confused peer) is kept
    /// as a string, never trusted further.
    pub fn record(&mut self, stage: TeleportStage, body: &[u8]) {
        let value = serde_json::from_slice(body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()));
        match stage {
            TeleportStage::Planned => self.plan = Some(value),
            TeleportStage::Prepared => self.prepared = Some(value),
            TeleportStage::Finished => self.finished = Some(value),
        }
    }
}

/// A description ready to send, and whether the receiver should only plan.
#[derive(Debug, Clone)]
pub struct Description {
    /// The description (JSON).
    pub body: Bytes,
    /// Stop after the plan.
    pub dry_run: bool,
    /// Seconds it took to make.
    pub seconds: f64,
}

/// Called on the sending side with each TELEPORT report as it arrives (to
/// print the plan before the transfer).
pub type ReportSink = Arc<dyn Fn(TeleportStage, &serde_json::Value) + Send + Sync>;

/// The JSON a receiver without package sources answers a description with.
pub(crate) fn unsupported() -> Vec<u8> {
    br#"{"fetch":false,"reason":"the receiver has no package sources for teleporting"}"#.to_vec()
}
