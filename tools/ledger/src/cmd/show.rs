//! `ledger show run|checkpoint|adapter|dataset|recipe|channel <id>`.

use super::travel::{self, TravelArgs};
use crate::context::Context;
use crate::output;
use crate::output::{f4, opt_time, or_dash, short, time};
use anyhow::{anyhow, Result};
use foundry_projections::{
    format_metrics, resolve, CheckpointView, PromotionRef, RunView, ViewKind, ViewRead,
};
use tabled::Tabled;

/// What to show.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A training run.
    Run,
    /// A checkpoint.
    Checkpoint,
    /// An adapter (a checkpoint, seen as a deployable artifact).
    Adapter,
    /// A pinned dataset.
    Dataset,
    /// A declared recipe.
    Recipe,
    /// A promotion channel (staging, production, …).
    Channel,
}

/// Options of `ledger show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// What to show.
    #[arg(value_enum)]
    kind: Kind,
    /// Its id (or a unique prefix); a channel's name.
    id: String,
    #[command(flatten)]
    travel: TravelArgs,
}

impl ShowArgs {
    /// `ledger show KIND ID` as other commands (`recipe show`, `dataset show`) call it.
    pub fn new(kind: Kind, id: String, travel: TravelArgs) -> Self {
        ShowArgs { kind, id, travel }
    }
}

/// Shows one thing.
pub fn run(ctx: &Context, a: ShowArgs) -> Result<()> {
    let (views, bound) = travel::open(ctx, &a.travel)?;
    let v = views.as_ref();
    let heading = travel::as_of(v, bound);
    match a.kind {
        Kind::Run => show_run(ctx, v, &a.id, &heading),
        Kind::Checkpoint => show_checkpoint(ctx, v, &a.id, "checkpoint", &heading),
        Kind::Adapter => show_checkpoint(ctx, v, &a.id, "adapter", &heading),
        Kind::Dataset => show_dataset(ctx, v, &a.id, &heading),
        Kind::Recipe => show_recipe(ctx, v, &a.id, &heading),
        Kind::Channel => show_channel(ctx, v, &a.id, &heading),
    }
}

fn section(title: &str) {
    println!("\n{title}");
}

#[derive(Tabled)]
struct CheckpointRow {
    step: u64,
    time: String,
    checkpoint: String,
    #[tabled(rename = "adapter sha256")]
    sha256: String,
    loss: String,
    evals: String,
    serving: String,
}

fn checkpoint_row(c: &CheckpointView) -> CheckpointRow {
    let adapter = c
        .files
        .iter()
        .find(|f| f.path.ends_with("adapter_model.safetensors"))
        .or(c.files.first());
    CheckpointRow {
        step: c.step,
        time: time(c.committed.at),
        checkpoint: short(&c.checkpoint_id),
        sha256: adapter
            .map(|f| f.sha256.short())
            .unwrap_or_else(|| "-".into()),
        loss: f4(c.loss),
        evals: if c.evals.is_empty() {
            "-".into()
        } else {
            c.evals
                .iter()
                .map(|e| format!("{}: {}", e.eval_id, format_metrics(&e.metrics)))
                .collect::<Vec<_>>()
                .join("; ")
        },
        serving: if c.channels.is_empty() {
            "-".into()
        } else {
            c.channels.join(", ")
        },
    }
}

#[derive(Tabled)]
struct PromotionRow {
    seq: u64,
    time: String,
    channel: String,
    outcome: String,
    checkpoint: String,
    by: String,
    reason: String,
}

fn promotion_rows(ps: &[PromotionRef]) -> Vec<PromotionRow> {
    ps.iter()
        .map(|p| PromotionRow {
            seq: p.event.seq,
            time: time(p.event.at),
            channel: p.channel.clone(),
            outcome: p.outcome.clone(),
            checkpoint: short(&p.checkpoint_id),
            by: p.event.actor.clone(),
            reason: p.reason.clone(),
        })
        .collect()
}

fn label(v: &dyn ViewRead, kind: ViewKind, id: &Option<String>) -> Result<String> {
    let Some(id) = id else { return Ok("-".into()) };
    Ok(match kind {
        ViewKind::Recipes => match v.recipe(id)? {
            Some(r) => format!("{} \"{}\" ({})", short(id), r.name, r.source),
            None => format!("{} (not declared)", short(id)),
        },
        ViewKind::Datasets => match v.dataset(id)? {
            Some(d) => format!("{} {} ({} shards)", short(id), d.source, d.shards.len()),
            None => format!("{} (not pinned)", short(id)),
        },
        ViewKind::Models => match v.model(id)? {
            Some(m) => format!(
                "{} {}{} ({})",
                short(id),
                m.source,
                m.resolved_revision
                    .map(|r| format!(" @ {}", short(&r)))
                    .unwrap_or_default(),
                m.quantization
            ),
            None => format!("{} (not pinned)", short(id)),
        },
        _ => id.clone(),
    })
}

