//! Transfers over loopback through the library: one-shot push, with
//! various seeds at the receiver.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use cbt_core::{open_image, ImageSpec, OutputFormat};
use cbt_net::{
    push, receive_once, ClientOptions, Compression, ReceiveOptions, SendOptions, Shutdown, TransferReport,
};
use tokio::net::TcpListener;

use common::noise;

/// An image of `mib` MiB: random data with zero holes every few MiB.
fn make_image(path: &Path, mib: usize, seed: u64) -> Vec<u8> {
    let mut data = noise(mib << 20, seed);
    for hole in (0..mib).step_by(3) {
        let start = hole << 20;
        data[start..start + (512 << 10)].fill(0);
    }
    std::fs::write(path, &data).unwrap();
    data
}

async fn transfer(
    src: &Path,
    out: &Path,
    seeds: Vec<PathBuf>,
    format: OutputFormat,
) -> (TransferReport, TransferReport) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut ro = ReceiveOptions::new(out.to_path_buf());
    ro.seeds = seeds;
    ro.format = format;
    let receiver = tokio::spawn(async move {
        receive_once(listener, ro, &ClientOptions::default(), Shutdown::never()).await
    });
    let image = open_image(&ImageSpec::file(src)).unwrap();
    let so = SendOptions {
        compression: Compression::Zstd(3),
        ..Default::default()
    };
    let sent = push(
        &addr,
        None,
        image,
        &so,
        &ClientOptions::default(),
        Shutdown::never(),
    )
    .await;
    let received = receiver.await.unwrap();
    let (sent, received) = match (sent, received) {
        (Ok(s), Ok(r)) => (s, r),
        (s, r) => panic!("sender: {s:?}\nreceiver: {r:?}"),
    };
    (sent, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_send_then_everything_local() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = make_image(&src, 24, 1);
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).unwrap();

    // Nothing at the receiver: every data block crosses.
    let out = dir.path().join("out1.img");
    let (s, r) = transfer(&src, &out, vec![seeds.clone()], OutputFormat::Raw).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(r.blocks_local, 0);
    assert_eq!(r.blocks_sent + r.blocks_zero, r.blocks_total);
    assert_eq!(s.blocks_sent, r.blocks_sent);
    eprintln!("full: {s:?}");

    // The same image at the receiver: only group digests cross.
    std::fs::copy(&src, seeds.join("copy.img")).unwrap();
    let out = dir.path().join("out2.img");
    let (s, r) = transfer(&src, &out, vec![seeds.clone()], OutputFormat::Raw).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(r.blocks_sent, 0);
    let wire = s.wire_bytes_sent + s.wire_bytes_received;
    eprintln!(
        "all local: wire {wire} for {} bytes ({:.4}%)",
        s.image_bytes,
        wire as f64 * 100.0 / s.image_bytes as f64
    );
    assert!((wire as f64) < s.image_bytes as f64 * 0.001, "wire {wire}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_and_shifted_seed_qcow2_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let mut data = make_image(&src, 16, 2);
    // Seed: the source shifted by 3 blocks, with some blocks changed.
    let mut seed = vec![0u8; 3 * 4096];
    seed.extend_from_slice(&data);
    for k in (0..data.len() / 4096).step_by(97) {
        seed[3 * 4096 + k * 4096] ^= 0xff;
    }
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).unwrap();
    std::fs::write(seeds.join("old.img"), &seed).unwrap();
    // And change a few source blocks that nobody has.
    for k in (5..data.len() / 4096).step_by(501) {
        data[k * 4096..k * 4096 + 100].copy_from_slice(&noise(100, k as u64));
    }
    std::fs::write(&src, &data).unwrap();

    let out = dir.path().join("out.qcow2");
    let (s, r) = transfer(&src, &out, vec![seeds], OutputFormat::Qcow2).await;
    let got = open_image(&ImageSpec::file(&out)).unwrap();
    let mut buf = vec![0u8; data.len()];
    got.read_at(&mut buf, 0).unwrap();
    assert!(buf == data, "content differs");
    eprintln!("shifted: sender {s:?}\nreceiver {r:?}");
    assert!(r.blocks_local > r.blocks_total / 2);
    assert!(r.blocks_sent < r.blocks_total / 20);
}
