//! The trainer: AdamW (decoupled weight decay), gradient accumulation, warmup + cosine/linear
//! schedule, global-norm clipping, loss on the answer tokens only, deterministic data order and
//! dropout from a seed, and checkpoints that resume bit-identically on the CPU.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use foundry_idefics2::linear::DropoutRng;
use foundry_idefics2::Idefics2;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{hash_dir, prune, write_safetensors, FileHash};
use crate::data::{collate, ExampleSource};
use crate::lora::{self, LoraConfig, LoraParam};
use crate::{Error, Result};

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Half a cosine from the peak to zero (transformers' `cosine`).
    Cosine,
    /// Linear decay to zero (transformers' `linear`).
    Linear,
    /// Constant after warmup.
    Constant,
}

/// Everything that determines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed of LoRA init, data order and dropout.
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Schedule after warmup.
    pub schedule: Schedule,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Write a checkpoint every this many optimizer steps (0: never).
    pub save_every: u64,
    /// Keep only the newest this many checkpoints.
    pub keep_last: usize,
    /// The adapter.
    pub lora: LoraConfig,
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        let bad = |m: String| Err(Error::Train(m));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1".into());
        }
        if self.total_steps == 0 {
            return bad("total_steps must be at least 1".into());
        }
        if self.lr.is_nan()
            || self.lr <= 0.0
            || !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
        {
            return bad(format!(
                "invalid optimizer settings lr {} betas ({}, {})",
                self.lr, self.beta1, self.beta2
            ));
        }
        if self.keep_last == 0 {
            return bad("keep_last must be at least 1".into());
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (0-based), as transformers' schedulers give it.
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * step as f64 / w.max(1) as f64;
        }
        let rest = self.total_steps.saturating_sub(w).max(1) as f64;
        let progress = (step - w) as f64 / rest;
        let f = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((self.total_steps.saturating_sub(step)) as f64 / rest).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.lr * f
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The optimizer step just completed (1-based).
    pub step: u64,
    /// Mean cross entropy over the answer tokens of the step.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Answer tokens in the loss.
    pub tokens: usize,
}

/// Whether [`Trainer::run`] goes on after a step or a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep training.
    Continue,
    /// Stop now (cancelled, shutting down, the checkpoint was not recorded).
    Stop,
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// The optimizer step reached.
    pub steps: u64,
    /// Loss of the last step taken in this run, if any.
    pub last_loss: Option<f64>,
    /// A callback asked to stop before `total_steps`.
    pub stopped: bool,
}

/// A written checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Optimizer step it was taken after.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Every file with its sha256 and size.
    pub files: Vec<FileHash>,
}

/// The resumable state beside the adapter and the optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    examples_seen: u64,
    seed: u64,
    config: TrainConfig,
}

