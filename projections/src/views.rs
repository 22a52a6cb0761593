//! The shapes of the views. Field names are part of the `--json` contract
//! (see README.md): add fields, never rename or remove them.

use foundry_events::{
    CodeVersion, DeviceInfo, FileDigest, GateResult, HostInfo, MetricValue, Sha256Digest, ShardPin,
    SplitStats, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The views this crate maintains; each is one sled tree and one digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    /// Declared recipes.
    Recipes,
    /// Pinned datasets.
    Datasets,
    /// Pinned base models.
    Models,
    /// Training runs.
    Runs,
    /// Checkpoints (adapters).
    Checkpoints,
    /// Evaluations.
    Evals,
    /// Promotion channels.
    Channels,
    /// Edges of the lineage graph, per node.
    Lineage,
    /// Events that promotions cite as evidence, by event id.
    Evidence,
}

impl ViewKind {
    /// Every view, in the order `ledger replay` prints them.
    pub const ALL: [ViewKind; 9] = [
        ViewKind::Recipes,
        ViewKind::Datasets,
        ViewKind::Models,
        ViewKind::Runs,
        ViewKind::Checkpoints,
        ViewKind::Evals,
        ViewKind::Channels,
        ViewKind::Lineage,
        ViewKind::Evidence,
    ];

    /// The view's name (also its sled tree's name).
    pub fn as_str(&self) -> &'static str {
        match self {
            ViewKind::Recipes => "recipes",
            ViewKind::Datasets => "datasets",
            ViewKind::Models => "models",
            ViewKind::Runs => "runs",
            ViewKind::Checkpoints => "checkpoints",
            ViewKind::Evals => "evals",
            ViewKind::Channels => "channels",
            ViewKind::Lineage => "lineage",
            ViewKind::Evidence => "evidence",
        }
    }

    /// The singular noun used in messages (`run`, `checkpoint`, …).
    pub fn noun(&self) -> &'static str {
        match self {
            ViewKind::Recipes => "recipe",
            ViewKind::Datasets => "dataset",
            ViewKind::Models => "model",
            ViewKind::Runs => "run",
            ViewKind::Checkpoints => "checkpoint",
            ViewKind::Evals => "eval",
            ViewKind::Channels => "channel",
            ViewKind::Lineage => "lineage node",
            ViewKind::Evidence => "evidence event",
        }
    }
}

impl std::fmt::Display for ViewKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and when an event happened: enough to find it again in the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRef {
    /// Global position in the ledger.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// When the ledger recorded it.
    pub at: Timestamp,
    /// Who appended it.
    pub actor: String,
}

/// A declared recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeView {
    /// sha256 hex of the canonical resolved config.
    pub recipe_id: String,
    /// Human name.
    pub name: String,
    /// Where the recipe was read from.
    pub source: String,
    /// The complete resolved config.
    pub resolved_config: serde_json::Value,
    /// FOUNDRY_* variables present when it was resolved.
    pub env_overrides: BTreeMap<String, String>,
    /// The first declaration.
    pub declared: EventRef,
    /// How many times it was declared (re-declaring is harmless).
    pub declarations: u64,
    /// Runs requested with this recipe, in request order.
    pub runs: Vec<String>,
}

/// A pinned dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetView {
    /// Merkle root of the shard digests.
    pub dataset_id: String,
    /// The source as given.
    pub source: String,
    /// The commit a hub revision resolved to.
    pub resolved_revision: Option<String>,
    /// Every shard with its hash.
    pub shards: Vec<ShardPin>,
    /// Row counts per split.
    pub splits: BTreeMap<String, SplitStats>,
    /// The first pin.
    pub pinned: EventRef,
    /// Runs trained on it.
    pub runs: Vec<String>,
    /// Evals scored on it.
    pub evals: Vec<String>,
}

