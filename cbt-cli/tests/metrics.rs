//! `cbt serve --metrics`: the real daemon scraped over HTTP during and
//! after pushes; its counters must move by exactly what the clients'
//! `--json` reports say, and failures must be counted by reason.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::proc::{daemon, noise_image, write_secret, Proc, HANG};
use common::{cbt_json, json_u64, TestEnv, BLOCK};

/// The address the daemon announced for its metrics.
fn metrics_addr(d: &mut Proc) -> String {
    d.wait_log("cbt: metrics on ", Duration::from_secs(30));
    let log = d.log();
    let line = log.lines().find(|l| l.starts_with("cbt: metrics on ")).unwrap();
    line.trim_start_matches("cbt: metrics on ").trim().to_string()
}

/// One HTTP GET; the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one series (`name{labels}`) in a scrape.
#[track_caller]
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

#[test]
fn counters_follow_transfers_and_failures_by_reason() {
    let env = TestEnv::new();
    // 8 MiB of noise with one zero MiB: 1792 data blocks, 256 zero blocks.
    let src = noise_image(&env, "src.img", 8, 5);
    let data = env.dir("data");
    let secret = write_secret(&env, "good.key", "correct horse battery staple");
    let wrong = write_secret(&env, "bad.key", "incorrect horse battery");
    let (mut d, addr) = daemon(
        &env,
        &data,
        &args!["--metrics", "127.0.0.1:0", "--secret-file", secret],
    );
    let m = metrics_addr(&mut d);
    let before = scrape(&m);
    assert_eq!(value(&before, "cbt_transfers_active"), 0.0);
    assert_eq!(
        value(&before, "cbt_transfers_finished_total{direction=\"push\"}"),
        0.0
    );
    assert_eq!(get(&m, "/").0, "HTTP/1.1 404 Not Found");

    // A slow push: seen as active while it runs.
    let push = Proc::spawn(
        &env,
        &args![
            "send",
            src,
            format!("{addr}/a.img"),
            "--secret-file",
            secret,
            "--bwlimit",
            "2M",
            "--json"
        ],
    );
    let start = Instant::now();
    while value(&scrape(&m), "cbt_transfers_active") != 1.0 {
        assert!(start.elapsed() < HANG, "the push never showed as active");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = push.json();
    let after = scrape(&m);
    assert_eq!(value(&after, "cbt_transfers_active"), 0.0);
    assert_eq!(
        value(&after, "cbt_transfers_finished_total{direction=\"push\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "cbt_wire_received_bytes_total"),
        json_u64(&first, "wire_bytes_sent") as f64
    );
    assert_eq!(
        value(&after, "cbt_wire_sent_bytes_total"),
        json_u64(&first, "wire_bytes_received") as f64
    );
    for kind in ["zero", "local", "sent", "repaired"] {
        assert_eq!(
            value(&after, &format!("cbt_blocks_total{{kind=\"{kind}\"}}")),
            json_u64(&first, &format!("blocks_{kind}")) as f64,
            "{kind}"
        );
    }
    assert_eq!(value(&after, "cbt_blocks_total{kind=\"zero\"}"), 256.0);
    assert_eq!(value(&after, "cbt_transfer_rate_bytes_per_second_count"), 1.0);
    assert!(value(&after, "cbt_last_success_timestamp_seconds") > 1.7e9);

    // The same image under another name: every data block is found locally.
    let second = cbt_json(
        &env,
        &args!["send", src, format!("{addr}/b.img"), "--secret-file", secret],
    );
    assert_eq!(json_u64(&second, "blocks_local"), 1792, "{second:#}");
    let after = scrape(&m);
    assert_eq!(
        value(&after, "cbt_transfers_finished_total{direction=\"push\"}"),
        2.0
    );
    assert_eq!(value(&after, "cbt_local_bytes_total"), (1792 * BLOCK) as f64);
    // That push's seed index: the first image, its 1792 distinct data blocks.
    assert_eq!(value(&after, "cbt_index_images"), 1.0);
    assert_eq!(value(&after, "cbt_index_unique_blocks"), 1792.0);
    assert!(value(&after, "cbt_index_memory_bytes") > 0.0);
    assert_eq!(
        value(&after, "cbt_blocks_total{kind=\"local\"}"),
        (json_u64(&first, "blocks_local") + 1792) as f64
    );

    // Failures: a wrong secret, a bad name, an existing image.
    for (args, reason) in [
        (
            args!["send", src, format!("{addr}/c.img"), "--secret-file", wrong],
            "auth",
        ),
        (
            args!["send", src, format!("{addr}/.hidden"), "--secret-file", secret],
            "refused",
        ),
        (
            args!["send", src, format!("{addr}/a.img"), "--secret-file", secret],
            "refused",
        ),
    ] {
        let (status, _, err) = Proc::spawn(&env, &args).finish(HANG);
        assert!(!status.success(), "{reason}: {err}");
    }
    let after = scrape(&m);
    assert_eq!(value(&after, "cbt_transfers_failed_total{reason=\"auth\"}"), 1.0);
    assert_eq!(
        value(&after, "cbt_transfers_failed_total{reason=\"refused\"}"),
        2.0
    );
    assert_eq!(
        value(&after, "cbt_transfers_finished_total{direction=\"push\"}"),
        2.0
    );
    assert_eq!(value(&after, "cbt_transfers_active"), 0.0);

    // Every transfer and failure is in the daemon's log at its default level.
    let log = d.log();
    assert_eq!(log.matches(" received").count(), 2, "{log}");
    assert!(
        log.contains("turned away") && log.contains("wrong secret"),
        "{log}"
    );
    assert_eq!(log.matches("refused: ").count(), 2, "{log}");
}
