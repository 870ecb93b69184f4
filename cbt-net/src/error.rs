//! The one error type of `cbt-net`: each variant says which peer or file
//! it concerns; causes are kept in `source()`.

use std::path::PathBuf;

use crate::frame::FrameError;

/// Result alias used throughout `cbt-net`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a transfer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("{peer}: {op}: {source}")]
    Io {
        /// The peer's address (or the listening address).
        peer: String,
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("{peer}: {source}")]
    Frame {
        /// The peer's address.
        peer: String,
        /// What is wrong with its bytes.
        source: FrameError,
    },
    /// The peer sent a valid frame at the wrong time or with impossible
    /// contents (an unrequested block, a digest that does not match, ...).
    #[error("{peer}: protocol violation: {reason}")]
    Protocol {
        /// The peer's address.
        peer: String,
        /// What it did.
        reason: String,
    },
    /// The peer reported an error and closed the transfer.
    #[error("{peer} reported: {message}")]
    Remote {
        /// The peer's address.
        peer: String,
        /// Its message.
        message: String,
    },
    /// Authentication failed, in either direction.
    #[error("{peer}: authentication failed: {reason}")]
    Auth {
        /// The peer's address.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer asked for something we refuse (a bad name, a busy target).
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing arrived from the peer for too long.
    #[error("{peer}: no data for {seconds} s")]
    Timeout {
        /// The peer's address.
        peer: String,
        /// The idle limit.
        seconds: u64,
    },
    /// The peer closed the connection before the transfer ended.
    #[error("{peer}: connection closed before the transfer ended")]
    Closed {
        /// The peer's address.
        peer: String,
    },
    /// Preparing a teleport's seeds failed (the receiver's package sources).
    #[error("teleport from {peer}: {reason}")]
    Teleport {
        /// The peer whose description it was.
        peer: String,
        /// Why.
        reason: String,
    },
    /// An inconsistency inside cbt (a bug, not the peer's or the user's
    /// doing): the transfer stops and nothing is published.
    #[error("internal error: {0}")]
    Internal(String),
    /// The transfer was stopped (shutdown signal).
    #[error("transfer cancelled")]
    Cancelled,
    /// A secret file could not be used.
    #[error("{path}: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS layer failed: a handshake error, an untrusted certificate,
    /// or a peer that does not speak TLS when we do (or the reverse).
    #[error("{peer}: TLS: {reason}")]
    Tls {
        /// The peer's address.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// A TLS certificate or key file could not be used.
    #[error("{path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Invalid settings or arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A block store (S3) refused a request; the message names the object
    /// (never a credential).
    #[error("{0}")]
    Store(String),
    /// An object of a block store is missing or damaged: a pack a manifest
    /// names is gone, shorter than the manifest says or holds a block
    /// that does not match its digest; a manifest does not decode. The
    /// store, not the request, is at fault (`cbt store verify --read`
    /// lists every such object).
    #[error("{store}/{object}: {reason}")]
    StoreDamaged {
        /// The store's root, `s3://BUCKET/PREFIX`.
        store: String,
        /// The object, relative to the root (`packs/<id>.pack`,
        /// `images/<NAME>.cbtm`).
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine (images, index, output, verification) failed.
    #[error(transparent)]
    Core(#[from] cbt_core::Error),
}

impl Error {
    pub(crate) fn io(peer: impl Into<String>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            peer: peer.into(),
            op,
            source,
        }
    }

    pub(crate) fn protocol(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Protocol {
            peer: peer.into(),
            reason: reason.into(),
        }
    }

    /// True for failures of the connection itself (the peer went away,
    /// went silent, or we were stopped), after which a partial output is
    /// worth keeping for a resume.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Timeout { .. } | Error::Closed { .. } | Error::Cancelled
        )
    }
}
