//! Ledger errors: each says what went wrong and where, in one line.

use foundry_events::EventError;
use std::path::PathBuf;

/// Everything that can go wrong opening, appending to, reading, verifying,
/// exporting or importing a ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The `--home` directory is not there.
    #[error("home directory {0} does not exist (create it with `ledger init --home {0}`)")]
    HomeMissing(PathBuf),
    /// The home exists but holds no ledger.
    #[error("no ledger in {0} (run `ledger init --home {0}` first)")]
    NotInitialized(PathBuf),
    /// Another process holds the single-writer lock.
    #[error("ledger {0} is in use by another process (only one process may open it; use `ledger serve` to share it)")]
    Locked(PathBuf),
    /// sled failed.
    #[error("storage error in {path}: {reason}")]
    Storage {
        /// The ledger directory.
        path: PathBuf,
        /// sled's message.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Optimistic concurrency: the stream moved on.
    #[error("conflict on stream {stream}: expected {expected}, but it is at version {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: String,
        /// The stream's current version (0 = no stream).
        actual: u64,
    },
    /// An append request is malformed.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A stored record is damaged.
    #[error("seq {seq}: {reason}")]
    Corrupt {
        /// Where.
        seq: u64,
        /// What.
        reason: String,
    },
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Event(#[from] EventError),
    /// An export file was refused.
    #[error("import refused: {0}")]
    ImportRefused(String),
    /// The signer may not append this (unregistered, revoked, expired,
    /// out of scope, or lacking the role), or the signature does not hold.
    #[error("refused: {0}")]
    Unauthorized(String),
    /// A key or key file is unusable.
    #[error("key: {0}")]
    Key(String),
}

impl LedgerError {
    pub(crate) fn storage(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        LedgerError::Storage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// Shorthand for ledger results.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