/// AdamW state of one tensor.
#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The trainer over an Idefics2 with LoRA adapters.
pub struct Trainer {
    model: Idefics2,
    params: Vec<LoraParam>,
    moments: Vec<Moments>,
    config: TrainConfig,
    step: u64,
    examples_seen: u64,
    dropout: DropoutRng,
    pad_id: u32,
    /// The example order of one epoch `(epoch, n, order)`, kept so that it is drawn once per
    /// epoch, not once per example.
    order: Option<(u64, usize, Vec<u32>)>,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: independent streams for (purpose, index).
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Trainer {
    /// Attaches fresh adapters to `model` (whose base weights stay frozen) and prepares training.
    pub fn new(mut model: Idefics2, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let dropout = lora::dropout_rng(config.seed);
        let device = model.device().clone();
        let params = lora::attach_new(
            &mut model,
            &config.lora,
            mix(config.seed, 1, 0),
            Some(dropout.clone()),
            &device,
        )?;
        lora::set_training(&mut model, true)?;
        let moments = params
            .iter()
            .flat_map(|p| [p.a.elem_count(), p.b.elem_count()])
            .map(|n| Moments {
                m: vec![0.0; n],
                v: vec![0.0; n],
            })
            .collect();
        let pad_id = model.config.text_config.pad_token_id.unwrap_or(0);
        Ok(Self {
            model,
            params,
            moments,
            config,
            step: 0,
            examples_seen: 0,
            dropout,
            pad_id,
            order: None,
        })
    }

    /// Resumes from a checkpoint directory written by [`Trainer::save_checkpoint`]. The base
    /// model must be the same; the config must equal the checkpoint's.
    pub fn resume(model: Idefics2, config: TrainConfig, dir: &Path) -> Result<Self> {
        let sp = dir.join("trainer_state.json");
        let s = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        let state: TrainerState = serde_json::from_str(&s).map_err(|e| Error::Json {
            what: sp.display().to_string(),
            message: e.to_string(),
        })?;
        if state.config != config {
            return Err(Error::Checkpoint(format!(
                "{}: the checkpoint was written with a different training config",
                dir.display()
            )));
        }
        let mut t = Self::new(model, config)?;
        let (_, weights) = lora::load_adapter(dir)?;
        let op = dir.join("optimizer.safetensors");
        let opt = candle_core::safetensors::load(&op, &Device::Cpu)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", op.display())))?;
        for (i, p) in t.params.iter().enumerate() {
            for (j, (key, var)) in [(p.key_a(), &p.a), (p.key_b(), &p.b)]
                .into_iter()
                .enumerate()
            {
                let w = weights
                    .get(&key)
                    .ok_or_else(|| Error::Checkpoint(format!("adapter lacks {key}")))?;
                if w.dims() != var.dims() {
                    return Err(Error::Checkpoint(format!(
                        "{key}: shape {:?} differs",
                        w.dims()
                    )));
                }
                var.set(&w.to_dtype(var.dtype())?.to_device(var.device())?)?;
                let get = |s: &str| -> Result<Vec<f32>> {
                    let k = format!("{key}.{s}");
                    Ok(opt
                        .get(&k)
                        .ok_or_else(|| Error::Checkpoint(format!("optimizer state lacks {k}")))?
                        .flatten_all()?
                        .to_vec1::<f32>()?)
                };
                t.moments[2 * i + j] = Moments {
                    m: get("exp_avg")?,
                    v: get("exp_avg_sq")?,
                };
            }
        }
        t.step = state.step;
        t.examples_seen = state.examples_seen;
        Ok(t)
    }

    /// The model (with adapters attached).
    pub fn model(&self) -> &Idefics2 {
        &self.model
    }

    /// The adapter parameters.
    pub fn params(&self) -> &[LoraParam] {
        &self.params
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The training config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The dataset indices of the examples drawn `k..k + count`: epoch `e` visits every index
    /// once, in a seeded permutation of the whole index (`StdRng` seeded from the run's seed
    /// and `e`), so a resumed run draws exactly what an uninterrupted one would.
    pub fn example_indices(&mut self, k: u64, count: usize, n: usize) -> Vec<usize> {
        (k..k + count as u64)
            .map(|k| {
                let epoch = k / n as u64;
                let fresh = !matches!(&self.order, Some((e, len, _)) if *e == epoch && *len == n);
                if fresh {
                    // u32 indices (4 bytes an example); the shuffle draws the same swaps
                    // whatever the element type, so the order is that of a usize index.
                    let mut order: Vec<u32> = (0..n as u32).collect();
                    order.shuffle(&mut StdRng::seed_from_u64(mix(self.config.seed, 2, epoch)));
                    self.order = Some((epoch, n, order));
                }
                let at = (k % n as u64) as usize;
                self.order.as_ref().map_or(at, |(_, _, o)| o[at] as usize)
            })
            .collect()
    }

    /// Mean cross entropy on the answer tokens of `examples` (no gradient bookkeeping beyond
    /// candle's graph): returns the summed loss tensor and the token count.
    fn micro_loss(&self, batch: &crate::data::Batch) -> Result<(Tensor, usize)> {
        let hidden = self.model.forward_hidden(
            &batch.input_ids,
            batch.pixel_values.as_ref(),
            batch.pixel_attention_mask.as_ref(),
        )?;
        let width = hidden.dim(D::Minus1)?;
        let n = batch.positions.len();
        let dev = hidden.device().clone();
        if n == 0 {
            return Ok((Tensor::zeros((), DType::F32, &dev)?, 0));
        }
        // Only the positions in the loss go through lm_head (the answer tokens, usually a small
        // part of the sequence): the same logits for those rows, far fewer FLOPs.
        let idx = Tensor::from_vec(batch.positions.clone(), n, &dev)?;
        let picked = hidden.reshape(((), width))?.index_select(&idx, 0)?;
        let rows =
            candle_core::Module::forward(&self.model.lm_head, &picked)?.to_dtype(DType::F32)?;
        if dev.is_cpu() {
            // One fused op: no [n, vocab] log-probabilities kept for the backward.
            return Ok((
                foundry_kernels::loss::cross_entropy_sum(&rows, &batch.targets)?,
                n,
            ));
        }
        let logp = Idefics2::log_softmax(&rows)?;
        let tgt = Tensor::from_vec(batch.targets.clone(), (n, 1), &dev)?;
        let picked = logp.gather(&tgt, 1)?;
        Ok((picked.sum_all()?.neg()?, n))
    }

    /// The gradient norm of every LoRA tensor (by PEFT key) for one micro-batch of `examples`,
    /// without updating anything.
    pub fn gradient_norms(&self, examples: &[crate::data::Example]) -> Result<Vec<(String, f64)>> {
        let batch = collate(examples, self.pad_id, self.model.device())?;
        let (loss, _) = self.micro_loss(&batch)?;
        let store = loss.backward()?;
        let mut out = Vec::new();
        for p in &self.params {
            for (key, var) in [(p.key_a(), &p.a), (p.key_b(), &p.b)] {
                let n = match store.get(var.as_tensor()) {
                    Some(g) => g
                        .sqr()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                        .sqrt(),
                    None => 0.0,
                };
                out.push((key, n));
            }
        }
        Ok(out)
    }

    /// One optimizer step over `grad_accum` micro-batches drawn from `data`.
    pub fn train_step(&mut self, data: &dyn ExampleSource) -> Result<StepMetrics> {
        let n = data.len();
        if n == 0 {
            return Err(Error::Train("the dataset is empty".into()));
        }
        if n > u32::MAX as usize {
            return Err(Error::Train(format!(
                "the dataset has {n} examples, more than {} (the order is an index of u32)",
                u32::MAX
            )));
        }
        let dev = self.model.device().clone();
        let per_step = self.config.grad_accum * self.config.batch_size;
        let now = self.example_indices(self.examples_seen, per_step, n);
        // The next step's examples are read and encoded while this one computes.
        let next = self.example_indices(self.examples_seen + per_step as u64, per_step, n);
        data.prefetch(&next);
        let mut batches = Vec::with_capacity(self.config.grad_accum);
        for micro in now.chunks(self.config.batch_size) {
            let mut exs = Vec::with_capacity(self.config.batch_size);
            for &i in micro {
                exs.push(data.get(i)?);
                self.examples_seen += 1;
            }
            batches.push(collate(&exs, self.pad_id, &dev)?);
        }
        // The loss is normalised by the answer tokens of the whole step (as transformers does
        // with num_items_in_batch), so accumulation equals one big batch.
        let tokens: usize = batches.iter().map(|b| b.positions.len()).sum();
        let denom = tokens.max(1) as f64;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; 2 * self.params.len()];
        let mut loss_sum = 0f64;
        for (mi, batch) in batches.iter().enumerate() {
            {
                let mut g = self
                    .dropout
                    .lock()
                    .map_err(|_| Error::Train("dropout rng poisoned".into()))?;
                *g = StdRng::seed_from_u64(mix(
                    self.config.seed,
                    3,
                    self.step * 1_000_003 + mi as u64,
                ));
            }
            use foundry_kernels::timing::{Pass, Scope};
            let forward = Scope::new("step: forward (all)", Pass::Forward);
            let (loss, k) = self.micro_loss(batch)?;
            drop(forward);
            if k == 0 {
                continue;
            }
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let scaled = (loss / denom)?;
            let backward = Scope::new("step: backward (all)", Pass::Backward);
            let store = scaled.backward()?;
            drop(backward);
            for (i, p) in self.params.iter().enumerate() {
                for (j, var) in [&p.a, &p.b].into_iter().enumerate() {
                    let g = match store.get(var.as_tensor()) {
                        Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                        None => {
                            return Err(Error::Train(format!(
                                "{}: no gradient reached lora_{}",
                                p.module,
                                if j == 0 { "A" } else { "B" }
                            )))
                        }
                    };
                    let slot = &mut grads[2 * i + j];
                    match slot {
                        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                        None => *slot = Some(g),
                    }
                }
            }
        }
        let mut grads: Vec<Vec<f32>> = grads
            .into_iter()
            .zip(&self.moments)
            .map(|(g, m)| g.unwrap_or_else(|| vec![0.0; m.m.len()]))
            .collect();
        let grad_norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if let Some(max) = self.config.max_grad_norm {
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                let c = coef as f32;
                grads
                    .iter_mut()
                    .for_each(|g| g.iter_mut().for_each(|v| *v *= c));
            }
        }
        let lr = self.config.lr_at(self.step);
        self.adamw(&grads, lr)?;
        self.step += 1;
        Ok(StepMetrics {
            step: self.step,
            loss: loss_sum / denom,
            grad_norm,
            lr,
            tokens,
        })
    }

