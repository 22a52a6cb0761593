//! `ledger adapter merge`: fold a checkpoint's LoRA adapter into its run's base model
//! and write a plain model folder (loadable by `ledger infer --model DIR`).
//!
//! Also the shared lookup `ledger infer --adapter` uses: a checkpoint id prefix to
//! its adapter directory (restored from the artifact store if pruned) and the run's
//! pinned base model directory (re-verified by content). Nothing is appended.

use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::DType;
use clap::{Args, Subcommand, ValueEnum};
use foundry_events::{BaseModelPinned, Event};
use foundry_ledger::Ledger;
use foundry_projections::{resolve, CheckpointView, ViewKind, ViewRead};
use serde::Serialize;
use std::path::PathBuf;

use crate::context::Context;

/// `ledger adapter …`.
#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Merge a checkpoint's adapter into its run's base model; write a dense model folder.
    Merge(MergeArgs),
}

/// Storage dtype of the merged weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MergeDtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl From<MergeDtype> for DType {
    fn from(d: MergeDtype) -> Self {
        match d {
            MergeDtype::F32 => DType::F32,
            MergeDtype::Bf16 => DType::BF16,
            MergeDtype::F16 => DType::F16,
        }
    }
}

/// Options of `ledger adapter merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The checkpoint (adapter): id or unique prefix.
    checkpoint: String,
    /// Output folder (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Storage dtype of the merged weights.
    #[arg(long, value_enum, default_value_t = MergeDtype::F32)]
    dtype: MergeDtype,
    /// Fold the adapter into the base's original dense weights instead of their NF4 round
    /// trip (the weights training used when the recipe quantizes).
    #[arg(long, conflicts_with = "bnb_4bit")]
    onto_dense: bool,
    /// Write the merged model in the bnb-4bit layout (the recipe's quantized linears back to
    /// NF4), which transformers loads with `load_in_4bit`.
    #[arg(long)]
    bnb_4bit: bool,
}

/// A committed checkpoint resolved to files: its adapter directory and its run's base model.
pub struct ResolvedCheckpoint {
    /// The checkpoint as the views record it.
    pub checkpoint: CheckpointView,
    /// Directory holding the adapter files (verified against the commit).
    pub adapter_dir: PathBuf,
    /// The run's pinned base model.
    pub model: BaseModelPinned,
    /// Directory of the base model (re-verified against the pin).
    pub base_dir: PathBuf,
    /// The linears the run's recipe quantized to NF4 (PEFT `fullmatch` pattern), which the
    /// adapter was trained against; None when the recipe does not quantize.
    pub quantized: Option<String>,
}

/// Resolves a checkpoint id or prefix to its adapter and base model directories.
pub fn resolve_checkpoint(ctx: &Context, prefix: &str) -> Result<ResolvedCheckpoint> {
    let ledger = ctx.ledger()?;
    let views = ctx.views(&ledger)?;
    let id = resolve(&views, ViewKind::Checkpoints, prefix)?;
    let checkpoint = views
        .checkpoint(&id)?
        .ok_or_else(|| anyhow!("checkpoint {id} is not in the views"))?;
    let run = views.run(&checkpoint.run_id)?.ok_or_else(|| {
        anyhow!(
            "run {} of checkpoint {id} is not in the views",
            checkpoint.run_id
        )
    })?;
    let model_id = run
        .model_id
        .ok_or_else(|| anyhow!("run {} records no base model", checkpoint.run_id))?;
    let model = pinned_model(&ledger, &model_id)?;
    let base_dir = foundry_engine::model_dir(&model)?;
    foundry_engine::verify_model(&base_dir, &model)?;
    let adapter_dir = checkpoint_dir(ctx, &checkpoint)?;
    let config = run
        .resolved_config
        .clone()
        .ok_or_else(|| anyhow!("run {} records no recipe", checkpoint.run_id))?;
    let recipe: foundry_recipes::Recipe = serde_json::from_value(config)
        .map_err(|e| anyhow!("run {}: its recipe does not read: {e}", checkpoint.run_id))?;
    let names = foundry_recipes::idefics2_module_names_from_dir(&base_dir)?;
    let quantized = foundry_engine::quantized_pattern(&names, &recipe);
    Ok(ResolvedCheckpoint {
        checkpoint,
        adapter_dir,
        model,
        base_dir,
        quantized,
    })
}

