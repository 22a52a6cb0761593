//! A small but real executor for testing runner plumbing (this crate's tests,
//! the bus, engine and Modal tests; not the CLI): gradient descent on a line,
//! checkpointed to files and resumed from them, scored by the share of
//! held-out points it predicts within 0.1, and a recipe plus pinned inputs to
//! request runs of it. Tests use it where the QLoRA engine would make
//! plumbing tests slow; it is never a stub: it trains, checkpoints, resumes
//! and scores for real.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foundry_events::Role;
use foundry_events::{
    BaseModelPinned, DatasetPinned, DeviceInfo, EvalScored, Event, MetricPoint, MetricValue,
    RecipeDeclared, RunRequested, Sha256Digest, SplitStats,
};
use foundry_ledger::trust::Grant;
use foundry_ledger::{AppendRequest, Identity, Ledger, NewEvent};

use crate::{
    code_version, CheckpointRecord, Control, EngineFailure, EvalEngine, EvalJob, EvalOutcome,
    EvalSpecs, TrainJob, TrainPlan, TrainSink, TrainSummary, TrainingEngine,
};

/// The keys of a small organisation: an admin root, an operator `alice`,
/// and one key per runner, each with its own role.
#[derive(Clone, Debug)]
pub struct TestKeys {
    pub root: Identity,
    pub alice: Identity,
    pub trainer: Identity,
    pub evaluator: Identity,
    pub promoter: Identity,
    pub dispatcher: Identity,
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKeys {
    /// Fresh keys.
    pub fn new() -> Self {
        let k = |n: &str| Identity::generate(n).unwrap();
        TestKeys {
            root: k("root"),
            alice: k("alice"),
            trainer: k("runner:trainer"),
            evaluator: k("runner:evaluator"),
            promoter: k("runner:promoter"),
            dispatcher: k("runner:modal"),
        }
    }

    /// Registers them all in an empty ledger (its genesis).
    pub fn genesis(&self, ledger: &Ledger) {
        ledger
            .init_genesis(
                &self.root,
                &[Role::Admin],
                &[
                    Grant::of(&self.alice, &[Role::Operator], "a person"),
                    Grant::of(&self.trainer, &[Role::Trainer], "runner"),
                    Grant::of(&self.evaluator, &[Role::Evaluator], "runner"),
                    Grant::of(&self.promoter, &[Role::Promoter], "runner"),
                    Grant::of(&self.dispatcher, &[Role::Dispatcher], "runner"),
                ],
            )
            .unwrap();
    }

    /// The key a runner of this name acts as.
    pub fn for_runner(&self, name: &str) -> Identity {
        match name {
            "trainer" => self.trainer.clone(),
            "evaluator" => self.evaluator.clone(),
            "promoter" => self.promoter.clone(),
            _ => self.dispatcher.clone(),
        }
    }
}

pub const RECIPE: &str = r#"
name = "line"
[base_model]
source = "unused"
architecture = "idefics2"
[training]
seed = 1
lr = 0.7
max_steps = 40
epochs = 0
warmup_steps = 0
checkpoint_every = 10
keep_last = 2
[eval]
split = "test"
every_checkpoints = 2
max_examples = 16
[promotion.staging]
gates = ["field_exact_match >= 0.5"]
[promotion.production]
gates = ["field_exact_match >= 0.99"]
actors = ["alice"]
"#;

/// Fits y = 3x − 1 by full-batch gradient descent; a checkpoint
/// (state.json) every `checkpoint_every` steps.
pub struct LineEngine {
    pub step_delay: Duration,
    pub steps_run: AtomicU64,
}

impl LineEngine {
    pub fn new(delay_ms: u64) -> Self {
        LineEngine {
            step_delay: Duration::from_millis(delay_ms),
            steps_run: AtomicU64::new(0),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LineState {
    step: u64,
    w: f64,
    b: f64,
}

fn points(n: usize, offset: f64) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let x = offset + i as f64 / 32.0;
            (x, 3.0 * x - 1.0)
        })
        .collect()
}

fn read_state(dir: &Path) -> Result<LineState, String> {
    let s = std::fs::read_to_string(dir.join("state.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&s).map_err(|e| e.to_string())
}

impl TrainingEngine for LineEngine {
    fn prepare(&self, job: &TrainJob) -> Result<TrainPlan, EngineFailure> {
        if !job.dataset.splits.contains_key("train") {
            return Err(format!("dataset {} has no train split", job.dataset.dataset_id).into());
        }
        let steps = job.config["training"]["max_steps"]
            .as_u64()
            .ok_or("training.max_steps missing")?;
        Ok(TrainPlan {
            total_steps: steps,
            device: DeviceInfo {
                kind: "cpu".into(),
                name: "test".into(),
                dtype: "f64".into(),
            },
            data_order: None,
        })
    }

    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> Result<TrainSummary, EngineFailure> {
        let t = &job.config["training"];
        let steps = t["max_steps"].as_u64().unwrap_or(0);
        let every = t["checkpoint_every"].as_u64().unwrap_or(10);
        let lr = t["lr"].as_f64().unwrap_or(0.1);
        let mut s = match &job.resume_from {
            Some((_, dir)) => read_state(dir)?,
            None => LineState {
                step: 0,
                w: 0.0,
                b: 0.0,
            },
        };
        let data = points(32, 0.0);
        let mut loss = 0.0;
        while s.step < steps {
            std::thread::sleep(self.step_delay);
            let (mut gw, mut gb) = (0.0, 0.0);
            loss = 0.0;
            for (x, y) in &data {
                let e = s.w * x + s.b - y;
                loss += e * e / data.len() as f64;
                gw += 2.0 * e * x / data.len() as f64;
                gb += 2.0 * e / data.len() as f64;
            }
            s.w -= lr * gw;
            s.b -= lr * gb;
            s.step += 1;
            self.steps_run.fetch_add(1, Ordering::SeqCst);
            let point = MetricPoint {
                step: s.step,
                loss,
                lr,
                grad_norm: (gw * gw + gb * gb).sqrt(),
                tokens: data.len() as u64,
                tokens_per_s: 0.0,
                elapsed_ms: 0,
            };
            if sink.on_step(point) == Control::Stop {
                return Ok(TrainSummary {
                    steps: s.step,
                    final_loss: Some(loss),
                    stopped: true,
                });
            }
            if s.step % every == 0 || s.step == steps {
                let dir = job.out_dir.join(format!("checkpoint-{}", s.step));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let json = serde_json::to_string(&s).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("state.json"), json).map_err(|e| e.to_string())?;
                let c = CheckpointRecord {
                    step: s.step,
                    dir,
                    loss: Some(loss),
                };
                if sink.on_checkpoint(c) == Control::Stop {
                    return Ok(TrainSummary {
                        steps: s.step,
                        final_loss: Some(loss),
                        stopped: true,
                    });
                }
            }
        }
        Ok(TrainSummary {
            steps: s.step,
            final_loss: Some(loss),
            stopped: false,
        })
    }
}

/// Scores a checkpoint by the share of held-out points it predicts within 0.1.
pub struct LineEval;

/// The spec hash of every line eval.
pub fn line_spec() -> Sha256Digest {
    Sha256Digest::of(b"line-eval")
}

impl EvalSpecs for LineEval {
    fn spec_sha256(
        &self,
        _config: Option<&serde_json::Value>,
        _split: &str,
        _limit: Option<u64>,
    ) -> Result<Sha256Digest, String> {
        Ok(line_spec())
    }
}

impl EvalEngine for LineEval {
    fn evaluate(&self, job: &EvalJob) -> Result<EvalOutcome, EngineFailure> {
        let (w, b) = match &job.checkpoint {
            Some((_, dir)) => {
                let s = read_state(dir)?;
                (s.w, s.b)
            }
            None => (0.0, 0.0),
        };
        let test = points(job.limit.unwrap_or(16) as usize, 0.25);
        let hits = test
            .iter()
            .filter(|(x, y)| (w * x + b - y).abs() < 0.1)
            .count();
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "field_exact_match".to_string(),
            MetricValue {
                value: hits as f64 / test.len() as f64,
                ci_low: None,
                ci_high: None,
            },
        );
        Ok(EvalScored {
            eval_id: String::new(),
            checkpoint_id: None,
            run_id: None,
            model_id: String::new(),
            dataset_id: String::new(),
            split: String::new(),
            split_sha256: Sha256Digest([0; 32]),
            eval_spec_sha256: line_spec(),
            examples: test.len() as u64,
            metrics,
            breakdown: BTreeMap::new(),
            latency_ms_mean: 0.0,
            throughput_docs_per_s: 0.0,
            code: code_version(),
            device: DeviceInfo::default(),
        })
    }
}

fn append(ledger: &Ledger, actor: &Identity, ev: impl Into<Event>) {
    ledger
        .append_as(actor, AppendRequest::new(vec![NewEvent::new(ev)]))
        .unwrap();
}

/// Declares the line recipe, pins a dataset and a base model (by event
/// only) and requests `run_id`, directly in the ledger, signed by
/// `operator` (as an operator's command on the ledger's machine would).
///
/// # Panics
/// On a ledger error: this is test support.
pub fn request_run(ledger: &Ledger, operator: &Identity, run_id: &str) {
    let resolved =
        foundry_recipes::resolve_str(RECIPE, "line.toml", &BTreeMap::new(), None).unwrap();
    append(
        ledger,
        operator,
        RecipeDeclared {
            recipe_id: resolved.id.clone(),
            name: "line".into(),
            source: "line.toml".into(),
            resolved_config: resolved.config.clone(),
            env_overrides: BTreeMap::new(),
        },
    );
    append(ledger, operator, dataset_pinned());
    append(ledger, operator, model_pinned());
    append(
        ledger,
        operator,
        RunRequested {
            run_id: run_id.into(),
            recipe_id: resolved.id,
            dataset_id: "d1".into(),
            model_id: "m1".into(),
            backend: "local".into(),
            overrides: BTreeMap::new(),
        },
    );
}

/// The dataset every line run pins: 32 train rows, no files.
pub fn dataset_pinned() -> DatasetPinned {
    let mut splits = BTreeMap::new();
    splits.insert(
        "train".to_string(),
        SplitStats {
            rows: 32,
            ..Default::default()
        },
    );
    DatasetPinned {
        dataset_id: "d1".into(),
        source: "./data".into(),
        resolved_revision: None,
        shards: vec![],
        splits,
    }
}

/// The base model every line run pins (the line engine reads no file).
pub fn model_pinned() -> BaseModelPinned {
    BaseModelPinned {
        model_id: "m1".into(),
        source: "./model".into(),
        resolved_revision: None,
        architecture: "Idefics2ForConditionalGeneration".into(),
        files: vec![],
        parameters: None,
        quantization: "none".into(),
    }
}
