//! Foundry's event catalog and envelope: pure data, no I/O.
//!
//! Everything that happens to a model — a recipe declared, a dataset pinned,
//! a run started, a checkpoint committed, an eval scored, an adapter promoted —
//! is one of the [`Event`] variants here, wrapped in a [`RecordedEvent`] that
//! chains it to its predecessor by sha256.

mod catalog;
mod digest;
mod envelope;
mod timestamp;

#[cfg(test)]
mod arbitrary;

pub use catalog::*;
pub use digest::{ParseDigestError, Sha256Digest};
pub use envelope::{hash_record_bytes, stored_hash, Envelope, EventId, RecordView, RecordedEvent};
pub use timestamp::{ParseTimestampError, Timestamp};

/// The schema version this build writes and the newest it can read.
pub const SCHEMA_VERSION: u16 = 1;

/// Why an event could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The envelope bytes are not a valid record.
    #[error("undecodable envelope: {0}")]
    Record(String),
    /// The type name is not in this build's catalog.
    #[error("unknown event type {0:?} (this build knows {n} types)", n = EventType::ALL.len())]
    UnknownType(String),
    /// Written by a newer Foundry.
    #[error("{event_type} has schema version {found}, newer than the supported {supported}: upgrade foundry")]
    NewerSchema {
        /// Type of the event.
        event_type: String,
        /// Version found in the envelope.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// The payload bytes don't match the type's schema.
    #[error("undecodable {event_type} payload: {reason}")]
    Payload {
        /// Type of the event.
        event_type: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// Encoding failed (should not happen for catalog types).
    #[error("cannot encode event: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests;