/// A pinned base model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    /// Content hash over the model's file list.
    pub model_id: String,
    /// The source as given.
    pub source: String,
    /// The commit a hub revision resolved to.
    pub resolved_revision: Option<String>,
    /// Architecture from config.json.
    pub architecture: String,
    /// Files with their hashes.
    pub files: Vec<FileDigest>,
    /// Parameter count, if known.
    pub parameters: Option<u64>,
    /// Stored weight quantization.
    pub quantization: String,
    /// The first pin.
    pub pinned: EventRef,
    /// Runs fine-tuning it.
    pub runs: Vec<String>,
}

/// A loss value and the step it was logged at.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepValue {
    /// Optimizer step.
    pub step: u64,
    /// The value.
    pub value: f64,
}

/// Summary of a run's MetricsLogged points.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Points logged.
    pub points: u64,
    /// The first logged loss.
    pub first_loss: Option<StepValue>,
    /// The most recently logged loss.
    pub last_loss: Option<StepValue>,
    /// The lowest loss logged.
    pub best_loss: Option<StepValue>,
    /// Throughput of the most recent point, tokens/s.
    pub last_tokens_per_s: Option<f64>,
    /// Highest throughput logged, tokens/s.
    pub max_tokens_per_s: Option<f64>,
    /// Mean of the logged throughputs, tokens/s.
    pub mean_tokens_per_s: Option<f64>,
    /// Sum of logged throughputs (for the mean; internal but stable).
    pub sum_tokens_per_s: f64,
    /// Answer tokens trained on, summed over the points.
    pub tokens: u64,
    /// Highest step logged.
    pub last_step: Option<u64>,
    /// Learning rate at the last point.
    pub last_lr: Option<f64>,
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The error, one line.
    pub reason: String,
    /// Step reached.
    pub step: Option<u64>,
    /// Whether trying again could succeed.
    pub retryable: bool,
    /// When it failed.
    pub at: Timestamp,
}

/// One attempt at a run that died (RunAttemptFailed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// The attempt.
    pub attempt: u32,
    /// Its runner.
    pub runner_id: String,
    /// How it died.
    pub reason: String,
    /// Last step reported.
    pub step: Option<u64>,
    /// When.
    pub at: Timestamp,
}

/// A resume of a run from a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// The checkpoint resumed from.
    pub checkpoint_id: String,
    /// Its step.
    pub step: u64,
    /// Why it resumed.
    pub reason: String,
    /// The runner resuming it.
    pub runner_id: String,
    /// When.
    pub at: Timestamp,
}

/// A run's Modal job, if it ran on Modal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModalJob {
    /// Modal app id.
    pub app_id: String,
    /// Function call id.
    pub function_call_id: String,
    /// GPU type.
    pub gpu: String,
    /// Container image digest.
    pub image_digest: String,
    /// Latest state reported (`submitted` until the first update).
    pub state: String,
    /// Exit code, once it exited.
    pub exit_code: Option<i32>,
    /// When the latest state was observed.
    pub observed_at: Option<Timestamp>,
}

/// One step in a checkpoint's promotion history, as seen from a run or a
/// checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionRef {
    /// The checkpoint concerned.
    pub checkpoint_id: String,
    /// The channel.
    pub channel: String,
    /// `requested`, `promoted`, `rejected`, `rolled_back_from` or `rolled_back_to`.
    pub outcome: String,
    /// Why, in the event's words.
    pub reason: String,
    /// The event.
    pub event: EventRef,
}

