//! The wire format of the ledger service (`ledger serve`).
//!
//! Every request and reply body is a MessagePack **map** (rmp-serde
//! `to_vec_named`), so fields can be added without breaking old peers.
//! Recorded events travel as their stored record bytes (the 14-element
//! record of [`RecordedEvent::encode`]), so a remote reader can verify the
//! hash chain and the signatures exactly as a local one. New events travel
//! as the signed statements of a [`SignedBatch`].
//!
//! A reply is `{"ok": <body>}` or `{"err": WireError}`; a conflict keeps its
//! stream, expectation and actual version so the client rebuilds
//! `LedgerError::Conflict` faithfully.

use foundry_events::{RecordedEvent, Sha256Digest, Signature, Statement};
use foundry_ledger::trust::Conditions;
use foundry_ledger::{AppendOutcome, ExpectedVersion, LedgerError, SignedBatch};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Subject prefix of the service: operations answer on `foundry.api.<op>`.
pub const API_PREFIX: &str = "foundry.api";

/// The operations the service answers, and their subjects.
pub mod ops {
    /// [`super::WireAppend`] → [`super::WireOutcome`].
    pub const APPEND: &str = "foundry.api.append";
    /// [`super::ReadStream`] → [`super::Page`].
    pub const READ_STREAM: &str = "foundry.api.read_stream";
    /// [`super::ReadType`] → [`super::Page`].
    pub const READ_TYPE: &str = "foundry.api.read_type";
    /// [`super::ReadRaw`] → [`super::Page`] (every event, in seq order).
    pub const READ_RAW: &str = "foundry.api.read_raw";
    /// [`super::Get`] → optional record bytes.
    pub const GET: &str = "foundry.api.get";
    /// [`super::StreamVersion`] → `u64`.
    pub const STREAM_VERSION: &str = "foundry.api.stream_version";
    /// [`super::Head`] → `u64` (the latest seq).
    pub const HEAD: &str = "foundry.api.head";
}

/// A stream-version expectation on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireExpected {
    /// No expectation.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must be at exactly this version.
    Exact(u64),
}

impl From<ExpectedVersion> for WireExpected {
    fn from(v: ExpectedVersion) -> Self {
        match v {
            ExpectedVersion::Any => WireExpected::Any,
            ExpectedVersion::NoStream => WireExpected::NoStream,
            ExpectedVersion::Exact(n) => WireExpected::Exact(n),
        }
    }
}

impl From<WireExpected> for ExpectedVersion {
    fn from(v: WireExpected) -> Self {
        match v {
            WireExpected::Any => ExpectedVersion::Any,
            WireExpected::NoStream => ExpectedVersion::NoStream,
            WireExpected::Exact(n) => ExpectedVersion::Exact(n),
        }
    }
}

/// A signed append on the wire (see [`SignedBatch`]): the statements as
/// their signer encoded and signed them, the expectations the signature
/// binds, and the signature. The service re-checks everything; a client's
/// NATS credentials never stand in for a signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireAppend {
    /// Each statement's bytes (a MessagePack array, see `foundry_events::Statement`).
    pub statements: Vec<ByteBuf>,
    /// Stream expectations, checked before anything is written.
    pub expected: Vec<(String, WireExpected)>,
    /// For a relayed batch: the digest of the conditions it was signed
    /// under elsewhere (then `expected` is empty).
    pub relayed: Option<Sha256Digest>,
    /// The Ed25519 signature (64 bytes).
    pub signature: ByteBuf,
}

/// An append's outcome on the wire: the stored record bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireOutcome {
    /// The records as stored (the originals when `duplicate`).
    pub events: Vec<ByteBuf>,
    /// The idempotency key had been used; nothing was appended.
    pub duplicate: bool,
}

/// Read one stream from a version on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadStream {
    /// The stream.
    pub stream: String,
    /// First version wanted (1-based).
    pub from_version: u64,
}

/// Read stored records of every type from a seq on (snapshots, exports).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadRaw {
    /// First seq wanted.
    pub from: u64,
    /// At most this many.
    pub limit: u64,
}

/// Read events of one type from a seq on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadType {
    /// Catalog type name.
    pub event_type: String,
    /// First seq wanted.
    pub from: u64,
    /// At most this many.
    pub limit: u64,
}

/// Fetch the record at a seq.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Get {
    /// The seq.
    pub seq: u64,
}

/// The current version of a stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamVersion {
    /// The stream.
    pub stream: String,
}

/// The ledger's latest seq (no fields).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Head {}

