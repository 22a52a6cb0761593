//! Dry-run support: what a full run would do ([`plan`]: optimizer steps, examples, tokens and an
//! estimate of peak memory, from the configs and dataset statistics alone), and a short real
//! rehearsal ([`dry_run`]: two optimizer steps on a few examples, a checkpoint written to a
//! temporary folder and removed, nothing else touched).

use std::path::PathBuf;

use candle_core::DType;
use foundry_idefics2::{Idefics2, Idefics2Config};
use serde::{Deserialize, Serialize};

use crate::checkpoint::FileHash;
use crate::data::{ExampleSource, IGNORE};
use crate::nf4::{BLOCKSIZE, NESTED_BLOCKSIZE};
use crate::train::{StepMetrics, TrainConfig, Trainer};
use crate::{Error, Result};

/// Token and image statistics of a dataset, as the plan needs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Number of examples.
    pub examples: usize,
    /// Tokens over all examples (image tokens included).
    pub tokens: u64,
    /// Tokens in the loss (the answers) over all examples.
    pub answer_tokens: u64,
    /// Tokens of the longest example (micro-batches are padded to their longest).
    pub max_tokens: usize,
    /// Images of the example with the most images.
    pub max_images: usize,
    /// The largest image height and width in pixels (0 when there are no images).
    pub max_image_hw: (usize, usize),
}

impl DatasetStats {
    /// Reads every example of `source` once.
    pub fn from_source(source: &dyn ExampleSource) -> Result<Self> {
        let mut s = Self {
            examples: source.len(),
            tokens: 0,
            answer_tokens: 0,
            max_tokens: 0,
            max_images: 0,
            max_image_hw: (0, 0),
        };
        for i in 0..source.len() {
            let e = source.get(i)?;
            s.tokens += e.input_ids.len() as u64;
            s.answer_tokens += e.labels.iter().filter(|l| **l != IGNORE).count() as u64;
            s.max_tokens = s.max_tokens.max(e.input_ids.len());
            if let Some(pv) = &e.pixel_values {
                let (n, _, h, w) = pv.dims4()?;
                s.max_images = s.max_images.max(n);
                s.max_image_hw = (s.max_image_hw.0.max(h), s.max_image_hw.1.max(w));
            }
        }
        Ok(s)
    }
}

/// One linear of the model as the config implies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearShape {
    /// Full module path (transformers' names).
    pub name: String,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

