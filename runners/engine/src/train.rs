//! The QLoRA training engine.

use std::path::Path;
use std::time::Instant;

use candle_core::DType;
use foundry_events::MetricPoint;
use foundry_idefics2::linear::LinearVisitor;
use foundry_idefics2::processor::Processor;
use foundry_idefics2::{Idefics2, Idefics2Config};
use foundry_kernels::Products;
use foundry_qlora::data::ExampleSource;
use foundry_qlora::lora::{LoraConfig, LoraInit};
use foundry_qlora::train::{Flow, Schedule, TrainConfig, Trainer};
use foundry_recipes::Recipe;
use foundry_runner::{
    CheckpointRecord, Control, EngineFailure, TrainJob, TrainSink, TrainSummary, TrainingEngine,
};

use crate::inputs::{model_dir, recipe_of, select_device, verify_model};
use crate::source::{Prefetched, RowSource};
use crate::{EngineError, Result};

/// The regex (PEFT `fullmatch`) of the linears the recipe holds in NF4: every linear but those
/// named in `quantization.skip_modules`, as bitsandbytes' `llm_int8_skip_modules` does (a linear
/// stays dense when a skip entry is its name or a dotted run of its name's components:
/// `lm_head`, `vision_model`, `text_model.layers.0`). None when the recipe does not quantize.
pub(crate) fn quantized_linears(model: &mut Idefics2, recipe: &Recipe) -> Result<Option<String>> {
    let names = model.linear_names()?;
    Ok(quantized_pattern(&names, recipe))
}

/// [`quantized_linears`] over a list of linear names (the model need not be loaded).
pub fn quantized_pattern(names: &[String], recipe: &Recipe) -> Option<String> {
    if recipe.quantization.method != "nf4" {
        return None;
    }
    let skip = &recipe.quantization.skip_modules;
    let kept: Vec<String> = names
        .iter()
        .filter(|name| {
            let dotted = format!(".{name}.");
            !skip.iter().any(|s| dotted.contains(&format!(".{s}.")))
        })
        .map(|name| regex::escape(name))
        .collect();
    // An empty alternation would match the empty name only, i.e. nothing.
    Some(format!("(?:{})", kept.join("|")))
}

/// QLoRA fine-tuning of an Idefics2 base on a pinned dataset.
#[derive(Debug, Default, Clone)]
pub struct QloraEngine;

impl QloraEngine {
    /// The engine.
    pub fn new() -> Self {
        QloraEngine
    }
}

/// The trainer's config from a recipe: every value comes from the resolved
/// config, nothing is defaulted here.
pub fn train_config(recipe: &Recipe, train_rows: usize, base: &str) -> Result<TrainConfig> {
    let t = &recipe.training;
    let pos = |v: i64, key: &str| -> Result<u64> {
        u64::try_from(v)
            .map_err(|_| EngineError::Invalid(format!("training.{key} = {v} is negative")))
    };
    let micro = pos(t.micro_batch, "micro_batch")?.max(1);
    let accum = pos(t.grad_accumulation, "grad_accumulation")?.max(1);
    let per_step = micro * accum;
    let total_steps = if t.max_steps > 0 {
        pos(t.max_steps, "max_steps")?
    } else {
        let epochs = pos(t.epochs, "epochs")?;
        epochs * (train_rows as u64).div_ceil(per_step)
    };
    let schedule = match t.schedule.as_str() {
        "cosine" => Schedule::Cosine,
        "linear" => Schedule::Linear,
        "constant" => Schedule::Constant,
        other => {
            return Err(EngineError::Invalid(format!(
                "training.schedule = {other:?} is not supported (cosine, linear, constant)"
            )))
        }
    };
    let init = match recipe.lora.init.as_str() {
        "gaussian" => LoraInit::Gaussian,
        "kaiming" | "default" | "true" => LoraInit::Kaiming,
        other => {
            return Err(EngineError::Invalid(format!(
                "lora.init = {other:?} is not supported (kaiming, gaussian)"
            )))
        }
    };
    let config = TrainConfig {
        seed: pos(t.seed, "seed")?,
        lr: t.lr,
        weight_decay: t.weight_decay,
        beta1: 0.9,
        beta2: 0.999,
        eps: t.adam_eps,
        max_grad_norm: (t.grad_clip > 0.0).then_some(t.grad_clip),
        warmup_steps: pos(t.warmup_steps, "warmup_steps")?,
        schedule,
        total_steps,
        batch_size: micro as usize,
        grad_accum: accum as usize,
        save_every: pos(t.checkpoint_every, "checkpoint_every")?,
        keep_last: pos(t.keep_last, "keep_last")? as usize,
        lora: LoraConfig {
            r: pos(recipe.lora.r, "lora.r")? as usize,
            lora_alpha: recipe.lora.alpha,
            lora_dropout: recipe.lora.dropout as f32,
            target_modules: recipe.lora.target_modules.clone(),
            init,
            use_rslora: recipe.lora.use_rslora,
            base_model_name_or_path: Some(base.to_string()),
            revision: None,
        },
    };
    config.validate()?;
    Ok(config)
}

