//! The stored record (format 2: signed), its hash chain and its signatures.
//!
//! A record is a 9-element MessagePack array:
//!
//! | # | field | form |
//! |---|---|---|
//! | 0 | `seq` | uint |
//! | 1 | `stream_version` | uint |
//! | 2 | `recorded_at` (ns) | int |
//! | 3 | `batch_index` | uint |
//! | 4 | `batch_len` | uint |
//! | 5 | `seal` | nil, or `[conditions bin32, signature bin64]` on a batch's last record |
//! | 6 | the [`Statement`] | 11-element array (below) |
//! | 7 | `prev_hash` | bin32 |
//! | 8 | `hash` | bin32 |
//!
//! The statement is what its signer vouches for: `[format (2), stream,
//! event_id (bin16), event_type, schema_version, actor, causation_id
//! (nil|bin16), correlation_id (nil|bin16), idempotency_key (nil|str),
//! payload (bin, a MessagePack map), signer (the NATS nkey "U…")]`.
//!
//! Three hashes, each over bytes as stored, so nothing is re-encoded to check
//! a record:
//! * `digest = sha256(statement bytes)`, one per event;
//! * the batch message `sha256("foundry-batch/v2\0" ‖ conditions ‖ n ‖
//!   digest₁ ‖ … ‖ digestₙ)`, which the signer signs once per append
//!   ([`batch_message`]); `conditions` binds the stream-version expectations
//!   the batch was appended under ([`conditions_digest`]);
//! * the chain `hash = sha256(prev_hash ‖ 0x98 ‖ seq ‖ stream_version ‖
//!   recorded_at ‖ batch_index ‖ batch_len ‖ seal ‖ digest ‖ prev_hash)`,
//!   each field in its stored MessagePack form and the statement standing
//!   in as its digest ([`hash_record_bytes`]): it covers the seq, the time,
//!   the batch position, the seal and the statement, and hashes the
//!   statement's bytes only once.
//!
//! One signature per batch keeps appends and verification fast (an Ed25519
//! check costs tens of microseconds; a batch of a thousand events needs
//! one), while every record still names its signer.

use crate::msgpack::{FormError, Reader, Writer};
use crate::{Event, EventError, EventType, Sha256Digest, Timestamp, SCHEMA_VERSION};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// Event ids are UUIDs (v7: time-ordered).
pub type EventId = uuid::Uuid;

/// The record format this build writes and reads: 2, signed. Format 1
/// (unsigned, 14 fields) had no users and is not readable.
pub const RECORD_FORMAT: u16 = 2;

/// MessagePack header of a 9-element fixarray: a full record.
const RECORD_HEADER: u8 = 0x99;
/// MessagePack header of an 8-element fixarray: a record without its hash.
const HASHED_HEADER: u8 = 0x98;
/// Header byte of the 14-element records of format 1.
const FORMAT_1_HEADER: u8 = 0x9e;
/// Trailing bytes of a record holding one 32-byte binary.
const DIGEST_FORM: usize = 34;
/// Elements of a statement.
const STATEMENT_FIELDS: u32 = 11;
/// Domain prefix of a batch message.
const BATCH_DOMAIN: &[u8] = b"foundry-batch/v2\0";
/// Domain prefix of a conditions digest.
const CONDITIONS_DOMAIN: &[u8] = b"foundry-conditions/v2\0";

/// An Ed25519 signature (64 bytes). Raw bytes in MessagePack, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Lowercase hex, 128 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}…", &self.to_hex()[..16])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s).map_err(de::Error::custom)?
        } else {
            serde_bytes::ByteBuf::deserialize(d)?.into_vec()
        };
        let arr: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| de::Error::invalid_length(bytes.len(), &"64 bytes"))?;
        Ok(Signature(arr))
    }
}

/// What closes a batch: the digest of the conditions it was appended under
/// and the signer's signature over the [`batch_message`]. Carried by the
/// batch's last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// [`conditions_digest`] of the batch's stream-version expectations.
    pub conditions: Sha256Digest,
    /// Ed25519 signature of the batch message by the statements' signer.
    pub signature: Signature,
}