/// Every linear of an Idefics2 with this config, in the model's visiting order (vision,
/// connector, text, lm_head), without loading any weight.
pub fn linear_shapes(cfg: &Idefics2Config) -> Vec<LinearShape> {
    let mut out = Vec::new();
    let mut push = |name: String, o: usize, i: usize| {
        out.push(LinearShape {
            name,
            out: o,
            inp: i,
        })
    };
    let v = &cfg.vision_config;
    for l in 0..v.num_hidden_layers {
        let p = format!("model.vision_model.encoder.layers.{l}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            push(format!("{p}.self_attn.{n}"), v.hidden_size, v.hidden_size);
        }
        push(format!("{p}.mlp.fc1"), v.intermediate_size, v.hidden_size);
        push(format!("{p}.mlp.fc2"), v.hidden_size, v.intermediate_size);
    }
    let t = &cfg.text_config;
    let mp = "model.connector.modality_projection";
    push(
        format!("{mp}.gate_proj"),
        t.intermediate_size,
        v.hidden_size,
    );
    push(format!("{mp}.up_proj"), t.intermediate_size, v.hidden_size);
    push(
        format!("{mp}.down_proj"),
        t.hidden_size,
        t.intermediate_size,
    );
    let pc = &cfg.perceiver_config;
    let hid = cfg.perceiver_hidden();
    let hd = pc.resampler_head_dim;
    for l in 0..pc.resampler_depth {
        let p = format!("model.connector.perceiver_resampler.layers.{l}");
        push(
            format!("{p}.self_attn.q_proj"),
            pc.resampler_n_heads * hd,
            hid,
        );
        push(
            format!("{p}.self_attn.k_proj"),
            pc.num_key_value_heads * hd,
            hid,
        );
        push(
            format!("{p}.self_attn.v_proj"),
            pc.num_key_value_heads * hd,
            hid,
        );
        push(
            format!("{p}.self_attn.o_proj"),
            hid,
            pc.resampler_n_heads * hd,
        );
        push(format!("{p}.mlp.gate_proj"), 4 * hid, hid);
        push(format!("{p}.mlp.up_proj"), 4 * hid, hid);
        push(format!("{p}.mlp.down_proj"), hid, 4 * hid);
    }
    let (h, nh, kv, d) = (
        t.hidden_size,
        t.num_attention_heads,
        t.kv_heads(),
        t.head_dim(),
    );
    for l in 0..t.num_hidden_layers {
        let p = format!("model.text_model.layers.{l}");
        push(format!("{p}.self_attn.q_proj"), nh * d, h);
        push(format!("{p}.self_attn.k_proj"), kv * d, h);
        push(format!("{p}.self_attn.v_proj"), kv * d, h);
        push(format!("{p}.self_attn.o_proj"), h, nh * d);
        push(format!("{p}.mlp.gate_proj"), t.intermediate_size, h);
        push(format!("{p}.mlp.up_proj"), t.intermediate_size, h);
        push(format!("{p}.mlp.down_proj"), h, t.intermediate_size);
    }
    push("lm_head".into(), t.vocab_size, h);
    out
}

/// Parameters that are not linear weights (embeddings, norms, biases, patch embedding,
/// position embedding, latents); `lm_head` counts as a linear even when tied.
pub fn other_params(cfg: &Idefics2Config) -> usize {
    let v = &cfg.vision_config;
    let n = v.image_size / v.patch_size;
    let vision = v.hidden_size * v.num_channels * v.patch_size * v.patch_size
        + v.hidden_size
        + n * n * v.hidden_size
        + v.num_hidden_layers * (4 * v.hidden_size + 5 * v.hidden_size + v.intermediate_size)
        + 2 * v.hidden_size;
    let pc = &cfg.perceiver_config;
    let hid = cfg.perceiver_hidden();
    let connector = pc.resampler_n_latents * hid + pc.resampler_depth * 3 * hid + hid;
    let t = &cfg.text_config;
    let text =
        t.vocab_size * t.hidden_size + t.num_hidden_layers * 2 * t.hidden_size + t.hidden_size;
    vision + connector + text
}

/// Bytes at rest of a `[out, in]` weight in NF4 with blocks of 64 (what
/// [`crate::nf4::Nf4Tensor::bytes_at_rest`] reports for it).
pub fn nf4_bytes(out: usize, inp: usize, double_quant: bool) -> usize {
    let n = out * inp;
    let blocks = n.div_ceil(BLOCKSIZE);
    let absmax = if double_quant {
        blocks + 4 * blocks.div_ceil(NESTED_BLOCKSIZE) + 4 * 256 + 4
    } else {
        4 * blocks
    };
    n.div_ceil(2) + absmax + 4 * 16
}

/// The estimated peak memory of a training step, in bytes, by part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// NF4 linears at rest.
    pub nf4_weights: u64,
    /// Dense weights (non-quantized linears and every other parameter) in the compute dtype.
    pub dense_weights: u64,
    /// LoRA A and B (f32).
    pub lora_params: u64,
    /// Their gradients (f32, accumulated over micro-batches).
    pub lora_grads: u64,
    /// AdamW's two moments (f32).
    pub adam_moments: u64,
    /// Activations kept for the backward pass of one micro-batch (the whole autograd graph).
    pub activations: u64,
    /// The largest linear dequantized (f32) inside forward and backward, twice.
    pub dequant_transient: u64,
    /// Sum of the above.
    pub total: u64,
}

