//! What the daemon tells an observer about its transfers: a small trait
//! the daemon calls at each transfer's start and end, so that a caller can
//! keep statistics (the command line's Prometheus endpoint) without
//! `cbt-net` knowing about any metrics system.
//!
//! Every started transfer ends with exactly one of
//! [`DaemonObserver::transfer_finished`] or
//! [`DaemonObserver::transfer_failed`]; a connection turned away before a
//! transfer started (wrong secret, bad name, busy, an existing image) is
//! reported once through [`DaemonObserver::connection_refused`].

use crate::error::Error;
use crate::TransferReport;

/// Which way a daemon transfer goes, seen from the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A client pushes; the daemon receives.
    Push,
    /// A client pulls; the daemon sends.
    Pull,
}

impl Direction {
    /// `push` or `pull`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// Why a connection or transfer failed: a small fixed set, so that it can
/// label a metric without making the label's values unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The client could not prove the secret.
    Auth,
    /// The request was refused (bad name, busy, existing image, ...).
    Refused,
    /// Invalid frames or a protocol violation.
    Protocol,
    /// The peer closed the connection early.
    Closed,
    /// The peer went silent.
    Timeout,
    /// A socket or file operation failed.
    Io,
    /// The received image did not verify.
    Verification,
    /// The daemon was shutting down.
    Cancelled,
    /// The TLS layer failed.
    Tls,
    /// The peer reported an error of its own.
    Peer,
    /// Anything else.
    Other,
}

impl FailureReason {
    /// Every reason, in a fixed order (for exporting zeros up front).
    pub const ALL: [FailureReason; 11] = [
        FailureReason::Auth,
        FailureReason::Refused,
        FailureReason::Protocol,
        FailureReason::Closed,
        FailureReason::Timeout,
        FailureReason::Io,
        FailureReason::Verification,
        FailureReason::Cancelled,
        FailureReason::Tls,
        FailureReason::Peer,
        FailureReason::Other,
    ];

    /// The reason an error stands for.
    pub fn of(error: &Error) -> FailureReason {
        match error {
            Error::Auth { .. } => FailureReason::Auth,
            Error::Refused(_) => FailureReason::Refused,
            Error::Frame { .. } | Error::Protocol { .. } => FailureReason::Protocol,
            Error::Closed { .. } => FailureReason::Closed,
            Error::Timeout { .. } => FailureReason::Timeout,
            Error::Io { .. } => FailureReason::Io,
            Error::Cancelled => FailureReason::Cancelled,
            Error::Tls { .. } => FailureReason::Tls,
            Error::Remote { .. } => FailureReason::Peer,
            Error::Core(cbt_core::Error::Verification { .. }) => FailureReason::Verification,
            Error::Core(cbt_core::Error::Io { .. }) => FailureReason::Io,
            Error::Core(cbt_core::Error::Protocol(_)) => FailureReason::Protocol,
            Error::Core(cbt_core::Error::Stopped(_)) => FailureReason::Cancelled,
            _ => FailureReason::Other,
        }
    }

    /// The label value: `auth`, `refused`, `protocol`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Auth => "auth",
            FailureReason::Refused => "refused",
            FailureReason::Protocol => "protocol",
            FailureReason::Closed => "closed",
            FailureReason::Timeout => "timeout",
            FailureReason::Io => "io",
            FailureReason::Verification => "verification",
            FailureReason::Cancelled => "cancelled",
            FailureReason::Tls => "tls",
            FailureReason::Peer => "peer",
            FailureReason::Other => "other",
        }
    }
}

/// What a push's receiver found out beyond its [`TransferReport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushDetails {
    /// Image bytes found in the daemon's seeds instead of being sent.
    pub bytes_local: u64,
    /// The push replaced an existing image of that name.
    pub replaced: bool,
}

/// Receives the daemon's transfer events. Called from the connection
/// tasks, so it must be quick and must not block.
pub trait DaemonObserver: Send + Sync + std::fmt::Debug {
    /// A request was accepted; its transfer begins.
    fn transfer_started(&self, direction: Direction);
    /// A started transfer succeeded (`details` only for pushes).
    fn transfer_finished(&self, direction: Direction, report: &TransferReport, details: Option<PushDetails>);
    /// A started transfer failed.
    fn transfer_failed(&self, direction: Direction, error: &Error);
    /// A connection was turned away before any transfer started: it failed
    /// the handshake, or its request was refused.
    fn connection_refused(&self, error: &Error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_error_kinds_and_have_distinct_labels() {
        let auth = Error::Auth {
            peer: "p".into(),
            reason: "wrong secret".into(),
        };
        assert_eq!(FailureReason::of(&auth), FailureReason::Auth);
        assert_eq!(
            FailureReason::of(&Error::Refused("x".into())),
            FailureReason::Refused
        );
        assert_eq!(FailureReason::of(&Error::Cancelled), FailureReason::Cancelled);
        let closed = Error::Closed { peer: "p".into() };
        assert_eq!(FailureReason::of(&closed).as_str(), "closed");
        assert_eq!(
            FailureReason::of(&Error::Config("x".into())),
            FailureReason::Other
        );
        let mut labels: Vec<_> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FailureReason::ALL.len());
    }
}
