//! `ledger run start|cancel`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use foundry_events::{Event, RunCancelled, RunRequested};
use foundry_ledger::{AppendRequest, Ledger, NewEvent};
use foundry_projections::{resolve, ViewKind};
use indicatif::{ProgressBar, ProgressStyle};

use super::embedded::{self, Which};
use crate::context::Context;

/// `ledger run …`.
#[derive(clap::Subcommand)]
pub enum RunCommand {
    /// Request a training run; in embedded mode, train it here in the foreground.
    Start(StartArgs),
    /// Cancel a run; its runner stops at the next step.
    Cancel(CancelArgs),
}

/// Options of `ledger run start`.
#[derive(clap::Args)]
pub struct StartArgs {
    /// The declared recipe (id or unique prefix).
    #[arg(long)]
    recipe: String,
    /// The pinned dataset (id or unique prefix).
    #[arg(long)]
    dataset: String,
    /// The pinned base model (id or unique prefix).
    #[arg(long)]
    model: String,
    /// Only record the request; `ledger up` (or a remote runner) does the work.
    #[arg(long)]
    detach: bool,
    /// No progress bar (for logs and tests).
    #[arg(long)]
    quiet: bool,
    /// Validate recipe, dataset, base model and device, plan the run and take
    /// two optimizer steps on a few examples; record nothing.
    #[arg(long, conflicts_with = "detach")]
    dry_run: bool,
}

/// Options of `ledger run cancel`.
#[derive(clap::Args)]
pub struct CancelArgs {
    /// The run (id or unique prefix).
    run: String,
    /// Why.
    #[arg(long, default_value = "cancelled by request")]
    reason: String,
}

/// Runs a `ledger run` command.
pub fn run(ctx: &Context, c: RunCommand) -> Result<()> {
    match c {
        RunCommand::Start(a) => start(ctx, a),
        RunCommand::Cancel(a) => cancel(ctx, a),
    }
}

fn start(ctx: &Context, a: StartArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let (recipe_id, dataset_id, model_id) = {
        let v = ctx.views(&ledger)?;
        (
            resolve(&v, ViewKind::Recipes, &a.recipe)?,
            resolve(&v, ViewKind::Datasets, &a.dataset)?,
            resolve(&v, ViewKind::Models, &a.model)?,
        )
    };
    let recipe = foundry_runner_lookup_recipe(&ledger, &recipe_id)?;
    if a.dry_run {
        if recipe["backend"]["kind"].as_str() == Some("modal") {
            return modal_dry_run(ctx, &ledger, &recipe_id, &dataset_id, &model_id);
        }
        return dry_run(ctx, &ledger, &recipe_id, &dataset_id, &model_id);
    }
    let backend = recipe["backend"]["kind"]
        .as_str()
        .unwrap_or("local")
        .to_string();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let req = RunRequested {
        run_id: run_id.clone(),
        recipe_id,
        dataset_id,
        model_id,
        backend: backend.clone(),
        overrides: BTreeMap::new(),
    };
    let requested = ctx
        .append(&ledger, AppendRequest::new(vec![NewEvent::new(req)]))?
        .events
        .remove(0)
        .seq;
    if a.detach {
        if ctx.json {
            crate::output::json(&serde_json::json!({"run_id": run_id, "detached": true}))?;
        } else {
            println!("run {run_id} requested (backend {backend}); `ledger up` trains it");
        }
        return Ok(());
    }
    if !ctx.json {
        if ctx.remote.is_some() {
            println!(
                "run {run_id} requested over NATS; following it (runners on the bus do the work)"
            );
        } else if backend == "modal" {
            println!("run {run_id} requested; submitting it to Modal and following it here");
        } else {
            println!("run {run_id} requested; training here (embedded)");
        }
    }
    let started = Instant::now();
    let rt = embedded::runtime()?;
    let status = if ctx.remote.is_some() {
        // Follow the replica until the run ends; the bar tails it.
        let progress = rt.spawn(follow_task(
            &ledger,
            requested,
            &run_id,
            a.quiet || ctx.json,
        ));
        let stream = format!("run/{run_id}");
        let ended = ctx.wait_remote(&ledger, std::time::Duration::MAX, |l| {
            Ok(l.read_stream(&stream, 1)?.iter().any(|r| {
                matches!(
                    r.event_type.as_str(),
                    "RunCompleted" | "RunFailed" | "RunCancelled"
                )
            }))
        });
        progress.abort();
        ended.map(|_| ())
    } else {
        rt.block_on(async {
        let e = embedded::start(ctx, &ledger, Which::ALL)?;
        let progress = follow(&ledger, requested, &run_id, a.quiet || ctx.json);
        let result = tokio::select! {
            r = e.host.wait_idle(e.client.as_ref()) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the run resumes from its last checkpoint with `ledger up`")),
        };
        progress.abort();
        e.host.shutdown().await;
        result
    })
    };
    status?;
    let views = ctx.views(&ledger)?;
    let view = foundry_projections::ViewRead::run(&views, &run_id)?
        .ok_or_else(|| anyhow!("run {run_id} vanished from the views"))?;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "run_id": run_id,
            "status": view.status,
            "elapsed_s": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        println!(
            "run {run_id}: {} in {:.1}s",
            view.status,
            started.elapsed().as_secs_f64()
        );
    }
    if view.status == "failed" {
        let reason = view
            .failure
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_default();
        bail!("run {run_id} failed: {reason}");
    }
    Ok(())
}