/// A page of records: replies stay under the server's `max_payload`, and the
/// client asks again from after the last record until `complete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Page {
    /// Stored record bytes, in order.
    pub events: Vec<ByteBuf>,
    /// Nothing more matched when the page was cut.
    pub complete: bool,
}

/// What kind of failure a [`WireError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Optimistic concurrency failed (`stream`, `expected`, `actual` set).
    Conflict,
    /// The append request was malformed.
    InvalidAppend,
    /// The signature did not hold, or the signer may not append this.
    Unauthorized,
    /// The request could not be decoded or named an unknown operation.
    BadRequest,
    /// Anything else the ledger reported (storage, corruption, …).
    Ledger,
}

/// A failure, as one line plus what a client needs to rebuild it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireError {
    /// The kind.
    pub kind: ErrorKind,
    /// The one-line message.
    pub message: String,
    /// For conflicts: the stream.
    pub stream: Option<String>,
    /// For conflicts: what was expected (as displayed).
    pub expected: Option<String>,
    /// For conflicts: the stream's actual version.
    pub actual: Option<u64>,
}

impl WireError {
    /// A bad-request error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        WireError {
            kind: ErrorKind::BadRequest,
            message: message.into(),
            stream: None,
            expected: None,
            actual: None,
        }
    }

    /// A failure of the service itself (not of the request).
    pub fn other(message: impl Into<String>) -> Self {
        WireError {
            kind: ErrorKind::Ledger,
            ..WireError::bad_request(message)
        }
    }

    /// The wire form of a ledger error.
    pub fn from_ledger(e: &LedgerError) -> Self {
        let mut w = WireError {
            kind: ErrorKind::Ledger,
            message: e.to_string(),
            stream: None,
            expected: None,
            actual: None,
        };
        match e {
            LedgerError::Conflict {
                stream,
                expected,
                actual,
            } => {
                w.kind = ErrorKind::Conflict;
                w.stream = Some(stream.clone());
                w.expected = Some(expected.clone());
                w.actual = Some(*actual);
            }
            LedgerError::InvalidAppend(m) => {
                w.kind = ErrorKind::InvalidAppend;
                w.message = m.clone();
            }
            LedgerError::Unauthorized(m) => {
                w.kind = ErrorKind::Unauthorized;
                w.message = m.clone();
            }
            _ => {}
        }
        w
    }

    /// Back to a ledger error where the kind has one (conflicts, invalid
    /// or unauthorized appends); `None` for the rest.
    pub fn to_ledger(&self) -> Option<LedgerError> {
        match self.kind {
            ErrorKind::Conflict => Some(LedgerError::Conflict {
                stream: self.stream.clone().unwrap_or_default(),
                expected: self.expected.clone().unwrap_or_default(),
                actual: self.actual.unwrap_or(0),
            }),
            ErrorKind::InvalidAppend => Some(LedgerError::InvalidAppend(self.message.clone())),
            ErrorKind::Unauthorized => Some(LedgerError::Unauthorized(self.message.clone())),
            _ => None,
        }
    }
}

/// A reply: the body, or why not.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// Success.
    Ok(T),
    /// Failure.
    Err(WireError),
}

/// Encodes a body as a MessagePack map.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(v).map_err(|e| e.to_string())
}

/// Decodes a MessagePack body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

impl WireAppend {
    /// The wire form of a signed batch.
    pub fn from_batch(b: &SignedBatch) -> Self {
        let (expected, relayed) = match &b.conditions {
            Conditions::Expect(e) => (
                e.iter().map(|(s, v)| (s.clone(), (*v).into())).collect(),
                None,
            ),
            Conditions::Relayed(d) => (Vec::new(), Some(*d)),
        };
        WireAppend {
            statements: b
                .statements
                .iter()
                .map(|s| ByteBuf::from(s.encode()))
                .collect(),
            expected,
            relayed,
            signature: ByteBuf::from(b.signature.0.to_vec()),
        }
    }