/// A stream-version expectation of an append, for optimistic concurrency
/// (e.g. two runners claiming one run: exactly one wins). Part of what a
/// signer signs, so nobody can replay a signed batch without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No expectation.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// The digest that binds a batch's expectations into its signature: zero
/// for none, else sha256 over a domain prefix and each `(stream, kind,
/// version)` in order.
pub fn conditions_digest<'a>(
    expected: impl IntoIterator<Item = (&'a str, ExpectedVersion)>,
) -> Sha256Digest {
    let mut any = false;
    let mut w = Writer::default();
    for (stream, v) in expected {
        any = true;
        w.str(stream);
        match v {
            ExpectedVersion::Any => w.uint(0),
            ExpectedVersion::NoStream => w.uint(1),
            ExpectedVersion::Exact(n) => {
                w.uint(2);
                w.uint(n);
            }
        }
    }
    if !any {
        return Sha256Digest::ZERO;
    }
    let mut h = Sha256::new();
    h.update(CONDITIONS_DOMAIN);
    h.update(&w.buf);
    Sha256Digest(h.finalize().into())
}

/// The 32 bytes a signer signs for a batch: its conditions and the digests
/// of its statements, in order.
pub fn batch_message(conditions: &Sha256Digest, digests: &[Sha256Digest]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BATCH_DOMAIN);
    h.update(conditions.0);
    h.update((digests.len() as u32).to_be_bytes());
    for d in digests {
        h.update(d.0);
    }
    h.finalize().into()
}

/// What a signer vouches for in one event: everything but the ledger's
/// placement (seq, version, time, chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Stream id (`run/<id>`, `channel/production`, …).
    pub stream: String,
    /// Unique id; the NATS `Nats-Msg-Id`.
    pub event_id: EventId,
    /// Catalog name of the payload type.
    pub event_type: String,
    /// Schema version the payload was written with.
    pub schema_version: u16,
    /// The signer's registered name.
    pub actor: String,
    /// The event that directly caused this one.
    pub causation_id: Option<EventId>,
    /// The conversation this event belongs to (e.g. the run request).
    pub correlation_id: Option<EventId>,
    /// The idempotency key of the batch it was appended in.
    pub idempotency_key: Option<String>,
    /// MessagePack map of the typed payload.
    pub payload: Vec<u8>,
    /// The signer's public key as a NATS nkey (`U…`, 56 characters).
    pub signer: String,
}

fn write_opt_id(w: &mut Writer, id: Option<EventId>) {
    match id {
        Some(id) => w.bin(id.as_bytes()),
        None => w.nil(),
    }
}

