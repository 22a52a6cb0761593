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
    /// An engine (training, evaluation) failed; the text is its one-line
    /// reason. The host delivers the event again.
    #[error("{0}")]
    Engine(String),
    /// An engine failed in a way another attempt cannot change (bad input,
    /// a split that does not exist): the host does not deliver the event
    /// again, and says why.
    #[error("{0}")]
    Final(String),
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

/// Why an engine (training, evaluation) did not produce its result: a
/// one-line reason, and whether another attempt could help (the process it
/// ran in died, was killed or aborted) or not (the job itself is wrong).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct EngineFailure {
    /// One line: what went wrong and where.
    pub reason: String,
    /// Another attempt could succeed.
    pub retry: bool,
}

impl EngineFailure {
    /// A failure another attempt could get past (the job's process died).
    pub fn retryable(reason: impl Into<String>) -> Self {
        EngineFailure {
            reason: reason.into(),
            retry: true,
        }
    }

    /// A failure of the job itself: trying again gives the same answer.
    pub fn fatal(reason: impl Into<String>) -> Self {
        EngineFailure {
            reason: reason.into(),
            retry: false,
        }
    }

    /// The runner error that makes the host retry the event or not.
    pub fn into_runner_error(self) -> RunnerError {
        if self.retry {
            RunnerError::Engine(self.reason)
        } else {
            RunnerError::Final(self.reason)
        }
    }
}

/// An engine's one-line reason, with nothing saying a retry would help.
impl From<String> for EngineFailure {
    fn from(reason: String) -> Self {
        EngineFailure::fatal(reason)
    }
}

/// An engine's one-line reason, with nothing saying a retry would help.
impl From<&str> for EngineFailure {
    fn from(reason: &str) -> Self {
        EngineFailure::fatal(reason)
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, RunnerError>;
