//! TLS over loopback, through the library: a daemon with a self-signed
//! certificate made at test time (rcgen), pushes and pulls with the shared
//! secret inside TLS, and the mismatches (TLS client and plain server, plain
//! client and TLS server, an untrusted certificate) failing at once with an
//! error that says why.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cbt_core::{open_image, ImageSpec};
use cbt_net::{
    pull, push, receive_once, serve, ClientOptions, Error, Progress, ReceiveOptions, Secret, SendOptions,
    ServeOptions, Shutdown, TlsClient, TlsServer, TransferReport,
};
use tokio::net::TcpListener;

use common::noise;
use tokio::sync::oneshot;

/// A mismatch must fail well before this (the handshake limit is 30 s).
const PROMPT: Duration = Duration::from_secs(10);

/// A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A self-signed certificate marked as a CA (as `openssl req -x509` makes
/// by default), which the usual chain rules refuse as a server certificate.
fn self_signed_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path)
}

struct Daemon {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<cbt_net::Result<()>>,
}

impl Daemon {
    async fn start(options: ServeOptions) -> Daemon {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, async {
            let _ = rx.await;
        }));
        Daemon {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.unwrap().unwrap();
    }
}

fn client(tls: Option<TlsClient>, secret: Option<&Secret>) -> ClientOptions {
    ClientOptions {
        tls,
        secret: secret.cloned(),
        ..ClientOptions::default()
    }
}

async fn push_file(
    addr: &str,
    name: Option<&str>,
    src: &Path,
    options: &ClientOptions,
) -> cbt_net::Result<TransferReport> {
    let image = open_image(&ImageSpec::file(src)).unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        push(
            addr,
            name,
            image,
            &SendOptions::default(),
            options,
            Shutdown::never(),
        ),
    )
    .await
    .expect("push finished")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_over_tls_with_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let src = dir.path().join("src.img");
    let mut data = noise(6 << 20, 7);
    data[1 << 20..2 << 20].fill(0);
    std::fs::write(&src, &data).unwrap();
    let secret = Secret::from_bytes(b"tls and a secret").unwrap();

    let mut options = ServeOptions::new(data_dir.clone());
    options.tls = Some(TlsServer::from_pem_files(&cert, &key).unwrap());
    options.secret = Some(secret.clone());
    options.export = Some(data_dir.clone());
    let daemon = Daemon::start(options).await;
    let tls = TlsClient::from_ca_file(&cert).unwrap();

    let pushed = push_file(
        &daemon.addr,
        Some("vm.img"),
        &src,
        &client(Some(tls.clone()), Some(&secret)),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(data_dir.join("vm.img")).unwrap(), data);
    assert!(pushed.blocks_sent > 0);

    // Pull it back, with progress counters.
    let out = dir.path().join("back.img");
    let progress = Arc::new(Progress::default());
    let mut ro = ReceiveOptions::new(out.clone());
    ro.progress = Some(Arc::clone(&progress));
    let pulled = pull(
        &daemon.addr,
        "vm.img",
        ro,
        &client(Some(tls), Some(&secret)),
        Shutdown::never(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let p = progress.snapshot();
    assert_eq!(p.image_bytes, data.len() as u64);
    assert_eq!(p.bytes_done, data.len() as u64);
    assert!(p.bytes_moved > 0 && p.wire_received > 0, "{p:?}");
    assert!(p.wire_received <= pulled.wire_bytes_received);

    // The wrong secret is still refused inside TLS.
    let wrong = Secret::from_bytes(b"not the secret").unwrap();
    let tls = TlsClient::from_ca_file(&cert).unwrap();
    let e = push_file(
        &daemon.addr,
        Some("x.img"),
        &src,
        &client(Some(tls), Some(&wrong)),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_against_a_plain_server_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key) = self_signed(dir.path(), "server");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, noise(1 << 20, 1)).unwrap();
    let daemon = Daemon::start(ServeOptions::new(data_dir.clone())).await;

    let tls = TlsClient::from_ca_file(&cert).unwrap();
    let e = tokio::time::timeout(
        PROMPT,
        push_file(&daemon.addr, Some("a.img"), &src, &client(Some(tls), None)),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("does not speak TLS"), "{e}");

    // The daemon keeps serving plain clients.
    push_file(&daemon.addr, Some("a.img"), &src, &client(None, None))
        .await
        .unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_against_a_tls_server_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, noise(1 << 20, 2)).unwrap();
    let mut options = ServeOptions::new(data_dir.clone());
    options.tls = Some(TlsServer::from_pem_files(&cert, &key).unwrap());
    let daemon = Daemon::start(options).await;

    let e = tokio::time::timeout(
        PROMPT,
        push_file(&daemon.addr, Some("a.img"), &src, &client(None, None)),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    assert!(e.to_string().contains("requires TLS"), "{e:?}");

    // A client that trusts another certificate refuses this server.
    let (other, _) = self_signed(dir.path(), "other");
    let tls = TlsClient::from_ca_file(&other).unwrap();
    let e = tokio::time::timeout(
        PROMPT,
        push_file(&daemon.addr, Some("a.img"), &src, &client(Some(tls), None)),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e:?}");

    // A name the certificate does not carry is refused too.
    let tls = TlsClient::from_ca_file(&cert)
        .unwrap()
        .with_server_name("backup.example")
        .unwrap();
    let e = push_file(&daemon.addr, Some("a.img"), &src, &client(Some(tls), None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e:?}");
    assert!(!data_dir.join("a.img").exists());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_pair_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "receiver");
    let src = dir.path().join("src.img");
    let data = noise(3 << 20, 3);
    std::fs::write(&src, &data).unwrap();
    let out = dir.path().join("out.img");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let receiver_options = ClientOptions {
        tls_server: Some(TlsServer::from_pem_files(&cert, &key).unwrap()),
        ..ClientOptions::default()
    };
    let ro = ReceiveOptions::new(out.clone());
    let receiver =
        tokio::spawn(async move { receive_once(listener, ro, &receiver_options, Shutdown::never()).await });

    // A plain sender is turned away; the receiver keeps waiting for a TLS one.
    let e = tokio::time::timeout(PROMPT, push_file(&addr, None, &src, &client(None, None)))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(e.to_string().contains("requires TLS"), "{e:?}");

    let tls = TlsClient::from_ca_file(&cert).unwrap();
    push_file(&addr, None, &src, &client(Some(tls), None))
        .await
        .unwrap();
    let r = receiver.await.unwrap().unwrap();
    assert_eq!(r.image_bytes, data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_self_signed_ca_certificate_is_trusted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_ca(dir.path(), "ca-like");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, noise(1 << 20, 4)).unwrap();
    let mut options = ServeOptions::new(data_dir.clone());
    options.tls = Some(TlsServer::from_pem_files(&cert, &key).unwrap());
    let daemon = Daemon::start(options).await;

    let tls = TlsClient::from_ca_file(&cert).unwrap();
    push_file(&daemon.addr, Some("a.img"), &src, &client(Some(tls), None))
        .await
        .unwrap();
    assert!(data_dir.join("a.img").is_file());

    // The name is still checked.
    let tls = TlsClient::from_ca_file(&cert)
        .unwrap()
        .with_server_name("backup.example")
        .unwrap();
    let e = push_file(&daemon.addr, Some("b.img"), &src, &client(Some(tls), None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e:?}");
    daemon.stop().await;
}