impl Statement {
    /// The statement's stored bytes (a MessagePack array).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + self.payload.len() + self.stream.len());
        w.array(STATEMENT_FIELDS);
        w.uint(u64::from(RECORD_FORMAT));
        w.str(&self.stream);
        w.bin(self.event_id.as_bytes());
        w.str(&self.event_type);
        w.uint(u64::from(self.schema_version));
        w.str(&self.actor);
        write_opt_id(&mut w, self.causation_id);
        write_opt_id(&mut w, self.correlation_id);
        match &self.idempotency_key {
            Some(k) => w.str(k),
            None => w.nil(),
        }
        w.bin(&self.payload);
        w.str(&self.signer);
        w.buf
    }

    /// Decodes a statement's bytes, which must be exactly one statement in
    /// the canonical form [`Statement::encode`] writes (a signature covers
    /// bytes, so a statement that would re-encode differently is refused).
    pub fn decode(bytes: &[u8]) -> Result<Statement, EventError> {
        let mut r = Reader::new(bytes);
        let st = read_statement(&mut r)?;
        if r.remaining() != 0 {
            return Err(EventError::Record(format!(
                "{} trailing bytes after the statement",
                r.remaining()
            )));
        }
        let s = Statement {
            stream: st.stream.to_string(),
            event_id: st.event_id,
            event_type: st.event_type.to_string(),
            schema_version: st.schema_version,
            actor: st.actor.to_string(),
            causation_id: st.causation_id,
            correlation_id: st.correlation_id,
            idempotency_key: st.idempotency_key.map(str::to_string),
            payload: st.payload.to_vec(),
            signer: st.signer.to_string(),
        };
        if s.encode() != bytes {
            return Err(EventError::Record(
                "the statement is not in canonical form".into(),
            ));
        }
        Ok(s)
    }

    /// sha256 of the stored bytes: what a batch signature covers.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.encode())
    }

    /// The catalog type, or a clear error for a type this build doesn't know.
    pub fn known_type(&self) -> Result<EventType, EventError> {
        EventType::parse(&self.event_type)
            .ok_or_else(|| EventError::UnknownType(self.event_type.clone()))
    }

    /// Decodes the typed payload. Unknown types and newer schema versions are
    /// errors, never skipped.
    pub fn decode_event(&self) -> Result<Event, EventError> {
        decode_payload(&self.event_type, self.schema_version, &self.payload)
    }

    /// The files this statement's event names that the home must hold
    /// ([`Event::stored_artifacts`]), decoding only types that can name
    /// any. An undecodable statement names none here (the ledger refuses it
    /// with its reason).
    pub fn stored_artifacts(&self) -> Vec<(String, Sha256Digest)> {
        match self.known_type() {
            Ok(ty) if ty.names_artifacts() => self
                .decode_event()
                .map(|e| e.stored_artifacts())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

fn decode_payload(
    event_type: &str,
    schema_version: u16,
    payload: &[u8],
) -> Result<Event, EventError> {
    if schema_version > SCHEMA_VERSION {
        return Err(EventError::NewerSchema {
            event_type: event_type.to_string(),
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let ty = EventType::parse(event_type)
        .ok_or_else(|| EventError::UnknownType(event_type.to_string()))?;
    Event::decode_payload(ty, payload)
}

/// An event as the ledger stores it: its placement, its batch position and
/// seal, the signed [`Statement`] (reachable through `Deref`, so
/// `rec.stream`, `rec.actor`, `rec.payload` read as before), and the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global, gap-free position, starting at 1.
    pub seq: u64,
    /// Position within the stream, starting at 1.
    pub stream_version: u64,
    /// When the ledger appended it.
    pub recorded_at: Timestamp,
    /// Position within its signed batch, from 0.
    pub batch_index: u32,
    /// Events in its signed batch.
    pub batch_len: u32,
    /// On the batch's last record: the conditions digest and the signature.
    pub seal: Option<Seal>,
    /// What the signer signed.
    pub statement: Statement,
    /// Hash of the previous event (zero for seq 1).
    pub prev_hash: Sha256Digest,
    /// This event's hash.
    pub hash: Sha256Digest,
}

impl std::ops::Deref for RecordedEvent {
    type Target = Statement;
    fn deref(&self) -> &Statement {
        &self.statement
    }
}

impl std::ops::DerefMut for RecordedEvent {
    fn deref_mut(&mut self) -> &mut Statement {
        &mut self.statement
    }
}

fn write_seal(w: &mut Writer, seal: &Option<Seal>) {
    match seal {
        Some(s) => {
            w.array(2);
            w.bin(&s.conditions.0);
            w.bin(&s.signature.0);
        }
        None => w.nil(),
    }
}

/// Where the ledger put a record: what it adds to the signer's statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Global position.
    pub seq: u64,
    /// Position within the stream.
    pub stream_version: u64,
    /// When the ledger appended it.
    pub recorded_at: Timestamp,
    /// Position within its signed batch.
    pub batch_index: u32,
    /// Events in its signed batch.
    pub batch_len: u32,
}

/// Encodes a record around already-encoded statement bytes, with the given
/// hash (zero while it is being computed). Returns the bytes and where the
/// statement sits in them.
pub fn encode_record(
    at: &Placement,
    seal: &Option<Seal>,
    statement: &[u8],
    prev_hash: &Sha256Digest,
    hash: &Sha256Digest,
) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut w = Writer::with_capacity(statement.len() + 200);
    w.array(9);
    w.uint(at.seq);
    w.uint(at.stream_version);
    w.int(at.recorded_at.0);
    w.uint(u64::from(at.batch_index));
    w.uint(u64::from(at.batch_len));
    write_seal(&mut w, seal);
    let start = w.buf.len();
    w.raw(statement);
    let range = start..w.buf.len();
    w.bin(&prev_hash.0);
    w.bin(&hash.0);
    (w.buf, range)
}

impl RecordedEvent {
    /// Encodes the record (hash included) as stored.
    pub fn encode(&self) -> Result<Vec<u8>, EventError> {
        Ok(encode_record(
            &Placement {
                seq: self.seq,
                stream_version: self.stream_version,
                recorded_at: self.recorded_at,
                batch_index: self.batch_index,
                batch_len: self.batch_len,
            },
            &self.seal,
            &self.statement.encode(),
            &self.prev_hash,
            &self.hash,
        )
        .0)
    }

    /// Decodes a stored record. Checks the framing only, not the hashes or
    /// the signature.
    pub fn decode(bytes: &[u8]) -> Result<RecordedEvent, EventError> {
        Ok(RecordRef::decode(bytes)?.to_owned())
    }

    /// Computes the chain hash this record must carry, from its fields.
    pub fn compute_hash(&self) -> Result<Sha256Digest, EventError> {
        hash_record_bytes(&self.encode()?)
    }

    /// Fills `hash` from the other fields.
    pub fn with_hash(mut self) -> Result<RecordedEvent, EventError> {
        self.hash = self.compute_hash()?;
        Ok(self)
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
            signer: self.signer.clone(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.clone(),
            event: self.decode_event()?,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// A stored record decoded without copying: every string and the payload
/// borrow the stored bytes. The one decoder of the record layout; the
/// owned [`RecordedEvent`], `verify` and the projections all go through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Global position.
    pub seq: u64,
    /// Position within the stream.
    pub stream_version: u64,
    /// When it was appended.
    pub recorded_at: Timestamp,
    /// Position within its batch.
    pub batch_index: u32,
    /// Events in its batch.
    pub batch_len: u32,
    /// The batch's seal (on its last record).
    pub seal: Option<Seal>,
    /// Stream id.
    pub stream: &'a str,
    /// Unique id.
    pub event_id: EventId,
    /// Catalog type name.
    pub event_type: &'a str,
    /// Payload schema version.
    pub schema_version: u16,
    /// The signer's registered name.
    pub actor: &'a str,
    /// The causing event.
    pub causation_id: Option<EventId>,
    /// The conversation.
    pub correlation_id: Option<EventId>,
    /// The batch's idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// The signer's nkey.
    pub signer: &'a str,
    /// The statement's stored bytes (what [`RecordRef::statement_digest`] hashes).
    pub statement_bytes: &'a [u8],
    /// The whole stored record.
    pub bytes: &'a [u8],
    /// Where the statement sits in `bytes`.
    pub statement_range: std::ops::Range<usize>,
    /// Previous hash.
    pub prev_hash: Sha256Digest,
    /// Stored hash.
    pub hash: Sha256Digest,
}

fn form(e: FormError) -> EventError {
    EventError::Record(e.to_string())
}

/// A statement's fields, borrowed from its bytes.
struct StatementFields<'a> {
    stream: &'a str,
    event_id: EventId,
    event_type: &'a str,
    schema_version: u16,
    actor: &'a str,
    causation_id: Option<EventId>,
    correlation_id: Option<EventId>,
    idempotency_key: Option<&'a str>,
    payload: &'a [u8],
    signer: &'a str,
}

/// Reads one statement (the 11-element array) at the reader's position.
fn read_statement<'a>(r: &mut Reader<'a>) -> Result<StatementFields<'a>, EventError> {
    let start = r.position();
    if r.array().map_err(form)? != STATEMENT_FIELDS {
        return Err(EventError::Record(format!(
            "the statement at byte {start} does not have {STATEMENT_FIELDS} fields"
        )));
    }
    let format = r.u16().map_err(form)?;
    if format != RECORD_FORMAT {
        return Err(EventError::Record(format!(
            "statement format {format}; this build reads format {RECORD_FORMAT}"
        )));
    }
    let stream = r.str().map_err(form)?;
    let event_id = EventId::from_bytes(r.fixed::<16>().map_err(form)?);
    let event_type = r.str().map_err(form)?;
    let schema_version = r.u16().map_err(form)?;
    let actor = r.str().map_err(form)?;
    let causation_id = read_opt_id(r).map_err(form)?;
    let correlation_id = read_opt_id(r).map_err(form)?;
    let idempotency_key = if r.nil() {
        None
    } else {
        Some(r.str().map_err(form)?)
    };
    let payload = r.bin().map_err(form)?;
    let signer = r.str().map_err(form)?;
    Ok(StatementFields {
        stream,
        event_id,
        event_type,
        schema_version,
        actor,
        causation_id,
        correlation_id,
        idempotency_key,
        payload,
        signer,
    })
}

fn read_opt_id(r: &mut Reader<'_>) -> Result<Option<EventId>, FormError> {
    if r.nil() {
        return Ok(None);
    }
    Ok(Some(EventId::from_bytes(r.fixed::<16>()?)))
}

impl<'a> RecordRef<'a> {
    /// Decodes a stored record: the exact layout, nothing after it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EventError> {
        match bytes.first() {
            Some(&RECORD_HEADER) => {}
            Some(&FORMAT_1_HEADER) => {
                return Err(EventError::Record(
                    "unsigned record of format 1: this build reads signed records of format 2 only"
                        .into(),
                ))
            }
            _ => return Err(EventError::Record("not a 9-field record array".into())),
        }
        let mut r = Reader::new(bytes);
        r.array().map_err(form)?;
        let seq = r.uint().map_err(form)?;
        let stream_version = r.uint().map_err(form)?;
        let recorded_at = Timestamp(r.int().map_err(form)?);
        let batch_index = r.u32().map_err(form)?;
        let batch_len = r.u32().map_err(form)?;
        let seal = if r.nil() {
            None
        } else {
            let at = r.position();
            if r.array().map_err(form)? != 2 {
                return Err(EventError::Record(format!(
                    "the seal at byte {at} is not [conditions, signature]"
                )));
            }
            Some(Seal {
                conditions: Sha256Digest(r.fixed::<32>().map_err(form)?),
                signature: Signature(r.fixed::<64>().map_err(form)?),
            })
        };
        let start = r.position();
        let st = read_statement(&mut r)?;
        let end = r.position();
        let prev_hash = Sha256Digest(r.fixed::<32>().map_err(form)?);
        let hash = Sha256Digest(r.fixed::<32>().map_err(form)?);
        if r.remaining() != 0 {
            return Err(EventError::Record(format!(
                "{} trailing bytes after the record",
                r.remaining()
            )));
        }
        Ok(RecordRef {
            seq,
            stream_version,
            recorded_at,
            batch_index,
            batch_len,
            seal,
            stream: st.stream,
            event_id: st.event_id,
            event_type: st.event_type,
            schema_version: st.schema_version,
            actor: st.actor,
            causation_id: st.causation_id,
            correlation_id: st.correlation_id,
            idempotency_key: st.idempotency_key,
            payload: st.payload,
            signer: st.signer,
            statement_bytes: &bytes[start..end],
            bytes,
            statement_range: start..end,
            prev_hash,
            hash,
        })
    }

    /// sha256 of the statement's stored bytes.
    pub fn statement_digest(&self) -> Sha256Digest {
        Sha256Digest::of(self.statement_bytes)
    }

    /// The chain hash this record must carry, given its statement's digest.
    pub fn chain_hash(&self, statement_digest: &Sha256Digest) -> Sha256Digest {
        // The decoder checked the layout `chain_hash` relies on.
        chain_hash(self.bytes, self.statement_range.clone(), statement_digest)
            .unwrap_or(Sha256Digest::ZERO)
    }

    /// Decodes the typed payload (unknown types, newer schemas are errors).
    pub fn decode_event(&self) -> Result<Event, EventError> {
        decode_payload(self.event_type, self.schema_version, self.payload)
    }

    /// The owned record.
    pub fn to_owned(&self) -> RecordedEvent {
        RecordedEvent {
            seq: self.seq,
            stream_version: self.stream_version,
            recorded_at: self.recorded_at,
            batch_index: self.batch_index,
            batch_len: self.batch_len,
            seal: self.seal,
            statement: Statement {
                stream: self.stream.to_string(),
                event_id: self.event_id,
                event_type: self.event_type.to_string(),
                schema_version: self.schema_version,
                actor: self.actor.to_string(),
                causation_id: self.causation_id,
                correlation_id: self.correlation_id,
                idempotency_key: self.idempotency_key.map(str::to_string),
                payload: self.payload.to_vec(),
                signer: self.signer.to_string(),
            },
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }

    /// Decodes into the typed envelope, with `event` decoded by the caller
    /// (projections use a faster decoder for some payloads).
    pub fn envelope_with(&self, event: Event) -> Envelope {
        Envelope {
            seq: self.seq,
            stream: self.stream.to_string(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            actor: self.actor.to_string(),
            signer: self.signer.to_string(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.map(str::to_string),
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// Hashes stored record bytes per the chain rule (see the module docs):
/// `sha256(prev_hash ‖ 0x98 ‖ the record's first six fields as stored ‖
/// sha256(statement) ‖ the stored prev_hash)`. Decodes the record to find
/// its statement; fails on anything that is not one.
pub fn hash_record_bytes(bytes: &[u8]) -> Result<Sha256Digest, EventError> {
    let r = RecordRef::decode(bytes)?;
    Ok(r.chain_hash(&r.statement_digest()))
}

/// The chain hash of stored record bytes whose statement occupies
/// `statement` and has the digest `digest` (so a writer that just encoded
/// the statement does not hash it twice). Fails if the bytes do not end in
/// two 32-byte binaries (prev_hash, hash) after the statement.
pub fn chain_hash(
    bytes: &[u8],
    statement: std::ops::Range<usize>,
    digest: &Sha256Digest,
) -> Result<Sha256Digest, EventError> {
    let n = bytes.len();
    if bytes.first() != Some(&RECORD_HEADER)
        || statement.start < 1
        || statement.end + 2 * DIGEST_FORM != n
        || statement.start > statement.end
    {
        return Err(EventError::Record(
            "not a 9-field record ending in prev_hash and hash".into(),
        ));
    }
    let prev = &bytes[n - 2 * DIGEST_FORM..n - DIGEST_FORM];
    let tail = &bytes[n - DIGEST_FORM..];
    if prev[..2] != [0xc4, 32] || tail[..2] != [0xc4, 32] {
        return Err(EventError::Record(
            "the record does not end in two 32-byte hashes".into(),
        ));
    }
    let mut h = Sha256::new();
    h.update(&prev[2..]);
    h.update([HASHED_HEADER]);
    h.update(&bytes[1..statement.start]);
    h.update(digest.0);
    h.update(prev);
    Ok(Sha256Digest(h.finalize().into()))
}

/// The hash stored in a record's last 32 bytes, read without decoding.
pub fn stored_hash(bytes: &[u8]) -> Option<Sha256Digest> {
    let n = bytes.len();
    if n < DIGEST_FORM {
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
    /// Who appended it: the signer's registered name.
    pub actor: String,
    /// The signer's public key (NATS nkey).
    pub signer: String,
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
