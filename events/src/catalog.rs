//! The v1 event catalog: every action in a model's life, as a typed payload.
//!
//! Payloads are MessagePack maps (field names included) so that later schema
//! versions can add optional fields; the envelope records which schema
//! version wrote them.

use crate::{Sha256Digest, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg(test)]
use proptest_derive::Arbitrary;

/// One file that an event speaks of, addressed by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FileDigest {
    /// Path relative to the artifact's root (e.g. `adapter_model.safetensors`).
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub bytes: u64,
}

/// Which code produced an event's outcome.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct CodeVersion {
    /// Foundry's crate version.
    pub version: String,
    /// The git commit the binary was built from, if known.
    pub git_commit: Option<String>,
    /// Whether the build tree had uncommitted changes.
    pub dirty: bool,
    /// sha256 of the executable that did the work, read at its start.
    #[serde(default)]
    pub executable_sha256: Option<Sha256Digest>,
}

/// The machine that did the work.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Operating system (e.g. `linux`).
    pub os: String,
    /// CPU architecture (e.g. `x86_64`).
    pub arch: String,
    /// Logical CPUs available.
    pub cpus: u32,
}

/// The compute device a run or eval used.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct DeviceInfo {
    /// `cpu` or `cuda`.
    pub kind: String,
    /// Device name (e.g. `NVIDIA H100 80GB HBM3`), or the CPU model.
    pub name: String,
    /// Compute dtype (`f32`, `bf16`).
    pub dtype: String,
}

/// One shard of a pinned dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ShardPin {
    /// `train`, `validation` or `test`.
    pub split: String,
    /// Path of the shard relative to the dataset root.
    pub path: String,
    /// sha256 of the shard file (images it references are hashed into it).
    pub sha256: Sha256Digest,
    /// Shard size in bytes.
    pub bytes: u64,
    /// Number of rows.
    pub rows: u64,
}

/// Row counts of one split, broken down the way evals report.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SplitStats {
    /// Rows in the split.
    pub rows: u64,
    /// Rows per document type.
    pub by_doc_type: BTreeMap<String, u64>,
    /// Rows per layout family.
    pub by_layout: BTreeMap<String, u64>,
}

/// A recipe's resolved config was recorded; its id is the config's hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RecipeDeclared {
    /// sha256 hex of the canonical resolved config.
    pub recipe_id: String,
    /// Human name from the recipe file.
    pub name: String,
    /// Where the recipe was read from.
    pub source: String,
    /// The complete resolved config, every default written out.
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::json_value()"))]
    pub resolved_config: serde_json::Value,
    /// Every FOUNDRY_* variable present when it was resolved.
    pub env_overrides: BTreeMap<String, String>,
}

/// A dataset was pinned by content; its id is the Merkle root of its shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct DatasetPinned {
    /// Merkle root (hex) of the shard digests.
    pub dataset_id: String,
    /// The source as given (`./data`, `hf://org/name@rev`).
    pub source: String,
    /// The commit sha a hub revision resolved to.
    pub resolved_revision: Option<String>,
    /// Every shard with its hash.
    pub shards: Vec<ShardPin>,
    /// Row counts per split.
    pub splits: BTreeMap<String, SplitStats>,
}

impl DatasetPinned {
    /// The hash of one split: sha256 over its shards' `path sha256` lines,
    /// sorted, so an eval names exactly the data it scored (and a promoter
    /// can check that it did).
    pub fn split_sha256(&self, split: &str) -> Sha256Digest {
        use sha2::{Digest, Sha256};
        let mut lines: Vec<String> = self
            .shards
            .iter()
            .filter(|s| s.split == split)
            .map(|s| format!("{} {}\n", s.path, s.sha256.to_hex()))
            .collect();
        lines.sort();
        let mut h = Sha256::new();
        for l in lines {
            h.update(l.as_bytes());
        }
        Sha256Digest(h.finalize().into())
    }
}

/// A base model was pinned by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BaseModelPinned {
    /// Content hash (hex) over the model's file list.
    pub model_id: String,
    /// The source as given (`./model`, `hf://org/name@rev`).
    pub source: String,
    /// The commit sha a hub revision resolved to.
    pub resolved_revision: Option<String>,
    /// The architecture from config.json (e.g. `Idefics2ForConditionalGeneration`).
    pub architecture: String,
    /// Config, tokenizer, processor and weight files.
    pub files: Vec<FileDigest>,
    /// Parameter count, if known.
    pub parameters: Option<u64>,
    /// Quantization of the stored weights (`none`, `bnb-nf4`).
    pub quantization: String,
}

