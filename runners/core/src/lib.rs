//! The runner framework: what turns committed events into work.
//!
//! * [`LedgerClient`] is the ledger as a runner sees it (append and read). The
//!   embedded [`LocalLedger`] wraps an open ledger; a NATS client talking to
//!   `ledger serve` implements the same trait.
//! * [`EventFeed`] delivers the events a runner reacts to, durably: an event is
//!   redelivered until the runner acks it. [`EmbeddedFeed`] tails the local
//!   ledger and keeps its cursor in a file; a JetStream durable consumer is the
//!   distributed equivalent.
//! * [`Runner`] is one reactive worker; [`Host`] drives a set of them, one
//!   task each, and can wait until all of them are idle at the ledger's head.
//! * The runners themselves: [`TrainerRunner`] (RunRequested → training
//!   events, through a [`TrainingEngine`]), [`EvaluatorRunner`]
//!   (CheckpointCommitted → EvalScored, through an [`EvalEngine`]) and
//!   [`PromoterRunner`] (PromotionRequested / EvalScored → AdapterPromoted or
//!   PromotionRejected, following the recipe's gates).
//!
//! Every outcome is appended with an idempotency key derived from the event
//! that caused it, before the trigger is acked, so a redelivery can never
//! duplicate an outcome.

#![warn(missing_docs)]

mod checkpoint;
mod client;
mod error;
mod evaluator;
mod feed;
mod host;
pub mod isolate;
pub mod lookup;
mod promoter;
pub mod retention;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod trainer;

pub use checkpoint::{checkpoint_dir, checkpoint_id};
pub use client::{LedgerClient, LocalLedger};
pub use error::{EngineFailure, Result, RunnerError};
pub use evaluator::{EvalEngine, EvalJob, EvalOutcome, EvalSpecs, EvaluatorRunner};
pub use feed::{Delivery, EmbeddedFeed, EventFeed};
pub use host::{Host, Runner, RunnerContext};
pub use promoter::{decide, pinned_policy, Decision, EvidenceRules, PromoterRunner};
pub use trainer::{
    CheckpointRecord, Control, TrainJob, TrainPlan, TrainSink, TrainSummary, TrainerRunner,
    TrainingEngine, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT,
};

/// Makes sure `home`'s artifact store holds every file of `named` (what an
/// event names: [`foundry_events::Event::stored_artifacts`]), fetching each
/// missing one through `client` (verified by hash). A file that is neither
/// here nor reachable is left to the caller, which may find it elsewhere (a
/// checkpoint's own directory) or report it.
pub async fn fetch_artifacts(
    client: &dyn LedgerClient,
    home: &foundry_ledger::Home,
    named: &[(String, foundry_events::Sha256Digest)],
) -> Result<()> {
    let store = home.artifacts();
    for (_, digest) in named {
        if !store.contains(digest) {
            client.fetch_artifact(digest, &store).await?;
        }
    }
    Ok(())
}

/// The idempotency key of an outcome of `runner` caused by event `trigger`.
/// Deterministic, so a redelivered trigger maps to the same key.
pub fn outcome_key(runner: &str, trigger: &foundry_events::EventId, what: &str) -> String {
    format!("{runner}/{trigger}/{what}")
}

/// Appends `events` as the outcome of `trigger` (caused by it, in its
/// correlation), under the idempotency `key` when given: how every runner
/// records what it did. The one exception is an append that must hold a
/// stream expectation (the trainer's RunClaimed, and its RunFailed when a
/// run's attempts ran out), which builds its request itself.
pub async fn append_outcome(
    ctx: &RunnerContext,
    trigger: &foundry_events::RecordedEvent,
    key: Option<String>,
    events: Vec<foundry_events::Event>,
) -> Result<()> {
    record_outcome(ctx, trigger, key, events).await.map(|_| ())
}

/// [`append_outcome`], returning the events as recorded (the originals when
/// the key had been used), for a runner that goes on from them.
pub async fn record_outcome(
    ctx: &RunnerContext,
    trigger: &foundry_events::RecordedEvent,
    key: Option<String>,
    events: Vec<foundry_events::Event>,
) -> Result<Vec<foundry_events::RecordedEvent>> {
    let events = events
        .into_iter()
        .map(|e| {
            foundry_ledger::NewEvent::new(e).caused_by(trigger.event_id, trigger.correlation_id)
        })
        .collect();
    let mut req = foundry_ledger::AppendRequest::new(events);
    if let Some(k) = key {
        req = req.idempotent(k);
    }
    Ok(ctx.client.append(req).await?.events)
}

/// Facts about the machine a runner runs on, for the events it appends.
pub fn host_info() -> foundry_events::HostInfo {
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    foundry_events::HostInfo {
        hostname,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    }
}

/// The running code's version, for the events it appends: the crate
/// version, the git commit the binary was built from and whether its tree
/// had uncommitted changes (both read by build.rs at build time), and the
/// sha256 of the executable itself (read once, at first use).
pub fn code_version() -> foundry_events::CodeVersion {
    foundry_events::CodeVersion {
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("FOUNDRY_GIT_COMMIT")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        dirty: option_env!("FOUNDRY_GIT_DIRTY") == Some("1"),
        executable_sha256: executable_sha256(),
    }
}

/// sha256 of the running executable, hashed once per process.
pub fn executable_sha256() -> Option<foundry_events::Sha256Digest> {
    static EXE: std::sync::OnceLock<Option<foundry_events::Sha256Digest>> =
        std::sync::OnceLock::new();
    *EXE.get_or_init(|| {
        let path = std::env::current_exe().ok()?;
        foundry_ledger::hash_file(&path).ok().map(|(d, _)| d)
    })
}

#[cfg(test)]
mod tests;
