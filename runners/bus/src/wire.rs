//! The wire format of the ledger service (`ledger serve`).
//!
//! Every request and reply body is a MessagePack **map** (rmp-serde
//! `to_vec_named`), so fields can be added without breaking old peers.
//! Recorded events travel as their stored record bytes (the 14-element
//! envelope array of [`RecordedEvent::encode`]), so a remote reader can verify
//! the hash chain exactly as a local one. New events travel as their catalog
//! type name plus the MessagePack payload of [`Event::encode_payload`].
//!
//! A reply is `{"ok": <body>}` or `{"err": WireError}`; a conflict keeps its
//! stream, expectation and actual version so the client rebuilds
//! `LedgerError::Conflict` faithfully.

use foundry_events::{Event, EventId, EventType, RecordedEvent};
use foundry_ledger::{AppendOutcome, AppendRequest, ExpectedVersion, LedgerError, NewEvent};
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

/// One event to append, on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireNewEvent {
    /// Catalog type name (`RunRequested`, …).
    pub event_type: String,
    /// MessagePack map of the payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Target stream; absent means the type's default stream.
    pub stream: Option<String>,
    /// Causing event id (UUID text).
    pub causation_id: Option<String>,
    /// Correlation id (UUID text).
    pub correlation_id: Option<String>,
}

/// An append request on the wire (see [`AppendRequest`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireAppend {
    /// Who appends.
    pub actor: String,
    /// Idempotency key of the batch.
    pub idempotency_key: Option<String>,
    /// Stream expectations, checked before anything is written.
    pub expected: Vec<(String, WireExpected)>,
    /// The events, in order.
    pub events: Vec<WireNewEvent>,
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
            _ => {}
        }
        w
    }

    /// Back to a ledger error where the kind has one (conflicts, invalid
    /// appends); `None` for the rest.
    pub fn to_ledger(&self) -> Option<LedgerError> {
        match self.kind {
            ErrorKind::Conflict => Some(LedgerError::Conflict {
                stream: self.stream.clone().unwrap_or_default(),
                expected: self.expected.clone().unwrap_or_default(),
                actual: self.actual.unwrap_or(0),
            }),
            ErrorKind::InvalidAppend => Some(LedgerError::InvalidAppend(self.message.clone())),
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

fn parse_id(s: &Option<String>, what: &str, i: usize) -> Result<Option<EventId>, LedgerError> {
    s.as_deref()
        .map(|s| {
            s.parse::<EventId>().map_err(|e| {
                LedgerError::InvalidAppend(format!("event {i}: {what} {s:?} is not a UUID: {e}"))
            })
        })
        .transpose()
}

impl WireAppend {
    /// The wire form of an append request.
    pub fn from_request(req: &AppendRequest) -> Result<Self, LedgerError> {
        let events = req
            .events
            .iter()
            .map(|n| {
                Ok(WireNewEvent {
                    event_type: n.event.event_type().as_str().to_string(),
                    payload: n.event.encode_payload()?,
                    stream: n.stream.clone(),
                    causation_id: n.causation_id.map(|id| id.to_string()),
                    correlation_id: n.correlation_id.map(|id| id.to_string()),
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        Ok(WireAppend {
            actor: req.actor.clone(),
            idempotency_key: req.idempotency_key.clone(),
            expected: req
                .expected
                .iter()
                .map(|(s, v)| (s.clone(), (*v).into()))
                .collect(),
            events,
        })
    }

    /// Back to an append request; unknown types, bad payloads and bad ids are
    /// `InvalidAppend` naming the event.
    pub fn into_request(self) -> Result<AppendRequest, LedgerError> {
        let events = self
            .events
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let ty = EventType::parse(&w.event_type).ok_or_else(|| {
                    LedgerError::InvalidAppend(format!(
                        "event {i}: unknown event type {:?}",
                        w.event_type
                    ))
                })?;
                let event = Event::decode_payload(ty, &w.payload)
                    .map_err(|e| LedgerError::InvalidAppend(format!("event {i}: {e}")))?;
                Ok(NewEvent {
                    event,
                    stream: w.stream,
                    causation_id: parse_id(&w.causation_id, "causation_id", i)?,
                    correlation_id: parse_id(&w.correlation_id, "correlation_id", i)?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        Ok(AppendRequest {
            actor: self.actor,
            idempotency_key: self.idempotency_key,
            expected: self
                .expected
                .into_iter()
                .map(|(s, v)| (s, v.into()))
                .collect(),
            events,
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
    fn an_append_request_survives_the_wire() {
        let cause = uuid::Uuid::now_v7();
        let req = AppendRequest::new(
            "alice",
            vec![NewEvent::new(MetricsLogged {
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
            })
            .caused_by(cause, None)],
        )
        .idempotent("k1")
        .expect("run/r1", ExpectedVersion::Exact(4));
        let bytes = encode(&WireAppend::from_request(&req).unwrap()).unwrap();
        let back = decode::<WireAppend>(&bytes)
            .unwrap()
            .into_request()
            .unwrap();
        assert_eq!(back.actor, "alice");
        assert_eq!(back.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(
            back.expected,
            vec![("run/r1".to_string(), ExpectedVersion::Exact(4))]
        );
        assert_eq!(back.events[0].event, req.events[0].event);
        assert_eq!(back.events[0].causation_id, Some(cause));
        assert_eq!(back.events[0].correlation_id, Some(cause));
    }

    #[test]
    fn unknown_types_and_bad_ids_are_invalid_appends_naming_the_event() {
        let w = WireAppend {
            actor: "a".into(),
            idempotency_key: None,
            expected: vec![],
            events: vec![WireNewEvent {
                event_type: "NoSuchEvent".into(),
                payload: vec![],
                stream: None,
                causation_id: None,
                correlation_id: None,
            }],
        };
        let e = w.clone().into_request().unwrap_err().to_string();
        assert!(
            e.contains("event 0: unknown event type \"NoSuchEvent\""),
            "{e}"
        );
        let mut w2 = w;
        w2.events[0].event_type = "MetricsLogged".into();
        let e = w2.into_request().unwrap_err().to_string();
        assert!(e.starts_with("invalid append: event 0:"), "{e}");
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