/// A training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run's id.
    pub run_id: String,
    /// `requested`, `claimed`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The recipe.
    pub recipe_id: Option<String>,
    /// The dataset.
    pub dataset_id: Option<String>,
    /// The base model.
    pub model_id: Option<String>,
    /// `local` or `modal`.
    pub backend: Option<String>,
    /// Per-run overrides.
    pub overrides: BTreeMap<String, String>,
    /// The request.
    pub requested: Option<EventRef>,
    /// The runner that holds (or held) the run.
    pub runner_id: Option<String>,
    /// Its machine.
    pub host: Option<HostInfo>,
    /// Its device.
    pub device: Option<DeviceInfo>,
    /// The code that trains.
    pub code: Option<CodeVersion>,
    /// Claim attempt (1 for the first claim).
    pub attempt: u32,
    /// The resolved config the run started with.
    pub resolved_config: Option<serde_json::Value>,
    /// sha256 of run_config.json.
    pub run_config_sha256: Option<Sha256Digest>,
    /// Optimizer steps planned.
    pub total_steps: Option<u64>,
    /// When it was first claimed.
    pub claimed_at: Option<Timestamp>,
    /// When training first started.
    pub started_at: Option<Timestamp>,
    /// When it ended (completed, failed or cancelled), if it has.
    pub ended_at: Option<Timestamp>,
    /// Wall time reported by RunCompleted, in ms.
    pub duration_ms: Option<u64>,
    /// Last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// Highest step reported by heartbeats, metrics or checkpoints.
    pub last_step: Option<u64>,
    /// Steps reported by RunCompleted.
    pub steps: Option<u64>,
    /// Final loss reported by RunCompleted.
    pub final_loss: Option<f64>,
    /// The final checkpoint.
    pub final_checkpoint_id: Option<String>,
    /// Metric summary.
    pub metrics: MetricSummary,
    /// Checkpoints, in commit order.
    pub checkpoints: Vec<String>,
    /// Resumes, in order.
    pub resumes: Vec<Resume>,
    /// The latest failure (a resumed run keeps it for the record).
    pub failure: Option<Failure>,
    /// Attempts that died (their process crashed or was killed), in order.
    #[serde(default)]
    pub failed_attempts: Vec<AttemptFailure>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Evals of its checkpoints.
    pub evals: Vec<String>,
    /// Promotion history of its checkpoints.
    pub promotions: Vec<PromotionRef>,
    /// Its Modal job.
    pub modal: Option<ModalJob>,
    /// Run events (stream kind `run`) seen for it.
    pub event_count: u64,
    /// Seq of its first event.
    pub first_seq: u64,
    /// Seq of its last event.
    pub last_seq: u64,
}

impl RunView {
    /// An empty run, before any event.
    pub fn new(run_id: &str) -> Self {
        RunView {
            run_id: run_id.to_string(),
            status: "unknown".into(),
            recipe_id: None,
            dataset_id: None,
            model_id: None,
            backend: None,
            overrides: BTreeMap::new(),
            requested: None,
            runner_id: None,
            host: None,
            device: None,
            code: None,
            attempt: 0,
            resolved_config: None,
            run_config_sha256: None,
            total_steps: None,
            claimed_at: None,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            last_heartbeat_at: None,
            last_step: None,
            steps: None,
            final_loss: None,
            final_checkpoint_id: None,
            metrics: MetricSummary::default(),
            checkpoints: Vec::new(),
            resumes: Vec::new(),
            failure: None,
            failed_attempts: Vec::new(),
            cancel_reason: None,
            evals: Vec::new(),
            promotions: Vec::new(),
            modal: None,
            event_count: 0,
            first_seq: 0,
            last_seq: 0,
        }
    }

    /// True once the run completed, failed or was cancelled.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// An eval's headline result, as attached to a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRef {
    /// The eval's id.
    pub eval_id: String,
    /// The split evaluated.
    pub split: String,
    /// Examples scored.
    pub examples: u64,
    /// Headline metrics (point estimates and intervals).
    pub metrics: BTreeMap<String, MetricValue>,
    /// The EvalScored event.
    pub event: EventRef,
}

/// A checkpoint, which is also an adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// Content id of the checkpoint.
    pub checkpoint_id: String,
    /// The run that wrote it.
    pub run_id: String,
    /// Optimizer step.
    pub step: u64,
    /// Files with their hashes.
    pub files: Vec<FileDigest>,
    /// Training loss at that step.
    pub loss: Option<f64>,
    /// Where it lives.
    pub location: String,
    /// The commit.
    pub committed: EventRef,
    /// Evals scored on it.
    pub evals: Vec<EvalRef>,
    /// Its promotion history.
    pub promotions: Vec<PromotionRef>,
    /// Channels it currently serves.
    pub channels: Vec<String>,
}