/// The processor of a model directory, with the recipe's image size.
pub fn processor_for(dir: &Path, recipe: &Recipe) -> Result<Processor> {
    let mut p = Processor::from_dir(dir)?;
    let edge = usize::try_from(recipe.training.image_longest_edge)
        .map_err(|_| EngineError::Invalid("training.image_longest_edge is negative".into()))?;
    if edge > 0 {
        p.image.size.longest_edge = Some(edge);
        if let Some(s) = p.image.size.shortest_edge {
            p.image.size.shortest_edge = Some(s.min(edge));
        }
    }
    p.image.do_image_splitting = recipe.training.image_splitting;
    Ok(p)
}

struct Prepared {
    recipe: Recipe,
    dir: std::path::PathBuf,
    config: Idefics2Config,
    device: candle_core::Device,
    device_info: foundry_events::DeviceInfo,
    products: Products,
    train_rows: usize,
}

fn prepare(job: &TrainJob) -> Result<Prepared> {
    let recipe = recipe_of(&job.config)?;
    // A Modal container is told its device by its launcher.
    let device_name = std::env::var("FOUNDRY_TRAIN_DEVICE")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| recipe.backend.device.clone());
    let (device, mut device_info) = select_device(&device_name)?;
    let products = products_of(&recipe, &device)?;
    if products == Products::Bf16 {
        device_info.dtype = "f32, bf16 products".into();
    }
    if recipe.quantization.method != "nf4" && recipe.quantization.method != "none" {
        return Err(EngineError::Invalid(format!(
            "quantization.method = {:?} is not supported (nf4, none)",
            recipe.quantization.method
        )));
    }
    let dir = model_dir(&job.model)?;
    verify_model(&dir, &job.model)?;
    let modules = foundry_recipes::idefics2_module_names_from_dir(&dir)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    let re = regex_full(&recipe.lora.target_modules)?;
    if !modules.iter().any(|m| re.is_match(m)) {
        return Err(EngineError::Invalid(format!(
            "lora.target_modules {:?} matches no module of base model {}",
            recipe.lora.target_modules, job.model.model_id
        )));
    }
    let config = Idefics2Config::from_file(&dir.join("config.json"))?;
    check_rank(&recipe, &config, &re, &job.model.model_id)?;
    let train_rows = job
        .dataset
        .splits
        .get("train")
        .map(|s| s.rows as usize)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            EngineError::Invalid(format!(
                "dataset {} has no train rows",
                job.dataset.dataset_id
            ))
        })?;
    Ok(Prepared {
        recipe,
        dir,
        config,
        device,
        device_info,
        products,
        train_rows,
    })
}

