//! Decoding stored records straight into [`Envelope`]s, borrowing from the
//! ledger's chunks: one pass per record, no intermediate `RecordedEvent`, no
//! copy of the record or its payload. Folds of the whole ledger spend most of
//! their time here, so this runs on several threads (see `travel`).

use crate::{ProjectionError, Result};
use foundry_events::{
    stored_hash, Envelope, Event, EventError, EventId, EventType, MetricPoint, MetricsLogged,
    Sha256Digest, Timestamp, SCHEMA_VERSION,
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
        if ty == EventType::MetricsLogged {
            if let Some(m) = metrics_logged(self.payload) {
                return Ok(Event::MetricsLogged(m));
            }
        }
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

/// Reads the few MessagePack forms the ledger writes for a `MetricsLogged`
/// payload. Every method returns `None` on anything else.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    fn len(&mut self, fix: std::ops::RangeInclusive<u8>, l16: u8, l32: u8) -> Option<usize> {
        let b = self.byte()?;
        let n = match b {
            _ if fix.contains(&b) => u64::from(b - fix.start()),
            _ if b == l16 => self.be(2)?,
            _ if b == l32 => self.be(4)?,
            _ => return None,
        };
        usize::try_from(n).ok()
    }

    fn map(&mut self) -> Option<usize> {
        self.len(0x80..=0x8f, 0xde, 0xdf)
    }

    fn array(&mut self) -> Option<usize> {
        self.len(0x90..=0x9f, 0xdc, 0xdd)
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b - 0xa0),
            0xd9 => usize::try_from(self.be(1)?).ok()?,
            0xda => usize::try_from(self.be(2)?).ok()?,
            0xdb => usize::try_from(self.be(4)?).ok()?,
            _ => return None,
        };
        self.take(n)
    }

    fn u64(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn f64(&mut self) -> Option<f64> {
        match self.byte()? {
            0xcb => Some(f64::from_bits(self.be(8)?)),
            0xca => Some(f64::from(f32::from_bits(u32::try_from(self.be(4)?).ok()?))),
            _ => None,
        }
    }
}

/// Sets a field that must appear once.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(v);
            Some(())
        }
    }
}

fn metric_point(r: &mut Reader) -> Option<MetricPoint> {
    let (mut step, mut loss, mut lr, mut grad_norm) = (None, None, None, None);
    let (mut tokens, mut tokens_per_s, mut elapsed_ms) = (None, None, None);
    for _ in 0..r.map()? {
        match r.str()? {
            b"step" => once(&mut step, r.u64()?)?,
            b"loss" => once(&mut loss, r.f64()?)?,
            b"lr" => once(&mut lr, r.f64()?)?,
            b"grad_norm" => once(&mut grad_norm, r.f64()?)?,
            b"tokens" => once(&mut tokens, r.u64()?)?,
            b"tokens_per_s" => once(&mut tokens_per_s, r.f64()?)?,
            b"elapsed_ms" => once(&mut elapsed_ms, r.u64()?)?,
            _ => return None,
        }
    }
    Some(MetricPoint {
        step: step?,
        loss: loss?,
        lr: lr?,
        grad_norm: grad_norm?,
        tokens: tokens?,
        tokens_per_s: tokens_per_s?,
        elapsed_ms: elapsed_ms?,
    })
}

