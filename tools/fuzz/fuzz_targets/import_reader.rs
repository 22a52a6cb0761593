//! Any bytes given to the export reader must be verified or refused, never
//! a panic or an unbounded allocation.
#![no_main]

use foundry_ledger::ExportReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut reader) = ExportReader::new(data, None) {
        while let Ok(Some(_)) = reader.next_record() {}
    }
});
