//! The engines behind the runner interfaces.
//!
//! * [`QloraEngine`] implements [`foundry_runner::TrainingEngine`]: it checks
//!   the pinned base model's files, quantizes it to NF4 as the recipe says,
//!   attaches LoRA adapters, and trains on the pinned dataset's train split,
//!   writing PEFT-layout checkpoints that resume bit-identically.
//! * [`Idefics2Eval`] implements [`foundry_runner::EvalEngine`]: the same
//!   quantized base with the checkpoint's adapter answers the pinned split
//!   greedily, and foundry-eval scores the answers.
//! * The inputs of both (model directory, dataset rows, typed recipe) are
//!   resolved here from the pinned events, and re-verified by content.

#![warn(missing_docs)]

mod eval;
mod inputs;
pub mod memory;
mod source;
mod train;

pub use eval::{spec_for, spec_of, Idefics2Eval};
pub use inputs::{
    answer_text, model_dir, recipe_of, select_device, split_reader, split_rows, verify_model, Row,
};
pub use train::{dry_run, processor_for, quantized_pattern, train_config, DryRun, QloraEngine};

/// Why an engine refused or failed a job: one line, naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The recipe, model or dataset does not fit the job.
    #[error("{0}")]
    Invalid(String),
    /// A pinned input changed since it was pinned.
    #[error("{what} changed since it was pinned: {detail}")]
    Changed {
        /// The input.
        what: String,
        /// Which file and how.
        detail: String,
    },
    /// The model or trainer failed.
    #[error("{0}")]
    Model(String),
}

impl From<foundry_qlora::Error> for EngineError {
    fn from(e: foundry_qlora::Error) -> Self {
        EngineError::Model(e.to_string())
    }
}

impl From<foundry_idefics2::Error> for EngineError {
    fn from(e: foundry_idefics2::Error) -> Self {
        EngineError::Model(e.to_string())
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Model(e.to_string())
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, EngineError>;
