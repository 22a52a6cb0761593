//! The trainer runner: RunRequested → RunClaimed, RunStarted (or RunResumed),
//! RunHeartbeat, MetricsLogged, CheckpointCommitted, then RunCompleted or
//! RunFailed. The training itself is a [`TrainingEngine`]'s job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foundry_events::{
    BaseModelPinned, CheckpointCommitted, DatasetPinned, DeviceInfo, Event, EventType, MetricPoint,
    MetricsLogged, RecordedEvent, RunAttemptFailed, RunClaimed, RunCompleted, RunFailed,
    RunHeartbeat, RunRequested, RunResumed, RunStarted,
};
use foundry_ledger::{AppendRequest, ExpectedVersion, LedgerError, NewEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{checkpoint_id, commit_files, location_of, materialize};
use crate::host::{Runner, RunnerContext};
use crate::{lookup, Delivery, EngineFailure, Result, RunnerError};

/// Everything a training engine needs to train one run, resolved from the
/// ledger: the recipe's resolved config and the pinned inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    /// The run.
    pub run_id: String,
    /// 1 for the first claim, 2 after the first reclaim, …
    pub attempt: u32,
    /// The declared recipe's id.
    pub recipe_id: String,
    /// The recipe's resolved config (every default written out).
    pub config: serde_json::Value,
    /// The pinned dataset.
    pub dataset: DatasetPinned,
    /// The pinned base model.
    pub model: BaseModelPinned,
    /// Where the engine writes its checkpoints.
    pub out_dir: PathBuf,
    /// The checkpoint to continue from (its directory, restored from the
    /// artifact store when needed), if the run was interrupted.
    pub resume_from: Option<(u64, PathBuf)>,
}

/// What the engine says before training: the work ahead and where it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainPlan {
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// The device and compute dtype.
    pub device: DeviceInfo,
    /// How the engine orders and reads the examples (recorded in the run's
    /// `run_config.json`), when it says.
    #[serde(default)]
    pub data_order: Option<serde_json::Value>,
}

/// A checkpoint the engine wrote and wants committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Optimizer step it was taken after.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Training loss at that step.
    pub loss: Option<f64>,
}

/// How a training ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps completed in total.
    pub steps: u64,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// True when the engine stopped early because the sink said so.
    pub stopped: bool,
}

/// The engine's answer to "go on?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop as soon as possible (cancelled, shutting down, commit failed).
    Stop,
}

/// Where an engine reports progress while it trains.
pub trait TrainSink: Send {
    /// One optimizer step finished.
    fn on_step(&mut self, point: MetricPoint) -> Control;
    /// A checkpoint is written; returns once it is committed to the ledger.
    fn on_checkpoint(&mut self, checkpoint: CheckpointRecord) -> Control;
}

/// A training engine (the QLoRA trainer implements it). Failures are typed:
/// a one-line reason (it ends up in RunAttemptFailed or RunFailed) and
/// whether another attempt could help.
pub trait TrainingEngine: Send + Sync {
    /// Validates the job (recipe against model, dataset schema, device) and
    /// plans it, failing fast before anything is trained.
    fn prepare(&self, job: &TrainJob) -> std::result::Result<TrainPlan, EngineFailure>;
    /// Trains, reporting to `sink`, resuming from `job.resume_from` if set.
    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> std::result::Result<TrainSummary, EngineFailure>;
}

/// Claims in a row without a new checkpoint after which a run is given up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The most attempts a trainer may allow: one fewer than the host's
/// deliveries, so the trainer, not the host, ends the run.
pub const MAX_ATTEMPTS_LIMIT: u32 = crate::host::MAX_ATTEMPTS - 1;

/// The trainer runner.
pub struct TrainerRunner {
    engine: Arc<dyn TrainingEngine>,
    max_attempts: u32,
    lease: Duration,
    metrics_every: usize,
    backend: String,
}

impl TrainerRunner {
    /// A trainer over `engine` with a 30 s lease and metrics batched by 10.
    pub fn new(engine: Arc<dyn TrainingEngine>) -> Self {
        TrainerRunner {
            engine,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            lease: Duration::from_secs(30),
            metrics_every: 10,
            backend: "local".to_string(),
        }
    }