/// Somebody asked for a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunRequested {
    /// The new run's id.
    pub run_id: String,
    /// The declared recipe.
    pub recipe_id: String,
    /// The pinned dataset.
    pub dataset_id: String,
    /// The pinned base model.
    pub model_id: String,
    /// `local` or `modal`.
    pub backend: String,
    /// Per-run overrides of recipe keys (already part of the resolved config).
    pub overrides: BTreeMap<String, String>,
}

/// A runner took a run, under a lease it must keep renewing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunClaimed {
    /// The run.
    pub run_id: String,
    /// The claiming runner's id.
    pub runner_id: String,
    /// The claiming runner's machine.
    pub host: HostInfo,
    /// Lease length; a run without a heartbeat for this long may be reclaimed.
    pub lease_ms: u64,
    /// 1 for the first claim, 2 after the first reclaim, …
    pub attempt: u32,
}

/// Training began (or began again) with a fully resolved config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunStarted {
    /// The run.
    pub run_id: String,
    /// The runner doing the work.
    pub runner_id: String,
    /// Its machine.
    pub host: HostInfo,
    /// Its device and compute dtype.
    pub device: DeviceInfo,
    /// The code that trains.
    pub code: CodeVersion,
    /// The resolved config actually used (also written as run_config.json).
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::json_value()"))]
    pub resolved_config: serde_json::Value,
    /// sha256 of run_config.json.
    pub run_config_sha256: Sha256Digest,
    /// Every FOUNDRY_* environment variable at start.
    pub env: BTreeMap<String, String>,
    /// Optimizer steps the run will take.
    pub total_steps: u64,
}

/// The claiming runner is alive; renews its lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunHeartbeat {
    /// The run.
    pub run_id: String,
    /// The runner holding the lease.
    pub runner_id: String,
    /// Last completed optimizer step.
    pub step: u64,
    /// Lease renewed for this long.
    pub lease_ms: u64,
}

/// One logged training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct MetricPoint {
    /// Optimizer step.
    pub step: u64,
    /// Training loss (mean over the step's answer tokens).
    pub loss: f64,
    /// Learning rate used at this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Answer tokens in this step.
    pub tokens: u64,
    /// Throughput in tokens per second.
    pub tokens_per_s: f64,
    /// Wall time since the run started, in ms.
    pub elapsed_ms: u64,
}

/// Training metrics, batched every N steps to keep the ledger small.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct MetricsLogged {
    /// The run.
    pub run_id: String,
    /// The points, in step order.
    pub points: Vec<MetricPoint>,
}

/// A checkpoint's files were written, hashed and are now part of the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct CheckpointCommitted {
    /// The run.
    pub run_id: String,
    /// Content id (hex) of the checkpoint: the hash over its files.
    pub checkpoint_id: String,
    /// Optimizer step it was taken at.
    pub step: u64,
    /// Adapter, optimizer, RNG and data-position files with their hashes.
    pub files: Vec<FileDigest>,
    /// Training loss at that step.
    pub loss: Option<f64>,
    /// Where the checkpoint lives (`adapters/<run>/<step>` or a Modal volume path).
    pub location: String,
}

/// A run continued from a checkpoint after an interruption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunResumed {
    /// The run.
    pub run_id: String,
    /// The runner resuming it.
    pub runner_id: String,
    /// The checkpoint resumed from.
    pub checkpoint_id: String,
    /// Its step.
    pub step: u64,
    /// Why it resumed (lease expired, preempted, …).
    pub reason: String,
}

/// A run finished successfully.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunCompleted {
    /// The run.
    pub run_id: String,
    /// The final checkpoint.
    pub final_checkpoint_id: Option<String>,
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// Final training loss.
    pub final_loss: Option<f64>,
    /// Wall time of the run, in ms.
    pub duration_ms: u64,
}

/// A run stopped with an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunFailed {
    /// The run.
    pub run_id: String,
    /// The error, one line, saying what and where.
    pub reason: String,
    /// Step reached, if training had begun.
    pub step: Option<u64>,
    /// Whether trying again could succeed (preemption, lost lease).
    pub retryable: bool,
}

