//! Foundry's event catalog and envelope: pure data, no I/O.
//!
//! Everything that happens to a model — a recipe declared, a dataset pinned,
//! a run started, a checkpoint committed, an eval scored, an adapter promoted —
//! is one of the [`Event`] variants here, wrapped in a [`RecordedEvent`] that
//! carries its signer's statement and seal and chains it to its predecessor
//! by sha256. [`Role`] says which keys may append which types.

mod catalog;
mod digest;
mod fast;
pub mod msgpack;
mod record;
mod roles;
mod timestamp;

#[cfg(test)]
mod arbitrary;

pub use catalog::*;
pub use digest::{ParseDigestError, Sha256Digest};
pub use record::{
    batch_message, chain_hash, conditions_digest, encode_record, hash_record_bytes, stored_hash,
    Envelope, EventId, ExpectedVersion, Placement as RecordPlacement, RecordRef, RecordedEvent,
    Seal, Signature, Statement, RECORD_FORMAT,
};
pub use roles::Role;
pub use timestamp::{ParseTimestampError, Timestamp};

/// The payload schema version this build writes and the newest it can read
/// (2: code versions name their executable's hash; decisions name the
/// signers of their evidence).
pub const SCHEMA_VERSION: u16 = 2;

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
