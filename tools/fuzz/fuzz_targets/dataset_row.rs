//! Dataset row parsing: any JSONL line is a valid row or a clear error,
//! never a panic (the built-in schema).
#![no_main]

use foundry_datasets::schema::Schema;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let _ = foundry_datasets::validate_row(line, &Schema::builtin());
});
