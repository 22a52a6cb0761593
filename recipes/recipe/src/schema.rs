//! The recipe schema: every section, every key, its type, its default and its
//! env variable. Resolution walks this table, so nothing is defaulted silently.

/// The type a key's value must have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A string.
    Str,
    /// A finite number (TOML integers are accepted and widened).
    Float,
    /// A signed integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// An array of strings (comma-separated in an env variable).
    StrList,
    /// A string that must be one of the listed values.
    Choice(&'static [&'static str]),
}

impl Kind {
    /// How error messages name this type.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Str | Kind::Choice(_) => "a string",
            Kind::Float => "a number",
            Kind::Int => "an integer",
            Kind::Bool => "a boolean",
            Kind::StrList => "an array of strings",
        }
    }
}

/// The value a missing key resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    /// The key must be given.
    Required,
    /// `null`: the feature is off (written out as `null`).
    Null,
    /// A string default.
    Str(&'static str),
    /// A number default.
    Float(f64),
    /// An integer default.
    Int(i64),
    /// A boolean default.
    Bool(bool),
    /// A list default.
    List(&'static [&'static str]),
}

/// One key of a section.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The key as written in TOML (snake_case).
    pub key: &'static str,
    /// Its type.
    pub kind: Kind,
    /// What it resolves to when absent.
    pub default: Default,
    /// One line of documentation (shown by `recipe keys` and in the README).
    pub doc: &'static str,
}

const fn k(key: &'static str, kind: Kind, default: Default, doc: &'static str) -> KeySpec {
    KeySpec {
        key,
        kind,
        default,
        doc,
    }
}

/// The LoRA target regex of the public Idefics2 QLoRA tutorial.
pub const TUTORIAL_TARGET_MODULES: &str =
    ".*(text_model|modality_projection|perceiver_resampler).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$";

/// Metrics the eval runner computes; gates and `eval.metrics` may only name these.
pub const KNOWN_METRICS: &[&str] = &[
    "field_exact_match",
    "json_valid_rate",
    "field_f1",
    "doc_exact_match",
];

/// Top-level keys (outside any section).
pub const TOP: &[KeySpec] = &[
    k(
        "name",
        Kind::Str,
        Default::Required,
        "Human name of the recipe.",
    ),
    k("description", Kind::Str, Default::Str(""), "Free text."),
];

/// `[base_model]`.
pub const BASE_MODEL: &[KeySpec] = &[
    k(
        "source",
        Kind::Str,
        Default::Required,
        "`hf://ORG/NAME@REVISION` or a local directory.",
    ),
    k(
        "architecture",
        Kind::Choice(&["idefics2"]),
        Default::Str("idefics2"),
        "Model family.",
    ),
    k(
        "model_id",
        Kind::Str,
        Default::Null,
        "Expected content id of the pinned base model (null: whatever pins).",
    ),
];

/// `[quantization]`.
pub const QUANTIZATION: &[KeySpec] = &[
    k(
        "method",
        Kind::Choice(&["nf4", "none"]),
        Default::Str("nf4"),
        "Frozen base weights: 4-bit NF4 or unquantized.",
    ),
    k(
        "double_quant",
        Kind::Bool,
        Default::Bool(true),
        "Quantize the NF4 absmax values again (bitsandbytes double quant).",
    ),
    k("blocksize", Kind::Int, Default::Int(64), "NF4 block size."),
    k(
        "compute_dtype",
        Kind::Choice(&["f32", "bf16", "f16"]),
        Default::Str("bf16"),
        "Dtype of the linears' compute: on CUDA of activations and dequantized weights; on the CPU `bf16` means f32 activations with bf16 products (Intel AMX tiles, or AVX512-BF16) where the CPU has AVX512-BF16 (f32 otherwise) and `f16` is refused.",
    ),
    k(
        "skip_modules",
        Kind::StrList,
        Default::List(&["lm_head"]),
        "Linears kept unquantized.",
    ),
];

/// `[lora]`.
pub const LORA: &[KeySpec] = &[
    k("r", Kind::Int, Default::Int(8), "Rank."),
    k(
        "alpha",
        Kind::Float,
        Default::Float(8.0),
        "Scale numerator (scale = alpha / r).",
    ),
    k(
        "dropout",
        Kind::Float,
        Default::Float(0.1),
        "Dropout on the LoRA input, in [0, 1).",
    ),
    k(
        "target_modules",
        Kind::Str,
        Default::Str(TUTORIAL_TARGET_MODULES),
        "PEFT-style regex, full-matched against module names.",
    ),
    k(
        "init",
        Kind::Choice(&["gaussian", "kaiming"]),
        Default::Str("gaussian"),
        "Initialisation of lora_A (lora_B starts at zero).",
    ),
    k(
        "use_rslora",
        Kind::Bool,
        Default::Bool(false),
        "Scale by alpha / sqrt(r).",
    ),
    k(
        "bias",
        Kind::Choice(&["none"]),
        Default::Str("none"),
        "Trained biases.",
    ),
];