/// One attempt at a run died (its training process crashed or was killed)
/// and the runner released the run to be tried again. Not terminal: the
/// trainer gives the run up with RunFailed once too many attempts in a row
/// ended without a new checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunAttemptFailed {
    /// The run.
    pub run_id: String,
    /// The runner whose attempt died.
    pub runner_id: String,
    /// The attempt (RunClaimed::attempt).
    pub attempt: u32,
    /// How it died, one line (exit status and the last line it printed).
    pub reason: String,
    /// Last step reported before it died, if training had begun.
    pub step: Option<u64>,
}

/// A run was cancelled by a person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RunCancelled {
    /// The run.
    pub run_id: String,
    /// Why.
    pub reason: String,
}

/// An evaluation of a checkpoint (or of the base model) was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct EvalRequested {
    /// The eval's id.
    pub eval_id: String,
    /// The checkpoint, or `None` for the base model alone.
    pub checkpoint_id: Option<String>,
    /// The run the checkpoint belongs to.
    pub run_id: Option<String>,
    /// The base model.
    pub model_id: String,
    /// The pinned dataset.
    pub dataset_id: String,
    /// The split (usually `test`).
    pub split: String,
    /// At most this many examples.
    pub limit: Option<u64>,
}

/// A metric value with its bootstrap 95% confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct MetricValue {
    /// Point estimate.
    pub value: f64,
    /// Lower bound of the 95% interval.
    pub ci_low: Option<f64>,
    /// Upper bound of the 95% interval.
    pub ci_high: Option<f64>,
}

/// An evaluation finished; the evidence promotions are gated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct EvalScored {
    /// The eval's id.
    pub eval_id: String,
    /// The checkpoint, or `None` for the base model alone.
    pub checkpoint_id: Option<String>,
    /// The run the checkpoint belongs to.
    pub run_id: Option<String>,
    /// The base model.
    pub model_id: String,
    /// The pinned dataset.
    pub dataset_id: String,
    /// The split evaluated.
    pub split: String,
    /// Hash of the split's shards, so evidence can't be mixed up.
    pub split_sha256: Sha256Digest,
    /// Hash of the eval spec (metrics, normalization, decoding, limit).
    pub eval_spec_sha256: Sha256Digest,
    /// Examples scored.
    pub examples: u64,
    /// Headline metrics (`field_exact_match`, `json_valid_rate`, …).
    pub metrics: BTreeMap<String, MetricValue>,
    /// Metrics per slice (`doc_type=invoice`, `layout=invoice-b`, …).
    pub breakdown: BTreeMap<String, BTreeMap<String, MetricValue>>,
    /// Mean generation latency per document, in ms.
    pub latency_ms_mean: f64,
    /// Documents per second.
    pub throughput_docs_per_s: f64,
    /// The code that scored.
    pub code: CodeVersion,
    /// The device it ran on.
    pub device: DeviceInfo,
}

/// Somebody asked for a checkpoint to go to a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct PromotionRequested {
    /// The checkpoint (adapter) to promote.
    pub checkpoint_id: String,
    /// Target channel (`staging`, `production`, …).
    pub channel: String,
    /// Why, in the requester's words.
    pub reason: String,
}

/// The outcome of one promotion gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct GateResult {
    /// The gate as written in the recipe (e.g. `field_exact_match >= 0.94`).
    pub gate: String,
    /// The measured value, if there was evidence.
    pub actual: Option<f64>,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed or what it compared against.
    pub detail: String,
}

/// Who signed one piece of evidence a decision rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct EvidenceSigner {
    /// The evidence event's id.
    pub event_id: String,
    /// Its type (`EvalScored`, `PromotionRequested`, …).
    pub event_type: String,
    /// The registered name that signed it.
    pub actor: String,
    /// The signing key (NATS nkey).
    pub signer: String,
}

/// A checkpoint became the current adapter of a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct AdapterPromoted {
    /// The promoted checkpoint.
    pub checkpoint_id: String,
    /// The channel.
    pub channel: String,
    /// The adapter it replaced.
    pub previous_checkpoint_id: Option<String>,
    /// Every gate and its outcome.
    pub gates: Vec<GateResult>,
    /// Event ids (hyphenated UUIDs) of the evidence: EvalScored and the request.
    pub evidence: Vec<String>,
    /// Who signed each piece of evidence, in the order of `evidence`.
    #[serde(default)]
    pub signed_by: Vec<EvidenceSigner>,
    /// Why, from the request.
    pub reason: String,
}