    /// Sets the lease: without a heartbeat for this long, another runner may
    /// reclaim the run. Heartbeats go out every third of it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets how many claims in a row may end without a new checkpoint
    /// before the run is given up with RunFailed (at least 1, at most
    /// [`MAX_ATTEMPTS_LIMIT`], so the feed's own redelivery limit never
    /// gives up first).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.clamp(1, MAX_ATTEMPTS_LIMIT);
        self
    }

    /// Sets which runs it trains: those requested with this backend (default
    /// `local`; a Modal container's trainer takes its `modal` run).
    pub fn for_backend(mut self, backend: &str) -> Self {
        self.backend = backend.to_string();
        self
    }

    /// Sets how many metric points go into one MetricsLogged.
    pub fn with_metrics_every(mut self, n: usize) -> Self {
        self.metrics_every = n.max(1);
        self
    }
}

/// Where a run stands, replayed from its stream.
#[derive(Debug, Default)]
struct RunState {
    version: u64,
    terminal: bool,
    attempts: u32,
    holder: Option<String>,
    lease_until_ns: i64,
    last_checkpoint: Option<CheckpointCommitted>,
    started: bool,
    /// Claims since the last checkpoint (or since the start): attempt,
    /// runner, and how it died when it said so.
    since_checkpoint: Vec<(u32, String, Option<String>)>,
}

fn replay(events: &[(RecordedEvent, Event)]) -> RunState {
    let mut s = RunState::default();
    for (r, e) in events {
        s.version = r.stream_version;
        let at = r.recorded_at.0;
        match e {
            Event::RunClaimed(c) => {
                s.attempts = s.attempts.max(c.attempt);
                s.holder = Some(c.runner_id.clone());
                s.lease_until_ns = at.saturating_add(c.lease_ms as i64 * 1_000_000);
                s.since_checkpoint
                    .push((c.attempt, c.runner_id.clone(), None));
            }
            Event::RunAttemptFailed(f) => {
                // The attempt is over: its lease need not lapse.
                if s.holder.as_deref() == Some(f.runner_id.as_str()) {
                    s.holder = None;
                    s.lease_until_ns = 0;
                }
                if let Some(a) = s
                    .since_checkpoint
                    .iter_mut()
                    .find(|(n, r, _)| *n == f.attempt && *r == f.runner_id)
                {
                    a.2 = Some(f.reason.clone());
                }
            }
            Event::RunHeartbeat(h) if s.holder.as_deref() == Some(h.runner_id.as_str()) => {
                s.lease_until_ns = at.saturating_add(h.lease_ms as i64 * 1_000_000);
            }
            Event::RunStarted(_) => s.started = true,
            Event::CheckpointCommitted(c) => {
                s.last_checkpoint = Some(c.clone());
                s.since_checkpoint.clear();
            }
            Event::RunCompleted(_) | Event::RunFailed(_) | Event::RunCancelled(_) => {
                s.terminal = true
            }
            _ => {}
        }
    }
    s
}

