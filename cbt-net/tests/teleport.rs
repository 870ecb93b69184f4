//! The teleport exchange through the library, over loopback: a sender that
//! describes its image first (DESCRIBE), a receiver whose [`Teleporter`]
//! turns the description into seeds and reports (TELEPORT), the dry run,
//! a receiver without package sources, and a teleport pull from a daemon.
//! The teleporter here is a stand-in: its "packages" are one file holding
//! the source's bytes.
#![allow(clippy::unwrap_used)]

mod common;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cbt_core::{open_image, Image, ImageSpec, PreparedSeeds, SeedProvider};
use cbt_net::frame::TeleportStage;
use cbt_net::teleport::Description;
use cbt_net::{
    pull_teleport, push, receive_once, serve, ClientOptions, Prepared, ReceiveOptions, SendOptions,
    ServeOptions, Shutdown, Teleporter, TransferReport,
};
use tokio::net::TcpListener;

use common::noise;

const LIMIT: Duration = Duration::from_secs(120);

/// One file as the extra seed.
#[derive(Debug)]
struct OneFile(PathBuf);

impl SeedProvider for OneFile {
    fn prepare(&self, _: u32, _: Option<&Path>, _: usize) -> cbt_core::Result<Box<dyn PreparedSeeds>> {
        Ok(Box::new(Roots(vec![self.0.clone()])))
    }
}

#[derive(Debug)]
struct Roots(Vec<PathBuf>);

