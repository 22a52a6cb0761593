//! Training recipes.
//!
//! A recipe is a TOML file (sections `base_model`, `quantization`, `lora`,
//! `training`, `eval`, `promotion.<channel>`, `backend`). [`resolve_str`] /
//! [`resolve_file`] apply `FOUNDRY_<SECTION>_<KEY>` env overrides, check every
//! key against [`schema`], write every default out, validate the values, and
//! return a [`Resolved`] recipe whose id is the sha256 of the canonical JSON of
//! the resolved config. Errors are one line: `FILE: KEY: REASON`.

mod canonical;
mod gates;
pub mod limits;
mod modules;
mod resolve;
pub mod schema;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use canonical::{canonical_json, sha256_hex};
pub use gates::{Gate, GateOp};
pub use modules::{idefics2_module_names, idefics2_module_names_from_dir};
pub use resolve::{env_docs, foundry_env, resolve_file, resolve_str};

/// Why a recipe could not be resolved. Every variant displays as one line
/// naming the file, and (for `Invalid`) the key, then the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML (or JSON, for config.json).
    #[error("{file}: {reason}")]
    Syntax {
        /// The file.
        file: String,
        /// Parser message with line and column.
        reason: String,
    },
    /// A key is unknown, mistyped, missing or out of range.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// Dotted key path, with the env variable when it came from one.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A recipe after resolution: the complete config, its id and its typed view.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// sha256 hex of [`canonical_json`] of `config`.
    pub id: String,
    /// Where it was read from (as given).
    pub source: String,
    /// The resolved config: every section and key, defaults written out.
    pub config: serde_json::Value,
    /// Every `FOUNDRY_*` variable present at resolution (applied or not).
    pub env: BTreeMap<String, String>,
    /// Typed view of `config`.
    pub recipe: Recipe,
}

impl Resolved {
    /// The `run_config.json` written beside a run's artifacts.
    pub fn run_config_json(&self) -> String {
        let v = serde_json::json!({
            "recipe_id": self.id,
            "source": self.source,
            "resolved_config": self.config,
            "env": self.env,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// Typed resolved recipe (mirrors the resolved JSON one to one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version written by resolution.
    pub format: u32,
    /// Human name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `[base_model]`.
    pub base_model: BaseModel,
    /// `[quantization]`.
    pub quantization: Quantization,
    /// `[lora]`.
    pub lora: Lora,
    /// `[training]`.
    pub training: Training,
    /// `[eval]`.
    pub eval: Eval,
    /// `[promotion.<channel>]`, by channel name.
    pub promotion: BTreeMap<String, Channel>,
    /// `[backend]`.
    pub backend: Backend,
}

/// `[base_model]`: what to fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// `hf://ORG/NAME@REVISION` or a local dir.
    pub source: String,
    /// Model family (`idefics2`).
    pub architecture: String,
    /// Expected content id of the pinned model.
    pub model_id: Option<String>,
}

/// `[quantization]` of the frozen base weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// `nf4` or `none`.
    pub method: String,
    /// bitsandbytes double quant.
    pub double_quant: bool,
    /// NF4 block size.
    pub blocksize: i64,
    /// `f32`, `bf16` or `f16`.
    pub compute_dtype: String,
    /// Linears left unquantized.
    pub skip_modules: Vec<String>,
}

/// `[lora]` adapter shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    /// Rank.
    pub r: i64,
    /// Alpha.
    pub alpha: f64,
    /// Dropout.
    pub dropout: f64,
    /// PEFT regex (full match).
    pub target_modules: String,
    /// `gaussian` or `kaiming`.
    pub init: String,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// Trained biases (`none`).
    pub bias: String,
}

/// `[training]` loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// RNG seed.
    pub seed: i64,
    /// Peak learning rate.
    pub lr: f64,
    /// `constant`, `linear` or `cosine`.
    pub schedule: String,
    /// Warmup steps.
    pub warmup_steps: i64,
    /// Optimizer steps (0: epochs decide).
    pub max_steps: i64,
    /// Epochs (0: max_steps decides).
    pub epochs: i64,
    /// Examples per forward.
    pub micro_batch: i64,
    /// Micro-batches per step.
    pub grad_accumulation: i64,
    /// Max gradient norm (0: off).
    pub grad_clip: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// `adamw`.
    pub optimizer: String,
    /// AdamW beta1.
    pub adam_beta1: f64,
    /// AdamW beta2.
    pub adam_beta2: f64,
    /// AdamW epsilon.
    pub adam_eps: f64,
    /// Checkpoint period in steps.
    pub checkpoint_every: i64,
    /// Checkpoints kept.
    pub keep_last: i64,
    /// Prompt text.
    pub prompt: String,
    /// Processor longest edge.
    pub image_longest_edge: i64,
    /// Image splitting.
    pub image_splitting: bool,
    /// Max tokens per example.
    pub max_length: i64,
}

/// `[eval]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Split scored.
    pub split: String,
    /// Metrics computed.
    pub metrics: Vec<String>,
    /// Score every Nth checkpoint.
    pub every_checkpoints: i64,
    /// Examples scored (0: all).
    pub max_examples: i64,
    /// Decoding budget.
    pub max_new_tokens: i64,
}

/// `[promotion.<channel>]` policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Gate expressions (validated; see [`Channel::parsed_gates`]).
    pub gates: Vec<String>,
    /// Points to beat the production adapter by, if required.
    pub beat_production_by: Option<f64>,
    /// Metric of that comparison.
    pub compare_metric: String,
    /// Who may request a promotion to (or a rollback of) this channel:
    /// registered key names (None: any operator).
    pub actors: Option<Vec<String>>,
    /// Evaluator key names whose scores count as evidence (None: any key
    /// holding the evaluator role).
    #[serde(default)]
    pub evaluators: Option<Vec<String>>,
}

impl Channel {
    /// The gates, parsed (they were validated at resolution).
    pub fn parsed_gates(&self) -> Vec<Gate> {
        self.gates.iter().filter_map(|g| g.parse().ok()).collect()
    }

    /// Whether `actor` may promote to this channel.
    pub fn allows(&self, actor: &str) -> bool {
        self.actors
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == actor))
    }

    /// Whether an eval signed by `evaluator` counts as evidence here.
    pub fn trusts(&self, evaluator: &str) -> bool {
        self.evaluators
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == evaluator))
    }
}

/// `[backend]`: where the run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `local` or `modal`.
    pub kind: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Modal GPU type.
    pub gpu: Option<String>,
    /// Modal timeout per attempt.
    pub timeout_s: i64,
    /// Modal retries.
    pub retries: i64,
    /// Modal app.
    pub app_name: String,
    /// Checkpoint volume.
    pub checkpoint_volume: String,
    /// Data volume.
    pub data_volume: String,
}
