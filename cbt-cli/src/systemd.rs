//! `cbt serve` under systemd: socket activation (a listening socket passed
//! as fd 3 with `LISTEN_FDS`/`LISTEN_PID`), readiness (`READY=1`,
//! `STATUS=`) and watchdog pings (`WATCHDOG=1` at half of
//! `WATCHDOG_USEC`) on `NOTIFY_SOCKET`. Outside systemd none of those
//! variables is set and every function here does nothing.
//!
//! The units are in `contrib/systemd/`.

use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;

/// The listening socket systemd passed, if any. Call before any other
/// thread starts: the crate clears `LISTEN_FDS` and `LISTEN_PID` from the
/// environment (so that children do not take the socket for theirs).
pub fn inherited_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        tracing::warn!(
            count = fds.len(),
            "systemd passed several sockets; cbt serve uses the first"
        );
    }
    let listener = fds
        .take_tcp_listener(0)
        .context("the socket systemd passed (fd 3) is not a TCP socket: use ListenStream= in cbt.socket")?;
    if let Some(l) = &listener {
        // tokio needs it non-blocking; systemd hands it over blocking.
        l.set_nonblocking(true)
            .context("cannot make the inherited socket non-blocking")?;
    }
    Ok(listener)
}

/// Tells systemd the daemon is serving (`Type=notify`).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to ping the watchdog: half its timeout, when systemd set one
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    // Not unset: a restarted watchdog task would need it again.
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog every `interval`, forever. Runs as a task on the
/// daemon's runtime, so a wedged runtime stops the pings and systemd
/// restarts the daemon.
pub async fn watchdog(interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        // The daemon serves on; systemd will say the unit failed to start.
        tracing::warn!("cannot notify systemd: {e}");
    }
}