fn show_run(ctx: &Context, v: &dyn ViewRead, prefix: &str, heading: &str) -> Result<()> {
    let id = resolve(v, ViewKind::Runs, prefix)?;
    let r = v.run(&id)?.ok_or_else(|| anyhow!("run {id} vanished"))?;
    let checkpoints: Vec<CheckpointView> = r
        .checkpoints
        .iter()
        .filter_map(|c| v.checkpoint(c).ok().flatten())
        .collect();
    if ctx.json {
        return output::json(&serde_json::json!({
            "as_of_seq": v.as_of(),
            "run": r,
            "checkpoints": checkpoints,
        }));
    }
    println!("run {id} ({heading})");
    run_header(v, &r)?;
    section("resolved config");
    let mut cfg = Vec::new();
    if let Some(c) = &r.resolved_config {
        output::flatten("", c, &mut cfg);
    }
    if cfg.is_empty() {
        println!("(not started yet)");
    } else {
        output::fields(cfg);
    }
    section("metrics");
    let m = &r.metrics;
    let sv = |x: Option<foundry_projections::StepValue>| {
        x.map(|s| format!("{:.4} (step {})", s.value, s.step))
            .unwrap_or_else(|| "-".into())
    };
    output::fields([
        ("first loss", sv(m.first_loss)),
        ("last loss", sv(m.last_loss)),
        ("best loss", sv(m.best_loss)),
        (
            "tokens/s",
            match (m.last_tokens_per_s, m.mean_tokens_per_s, m.max_tokens_per_s) {
                (Some(l), Some(a), Some(x)) => format!("last {l:.1}, mean {a:.1}, max {x:.1}"),
                _ => "-".into(),
            },
        ),
        ("tokens", m.tokens.to_string()),
        ("points logged", m.points.to_string()),
    ]);
    section(&format!("checkpoints ({})", checkpoints.len()));
    if checkpoints.is_empty() {
        println!("(none)");
    } else {
        output::table(checkpoints.iter().map(checkpoint_row));
    }
    section(&format!("promotions ({})", r.promotions.len()));
    if r.promotions.is_empty() {
        println!("(none)");
    } else {
        output::table(promotion_rows(&r.promotions));
    }
    println!(
        "\n{} events, seq {}..={}",
        r.event_count, r.first_seq, r.last_seq
    );
    Ok(())
}

