//! The Modal dispatcher: a recipe with `backend.kind = "modal"` trains on
//! Modal's serverless GPUs, with its lineage intact.
//!
//! Modal has no Rust SDK; its interface is the `modal` CLI with Python apps.
//! So the [`ModalRunner`] reacts to RunRequested (backend `modal`) by:
//! 1. staging the pinned dataset and base model into the data Volume
//!    (`modal volume put`, once per content id);
//! 2. writing a snapshot of the ledger ([`outbox::snapshot`]) and rendering a
//!    launcher app from `templates/launcher.py` ([`LauncherSpec`]): the image
//!    (the `ledger` binary and the snapshot), the GPU, timeout and retries,
//!    the checkpoints, data and HF-cache Volumes, and secrets by name;
//! 3. submitting it with `modal run --detach launcher.py::main` and recording
//!    ModalJobSubmitted (app id, function call id, GPU, image digest,
//!    launcher sha256, the command);
//! 4. following it: the launcher's status file (ModalJobUpdated), the
//!    container's outbox (its run events, imported verified and
//!    idempotently, checkpoint files pulled from the Volume and checked
//!    against CheckpointCommitted first), `modal app list` for the end, and
//!    `modal app stop` when the run is cancelled here;
//! 5. mapping the end: the container's RunCompleted or RunFailed, or a
//!    RunFailed saying how the job died (timeout, preemption, crash).
//!
//! Inside the container `ledger runner train --run <id>` trains from the
//! snapshot in a scratch home kept in the checkpoints Volume, so a retried
//! container (preempted, timed out) resumes from its last checkpoint.

#![warn(missing_docs)]

pub mod cli;
mod dispatcher;
pub mod launcher;
pub mod outbox;

pub use cli::ModalCli;
pub use dispatcher::{
    backend_of, prepare, Backend, DispatchPlan, ModalOptions, ModalRunner, Stage,
};
pub use launcher::LauncherSpec;

/// Why a Modal operation failed; one line.
#[derive(Debug, thiserror::Error)]
pub enum ModalError {
    /// A setting or input is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The `modal` CLI failed or answered unexpectedly.
    #[error("{0}")]
    Cli(String),
    /// The container's outbox or files do not verify.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The ledger refused or failed.
    #[error("ledger: {0}")]
    Ledger(#[from] foundry_ledger::LedgerError),
    /// An event could not be decoded.
    #[error("event: {0}")]
    Event(#[from] foundry_events::EventError),
    /// The runner framework (ledger client, stop).
    #[error("{0}")]
    Runner(#[from] foundry_runner::RunnerError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ModalError>;
