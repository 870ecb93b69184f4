//! End-to-end tests of `--progress json`: from `cbt copy`, `cbt send`,
//! `cbt recv` and a `cbt teleport` pull, every line on stderr is a JSON
//! object with the documented fields, lines come at a bounded rate, and the
//! last one says the work is complete. Without the option, a non-terminal
//! stderr gets no progress.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::proc::{daemon, noise_image, Proc, HANG};
use common::{json_u64, TestEnv};
use serde_json::Value;

/// The fields every line has, all numbers but `phase` and `eta_seconds`.
const FIELDS: [&str; 8] = [
    "bytes_done",
    "bytes_total",
    "local",
    "zero",
    "sent",
    "wire",
    "rate",
    "eta_seconds",
];

/// Parses `stderr` as JSON progress lines (skipping the lines `skip`
/// accepts), checks each, and returns them.
#[track_caller]
fn progress_lines(stderr: &str, phases: &[&str], skip: impl Fn(&str) -> bool) -> Vec<Value> {
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !skip(l))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stderr}")))
        .collect();
    assert!(!lines.is_empty(), "no progress:\n{stderr}");
    let mut done = 0;
    for v in &lines {
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), FIELDS.len() + 1, "{v}");
        let phase = v["phase"].as_str().unwrap();
        assert!(phases.contains(&phase), "phase {phase:?} in {v}");
        for f in FIELDS {
            let x = &v[f];
            assert!(x.is_u64() || (f == "eta_seconds" && x.is_null()), "{f} in {v}");
        }
        let (d, t) = (json_u64(v, "bytes_done"), json_u64(v, "bytes_total"));
        assert!(t > 0 && d <= t && d >= done, "{v} after {done}");
        done = d;
    }
    let last = lines.last().unwrap();
    assert_eq!(last["bytes_done"], last["bytes_total"], "{stderr}");
    assert_eq!(last["eta_seconds"], 0, "{stderr}");
    lines
}

/// At most 2 lines a second plus the first and the last.
#[track_caller]
fn assert_bounded(lines: usize, took: Duration) {
    let allowed = (took.as_secs_f64() * 2.0).floor() as usize + 2;
    assert!(lines <= allowed, "{lines} lines in {took:?}");
}

#[test]
fn copy_writes_json_lines_ending_complete() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 48, 1);
    let seeds = env.dir("seeds");
    // Half the source is already among the seeds.
    let half = env.path("seeds/half.img");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();

    let out = env.path("out/copy.img");
    let started = Instant::now();
    let o = env.cbt_ok(&args![
        "copy",
        &src,
        &out,
        "--seed",
        &seeds,
        "--progress",
        "json",
        "--json"
    ]);
    let took = started.elapsed();
    env.assert_identical(&src, &out);
    // The summary on stdout is untouched by the progress on stderr.
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stderr = String::from_utf8(o.stderr).unwrap();
    let lines = progress_lines(&stderr, &["copying"], |_| false);
    // Written once the size is known, and once at the end.
    assert!(lines.len() >= 2, "{stderr}");
    assert_bounded(lines.len(), took);
    let last = lines.last().unwrap();
    assert_eq!(json_u64(last, "bytes_total"), bytes.len() as u64);
    assert_eq!(json_u64(last, "local"), json_u64(&report, "bytes_local"));
    assert_eq!(json_u64(last, "sent"), json_u64(&report, "bytes_missing"));
    assert_eq!(json_u64(last, "wire"), 0);
    assert!(
        json_u64(last, "local") > 0 && json_u64(last, "sent") > 0,
        "{last}"
    );

    // The option is global: it may come before the subcommand.
    let o = env.cbt_ok(&args!["--progress", "json", "copy", &src, env.path("out/b.img")]);
    progress_lines(&String::from_utf8(o.stderr).unwrap(), &["copying"], |_| false);

    // stderr is not a terminal here: by default, and with `none`, no progress.
    for extra in [&[][..], &["--progress", "none"][..]] {
        let mut a = args!["copy", &src, env.path("out/c.img")].to_vec();
        a.extend(extra.iter().map(Into::into));
        let o = env.cbt_ok(&a);
        assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    let o = env.cbt(&args!["copy", &src, env.path("out/d.img"), "--progress", "yes"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn send_and_recv_write_json_lines() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 32, 2);
    let out = env.path("out/recv.img");
    let mut recv = Proc::spawn(
        &env,
        &args!["recv", "--listen", "127.0.0.1:0", &out, "--progress", "json"],
    );
    let addr = recv.addr();
    let started = Instant::now();
    let sent = env.cbt_ok(&args!["send", &src, &addr, "--progress", "json", "--json"]);
    let took = started.elapsed();
    let (status, _, recv_err) = recv.finish(HANG);
    assert!(status.success(), "{recv_err}");
    env.assert_identical(&src, &out);

    let send_err = String::from_utf8(sent.stderr).unwrap();
    let phases = ["connecting", "indexing", "sending", "verifying"];
    let lines = progress_lines(&send_err, &phases, |_| false);
    assert_bounded(lines.len(), took);
    let last = lines.last().unwrap();
    // Nothing was at the receiver: every non-zero block crossed the link.
    assert!(json_u64(last, "sent") > 0 && json_u64(last, "wire") >= json_u64(last, "sent"));
    // The sender's last line agrees with its report: zero blocks counted
    // as zero, not as found at the receiver (1 MiB in 8 is zeros).
    let report: Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(json_u64(&report, "blocks_local"), 0, "{report:#}");
    assert_eq!(json_u64(last, "local"), 0, "{last}");
    assert_eq!(
        json_u64(last, "zero"),
        json_u64(&report, "blocks_zero") * 4096,
        "{last}"
    );
    assert_eq!(json_u64(last, "zero"), 4 << 20, "{last}");

    let phases = ["connecting", "indexing", "receiving", "verifying"];
    let lines = progress_lines(&recv_err, &phases, |l| l.starts_with("cbt: listening on "));
    assert_eq!(json_u64(lines.last().unwrap(), "bytes_total"), 32 << 20);
    assert_eq!(json_u64(lines.last().unwrap(), "zero"), 4 << 20);
}

#[test]
fn teleport_pull_writes_json_lines() {
    let env = TestEnv::new();
    let export = env.dir("export");
    let src = noise_image(&env, "export/vm.img", 16, 3);
    let (_daemon, addr) = daemon(&env, &env.dir("data"), &args!["--export", &export]);
    let out = env.path("out/vm.img");
    let debs = env.dir("debs");
    let o = env.cbt_ok(&args![
        "--package-cache",
        &debs,
        "teleport",
        format!("{addr}/vm.img"),
        &out,
        "--progress",
        "json",
        "--json"
    ]);
    env.assert_identical(&src, &out);
    let stderr = String::from_utf8(o.stderr).unwrap();
    let phases = ["connecting", "indexing", "receiving", "verifying"];
    let lines = progress_lines(&stderr, &phases, |_| false);
    assert_eq!(json_u64(lines.last().unwrap(), "bytes_total"), 16 << 20);
}
