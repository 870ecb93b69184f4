//! Process exit codes, typed, so scripts can tell failures apart. The
//! table is README's ("Exit codes"); [`Exit::of`] is the only place that
//! maps errors to it.

use std::process::ExitCode;

/// What `cbt` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any other failure.
    Failure = 1,
    /// Bad command line or configuration (clap uses 2 as well).
    Usage = 2,
    /// An input file is malformed or uses an unsupported format or feature.
    BadInput = 3,
    /// An operating-system I/O error, including a failed connection (refused,
    /// unreachable, reset, timed out, closed midway).
    Io = 4,
    /// The output did not verify against the source.
    Verification = 5,
    /// A functional copy (`cbt teleport --functional`) was rebuilt and
    /// verified, but some packages are at other versions than the source's.
    VersionsDiffer = 6,
}

/// A command line or configuration refused by cbt's own checks (clap's
/// refusals never reach [`Exit::of`]); exits with [`Exit::Usage`].
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error with this message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// `bail!` for usage errors: returns a [`UsageError`] built like `format!`.
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => {
        return Err($crate::exit_codes::usage(format!($($arg)*)))
    };
}

impl Exit {
    /// Classifies an error chain by its outermost cause that says what kind
    /// of failure it is: a [`UsageError`], a `cbt_core::Error` (also one
    /// inside a mirror or network error), a `cbt_net::Error`, or an
    /// operating-system error.
    pub fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if cause.is::<UsageError>() {
                return Exit::Usage;
            }
            if cause.is::<crate::rebuild_commands::VersionsDiffer>() {
                return Exit::VersionsDiffer;
            }
            if cause.is::<crate::store_commands::StoreDamaged>() {
                return Exit::Verification;
            }
            match cause.downcast_ref::<cbt_teleport::rebuild::RebuildError>() {
                Some(cbt_teleport::rebuild::RebuildError::Differs { .. }) => return Exit::Verification,
                Some(cbt_teleport::rebuild::RebuildError::Failed(_)) => return Exit::Failure,
                Some(cbt_teleport::rebuild::RebuildError::Core(e)) => {
                    if let Some(exit) = Exit::of_core(e) {
                        return exit;
                    }
                }
                _ => {}
            }
            let core = match cause.downcast_ref::<cbt_teleport::MirrorError>() {
                Some(cbt_teleport::MirrorError::Local(e)) => Some(e),
                Some(cbt_teleport::MirrorError::Config(_)) => return Exit::Usage,
                Some(_) => return Exit::Failure,
                None => match cause.downcast_ref::<cbt_net::Error>() {
                    Some(cbt_net::Error::Core(e)) => Some(e),
                    Some(e) => return Exit::of_net(e),
                    None => cause.downcast_ref::<cbt_core::Error>(),
                },
            };
            if let Some(e) = core {
                match Exit::of_core(e) {
                    Some(exit) => return exit,
                    None => continue,
                }
            }
            if cause.is::<std::io::Error>() {
                return Exit::Io;
            }
        }
        Exit::Failure
    }

    /// `None` for a stage stopped by another's failure, and for a failed
    /// source of blocks: the error further down the chain (the other
    /// stage's, the source's own) is the one to classify.
    fn of_core(e: &cbt_core::Error) -> Option<Exit> {
        Some(match e {
            cbt_core::Error::Malformed { .. }
            | cbt_core::Error::Unsupported { .. }
            | cbt_core::Error::UnsupportedFormat { .. }
            | cbt_core::Error::BackingCycle { .. }
            | cbt_core::Error::BackingOutside { .. }
            | cbt_core::Error::Inconsistent { .. }
            | cbt_core::Error::NoSuchSnapshot { .. } => Exit::BadInput,
            cbt_core::Error::Io { .. } | cbt_core::Error::NotRegular { .. } => Exit::Io,
            cbt_core::Error::Verification { .. } => Exit::Verification,
            cbt_core::Error::Config(_) => Exit::Usage,
            cbt_core::Error::Stopped(_) | cbt_core::Error::BlockSource { .. } => return None,
            _ => Exit::Failure,
        })
    }

    /// A failed connection is an I/O error (4): the peer could not be
    /// reached, went away or went silent. What a reachable peer said or
    /// refused (authentication, protocol, its own errors) is a failure (1).
    /// A block store holding a missing or damaged object is a
    /// verification failure (5), as README promises.
    fn of_net(e: &cbt_net::Error) -> Exit {
        match e {
            cbt_net::Error::Io { .. } | cbt_net::Error::Timeout { .. } | cbt_net::Error::Closed { .. } => {
                Exit::Io
            }
            cbt_net::Error::StoreDamaged { .. } => Exit::Verification,
            cbt_net::Error::Config(_) => Exit::Usage,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_are_recognised_under_context() {
        let e = Err::<(), _>(usage("give OUT")).context("recv").unwrap_err();
        assert_eq!(Exit::of(&e), Exit::Usage);
        assert_eq!(Exit::of(&anyhow::anyhow!("something else")), Exit::Failure);
    }

    #[test]
    fn connection_failures_are_io() {
        let refused = cbt_net::Error::Io {
            peer: "127.0.0.1:1".into(),
            op: "connect",
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(Exit::of(&refused.into()), Exit::Io);
        let closed = cbt_net::Error::Closed { peer: "p".into() };
        assert_eq!(Exit::of(&closed.into()), Exit::Io);
        let auth = cbt_net::Error::Auth {
            peer: "p".into(),
            reason: "wrong secret".into(),
        };
        assert_eq!(Exit::of(&auth.into()), Exit::Failure);
    }

    #[test]
    fn engine_errors_keep_their_codes_inside_network_errors() {
        let core = cbt_core::Error::Verification {
            path: "out".into(),
            reason: "digest".into(),
        };
        assert_eq!(Exit::of(&cbt_net::Error::Core(core).into()), Exit::Verification);
        let stopped = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context(cbt_core::Error::Stopped("writer".into()));
        assert_eq!(Exit::of(&stopped), Exit::Io);
    }

    /// The exit code and the daemon's failure metric classify the same
    /// errors: a connection failure is 4 and closed/timeout/io, an
    /// internal inconsistency 1 and never a usage error.
    #[test]
    fn exit_codes_and_failure_reasons_agree() {
        use cbt_net::FailureReason as R;
        let peer = || "127.0.0.1:9".to_string();
        let cases: Vec<(cbt_net::Error, Exit, R)> = vec![
            (cbt_net::Error::Closed { peer: peer() }, Exit::Io, R::Closed),
            (
                cbt_net::Error::Timeout {
                    peer: peer(),
                    seconds: 5,
                },
                Exit::Io,
                R::Timeout,
            ),
            (
                cbt_net::Error::Internal("lost group".into()),
                Exit::Failure,
                R::Other,
            ),
            (cbt_net::Error::Cancelled, Exit::Failure, R::Cancelled),
            (
                cbt_net::Error::Core(cbt_core::Error::Internal("x".into())),
                Exit::Failure,
                R::Other,
            ),
            (
                cbt_net::Error::Core(cbt_core::Error::Verification {
                    path: "o".into(),
                    reason: "d".into(),
                }),
                Exit::Verification,
                R::Verification,
            ),
            (
                cbt_net::Error::Protocol {
                    peer: peer(),
                    reason: "r".into(),
                },
                Exit::Failure,
                R::Protocol,
            ),
        ];
        for (e, exit, reason) in cases {
            assert_eq!(cbt_net::FailureReason::of(&e), reason, "{e}");
            assert_eq!(Exit::of(&e.into()), exit);
        }
    }

    #[test]
    fn a_damaged_store_is_5_and_an_unreachable_one_4_through_the_engine() {
        let through_engine = |e: cbt_net::Error| -> anyhow::Error {
            cbt_net::Error::Core(cbt_core::Error::BlockSource {
                name: "s3://b/p".into(),
                source: Box::new(e),
            })
            .into()
        };
        let damaged = cbt_net::Error::StoreDamaged {
            store: "s3://b/p".into(),
            object: "packs/00.pack".into(),
            reason: "missing".into(),
        };
        assert_eq!(Exit::of(&through_engine(damaged)), Exit::Verification);
        let unreachable = cbt_net::Error::Io {
            peer: "s3://b/p/packs/00.pack".into(),
            op: "request",
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(Exit::of(&through_engine(unreachable)), Exit::Io);
        let refused = cbt_net::Error::Store("s3://b/p/packs/00.pack: access denied".into());
        assert_eq!(Exit::of(&through_engine(refused)), Exit::Failure);
    }

    #[test]
    fn os_errors_are_io() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("cannot read cbt.toml");
        assert_eq!(Exit::of(&e), Exit::Io);
    }
}