fn run_header(v: &dyn ViewRead, r: &RunView) -> Result<()> {
    let mut rows: Vec<(&str, String)> = vec![
        ("status", r.status.clone()),
        ("recipe", label(v, ViewKind::Recipes, &r.recipe_id)?),
        ("dataset", label(v, ViewKind::Datasets, &r.dataset_id)?),
        ("base model", label(v, ViewKind::Models, &r.model_id)?),
        ("backend", or_dash(r.backend.clone())),
        (
            "runner",
            match (&r.runner_id, &r.host) {
                (Some(id), Some(h)) => format!("{id} on {} (attempt {})", h.hostname, r.attempt),
                (Some(id), None) => id.clone(),
                _ => "-".into(),
            },
        ),
        (
            "device",
            r.device
                .as_ref()
                .map(|d| format!("{} {} ({})", d.kind, d.name, d.dtype))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "code",
            r.code
                .as_ref()
                .map(|c| {
                    format!(
                        "{}{}{}{}",
                        c.version,
                        c.git_commit
                            .as_ref()
                            .map(|g| format!(" @ {g}"))
                            .unwrap_or_default(),
                        if c.dirty { " (dirty)" } else { "" },
                        c.executable_sha256
                            .as_ref()
                            .map(|x| format!(", executable sha256 {}", x.short()))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        ("requested", opt_time(r.requested.as_ref().map(|e| e.at))),
        ("started", opt_time(r.started_at)),
        ("ended", opt_time(r.ended_at)),
        (
            "queued",
            match (&r.requested, r.started_at) {
                (Some(q), Some(s)) => output::duration_ms(s.unix_millis() - q.at.unix_millis()),
                _ => "-".into(),
            },
        ),
        (
            "wall time",
            output::wall_ms(r)
                .map(output::duration_ms)
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "reported duration",
            r.duration_ms
                .map(|d| output::duration_ms(d as i64))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "steps",
            match (r.last_step, r.total_steps) {
                (Some(s), Some(t)) => format!("{s} of {t}"),
                (s, _) => or_dash(s),
            },
        ),
    ];
    for a in &r.failed_attempts {
        rows.push((
            "attempt died",
            format!(
                "attempt {} on {}: {} (step {})",
                a.attempt,
                a.runner_id,
                a.reason,
                or_dash(a.step)
            ),
        ));
    }
    if let Some(f) = &r.failure {
        rows.push((
            "failure",
            format!(
                "{} (step {}, {}, at {})",
                f.reason,
                or_dash(f.step),
                if f.retryable {
                    "retryable"
                } else {
                    "not retryable"
                },
                time(f.at)
            ),
        ));
    }
    for x in &r.resumes {
        rows.push((
            "resumed",
            format!(
                "from {} at step {} by {} at {}: {}",
                short(&x.checkpoint_id),
                x.step,
                x.runner_id,
                time(x.at),
                x.reason
            ),
        ));
    }
    if let Some(c) = &r.cancel_reason {
        rows.push(("cancelled", c.clone()));
    }
    if let Some(m) = &r.modal {
        rows.push((
            "modal",
            format!(
                "{} {} on {}: {}{}",
                m.app_id,
                m.function_call_id,
                m.gpu,
                m.state,
                m.exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default()
            ),
        ));
    }
    output::fields(rows);
    Ok(())
}

#[derive(Tabled)]
struct FileRow {
    path: String,
    sha256: String,
    bytes: u64,
}

#[derive(Tabled)]
struct EvalRow {
    eval: String,
    split: String,
    examples: u64,
    metrics: String,
    seq: u64,
    time: String,
}

fn show_checkpoint(
    ctx: &Context,
    v: &dyn ViewRead,
    prefix: &str,
    noun: &str,
    heading: &str,
) -> Result<()> {
    let id = resolve(v, ViewKind::Checkpoints, prefix)?;
    let c = v
        .checkpoint(&id)?
        .ok_or_else(|| anyhow!("{noun} {id} vanished"))?;
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": v.as_of(), noun: c }));
    }
    println!("{noun} {id} ({heading})");
    output::fields([
        ("run", c.run_id.clone()),
        ("step", c.step.to_string()),
        ("loss", f4(c.loss)),
        ("location", c.location.clone()),
        (
            "committed",
            format!(
                "{} by {} (seq {})",
                time(c.committed.at),
                c.committed.actor,
                c.committed.seq
            ),
        ),
        (
            "serving",
            if c.channels.is_empty() {
                "-".into()
            } else {
                c.channels.join(", ")
            },
        ),
    ]);
    section("files");
    output::table(c.files.iter().map(|f| FileRow {
        path: f.path.clone(),
        sha256: f.sha256.to_hex(),
        bytes: f.bytes,
    }));
    section(&format!("evals ({})", c.evals.len()));
    if c.evals.is_empty() {
        println!("(none)");
    } else {
        output::table(c.evals.iter().map(|e| EvalRow {
            eval: e.eval_id.clone(),
            split: e.split.clone(),
            examples: e.examples,
            metrics: format_metrics(&e.metrics),
            seq: e.event.seq,
            time: time(e.event.at),
        }));
    }
    section(&format!("promotions ({})", c.promotions.len()));
    if c.promotions.is_empty() {
        println!("(none)");
    } else {
        output::table(promotion_rows(&c.promotions));
    }
    Ok(())
}

#[derive(Tabled)]
struct ShardRow {
    split: String,
    path: String,
    sha256: String,
    rows: u64,
    bytes: u64,
}

fn show_dataset(ctx: &Context, v: &dyn ViewRead, prefix: &str, heading: &str) -> Result<()> {
    let id = resolve(v, ViewKind::Datasets, prefix)?;
    let d = v
        .dataset(&id)?
        .ok_or_else(|| anyhow!("dataset {id} vanished"))?;
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": v.as_of(), "dataset": d }));
    }
    println!("dataset {id} ({heading})");
    output::fields([
        ("source", d.source.clone()),
        ("revision", or_dash(d.resolved_revision.clone())),
        (
            "pinned",
            format!(
                "{} by {} (seq {})",
                time(d.pinned.at),
                d.pinned.actor,
                d.pinned.seq
            ),
        ),
        ("runs", d.runs.len().to_string()),
        ("evals", d.evals.len().to_string()),
    ]);
    section("shards");
    output::table(d.shards.iter().map(|s| ShardRow {
        split: s.split.clone(),
        path: s.path.clone(),
        sha256: s.sha256.to_hex(),
        rows: s.rows,
        bytes: s.bytes,
    }));
    Ok(())
}

#[derive(Tabled)]
struct RecipeRunRow {
    run: String,
    status: String,
    step: String,
    #[tabled(rename = "best loss")]
    best_loss: String,
}

fn show_recipe(ctx: &Context, v: &dyn ViewRead, prefix: &str, heading: &str) -> Result<()> {
    let id = resolve(v, ViewKind::Recipes, prefix)?;
    let r = v
        .recipe(&id)?
        .ok_or_else(|| anyhow!("recipe {id} vanished"))?;
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": v.as_of(), "recipe": r }));
    }
    println!("recipe {id} ({heading})");
    output::fields([
        ("name", r.name.clone()),
        ("source", r.source.clone()),
        (
            "declared",
            format!(
                "{} by {} (seq {})",
                time(r.declared.at),
                r.declared.actor,
                r.declared.seq
            ),
        ),
        ("declarations", r.declarations.to_string()),
    ]);
    section("resolved config");
    let mut cfg = Vec::new();
    output::flatten("", &r.resolved_config, &mut cfg);
    cfg.extend(
        r.env_overrides
            .iter()
            .map(|(k, v)| (format!("env {k}"), v.clone())),
    );
    output::fields(cfg);
    section(&format!("runs ({})", r.runs.len()));
    let rows: Vec<RecipeRunRow> = r
        .runs
        .iter()
        .filter_map(|id| v.run(id).ok().flatten())
        .map(|x| RecipeRunRow {
            step: or_dash(x.last_step),
            best_loss: f4(x.metrics.best_loss.map(|b| b.value)),
            status: x.status,
            run: x.run_id,
        })
        .collect();
    if rows.is_empty() {
        println!("(none)");
    } else {
        output::table(rows);
    }
    Ok(())
}

#[derive(Tabled)]
struct EvidenceRow {
    seq: String,
    #[tabled(rename = "type")]
    event_type: String,
    time: String,
    event_id: String,
    summary: String,
}

#[derive(Tabled)]
struct HistoryRow {
    seq: u64,
    time: String,
    action: String,
    checkpoint: String,
    previous: String,
    by: String,
    reason: String,
}

fn show_channel(ctx: &Context, v: &dyn ViewRead, prefix: &str, heading: &str) -> Result<()> {
    let name = resolve(v, ViewKind::Channels, prefix)?;
    let c = v
        .channel(&name)?
        .ok_or_else(|| anyhow!("channel {name} vanished"))?;
    let why = c.current_entry.and_then(|i| c.history.get(i)).cloned();
    if ctx.json {
        return output::json(&serde_json::json!({
            "as_of_seq": v.as_of(),
            "channel": c,
            "current": why,
        }));
    }
    println!("channel {name} ({heading})");
    match &why {
        Some(w) => {
            output::fields([
                ("current adapter", or_dash(c.current_checkpoint_id.clone())),
                (
                    "since",
                    format!("{} (seq {})", time(w.event.at), w.event.seq),
                ),
                ("by", w.event.actor.clone()),
                ("how", w.action.replace('_', " ")),
                ("why", w.reason.clone()),
                ("replaced", or_dash(w.previous_checkpoint_id.clone())),
            ]);
            if !w.gates.is_empty() {
                section("gates");
                output::table(w.gates.iter().map(|g| output::Field {
                    name: g.gate.clone(),
                    value: format!(
                        "{} ({})",
                        if g.passed { "passed" } else { "FAILED" },
                        g.actual.map(|a| format!("{a:.4}")).unwrap_or_else(|| "no value".into())
                    ),
                }));
            }
            section(&format!("evidence ({})", w.evidence.len()));
            if w.evidence.is_empty() {
                println!("(none cited)");
            } else {
                output::table(w.evidence.iter().map(|e| EvidenceRow {
                    seq: or_dash(e.seq),
                    event_type: e.event_type.clone(),
                    time: opt_time(e.at),
                    event_id: e.event_id.clone(),
                    summary: e.summary.clone(),
                }));
            }
        }
        None => println!("current adapter: - (nothing promoted yet)"),
    }
    section(&format!("history ({})", c.history.len()));
    output::table(c.history.iter().map(|h| {
        HistoryRow {
            seq: h.event.seq,
            time: time(h.event.at),
            action: h.action.clone(),
            checkpoint: h
                .checkpoint_id
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            previous: h
                .previous_checkpoint_id
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            by: h.event.actor.clone(),
            reason: h.reason.clone(),
        }
    }));
    Ok(())
}