/// What a full run would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Optimizer steps.
    pub optimizer_steps: u64,
    /// Examples drawn (steps × batch × accumulation).
    pub examples: u64,
    /// Passes over the dataset.
    pub epochs: f64,
    /// Tokens processed (expected, from the dataset's mean example length).
    pub tokens: u64,
    /// Answer tokens in the loss (expected).
    pub answer_tokens: u64,
    /// Linears quantized to NF4.
    pub nf4_linears: usize,
    /// Linears with a LoRA adapter.
    pub lora_modules: usize,
    /// Trainable LoRA parameters.
    pub lora_params: u64,
    /// All base-model parameters.
    pub base_params: u64,
    /// The memory estimate.
    pub memory: MemoryEstimate,
}

/// Plans a run: `quantize` is the regex of the linears held in NF4 (with double quantization;
/// `None`: all dense), `compute` the compute dtype of activations and dense weights.
pub fn plan(
    cfg: &TrainConfig,
    model: &Idefics2Config,
    quantize: Option<&str>,
    stats: &DatasetStats,
    compute: DType,
) -> Result<Plan> {
    cfg.validate()?;
    if stats.examples == 0 {
        return Err(Error::Train("the dataset is empty".into()));
    }
    let lora_re = foundry_idefics2::linear::full_match_regex(&cfg.lora.target_modules)
        .map_err(|e| Error::Lora(e.to_string()))?;
    let quant_re = quantize
        .map(foundry_idefics2::linear::full_match_regex)
        .transpose()
        .map_err(|e| Error::Quant(e.to_string()))?;
    let elt = compute.size_in_bytes() as u64;
    let linears = linear_shapes(model);
    let (mut nf4_linears, mut nf4_weights, mut dense_params) = (0usize, 0u64, 0u64);
    let (mut lora_modules, mut lora_params, mut base_params) = (0usize, 0u64, 0u64);
    let mut largest = 0u64;
    let tied = model.tie_word_embeddings;
    for l in &linears {
        let n = (l.out * l.inp) as u64;
        let shared = tied && l.name == "lm_head";
        if !shared {
            base_params += n;
        }
        largest = largest.max(n);
        if quant_re.as_ref().is_some_and(|r| r.is_match(&l.name)) && !shared {
            nf4_linears += 1;
            nf4_weights += nf4_bytes(l.out, l.inp, true) as u64;
        } else if !shared {
            dense_params += n;
        }
        if lora_re.is_match(&l.name) {
            lora_modules += 1;
            lora_params += (cfg.lora.r * (l.out + l.inp)) as u64;
        }
    }
    if lora_modules == 0 {
        return Err(Error::Lora(format!(
            "target_modules `{}` matches no linear of the model",
            cfg.lora.target_modules
        )));
    }
    let other = other_params(model) as u64;
    base_params += other;
    dense_params += other;

    let per_step = (cfg.batch_size * cfg.grad_accum) as u64;
    let examples = cfg.total_steps * per_step;
    let n = stats.examples as u64;
    let memory = MemoryEstimate {
        nf4_weights,
        dense_weights: dense_params * elt,
        lora_params: 4 * lora_params,
        lora_grads: 4 * lora_params,
        adam_moments: 8 * lora_params,
        activations: activation_bytes(cfg, model, stats, elt),
        dequant_transient: 2 * 4 * largest,
        total: 0,
    };
    let total = memory.nf4_weights
        + memory.dense_weights
        + memory.lora_params
        + memory.lora_grads
        + memory.adam_moments
        + memory.activations
        + memory.dequant_transient;
    Ok(Plan {
        optimizer_steps: cfg.total_steps,
        examples,
        epochs: examples as f64 / n as f64,
        tokens: (examples as u128 * stats.tokens as u128 / n as u128) as u64,
        answer_tokens: (examples as u128 * stats.answer_tokens as u128 / n as u128) as u64,
        nf4_linears,
        lora_modules,
        lora_params,
        base_params,
        memory: MemoryEstimate { total, ..memory },
    })
}

