//! The stored envelope and its hash chain.
//!
//! A record is the MessagePack *array* encoding of [`RecordedEvent`] (14
//! elements, `hash` last). Its hash is
//! `sha256(prev_hash ‖ encoding of the first 13 elements as a 13-element array)`,
//! i.e. the canonical encoding of everything but the hash. Because the hash is
//! the last element and always 32 raw bytes, the hashed bytes are the record
//! bytes with a different array header and without the trailing 34 bytes,
//! which lets `verify` hash a record without re-encoding it.

use crate::{Event, EventError, EventType, Sha256Digest, Timestamp, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Event ids are UUIDs (v7: time-ordered).
pub type EventId = uuid::Uuid;

/// An event as the ledger stores it: metadata, the payload's bytes, and the
/// hash chain. The payload stays opaque bytes here so that the chain can be
/// verified without knowing the payload's schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global, gap-free position, starting at 1.
    pub seq: u64,
    /// Stream id (`run/<id>`, `channel/production`, …).
    pub stream: String,
    /// Position within the stream, starting at 1.
    pub stream_version: u64,
    /// Unique id; the NATS `Nats-Msg-Id`.
    pub event_id: EventId,
    /// Catalog name of the payload type.
    pub event_type: String,
    /// Schema version the payload was written with.
    pub schema_version: u16,
    /// When the ledger appended it.
    pub recorded_at: Timestamp,
    /// Who caused it.
    pub actor: String,
    /// The event that directly caused this one.
    pub causation_id: Option<EventId>,
    /// The conversation this event belongs to (e.g. the run request).
    pub correlation_id: Option<EventId>,
    /// The idempotency key of the batch it was appended in.
    pub idempotency_key: Option<String>,
    /// MessagePack map of the typed payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Hash of the previous event (zero for seq 1).
    pub prev_hash: Sha256Digest,
    /// This event's hash.
    pub hash: Sha256Digest,
}

/// MessagePack header of a 14-element fixarray (a full record).
const RECORD_HEADER: u8 = 0x9e;
/// MessagePack header of a 13-element fixarray (a record without its hash).
const HASHED_HEADER: u8 = 0x9d;
/// Trailing bytes of a record holding the hash: bin8 marker, length 32, 32 bytes.
const HASH_TAIL: usize = 34;

impl RecordedEvent {
    /// Encodes the record (hash included) as stored.
    pub fn encode(&self) -> Result<Vec<u8>, EventError> {
        rmp_serde::to_vec(self).map_err(|e| EventError::Encode(e.to_string()))
    }

    /// Decodes a stored record. Checks the framing only, not the hash.
    pub fn decode(bytes: &[u8]) -> Result<RecordedEvent, EventError> {
        if bytes.first() != Some(&RECORD_HEADER) {
            return Err(EventError::Record(
                "not a 14-field envelope array".to_string(),
            ));
        }
        let mut rest: &[u8] = bytes;
        let rec = {
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            RecordedEvent::deserialize(&mut de).map_err(|e| EventError::Record(e.to_string()))?
        };
        if !rest.is_empty() {
            return Err(EventError::Record(format!(
                "{} trailing bytes after the envelope",
                rest.len()
            )));
        }
        Ok(rec)
    }

    /// Computes the hash this record must carry, from its fields.
    pub fn compute_hash(&self) -> Result<Sha256Digest, EventError> {
        let bytes = self.encode()?;
        hash_record_bytes(&bytes)
    }

    /// Fills `hash` from the other fields.
    pub fn seal(mut self) -> Result<RecordedEvent, EventError> {
        self.hash = self.compute_hash()?;
        Ok(self)
    }

    /// The catalog type, or a clear error for a type this build doesn't know.
    pub fn known_type(&self) -> Result<EventType, EventError> {
        EventType::parse(&self.event_type)
            .ok_or_else(|| EventError::UnknownType(self.event_type.clone()))
    }