/// A promotion was refused; lists every gate that failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct PromotionRejected {
    /// The checkpoint.
    pub checkpoint_id: String,
    /// The channel.
    pub channel: String,
    /// Every gate and its outcome (the failed ones have `passed: false`).
    pub gates: Vec<GateResult>,
    /// Event ids of the evidence considered.
    pub evidence: Vec<String>,
    /// Who signed each piece of evidence, in the order of `evidence`.
    #[serde(default)]
    pub signed_by: Vec<EvidenceSigner>,
    /// Summary of why.
    pub reason: String,
}

/// A channel went back to an earlier adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ChannelRolledBack {
    /// The channel.
    pub channel: String,
    /// The adapter taken out.
    pub from_checkpoint_id: Option<String>,
    /// The adapter put back (`None`: the channel is now empty).
    pub to_checkpoint_id: Option<String>,
    /// Why.
    pub reason: String,
}

/// A run's training was submitted to Modal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ModalJobSubmitted {
    /// The run.
    pub run_id: String,
    /// Modal app id.
    pub app_id: String,
    /// Modal function call id.
    pub function_call_id: String,
    /// GPU type (`A10G`, `A100-80GB`, `H100`).
    pub gpu: String,
    /// Digest of the container image.
    pub image_digest: String,
    /// sha256 of the rendered launcher app.
    pub launcher_sha256: Sha256Digest,
    /// The exact command that submitted it.
    pub command: Vec<String>,
}

/// Modal reported a change in a job's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ModalJobUpdated {
    /// The run.
    pub run_id: String,
    /// Modal function call id.
    pub function_call_id: String,
    /// `pending`, `running`, `succeeded`, `failed`, `preempted`, `timeout`, `cancelled`.
    pub state: String,
    /// Exit code, once it exited.
    pub exit_code: Option<i32>,
    /// The last lines of its log.
    pub log_tail: String,
    /// When Modal reported it.
    pub observed_at: Timestamp,
}

/// A key was registered (or its roles changed): the identity that signs
/// events as `name`. The genesis event of every ledger registers the home's
/// root key, signed by itself; later ones are signed by an admin (or, for a
/// key scoped to one run, by a dispatcher).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct KeyRegistered {
    /// The name events signed by this key carry as their actor.
    pub name: String,
    /// The Ed25519 public key as a NATS nkey (`U…`).
    pub public_key: String,
    /// Roles (`admin`, `operator`, `trainer`, `evaluator`, `promoter`, `dispatcher`).
    pub roles: Vec<String>,
    /// When set, the key may only append to `run/<run_scope>` (a Modal container's key).
    pub run_scope: Option<String>,
    /// When set, events the key signs after this instant are refused.
    pub expires_at: Option<Timestamp>,
    /// Why, in the registrant's words.
    pub note: String,
}

/// A key was revoked: events it signs from here on are refused; its
/// earlier ones stay valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct KeyRevoked {
    /// The key's registered name.
    pub name: String,
    /// The key (NATS nkey).
    pub public_key: String,
    /// Why.
    pub reason: String,
}

/// An admin set a channel's own policy, which binds every promotion and
/// rollback of that channel whatever recipe trained the candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ChannelPolicySet {
    /// The channel.
    pub channel: String,
    /// Names that may request a promotion to it (`None`: any operator).
    pub requesters: Option<Vec<String>>,
    /// Names that may request a rollback of it (`None`: the requesters).
    pub rollbackers: Option<Vec<String>>,
    /// Evaluator names whose scores count as evidence (`None`: any evaluator key).
    pub evaluators: Option<Vec<String>>,
    /// Gates every candidate must pass, besides its recipe's.
    pub gates: Vec<String>,
    /// Fewest examples an eval must have scored to count.
    pub min_examples: u64,
}

/// Somebody asked for a channel to go back to the adapter it held before;
/// the promoter applies the channel's policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RollbackRequested {
    /// The channel.
    pub channel: String,
    /// Why, in the requester's words.
    pub reason: String,
}

/// A rollback was refused (the requester may not, or there is nothing to
/// roll back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RollbackRejected {
    /// The channel.
    pub channel: String,
    /// Why, one line.
    pub reason: String,
}