/// The precision of the linears' products from `quantization.compute_dtype`: on the CPU, `bf16`
/// means f32 activations with bf16 products (as PyTorch's bf16 autocast computes a linear) where
/// the CPU has AVX512-BF16, and plain f32 where it has not (the RunStarted event records which);
/// `f16` has no CPU path and is refused.
fn products_of(recipe: &Recipe, device: &candle_core::Device) -> Result<Products> {
    match recipe.quantization.compute_dtype.as_str() {
        "f32" => Ok(Products::F32),
        "bf16" if device.is_cpu() => Ok(Products::bf16_if_available(true)),
        "bf16" => Ok(Products::F32),
        other => Err(EngineError::Invalid(format!(
            "quantization.compute_dtype = {other:?} is not supported on {} (f32, bf16)",
            foundry_qlora::device::device_name(device)
        ))),
    }
}

/// Sets the products' precision of every linear of `model`.
fn set_products(model: &mut Idefics2, products: Products) -> Result<()> {
    model.visit_linears(&mut |l| l.set_products(products))?;
    Ok(())
}

fn regex_full(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| EngineError::Invalid(format!("lora.target_modules: {e}")))
}

/// `lora.r` must not exceed min(in, out) of any linear it adapts: a larger rank adds no
/// expressive power (the update's rank is bounded by the smaller side) and only costs memory,
/// and a hostile rank is how a recipe asks for terabytes.
fn check_rank(
    recipe: &Recipe,
    config: &Idefics2Config,
    targets: &regex::Regex,
    model_id: &str,
) -> Result<()> {
    let r = recipe.lora.r;
    let narrowest = foundry_qlora::plan::linear_shapes(config)
        .into_iter()
        .filter(|l| targets.is_match(&l.name))
        .min_by_key(|l| l.out.min(l.inp));
    if let Some(l) = narrowest {
        let side = l.out.min(l.inp);
        if r < 1 || r as u64 > side as u64 {
            return Err(EngineError::Invalid(format!(
                "lora.r = {r} must be between 1 and {side}, min(in, out) of {} ({} x {}) in base model {model_id}",
                l.name, l.out, l.inp
            )));
        }
    }
    Ok(())
}

/// The train split's rows (the first `limit`, or all), encoded on demand as training does.
fn row_source<'a>(
    job: &'a TrainJob,
    recipe: &Recipe,
    processor: &'a Processor,
    limit: Option<usize>,
) -> Result<RowSource<'a>> {
    RowSource::open(
        &job.dataset,
        "train",
        processor,
        recipe.training.prompt.clone(),
        recipe.training.max_length.max(0) as usize,
        limit,
    )
}

/// Examples prepared ahead of the step: the next optimizer step's.
fn prefetch_depth(config: &TrainConfig) -> usize {
    config.batch_size * config.grad_accum
}

/// The plan of the full run, from a sample of the train rows encoded as training would
/// (token counts scaled to the split; with `training.max_length` set, every example is taken to
/// be that long, the worst case training admits).
fn plan_run(
    p: &Prepared,
    config: &TrainConfig,
    sample: &RowSource,
) -> Result<(foundry_qlora::plan::Plan, usize)> {
    let mut stats = foundry_qlora::plan::DatasetStats::from_source(sample)?;
    let sampled = stats.examples;
    // Scale the sample's token counts to the whole split.
    let scale = p.train_rows as f64 / sampled.max(1) as f64;
    stats.tokens = (stats.tokens as f64 * scale).round() as u64;
    stats.answer_tokens = (stats.answer_tokens as f64 * scale).round() as u64;
    stats.examples = p.train_rows;
    if p.recipe.training.max_length > 0 {
        stats.max_tokens = stats.max_tokens.max(p.recipe.training.max_length as usize);
    }
    let names: Vec<String> = foundry_qlora::plan::linear_shapes(&p.config)
        .into_iter()
        .map(|l| l.name)
        .collect();
    let quantize = quantized_pattern(&names, &p.recipe);
    let plan =
        foundry_qlora::plan::plan(config, &p.config, quantize.as_deref(), &stats, DType::F32)?;
    Ok((plan, sampled))
}

