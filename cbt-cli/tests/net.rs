//! End-to-end tests of `cbt send`, `cbt recv` and `cbt serve` on loopback:
//! the real binary, images made by mkfs.ext4 and qemu-img, outputs checked
//! with `qemu-img compare`. Daemons and one-shot receivers listen on
//! 127.0.0.1:0 and announce their port on stderr.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::proc::{daemon, noise_image, write_secret, Proc};
use common::{cbt_json, check_summary, json_f64, json_u64, nonzero_blocks, TestEnv, XorShift, MIB};
use serde_json::Value;

fn wire(v: &Value) -> u64 {
    json_u64(v, "wire_bytes_sent") + json_u64(v, "wire_bytes_received")
}

/// A 64 MiB ext4 image holding two trees; `extra` adds a third tree.
fn ext4_image(env: &TestEnv, rel: &str, extra: Option<u64>) -> PathBuf {
    let tree = env.dir(&format!("trees/{rel}"));
    common::write_tree(&tree, 1, 60);
    common::write_tree(&tree, 2, 40);
    if let Some(seed) = extra {
        common::write_tree(&tree, seed, 30);
    }
    env.ext4(&tree, rel, 64)
}

#[test]
fn push_and_pull_raw_and_qcow2() {
    let env = TestEnv::new();
    let src = ext4_image(&env, "src.img", Some(3));
    let export = env.dir("export");
    let src_qcow2 = env.to_qcow2(&src, "export/src.qcow2", &[]);
    std::fs::copy(&src, export.join("src.img")).unwrap();
    let data = env.dir("data");
    // The receiver's seeds: an older image with two of the three trees.
    let seeds = env.dir("seeds");
    let old = ext4_image(&env, "seeds/old.img", None);
    env.assert_different(&old, &src);
    let (_d, addr) = daemon(&env, &data, &args!["--export", export]);

    // Push a qcow2 source into the daemon, which seeds from its data dir only.
    let pushed = cbt_json(&env, &args!["send", src_qcow2, format!("{addr}/pushed.img")]);
    check_summary(&pushed);
    env.assert_identical(&data.join("pushed.img"), &src);
    assert_eq!(json_u64(&pushed, "blocks_local"), 0);

    // Pushing the raw source under another name: every block is already there.
    let again = cbt_json(&env, &args!["send", src, format!("{addr}/again.img")]);
    check_summary(&again);
    env.assert_identical(&data.join("again.img"), &src);
    assert_eq!(json_u64(&again, "blocks_sent"), 0, "{again:#}");

    // Pull both exports, into raw and qcow2, seeded with the older image.
    for (name, out, format) in [
        ("src.qcow2", "pulled.img", "raw"),
        ("src.img", "pulled.qcow2", "qcow2"),
    ] {
        let out = env.path(out);
        let pulled = cbt_json(
            &env,
            &args![
                "recv",
                format!("{addr}/{name}"),
                out,
                "--seed",
                seeds,
                "--format",
                format
            ],
        );
        check_summary(&pulled);
        env.assert_identical(&out, &src);
        assert!(
            json_u64(&pulled, "blocks_local") > 0,
            "the older image shares two trees:\n{pulled:#}"
        );
        assert!(
            json_u64(&pulled, "blocks_sent") > 0,
            "the third tree is new:\n{pulled:#}"
        );
    }
    // Nothing but the images in the data directory (no side files left).
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["again.img", "pushed.img"]);
}

#[test]
fn one_shot_pair_and_wire_cost() {
    let env = TestEnv::new();
    let src = ext4_image(&env, "src.img", Some(4));
    let nonzero = nonzero_blocks(&src).len() as u64;
    let seeds = env.dir("seeds");
    env.to_qcow2(&src, "seeds/copy.qcow2", &["-c"]);
    let empty = env.dir("empty");

    let run = |out: &str, seed: &Path| -> (Value, Value) {
        let out = env.path(out);
        let mut recv = Proc::spawn(
            &env,
            &args!["recv", "--listen", "127.0.0.1:0", out, "--seed", seed, "--json"],
        );
        let addr = recv.addr();
        let sent = cbt_json(&env, &args!["send", src, addr]);
        let received = recv.json();
        env.assert_identical(&out, &src);
        check_summary(&sent);
        check_summary(&received);
        assert_eq!(
            json_u64(&sent, "wire_bytes_sent"),
            json_u64(&received, "wire_bytes_received")
        );
        (sent, received)
    };

    // ΔD = 0: every block exists at the receiver (in a compressed qcow2).
    let (sent, received) = run("all_local.img", &seeds);
    let image = json_u64(&sent, "image_bytes");
    assert_eq!(json_u64(&received, "blocks_local"), nonzero);
    eprintln!("ΔD=0: {} wire bytes for {image} image bytes", wire(&sent));
    assert!(
        (wire(&sent) as f64) < image as f64 * 0.001,
        "more than 0.1% on the wire:\n{sent:#}"
    );

    // ΔD = 1: nothing at the receiver; every non-zero block crosses once.
    let (sent, _) = run("all_sent.img", &empty);
    assert_eq!(json_u64(&sent, "blocks_sent"), nonzero);
    eprintln!(
        "ΔD=1: {} wire bytes for {} non-zero bytes",
        wire(&sent),
        nonzero * 4096
    );
    assert!(
        wire(&sent) < nonzero * 4096 * 102 / 100,
        "more than 2% overhead:\n{sent:#}"
    );
}

