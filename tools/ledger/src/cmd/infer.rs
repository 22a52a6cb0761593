//! `ledger infer`: run an Idefics2 model on one image and a prompt.
//!
//! The prompt is put in the Idefics2 chat format with the image first
//! (`User:<image>PROMPT<end_of_utterance>\nAssistant:`), the processor expands the image
//! tokens and prepares the pixels, and generation runs with the KV cache until
//! `<end_of_utterance>`/EOS or `--max-new-tokens`. Inference appends nothing; only
//! `--adapter CHECKPOINT` reads the home's ledger (to find the checkpoint's adapter files).

use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use foundry_idefics2::hub::{self, ModelSource};
use foundry_idefics2::processor::{
    apply_chat_template, ChatMessage, ContentPart, Processor, RgbImage,
};
use foundry_idefics2::GenerationConfig;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The prompt used when `--prompt` is not given.
pub const DEFAULT_PROMPT: &str = "Extract JSON.";

/// Compute dtype of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InferDtype {
    /// 32-bit float (the golden-parity dtype).
    F32,
    /// bfloat16 (matmuls run in f32 on the CPU).
    Bf16,
}

impl From<InferDtype> for DType {
    fn from(d: InferDtype) -> Self {
        match d {
            InferDtype::F32 => DType::F32,
            InferDtype::Bf16 => DType::BF16,
        }
    }
}

/// Options of `ledger infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model: a local directory in the Hugging Face layout (config.json, safetensors,
    /// processor and tokenizer files), or `hf://OWNER/NAME[@REVISION]` from the hub.
    #[arg(long)]
    pub model: String,
    /// The image (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// The user's text, placed after the image.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Maximum number of generated tokens (the stop token counts).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t = InferDtype::F32)]
    pub dtype: InferDtype,
    /// Sample with this temperature instead of greedy decoding (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold in (0, 1]; needs --temperature > 0.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// For hf:// models and adapters: resolve from the local hub cache only, never the network.
    #[arg(long)]
    pub offline: bool,
    /// Attach a LoRA adapter before generating: a PEFT adapter folder (adapter_config.json +
    /// adapter_model.safetensors, e.g. trained in Python) or `hf://OWNER/NAME[@REVISION]`,
    /// attached to `--model` as it is; or
    /// a checkpoint (id or unique prefix, from `--home`), over the base quantized as its run's
    /// recipe quantized it.
    #[arg(long)]
    pub adapter: Option<String>,
}

/// What `--json` prints.
#[derive(Serialize, Debug)]
pub struct InferOutput {
    /// The tokenized prompt (chat template + expanded image tokens).
    pub prompt_token_ids: Vec<u32>,
    /// The generated ids, including the stop token if one was produced.
    pub generated_token_ids: Vec<u32>,
    /// The generated text, special tokens skipped.
    pub text: String,
}

/// Parses `--model` into a model source.
pub fn parse_source(model: &str, offline: bool) -> Result<ModelSource> {
    if let Some(rest) = model.strip_prefix("hf://") {
        let (repo_id, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (rest, "main"),
        };
        let parts: Vec<&str> = repo_id.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) || revision.is_empty() {
            bail!("--model {model}: expected hf://OWNER/NAME[@REVISION]");
        }
        return Ok(ModelSource::Hub {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            cache_dir: None,
            offline,
        });
    }
    if offline {
        bail!("--offline only applies to hf:// models");
    }
    let dir = PathBuf::from(model);
    if !dir.is_dir() {
        bail!("--model {model}: no such directory");
    }
    Ok(ModelSource::Local(dir))
}

fn generation_config(a: &InferArgs, stop_token_ids: Vec<u32>) -> Result<GenerationConfig> {
    if let Some(t) = a.temperature {
        if !(t.is_finite() && t >= 0.0) {
            bail!("--temperature must be a finite number >= 0, got {t}");
        }
    }
    let sampling = a.temperature.is_some_and(|t| t > 0.0);
    if let Some(p) = a.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {p}");
        }
        if !sampling {
            bail!("--top-p needs --temperature > 0 (greedy decoding ignores it)");
        }
    }
    Ok(GenerationConfig {
        max_new_tokens: a.max_new_tokens as usize,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_token_ids,
    })
}

