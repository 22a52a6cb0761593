//! The eval engine: an Idefics2 base (quantized as the recipe trained it),
//! with the checkpoint's adapter, answering a pinned split greedily, scored by
//! foundry-eval.

use candle_core::DType;
use foundry_eval::{EvalExample, EvalIdentity, EvalSpec, ModelUnderTest};
use foundry_events::Sha256Digest;
use foundry_runner::{EvalEngine, EvalJob, EvalOutcome, EvalSpecs};

use crate::inputs::{model_dir, recipe_of, select_device, split_rows, verify_model};
use crate::train::{processor_for, quantized_linears};
use crate::{EngineError, Result};

/// Scores checkpoints (or the base alone) on a pinned split.
#[derive(Debug, Default, Clone)]
pub struct Idefics2Eval;

impl Idefics2Eval {
    /// The engine.
    pub fn new() -> Self {
        Idefics2Eval
    }
}

/// The eval spec of a job: the recipe's split, limit and generation length,
/// everything else the harness's documented defaults.
pub fn spec_of(job: &EvalJob) -> Result<EvalSpec> {
    spec_for(job.config.as_ref(), &job.split, job.limit)
}

/// The eval spec for a recipe's resolved `config` (if any), a split and a
/// limit: what the evaluator scores with and the promoter expects evidence
/// to carry.
pub fn spec_for(
    config: Option<&serde_json::Value>,
    split: &str,
    limit: Option<u64>,
) -> Result<EvalSpec> {
    let mut spec = EvalSpec {
        split: split.to_string(),
        limit,
        ..EvalSpec::default()
    };
    if let Some(n) = config.and_then(|c| c["eval"]["max_new_tokens"].as_u64()) {
        spec.decoding.max_new_tokens = n as u32;
    }
    spec.bootstrap.resamples = 200;
    spec.validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok(spec)
}

fn run(job: &EvalJob) -> Result<EvalOutcome> {
    let spec = spec_of(job)?;
    let dir = model_dir(&job.model)?;
    verify_model(&dir, &job.model)?;
    let recipe = job.config.as_ref().map(recipe_of).transpose()?;
    let device_name = recipe
        .as_ref()
        .map(|r| r.backend.device.clone())
        .unwrap_or_else(|| "cpu".into());
    let (device, device_info) = select_device(&device_name)?;
    let mut model = foundry_qlora::export::load_model_dir(&dir, DType::F32, &device)?;
    let processor = match &recipe {
        Some(r) => {
            if let Some(q) = quantized_linears(&mut model, r)? {
                foundry_qlora::quantize_model(&mut model, &q)?;
            }
            processor_for(&dir, r)?
        }
        None => foundry_idefics2::processor::Processor::from_dir(&dir)?,
    };
    if let Some((_, adapter_dir)) = &job.checkpoint {
        foundry_qlora::lora::load_adapter_into(&mut model, adapter_dir)?;
    }
    let prompt = recipe
        .as_ref()
        .map(|r| r.training.prompt.clone())
        .unwrap_or_else(|| "Extract JSON.".into());
    // Rows are read one at a time as the model gets to them: only the rows
    // (and shards) the eval uses are read.
    let rows = split_rows(&job.dataset, &job.split, job.limit.map(|l| l as usize))?;
    let examples = rows.enumerate().map(|(i, r)| {
        let r = r.map_err(|e| foundry_eval::EvalError::Input(e.to_string()))?;
        EvalExample::from_image_bytes(
            format!("{}#{i}", job.split),
            &r.image,
            prompt.clone(),
            r.doc_type,
            r.layout,
            r.target,
        )
    });
    let under_test = ModelUnderTest { model, processor };
    let report = under_test
        .evaluate(examples, &spec, |_| {})
        .map_err(|e| EngineError::Model(e.to_string()))?;
    Ok(report.to_event(
        &spec,
        EvalIdentity {
            eval_id: job.eval_id.clone(),
            checkpoint_id: job
                .checkpoint
                .as_ref()
                .map(|(c, _)| c.checkpoint_id.clone()),
            run_id: job.run_id.clone(),
            model_id: job.model.model_id.clone(),
            dataset_id: job.dataset.dataset_id.clone(),
            split_sha256: job.dataset.split_sha256(&job.split),
            code: foundry_runner::code_version(),
            device: device_info,
        },
    ))
}

impl EvalSpecs for Idefics2Eval {
    fn spec_sha256(
        &self,
        config: Option<&serde_json::Value>,
        split: &str,
        limit: Option<u64>,
    ) -> std::result::Result<Sha256Digest, String> {
        spec_for(config, split, limit)
            .map(|s| s.sha256())
            .map_err(|e| e.to_string())
    }
}

impl EvalEngine for Idefics2Eval {
    fn evaluate(
        &self,
        job: &EvalJob,
    ) -> std::result::Result<EvalOutcome, foundry_runner::EngineFailure> {
        run(job).map_err(|e| foundry_runner::EngineFailure::fatal(e.to_string()))
    }
}