/// Activations one micro-batch keeps for backward, in bytes, as the fused CPU kernels build the
/// autograd graph (one output per op: norm, projection, attention, gated activation, residual),
/// worst case (every example as long as the longest, every example with the most images). A
/// tower with no LoRA target is not part of the graph: only one of its layers is alive at a time.
/// The backward's gradients live alongside the graph; a quarter on top covers them.
fn activation_bytes(cfg: &TrainConfig, m: &Idefics2Config, s: &DatasetStats, elt: u64) -> u64 {
    let b = cfg.batch_size as u64;
    let lora_re = foundry_idefics2::linear::full_match_regex(&cfg.lora.target_modules).ok();
    // LoRA with dropout keeps the mask of its input (one float per input element).
    let mut mask_per_row: std::collections::HashMap<String, u64> = Default::default();
    let mut targets: Vec<String> = Vec::new();
    for l in linear_shapes(m) {
        if lora_re.as_ref().is_some_and(|re| re.is_match(&l.name)) {
            let mask = if cfg.lora.lora_dropout > 0.0 {
                l.inp as u64
            } else {
                0
            };
            mask_per_row.insert(l.name.clone(), mask);
            targets.push(l.name);
        }
    }
    let masks = |prefix: &str, rows: u64| -> u64 {
        mask_per_row
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v * rows)
            .sum()
    };
    let trained = |prefix: &str| targets.iter().any(|t| t.starts_with(prefix));
    // A tower's layers: all of them kept when trained (or when a later trained part needs the
    // gradient through them), else the largest one alive at a time.
    let layers = |per_layer: u64, n: usize, kept: bool| {
        if kept {
            per_layer * n as u64
        } else {
            per_layer
        }
    };
    let mut floats = 0u64;
    // Text decoder: per row and layer, norm, q, k, v, attention output, o, residual, norm, gate,
    // up, SiLU·up, down, residual.
    let t = &m.text_config;
    let tok = b * s.max_tokens as u64;
    let (h, i) = (t.hidden_size as u64, t.intermediate_size as u64);
    let (a, kv, d) = (
        t.num_attention_heads as u64,
        t.kv_heads() as u64,
        t.head_dim() as u64,
    );
    // The text model is downstream of every other tower: any target keeps its graph.
    let per_layer = tok * (6 * h + 2 * a * d + 2 * kv * d + 3 * i);
    floats += layers(per_layer, t.num_hidden_layers, !targets.is_empty());
    for l in 0..t.num_hidden_layers {
        floats += masks(&format!("model.text_model.layers.{l}."), tok);
    }
    // Embeddings, final norm, and lm_head on the loss positions (the answers).
    let answers = s.answer_tokens.div_ceil(s.examples.max(1) as u64) * b;
    floats += 2 * tok * h + answers * (h + t.vocab_size as u64);
    // Vision encoder and connector, per image.
    let imgs = b * s.max_images as u64;
    if imgs > 0 {
        let vc = &m.vision_config;
        let (ih, iw) = if s.max_image_hw.0 > 0 {
            s.max_image_hw
        } else {
            (vc.image_size, vc.image_size)
        };
        let patches = ((ih / vc.patch_size) * (iw / vc.patch_size)) as u64;
        let rows = imgs * patches;
        let (vh, vi) = (vc.hidden_size as u64, vc.intermediate_size as u64);
        let vision_trained = trained("model.vision_model.");
        floats += rows * (vc.num_channels * vc.patch_size * vc.patch_size) as u64 + 2 * rows * vh;
        // Per layer: norm, q, k, v, attention output, out_proj, residual, norm, fc1, GELU, fc2,
        // residual.
        floats += layers(
            rows * (9 * vh + 2 * vi),
            vc.num_hidden_layers,
            vision_trained,
        );
        floats += masks("model.vision_model.", rows);
        // Modality projection: gate, up, SiLU·up, down.
        floats += rows * (3 * i + h) + masks("model.connector.modality_projection.", rows);
        let pc = &m.perceiver_config;
        let lat = pc.resampler_n_latents as u64;
        let hid = m.perceiver_hidden() as u64;
        let (ph, pkv, phd) = (
            pc.resampler_n_heads as u64,
            pc.num_key_value_heads as u64,
            pc.resampler_head_dim as u64,
        );
        let ctx = lat + patches;
        // Per layer: the two norms and their concatenation, q, k, v, attention output, o,
        // residual, norm, gate, up, SiLU·up (4 × hidden wide), down, residual.
        let per_layer = imgs
            * (lat * hid
                + 2 * ctx * hid
                + 2 * lat * ph * phd
                + 2 * ctx * pkv * phd
                + 4 * lat * hid
                + 3 * lat * 4 * hid);
        let connector_kept = vision_trained || trained("model.connector.");
        floats += layers(per_layer, pc.resampler_depth, connector_kept);
        floats += masks("model.connector.perceiver_resampler.", imgs * ctx);
    }
    floats * 5 / 4 * elt
}