/// RunFailed's reason when a run's attempts ran out: one line naming each.
fn give_up_reason(attempts: &[(u32, String, Option<String>)]) -> String {
    let each: Vec<String> = attempts
        .iter()
        .map(|(n, runner, how)| {
            let how = how
                .as_deref()
                .map(|h| h.chars().take(240).collect::<String>())
                .unwrap_or_else(|| "its runner stopped without a word (lease lapsed)".into());
            format!("attempt {n} on {runner}: {how}")
        })
        .collect();
    format!(
        "gave up after {} attempts without a new checkpoint: {}",
        attempts.len(),
        each.join("; ")
    )
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

enum Msg {
    Step(MetricPoint),
    Checkpoint(CheckpointRecord, oneshot::Sender<Control>),
    Done(std::result::Result<TrainSummary, EngineFailure>),
}

struct ChannelSink {
    tx: mpsc::UnboundedSender<Msg>,
    cancel: Arc<AtomicBool>,
}

impl ChannelSink {
    fn control(&self) -> Control {
        if self.cancel.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

impl TrainSink for ChannelSink {
    fn on_step(&mut self, point: MetricPoint) -> Control {
        if self.tx.send(Msg::Step(point)).is_err() {
            return Control::Stop;
        }
        self.control()
    }

    fn on_checkpoint(&mut self, checkpoint: CheckpointRecord) -> Control {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Checkpoint(checkpoint, tx)).is_err() {
            return Control::Stop;
        }
        match rx.blocking_recv() {
            Ok(Control::Continue) => self.control(),
            _ => Control::Stop,
        }
    }
}

impl TrainerRunner {
    async fn append(
        &self,
        ctx: &RunnerContext,
        key: Option<String>,
        events: Vec<Event>,
        cause: &RecordedEvent,
    ) -> Result<()> {
        crate::append_outcome(ctx, cause, key, events).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        run_id: &str,
        attempt: u32,
        reason: String,
        step: Option<u64>,
        retryable: bool,
    ) -> Result<()> {
        let ev = Event::RunFailed(RunFailed {
            run_id: run_id.to_string(),
            reason,
            step,
            retryable,
        });
        let key = crate::outcome_key("trainer", &trigger.event_id, &format!("failed/{attempt}"));
        self.append(ctx, Some(key), vec![ev], trigger).await
    }

    async fn run(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: RunRequested,
    ) -> Result<()> {
        let stream = format!("run/{}", req.run_id);
        // Claim the run, or wait for a live holder's lease to lapse.
        let (state, attempt) = loop {
            let events = lookup::stream_events(ctx.client.as_ref(), &stream).await?;
            let state = replay(&events);
            if state.terminal {
                return Ok(());
            }
            let now = now_ns();
            // A holder with our own runner id is a previous incarnation of
            // this runner (a retried Modal container keeps its id): it is
            // gone, so its lease need not lapse.
            let other_holder = state
                .holder
                .as_deref()
                .is_some_and(|h| h != ctx.runner_id.as_str());
            if other_holder && state.lease_until_ns > now {
                let wait = Duration::from_nanos((state.lease_until_ns - now) as u64)
                    .min(self.lease)
                    + Duration::from_millis(50);
                let mut stop = ctx.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = crate::host::stopped(&mut stop) => return Err(RunnerError::Stopped),
                }
            }
            if state.since_checkpoint.len() >= self.max_attempts as usize {
                let failed = Event::RunFailed(RunFailed {
                    run_id: req.run_id.clone(),
                    reason: give_up_reason(&state.since_checkpoint),
                    step: state.last_checkpoint.as_ref().map(|c| c.step),
                    retryable: false,
                });
                let append = AppendRequest::new(vec![
                    NewEvent::new(failed).caused_by(trigger.event_id, trigger.correlation_id)
                ])
                .expect(stream.clone(), ExpectedVersion::Exact(state.version));
                match ctx.client.append(append).await {
                    Ok(_) => return Ok(()),
                    Err(RunnerError::Ledger(LedgerError::Conflict { .. })) => continue,
                    Err(e) => return Err(e),
                }
            }
            let attempt = state.attempts + 1;
            let claim = Event::RunClaimed(RunClaimed {
                run_id: req.run_id.clone(),
                runner_id: ctx.runner_id.clone(),
                host: crate::host_info(),
                lease_ms: self.lease.as_millis() as u64,
                attempt,
            });
            let append = AppendRequest::new(vec![
                NewEvent::new(claim).caused_by(trigger.event_id, trigger.correlation_id)
            ])
            .expect(stream.clone(), ExpectedVersion::Exact(state.version));
            match ctx.client.append(append).await {
                Ok(_) => break (state, attempt),
                // Somebody else appended to the run meanwhile: look again.
                Err(RunnerError::Ledger(LedgerError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        };

        let started_at = Instant::now();
        let inputs = lookup::run_inputs(ctx.client.as_ref(), &req).await;
        let (recipe, dataset, model) = match inputs {
            Ok(v) => v,
            Err(RunnerError::Missing(reason)) => {
                return self
                    .fail(ctx, trigger, &req.run_id, attempt, reason, None, false)
                    .await
            }
            Err(e) => return Err(e),
        };
        let out_dir = ctx.home.adapters_dir(&req.run_id);
        let mut resume_from = None;
        if let Some(c) = &state.last_checkpoint {
            let dir = match materialize(ctx, c).await {
                Ok(dir) => dir,
                Err(e) => {
                    return self
                        .fail(
                            ctx,
                            trigger,
                            &req.run_id,
                            attempt,
                            e.to_string(),
                            Some(c.step),
                            false,
                        )
                        .await;
                }
            };
            resume_from = Some((c.step, dir));
        }
        let job = TrainJob {
            run_id: req.run_id.clone(),
            attempt,
            recipe_id: req.recipe_id.clone(),
            config: recipe.resolved_config.clone(),
            dataset,
            model,
            out_dir,
            resume_from,
        };

        let engine = self.engine.clone();
        let job_for_plan = job.clone();
        let plan = tokio::task::spawn_blocking(move || engine.prepare(&job_for_plan))
            .await
            .map_err(|e| RunnerError::Engine(format!("prepare task: {e}")))?;
        let plan = match plan {
            Ok(p) => p,
            // The planning process died: this attempt failed, not the run.
            Err(f) if f.retry => {
                let ev = Event::RunAttemptFailed(RunAttemptFailed {
                    run_id: req.run_id.clone(),
                    runner_id: ctx.runner_id.clone(),
                    attempt,
                    reason: f.reason.clone(),
                    step: None,
                });
                let key = crate::outcome_key(
                    "trainer",
                    &trigger.event_id,
                    &format!("attempt-failed/{attempt}"),
                );
                self.append(ctx, Some(key), vec![ev], trigger).await?;
                return Err(RunnerError::Engine(format!(
                    "run {} attempt {attempt} died while planning: {}",
                    req.run_id, f.reason
                )));
            }
            Err(f) => {
                return self
                    .fail(ctx, trigger, &req.run_id, attempt, f.reason, None, false)
                    .await
            }
        };

        // run_config.json beside the run's artifacts.
        let run_dir = ctx.home.run_dir(&req.run_id);
        std::fs::create_dir_all(&run_dir).map_err(|e| RunnerError::io(&run_dir, e))?;
        let env = foundry_recipes::foundry_env();
        let run_config = serde_json::to_string_pretty(&serde_json::json!({
            "run_id": req.run_id,
            "recipe_id": req.recipe_id,
            "dataset_id": req.dataset_id,
            "model_id": req.model_id,
            "config": recipe.resolved_config,
            "recipe_env": recipe.env_overrides,
            "env": env,
            "data_order": plan.data_order,
        }))
        .map_err(|e| RunnerError::Engine(format!("run_config.json: {e}")))?;
        let config_path = run_dir.join("run_config.json");
        std::fs::write(&config_path, &run_config).map_err(|e| RunnerError::io(&config_path, e))?;
        let config_sha = ctx.home.artifacts().put_bytes(run_config.as_bytes())?;

        let begin = match (&state.last_checkpoint, state.started) {
            (Some(c), _) => Event::RunResumed(RunResumed {
                run_id: req.run_id.clone(),
                runner_id: ctx.runner_id.clone(),
                checkpoint_id: c.checkpoint_id.clone(),
                step: c.step,
                reason: format!(
                    "attempt {attempt}: the previous runner stopped before the run ended"
                ),
            }),
            _ => Event::RunStarted(RunStarted {
                run_id: req.run_id.clone(),
                runner_id: ctx.runner_id.clone(),
                host: crate::host_info(),
                device: plan.device.clone(),
                code: crate::code_version(),
                resolved_config: recipe.resolved_config.clone(),
                run_config_sha256: config_sha,
                env,
                total_steps: plan.total_steps,
            }),
        };
        let begin_key =
            crate::outcome_key("trainer", &trigger.event_id, &format!("begin/{attempt}"));
        self.append(ctx, Some(begin_key), vec![begin], trigger)
            .await?;

        self.train(ctx, trigger, &req.run_id, job, attempt, started_at)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn train(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        run_id: &str,
        job: TrainJob,
        attempt: u32,
        started_at: Instant,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let engine = self.engine.clone();
        let mut sink = ChannelSink {
            tx: tx.clone(),
            cancel: cancel.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("train-{run_id}"))
            .spawn(move || {
                let r = engine.train(&job, &mut sink);
                let _ = tx.send(Msg::Done(r));
            })
            .map_err(|e| RunnerError::Engine(format!("cannot start the training thread: {e}")))?;

        let stream = format!("run/{run_id}");
        let mut pending: Vec<MetricPoint> = Vec::new();
        let mut last_step = 0u64;
        let mut last_checkpoint: Option<String> = None;
        let mut beat = tokio::time::interval(self.lease / 3);
        beat.tick().await;
        let mut stop = ctx.stop.clone();
        let mut stopping = false;
        let mut cancelled = false;
        let mut commit_error: Option<RunnerError> = None;

        let done = loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Step(p)) => {
                        last_step = p.step;
                        pending.push(p);
                        if pending.len() >= self.metrics_every {
                            self.flush_metrics(ctx, trigger, run_id, &mut pending).await?;
                        }
                    }
                    Some(Msg::Checkpoint(c, reply)) => {
                        let r = self.commit_checkpoint(ctx, trigger, run_id, &c, &mut pending).await;
                        match r {
                            Ok(id) => { last_checkpoint = Some(id); let _ = reply.send(Control::Continue); }
                            Err(e) => { commit_error = Some(e); cancel.store(true, Ordering::SeqCst); let _ = reply.send(Control::Stop); }
                        }
                    }
                    Some(Msg::Done(r)) => break r,
                    None => break Err("the training thread ended without a result".to_string().into()),
                },
                _ = beat.tick() => {
                    let hb = Event::RunHeartbeat(RunHeartbeat {
                        run_id: run_id.to_string(),
                        runner_id: ctx.runner_id.clone(),
                        step: last_step,
                        lease_ms: self.lease.as_millis() as u64,
                    });
                    // A failed heartbeat is not fatal; the lease may lapse.
                    let _ = self.append(ctx, None, vec![hb], trigger).await;
                    if let Ok(events) = lookup::stream_events(ctx.client.as_ref(), &stream).await {
                        if events.iter().any(|(_, e)| matches!(e, Event::RunCancelled(_))) {
                            cancelled = true;
                            cancel.store(true, Ordering::SeqCst);
                        }
                    }
                },
                _ = crate::host::stopped(&mut stop), if !stopping => {
                    stopping = true;
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        };
        let _ = worker.join();
        if let Some(e) = commit_error {
            // The ledger refused a commit: the run cannot be trusted to go on.
            return self
                .fail(
                    ctx,
                    trigger,
                    run_id,
                    attempt,
                    format!("checkpoint commit failed: {e}"),
                    Some(last_step),
                    true,
                )
                .await;
        }
        if stopping {
            // Leave the run claimed; it resumes from its last checkpoint.
            let _ = self.flush_metrics(ctx, trigger, run_id, &mut pending).await;
            return Err(RunnerError::Stopped);
        }
        self.flush_metrics(ctx, trigger, run_id, &mut pending)
            .await?;
        match done {
            Ok(_) if cancelled => Ok(()),
            Ok(summary) => {
                let ev = Event::RunCompleted(RunCompleted {
                    run_id: run_id.to_string(),
                    final_checkpoint_id: last_checkpoint,
                    steps: summary.steps,
                    final_loss: summary.final_loss,
                    duration_ms: started_at.elapsed().as_millis() as u64,
                });
                let key = crate::outcome_key("trainer", &trigger.event_id, "completed");
                self.append(ctx, Some(key), vec![ev], trigger).await
            }
            Err(f) if cancelled => {
                tracing::info!(run_id, "cancelled run ended with: {}", f.reason);
                Ok(())
            }
            Err(f) if f.retry => {
                // The attempt died, not the run: record how, release the
                // claim, and let the trigger be delivered again (to this
                // runner or another) until the attempts run out.
                let ev = Event::RunAttemptFailed(RunAttemptFailed {
                    run_id: run_id.to_string(),
                    runner_id: ctx.runner_id.clone(),
                    attempt,
                    reason: f.reason.clone(),
                    step: (last_step > 0).then_some(last_step),
                });
                let key = crate::outcome_key(
                    "trainer",
                    &trigger.event_id,
                    &format!("attempt-failed/{attempt}"),
                );
                self.append(ctx, Some(key), vec![ev], trigger).await?;
                Err(RunnerError::Engine(format!(
                    "run {run_id} attempt {attempt} died: {}",
                    f.reason
                )))
            }
            Err(EngineFailure { reason, .. }) => {
                self.fail(
                    ctx,
                    trigger,
                    run_id,
                    attempt,
                    reason,
                    Some(last_step),
                    false,
                )
                .await
            }
        }
    }

    async fn flush_metrics(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        run_id: &str,
        pending: &mut Vec<MetricPoint>,
    ) -> Result<()> {
        let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
            return Ok(());
        };
        let key = crate::outcome_key(
            "trainer",
            &trigger.event_id,
            &format!("metrics/{}-{}", first.step, last.step),
        );
        let ev = Event::MetricsLogged(MetricsLogged {
            run_id: run_id.to_string(),
            points: std::mem::take(pending),
        });
        self.append(ctx, Some(key), vec![ev], trigger).await
    }

    async fn commit_checkpoint(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        run_id: &str,
        c: &CheckpointRecord,
        pending: &mut Vec<MetricPoint>,
    ) -> Result<String> {
        self.flush_metrics(ctx, trigger, run_id, pending).await?;
        let files = commit_files(ctx, &c.dir)?;
        let id = checkpoint_id(&files);
        let ev = Event::CheckpointCommitted(CheckpointCommitted {
            run_id: run_id.to_string(),
            checkpoint_id: id.clone(),
            step: c.step,
            files,
            loss: c.loss,
            location: location_of(ctx, &c.dir),
        });
        let key = crate::outcome_key(
            "trainer",
            &trigger.event_id,
            &format!("checkpoint/{}", c.step),
        );
        self.append(ctx, Some(key), vec![ev], trigger).await?;
        Ok(id)
    }
}

#[async_trait]
impl Runner for TrainerRunner {
    fn name(&self) -> &str {
        "trainer"
    }

    fn reacts_to(&self) -> Vec<EventType> {
        vec![EventType::RunRequested]
    }

    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> Result<()> {
        let Event::RunRequested(req) = delivery.event.decode_event()? else {
            return Ok(());
        };
        if req.backend != self.backend {
            return Ok(());
        }
        self.run(ctx, &delivery.event, req).await
    }
}