    /// torch.optim.AdamW's update, in f32 like PyTorch.
    fn adamw(&mut self, grads: &[Vec<f32>], lr: f64) -> Result<()> {
        let c = &self.config;
        let t = (self.step + 1) as i32;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
        let step_size = (lr / bc1) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let eps = c.eps as f32;
        let vars: Vec<Var> = self
            .params
            .iter()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect();
        for ((var, g), mo) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for k in 0..p.len() {
                p[k] *= decay;
                mo.m[k] = b1 * mo.m[k] + (1.0 - b1) * g[k];
                mo.v[k] = b2 * mo.v[k] + (1.0 - b2) * g[k] * g[k];
                let denom = mo.v[k].sqrt() / bc2_sqrt + eps;
                p[k] -= step_size * mo.m[k] / denom;
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// Writes `root/checkpoint-<step>/` (adapter in PEFT layout, optimizer moments, trainer
    /// state with data position and seed), hashes every file, and prunes to `keep_last`.
    pub fn save_checkpoint(&self, root: &Path) -> Result<CheckpointInfo> {
        let dir = root.join(format!("checkpoint-{}", self.step));
        let tmp = root.join(format!(".checkpoint-{}.tmp", self.step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        lora::save_adapter(&tmp, &self.config.lora, &self.params)?;
        let mut opt = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            for (j, (key, var)) in [(p.key_a(), &p.a), (p.key_b(), &p.b)]
                .into_iter()
                .enumerate()
            {
                let mo = &self.moments[2 * i + j];
                opt.push((
                    format!("{key}.exp_avg"),
                    Tensor::from_vec(mo.m.clone(), var.shape(), &Device::Cpu)?,
                ));
                opt.push((
                    format!("{key}.exp_avg_sq"),
                    Tensor::from_vec(mo.v.clone(), var.shape(), &Device::Cpu)?,
                ));
            }
        }
        write_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
        let state = TrainerState {
            step: self.step,
            examples_seen: self.examples_seen,
            seed: self.config.seed,
            config: self.config.clone(),
        };
        let sp = tmp.join("trainer_state.json");
        let js = serde_json::to_string_pretty(&state).map_err(|e| Error::Json {
            what: "trainer_state.json".into(),
            message: e.to_string(),
        })?;
        std::fs::write(&sp, js).map_err(|e| Error::io(&sp, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        let files = hash_dir(&dir)?;
        prune(root, self.config.keep_last)?;
        Ok(CheckpointInfo {
            step: self.step,
            dir,
            files,
        })
    }

    /// The training loop (the only one: the engine behind `ledger run`
    /// drives it too). Trains until `total_steps`, writing a checkpoint
    /// under `root` every `save_every` steps and at the end. `on_step` sees
    /// each step's metrics and how long the step took; `on_checkpoint` each
    /// checkpoint once written. Either may stop the run.
    pub fn run(
        &mut self,
        data: &dyn ExampleSource,
        root: &Path,
        on_step: &mut dyn FnMut(&StepMetrics, std::time::Duration) -> Flow,
        on_checkpoint: &mut dyn FnMut(&CheckpointInfo) -> Flow,
    ) -> Result<RunEnd> {
        let mut last_loss = None;
        let end = |steps, last_loss, stopped| RunEnd {
            steps,
            last_loss,
            stopped,
        };
        while self.step < self.config.total_steps {
            let started = std::time::Instant::now();
            let m = self.train_step(data)?;
            last_loss = Some(m.loss);
            if on_step(&m, started.elapsed()) == Flow::Stop {
                return Ok(end(self.step, last_loss, true));
            }
            let every = self.config.save_every;
            if (every > 0 && self.step.is_multiple_of(every))
                || self.step == self.config.total_steps
            {
                let info = self.save_checkpoint(root)?;
                if on_checkpoint(&info) == Flow::Stop {
                    return Ok(end(self.step, last_loss, true));
                }
            }
        }
        Ok(end(self.step, last_loss, false))
    }
}
