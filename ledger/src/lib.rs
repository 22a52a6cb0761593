//! Foundry's ledger: the durable, append-only, hash-chained record of every
//! event, stored in sled. It knows the event catalog but nothing about ML.
//!
//! * [`Ledger::append`] writes a batch atomically and returns only after it
//!   is flushed, with optional stream-version expectations and idempotency.
//! * Reads by seq range, stream and type, and [`Ledger::tail`] for new events.
//! * [`Ledger::verify`] recomputes the chain; export/import move a whole
//!   ledger through one self-describing, verifiable file.

mod chunk;
mod error;
mod export;
mod home;
mod keys;
mod store;
mod verify;

pub use error::{LedgerError, Result};
pub use export::{
    verify_export, write_export, ExportHeader, ExportReader, ExportSummary, EXPORT_MAGIC,
};
pub use home::{hash_file, ArtifactStore, Home};
pub use keys::Head;
pub use store::{AppendOutcome, AppendRequest, Chunk, ExpectedVersion, Ledger, NewEvent, Tail};
pub use verify::{ChainVerifier, VerifyReport, Violation, ViolationKind};

#[cfg(test)]
mod tests;