/// The recorded resolved config of a declared recipe.
fn foundry_runner_lookup_recipe(ledger: &Ledger, recipe_id: &str) -> Result<serde_json::Value> {
    for r in ledger.read_stream(&format!("recipe/{recipe_id}"), 1)? {
        if let Event::RecipeDeclared(d) = r.decode_event()? {
            return Ok(d.resolved_config);
        }
    }
    bail!("recipe {recipe_id} is not declared")
}

/// The first event of `stream`, decoded.
fn first_event(ledger: &Ledger, stream: &str) -> Result<Event> {
    let rec = ledger
        .read_stream(stream, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{stream} has no events"))?;
    Ok(rec.decode_event()?)
}

/// The declared recipe and the pinned dataset and model a run would use.
fn pinned_inputs(
    ledger: &Ledger,
    recipe_id: &str,
    dataset_id: &str,
    model_id: &str,
) -> Result<(
    foundry_events::RecipeDeclared,
    foundry_events::DatasetPinned,
    foundry_events::BaseModelPinned,
)> {
    let Event::RecipeDeclared(recipe) = first_event(ledger, &format!("recipe/{recipe_id}"))? else {
        bail!("recipe/{recipe_id} does not start with RecipeDeclared");
    };
    let Event::DatasetPinned(dataset) = first_event(ledger, &format!("dataset/{dataset_id}"))?
    else {
        bail!("dataset/{dataset_id} does not start with DatasetPinned");
    };
    let Event::BaseModelPinned(model) = first_event(ledger, &format!("model/{model_id}"))? else {
        bail!("model/{model_id} does not start with BaseModelPinned");
    };
    Ok((recipe, dataset, model))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `run start --dry-run`: everything a run would check, two real steps, no events.
fn dry_run(
    ctx: &Context,
    ledger: &Ledger,
    recipe_id: &str,
    dataset_id: &str,
    model_id: &str,
) -> Result<()> {
    let (recipe, dataset, model) = pinned_inputs(ledger, recipe_id, dataset_id, model_id)?;
    let out = tempfile::tempdir()?;
    let job = foundry_runner::TrainJob {
        run_id: "dry-run".into(),
        attempt: 1,
        recipe_id: recipe_id.to_string(),
        config: recipe.resolved_config,
        dataset,
        model,
        out_dir: out.path().to_path_buf(),
        resume_from: None,
    };
    let started = Instant::now();
    let d = foundry_engine::dry_run(&job, 64)?;
    let p = &d.plan;
    let m = &p.memory;
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "recipe_id": recipe_id,
            "dataset_id": dataset_id,
            "model_id": model_id,
            "device": d.device,
            "plan": p,
            "sampled_examples": d.sampled,
            "dry_run": d.report,
            "elapsed_s": started.elapsed().as_secs_f64(),
        }));
    }
    println!("dry run: nothing was recorded");
    crate::output::fields([
        (
            "device",
            format!("{} {} ({})", d.device.kind, d.device.name, d.device.dtype),
        ),
        ("optimizer steps", p.optimizer_steps.to_string()),
        (
            "examples drawn",
            format!("{} ({:.2} epochs)", p.examples, p.epochs),
        ),
        (
            "tokens",
            format!(
                "{} ({} in the loss; from {} sampled examples)",
                p.tokens, p.answer_tokens, d.sampled
            ),
        ),
        ("NF4 linears", p.nf4_linears.to_string()),
        (
            "LoRA modules",
            format!(
                "{} ({} trainable parameters)",
                p.lora_modules, p.lora_params
            ),
        ),
        ("base parameters", p.base_params.to_string()),
        (
            "memory (estimate)",
            format!(
            "{} total: NF4 {}, dense {}, LoRA {} + grads {} + AdamW {}, activations {}, dequant {}",
            mib(m.total), mib(m.nf4_weights), mib(m.dense_weights), mib(m.lora_params),
            mib(m.lora_grads), mib(m.adam_moments), mib(m.activations), mib(m.dequant_transient)
        ),
        ),
    ]);
    for (s, secs) in d.report.steps.iter().zip(&d.report.step_seconds) {
        println!(
            "step {}: loss {:.4}, grad norm {:.4}, lr {:.2e}, {} answer tokens, {:.2}s",
            s.step, s.loss, s.grad_norm, s.lr, s.tokens, secs
        );
    }
    println!(
        "checkpoint of {} files written and removed; {:.1}s",
        d.report.checkpoint_files.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `run start --dry-run` of a modal recipe: snapshot, launcher and the exact
/// commands, written under `home/dry-runs/<id>/`; nothing is submitted or
/// recorded.
fn modal_dry_run(
    ctx: &Context,
    ledger: &Ledger,
    recipe_id: &str,
    dataset_id: &str,
    model_id: &str,
) -> Result<()> {
    let (recipe, dataset, model) = pinned_inputs(ledger, recipe_id, dataset_id, model_id)?;
    let id = format!("dry-run-{}", uuid::Uuid::now_v7().simple());
    let work = ctx.home.root().join("dry-runs").join(&id);
    let opts = foundry_modal::ModalOptions::from_env();
    // A dry run appends nothing; any identity reads.
    let client = foundry_runner::LocalLedger::new(
        ledger.clone(),
        foundry_ledger::Identity::generate("dry-run")?,
    );
    let plan = embedded::runtime()?.block_on(foundry_modal::prepare(
        &client,
        &opts,
        &id,
        &recipe.resolved_config,
        &dataset,
        &model,
        &work,
    ));
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            bail!("{e}");
        }
    };
    let commands = plan.commands(&opts.cli);
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "dry_run": true,
            "plan": plan,
            "commands": commands,
        }));
    }
    println!("dry run: nothing was submitted or recorded");
    crate::output::fields([
        ("launcher", plan.launcher_path.display().to_string()),
        ("launcher sha256", plan.launcher_sha256.clone()),
        ("image digest", plan.image_digest.clone()),
        ("snapshot", format!("{} events", plan.snapshot_events)),
        (
            "gpu / timeout / retries",
            format!(
                "{} / {}s / {}",
                plan.spec.gpu, plan.spec.timeout_s, plan.spec.retries
            ),
        ),
        (
            "volumes",
            format!(
                "checkpoints {}, data {}, hf cache {}",
                plan.spec.checkpoint_volume, plan.spec.data_volume, plan.spec.hf_cache_volume
            ),
        ),
    ]);
    println!("commands:");
    for c in commands {
        println!("  {c}");
    }
    Ok(())
}