/// A LoRA adapter to attach before generating, and the linears of the base its run quantized
/// to NF4 (quantized first, so that the adapter runs over the weights it was trained against).
pub struct AttachAdapter<'a> {
    /// The adapter directory.
    pub dir: &'a Path,
    /// PEFT `fullmatch` pattern of the linears to quantize, if the run quantized any.
    pub quantized: Option<&'a str>,
}

/// Runs the model and returns the prompt ids, the generated ids and the text.
pub fn infer(a: &InferArgs, adapter: Option<AttachAdapter>) -> Result<InferOutput> {
    let hub_adapter = a.adapter.as_deref().is_some_and(|s| s.starts_with("hf://"));
    if a.offline && !a.model.starts_with("hf://") && !hub_adapter {
        bail!("--offline only applies to hf:// models and adapters");
    }
    let source = parse_source(&a.model, a.offline && a.model.starts_with("hf://"))?;
    // Check the cheap inputs before loading the weights.
    let image = RgbImage::open(&a.image)?;
    let dir = hub::resolve(&source)?;
    let device = Device::Cpu;
    let processor =
        Processor::from_dir(&dir).with_context(|| format!("processor of {}", dir.display()))?;
    let mut model = foundry_qlora::export::load_model_dir(&dir, a.dtype.into(), &device)
        .with_context(|| format!("model {}", dir.display()))?;
    if let Some(adapter) = adapter {
        if let Some(pattern) = adapter.quantized {
            foundry_qlora::quantize_model(&mut model, pattern)
                .with_context(|| format!("quantizing model {}", dir.display()))?;
        }
        foundry_qlora::lora::load_adapter_into(&mut model, adapter.dir)
            .with_context(|| format!("adapter {}", adapter.dir.display()))?;
    }
    if processor.image_seq_len != model.image_seq_len() {
        bail!(
            "model {}: processor_config.json has image_seq_len {} but the model has {} resampler latents",
            dir.display(),
            processor.image_seq_len,
            model.image_seq_len()
        );
    }
    if processor.image_token_id() != model.config.image_token_id {
        bail!(
            "model {}: the tokenizer's <image> id is {} but config.json's image_token_id is {}",
            dir.display(),
            processor.image_token_id(),
            model.config.image_token_id
        );
    }
    let cfg = generation_config(a, processor.stop_ids())?;
    let chat = apply_chat_template(
        &[ChatMessage {
            role: "user".into(),
            content: vec![ContentPart::Image, ContentPart::Text(a.prompt.clone())],
        }],
        true,
    );
    let enc = processor.encode(&[chat], &[vec![image]], &device)?;
    let prompt_token_ids = enc.input_ids.into_iter().next().unwrap_or_default();
    let pixels = enc
        .pixels
        .as_ref()
        .context("the processor produced no pixel values")?;
    let generated_token_ids = model.generate(
        &prompt_token_ids,
        Some(&pixels.pixel_values),
        Some(&pixels.pixel_attention_mask),
        &cfg,
    )?;
    let text = processor.decode(&generated_token_ids, true)?;
    Ok(InferOutput {
        prompt_token_ids,
        generated_token_ids,
        text,
    })
}

/// `ledger infer`.
pub fn run(ctx: &Context, a: InferArgs) -> Result<()> {
    // A PEFT adapter folder (adapter_config.json + adapter_model.safetensors), local or
    // `hf://OWNER/NAME[@REV]` from the hub cache, is attached to `--model` as it is; anything
    // else names a checkpoint of the home.
    let external: Option<std::path::PathBuf> = match a.adapter.as_deref() {
        Some(s) if s.starts_with("hf://") => Some(
            hub::resolve_adapter(&parse_source(s, a.offline)?)
                .with_context(|| format!("adapter {s}"))?,
        ),
        Some(s) if Path::new(s).join("adapter_config.json").is_file() => Some(s.into()),
        _ => None,
    };
    let folder = external.as_deref();
    let resolved = match (&a.adapter, folder) {
        (Some(prefix), None) => Some(super::adapter::resolve_checkpoint(ctx, prefix)?),
        _ => None,
    };
    let adapter = match (folder, &resolved) {
        (Some(dir), _) => Some(AttachAdapter {
            dir,
            quantized: None,
        }),
        (None, Some(r)) => Some(AttachAdapter {
            dir: &r.adapter_dir,
            quantized: r.quantized.as_deref(),
        }),
        (None, None) => None,
    };
    let out = infer(&a, adapter)?;
    if ctx.json {
        crate::output::json(&out)
    } else {
        println!("{}", out.text);
        Ok(())
    }
}