/// What a dry run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    /// Examples the two steps drew from (the first ones of the dataset).
    pub examples_used: usize,
    /// The two optimizer steps.
    pub steps: Vec<StepMetrics>,
    /// Wall-clock seconds of each step.
    pub step_seconds: Vec<f64>,
    /// The files a checkpoint holds (written to a temporary folder, then removed).
    pub checkpoint_files: Vec<FileHash>,
}

/// Runs two optimizer steps of `config` on the first `max_examples` examples of `data` and
/// writes one checkpoint into a temporary folder that is removed afterwards: it proves that the
/// model, adapter targets, data and optimizer work together, without side effects. A loss or
/// gradient norm that is not finite is an error.
pub fn dry_run(
    model: Idefics2,
    config: &TrainConfig,
    data: &dyn ExampleSource,
    max_examples: usize,
) -> Result<DryRunReport> {
    let n = data.len().min(max_examples.max(1));
    if n == 0 {
        return Err(Error::Train("the dataset is empty".into()));
    }
    let few: Vec<crate::data::Example> = (0..n).map(|i| data.get(i)).collect::<Result<_>>()?;
    let mut cfg = config.clone();
    cfg.total_steps = 2;
    cfg.save_every = 0;
    cfg.keep_last = 1;
    let mut trainer = Trainer::new(model, cfg)?;
    let (mut steps, mut secs) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        let m = trainer.train_step(&few)?;
        secs.push(t0.elapsed().as_secs_f64());
        if !m.loss.is_finite() || !m.grad_norm.is_finite() {
            return Err(Error::Train(format!(
                "dry run: step {} gave loss {} and gradient norm {}",
                m.step, m.loss, m.grad_norm
            )));
        }
        steps.push(m);
    }
    let tmp: PathBuf = std::env::temp_dir().join(format!(
        "foundry-dry-run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let saved = trainer.save_checkpoint(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let info = saved?;
    Ok(DryRunReport {
        examples_used: n,
        steps,
        step_seconds: secs,
        checkpoint_files: info.files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_bytes_match_the_bits_per_parameter() {
        // 4096 x 4096 with double quant: ~4.127 bits per parameter.
        let b = nf4_bytes(4096, 4096, true) as f64 * 8.0 / (4096.0 * 4096.0);
        assert!((b - 4.127).abs() < 1e-3, "{b}");
        // Plain absmax: 4 + 32/64 = 4.5 bits.
        let p = nf4_bytes(4096, 4096, false) as f64 * 8.0 / (4096.0 * 4096.0);
        assert!((p - 4.5).abs() < 1e-3, "{p}");
        // An odd count rounds the packed bytes up.
        assert_eq!(nf4_bytes(1, 3, false), 2 + 4 + 64);
    }
}