    /// Decodes the typed payload. Unknown types and newer schema versions are
    /// errors, never skipped.
    pub fn decode_event(&self) -> Result<Event, EventError> {
        if self.schema_version > SCHEMA_VERSION {
            return Err(EventError::NewerSchema {
                event_type: self.event_type.clone(),
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let ty = self.known_type()?;
        Event::decode_payload(ty, &self.payload)
    }

    /// Decodes into the typed envelope.
    pub fn to_envelope(&self) -> Result<Envelope, EventError> {
        Ok(Envelope {
            seq: self.seq,
            stream: self.stream.clone(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            actor: self.actor.clone(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.clone(),
            event: self.decode_event()?,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// A borrowed view of the fields of a stored record that chain checks need;
/// decoding it allocates nothing.
#[derive(Debug, Deserialize)]
pub struct RecordView<'a> {
    /// Global position.
    pub seq: u64,
    /// Stream id.
    #[serde(borrow)]
    pub stream: &'a str,
    /// Position within the stream.
    pub stream_version: u64,
    #[serde(rename = "event_id")]
    _event_id: serde::de::IgnoredAny,
    /// Catalog type name.
    #[serde(borrow)]
    pub event_type: &'a str,
    /// Payload schema version.
    pub schema_version: u16,
    #[serde(rename = "recorded_at")]
    _recorded_at: serde::de::IgnoredAny,
    #[serde(rename = "actor")]
    _actor: serde::de::IgnoredAny,
    #[serde(rename = "causation_id")]
    _causation_id: serde::de::IgnoredAny,
    #[serde(rename = "correlation_id")]
    _correlation_id: serde::de::IgnoredAny,
    #[serde(rename = "idempotency_key")]
    _idempotency_key: serde::de::IgnoredAny,
    /// Payload bytes.
    #[serde(borrow, with = "serde_bytes")]
    pub payload: &'a [u8],
    /// Previous hash.
    pub prev_hash: Sha256Digest,
    /// Stored hash.
    pub hash: Sha256Digest,
}

impl<'a> RecordView<'a> {
    /// Decodes the view from stored record bytes (no trailing bytes allowed).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EventError> {
        if bytes.first() != Some(&RECORD_HEADER) {
            return Err(EventError::Record(
                "not a 14-field envelope array".to_string(),
            ));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        let view =
            RecordView::deserialize(&mut de).map_err(|e| EventError::Record(e.to_string()))?;
        // Every field is fixed-size or length-prefixed, so the record's
        // extent is known: the hash's 32 bytes end it.
        if stored_hash(bytes) != Some(view.hash) {
            return Err(EventError::Record(
                "trailing bytes after the envelope".into(),
            ));
        }
        Ok(view)
    }

    /// Decodes the typed payload (unknown types, newer schemas are errors).
    pub fn decode_event(&self) -> Result<Event, EventError> {
        if self.schema_version > SCHEMA_VERSION {
            return Err(EventError::NewerSchema {
                event_type: self.event_type.to_string(),
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let ty = EventType::parse(self.event_type)
            .ok_or_else(|| EventError::UnknownType(self.event_type.to_string()))?;
        Event::decode_payload(ty, self.payload)
    }
}

/// Hashes stored record bytes per the chain rule, without re-encoding.
/// Fails if the bytes are not a 14-element array ending in a 32-byte binary.
pub fn hash_record_bytes(bytes: &[u8]) -> Result<Sha256Digest, EventError> {
    let n = bytes.len();
    if n < 1 + HASH_TAIL + 34 || bytes[0] != RECORD_HEADER {
        return Err(EventError::Record(
            "record too short or not an envelope".into(),
        ));
    }
    let tail = &bytes[n - HASH_TAIL..];
    if tail[0] != 0xc4 || tail[1] != 32 {
        return Err(EventError::Record(
            "record does not end in a 32-byte hash".into(),
        ));
    }
    // prev_hash is the 13th element: the 34 bytes before the hash.
    let prev = &bytes[n - 2 * HASH_TAIL..n - HASH_TAIL];
    if prev[0] != 0xc4 || prev[1] != 32 {
        return Err(EventError::Record(
            "record's prev_hash is not 32 bytes".into(),
        ));
    }
    let mut h = Sha256::new();
    h.update(&prev[2..]);
    h.update([HASHED_HEADER]);
    h.update(&bytes[1..n - HASH_TAIL]);
    Ok(Sha256Digest(h.finalize().into()))
}

/// The hash stored in a record's last 32 bytes, read without decoding.
pub fn stored_hash(bytes: &[u8]) -> Option<Sha256Digest> {
    let n = bytes.len();
    if n < HASH_TAIL {
        return None;
    }
    let arr: [u8; 32] = bytes[n - 32..].try_into().ok()?;
    Some(Sha256Digest(arr))
}

/// A decoded event with its envelope: what projections, runners and the CLI read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Global, gap-free position.
    pub seq: u64,
    /// Stream id.
    pub stream: String,
    /// Position within the stream.
    pub stream_version: u64,
    /// Unique id.
    pub event_id: EventId,
    /// Schema version of the payload.
    pub schema_version: u16,
    /// When it was appended.
    pub recorded_at: Timestamp,
    /// Who caused it.
    pub actor: String,
    /// The event that caused this one.
    pub causation_id: Option<EventId>,
    /// The conversation it belongs to.
    pub correlation_id: Option<EventId>,
    /// Idempotency key of its batch.
    pub idempotency_key: Option<String>,
    /// The typed event (serialized as `type` + `payload`).
    #[serde(flatten)]
    pub event: Event,
    /// Hash of the previous event.
    pub prev_hash: Sha256Digest,
    /// This event's hash.
    pub hash: Sha256Digest,
}

impl Envelope {
    /// This event's type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }
}
