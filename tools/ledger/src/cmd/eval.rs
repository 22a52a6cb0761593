//! `ledger eval <checkpoint|base>`: score a checkpoint (or the base model) on
//! a pinned split; appends EvalRequested, lets the evaluator score it here,
//! and prints the report.

use anyhow::{anyhow, bail, Result};
use foundry_events::{EvalRequested, EvalScored, Event};
use foundry_ledger::{AppendRequest, NewEvent};
use foundry_projections::{resolve, ViewKind};
use tabled::Tabled;

use super::embedded::{self, Which};
use crate::context::Context;
use crate::output;

/// Options of `ledger eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint id (or unique prefix), or `base` for the base model alone.
    target: String,
    /// The split to score.
    #[arg(long, default_value = "test")]
    split: String,
    /// Score at most this many examples.
    #[arg(long)]
    limit: Option<u64>,
    /// With `base`: the pinned base model (id or prefix).
    #[arg(long)]
    model: Option<String>,
    /// The pinned dataset (id or prefix) to score on: required with `base`; for a checkpoint,
    /// its run's dataset unless given.
    #[arg(long)]
    dataset: Option<String>,
}

#[derive(Tabled)]
struct Row {
    metric: String,
    value: String,
    #[tabled(rename = "95% CI")]
    ci: String,
}

/// Runs `ledger eval`.
pub fn run(ctx: &Context, a: EvalArgs) -> Result<()> {
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let ledger = ctx.ledger()?;
    let views = ctx.views(&ledger)?;
    let request = if a.target == "base" {
        let model = a
            .model
            .as_deref()
            .ok_or_else(|| anyhow!("eval base needs --model ID"))?;
        let dataset = a
            .dataset
            .as_deref()
            .ok_or_else(|| anyhow!("eval base needs --dataset ID"))?;
        EvalRequested {
            eval_id: uuid::Uuid::now_v7().simple().to_string(),
            checkpoint_id: None,
            run_id: None,
            model_id: resolve(&views, ViewKind::Models, model)?,
            dataset_id: resolve(&views, ViewKind::Datasets, dataset)?,
            split: a.split.clone(),
            limit: a.limit,
        }
    } else {
        if a.model.is_some() {
            bail!(
                "--model applies to `eval base`; a checkpoint is scored on the base model its run trained on"
            );
        }
        let checkpoint_id = resolve(&views, ViewKind::Checkpoints, &a.target)?;
        let c = foundry_projections::ViewRead::checkpoint(&views, &checkpoint_id)?
            .ok_or_else(|| anyhow!("checkpoint {checkpoint_id} is not in the views"))?;
        let run = foundry_projections::ViewRead::run(&views, &c.run_id)?
            .ok_or_else(|| anyhow!("run {} of checkpoint {checkpoint_id} is unknown", c.run_id))?;
        EvalRequested {
            eval_id: uuid::Uuid::now_v7().simple().to_string(),
            checkpoint_id: Some(checkpoint_id),
            run_id: Some(c.run_id.clone()),
            model_id: run.model_id.clone().unwrap_or_default(),
            // Another pinned dataset when asked for; the run's own otherwise.
            dataset_id: match a.dataset.as_deref() {
                Some(d) => resolve(&views, ViewKind::Datasets, d)?,
                None => run.dataset_id.clone().unwrap_or_default(),
            },
            split: a.split.clone(),
            limit: a.limit,
        }
    };
    // A split the dataset does not have could never be scored: say so now
    // rather than leave the request to fail in an evaluator.
    if let Some(ds) = foundry_projections::ViewRead::dataset(&views, &request.dataset_id)? {
        if !ds.splits.contains_key(&request.split) {
            bail!(
                "dataset {} has no split {:?} (it has: {})",
                &request.dataset_id[..request.dataset_id.len().min(12)],
                request.split,
                ds.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let eval_id = request.eval_id.clone();
    ctx.append(&ledger, AppendRequest::new(vec![NewEvent::new(request)]))?;
    let stream = format!("eval/{eval_id}");
    embedded::drive_until(ctx, &ledger, Which::JUDGES, |l| {
        Ok(l.read_stream(&stream, 1)?
            .iter()
            .any(|r| r.event_type == "EvalScored"))
    })?;
    let scored = ledger
        .read_stream(&format!("eval/{eval_id}"), 1)?
        .into_iter()
        .find_map(|r| match r.decode_event() {
            Ok(Event::EvalScored(s)) => Some((r.seq, s)),
            _ => None,
        });
    let Some((seq, s)) = scored else {
        bail!("eval {eval_id} was not scored (see the runner log above)");
    };
    print_report(ctx, seq, &s)
}

fn fmt(v: f64) -> String {
    format!("{v:.4}")
}

/// Prints an EvalScored as a table (or JSON).
pub fn print_report(ctx: &Context, seq: u64, s: &EvalScored) -> Result<()> {
    if ctx.json {
        return output::json(&serde_json::json!({"seq": seq, "eval": s}));
    }
    println!(
        "eval {} of {} on {} ({} examples), seq {seq}",
        s.eval_id,
        s.checkpoint_id.as_deref().unwrap_or("the base model"),
        s.split,
        s.examples
    );
    let rows: Vec<Row> = s
        .metrics
        .iter()
        .map(|(k, m)| Row {
            metric: k.clone(),
            value: fmt(m.value),
            ci: match (m.ci_low, m.ci_high) {
                (Some(l), Some(h)) => format!("[{}, {}]", fmt(l), fmt(h)),
                _ => "-".into(),
            },
        })
        .collect();
    output::table(rows);
    for (slice, metrics) in &s.breakdown {
        if let Some(m) = metrics.get("field_exact_match") {
            println!("  {slice}: field_exact_match {}", fmt(m.value));
        }
    }
    println!(
        "latency {:.1} ms/doc, {:.2} docs/s",
        s.latency_ms_mean, s.throughput_docs_per_s
    );
    Ok(())
}
