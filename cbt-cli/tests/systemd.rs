//! `cbt serve` started the way systemd starts it: a listening socket
//! inherited as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the
//! daemon's own pid, readiness and watchdog notifications read from a
//! `NOTIFY_SOCKET` of the test's own, and a push through the inherited
//! socket.
//!
//! One test in this file on purpose: the test makes its listening socket
//! inheritable, and no other child of this test binary must get it.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proc::{noise_image, Proc};
use common::{cbt_json, TestEnv};

/// Reads notifications until one contains `needle`; all read so far.
#[track_caller]
fn wait_notify(sock: &UnixDatagram, needle: &str, seen: &mut String) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} from the daemon; got:\n{seen}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
}

#[test]
fn serves_on_an_inherited_socket_and_notifies_systemd() {
    let env = TestEnv::new();
    let data = env.dir("data");
    let src = noise_image(&env, "src.img", 4, 9);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Inheritable, so that the shell below can move it to fd 3.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = listener.as_raw_fd();
    let notify_path = env.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    // LISTEN_PID must be the daemon's pid: the shell's, which exec keeps.
    let to_fd3 = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let script = format!("{to_fd3}LISTEN_PID=$$ WATCHDOG_PID=$$ exec \"$0\" \"$@\"");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_cbt"))
        .args(args!["--cache", env.cache_dir(), "serve", "--data", data])
        // Ignored: the inherited socket wins (port 0 would pick another port).
        .args(["--listen", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut d = Proc::start(&env, cmd, "serve (socket-activated)".into());
    drop(listener);

    let mut seen = String::new();
    wait_notify(&notify, "READY=1", &mut seen);
    assert!(seen.contains(&format!("STATUS=serving on {addr}")), "{seen}");
    assert_eq!(d.addr(), addr, "{}", d.log());
    // Pings at half of WATCHDOG_USEC.
    seen.clear();
    wait_notify(&notify, "WATCHDOG=1", &mut seen);

    cbt_json(&env, &args!["send", src, format!("{addr}/vm.img")]);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert!(d.log().contains("the socket systemd passed"), "{}", d.log());

    d.signal("-TERM");
    wait_notify(&notify, "STOPPING=1", &mut seen);
    let (status, _, log) = d.finish(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{log}");
}
