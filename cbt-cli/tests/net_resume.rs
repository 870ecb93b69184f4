//! End-to-end tests of interrupted and in-place transfers over the network
//! (the real binary on loopback): a killed sender or receiver, SIGTERM to
//! the daemon, and in-place updates killed midway, then run again.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::proc::{allocated, daemon, noise_image, wait_allocated, Proc};
use common::{cbt_json, check_summary, json_u64, TestEnv, MIB};

#[test]
fn resume_after_killing_the_sender() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 24, 13);
    let data = env.dir("data");
    let (mut d, addr) = daemon(&env, &data, &[]);
    let partial = data.join(".vm.img.cbt-partial");

    let sender = Proc::spawn(
        &env,
        &args!["send", src, format!("{addr}/vm.img"), "--bwlimit", "2M"],
    );
    wait_allocated(&partial, 4 * MIB, Duration::from_secs(60));
    sender.signal("-KILL");
    let _ = sender.finish(Duration::from_secs(10));
    d.wait_log("receive failed", Duration::from_secs(30));
    assert!(
        !data.join("vm.img").exists(),
        "a final file after a failed transfer"
    );
    let kept = allocated(&partial);
    assert!(kept >= 4 * MIB);

    let v = cbt_json(&env, &args!["send", src, format!("{addr}/vm.img")]);
    check_summary(&v);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let local_bytes = json_u64(&v, "blocks_local") * 4096;
    assert!(
        local_bytes + 64 * MIB >= kept && local_bytes >= 3 * MIB,
        "resume reused {local_bytes} of {kept} bytes:\n{v:#}"
    );
    // Resume files are gone after success.
    let names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vm.img"]);
}

#[test]
fn resume_after_sigkill_of_the_receiver() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 24, 14);
    let out = env.path("out/vm.img");
    let partial = env.path("out/.vm.img.cbt-partial");
    let empty = env.dir("empty");

    let mut recv = Proc::spawn(
        &env,
        &args!["recv", "--listen", "127.0.0.1:0", out, "--seed", empty],
    );
    let addr = recv.addr();
    let sender = Proc::spawn(&env, &args!["send", src, addr, "--bwlimit", "2M"]);
    wait_allocated(&partial, 4 * MIB, Duration::from_secs(60));
    recv.signal("-KILL");
    let (status, _, err) = sender.finish(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the sender must notice the receiver died:\n{err}"
    );
    assert!(!out.exists());

    let mut recv = Proc::spawn(
        &env,
        &args!["recv", "--listen", "127.0.0.1:0", out, "--seed", empty, "--json"],
    );
    let addr = recv.addr();
    let sent = cbt_json(&env, &args!["send", src, addr]);
    let received = recv.json();
    check_summary(&received);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    assert!(
        json_u64(&sent, "blocks_local") * 4096 >= 3 * MIB,
        "nothing reused:\n{sent:#}"
    );
}

/// A qcow2 output keeps its tables in memory; unless they are flushed as
/// the transfer goes, a receiver killed with SIGKILL leaves a partial file
/// whose data cannot be found, and the resume sends everything again.
#[test]
fn resume_a_qcow2_output_after_sigkill_of_the_receiver() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 24, 17);
    let out = env.path("out/vm.qcow2");
    let partial = env.path("out/.vm.qcow2.cbt-partial");
    let empty = env.dir("empty");
    let recv_args = |json: bool| {
        let mut a = args![
            "recv",
            "--listen",
            "127.0.0.1:0",
            out,
            "--seed",
            empty,
            "--format",
            "qcow2"
        ]
        .to_vec();
        if json {
            a.push("--json".into());
        }
        a
    };

    let mut recv = Proc::spawn(&env, &recv_args(false));
    let addr = recv.addr();
    let sender = Proc::spawn(&env, &args!["send", src, addr, "--bwlimit", "2M"]);
    wait_allocated(&partial, 14 * MIB, Duration::from_secs(60));
    recv.signal("-KILL");
    let _ = sender.finish(Duration::from_secs(60));
    assert!(!out.exists());

    let mut recv = Proc::spawn(&env, &recv_args(true));
    let addr = recv.addr();
    let sent = cbt_json(&env, &args!["send", src, addr]);
    check_summary(&recv.json());
    let status = Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "qemu-img compare: the output differs from the source"
    );
    // At least the first 8 MiB flush point was passed before the kill.
    assert!(
        json_u64(&sent, "blocks_local") * 4096 >= 8 * MIB,
        "the partial qcow2 seeded too little:\n{sent:#}"
    );
}