/// An evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalView {
    /// The eval's id.
    pub eval_id: String,
    /// `requested` or `scored`.
    pub status: String,
    /// The checkpoint (`None`: base model alone).
    pub checkpoint_id: Option<String>,
    /// The run of the checkpoint.
    pub run_id: Option<String>,
    /// Base model.
    pub model_id: String,
    /// Dataset.
    pub dataset_id: String,
    /// Split.
    pub split: String,
    /// Requested example limit.
    pub limit: Option<u64>,
    /// The request.
    pub requested: Option<EventRef>,
    /// The score.
    pub scored: Option<EventRef>,
    /// Examples scored.
    pub examples: Option<u64>,
    /// Headline metrics.
    pub metrics: BTreeMap<String, MetricValue>,
    /// Hash of the split's shards.
    pub split_sha256: Option<Sha256Digest>,
    /// Hash of the eval spec.
    pub eval_spec_sha256: Option<Sha256Digest>,
    /// Mean latency per document, ms.
    pub latency_ms_mean: Option<f64>,
}

/// One event that a promotion decision cites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    /// The cited event id, as written in the decision.
    pub event_id: String,
    /// Its seq, if the ledger holds it (before the decision).
    pub seq: Option<u64>,
    /// Its type (`EvalScored`, `PromotionRequested`), or `unknown`.
    pub event_type: String,
    /// When it was recorded.
    pub at: Option<Timestamp>,
    /// One line: what it says (e.g. the eval's scores).
    pub summary: String,
}

/// One entry in a channel's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelEntry {
    /// `requested`, `promoted`, `rejected` or `rolled_back`.
    pub action: String,
    /// The checkpoint acted on (the one put in place for a rollback).
    pub checkpoint_id: Option<String>,
    /// The adapter it replaced (promotions and rollbacks).
    pub previous_checkpoint_id: Option<String>,
    /// Why.
    pub reason: String,
    /// Gates and their outcomes.
    pub gates: Vec<GateResult>,
    /// The evidence events, resolved.
    pub evidence: Vec<EvidenceRef>,
    /// The event: who and when.
    pub event: EventRef,
}

/// A promotion channel (`staging`, `production`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    /// The channel's name.
    pub channel: String,
    /// The adapter it serves now.
    pub current_checkpoint_id: Option<String>,
    /// Index in `history` of the entry that put the current adapter in place.
    pub current_entry: Option<usize>,
    /// Every request, promotion, rejection and rollback, in order.
    pub history: Vec<ChannelEntry>,
}

/// A node of the lineage graph: `kind:id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRef {
    /// `recipe`, `dataset`, `model`, `code`, `run`, `checkpoint`, `eval` or `channel`.
    pub kind: String,
    /// The id.
    pub id: String,
}

impl NodeRef {
    /// A node.
    pub fn new(kind: &str, id: &str) -> Self {
        NodeRef {
            kind: kind.to_string(),
            id: id.to_string(),
        }
    }

    /// `kind:id`, the lineage tree's key.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.id)
    }
}

/// A labelled edge of the lineage graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// What the relation is (`trained_on`, `checkpoint_of`, `evaluated`, …).
    pub rel: String,
    /// The other end.
    pub node: NodeRef,
    /// The event that created the edge.
    pub seq: u64,
}

/// The edges of one lineage node: what it came from and what came of it.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct LineageNodeView {
    /// Inputs (`run` → recipe, dataset, model, code; checkpoint → run; …).
    pub inputs: Vec<Edge>,
    /// Outputs (run → checkpoints; checkpoint → evals, channels; …).
    pub outputs: Vec<Edge>,
}

/// An event that can be cited as evidence, indexed by its event id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceView {
    /// Its seq.
    pub seq: u64,
    /// Its type.
    pub event_type: String,
    /// When it was recorded.
    pub at: Timestamp,
    /// One line: what it says.
    pub summary: String,
}
