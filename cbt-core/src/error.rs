//! The one error type of `cbt-core`: every variant names the file (and,
//! where it helps, the offset or feature) so a user can act on it.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout `cbt-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What we were doing ("read", "open", "write", ...).
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A file is not what it claims to be: bad magic, truncated, an
    /// offset pointing past the end, an absurd size.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// A human-readable description of the defect.
        reason: String,
    },
    /// A well-formed file uses a feature cbt does not support.
    #[error("{path}: unsupported qcow2 feature: {feature}")]
    Unsupported {
        /// The file concerned.
        path: PathBuf,
        /// The feature, named as qemu names it.
        feature: String,
    },
    /// A disk-image format cbt does not read (VMDK, VHD, VDI, ...),
    /// recognised by its magic; `hint` says how to convert it.
    #[error("{path}: a {format} image, which cbt cannot read: {hint}")]
    UnsupportedFormat {
        /// The file concerned.
        path: PathBuf,
        /// The format's name ("VMDK", "VHDX", ...).
        format: String,
        /// What to do instead (a `qemu-img convert` command line).
        hint: String,
    },
    /// A qcow2 backing chain refers back to itself.
    #[error("{path}: backing chain loops back to {again}")]
    BackingCycle {
        /// The image whose chain loops.
        path: PathBuf,
        /// The file that appears twice.
        again: PathBuf,
    },
    /// A qcow2 image names a backing file outside the directories it may
    /// be read from (a daemon's roots), or one reached through a link that
    /// leads out of them.
    #[error("{path}: its backing file {backing} lies outside the directories this server reads ({roots}); refused")]
    BackingOutside {
        /// The image.
        path: PathBuf,
        /// The backing file it names.
        backing: PathBuf,
        /// The directories backing files may be in.
        roots: String,
    },
    /// An in-place update of the image was interrupted: it is partly old,
    /// partly new, until the same command completes it.
    #[error("{path}: an in-place update of this image was interrupted ({journal} exists), so it is partly old and partly new; run the same cbt command again to complete it (or pass --allow-inconsistent to read it anyway)")]
    Inconsistent {
        /// The image.
        path: PathBuf,
        /// The journal that marks it.
        journal: PathBuf,
    },
    /// A requested internal snapshot does not exist.
    #[error("{path}: no internal snapshot named {name:?}")]
    NoSuchSnapshot {
        /// The image.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A name inside a directory cbt writes to is a symbolic link, a
    /// directory or a device where a regular file must be.
    #[error("{path}: {reason}")]
    NotRegular {
        /// The name concerned.
        path: PathBuf,
        /// What is there instead.
        reason: String,
    },
    /// An invalid argument or configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An inconsistency inside cbt (a bug, not the user's input or a
    /// peer's): the work stops and nothing is published.
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller-supplied source of missing blocks failed.
    #[error("block source {name}: {source}")]
    BlockSource {
        /// A name for the source (a path or a peer address).
        name: String,
        /// The underlying cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Work stopped because another stage failed or the consumer went away
    /// (the other stage's error is the one to report).
    #[error("stopped: {0}")]
    Stopped(String),
    /// Inconsistent input from a caller or peer (records that do not match
    /// the layout, a block that does not hash to its digest).
    #[error("{0}")]
    Protocol(String),
    /// The assembled image does not match the source after repair attempts.
    #[error("{path}: verification failed: {reason}")]
    Verification {
        /// The output file (still at its temporary path, never at the final one).
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// Shorthand for [`Error::Malformed`].
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