/// The fast path for three quarters of a training ledger's events: a
/// `MetricsLogged` payload in exactly the form the ledger writes (a map with
/// each field once, unsigned integers, 64- or 32-bit floats), read without
/// serde's per-field string handling. `None` for anything else, which then
/// goes through serde, so the result never differs from
/// `Event::decode_payload`'s.
fn metrics_logged(payload: &[u8]) -> Option<MetricsLogged> {
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    let (mut run_id, mut points) = (None, None);
    for _ in 0..r.map()? {
        match r.str()? {
            b"run_id" => {
                let id = std::str::from_utf8(r.str()?).ok()?.to_string();
                once(&mut run_id, id)?
            }
            b"points" => {
                let n = r.array()?;
                // Never trust a length before the bytes are there.
                let mut v = Vec::with_capacity(n.min(payload.len() / 8));
                for _ in 0..n {
                    v.push(metric_point(&mut r)?);
                }
                once(&mut points, v)?
            }
            _ => return None,
        }
    }
    if r.pos != payload.len() {
        return None;
    }
    Some(MetricsLogged {
        run_id: run_id?,
        points: points?,
    })
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

    fn point(step: u64) -> MetricPoint {
        MetricPoint {
            step,
            loss: 1.0 / (step as f64 + 1.0),
            lr: 2e-4,
            grad_norm: 0.75,
            tokens: 300 + step * 70_000,
            tokens_per_s: 1234.5,
            elapsed_ms: step * 1_000_003,
        }
    }

    fn serde_decode(bytes: &[u8]) -> Result<Event, EventError> {
        Event::decode_payload(EventType::MetricsLogged, bytes)
    }

    #[test]
    fn metrics_fast_path_equals_serde_and_leaves_the_rest_to_it() {
        for n in [0, 1, 15, 16, 70_000] {
            let m = MetricsLogged {
                run_id: format!("run-{n}-é"),
                points: (0..n).map(|i| point(i * 977)).collect(),
            };
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert_eq!(metrics_logged(&bytes).as_ref(), Some(&m));
            assert_eq!(serde_decode(&bytes).unwrap(), Event::MetricsLogged(m));
        }
        // Forms the ledger does not write, and damage: no fast path.
        let m = MetricsLogged {
            run_id: "r".into(),
            points: vec![point(3)],
        };
        let named = rmp_serde::to_vec_named(&m).unwrap();
        let positional = rmp_serde::to_vec(&m).unwrap();
        let mut extra = named.clone();
        extra.push(0xc0);
        let mut dup = named.clone();
        dup[0] += 1; // one more entry than there is: runs out of bytes
        let mut renamed = named.clone();
        let at = named.windows(4).position(|w| w == b"step").unwrap();
        renamed[at] = b'S';
        let cases: [&[u8]; 6] = [
            &positional,
            &extra,
            &dup,
            &renamed,
            &named[..named.len() - 1],
            &[],
        ];
        for bytes in cases {
            assert_eq!(metrics_logged(bytes), None);
        }
        // serde still gets the last word on those: same result as before.
        assert_eq!(
            serde_decode(&positional).unwrap(),
            Event::MetricsLogged(m.clone())
        );
        assert!(serde_decode(&named[..named.len() - 1]).is_err());
        // A field given twice is refused by both.
        let mut twice = vec![0x83];
        twice.extend_from_slice(&named[1..]);
        twice.extend_from_slice(&rmp_serde::to_vec("run_id").unwrap());
        twice.extend_from_slice(&rmp_serde::to_vec("again").unwrap());
        assert_eq!(metrics_logged(&twice), None);
        assert!(serde_decode(&twice).is_err());
        // Integers in other widths and 32-bit floats are read like serde does.
        let mut wide = vec![0x82];
        wide.extend_from_slice(&rmp_serde::to_vec("run_id").unwrap());
        wide.extend_from_slice(&rmp_serde::to_vec("r").unwrap());
        wide.extend_from_slice(&rmp_serde::to_vec("points").unwrap());
        wide.extend_from_slice(&[0x91, 0x87]);
        for (k, v) in [
            ("step", vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 9]),
            ("loss", vec![0xca, 0x3f, 0x00, 0x00, 0x00]),
            (
                "lr",
                vec![0xcb, 0x3f, 0x1a, 0x36, 0xe2, 0xeb, 0x1c, 0x43, 0x2d],
            ),
            ("grad_norm", vec![0xcb, 0x3f, 0xe8, 0, 0, 0, 0, 0, 0]),
            ("tokens", vec![0xcd, 0x01, 0x00]),
            ("tokens_per_s", vec![0xcb, 0x40, 0x59, 0, 0, 0, 0, 0, 0]),
            ("elapsed_ms", vec![0xce, 0, 1, 0, 0]),
        ] {
            wide.extend_from_slice(&rmp_serde::to_vec(k).unwrap());
            wide.extend_from_slice(&v);
        }
        let fast = metrics_logged(&wide).unwrap();
        assert_eq!(fast.points[0].step, 9);
        assert_eq!(fast.points[0].loss, 0.5);
        assert_eq!(fast.points[0].tokens, 256);
        assert_eq!(fast.points[0].elapsed_ms, 65536);
        assert_eq!(serde_decode(&wide).unwrap(), Event::MetricsLogged(fast));
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
