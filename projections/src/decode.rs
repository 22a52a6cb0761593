//! Decoding stored records straight into [`Envelope`]s, borrowing from the
//! ledger's chunks: one pass per record, no intermediate `RecordedEvent`, no
//! copy of the record or its payload. Folds of the whole ledger spend most of
//! their time here, so this runs on several threads (see `travel`).

use crate::{ProjectionError, Result};
use foundry_events::{
    stored_hash, Envelope, Event, EventError, EventId, EventType, Sha256Digest, Timestamp,
    SCHEMA_VERSION,
};
use foundry_ledger::LedgerError;
use serde::Deserialize;

/// MessagePack header of a 14-element fixarray: a full stored record.
const RECORD_HEADER: u8 = 0x9e;

/// A stored record, borrowed. Mirrors `RecordedEvent` field for field (a
/// record is the MessagePack array of those fields, in this order).
#[derive(Deserialize)]
struct Stored<'a> {
    seq: u64,
    #[serde(borrow)]
    stream: &'a str,
    stream_version: u64,
    event_id: EventId,
    #[serde(borrow)]
    event_type: &'a str,
    schema_version: u16,
    recorded_at: Timestamp,
    #[serde(borrow)]
    actor: &'a str,
    causation_id: Option<EventId>,
    correlation_id: Option<EventId>,
    #[serde(borrow)]
    idempotency_key: Option<&'a str>,
    #[serde(borrow, with = "serde_bytes")]
    payload: &'a [u8],
    prev_hash: Sha256Digest,
    hash: Sha256Digest,
}

fn record_error(reason: String) -> EventError {
    EventError::Record(reason)
}

impl<'a> Stored<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, EventError> {
        if bytes.first() != Some(&RECORD_HEADER) {
            return Err(record_error("not a 14-field envelope array".into()));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        let s = Stored::deserialize(&mut de).map_err(|e| record_error(e.to_string()))?;
        // Every field is fixed-size or length-prefixed and the 32-byte hash
        // comes last, so a record that ends anywhere else has trailing bytes.
        if stored_hash(bytes) != Some(s.hash) {
            return Err(record_error("trailing bytes after the envelope".into()));
        }
        Ok(s)
    }

    fn event(&self) -> Result<Event, EventError> {
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

    fn envelope(&self) -> Result<Envelope, EventError> {
        Ok(Envelope {
            seq: self.seq,
            stream: self.stream.to_string(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            actor: self.actor.to_string(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.map(str::to_string),
            event: self.event()?,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// Decodes the record stored at position `pos` if `admits(seq, recorded_at)`;
/// `None` for a record past the bound (where a bounded fold ends).
/// Errors are the ones reading through `Ledger::iter_from` and
/// `RecordedEvent::to_envelope` give: a damaged record names its position, an
/// unknown or newer payload names its seq.
pub(crate) fn decode_record(
    pos: u64,
    bytes: &[u8],
    admits: impl Fn(u64, Timestamp) -> bool,
) -> Result<Option<Envelope>> {
    let s = Stored::decode(bytes).map_err(|e| LedgerError::Corrupt {
        seq: pos,
        reason: e.to_string(),
    })?;
    if !admits(s.seq, s.recorded_at) {
        return Ok(None);
    }
    s.envelope()
        .map(Some)
        .map_err(|source| ProjectionError::Event { seq: s.seq, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundry_ledger::Home;

    #[test]
    fn decodes_like_recorded_event_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Home::at(dir.path()).init().unwrap();
        crate::synth::append_synthetic(&ledger, 7, 3000, 97, |_| Ok(())).unwrap();
        let mut n = 0;
        for r in ledger.scan_raw(1) {
            let (pos, bytes) = r.unwrap();
            let want = foundry_events::RecordedEvent::decode(&bytes)
                .unwrap()
                .to_envelope()
                .unwrap();
            let got = decode_record(pos, &bytes, |_, _| true).unwrap();
            assert_eq!(got, Some(want));
            // Damage: a cut record, a trailing byte, a foreign header.
            let cut = decode_record(pos, &bytes[..bytes.len() - 1], |_, _| true);
            assert!(cut.is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            let e = decode_record(pos, &longer, |_, _| true).err().unwrap();
            assert!(e.to_string().contains(&format!("seq {pos}")), "{e}");
            let mut other = bytes.clone();
            other[0] = 0x9d;
            assert!(decode_record(pos, &other, |_, _| true).is_err());
            n += 1;
        }
        assert_eq!(n, 3000);
    }

    #[test]
    fn past_the_bound_nothing_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Home::at(dir.path()).init().unwrap();
        crate::synth::append_synthetic(&ledger, 8, 50, 10, |_| Ok(())).unwrap();
        let (pos, bytes) = ledger.scan_raw(20).next().unwrap().unwrap();
        assert_eq!(decode_record(pos, &bytes, |seq, _| seq < 20).unwrap(), None);
        assert!(decode_record(pos, &bytes, |seq, _| seq <= 20)
            .unwrap()
            .is_some());
    }
}