/// Shows a progress bar of the run's steps (events from seq `from` on) until aborted.
fn follow(ledger: &Ledger, from: u64, run_id: &str, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(follow_task(ledger, from, run_id, quiet))
}

/// The work of [`follow`], to spawn on any runtime.
fn follow_task(
    ledger: &Ledger,
    from: u64,
    run_id: &str,
    quiet: bool,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ledger = ledger.clone();
    let stream = format!("run/{run_id}");
    async move {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut tail = ledger.tail(from.saturating_sub(1));
        while let Ok(rec) = tail.next().await {
            if rec.stream != stream && rec.event_type != "EvalScored" {
                continue;
            }
            match rec.decode_event() {
                Ok(Event::RunStarted(s)) => bar.set_length(s.total_steps),
                Ok(Event::MetricsLogged(m)) => {
                    if let Some(p) = m.points.last() {
                        bar.set_position(p.step);
                        bar.set_message(format!("loss {:.4}", p.loss));
                    }
                }
                Ok(Event::CheckpointCommitted(c)) => {
                    bar.println(format!(
                        "checkpoint {} at step {}",
                        &c.checkpoint_id[..12.min(c.checkpoint_id.len())],
                        c.step
                    ));
                }
                Ok(Event::EvalScored(s)) if s.run_id.as_deref() == Some(run_id_of(&stream)) => {
                    let fem = s.metrics.get("field_exact_match").map(|m| m.value);
                    bar.println(format!(
                        "eval of {}: field_exact_match {}",
                        s.checkpoint_id
                            .as_deref()
                            .map(|c| &c[..12.min(c.len())])
                            .unwrap_or("base"),
                        fem.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
                    ));
                }
                Ok(Event::RunCompleted(_))
                | Ok(Event::RunFailed(_))
                | Ok(Event::RunCancelled(_)) => {
                    bar.finish();
                }
                _ => {}
            }
        }
    }
}

fn run_id_of(stream: &str) -> &str {
    stream.strip_prefix("run/").unwrap_or(stream)
}

fn cancel(ctx: &Context, a: CancelArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let views = ctx.views(&ledger)?;
    let run_id = resolve(&views, ViewKind::Runs, &a.run)?;
    if let Some(v) = foundry_projections::ViewRead::run(&views, &run_id)? {
        if v.is_terminal() {
            bail!("run {run_id} already ended ({})", v.status);
        }
    }
    ctx.append(
        &ledger,
        AppendRequest::new(vec![NewEvent::new(Event::RunCancelled(RunCancelled {
            run_id: run_id.clone(),
            reason: a.reason,
        }))])
        .idempotent(format!("cancel/{run_id}")),
    )?;
    println!("run {run_id} cancelled");
    Ok(())
}
