//! Foundry's ledger: the durable, append-only, hash-chained record of every
//! event, stored in sled. It knows the event catalog but nothing about ML.
//!
//! * [`Ledger::append`] writes a signed batch atomically and returns only
//!   after it is flushed, once the signature holds and the signer's
//!   registered roles allow every event ([`trust`]), with optional
//!   stream-version expectations and idempotency.
//! * Reads by seq range, stream and type, and [`Ledger::tail`] for new events.
//! * [`Ledger::verify`] recomputes the chain; export/import move a whole
//!   ledger through one self-describing, verifiable file.

mod chunk;
mod error;
mod export;
mod home;
mod layout;
mod store;
pub mod trust;
mod verify;

pub use error::{LedgerError, Result};
pub use export::{
    verify_export, write_export, ExportHeader, ExportReader, ExportSummary, EXPORT_MAGIC,
};
pub use foundry_events::ExpectedVersion;
pub use home::{hash_file, ArtifactStore, Home};
pub use layout::Head;
pub use store::{AppendOutcome, AppendRequest, Chunk, Ledger, NewEvent, Tail};
pub use trust::{Identity, Registry, SignedBatch};
pub use verify::{ChainVerifier, RecordFacts, VerifyReport, Violation, ViolationKind};

#[cfg(test)]
mod tests;
