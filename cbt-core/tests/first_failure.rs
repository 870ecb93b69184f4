//! `reconstruct` reports the error of the stage that failed, not the
//! "stopped" of a stage that only noticed it: a source of blocks that
//! fails drops its channel before the engine hears why, and the planner,
//! blocked sending to that channel, stops at once. Whichever of the two
//! reaches the engine first, the source's error is the one returned
//! (`cbt recv s3://...` with a missing pack once said only
//! "reconstruction stopped").

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use cbt_core::{
    reconstruct, BlockKind, BlockRecord, BlockRef, BlockSource, Digest, Error, Index, IndexOptions, Layout,
    ReconstructOptions, Result,
};

/// More blocks than the engine's channel of wanted blocks holds, so the
/// planner is still sending when the source goes away.
const BLOCKS: u64 = 20_000;
const BLOCK: u32 = 4096;

/// The block records, telling `planner_done` when the planner lets go
/// of them (it has returned, with its own error).
struct Records {
    next: u64,
    planner_done: mpsc::Sender<()>,
}

impl Iterator for Records {
    type Item = Result<BlockRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == BLOCKS {
            return None;
        }
        let i = self.next;
        self.next += 1;
        // Blocks no seed holds: every one is wanted from the source.
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&(i + 1).to_le_bytes());
        Some(Ok(BlockRecord {
            offset: i * u64::from(BLOCK),
            len: BLOCK,
            kind: BlockKind::Data(Digest(d)),
        }))
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = self.planner_done.send(());
    }
}

/// A source that fails on the first block, the way the store's does on
/// a missing pack, but reports only after the planner has stopped.
struct LateFailingSource {
    planner_done: mpsc::Receiver<()>,
}

impl BlockSource for LateFailingSource {
    fn name(&self) -> String {
        "s3://bucket/store".into()
    }

    fn fetch(
        &mut self,
        wanted: Receiver<BlockRef>,
        _deliver: &mut dyn FnMut(BlockRef, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let first = wanted.recv().unwrap();
        drop(wanted);
        // The planner's next send fails; it returns and records "stopped".
        self.planner_done
            .recv_timeout(Duration::from_secs(60))
            .expect("the planner did not stop after the source went away");
        // It records its error just after letting go of the records.
        std::thread::sleep(Duration::from_millis(50));
        Err(Error::BlockSource {
            name: self.name(),
            source: format!("packs/00.pack: missing (block {} is in it)", first.index).into(),
        })
    }
}

#[test]
fn the_failing_source_is_reported_not_the_stopped_planner() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).unwrap();
    let index = Index::build(&[seeds], &IndexOptions::default()).unwrap();
    let layout = Layout::flat(BLOCKS * u64::from(BLOCK), BLOCK).unwrap();
    let (tx, rx) = mpsc::channel();
    let records = Records {
        next: 0,
        planner_done: tx,
    };
    let mut source = LateFailingSource { planner_done: rx };
    let out = dir.path().join("out.img");
    let err = reconstruct(
        &layout,
        records,
        &index,
        &mut source,
        &out,
        &ReconstructOptions::default(),
        None,
    )
    .unwrap_err();
    match &err {
        Error::BlockSource { name, source } => {
            assert_eq!(name, "s3://bucket/store");
            assert!(source.to_string().contains("packs/00.pack"), "{err}");
        }
        other => panic!("the error is not the source's: {other:?} ({other})"),
    }
    assert!(!out.exists());
}