#[test]
fn wrong_secret_is_refused() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 7);
    let data = env.dir("data");
    let good = write_secret(&env, "good.key", "correct horse battery staple");
    let bad = write_secret(&env, "bad.key", "incorrect horse battery");
    let (_d, addr) = daemon(&env, &data, &args!["--secret-file", good]);

    for extra in [args!["--secret-file", bad].to_vec(), Vec::new()] {
        let mut a = args!["send", src, format!("{addr}/x.img")].to_vec();
        a.extend(extra);
        let (status, _, err) = Proc::spawn(&env, &a).finish(Duration::from_secs(60));
        assert!(!status.success() && status.code() != Some(101), "{status}\n{err}");
        assert!(err.contains("authentication failed"), "{err}");
    }
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);

    // The right secret, given through the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_cbt"))
        .args(args![
            "--cache",
            env.cache_dir(),
            "send",
            src,
            format!("{addr}/x.img")
        ])
        .env("CBT_SECRET_FILE", &good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(data.join("x.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );

    // A client with a secret refuses a server without one.
    let open = env.dir("open");
    let (_o, open_addr) = daemon(&env, &open, &[]);
    let (status, _, err) = Proc::spawn(
        &env,
        &args!["send", src, format!("{open_addr}/y.img"), "--secret-file", good],
    )
    .finish(Duration::from_secs(60));
    assert!(!status.success(), "{err}");
    assert!(err.contains("does not authenticate"), "{err}");
}

#[test]
fn traversal_names_are_refused() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 2, 8);
    let data = env.dir("srv/data");
    let export = env.dir("srv/export");
    std::fs::copy(&src, env.path("srv/secret.img")).unwrap();
    let (_d, addr) = daemon(&env, &data, &args!["--export", export]);
    for name in ["../x", "/etc/x", "..", ".hidden", "a/b"] {
        let (status, _, err) =
            Proc::spawn(&env, &args!["send", src, format!("{addr}/{name}")]).finish(Duration::from_secs(60));
        assert!(
            !status.success() && status.code() != Some(101),
            "push {name}: {status}\n{err}"
        );
        assert!(
            err.contains("refused") || err.contains("reported"),
            "push {name}: {err}"
        );
        let out = env.path("pulled.img");
        let (status, _, err) =
            Proc::spawn(&env, &args!["recv", format!("{addr}/{name}"), out]).finish(Duration::from_secs(60));
        assert!(
            !status.success() && status.code() != Some(101),
            "pull {name}: {status}\n{err}"
        );
        assert!(!out.exists());
    }
    // Pulling a file next to the export directory is refused too.
    let (status, _, _) = Proc::spawn(
        &env,
        &args!["recv", format!("{addr}/../secret.img"), env.path("s.img")],
    )
    .finish(Duration::from_secs(60));
    assert!(!status.success());
    assert!(!env.root().join("x").exists() && !env.root().join("srv/x").exists());
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
}