/// Refuses a run whose estimated peak memory exceeds what this process may use, with the
/// numbers, so that it ends in RunFailed instead of an allocation failure that aborts the
/// process. Only host memory is checked (CPU training); a CUDA device's memory is its own.
fn check_memory(plan: &foundry_qlora::plan::Plan, device: &candle_core::Device) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    let Some(budget) = crate::memory::available().map_err(EngineError::Invalid)? else {
        return Ok(());
    };
    let m = &plan.memory;
    if m.total > budget.bytes {
        return Err(EngineError::Invalid(format!(
            "the run needs an estimated {} (weights {}, LoRA and optimizer {}, activations {}) but {} is available ({}); lower training.micro_batch, training.max_length, training.image_longest_edge or lora.r",
            crate::memory::human(m.total),
            crate::memory::human(m.nf4_weights + m.dense_weights),
            crate::memory::human(m.lora_params + m.lora_grads + m.adam_moments),
            crate::memory::human(m.activations),
            crate::memory::human(budget.bytes),
            budget.source
        )));
    }
    Ok(())
}

/// Train rows sampled to plan a run.
const PLAN_SAMPLE: usize = 16;

fn run(job: &TrainJob, sink: &mut dyn TrainSink) -> Result<TrainSummary> {
    let p = prepare(job)?;
    let config = train_config(&p.recipe, p.train_rows, &job.model.source)?;
    let mut model = foundry_qlora::export::load_model_dir(&p.dir, DType::F32, &p.device)?;
    if let Some(q) = quantized_linears(&mut model, &p.recipe)? {
        foundry_qlora::quantize_model(&mut model, &q)?;
    }
    set_products(&mut model, p.products)?;
    let processor = processor_for(&p.dir, &p.recipe)?;
    let source = row_source(job, &p.recipe, &processor, None)?;
    // Fail fast: every shard checked against its pin, and the first example encoded, before
    // step 1 rather than at step N.
    source.check_all()?;
    source.get(0)?;
    let mut trainer = match &job.resume_from {
        Some((_, dir)) => Trainer::resume(model, config.clone(), dir)?,
        None => Trainer::new(model, config.clone())?,
    };
    // qlora's loop; the sink sees its steps and checkpoints.
    let started = Instant::now();
    let last_loss = std::cell::Cell::new(None);
    let flow = |c: Control| match c {
        Control::Continue => Flow::Continue,
        Control::Stop => Flow::Stop,
    };
    let sink = std::cell::RefCell::new(sink);
    let (prefetched, work) = Prefetched::new(&source, prefetch_depth(&config));
    let end = std::thread::scope(|s| {
        s.spawn(|| prefetched.work(work));
        let end = trainer.run(
            &prefetched,
            &job.out_dir,
            &mut |m, took| {
                last_loss.set(Some(m.loss));
                flow(sink.borrow_mut().on_step(MetricPoint {
                    step: m.step,
                    loss: m.loss,
                    lr: m.lr,
                    grad_norm: m.grad_norm,
                    tokens: m.tokens as u64,
                    tokens_per_s: m.tokens as f64 / took.as_secs_f64().max(1e-9),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                }))
            },
            &mut |info| {
                flow(sink.borrow_mut().on_checkpoint(CheckpointRecord {
                    step: info.step,
                    dir: info.dir.clone(),
                    loss: last_loss.get(),
                }))
            },
        );
        prefetched.close();
        end
    })?;
    Ok(TrainSummary {
        steps: end.steps,
        final_loss: end.last_loss,
        stopped: end.stopped,
    })
}