#[test]
fn sigterm_stops_the_daemon_without_a_final_file() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 16, 15);
    let data = env.dir("data");
    let (d, addr) = daemon(&env, &data, &[]);
    let sender = Proc::spawn(
        &env,
        &args!["send", src, format!("{addr}/vm.img"), "--bwlimit", "2M"],
    );
    wait_allocated(&data.join(".vm.img.cbt-partial"), MIB, Duration::from_secs(60));
    d.signal("-TERM");
    let (status, _, log) = d.finish(Duration::from_secs(30));
    assert!(status.success(), "daemon exit {status}:\n{log}");
    let (status, _, _) = sender.finish(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        !data.join("vm.img").exists(),
        "half-written file at the final path"
    );
    assert!(
        data.join(".vm.img.cbt-partial").exists(),
        "partial output kept for a resume"
    );
}

/// `cbt recv --inplace`: a receiver killed with SIGKILL in the middle of an
/// in-place update leaves a journal saying the image is inconsistent; the
/// same command run again completes it, writing only what differs.
#[test]
fn in_place_update_killed_midway_completes_when_run_again() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 16, 21);
    let out = env.path("out/vm.img");
    std::fs::copy(noise_image(&env, "old.img", 16, 22), &out).unwrap();
    let journal = env.path("out/.vm.img.cbt-inplace");
    let empty = env.dir("empty");

    let mut recv = Proc::spawn(
        &env,
        &args![
            "recv",
            "--inplace",
            "--listen",
            "127.0.0.1:0",
            out,
            "--seed",
            empty
        ],
    );
    let addr = recv.addr();
    let sender = Proc::spawn(&env, &args!["send", src, addr, "--bwlimit", "2M"]);
    let start = Instant::now();
    while !journal.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no journal:\n{}",
            recv.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    recv.signal("-KILL");
    let (status, _, err) = sender.finish(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the sender must notice the receiver died:\n{err}"
    );
    assert!(
        journal.exists(),
        "a killed in-place update must leave its journal"
    );
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());

    let mut recv = Proc::spawn(
        &env,
        &args![
            "recv",
            "--inplace",
            "--listen",
            "127.0.0.1:0",
            out,
            "--seed",
            empty,
            "--json"
        ],
    );
    let addr = recv.addr();
    cbt_json(&env, &args!["send", src, addr]);
    let received = recv.json();
    check_summary(&received);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    assert!(
        !journal.exists(),
        "the journal is removed once the update completed"
    );
    // What arrived before the kill is in place and not written again.
    assert!(
        json_u64(&received, "bytes_written") < 14 * MIB,
        "rewrote everything:\n{received:#}"
    );
}

/// `cbt send --inplace` to a daemon updates its existing image in place
/// (same inode, only what differs written); a daemon configured with
/// `allow_inplace = false` refuses such pushes and keeps the image.
#[test]
fn push_in_place_to_a_daemon() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new();
    let v1 = noise_image(&env, "v1.img", 8, 31);
    let data = env.dir("data");
    let (_d, addr) = daemon(&env, &data, &[]);
    cbt_json(&env, &args!["send", v1, format!("{addr}/vm.img")]);
    let target = data.join("vm.img");
    let inode = std::fs::metadata(&target).unwrap().ino();

    let v2 = env.path("v2.img");
    std::fs::copy(&v1, &v2).unwrap();
    common::write_at(&v2, 3 * MIB, &[0x42; 8192]);
    let sent = cbt_json(&env, &args!["send", "--inplace", v2, format!("{addr}/vm.img")]);
    check_summary(&sent);
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&v2).unwrap());
    assert_eq!(
        std::fs::metadata(&target).unwrap().ino(),
        inode,
        "not updated in place"
    );
    assert!(!data.join(".vm.img.cbt-inplace").exists());

    let config = env.path("serve.toml");
    std::fs::write(
        &config,
        format!("data = {:?}\nallow_inplace = false\n", data.display().to_string()),
    )
    .unwrap();
    let (_d2, addr2) = {
        let mut p = Proc::spawn(
            &env,
            &args!["serve", "--listen", "127.0.0.1:0", "--config", config],
        );
        let a = p.addr();
        (p, a)
    };
    let (status, _, err) = Proc::spawn(&env, &args!["send", "--inplace", v1, format!("{addr2}/vm.img")])
        .finish(Duration::from_secs(60));
    assert!(!status.success(), "{err}");
    assert!(err.contains("in-place"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&v2).unwrap());
}