fn pinned_model(ledger: &Ledger, model_id: &str) -> Result<BaseModelPinned> {
    for r in ledger.read_stream(&format!("model/{model_id}"), 1)? {
        if let Event::BaseModelPinned(m) = r.decode_event()? {
            return Ok(m);
        }
    }
    bail!("base model {model_id} is not pinned")
}

/// The checkpoint's directory, with any missing or changed file restored
/// from the artifact store (with `--nats`, fetched into it from the
/// service's artifact bucket first).
fn checkpoint_dir(ctx: &Context, c: &CheckpointView) -> Result<PathBuf> {
    let named: Vec<_> = c
        .files
        .iter()
        .map(|f| (format!("checkpoint file {}", f.path), f.sha256))
        .collect();
    ctx.fetch_artifacts(&named)?;
    Ok(foundry_runner::checkpoint_dir(
        &ctx.home,
        &c.checkpoint_id,
        &c.location,
        &c.files,
    )?)
}

#[derive(Serialize)]
struct MergeOutput<'a> {
    checkpoint_id: &'a str,
    run_id: &'a str,
    model_id: &'a str,
    out: String,
    dtype: &'a str,
    /// `nf4-dequantized` (the weights training used) or `dense` (the pinned weights as they are).
    onto: &'a str,
    /// `bnb-4bit` or `dense`.
    layout: &'a str,
    merged_linears: usize,
    files: Vec<MergedFile<'a>>,
}

#[derive(Serialize)]
struct MergedFile<'a> {
    path: &'a str,
    sha256: &'a str,
    bytes: u64,
}

/// `ledger adapter …`.
pub fn run(ctx: &Context, c: AdapterCommand) -> Result<()> {
    match c {
        AdapterCommand::Merge(a) => merge(ctx, a),
    }
}

fn merge(ctx: &Context, a: MergeArgs) -> Result<()> {
    let r = resolve_checkpoint(ctx, &a.checkpoint)?;
    use foundry_qlora::export::MergeOnto;
    let onto = match (&r.quantized, a.onto_dense) {
        (Some(p), false) => MergeOnto::Quantized(p),
        _ => MergeOnto::Loaded,
    };
    if a.bnb_4bit && onto == MergeOnto::Loaded {
        bail!("--bnb-4bit: the run's recipe quantizes no linear, so there is no 4-bit layout to write");
    }
    let (info, n) = foundry_qlora::export::merge_adapter_dir(
        &r.base_dir,
        &r.adapter_dir,
        &a.out,
        a.dtype.into(),
        onto,
        a.bnb_4bit,
    )
    .with_context(|| format!("merging checkpoint {}", short(&r.checkpoint.checkpoint_id)))?;
    let dtype = match a.dtype {
        MergeDtype::F32 => "f32",
        MergeDtype::Bf16 => "bf16",
        MergeDtype::F16 => "f16",
    };
    let out = MergeOutput {
        checkpoint_id: &r.checkpoint.checkpoint_id,
        run_id: &r.checkpoint.run_id,
        model_id: &r.model.model_id,
        out: info.dir.display().to_string(),
        dtype,
        onto: match onto {
            MergeOnto::Quantized(_) => "nf4-dequantized",
            MergeOnto::Loaded => "dense",
        },
        layout: if a.bnb_4bit { "bnb-4bit" } else { "dense" },
        merged_linears: n,
        files: info
            .files
            .iter()
            .map(|f| MergedFile {
                path: &f.path,
                sha256: &f.sha256,
                bytes: f.bytes,
            })
            .collect(),
    };
    if ctx.json {
        return crate::output::json(&out);
    }
    let onto_text = match onto {
        MergeOnto::Quantized(_) => {
            "its NF4-dequantized weights, what the adapter was trained against (--onto-dense for the pinned dense ones)"
        }
        MergeOnto::Loaded => "its pinned weights as they are",
    };
    println!(
        "merged checkpoint {} (run {}, step {}) into base model {}, onto {onto_text}: {} linears, {}",
        short(out.checkpoint_id),
        short(out.run_id),
        r.checkpoint.step,
        short(out.model_id),
        n,
        if a.bnb_4bit { "bnb-4bit layout" } else { dtype },
    );
    println!("wrote {}", out.out);
    for f in &out.files {
        println!("  {}  {}  {} bytes", short(f.sha256), f.path, f.bytes);
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