/// Reads what the server answers until it closes: its preamble, then frames.
fn server_answer(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

/// True if `bytes` (after the 12-byte preamble) hold an ERROR frame.
fn has_error_frame(bytes: &[u8]) -> bool {
    if bytes.len() < 12 || &bytes[..8] != b"CBTNET\r\n" {
        return false;
    }
    let mut rest = &bytes[12..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest[4] == 0x05 {
            return true;
        }
        rest = &rest[(5 + len).min(rest.len())..];
    }
    false
}

#[test]
fn malformed_frames_get_an_error_and_the_daemon_keeps_serving() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 9);
    let data = env.dir("data");
    let (mut d, addr) = daemon(&env, &data, &[]);
    let mut preamble = [0u8; cbt_net::frame::PREAMBLE_LEN];
    preamble[..8].copy_from_slice(&cbt_net::frame::MAGIC);
    preamble[8..10].copy_from_slice(&cbt_net::frame::VERSION.to_be_bytes());

    // A client that connected and says nothing stays open meanwhile.
    let idle = TcpStream::connect(&addr).unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not cbt", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        ("wrong version", b"CBTNET\r\n\x00\x63\x00\x00".to_vec()),
        (
            "oversized",
            [&preamble[..], &[0xff, 0xff, 0xff, 0xff, 0x17]].concat(),
        ),
        ("unknown type", [&preamble[..], &[0, 0, 0, 0, 0x7e]].concat()),
        (
            "malformed hello",
            [&preamble[..], &[0, 0, 0, 3, 0x01, 9, 0, 0]].concat(),
        ),
        (
            "out of turn",
            [&preamble[..], &[0, 0, 0, 8, 0x18, 0, 0, 0, 0, 0, 0, 0, 1]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&bytes).unwrap();
        let answer = server_answer(&mut s);
        assert!(
            has_error_frame(&answer),
            "{what}: no ERROR frame in {answer:?}\n{}",
            d.log()
        );
    }
    // Truncated: half a frame, then the client goes away.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&[&preamble[..], &[0, 0, 1, 0, 0x01, 1]].concat())
            .unwrap();
    }
    d.wait_log("exceeds the maximum", Duration::from_secs(20));

    // The daemon still serves a real client.
    let v = cbt_json(&env, &args!["send", src, format!("{addr}/ok.img")]);
    check_summary(&v);
    assert_eq!(
        std::fs::read(data.join("ok.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    drop(idle);
}

#[test]
fn two_transfers_at_once() {
    let env = TestEnv::new();
    let a = noise_image(&env, "a.img", 8, 10);
    let b = noise_image(&env, "b.img", 8, 11);
    let export = env.dir("export");
    let c = noise_image(&env, "export/c.img", 8, 12);
    let data = env.dir("data");
    let (d, addr) = daemon(&env, &data, &args!["--export", export, "--bwlimit", "8M"]);
    // Rate-limited so they overlap: about a second each.
    let pa = Proc::spawn(
        &env,
        &args!["send", a, format!("{addr}/a.img"), "--bwlimit", "6M", "--json"],
    );
    let pb = Proc::spawn(
        &env,
        &args!["send", b, format!("{addr}/b.img"), "--bwlimit", "6M", "--json"],
    );
    let out = env.path("c.out");
    let pc = Proc::spawn(&env, &args!["recv", format!("{addr}/c.img"), out, "--json"]);
    let (va, vb, vc) = (pa.json(), pb.json(), pc.json());
    for v in [&va, &vb, &vc] {
        check_summary(v);
        assert!(json_f64(v, "seconds") > 0.5, "not rate-limited?\n{v:#}");
    }
    assert_eq!(
        std::fs::read(data.join("a.img")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    assert_eq!(
        std::fs::read(data.join("b.img")).unwrap(),
        std::fs::read(&b).unwrap()
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&c).unwrap());
    assert!(!d.log().contains("busy"));
    d.signal("-TERM");
}

#[test]
fn connection_cap_and_idle_timeout() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 2, 16);
    let data = env.dir("data");
    let (_d, addr) = daemon(
        &env,
        &data,
        &args!["--max-connections", "1", "--idle-timeout", "5"],
    );

    // A silent client does not take the only slot: slots are taken after
    // authentication.
    let mut idle = TcpStream::connect(&addr).unwrap();
    let since = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let v = cbt_json(&env, &args!["send", src, format!("{addr}/a.img")]);
    check_summary(&v);

    // It is turned away at the handshake deadline (5 s), with an error.
    let answer = server_answer(&mut idle);
    assert!(has_error_frame(&answer), "{answer:?}");
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    drop(idle);

    // A transfer holds the only slot (slowed by --bwlimit): the next is told
    // the server is busy.
    let big = noise_image(&env, "big.img", 4, 17);
    let slow = Proc::spawn(
        &env,
        &args!["send", "--bwlimit", "256K", big, format!("{addr}/b.img")],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _, err) =
        Proc::spawn(&env, &args!["send", src, format!("{addr}/c.img")]).finish(Duration::from_secs(60));
    assert!(!status.success(), "{err}");
    assert!(err.contains("busy"), "{err}");
    let (status, _, err) = slow.finish(Duration::from_secs(90));
    assert!(status.success(), "{err}");
}

#[test]
fn partitioned_disk_finds_blocks_of_a_bare_filesystem() {
    let env = TestEnv::new();
    let tree = env.tree("tree", 21, 60);
    let fs = env.ext4(&tree, "seeds/fs.img", 40);
    // The same filesystem inside a partition starting at sector 63, so
    // its blocks sit at 512-byte alignment on the disk.
    let disk = env.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    env.sfdisk(&disk, "label: dos\nstart=63, size=90000, type=83\n");
    common::copy_into(&fs, &disk, 63 * 512);
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &args!["--seed", env.root().join("seeds")]);
    let v = cbt_json(&env, &args!["send", disk, format!("{addr}/disk.img")]);
    check_summary(&v);
    env.assert_identical(&data.join("disk.img"), &disk);
    let fs_blocks = nonzero_blocks(&fs).len() as u64;
    assert!(
        json_u64(&v, "blocks_local") >= fs_blocks * 9 / 10,
        "partition-aligned blocks not found:\n{v:#}"
    );
    assert!(json_u64(&v, "blocks_sent") <= 4, "{v:#}");
}