/// What `ledger run start --dry-run` reports: the plan of the full run and
/// two real optimizer steps on a few examples.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Steps, examples, tokens and the memory estimate of the full run.
    pub plan: foundry_qlora::plan::Plan,
    /// The two steps actually taken (nothing is written outside a temp dir).
    pub report: foundry_qlora::plan::DryRunReport,
    /// Where it would train.
    pub device: foundry_events::DeviceInfo,
    /// Train examples tokenized to estimate the split's token counts.
    pub sampled: usize,
}

/// Validates a job exactly as training would (recipe, pinned model files,
/// device, target modules, dataset), plans the full run from a sample of the
/// train split, and takes two optimizer steps on a few examples. Touches no
/// ledger and leaves no files.
pub fn dry_run(job: &TrainJob, sample: usize) -> Result<DryRun> {
    let p = prepare(job)?;
    let config = train_config(&p.recipe, p.train_rows, &job.model.source)?;
    let processor = processor_for(&p.dir, &p.recipe)?;
    let source = row_source(job, &p.recipe, &processor, Some(sample.max(1)))?;
    let (plan, sampled) = plan_run(&p, &config, &source)?;
    check_memory(&plan, &p.device)?;
    let mut model = foundry_qlora::export::load_model_dir(&p.dir, DType::F32, &p.device)?;
    if let Some(q) = quantized_linears(&mut model, &p.recipe)? {
        foundry_qlora::quantize_model(&mut model, &q)?;
    }
    set_products(&mut model, p.products)?;
    let report = foundry_qlora::plan::dry_run(model, &config, &source, 4)?;
    Ok(DryRun {
        plan,
        report,
        device: p.device_info,
        sampled,
    })
}

