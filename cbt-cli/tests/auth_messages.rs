//! What a user is told about secrets: a client without a secret at a
//! server that needs one, and a client with the wrong one, get different
//! messages; a listener reachable from other hosts without a secret is
//! warned about.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::proc::{daemon, noise_image, write_secret, Proc, HANG};
use common::TestEnv;

#[test]
fn missing_and_wrong_secrets_are_told_apart() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 1, 3);
    let data = env.dir("data");
    let good = write_secret(&env, "good.key", "correct horse battery staple");
    let bad = write_secret(&env, "bad.key", "incorrect horse battery");
    let (d, addr) = daemon(&env, &data, &args!["--secret-file", good]);

    let (status, _, err) = Proc::spawn(&env, &args!["send", src, format!("{addr}/x.img")]).finish(HANG);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("this server needs a secret and none was given"),
        "{err}"
    );
    assert!(err.contains("--secret-file"), "{err}");
    assert!(!err.contains("wrong secret"), "{err}");

    let (status, _, err) = Proc::spawn(
        &env,
        &args!["send", src, format!("{addr}/x.img"), "--secret-file", bad],
    )
    .finish(HANG);
    assert!(!status.success(), "{err}");
    assert!(err.contains("wrong secret"), "{err}");
    assert!(!err.contains("none was given"), "{err}");

    // The daemon's log tells the two apart as well.
    let log = d.log();
    assert!(log.contains("the client gave no secret"), "{log}");
    assert!(log.contains("authentication failed: wrong secret"), "{log}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
}

const OPEN: &str = "reachable from other hosts, without a secret";

/// Starts `args`, waits for its listening line, stops it; its stderr.
fn listening_log(env: &TestEnv, args: &[std::ffi::OsString]) -> String {
    let mut p = Proc::spawn(env, args);
    // The warning, if any, comes before the listening line.
    p.wait_log("cbt: listening on ", Duration::from_secs(30));
    p.signal("-TERM");
    p.finish(HANG).2
}

#[test]
fn open_listeners_without_a_secret_are_warned_about() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let secret = write_secret(&env, "good.key", "correct horse battery staple");
    let out = env.path("out.img");

    // Reachable from other hosts (all addresses), no secret: warned.
    let log = listening_log(&env, &args!["serve", "--listen", "0.0.0.0:0", "--data", data]);
    assert!(log.contains(OPEN), "{log}");
    let log = listening_log(&env, &args!["recv", "--listen", "0.0.0.0:0", out]);
    assert!(log.contains(OPEN), "{log}");

    // With a secret, or on loopback only: not warned.
    let log = listening_log(
        &env,
        &args![
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data",
            data,
            "--secret-file",
            secret
        ],
    );
    assert!(!log.contains(OPEN), "{log}");
    let log = listening_log(&env, &args!["recv", "--listen", "127.0.0.1:0", out]);
    assert!(!log.contains(OPEN), "{log}");
}
