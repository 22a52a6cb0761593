//! Projection errors: each says what went wrong and where, in one line.

use foundry_events::EventError;
use foundry_ledger::LedgerError;
use std::path::PathBuf;

/// Everything that can go wrong folding, persisting or querying views.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An event in the ledger could not be decoded.
    #[error("seq {seq}: {source}")]
    Event {
        /// Where.
        seq: u64,
        /// Why.
        #[source]
        source: EventError,
    },
    /// The views store failed.
    #[error("views store {path}: {reason}")]
    Storage {
        /// The store's directory.
        path: PathBuf,
        /// sled's message.
        reason: String,
    },
    /// Another process holds the views store.
    #[error("views store {0} is in use by another process")]
    Locked(PathBuf),
    /// A stored view entry is damaged.
    #[error("view {view}, entry {key:?}: {reason} (rebuild with `ledger replay`)")]
    Decode {
        /// The view.
        view: &'static str,
        /// The entry's key.
        key: String,
        /// Decoder message.
        reason: String,
    },
    /// A view entry could not be encoded.
    #[error("view {view}, entry {key:?}: cannot encode: {reason}")]
    Encode {
        /// The view.
        view: &'static str,
        /// The entry's key.
        key: String,
        /// Encoder message.
        reason: String,
    },
    /// No id starts with the given prefix.
    #[error("no {kind} matches {prefix:?}{}", hint(candidates, *total))]
    Unknown {
        /// What was looked up (`run`, `checkpoint`, …).
        kind: String,
        /// The prefix given.
        prefix: String,
        /// Some existing ids, as a hint.
        candidates: Vec<String>,
        /// How many ids exist.
        total: usize,
    },
    /// Several ids start with the given prefix.
    #[error("{kind} prefix {prefix:?} is ambiguous; candidates: {}", list(candidates, *total))]
    Ambiguous {
        /// What was looked up.
        kind: String,
        /// The prefix given.
        prefix: String,
        /// The first matching ids.
        candidates: Vec<String>,
        /// How many ids match.
        total: usize,
    },
    /// A time-travel bound could not be understood.
    #[error("invalid bound: {0}")]
    Bound(String),
}

fn list(c: &[String], total: usize) -> String {
    let mut s = c.join(", ");
    if total > c.len() {
        s.push_str(&format!(" … and {} more", total - c.len()));
    }
    s
}

fn hint(c: &[String], total: usize) -> String {
    if total == 0 {
        " (there are none)".to_string()
    } else {
        format!(" ({total} known: {})", list(c, total))
    }
}

/// Shorthand for projection results.
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