macro_rules! catalog {
    ($( $(#[$doc:meta])* $name:ident => $kind:literal ),* $(,)?) => {
        /// The name of an event type, as stored in the envelope and used in NATS subjects.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(test, derive(Arbitrary))]
        pub enum EventType { $( $(#[$doc])* $name ),* }

        impl EventType {
            /// Every type in the catalog, in catalog order.
            pub const ALL: &'static [EventType] = &[ $(EventType::$name),* ];

            /// The stored name (e.g. `RunStarted`).
            pub fn as_str(&self) -> &'static str {
                match self { $(EventType::$name => stringify!($name)),* }
            }

            /// Looks a stored name up in the catalog.
            pub fn parse(name: &str) -> Option<EventType> {
                match name { $(stringify!($name) => Some(EventType::$name),)* _ => None }
            }

            /// The kind of stream this type belongs to (`run`, `channel`, …).
            pub fn stream_kind(&self) -> &'static str {
                match self { $(EventType::$name => $kind),* }
            }
        }

        /// A typed event: one of the catalog's payloads.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "payload")]
        #[cfg_attr(test, derive(Arbitrary))]
        pub enum Event { $( $(#[$doc])* $name($name) ),* }

        impl Event {
            /// This event's type.
            pub fn event_type(&self) -> EventType {
                match self { $(Event::$name(_) => EventType::$name),* }
            }

            /// Encodes the payload alone as a MessagePack map.
            pub fn encode_payload(&self) -> Result<Vec<u8>, crate::EventError> {
                let r = match self { $(Event::$name(p) => rmp_serde::to_vec_named(p)),* };
                r.map_err(|e| crate::EventError::Encode(e.to_string()))
            }

            /// Decodes a payload of a known type (MetricsLogged through a
            /// fast path when it has the ledger's own form).
            pub fn decode_payload(ty: EventType, bytes: &[u8]) -> Result<Event, crate::EventError> {
                if ty == EventType::MetricsLogged {
                    if let Some(m) = crate::fast::metrics_logged(bytes) {
                        return Ok(Event::MetricsLogged(m));
                    }
                }
                match ty {
                    $(EventType::$name => rmp_serde::from_slice::<$name>(bytes)
                        .map(Event::$name)
                        .map_err(|e| crate::EventError::Payload { event_type: ty.as_str(), reason: e.to_string() }),)*
                }
            }
        }

        /// A proptest strategy producing events of exactly one type.
        #[cfg(test)]
        pub(crate) fn arbitrary_of(ty: EventType) -> proptest::strategy::BoxedStrategy<Event> {
            use proptest::strategy::Strategy;
            match ty { $(EventType::$name => proptest::prelude::any::<$name>().prop_map(Event::$name).boxed()),* }
        }

        $(impl From<$name> for Event {
            fn from(p: $name) -> Event { Event::$name(p) }
        })*
    };
}

catalog! {
    /// See [`RecipeDeclared`].
    RecipeDeclared => "recipe",
    /// See [`DatasetPinned`].
    DatasetPinned => "dataset",
    /// See [`BaseModelPinned`].
    BaseModelPinned => "model",
    /// See [`RunRequested`].
    RunRequested => "run",
    /// See [`RunClaimed`].
    RunClaimed => "run",
    /// See [`RunStarted`].
    RunStarted => "run",
    /// See [`RunHeartbeat`].
    RunHeartbeat => "run",
    /// See [`MetricsLogged`].
    MetricsLogged => "run",
    /// See [`CheckpointCommitted`].
    CheckpointCommitted => "run",
    /// See [`RunResumed`].
    RunResumed => "run",
    /// See [`RunCompleted`].
    RunCompleted => "run",
    /// See [`RunFailed`].
    RunFailed => "run",
    /// See [`RunCancelled`].
    RunCancelled => "run",
    /// See [`RunAttemptFailed`].
    RunAttemptFailed => "run",
    /// See [`EvalRequested`].
    EvalRequested => "eval",
    /// See [`EvalScored`].
    EvalScored => "eval",
    /// See [`PromotionRequested`].
    PromotionRequested => "channel",
    /// See [`AdapterPromoted`].
    AdapterPromoted => "channel",
    /// See [`PromotionRejected`].
    PromotionRejected => "channel",
    /// See [`ChannelRolledBack`].
    ChannelRolledBack => "channel",
    /// See [`ModalJobSubmitted`].
    ModalJobSubmitted => "run",
    /// See [`ModalJobUpdated`].
    ModalJobUpdated => "run",
    /// See [`KeyRegistered`].
    KeyRegistered => "key",
    /// See [`KeyRevoked`].
    KeyRevoked => "key",
    /// See [`ChannelPolicySet`].
    ChannelPolicySet => "channel",
    /// See [`RollbackRequested`].
    RollbackRequested => "channel",
    /// See [`RollbackRejected`].
    RollbackRejected => "channel",
}

impl EventType {
    /// Whether events of this type can name files the home must hold
    /// ([`Event::stored_artifacts`]): lets a reader of many statements
    /// decode only those that can.
    pub fn names_artifacts(self) -> bool {
        matches!(self, EventType::CheckpointCommitted | EventType::RunStarted)
    }
}

impl Event {
    /// The files this event names that the ledger's home must hold in its
    /// artifact store, as (what it is, sha256): a checkpoint's files and a
    /// run's `run_config.json`. The record and these files travel together:
    /// `ledger serve` refuses an append naming one it cannot fetch, and
    /// `ledger verify --artifacts` proves each. Pinned inputs (a base
    /// model's files, dataset shards) stay where they were pinned.
    pub fn stored_artifacts(&self) -> Vec<(String, Sha256Digest)> {
        // Keep in step with `EventType::names_artifacts`.
        match self {
            Event::CheckpointCommitted(c) => c
                .files
                .iter()
                .map(|f| {
                    (
                        format!("checkpoint {} file {}", short_id(&c.checkpoint_id), f.path),
                        f.sha256,
                    )
                })
                .collect(),
            Event::RunStarted(r) => vec![(
                format!("run {} run_config.json", short_id(&r.run_id)),
                r.run_config_sha256,
            )],
            _ => Vec::new(),
        }
    }

    /// The stream this event belongs to by default: `run/<id>`, `recipe/<id>`,
    /// `dataset/<id>`, `model/<id>`, `eval/<id>`, `key/<name>` or
    /// `channel/<name>`.
    pub fn default_stream(&self) -> String {
        format!("{}/{}", self.event_type().stream_kind(), self.stream_id())
    }

    /// Whether `stream` is this event's own stream (without building it).
    pub fn in_own_stream(&self, stream: &str) -> bool {
        stream
            .strip_prefix(self.event_type().stream_kind())
            .and_then(|rest| rest.strip_prefix('/'))
            == Some(self.stream_id())
    }

    /// The id part of the event's own stream.
    fn stream_id(&self) -> &str {
        match self {
            Event::RecipeDeclared(p) => &p.recipe_id,
            Event::DatasetPinned(p) => &p.dataset_id,
            Event::BaseModelPinned(p) => &p.model_id,
            Event::RunRequested(p) => &p.run_id,
            Event::RunClaimed(p) => &p.run_id,
            Event::RunStarted(p) => &p.run_id,
            Event::RunHeartbeat(p) => &p.run_id,
            Event::MetricsLogged(p) => &p.run_id,
            Event::CheckpointCommitted(p) => &p.run_id,
            Event::RunResumed(p) => &p.run_id,
            Event::RunCompleted(p) => &p.run_id,
            Event::RunFailed(p) => &p.run_id,
            Event::RunCancelled(p) => &p.run_id,
            Event::RunAttemptFailed(p) => &p.run_id,
            Event::EvalRequested(p) => &p.eval_id,
            Event::EvalScored(p) => &p.eval_id,
            Event::PromotionRequested(p) => &p.channel,
            Event::AdapterPromoted(p) => &p.channel,
            Event::PromotionRejected(p) => &p.channel,
            Event::ChannelRolledBack(p) => &p.channel,
            Event::ModalJobSubmitted(p) => &p.run_id,
            Event::ModalJobUpdated(p) => &p.run_id,
            Event::KeyRegistered(p) => &p.name,
            Event::KeyRevoked(p) => &p.name,
            Event::ChannelPolicySet(p) => &p.channel,
            Event::RollbackRequested(p) => &p.channel,
            Event::RollbackRejected(p) => &p.channel,
        }
    }
}

/// The first 12 characters of an id, for messages.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
