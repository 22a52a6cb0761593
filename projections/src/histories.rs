//! Plausible, seeded event histories for tests and benchmarks: recipes,
//! datasets and base models pinned, runs requested, claimed, started,
//! logging metrics, checkpointing, failing and resuming, completing or
//! being cancelled; evals scored, promotions requested, granted or refused,
//! and channels rolled back.
//!
//! Promotion decisions cite the event ids of their evidence, which only the
//! ledger assigns, so the generator learns them through [`Synth::observe`];
//! [`append_synthetic`] drives both.

use crate::Result;
use foundry_events::*;
use foundry_ledger::{AppendRequest, Identity, Ledger, NewEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
enum Phase {
    Requested,
    Claimed,
    Training,
}

#[derive(Clone, Debug)]
struct ActiveRun {
    run_id: String,
    phase: Phase,
    step: u64,
    total: u64,
    loss: f64,
    checkpoints: Vec<String>,
    attempt: u32,
    modal: bool,
    failed: bool,
}

#[derive(Clone, Debug)]
struct PendingDecision {
    checkpoint_id: String,
    channel: String,
    eval_id: String,
    score: f64,
    request_id: Option<String>,
    requested: bool,
}

/// A seeded generator of plausible histories.
pub struct Synth {
    rng: StdRng,
    recipes: Vec<String>,
    datasets: Vec<String>,
    models: Vec<String>,
    active: Vec<ActiveRun>,
    runs_started: u64,
    evals_pending: VecDeque<(String, String, String)>,
    decisions: Vec<PendingDecision>,
    eval_events: BTreeMap<String, String>,
    channel_history: BTreeMap<String, Vec<String>>,
    bootstrapped: bool,
}

fn hex_id(rng: &mut StdRng) -> String {
    let b: [u8; 32] = rng.gen();
    hex::encode(b)
}

fn digest(rng: &mut StdRng) -> Sha256Digest {
    Sha256Digest(rng.gen())
}

fn host(i: u32) -> HostInfo {
    HostInfo {
        hostname: format!("gpu-{i:02}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        cpus: 16,
    }
}

impl Synth {
    /// A generator; the same seed gives the same history.
    pub fn new(seed: u64) -> Self {
        Synth {
            rng: StdRng::seed_from_u64(seed),
            recipes: Vec::new(),
            datasets: Vec::new(),
            models: Vec::new(),
            active: Vec::new(),
            runs_started: 0,
            evals_pending: VecDeque::new(),
            decisions: Vec::new(),
            eval_events: BTreeMap::new(),
            channel_history: BTreeMap::new(),
            bootstrapped: false,
        }
    }

    fn bootstrap(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..3 {
            let id = hex_id(&mut self.rng);
            let r = 8 * (i + 1);
            out.push(Event::RecipeDeclared(RecipeDeclared {
                recipe_id: id.clone(),
                name: format!("cord-v2-r{r}"),
                source: format!("recipes/cord-r{r}.toml"),
                resolved_config: serde_json::json!({
                    "lora": {"r": r, "alpha": r, "dropout": 0.1, "init": "gaussian"},
                    "train": {"lr": 1e-4, "epochs": 2, "batch": 2, "grad_accum": 8, "warmup": 50, "weight_decay": 0.01, "seed": 42},
                    "prompt": "Extract JSON.",
                }),
                env_overrides: BTreeMap::new(),
            }));
            self.recipes.push(id);
        }
        for i in 0..2 {
            let id = hex_id(&mut self.rng);
            let shards = ["train", "validation", "test"]
                .iter()
                .map(|split| ShardPin {
                    split: split.to_string(),
                    path: format!("{split}-00000.jsonl"),
                    sha256: digest(&mut self.rng),
                    bytes: 1 << 20,
                    rows: if *split == "train" { 800 } else { 100 },
                })
                .collect();
            out.push(Event::DatasetPinned(DatasetPinned {
                dataset_id: id.clone(),
                source: format!("hf://naver-clova-ix/cord-v2@v{i}"),
                resolved_revision: Some(hex_id(&mut self.rng)[..40].to_string()),
                shards,
                splits: BTreeMap::new(),
            }));
            self.datasets.push(id);
        }
        for i in 0..2 {
            let id = hex_id(&mut self.rng);
            out.push(Event::BaseModelPinned(BaseModelPinned {
                model_id: id.clone(),
                source: format!(
                    "hf://HuggingFaceM4/idefics2-{}",
                    if i == 0 { "8b" } else { "tiny" }
                ),
                resolved_revision: Some(hex_id(&mut self.rng)[..40].to_string()),
                architecture: "Idefics2ForConditionalGeneration".into(),
                files: vec![FileDigest {
                    path: "model.safetensors".into(),
                    sha256: digest(&mut self.rng),
                    bytes: 1 << 30,
                }],
                parameters: Some(8_000_000_000),
                quantization: if i == 0 { "bnb-nf4" } else { "none" }.into(),
            }));
            self.models.push(id);
        }
        out
    }

    /// Learns the event ids the ledger assigned (evidence for decisions).
    pub fn observe(&mut self, recorded: &[RecordedEvent]) {
        for r in recorded {
            match r.event_type.as_str() {
                "EvalScored" | "PromotionRequested" => {}
                _ => continue,
            }
            let Ok(ev) = r.decode_event() else { continue };
            match ev {
                Event::EvalScored(p) => {
                    self.eval_events.insert(p.eval_id, r.event_id.to_string());
                }
                Event::PromotionRequested(p) => {
                    if let Some(d) = self.decisions.iter_mut().find(|d| {
                        d.checkpoint_id == p.checkpoint_id
                            && d.channel == p.channel
                            && d.request_id.is_none()
                    }) {
                        d.request_id = Some(r.event_id.to_string());
                    }
                }
                _ => {}
            }
        }
    }

    fn new_run(&mut self) -> Event {
        self.runs_started += 1;
        let run_id = format!("run-{:08x}", self.rng.gen::<u32>());
        let modal = self.rng.gen_bool(0.3);
        let total = self.rng.gen_range(10..=60) * 10;
        self.active.push(ActiveRun {
            run_id: run_id.clone(),
            phase: Phase::Requested,
            step: 0,
            total,
            loss: self.rng.gen_range(2.0..3.0),
            checkpoints: Vec::new(),
            attempt: 0,
            modal,
            failed: false,
        });
        let i = self.rng.gen_range(0..self.recipes.len());
        let d = self.rng.gen_range(0..self.datasets.len());
        let m = self.rng.gen_range(0..self.models.len());
        Event::RunRequested(RunRequested {
            run_id,
            recipe_id: self.recipes[i].clone(),
            dataset_id: self.datasets[d].clone(),
            model_id: self.models[m].clone(),
            backend: if modal { "modal" } else { "local" }.into(),
            overrides: BTreeMap::new(),
        })
    }

    /// Advances run `i` by one event; may remove it when it ends.
    fn advance(&mut self, i: usize) -> Event {
        let rng = &mut self.rng;
        let run = &mut self.active[i];
        let run_id = run.run_id.clone();
        let runner = format!("runner-{}", (run.total / 10) % 4);
        match run.phase {
            Phase::Requested => {
                run.phase = Phase::Claimed;
                run.attempt += 1;
                if run.modal && run.attempt == 1 && rng.gen_bool(0.5) {
                    run.attempt -= 1;
                    run.phase = Phase::Requested;
                    return Event::ModalJobSubmitted(ModalJobSubmitted {
                        run_id,
                        app_id: format!("ap-{:08x}", rng.gen::<u32>()),
                        function_call_id: format!("fc-{:08x}", rng.gen::<u32>()),
                        gpu: "H100".into(),
                        image_digest: format!("sha256:{}", hex_id(rng)),
                        launcher_sha256: digest(rng),
                        command: vec!["modal".into(), "run".into(), "launcher.py".into()],
                    });
                }
                Event::RunClaimed(RunClaimed {
                    run_id,
                    runner_id: runner,
                    host: host(run.attempt),
                    lease_ms: 30_000,
                    attempt: run.attempt,
                })
            }
            Phase::Claimed => {
                run.phase = Phase::Training;
                if run.failed {
                    run.failed = false;
                    if let Some(c) = run.checkpoints.last().cloned() {
                        return Event::RunResumed(RunResumed {
                            run_id,
                            runner_id: runner,
                            checkpoint_id: c,
                            step: run.step,
                            reason: "lease expired".into(),
                        });
                    }
                }
                Event::RunStarted(RunStarted {
                    run_id,
                    runner_id: runner,
                    host: host(run.attempt),
                    device: DeviceInfo {
                        kind: "cuda".into(),
                        name: "NVIDIA H100 80GB HBM3".into(),
                        dtype: "bf16".into(),
                    },
                    code: CodeVersion {
                        executable_sha256: None,
                        version: "0.1.0".into(),
                        git_commit: Some(format!("{:07x}", rng.gen_range(0..3u32) * 0x111_1111)),
                        dirty: false,
                    },
                    resolved_config: serde_json::json!({"train": {"steps": run.total, "seed": 42}}),
                    run_config_sha256: digest(rng),
                    env: BTreeMap::new(),
                    total_steps: run.total,
                })
            }
            Phase::Training => {
                let roll: f64 = rng.gen();
                if run.step >= run.total {
                    let ev = Event::RunCompleted(RunCompleted {
                        run_id,
                        final_checkpoint_id: run.checkpoints.last().cloned(),
                        steps: run.step,
                        final_loss: Some(run.loss),
                        duration_ms: run.step * 700,
                    });
                    self.active.swap_remove(i);
                    return ev;
                }
                if roll < 0.003 {
                    let ev = Event::RunCancelled(RunCancelled {
                        run_id,
                        reason: "superseded by a better recipe".into(),
                    });
                    self.active.swap_remove(i);
                    return ev;
                }
                if roll < 0.010 {
                    let retry = !run.checkpoints.is_empty() && rng.gen_bool(0.7);
                    let ev = Event::RunFailed(RunFailed {
                        run_id,
                        reason: if retry {
                            "preempted: spot instance reclaimed".into()
                        } else {
                            "CUDA out of memory in text_model.layers.12.mlp (tried to allocate 2.0 GiB)".into()
                        },
                        step: Some(run.step),
                        retryable: retry,
                    });
                    if retry {
                        run.failed = true;
                        run.phase = Phase::Requested;
                    } else {
                        self.active.swap_remove(i);
                    }
                    return ev;
                }
                if roll < 0.08 {
                    return Event::RunHeartbeat(RunHeartbeat {
                        run_id,
                        runner_id: runner,
                        step: run.step,
                        lease_ms: 30_000,
                    });
                }
                if run.step > 0
                    && run.step.is_multiple_of(100)
                    && run.checkpoints.len() < (run.step / 100) as usize
                {
                    let cid = hex_id(rng);
                    run.checkpoints.push(cid.clone());
                    let ev = Event::CheckpointCommitted(CheckpointCommitted {
                        run_id: run_id.clone(),
                        checkpoint_id: cid.clone(),
                        step: run.step,
                        files: vec![
                            FileDigest {
                                path: "adapter_model.safetensors".into(),
                                sha256: digest(rng),
                                bytes: 3_000_000,
                            },
                            FileDigest {
                                path: "adapter_config.json".into(),
                                sha256: digest(rng),
                                bytes: 700,
                            },
                        ],
                        loss: Some(run.loss),
                        location: format!("adapters/{run_id}/{}", run.step),
                    });
                    if rng.gen_bool(0.4) {
                        let eval_id = format!("eval-{:08x}", rng.gen::<u32>());
                        self.evals_pending.push_back((eval_id, cid, run_id));
                    }
                    return ev;
                }
                let points = (0..10)
                    .map(|_| {
                        run.step += 1;
                        run.loss = (run.loss * rng.gen_range(0.985..1.005)).max(0.05);
                        MetricPoint {
                            step: run.step,
                            loss: run.loss,
                            lr: 1e-4,
                            grad_norm: rng.gen_range(0.5..2.0),
                            tokens: 512,
                            tokens_per_s: rng.gen_range(1800.0..2400.0),
                            elapsed_ms: run.step * 700,
                        }
                    })
                    .collect();
                Event::MetricsLogged(MetricsLogged { run_id, points })
            }
        }
    }

    fn eval_event(&mut self) -> Option<Event> {
        // Half the time request, the other half score the oldest request.
        let (eval_id, cid, run_id) = self.evals_pending.pop_front()?;
        let dataset_id = self.datasets[0].clone();
        let model_id = self.models[0].clone();
        if !self.eval_events.contains_key(&eval_id) && self.rng.gen_bool(0.5) {
            self.eval_events.insert(eval_id.clone(), String::new());
            self.evals_pending
                .push_back((eval_id.clone(), cid.clone(), run_id.clone()));
            return Some(Event::EvalRequested(EvalRequested {
                eval_id,
                checkpoint_id: Some(cid),
                run_id: Some(run_id),
                model_id,
                dataset_id,
                split: "test".into(),
                limit: None,
            }));
        }
        let score = self.rng.gen_range(0.80..0.98);
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "field_exact_match".to_string(),
            MetricValue {
                value: score,
                ci_low: Some(score - 0.02),
                ci_high: Some((score + 0.02).min(1.0)),
            },
        );
        metrics.insert(
            "json_valid_rate".to_string(),
            MetricValue {
                value: 0.99,
                ci_low: None,
                ci_high: None,
            },
        );
        let channel = if self.rng.gen_bool(0.5) {
            "staging"
        } else {
            "production"
        };
        if score > 0.85 && self.rng.gen_bool(0.5) {
            self.decisions.push(PendingDecision {
                checkpoint_id: cid.clone(),
                channel: channel.into(),
                eval_id: eval_id.clone(),
                score,
                request_id: None,
                requested: false,
            });
        }
        Some(Event::EvalScored(EvalScored {
            eval_id,
            split: "test".into(),
            checkpoint_id: Some(cid),
            run_id: Some(run_id),
            model_id,
            dataset_id,
            split_sha256: digest(&mut self.rng),
            eval_spec_sha256: digest(&mut self.rng),
            examples: 100,
            metrics,
            breakdown: BTreeMap::new(),
            latency_ms_mean: 850.0,
            throughput_docs_per_s: 1.2,
            code: CodeVersion {
                version: "0.1.0".into(),
                git_commit: None,
                dirty: false,
                executable_sha256: None,
            },
            device: DeviceInfo::default(),
        }))
    }

    fn decision_event(&mut self) -> Option<Event> {
        let i = self.decisions.iter().position(|d| {
            !d.requested
                || (d.request_id.is_some()
                    && self
                        .eval_events
                        .get(&d.eval_id)
                        .is_some_and(|e| !e.is_empty()))
        })?;
        if !self.decisions[i].requested {
            let d = &mut self.decisions[i];
            d.requested = true;
            return Some(Event::PromotionRequested(PromotionRequested {
                checkpoint_id: d.checkpoint_id.clone(),
                channel: d.channel.clone(),
                reason: format!("eval {} scored {:.3}", d.eval_id, d.score),
            }));
        }
        let d = self.decisions.remove(i);
        let threshold = 0.90;
        let gates = vec![GateResult {
            gate: format!("field_exact_match >= {threshold}"),
            actual: Some(d.score),
            passed: d.score >= threshold,
            detail: format!("eval {}", d.eval_id),
        }];
        let evidence = vec![
            self.eval_events
                .get(&d.eval_id)
                .cloned()
                .unwrap_or_default(),
            d.request_id.clone().unwrap_or_default(),
        ];
        let hist = self.channel_history.entry(d.channel.clone()).or_default();
        if d.score >= threshold {
            let previous = hist.last().cloned();
            hist.push(d.checkpoint_id.clone());
            Some(Event::AdapterPromoted(AdapterPromoted {
                checkpoint_id: d.checkpoint_id,
                channel: d.channel,
                previous_checkpoint_id: previous,
                gates,
                evidence,
                signed_by: vec![],
                reason: format!("eval {} scored {:.3}", d.eval_id, d.score),
            }))
        } else {
            Some(Event::PromotionRejected(PromotionRejected {
                checkpoint_id: d.checkpoint_id,
                channel: d.channel,
                gates,
                evidence,
                signed_by: vec![],
                reason: format!("field_exact_match {:.3} < {threshold}", d.score),
            }))
        }
    }

    fn rollback_event(&mut self) -> Option<Event> {
        let (channel, hist) = self
            .channel_history
            .iter_mut()
            .find(|(_, h)| h.len() >= 2)?;
        let from = hist.pop();
        let to = hist.last().cloned();
        Some(Event::ChannelRolledBack(ChannelRolledBack {
            channel: channel.clone(),
            from_checkpoint_id: from,
            to_checkpoint_id: to,
            reason: "regression reported by downstream parsing".into(),
        }))
    }

    /// The next event of the history.
    pub fn next_event(&mut self) -> Event {
        loop {
            let roll: f64 = self.rng.gen();
            if roll < 0.02 {
                if let Some(e) = self.eval_event() {
                    return e;
                }
            } else if roll < 0.03 {
                if let Some(e) = self.decision_event() {
                    return e;
                }
            } else if roll < 0.0303 {
                if let Some(e) = self.rollback_event() {
                    return e;
                }
            } else if self.active.len() < 6 && (self.active.is_empty() || roll < 0.05) {
                return self.new_run();
            } else if !self.active.is_empty() {
                let i = self.rng.gen_range(0..self.active.len());
                return self.advance(i);
            }
        }
    }

    /// The next `n` events; the very first call returns instead the seven
    /// events that declare the recipes and pin the datasets and models.
    pub fn next_batch(&mut self, n: usize) -> Vec<Event> {
        if !self.bootstrapped {
            self.bootstrapped = true;
            return self.bootstrap();
        }
        (0..n).map(|_| self.next_event()).collect()
    }
}

/// Gives an empty ledger its genesis: a fresh root key named `synth` that
/// holds every role, so a synthetic history can be appended in mixed
/// batches. Returns that identity.
pub fn bootstrap(ledger: &Ledger) -> Result<Identity> {
    let id = Identity::generate("synth")?;
    ledger.init_genesis(&id, Role::ALL, &[])?;
    Ok(id)
}

/// An empty ledger in a temporary directory (for tests).
#[cfg(test)]
pub(crate) fn tests_ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ledger = foundry_ledger::Home::at(dir.path())
        .init()
        .unwrap_or_else(|e| panic!("init: {e}"));
    (dir, ledger)
}

/// Appends `events` events of the seeded history to `ledger` (which must be
/// empty: it gets a [`bootstrap`] genesis first), in batches of at most
/// `batch`; returns the head seq. Each call to `on_batch` gets the head
/// after a batch (tests use it to catch up in between).
pub fn append_synthetic(
    ledger: &Ledger,
    seed: u64,
    events: u64,
    batch: usize,
    mut on_batch: impl FnMut(u64) -> Result<()>,
) -> Result<u64> {
    let id = bootstrap(ledger)?;
    let mut synth = Synth::new(seed);
    let mut done = 0u64;
    while done < events {
        let n = batch.min((events - done) as usize);
        let evs = synth.next_batch(n);
        done += evs.len() as u64;
        let out = ledger.append_as(
            &id,
            AppendRequest::new(evs.into_iter().map(NewEvent::new).collect()),
        )?;
        synth.observe(&out.events);
        on_batch(ledger.head().seq)?;
    }
    Ok(ledger.head().seq)
}
