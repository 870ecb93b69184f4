//! Process exit codes, typed, so scripts can tell failures apart.

use std::process::ExitCode;

/// What `cbt` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any other failure.
    Failure = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// An input file is malformed or uses an unsupported feature.
    BadInput = 3,
    /// An operating-system I/O error.
    Io = 4,
    /// The output did not verify against the source.
    Verification = 5,
}

impl Exit {
    /// Classifies an error chain by its first `cbt_core::Error` (also one
    /// inside a mirror error).
    pub fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            let core = match cause.downcast_ref::<cbt_teleport::MirrorError>() {
                Some(cbt_teleport::MirrorError::Local(e)) => Some(e),
                Some(cbt_teleport::MirrorError::Config(_)) => return Exit::Usage,
                Some(_) => return Exit::Failure,
                None => cause.downcast_ref::<cbt_core::Error>(),
            };
            if let Some(e) = core {
                return match e {
                    cbt_core::Error::Malformed { .. }
                    | cbt_core::Error::Unsupported { .. }
                    | cbt_core::Error::BackingCycle { .. }
                    | cbt_core::Error::NoSuchSnapshot { .. } => Exit::BadInput,
                    cbt_core::Error::Io { .. } | cbt_core::Error::NotRegular { .. } => Exit::Io,
                    cbt_core::Error::Verification { .. } => Exit::Verification,
                    cbt_core::Error::Config(_) => Exit::Usage,
                    cbt_core::Error::Stopped(_) => continue,
                    _ => Exit::Failure,
                };
            }
        }
        Exit::Failure
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}