impl TrainingEngine for QloraEngine {
    fn prepare(
        &self,
        job: &TrainJob,
    ) -> std::result::Result<foundry_runner::TrainPlan, EngineFailure> {
        let p = prepare(job).map_err(|e| e.to_string())?;
        let config =
            train_config(&p.recipe, p.train_rows, &job.model.source).map_err(|e| e.to_string())?;
        let processor = processor_for(&p.dir, &p.recipe).map_err(|e| e.to_string())?;
        let sample =
            row_source(job, &p.recipe, &processor, Some(PLAN_SAMPLE)).map_err(|e| e.to_string())?;
        let (plan, _) = plan_run(&p, &config, &sample).map_err(|e| e.to_string())?;
        check_memory(&plan, &p.device).map_err(|e| e.to_string())?;
        Ok(foundry_runner::TrainPlan {
            total_steps: config.total_steps,
            device: p.device_info,
            data_order: Some(crate::source::data_order(prefetch_depth(&config))),
        })
    }

    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> std::result::Result<TrainSummary, EngineFailure> {
        run(job, sink).map_err(|e| EngineFailure::fatal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn repo(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    fn recipe_with(method: &str, skip: &str) -> Recipe {
        let overrides: BTreeMap<String, String> = [
            ("FOUNDRY_QUANTIZATION_METHOD", method),
            ("FOUNDRY_QUANTIZATION_SKIP_MODULES", skip),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        foundry_recipes::resolve_file(&repo("recipes/tiny-cpu.toml"), &overrides, None)
            .unwrap()
            .recipe
    }

    #[test]
    fn compute_dtype_sets_the_products_of_the_linears() {
        let with = |dtype: &str| {
            let overrides: BTreeMap<String, String> = [(
                "FOUNDRY_QUANTIZATION_COMPUTE_DTYPE".to_string(),
                dtype.to_string(),
            )]
            .into();
            foundry_recipes::resolve_file(&repo("recipes/tiny-cpu.toml"), &overrides, None)
                .unwrap()
                .recipe
        };
        let cpu = candle_core::Device::Cpu;
        assert_eq!(products_of(&with("f32"), &cpu).unwrap(), Products::F32);
        let bf16 = products_of(&with("bf16"), &cpu).unwrap();
        let expected = if foundry_kernels::bf16gemm::available() {
            Products::Bf16
        } else {
            Products::F32
        };
        assert_eq!(bf16, expected);
        let e = products_of(&with("f16"), &cpu).unwrap_err().to_string();
        assert!(
            e.contains("compute_dtype") && e.contains("f16") && e.contains("cpu"),
            "{e}"
        );
        // Every linear of the model takes the setting.
        let dir = repo("ml/idefics2/fixtures/tiny");
        let mut model = Idefics2::load_dir(&dir, DType::F32, &cpu).unwrap();
        set_products(&mut model, bf16).unwrap();
        let mut all = true;
        model
            .visit_linears(&mut |l| {
                all &= l.products() == bf16;
                Ok(())
            })
            .unwrap();
        assert!(all);
    }

    #[test]
    fn skip_modules_keep_those_linears_dense() {
        let dir = repo("ml/idefics2/fixtures/tiny");
        let mut model = Idefics2::load_dir(&dir, DType::F32, &candle_core::Device::Cpu).unwrap();
        let names = model.linear_names().unwrap();
        let re = |p: &str| foundry_idefics2::linear::full_match_regex(p).unwrap();
        let default = quantized_linears(&mut model, &recipe_with("nf4", "lm_head"))
            .unwrap()
            .unwrap();
        let q: Vec<&String> = names.iter().filter(|n| re(&default).is_match(n)).collect();
        let not_head = names.iter().filter(|n| *n != "lm_head").count();
        assert_eq!(q.len(), not_head, "all but lm_head");
        assert!(!q.iter().any(|n| *n == "lm_head"));
        let vision = quantized_linears(&mut model, &recipe_with("nf4", "lm_head,vision_model"))
            .unwrap()
            .unwrap();
        let q: Vec<&String> = names.iter().filter(|n| re(&vision).is_match(n)).collect();
        assert!(!q.is_empty());
        assert!(q.iter().all(|n| !n.contains(".vision_model.")), "{q:?}");
        assert!(names
            .iter()
            .filter(|n| n.contains(".vision_model."))
            .all(|n| !re(&vision).is_match(n)));
        assert_eq!(
            quantized_linears(&mut model, &recipe_with("none", "lm_head")).unwrap(),
            None
        );
    }

    #[test]
    fn image_limits_agree_between_pinning_and_the_processor() {
        use foundry_idefics2::processor as proc;
        assert_eq!(foundry_datasets::MAX_IMAGE_BYTES, proc::MAX_IMAGE_BYTES);
        assert_eq!(foundry_datasets::MAX_IMAGE_SIDE, proc::MAX_IMAGE_SIDE);
        assert_eq!(
            foundry_datasets::MAX_IMAGE_DECODED_BYTES,
            proc::MAX_IMAGE_DECODED_BYTES
        );
    }

    #[test]
    fn lora_rank_is_bounded_by_the_narrowest_targeted_linear() {
        let dir = repo("ml/idefics2/fixtures/tiny");
        let config = Idefics2Config::from_file(&dir.join("config.json")).unwrap();
        let recipe = recipe_with("nf4", "lm_head");
        let re = regex_full(&recipe.lora.target_modules).unwrap();
        let narrowest = foundry_qlora::plan::linear_shapes(&config)
            .into_iter()
            .filter(|l| re.is_match(&l.name))
            .map(|l| l.out.min(l.inp))
            .min()
            .unwrap();
        let with_r = |r: i64| {
            let mut rec = recipe.clone();
            rec.lora.r = r;
            check_rank(&rec, &config, &re, "tiny")
        };
        with_r(narrowest as i64).unwrap();
        with_r(1).unwrap();
        for bad in [narrowest as i64 + 1, 0, -3, i64::from(i32::MAX)] {
            let e = with_r(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("lora.r = {bad}")) && e.contains(&format!("{narrowest}")),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1);
        }
    }
}