impl PreparedSeeds for Roots {
    fn roots(&self) -> Vec<PathBuf> {
        self.0.clone()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Records what it is asked and answers with fixed reports and one seed.
#[derive(Debug)]
struct Fake {
    seed: PathBuf,
    seen: Mutex<Vec<(Vec<u8>, bool)>>,
}

impl Teleporter for Fake {
    fn describe(&self, image: Arc<dyn Image>) -> Result<Vec<u8>, String> {
        Ok(format!("{{\"described\":{}}}", image.len()).into_bytes())
    }

    fn prepare(
        &self,
        description: &[u8],
        dry_run: bool,
        _stop: &AtomicBool,
        report: &mut dyn FnMut(TeleportStage, Vec<u8>),
    ) -> Result<Prepared, String> {
        self.seen.lock().unwrap().push((description.to_vec(), dry_run));
        report(TeleportStage::Planned, br#"{"to_fetch":1}"#.to_vec());
        if dry_run {
            return Ok(Prepared {
                seeds: Vec::new(),
                finish: None,
            });
        }
        report(TeleportStage::Prepared, br#"{"fetched":1}"#.to_vec());
        Ok(Prepared {
            seeds: vec![Arc::new(OneFile(self.seed.clone()))],
            finish: Some(Box::new(|index| {
                format!("{{\"supplied\":{}}}", index.blocks_supplied().iter().sum::<u64>()).into_bytes()
            })),
        })
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    src: PathBuf,
    data: Vec<u8>,
    fake: Arc<Fake>,
    out: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let mut data = noise(4 << 20, 11);
    data[1 << 20..2 << 20].fill(0);
    std::fs::write(&src, &data).unwrap();
    // The "package": the same bytes, elsewhere.
    let seed = dir.path().join("package.blob");
    std::fs::write(&seed, &data).unwrap();
    let out = dir.path().join("out.img");
    Setup {
        src,
        data,
        fake: Arc::new(Fake {
            seed,
            seen: Mutex::new(Vec::new()),
        }),
        out,
        _dir: dir,
    }
}

/// Pushes `src` with `description` to a one-shot receiver with `teleporter`.
async fn teleport_push(
    src: &Path,
    out: &Path,
    description: Option<Description>,
    teleporter: Option<Arc<dyn Teleporter>>,
) -> (
    TransferReport,
    TransferReport,
    Vec<(TeleportStage, serde_json::Value)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut ro = ReceiveOptions::new(out.to_path_buf());
    ro.index.cache_dir = None;
    ro.teleporter = teleporter;
    let receiver = tokio::spawn(async move {
        receive_once(listener, ro, &ClientOptions::default(), Shutdown::never()).await
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let options = SendOptions {
        description,
        on_teleport: Some(Arc::new(move |stage, v: &serde_json::Value| {
            sink.lock().unwrap().push((stage, v.clone()))
        })),
        ..SendOptions::default()
    };
    let image = open_image(&ImageSpec::file(src)).unwrap();
    let sent = tokio::time::timeout(
        LIMIT,
        push(
            &addr,
            None,
            image,
            &options,
            &ClientOptions::default(),
            Shutdown::never(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let received = tokio::time::timeout(LIMIT, receiver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reports = seen.lock().unwrap().clone();
    (sent, received, reports)
}

fn description(dry_run: bool) -> Option<Description> {
    Some(Description {
        body: bytes::Bytes::from_static(br#"{"packages":[]}"#),
        dry_run,
        seconds: 0.25,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_becomes_seeds_and_every_report_reaches_the_sender() {
    let s = setup();
    let fake: Arc<dyn Teleporter> = s.fake.clone();
    let (sent, received, live) = teleport_push(&s.src, &s.out, description(false), Some(fake)).await;
    assert_eq!(std::fs::read(&s.out).unwrap(), s.data);
    assert_eq!(
        s.fake.seen.lock().unwrap().as_slice(),
        [(br#"{"packages":[]}"#.to_vec(), false)]
    );
    // Every data block came from the teleporter's seed.
    assert_eq!(sent.blocks_sent, 0, "{sent:?}");
    let log = sent.teleport.as_ref().unwrap();
    assert_eq!(log.describe_seconds, Some(0.25));
    assert_eq!(log.plan.as_ref().unwrap()["to_fetch"], 1);
    assert_eq!(log.prepared.as_ref().unwrap()["fetched"], 1);
    // Exactly the blocks found locally: each counted once, where written.
    let supplied = log.finished.as_ref().unwrap()["supplied"].as_u64().unwrap();
    assert_eq!(supplied, sent.blocks_local, "{log:?}");
    // The receiver keeps the same reports (it made them).
    let rlog = received.teleport.as_ref().unwrap();
    assert_eq!(rlog.plan, log.plan);
    assert_eq!(rlog.finished, log.finished);
    // The sender's sink saw them as they came, in order.
    let stages: Vec<TeleportStage> = live.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        [
            TeleportStage::Planned,
            TeleportStage::Prepared,
            TeleportStage::Finished
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_and_transfers_nothing() {
    let s = setup();
    let fake: Arc<dyn Teleporter> = s.fake.clone();
    let (sent, received, live) = teleport_push(&s.src, &s.out, description(true), Some(fake)).await;
    assert!(sent.dry_run && received.dry_run);
    assert!(!s.out.exists(), "a dry run wrote its output");
    assert!(s.fake.seen.lock().unwrap()[0].1, "not asked as a dry run");
    assert_eq!(sent.blocks_sent + sent.blocks_local, 0);
    let log = sent.teleport.unwrap();
    assert!(log.plan.is_some() && log.prepared.is_none() && log.finished.is_none());
    assert_eq!(live.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_package_sources_says_so_and_receives_plainly() {
    let s = setup();
    let (sent, _, _) = teleport_push(&s.src, &s.out, description(false), None).await;
    assert_eq!(std::fs::read(&s.out).unwrap(), s.data);
    assert!(sent.blocks_sent > 0);
    let log = sent.teleport.unwrap();
    let plan = log.plan.unwrap();
    assert_eq!(plan["fetch"], false);
    assert!(
        plan["reason"].as_str().unwrap().contains("no package sources"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teleport_pull_is_described_by_the_daemon() {
    let s = setup();
    let export = s.src.parent().unwrap().join("export");
    std::fs::create_dir(&export).unwrap();
    std::fs::copy(&s.src, export.join("vm.img")).unwrap();
    let data_dir = s.src.parent().unwrap().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let mut options = ServeOptions::new(data_dir);
    options.export = Some(export);
    // The daemon's teleporter describes; the client's prepares.
    let daemon_side: Arc<dyn Teleporter> = Arc::new(Fake {
        seed: s.fake.seed.clone(),
        seen: Mutex::new(Vec::new()),
    });
    options.receive.teleporter = Some(daemon_side);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(serve(listener, options, async {
        let _ = rx.await;
    }));

    for dry_run in [true, false] {
        let mut ro = ReceiveOptions::new(s.out.clone());
        ro.index.cache_dir = None;
        let fake: Arc<dyn Teleporter> = s.fake.clone();
        ro.teleporter = Some(fake);
        let r = tokio::time::timeout(
            LIMIT,
            pull_teleport(
                &addr,
                "vm.img",
                dry_run,
                ro,
                &ClientOptions::default(),
                Shutdown::never(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.dry_run, dry_run);
        assert_eq!(s.out.exists(), !dry_run);
    }
    assert_eq!(std::fs::read(&s.out).unwrap(), s.data);
    let seen = s.fake.seen.lock().unwrap().clone();
    let described = format!("{{\"described\":{}}}", s.data.len()).into_bytes();
    assert_eq!(seen, [(described.clone(), true), (described, false)]);
    let _ = tx.send(());
    daemon.await.unwrap().unwrap();
}