/// `[training]`.
pub const TRAINING: &[KeySpec] = &[
    k(
        "seed",
        Kind::Int,
        Default::Int(42),
        "Seeds init, dropout and data order.",
    ),
    k(
        "lr",
        Kind::Float,
        Default::Float(1e-4),
        "Peak learning rate (> 0).",
    ),
    k(
        "schedule",
        Kind::Choice(&["constant", "linear", "cosine"]),
        Default::Str("linear"),
        "Decay after warmup.",
    ),
    k(
        "warmup_steps",
        Kind::Int,
        Default::Int(50),
        "Linear warmup, in optimizer steps.",
    ),
    k(
        "max_steps",
        Kind::Int,
        Default::Int(0),
        "Optimizer steps; 0 means use epochs.",
    ),
    k(
        "epochs",
        Kind::Int,
        Default::Int(2),
        "Passes over the train split; 0 means use max_steps.",
    ),
    k(
        "micro_batch",
        Kind::Int,
        Default::Int(2),
        "Examples per forward pass.",
    ),
    k(
        "grad_accumulation",
        Kind::Int,
        Default::Int(8),
        "Micro-batches per optimizer step.",
    ),
    k(
        "grad_clip",
        Kind::Float,
        Default::Float(1.0),
        "Max global gradient norm; 0 disables clipping.",
    ),
    k(
        "weight_decay",
        Kind::Float,
        Default::Float(0.01),
        "AdamW decoupled weight decay.",
    ),
    k(
        "optimizer",
        Kind::Choice(&["adamw"]),
        Default::Str("adamw"),
        "Optimizer.",
    ),
    k(
        "adam_beta1",
        Kind::Float,
        Default::Float(0.9),
        "AdamW beta1.",
    ),
    k(
        "adam_beta2",
        Kind::Float,
        Default::Float(0.999),
        "AdamW beta2.",
    ),
    k(
        "adam_eps",
        Kind::Float,
        Default::Float(1e-8),
        "AdamW epsilon.",
    ),
    k(
        "checkpoint_every",
        Kind::Int,
        Default::Int(100),
        "Commit a checkpoint every N optimizer steps.",
    ),
    k(
        "keep_last",
        Kind::Int,
        Default::Int(3),
        "Checkpoints kept on disk (promoted ones are always kept).",
    ),
    k(
        "prompt",
        Kind::Str,
        Default::Str("Extract JSON."),
        "User prompt before the target JSON.",
    ),
    k(
        "image_longest_edge",
        Kind::Int,
        Default::Int(980),
        "Processor resize: longest image edge in pixels.",
    ),
    k(
        "image_splitting",
        Kind::Bool,
        Default::Bool(false),
        "Split images into 4 crops + the whole.",
    ),
    k(
        "max_length",
        Kind::Int,
        Default::Int(1024),
        "Max tokens per example (longer examples fail, never truncate).",
    ),
];

/// `[eval]`.
pub const EVAL: &[KeySpec] = &[
    k(
        "split",
        Kind::Choice(&["train", "validation", "test"]),
        Default::Str("validation"),
        "Split scored.",
    ),
    k(
        "metrics",
        Kind::StrList,
        Default::List(&["field_exact_match", "json_valid_rate"]),
        "Metrics computed (see KNOWN_METRICS).",
    ),
    k(
        "every_checkpoints",
        Kind::Int,
        Default::Int(1),
        "Score every Nth checkpoint; 0 scores only the final one.",
    ),
    k(
        "max_examples",
        Kind::Int,
        Default::Int(0),
        "Examples scored; 0 means the whole split.",
    ),
    k(
        "max_new_tokens",
        Kind::Int,
        Default::Int(512),
        "Greedy decoding budget.",
    ),
];

/// `[promotion.<channel>]` (any channel name).
pub const PROMOTION_CHANNEL: &[KeySpec] = &[
    k("gates", Kind::StrList, Default::List(&[]), "Conditions like `field_exact_match >= 0.94`; all must hold."),
    k("beat_production_by", Kind::Float, Default::Null, "Points (percent) the candidate must beat the current production adapter by on compare_metric; null: no comparison."),
    k("compare_metric", Kind::Str, Default::Str("field_exact_match"), "Metric of the production comparison."),
    k("actors", Kind::StrList, Default::Null, "Key names allowed to request a promotion to (or a rollback of) this channel; null: any operator."),
    k("evaluators", Kind::StrList, Default::Null, "Evaluator key names whose EvalScored counts as evidence; null: any key with the evaluator role."),
];

/// `[backend]`.
pub const BACKEND: &[KeySpec] = &[
    k(
        "kind",
        Kind::Choice(&["local", "modal"]),
        Default::Str("local"),
        "Where training runs.",
    ),
    k(
        "device",
        Kind::Choice(&["cpu", "cuda"]),
        Default::Str("cpu"),
        "Device of a local run (modal runs use cuda).",
    ),
    k(
        "gpu",
        Kind::Str,
        Default::Null,
        "Modal GPU type (e.g. `H100`); required for modal.",
    ),
    k(
        "timeout_s",
        Kind::Int,
        Default::Int(86400),
        "Modal per-attempt timeout in seconds.",
    ),
    k(
        "retries",
        Kind::Int,
        Default::Int(3),
        "Modal retries (0..=10).",
    ),
    k(
        "app_name",
        Kind::Str,
        Default::Str("foundry"),
        "Modal app name.",
    ),
    k(
        "checkpoint_volume",
        Kind::Str,
        Default::Str("foundry-checkpoints"),
        "Modal Volume for checkpoints.",
    ),
    k(
        "data_volume",
        Kind::Str,
        Default::Str("foundry-data"),
        "Modal Volume for datasets and base models.",
    ),
];

/// The fixed sections, in resolution order (promotion is handled apart).
pub const SECTIONS: &[(&str, &[KeySpec])] = &[
    ("base_model", BASE_MODEL),
    ("quantization", QUANTIZATION),
    ("lora", LORA),
    ("training", TRAINING),
    ("eval", EVAL),
    ("backend", BACKEND),
];

/// The env variable that overrides `section.key`: `FOUNDRY_<SECTION>_<KEY>`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("FOUNDRY_{}_{}", section.to_uppercase(), key.to_uppercase())
}