#[test]
fn odd_sizes_and_empty_images() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &[]);
    for (name, len) in [
        ("empty.img", 0usize),
        ("tiny.img", 1000),
        ("odd.img", 3 * 4096 + 123),
    ] {
        let path = env.path(name);
        std::fs::write(&path, XorShift::new(len as u64).bytes(len)).unwrap();
        let v = cbt_json(&env, &args!["send", path, format!("{addr}/{name}")]);
        assert_eq!(json_u64(&v, "image_bytes"), len as u64);
        assert_eq!(
            std::fs::read(data.join(name)).unwrap(),
            std::fs::read(&path).unwrap(),
            "{name}"
        );
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, made at test time.
fn self_signed(env: &TestEnv, name: &str) -> (PathBuf, PathBuf) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = env.path(&format!("tls/{name}.crt"));
    let key = env.path(&format!("tls/{name}.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn serve_from_a_config_file_with_flags_overriding_it() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 21);
    let data = env.dir("etc/data");
    let other = env.dir("other");
    let export = env.dir("etc/export");
    std::fs::copy(&src, export.join("exported.img")).unwrap();
    write_secret(&env, "etc/secret", "a secret from the config file");
    // Relative paths are relative to the file's directory.
    let config = env.path("etc/cbt.toml");
    std::fs::write(
        &config,
        "# cbt serve settings\nlisten = \"127.0.0.1:0\"\ndata = \"data\"\nexport = \"export\"\n\
         secret_file = \"secret\"\nmax_connections = 4\nidle_timeout = 60\nformat = \"raw\"\n",
    )
    .unwrap();

    let mut d = Proc::spawn(&env, &args!["serve", "--config", config]);
    let addr = d.addr();
    let secret = env.path("etc/secret");
    let v = cbt_json(
        &env,
        &args!["send", src, format!("{addr}/vm.img"), "--secret-file", secret],
    );
    check_summary(&v);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let out = env.path("pulled.img");
    cbt_json(
        &env,
        &args![
            "recv",
            format!("{addr}/exported.img"),
            out,
            "--secret-file",
            secret
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    // Without the file's secret: refused.
    let (status, _, err) =
        Proc::spawn(&env, &args!["send", src, format!("{addr}/x.img")]).finish(Duration::from_secs(60));
    assert!(
        !status.success() && err.contains("authentication failed"),
        "{err}"
    );
    drop(d);

    // A flag wins over the file: --data.
    let mut d = Proc::spawn(&env, &args!["serve", "--config", config, "--data", other]);
    let addr = d.addr();
    cbt_json(
        &env,
        &args!["send", src, format!("{addr}/vm2.img"), "--secret-file", secret],
    );
    assert!(other.join("vm2.img").is_file() && !data.join("vm2.img").exists());
    drop(d);

    // An unknown key is an error naming the file, the line and the key.
    let bad = env.path("etc/bad.toml");
    std::fs::write(&bad, "data = \"data\"\nmax_conections = 4\n").unwrap();
    let (status, _, err) =
        Proc::spawn(&env, &args!["serve", "--config", bad]).finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "a usage error: {err}");
    assert!(
        err.contains("bad.toml:2") && err.contains("max_conections"),
        "{err}"
    );
    // No data directory anywhere.
    let empty = env.path("etc/empty.toml");
    std::fs::write(&empty, "listen = \"127.0.0.1:0\"\n").unwrap();
    let (status, _, err) =
        Proc::spawn(&env, &args!["serve", "--config", empty]).finish(Duration::from_secs(30));
    assert!(!status.success() && err.contains("--data DIR"), "{err}");
}

#[test]
fn tls_push_pull_and_mismatches() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 22);
    let (cert, key) = self_signed(&env, "server");
    let (other_cert, _) = self_signed(&env, "other");
    let data = env.dir("data");
    std::fs::copy(&src, env.dir("export").join("e.img")).unwrap();
    let secret = write_secret(&env, "secret", "secret inside TLS");
    let (_d, addr) = daemon(
        &env,
        &data,
        &args![
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--secret-file",
            secret,
            "--export",
            env.path("export")
        ],
    );

    let v = cbt_json(
        &env,
        &args![
            "send",
            src,
            format!("{addr}/vm.img"),
            "--tls-ca",
            cert,
            "--secret-file",
            secret
        ],
    );
    check_summary(&v);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let out = env.path("pulled.qcow2");
    let v = cbt_json(
        &env,
        &args![
            "recv",
            format!("{addr}/e.img"),
            out,
            "--format",
            "qcow2",
            "--tls",
            "--tls-ca",
            cert,
            "--secret-file",
            secret
        ],
    );
    check_summary(&v);
    env.assert_identical(&out, &src);

    let fails = |a: &[OsString], needle: &str| {
        let start = Instant::now();
        let (status, _, err) = Proc::spawn(&env, a).finish(Duration::from_secs(30));
        assert!(!status.success(), "{err}");
        assert!(err.contains(needle), "expected {needle:?}:\n{err}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "took {:?}",
            start.elapsed()
        );
    };
    // A plain client at the TLS daemon is told to use TLS.
    fails(
        &args!["send", src, format!("{addr}/x.img"), "--secret-file", secret],
        "requires TLS",
    );
    // A certificate the client does not trust.
    fails(
        &args![
            "send",
            src,
            format!("{addr}/x.img"),
            "--tls-ca",
            other_cert,
            "--secret-file",
            secret
        ],
        "not trusted",
    );
    // A TLS client at a plain daemon.
    let plain = env.dir("plain");
    let (_p, plain_addr) = daemon(&env, &plain, &[]);
    fails(
        &args!["send", src, format!("{plain_addr}/x.img"), "--tls-ca", cert],
        "does not speak TLS",
    );
    // Options on the wrong side.
    fails(
        &args![
            "recv",
            format!("{addr}/e.img"),
            env.path("x.img"),
            "--tls-cert",
            cert,
            "--tls-key",
            key
        ],
        "listening side",
    );
    fails(
        &args![
            "recv",
            "--listen",
            "127.0.0.1:0",
            env.path("x.img"),
            "--tls-ca",
            cert
        ],
        "connecting side",
    );
    fails(&args!["serve", "--data", plain, "--tls-cert", cert], "--tls-key");
    assert!(!data.join("x.img").exists() && std::fs::read_dir(&plain).unwrap().count() == 0);

    // The one-shot pair over TLS.
    let out = env.path("oneshot.img");
    let mut recv = Proc::spawn(
        &env,
        &args![
            "recv",
            "--listen",
            "127.0.0.1:0",
            out,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--json"
        ],
    );
    let a = recv.addr();
    cbt_json(&env, &args!["send", src, a, "--tls", "--tls-ca", cert]);
    check_summary(&recv.json());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn demo_runs_a_daemon_and_a_push() {
    let env = TestEnv::new();
    let dir = env.path("demo");
    let (status, out, err) =
        Proc::spawn(&env, &args!["demo", "--size-mib", "16", "--dir", dir]).finish(Duration::from_secs(120));
    assert!(status.success(), "{out}\n{err}");
    for needle in [
        "started a cbt daemon on 127.0.0.1:",
        "on the wire:",
        "against a full copy",
        "same digest",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    assert_eq!(
        std::fs::read(dir.join("daemon/new.img")).unwrap(),
        std::fs::read(dir.join("new.img")).unwrap()
    );
    // Not a terminal: no progress bar.
    assert!(!err.contains("ETA"), "{err}");
}
