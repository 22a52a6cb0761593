//! QLoRA training engine for Idefics2 in candle.
//!
//! * [`nf4`]: NF4 4-bit quantization bit-compatible with bitsandbytes (double quantization,
//!   packing, the hub's `*-bnb-4bit` layout) and a frozen weight for the model's linear seam.
//! * [`lora`]: PEFT-compatible LoRA (config, init, regex targeting, adapter files).
//! * [`data`]: the training-example trait, chat tokenization with answer-only labels, collation.
//! * [`train`]: AdamW, schedules, accumulation, clipping, checkpoints with exact resume.
//! * [`checkpoint`]: safetensors with PEFT metadata, file hashes, retention.
//! * [`export`]: the hub's `*-bnb-4bit` folder writer, LoRA merging and dense export.
//! * [`plan`]: dry-run planning (steps, tokens, memory estimate) and a two-step rehearsal.
//! * [`device`]: device and compute-dtype selection that fails fast.
//! * [`quantize_model`]: replaces a model's dense linears by NF4 ones.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod export;
pub mod lora;
pub mod nf4;
pub mod plan;
pub mod train;

pub use error::{Error, Result};

/// Tells glibc's allocator to keep freed memory for reuse instead of handing
/// it back to the kernel after every training step. By default glibc serves
/// every large tensor (above a threshold that grows only up to 32 MiB) with
/// a fresh `mmap` and returns freed heap tops with `munmap`/trim, so each
/// step page-faults, zeroes and TLB-flushes all of its activations again:
/// on the small benchmark config that was half of the step time (2.0–2.3 s →
/// 1.05 s per step, same peak RSS). Call it once at the start of a process
/// that trains; it is process-wide and a no-op off Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call
    // at any time from any thread (glibc takes its own locks).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

use std::sync::Arc;

use foundry_idefics2::linear::LinearVisitor;
use foundry_kernels::BaseWeight;

/// Quantizes every linear whose name matches `pattern` (PEFT `fullmatch`) to NF4 with double
/// quantization, as transformers + bitsandbytes do (which quantize all but `lm_head`); a linear
/// that is already 4-bit (loaded from a bnb checkpoint) stays as it is. Returns (linears
/// matched, parameters quantized, bytes at rest).
pub fn quantize_model(
    model: &mut dyn LinearVisitor,
    pattern: &str,
) -> Result<(usize, usize, usize)> {
    let (mut params, mut bytes) = (0usize, 0usize);
    let n = model.for_each_matching(pattern, &mut |l| {
        if matches!(l.base(), BaseWeight::Frozen(_)) {
            // Already 4-bit (a bnb checkpoint): kept as it was saved.
            return Ok(());
        }
        let w = l.dense_weight(candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let (o, i) = w.dims2()?;
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        let q = nf4::Nf4Tensor::quantize(&data, &[o, i], nf4::BLOCKSIZE, true)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        params += q.numel();
        bytes += q.bytes_at_rest();
        let w = nf4::Nf4Weight::new(q).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        l.set_base(BaseWeight::Frozen(Arc::new(w)))
    })?;
    Ok((n, params, bytes))
}

/// Loads an Idefics2 checkpoint in the layout transformers + bitsandbytes save 4-bit models in
/// (`*-bnb-4bit`): any linear may be quantized (vision tower, connector, text model), NF4 or
/// FP4, with or without double quantization, its codes stored as uint8 or another
/// `bnb_4bit_quant_storage` dtype, in one file or shards with an index; linears named in
/// `llm_int8_skip_modules` are simply dense. The quantized linears stay 4-bit (decoded inside
/// each forward), the other tensors load as usual. Returns the model and the number of 4-bit
/// linears.
pub fn load_bnb_dir(
    dir: &std::path::Path,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<(foundry_idefics2::Idefics2, usize)> {
    use std::collections::HashMap;
    let files = foundry_idefics2::weights::safetensors_files(dir)?;
    let mut all: HashMap<String, candle_core::Tensor> = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, &candle_core::Device::Cpu)
            .map_err(|e| Error::Quant(format!("{}: {e}", f.display())))?;
        all.extend(t);
    }
    // Every 4-bit linear, wherever it is (vision tower, connector, text model): its quant
    // state names it, NF4 or FP4.
    let prefixes: Vec<String> = all
        .keys()
        .filter_map(|k| {
            k.strip_suffix(".weight.quant_state.bitsandbytes__nf4")
                .or_else(|| k.strip_suffix(".weight.quant_state.bitsandbytes__fp4"))
                .map(String::from)
        })
        .collect();
    let mut quantized = HashMap::new();
    for p in &prefixes {
        let q = nf4::Nf4Tensor::from_bnb(&all, p)?;
        let dense = q.dequantize(candle_core::DType::F32, &candle_core::Device::Cpu)?;
        for s in [
            "",
            ".absmax",
            ".quant_map",
            ".nested_absmax",
            ".nested_quant_map",
            ".quant_state.bitsandbytes__nf4",
            ".quant_state.bitsandbytes__fp4",
        ] {
            all.remove(&format!("{p}.weight{s}"));
        }
        all.insert(format!("{p}.weight"), dense);
        quantized.insert(p.clone(), q);
    }
    // The dense view goes through the model's strict loader from a temporary file.
    let tmp = std::env::temp_dir().join(format!(
        "foundry-bnb-{}-{}.safetensors",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut config = foundry_idefics2::Idefics2Config::from_file(&dir.join("config.json"))?;
    config.dtype = Some("float32".into());
    let all: Vec<(String, candle_core::Tensor)> = all
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<_>>()?;
    checkpoint::write_safetensors(&tmp, &all)?;
    drop(all);
    let loaded =
        foundry_idefics2::Idefics2::load(config, std::slice::from_ref(&tmp), dtype, device);
    let _ = std::fs::remove_file(&tmp);
    let mut model = loaded?;
    let mut n = 0;
    model.visit_linears(&mut |l| {
        if let Some(q) = quantized.remove(l.name()) {
            let w = nf4::Nf4Weight::new(q).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            l.set_base(BaseWeight::Frozen(Arc::new(w)))?;
            n += 1;
        }
        Ok(())
    })?;
    if let Some(k) = quantized.keys().next() {
        return Err(Error::Quant(format!(
            "quantized tensor `{k}` is not a linear of the model"
        )));
    }
    Ok((model, n))
}
