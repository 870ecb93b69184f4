//! README's exit-code table, from the real binary: 0 success, 1 failure,
//! 2 usage, 3 malformed or unsupported input, 4 I/O (a failed connection
//! included); and a reader closing standard output early (`cbt ... --json
//! | head -c 100`) is not an error. Code 5 (verification): a one-shot
//! receiver fed by a hand-made sender whose image digest is wrong.

#[macro_use]
mod common;

use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::proc::{daemon, write_secret};
use common::{assert_code, assert_no_output, closed_port, random_image, stderr, write_tree, TestEnv, MIB};

#[test]
fn exit_0_on_success() {
    let env = TestEnv::new();
    let src = random_image(&env, "src.raw", 1, 1);
    assert_code(&env.cbt(&args!["copy", &src, "out.raw"]), 0);
}

#[test]
fn exit_1_when_the_daemon_refuses_the_secret() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let right = write_secret(&env, "right.secret", "correct horse battery staple");
    let wrong = write_secret(&env, "wrong.secret", "something else entirely");
    let (_daemon, addr) = daemon(&env, &data, &args!["--secret-file", &right]);
    let img = random_image(&env, "src.raw", 1, 2);
    let out = env.cbt(&args![
        "send",
        "--secret-file",
        &wrong,
        &img,
        format!("{addr}/x.raw")
    ]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("authentication"), "{}", stderr(&out));
}

#[test]
fn exit_2_for_usage_errors_of_our_own_checks() {
    let env = TestEnv::new();
    let target = format!("{}/disk.img", closed_port());
    // recv without OUT.
    let out = env.cbt(&args!["recv", &target]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("output path"), "{}", stderr(&out));
    // A rate that is not one.
    let img = random_image(&env, "src.raw", 1, 3);
    let out = env.cbt(&args!["send", "--bwlimit", "fast", &img, &target]);
    assert_code(&out, 2);
    // An unknown key in the daemon's file, named with its line.
    let data = env.dir("data");
    let config = env.path("cbt.toml");
    fs::write(&config, format!("data = {data:?}\nbogus_key = 1\n")).expect("write config");
    let out = env.cbt(&args!["serve", "--config", &config]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("cbt.toml:2"), "{}", stderr(&out));
    // clap's own refusals too.
    assert_code(&env.cbt(&args!["copy", "--no-such-option", "a", "b"]), 2);
}

#[test]
fn exit_3_for_malformed_and_unsupported_input() {
    let env = TestEnv::new();
    let bad = env.path("truncated.qcow2");
    fs::write(&bad, b"QFI\xfb\0\0\0\x03").expect("write");
    let out = env.cbt(&args!["copy", &bad, "out.raw"]);
    assert_code(&out, 3);
    assert_no_output(&env.root().join("out.raw"));
    let vmdk = env.path("disk.vmdk");
    env.qemu_img(&args!["create", "-f", "vmdk", &vmdk, "1M"]);
    let out = env.cbt(&args!["copy", &vmdk, "out.raw"]);
    assert_code(&out, 3);
    assert!(stderr(&out).contains("qemu-img convert"), "{}", stderr(&out));
}

#[test]
fn exit_4_for_io_and_refused_connections() {
    let env = TestEnv::new();
    let img = random_image(&env, "src.raw", 1, 4);
    let out = env.cbt(&args!["send", &img, format!("{}/x.raw", closed_port())]);
    assert_code(&out, 4);
    let out = env.cbt(&args!["recv", format!("{}/x.raw", closed_port()), "out.raw"]);
    assert_code(&out, 4);
    let out = env.cbt(&args!["copy", "no-such-image.raw", "out.raw"]);
    assert_code(&out, 4);
}

#[test]
fn exit_5_when_the_received_image_does_not_verify() {
    use std::sync::Arc;

    use cbt_core::{open_image, Digest, ImageSpec, Layout};
    use cbt_net::connection::{FrameReader, FrameWriter};
    use cbt_net::frame::{Begin, Frame, GroupEntry, Mode};
    use cbt_net::Counters;

    let env = TestEnv::new();
    // A 1 MiB all-zero image: its layout is what a real sender announces.
    let zeros = env.path("zeros.raw");
    fs::write(&zeros, vec![0u8; MIB as usize]).unwrap();
    let layout = Layout::detect(open_image(&ImageSpec::file(&zeros)).unwrap().as_ref(), 4096).unwrap();
    let groups = layout.block_count().div_ceil(64);

    let mut recv = common::proc::Proc::spawn(&env, &args!["recv", "--listen", "127.0.0.1:0", "out.raw"]);
    let addr = recv.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fed: Result<(), String> = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (r, w) = stream.into_split();
        let counters = Arc::new(Counters::default());
        let mut reader = FrameReader::new(r, Arc::clone(&counters), addr.clone());
        let mut writer = FrameWriter::new(w, counters, addr.clone());
        let limit = Duration::from_secs(30);
        cbt_net::handshake::client(&mut reader, &mut writer, &addr, Mode::Push, "", None, limit)
            .await
            .unwrap();
        writer
            .send(&Frame::Begin(Begin {
                image_len: layout.len(),
                block_size: layout.block_size(),
                group_blocks: 64,
                regions: layout.regions().to_vec(),
                label: "fake sender".into(),
                window_log: 0,
            }))
            .await
            .unwrap();
        loop {
            match reader.expect_frame(limit).await {
                Ok(Frame::Ready { .. }) => break,
                Ok(Frame::Keepalive) => {}
                other => return Err(format!("expected READY, got {other:?}")),
            }
        }
        writer
            .send(&Frame::Groups {
                entries: vec![GroupEntry::Zeros(groups)],
            })
            .await
            .unwrap();
        // Every block is there (zeros), but the image digest claimed is not theirs.
        writer
            .send(&Frame::End {
                image_digest: Digest([7; 32]),
                groups,
            })
            .await
            .unwrap();
        // The receiver answers with an error and closes.
        loop {
            match reader.expect_frame(limit).await {
                Ok(Frame::Error { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(())
    });
    if let Err(e) = fed {
        let _ = recv.kill9();
        panic!("{e}\n{}", recv.log());
    }
    let status = wait(&mut recv.child);
    assert_eq!(status.code(), Some(5), "{}", recv.log());
    assert!(recv.log().contains("verif"), "{}", recv.log());
    assert_no_output(&env.path("out.raw"));
}

#[test]
fn a_reader_closing_stdout_early_is_not_an_error() {
    let env = TestEnv::new();
    let root = env.dir("guest");
    // Enough files that the JSON outgrows the pipe's buffer.
    write_tree(&root.join("home/user"), 7, 600);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cbt"))
        .args(args!["--no-cache", "describe", &root, "--json", "--no-verify"])
        .current_dir(env.root())
        .env_remove("CBT_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cbt");
    let mut first = [0u8; 100];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("read the first 100 bytes");
    // The read end is closed here (like `head -c 100`).
    let status = wait(&mut child);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
    assert!(!err.contains("error"), "{err}");
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("cbt describe did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
