//! Recipe parsing and resolution: any text, with or without FOUNDRY_*
//! overrides, resolves or gives an error, never a panic; whatever
//! resolves is within the documented limits.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Text after a line `---` is read as KEY=VALUE overrides.
    let (recipe, overrides) = text.split_once("\n---\n").unwrap_or((text, ""));
    let env: BTreeMap<String, String> = overrides
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(r) = foundry_recipes::resolve_str(recipe, "fuzz.toml", &env, None) {
        let t = &r.recipe.training;
        assert!(r.recipe.lora.r <= foundry_recipes::limits::MAX_LORA_R);
        assert!(t.micro_batch <= foundry_recipes::limits::MAX_MICRO_BATCH);
        assert!(t.max_length <= foundry_recipes::limits::MAX_LENGTH);
    }
});
