//! `ledger model pin SOURCE` and `ledger model show ID`.

use anyhow::{anyhow, Result};
use foundry_datasets::pin_model;
use foundry_ledger::{AppendRequest, NewEvent};
use foundry_projections::{resolve, ViewKind};
use tabled::Tabled;

use super::dataset::HubArgs;
use super::travel::{self, TravelArgs};
use crate::context::Context;
use crate::output;
use crate::output::{or_dash, time};

/// `ledger model …`.
#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Hash a base model's config, tokenizer, processor and weights; record BaseModelPinned.
    Pin {
        /// A local model dir or hf://ORG/NAME@REVISION.
        source: String,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Show a pinned base model (id or unique prefix).
    Show {
        /// Model id or unique prefix.
        id: String,
        #[command(flatten)]
        travel: TravelArgs,
    },
}

#[derive(Tabled)]
struct FileRow {
    path: String,
    sha256: String,
    bytes: u64,
}

/// Runs a model subcommand.
pub fn run(ctx: &Context, c: ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Pin { source, hub } => pin(ctx, &source, &hub),
        ModelCommand::Show { id, travel } => show(ctx, &id, &travel),
    }
}

fn pin(ctx: &Context, source: &str, hub: &HubArgs) -> Result<()> {
    let p = pin_model(source, &hub.options())?;
    let ledger = ctx.ledger()?;
    let out = ctx.append(
        &ledger,
        AppendRequest::new(vec![NewEvent::new(p.to_event())]).idempotent(p.model_id.clone()),
    )?;
    let seq = out.events.first().map(|e| e.seq).unwrap_or(0);
    if ctx.json {
        return output::json(&serde_json::json!({
            "model_id": p.model_id,
            "seq": seq,
            "duplicate": out.duplicate,
            "pin": p,
        }));
    }
    println!("{}", p.model_id);
    if out.duplicate {
        eprintln!("model was already pinned (seq {seq})");
    }
    output::fields([
        ("architecture", p.architecture.clone()),
        ("revision", or_dash(p.resolved_revision.clone())),
        ("files", p.files.len().to_string()),
        ("parameters", or_dash(p.parameters)),
        ("quantization", p.quantization.clone()),
    ]);
    Ok(())
}

fn show(ctx: &Context, prefix: &str, t: &TravelArgs) -> Result<()> {
    let (views, bound) = travel::open(ctx, t)?;
    let v = views.as_ref();
    let id = resolve(v, ViewKind::Models, prefix)?;
    let m = v
        .model(&id)?
        .ok_or_else(|| anyhow!("model {id} vanished"))?;
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": v.as_of(), "model": m }));
    }
    println!("model {id} ({})", travel::as_of(v, bound));
    output::fields([
        ("source", m.source.clone()),
        ("revision", or_dash(m.resolved_revision.clone())),
        ("architecture", m.architecture.clone()),
        ("parameters", or_dash(m.parameters)),
        ("quantization", m.quantization.clone()),
        (
            "pinned",
            format!(
                "{} by {} (seq {})",
                time(m.pinned.at),
                m.pinned.actor,
                m.pinned.seq
            ),
        ),
        ("runs", m.runs.len().to_string()),
    ]);
    println!("\nfiles");
    output::table(m.files.iter().map(|f| FileRow {
        path: f.path.clone(),
        sha256: f.sha256.to_hex(),
        bytes: f.bytes,
    }));
    Ok(())
}
