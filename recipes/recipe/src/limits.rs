//! The bounds every recipe value a run allocates by must stay within, so
//! that no recipe — careless or hostile — can make a trainer ask for more
//! memory than any machine has, and the names Modal accepts. `recipe
//! declare` refuses anything outside them, naming the key; the README's
//! recipe reference lists them.

/// Largest LoRA rank (and, at run start, at most the smaller side of every
/// targeted linear).
pub const MAX_LORA_R: i64 = 1024;
/// Largest micro-batch.
pub const MAX_MICRO_BATCH: i64 = 1024;
/// Largest gradient accumulation.
pub const MAX_GRAD_ACCUMULATION: i64 = 4096;
/// Longest token sequence.
pub const MAX_LENGTH: i64 = 32_768;
/// Longest image edge a recipe may resize to.
pub const MAX_IMAGE_EDGE: i64 = 4096;
/// Most optimizer steps.
pub const MAX_STEPS: i64 = 100_000_000;
/// Most epochs.
pub const MAX_EPOCHS: i64 = 100_000;
/// Most checkpoints kept.
pub const MAX_KEEP_LAST: i64 = 10_000;
/// Longest greedy generation.
pub const MAX_NEW_TOKENS: i64 = 8192;
/// Longest Modal attempt (Modal's own limit: 24 hours).
pub const MAX_MODAL_TIMEOUT_S: i64 = 86_400;

/// Checks a Modal object name (app, volume, secret): 1 to 64 letters,
/// digits, `-`, `_` or `.`.
pub fn check_modal_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: Modal names are 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Checks a Modal GPU spec (`H100`, `A100-80GB`, `H100:2`, `H100!`): 1 to
/// 32 letters, digits, `-`, `:` or `!`.
pub fn check_modal_gpu(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '!'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: a Modal GPU is 1 to 32 letters, digits, '-', ':' or '!' (e.g. H100, A100-80GB, H100:2)"
        ))
    }
}
