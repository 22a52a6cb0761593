//! Decoding stored records straight into [`Envelope`]s, borrowing from the
//! ledger's chunks through the events crate's one record decoder
//! ([`RecordRef`]): no intermediate `RecordedEvent`, no copy of the record
//! or its payload. Folds of the whole ledger spend most of their time here,
//! so this runs on several threads (see `travel`).

use crate::{ProjectionError, Result};
use foundry_events::{Envelope, RecordRef, Timestamp};
use foundry_ledger::LedgerError;

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
    let r = RecordRef::decode(bytes).map_err(|e| LedgerError::Corrupt {
        seq: pos,
        reason: e.to_string(),
    })?;
    if !admits(r.seq, r.recorded_at) {
        return Ok(None);
    }
    let event = r
        .decode_event()
        .map_err(|source| ProjectionError::Event { seq: r.seq, source })?;
    Ok(Some(r.envelope_with(event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_recorded_event_and_refuses_damage() {
        let (_dir, ledger) = crate::histories::tests_ledger();
        crate::histories::append_synthetic(&ledger, 7, 3000, 97, |_| Ok(())).unwrap();
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
        assert!(n >= 3000);
    }

    #[test]
    fn past_the_bound_nothing_is_decoded() {
        let (_dir, ledger) = crate::histories::tests_ledger();
        crate::histories::append_synthetic(&ledger, 8, 50, 10, |_| Ok(())).unwrap();
        let (pos, bytes) = ledger.scan_raw(20).next().unwrap().unwrap();
        assert_eq!(decode_record(pos, &bytes, |seq, _| seq < 20).unwrap(), None);
        assert!(decode_record(pos, &bytes, |seq, _| seq <= 20)
            .unwrap()
            .is_some());
    }
}
