//! The evaluator runner: CheckpointCommitted (following the recipe's eval
//! policy) or EvalRequested → EvalScored. Scoring is an [`EvalEngine`]'s job.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use foundry_events::{
    BaseModelPinned, CheckpointCommitted, DatasetPinned, EvalRequested, EvalScored, Event,
    EventType, RecordedEvent,
};
use sha2::{Digest, Sha256};

use crate::host::{Runner, RunnerContext};
use crate::{lookup, Delivery, Result, RunnerError};

/// One evaluation to perform, resolved from the ledger.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalJob {
    /// The eval's id.
    pub eval_id: String,
    /// The checkpoint and its directory, or `None` for the base model alone.
    pub checkpoint: Option<(CheckpointCommitted, PathBuf)>,
    /// The run the checkpoint belongs to.
    pub run_id: Option<String>,
    /// The recipe's resolved config (prompt, image size, generation length),
    /// when the eval belongs to a run.
    pub config: Option<serde_json::Value>,
    /// The pinned base model.
    pub model: BaseModelPinned,
    /// The pinned dataset.
    pub dataset: DatasetPinned,
    /// The split to score.
    pub split: String,
    /// At most this many examples.
    pub limit: Option<u64>,
}

/// What an engine returns: the EvalScored payload (ids are filled in from the
/// job by the runner, so engines cannot mix evidence up).
pub type EvalOutcome = EvalScored;

/// What the promoter must know of an evaluation harness: the eval spec hash
/// (`eval_spec_sha256`) that an eval of a run trained by `config`, on
/// `split`, scoring at most `limit` examples, carries. Evidence with another
/// spec (fewer examples, other decoding) does not count.
pub trait EvalSpecs: Send + Sync {
    /// The spec hash, or a one-line reason the config implies no valid spec.
    fn spec_sha256(
        &self,
        config: Option<&serde_json::Value>,
        split: &str,
        limit: Option<u64>,
    ) -> std::result::Result<foundry_events::Sha256Digest, String>;
}

/// An evaluation engine. Failures are typed: a one-line reason, and whether
/// another attempt could help (a failure that cannot is not retried).
pub trait EvalEngine: EvalSpecs {
    /// Scores the job's model (with the checkpoint's adapter, if any) on the split.
    fn evaluate(&self, job: &EvalJob) -> std::result::Result<EvalOutcome, crate::EngineFailure>;
}

/// The evaluator runner.
pub struct EvaluatorRunner {
    engine: Arc<dyn EvalEngine>,
}

impl EvaluatorRunner {
    /// An evaluator over `engine`.
    pub fn new(engine: Arc<dyn EvalEngine>) -> Self {
        EvaluatorRunner { engine }
    }
}

/// The id of the automatic eval of a checkpoint on a split: deterministic,
/// so a redelivered CheckpointCommitted names the same eval.
pub fn auto_eval_id(checkpoint_id: &str, split: &str, limit: Option<u64>) -> String {
    let mut h = Sha256::new();
    h.update(format!("auto-eval\n{checkpoint_id}\n{split}\n{limit:?}").as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EvaluatorRunner {
    async fn on_checkpoint(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        c: CheckpointCommitted,
    ) -> Result<()> {
        let req = lookup::run_request(ctx.client.as_ref(), &c.run_id).await?;
        let eval = lookup::typed_recipe(ctx.client.as_ref(), &req.recipe_id)
            .await?
            .eval;
        // Declaration guarantees every_checkpoints >= 1; 0 examples means all.
        let every = u64::try_from(eval.every_checkpoints).unwrap_or(1).max(1);
        let split = eval.split;
        let limit = u64::try_from(eval.max_examples).ok().filter(|n| *n > 0);
        // Which checkpoint of the run is this (1-based)?
        let index = lookup::stream_events(ctx.client.as_ref(), &format!("run/{}", c.run_id))
            .await?
            .iter()
            .filter(|(r, e)| matches!(e, Event::CheckpointCommitted(_)) && r.seq <= trigger.seq)
            .count() as u64;
        if !index.is_multiple_of(every) {
            return Ok(());
        }
        let request = EvalRequested {
            eval_id: auto_eval_id(&c.checkpoint_id, &split, limit),
            checkpoint_id: Some(c.checkpoint_id.clone()),
            run_id: Some(c.run_id.clone()),
            model_id: req.model_id.clone(),
            dataset_id: req.dataset_id.clone(),
            split,
            limit,
        };
        let key = crate::outcome_key("evaluator", &trigger.event_id, "requested");
        let recorded =
            crate::record_outcome(ctx, trigger, Some(key), vec![request.clone().into()]).await?;
        let Some(request_event) = recorded.into_iter().next() else {
            return Ok(());
        };
        self.score(ctx, &request_event, request).await
    }

    async fn score(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: EvalRequested,
    ) -> Result<()> {
        let key = crate::outcome_key("evaluator", &trigger.event_id, "scored");
        let done = lookup::stream_events(ctx.client.as_ref(), &format!("eval/{}", req.eval_id))
            .await?
            .iter()
            .any(|(_, e)| matches!(e, Event::EvalScored(_)));
        if done {
            return Ok(());
        }
        let model = lookup::model(ctx.client.as_ref(), &req.model_id).await?;
        let dataset = lookup::dataset(ctx.client.as_ref(), &req.dataset_id).await?;
        let mut config = None;
        let checkpoint = match &req.checkpoint_id {
            Some(id) => {
                let (_, c) = lookup::checkpoint(ctx.client.as_ref(), id).await?;
                let run = lookup::run_request(ctx.client.as_ref(), &c.run_id).await?;
                config = Some(
                    lookup::recipe(ctx.client.as_ref(), &run.recipe_id)
                        .await?
                        .resolved_config,
                );
                let dir = crate::checkpoint::materialize(ctx, &c).await?;
                Some((c, dir))
            }
            None => None,
        };
        let job = EvalJob {
            eval_id: req.eval_id.clone(),
            checkpoint,
            run_id: req.run_id.clone(),
            config,
            model,
            dataset,
            split: req.split.clone(),
            limit: req.limit,
        };
        let split_sha256 = job.dataset.split_sha256(&job.split);
        let engine = self.engine.clone();
        let scored = tokio::task::spawn_blocking(move || engine.evaluate(&job))
            .await
            .map_err(|e| RunnerError::Engine(format!("eval task: {e}")))?
            .map_err(crate::EngineFailure::into_runner_error)?;
        let scored = EvalScored {
            eval_id: req.eval_id,
            checkpoint_id: req.checkpoint_id,
            run_id: req.run_id,
            model_id: req.model_id,
            dataset_id: req.dataset_id,
            split: req.split,
            split_sha256,
            ..scored
        };
        crate::append_outcome(ctx, trigger, Some(key), vec![scored.into()]).await
    }
}

#[async_trait]
impl Runner for EvaluatorRunner {
    fn name(&self) -> &str {
        "evaluator"
    }

    fn reacts_to(&self) -> Vec<EventType> {
        vec![EventType::CheckpointCommitted, EventType::EvalRequested]
    }

    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> Result<()> {
        match delivery.event.decode_event()? {
            Event::CheckpointCommitted(c) => self.on_checkpoint(ctx, &delivery.event, c).await,
            Event::EvalRequested(r) => {
                // Automatic requests are scored right after they are appended;
                // a redelivery of one is answered by the idempotency key.
                self.score(ctx, &delivery.event, r).await
            }
            _ => Ok(()),
        }
    }
}
