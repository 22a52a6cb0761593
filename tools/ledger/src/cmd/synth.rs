//! `ledger synth`: deterministic synthetic financial documents in the
//! dataset format (see recipes/README.md).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use foundry_synth::{generate, DocType, Format, Profile, SynthConfig};
use tabled::Tabled;

use crate::context::Context;
use crate::output;

/// Options of `ledger synth`.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output dir (shards under DIR/data).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of documents.
    #[arg(long)]
    count: u64,
    /// Seed: the same seed and options give identical bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Document types, comma-separated (default: all in standard, invoice in tiny).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Layout families, comma-separated (default: every family of the types).
    #[arg(long, value_delimiter = ',')]
    layouts: Vec<String>,
    /// `standard` (full pages) or `tiny` (small clean cards, few fields).
    #[arg(long, default_value = "standard")]
    profile: String,
    /// `jsonl` (PNG files beside JSONL shards) or `parquet` (image bytes inline).
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Target fields to keep, comma-separated (writes foundry_schema.json).
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Layout families whose documents all go to the test split (and only they).
    #[arg(long, value_delimiter = ',')]
    holdout: Vec<String>,
    /// Page width in pixels (default per profile).
    #[arg(long)]
    width: Option<u32>,
    /// Page height in pixels (default per profile).
    #[arg(long)]
    height: Option<u32>,
    /// Base font size in pixels (default per profile).
    #[arg(long)]
    font_px: Option<f32>,
    /// Noise level 0..=1 (default per profile).
    #[arg(long)]
    noise: Option<f32>,
    /// Maximum skew in degrees (default per profile).
    #[arg(long)]
    skew: Option<f32>,
    /// Rows per shard.
    #[arg(long)]
    shard_rows: Option<u64>,
    /// Also write each page's transcription as `text` (JSON Lines only): the
    /// reading task `tools/pretrain` trains the demo's base model on.
    #[arg(long)]
    with_text: bool,
    /// Tiny profile: arrange every card at random (order, labels or none,
    /// label placement, alignment, weight, position) instead of by its layout
    /// family; rows name their layout `<type>-free`. Held-out families
    /// (`--holdout`) keep their own arrangement: they are the test.
    #[arg(long)]
    free_arrangement: bool,
}

#[derive(Tabled)]
struct SplitRow {
    split: String,
    documents: u64,
}

/// Builds the config from the options.
fn config(a: &SynthArgs) -> Result<SynthConfig> {
    let mut c = SynthConfig::new(Profile::parse(&a.profile)?, a.seed, a.count);
    if !a.types.is_empty() {
        c.types = a
            .types
            .iter()
            .map(|t| DocType::parse(t))
            .collect::<foundry_synth::Result<_>>()?;
    }
    c.layouts = a.layouts.clone();
    c.holdout_layouts = a.holdout.clone();
    if !a.fields.is_empty() {
        c.fields = Some(a.fields.clone());
    }
    c.format = match a.format.as_str() {
        "jsonl" => Format::Jsonl,
        "parquet" => Format::Parquet,
        f => anyhow::bail!("unknown format {f:?} (known: jsonl, parquet)"),
    };
    c.width = a.width.unwrap_or(c.width);
    c.height = a.height.unwrap_or(c.height);
    c.font_px = a.font_px.unwrap_or(c.font_px);
    c.noise = a.noise.unwrap_or(c.noise);
    c.max_skew_deg = a.skew.unwrap_or(c.max_skew_deg);
    c.shard_rows = a.shard_rows.unwrap_or(c.shard_rows);
    if a.with_text && c.format != Format::Jsonl {
        anyhow::bail!("--with-text: only the jsonl format carries the transcription");
    }
    c.with_text = a.with_text;
    c.free_arrangement = a.free_arrangement;
    c.validate()?;
    Ok(c)
}

/// Writes the documents and prints a summary.
pub fn run(ctx: &Context, a: SynthArgs) -> Result<()> {
    let cfg = config(&a)?;
    let t = Instant::now();
    let s = generate(&cfg, &a.out)?;
    let secs = t.elapsed().as_secs_f64();
    if ctx.json {
        return output::json(&serde_json::json!({
            "out": a.out,
            "config": cfg,
            "summary": s,
            "seconds": secs,
        }));
    }
    println!(
        "wrote {} documents to {} in {secs:.1} s ({:.0} docs/s)",
        s.documents,
        a.out.display(),
        s.documents as f64 / secs.max(1e-9)
    );
    output::table(s.splits.iter().map(|(k, v)| SplitRow {
        split: k.clone(),
        documents: *v,
    }));
    Ok(())
}
