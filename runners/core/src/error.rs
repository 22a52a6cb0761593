//! Errors of the runner framework.

/// Why a runner or the host failed. One line, saying what and where.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The ledger refused or failed an operation.
    #[error("ledger: {0}")]
    Ledger(#[from] foundry_ledger::LedgerError),
    /// A stored event could not be decoded.
    #[error("event: {0}")]
    Event(#[from] foundry_events::EventError),
    /// Something the runner needs is not in the ledger (an unpinned dataset,
    /// an unknown checkpoint, …).
    #[error("{0}")]
    Missing(String),
    /// An engine (training, evaluation) failed; the text is its one-line reason.
    #[error("{0}")]
    Engine(String),
    /// A file the runner reads or writes.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The bus or a remote ledger is unreachable or answered badly.
    #[error("transport: {0}")]
    Transport(String),
    /// The host was asked to stop.
    #[error("stopped")]
    Stopped,
}

impl RunnerError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        RunnerError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, RunnerError>;
