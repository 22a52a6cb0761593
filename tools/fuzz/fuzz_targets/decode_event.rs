//! Any bytes given to the record decoders must give a value or an error,
//! never a panic.
#![no_main]

use foundry_events::{hash_record_bytes, RecordRef, RecordedEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = RecordedEvent::decode(data) {
        let _ = rec.decode_event();
        let _ = rec.compute_hash();
    }
    if let Ok(view) = RecordRef::decode(data) {
        let _ = view.decode_event();
        let _ = view.statement_digest();
    }
    let _ = hash_record_bytes(data);
});