    /// Back to a signed batch; a statement that does not decode (or is
    /// not in canonical form) is `InvalidAppend` naming it.
    pub fn into_batch(self) -> Result<SignedBatch, LedgerError> {
        let statements = self
            .statements
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Statement::decode(b)
                    .map_err(|e| LedgerError::InvalidAppend(format!("event {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signature: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| {
            LedgerError::InvalidAppend(format!(
                "the signature has {} bytes, not 64",
                self.signature.len()
            ))
        })?;
        let conditions = match self.relayed {
            Some(d) if self.expected.is_empty() => Conditions::Relayed(d),
            Some(_) => {
                return Err(LedgerError::InvalidAppend(
                    "a relayed batch carries no expectations".into(),
                ))
            }
            None => Conditions::Expect(
                self.expected
                    .into_iter()
                    .map(|(s, v)| (s, v.into()))
                    .collect(),
            ),
        };
        Ok(SignedBatch {
            statements,
            conditions,
            signature: Signature(signature),
        })
    }
}

impl WireOutcome {
    /// The wire form of an outcome.
    pub fn from_outcome(o: &AppendOutcome) -> Result<Self, LedgerError> {
        Ok(WireOutcome {
            events: o
                .events
                .iter()
                .map(|r| r.encode().map(ByteBuf::from))
                .collect::<Result<_, _>>()?,
            duplicate: o.duplicate,
        })
    }

    /// Back to an outcome.
    pub fn into_outcome(self) -> Result<AppendOutcome, foundry_events::EventError> {
        Ok(AppendOutcome {
            events: decode_records(&self.events)?,
            duplicate: self.duplicate,
        })
    }
}

/// Decodes a list of stored records.
pub fn decode_records(bytes: &[ByteBuf]) -> Result<Vec<RecordedEvent>, foundry_events::EventError> {
    bytes.iter().map(|b| RecordedEvent::decode(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundry_events::{MetricPoint, MetricsLogged};

    #[test]
    fn a_signed_batch_survives_the_wire_and_tampering_does_not() {
        let cause = uuid::Uuid::now_v7();
        let id = foundry_ledger::Identity::generate("alice").unwrap();
        let req = foundry_ledger::AppendRequest::new(vec![foundry_ledger::NewEvent::new(
            MetricsLogged {
                run_id: "r1".into(),
                points: vec![MetricPoint {
                    step: 3,
                    loss: 0.5,
                    lr: 1e-4,
                    grad_norm: 1.0,
                    tokens: 7,
                    tokens_per_s: 2.0,
                    elapsed_ms: 9,
                }],
            },
        )
        .caused_by(cause, None)])
        .idempotent("k1")
        .expect("run/r1", ExpectedVersion::Exact(4));
        let batch = id.sign(req).unwrap();
        let bytes = encode(&WireAppend::from_batch(&batch)).unwrap();
        let back = decode::<WireAppend>(&bytes).unwrap().into_batch().unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.statements[0].causation_id, Some(cause));
        let relayed = SignedBatch {
            conditions: Conditions::Relayed(Sha256Digest::of(b"c")),
            ..batch.clone()
        };
        let back = WireAppend::from_batch(&relayed).into_batch().unwrap();
        assert_eq!(back, relayed);
        // A short signature, an undecodable statement, a non-canonical one.
        let mut w = WireAppend::from_batch(&batch);
        w.signature = ByteBuf::from(vec![1; 10]);
        assert!(w.into_batch().unwrap_err().to_string().contains("64"));
        let mut w = WireAppend::from_batch(&batch);
        w.statements[0] = ByteBuf::from(vec![0x9b]);
        let e = w.into_batch().unwrap_err().to_string();
        assert!(e.starts_with("invalid append: event 0:"), "{e}");
        let mut w = WireAppend::from_batch(&batch);
        let mut b = w.statements[0].to_vec();
        // Re-encode the schema version (the fifth element) in a longer form.
        let canonical = b.clone();
        let pos = canonical.iter().position(|x| *x == 0xc4).unwrap() + 2 + 16;
        let pos = pos + 1 + (canonical[pos] & 0x1f) as usize;
        b.splice(pos..pos + 1, [0xcc, canonical[pos]]);
        w.statements[0] = ByteBuf::from(b);
        let e = w.into_batch().unwrap_err().to_string();
        assert!(e.contains("canonical"), "{e}");
    }

    #[test]
    fn a_conflict_keeps_its_fields_across_the_wire() {
        let e = LedgerError::Conflict {
            stream: "run/r1".into(),
            expected: "no stream".into(),
            actual: 3,
        };
        let w: Reply<u64> = Reply::Err(WireError::from_ledger(&e));
        let back: Reply<u64> = decode(&encode(&w).unwrap()).unwrap();
        let Reply::Err(w) = back else { panic!() };
        match w.to_ledger() {
            Some(LedgerError::Conflict {
                stream,
                expected,
                actual,
            }) => assert_eq!(
                (stream.as_str(), expected.as_str(), actual),
                ("run/r1", "no stream", 3)
            ),
            other => panic!("{other:?}"),
        }
    }
}
