//! The framework driven end to end over a real sled ledger, with a small but
//! real executor: gradient descent on a line, checkpointed to files and
//! resumed from them, scored by how many held-out points it predicts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundry_events::{
    BaseModelPinned, DatasetPinned, DeviceInfo, EvalScored, Event, EventType, MetricPoint,
    MetricValue, PromotionRequested, RecipeDeclared, RunRequested, Sha256Digest, SplitStats,
};
use foundry_ledger::{AppendRequest, Home, Ledger, NewEvent};

use crate::*;

const RECIPE: &str = r#"
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

/// Fits y = 3x − 1 by full-batch gradient descent; one optimizer step per
/// step, a checkpoint (state.json) every `checkpoint_every` steps.
struct LineEngine {
    step_delay: Duration,
    steps_run: AtomicU64,
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

fn read_state(dir: &Path) -> std::result::Result<LineState, String> {
    let s = std::fs::read_to_string(dir.join("state.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&s).map_err(|e| e.to_string())
}

impl TrainingEngine for LineEngine {
    fn prepare(&self, job: &TrainJob) -> std::result::Result<TrainPlan, String> {
        if !job.dataset.splits.contains_key("train") {
            return Err(format!(
                "dataset {} has no train split",
                job.dataset.dataset_id
            ));
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
        })
    }

    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> std::result::Result<TrainSummary, String> {
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
struct LineEval;

impl EvalEngine for LineEval {
    fn evaluate(&self, job: &EvalJob) -> std::result::Result<EvalOutcome, String> {
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
        let value = hits as f64 / test.len() as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "field_exact_match".to_string(),
            MetricValue {
                value,
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
            eval_spec_sha256: Sha256Digest::of(b"line-eval"),
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

struct Fixture {
    _dir: tempfile::TempDir,
    home: Home,
    ledger: Ledger,
    client: Arc<LocalLedger>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    let ledger = home.init().unwrap();
    let client = Arc::new(LocalLedger::new(ledger.clone()));
    Fixture {
        _dir: dir,
        home,
        ledger,
        client,
    }
}

fn append(ledger: &Ledger, actor: &str, ev: impl Into<Event>) -> foundry_events::RecordedEvent {
    ledger
        .append(AppendRequest::new(actor, vec![NewEvent::new(ev)]))
        .unwrap()
        .events
        .remove(0)
}

/// Declares the recipe and pins inputs; returns the run id requested.
fn request_run(f: &Fixture, run_id: &str) -> String {
    let resolved =
        foundry_recipes::resolve_str(RECIPE, "line.toml", &BTreeMap::new(), None).unwrap();
    append(
        &f.ledger,
        "alice",
        RecipeDeclared {
            recipe_id: resolved.id.clone(),
            name: "line".into(),
            source: "line.toml".into(),
            resolved_config: resolved.config.clone(),
            env_overrides: BTreeMap::new(),
        },
    );
    let mut splits = BTreeMap::new();
    splits.insert(
        "train".to_string(),
        SplitStats {
            rows: 32,
            ..Default::default()
        },
    );
    append(
        &f.ledger,
        "alice",
        DatasetPinned {
            dataset_id: "d1".into(),
            source: "./data".into(),
            resolved_revision: None,
            shards: vec![],
            splits,
        },
    );
    append(
        &f.ledger,
        "alice",
        BaseModelPinned {
            model_id: "m1".into(),
            source: "./model".into(),
            resolved_revision: None,
            architecture: "Idefics2ForConditionalGeneration".into(),
            files: vec![],
            parameters: None,
            quantization: "none".into(),
        },
    );
    append(
        &f.ledger,
        "alice",
        RunRequested {
            run_id: run_id.into(),
            recipe_id: resolved.id,
            dataset_id: "d1".into(),
            model_id: "m1".into(),
            backend: "local".into(),
            overrides: BTreeMap::new(),
        },
    );
    run_id.to_string()
}

fn start_host(f: &Fixture, engine: Arc<LineEngine>, tag: &str) -> Host {
    let mut host = Host::new();
    let runners: Vec<Arc<dyn Runner>> = vec![
        Arc::new(TrainerRunner::new(engine).with_lease(Duration::from_millis(600))),
        Arc::new(EvaluatorRunner::new(Arc::new(LineEval))),
        Arc::new(PromoterRunner::new()),
    ];
    for r in runners {
        let cursor = f
            .home
            .root()
            .join("runners")
            .join(format!("{}.cursor", r.name()));
        let feed = EmbeddedFeed::open(f.ledger.clone(), &r.reacts_to(), cursor).unwrap();
        let ctx = RunnerContext {
            client: f.client.clone(),
            actor: format!("runner:{}", r.name()),
            runner_id: format!("{}-{tag}", r.name()),
            home: f.home.clone(),
            stop: host.stop_signal(),
        };
        host.spawn(r, Box::new(feed), ctx);
    }
    host
}

fn types_of(ledger: &Ledger) -> Vec<String> {
    ledger.iter_from(1).map(|r| r.unwrap().event_type).collect()
}

fn count(types: &[String], ty: EventType) -> usize {
    types.iter().filter(|t| *t == ty.as_str()).count()
}

fn engine(delay_ms: u64) -> Arc<LineEngine> {
    Arc::new(LineEngine {
        step_delay: Duration::from_millis(delay_ms),
        steps_run: AtomicU64::new(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_run_is_trained_checkpointed_and_evaluated() {
    let f = fixture();
    request_run(&f, "r1");
    let host = start_host(&f, engine(0), "a");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;

    let types = types_of(&f.ledger);
    assert_eq!(count(&types, EventType::RunClaimed), 1);
    assert_eq!(count(&types, EventType::RunStarted), 1);
    assert_eq!(count(&types, EventType::CheckpointCommitted), 4);
    assert_eq!(count(&types, EventType::RunCompleted), 1);
    // every_checkpoints = 2: checkpoints 2 and 4 are evaluated.
    assert_eq!(count(&types, EventType::EvalRequested), 2);
    assert_eq!(count(&types, EventType::EvalScored), 2);
    let points: usize = f
        .ledger
        .read_type(EventType::MetricsLogged, 1, 100)
        .unwrap()
        .iter()
        .map(|r| match r.decode_event().unwrap() {
            Event::MetricsLogged(m) => m.points.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(points, 40);
    // run_config.json is written and stored; every checkpoint file is in the store.
    assert!(f.home.run_dir("r1").join("run_config.json").is_file());
    for r in f
        .ledger
        .read_type(EventType::CheckpointCommitted, 1, 10)
        .unwrap()
    {
        let Event::CheckpointCommitted(c) = r.decode_event().unwrap() else {
            panic!()
        };
        assert_eq!(c.checkpoint_id, trainer::checkpoint_id(&c.files));
        for file in &c.files {
            assert!(f.home.artifacts().check(&file.sha256).unwrap());
        }
    }
    // The final checkpoint fits the line well: the last eval passes 0.5.
    let last = f.ledger.read_type(EventType::EvalScored, 1, 10).unwrap();
    let Event::EvalScored(s) = last.last().unwrap().decode_event().unwrap() else {
        panic!()
    };
    assert!(
        s.metrics["field_exact_match"].value > 0.5,
        "{:?}",
        s.metrics
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivering_everything_duplicates_no_outcome() {
    let f = fixture();
    request_run(&f, "r1");
    let host = start_host(&f, engine(0), "a");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;
    let before = types_of(&f.ledger);
    // Forget every cursor: all events are delivered again.
    std::fs::remove_dir_all(f.home.root().join("runners")).unwrap();
    let host = start_host(&f, engine(0), "b");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;
    assert_eq!(types_of(&f.ledger), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_trainer_is_resumed_from_its_last_checkpoint_to_the_same_result() {
    // Uninterrupted reference.
    let reference = fixture();
    request_run(&reference, "r1");
    let host = start_host(&reference, engine(0), "a");
    host.wait_idle(reference.client.as_ref()).await.unwrap();
    host.shutdown().await;

    let f = fixture();
    request_run(&f, "r1");
    let slow = engine(15);
    let host = start_host(&f, slow.clone(), "a");
    // Stop after the second checkpoint was committed.
    loop {
        let n = f
            .ledger
            .read_type(EventType::CheckpointCommitted, 1, 10)
            .unwrap()
            .len();
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.shutdown().await;
    assert!(slow.steps_run.load(Ordering::SeqCst) < 40);
    let host = start_host(&f, engine(0), "b");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;

    let types = types_of(&f.ledger);
    assert_eq!(count(&types, EventType::RunClaimed), 2);
    assert_eq!(count(&types, EventType::RunResumed), 1);
    assert_eq!(count(&types, EventType::RunCompleted), 1);
    let final_of = |l: &Ledger| {
        let c = l.read_type(EventType::CheckpointCommitted, 1, 100).unwrap();
        match c.last().unwrap().decode_event().unwrap() {
            Event::CheckpointCommitted(c) => (c.step, c.checkpoint_id),
            _ => panic!(),
        }
    };
    assert_eq!(final_of(&f.ledger), final_of(&reference.ledger));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trainers_racing_for_one_run_claim_it_once() {
    let f = fixture();
    request_run(&f, "r1");
    let a = start_host(&f, engine(2), "a");
    // A second host with its own cursors (as a second machine would have).
    let mut b = Host::new();
    let r: Arc<dyn Runner> =
        Arc::new(TrainerRunner::new(engine(2)).with_lease(Duration::from_millis(600)));
    let feed = EmbeddedFeed::open(
        f.ledger.clone(),
        &r.reacts_to(),
        f.home.root().join("runners-b/trainer.cursor"),
    )
    .unwrap();
    let ctx = RunnerContext {
        client: f.client.clone(),
        actor: "runner:trainer".into(),
        runner_id: "trainer-b".into(),
        home: f.home.clone(),
        stop: b.stop_signal(),
    };
    b.spawn(r, Box::new(feed), ctx);
    a.wait_idle(f.client.as_ref()).await.unwrap();
    b.wait_idle(f.client.as_ref()).await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    let types = types_of(&f.ledger);
    assert_eq!(count(&types, EventType::RunStarted), 1);
    assert_eq!(count(&types, EventType::RunCompleted), 1);
    assert_eq!(count(&types, EventType::CheckpointCommitted), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_follow_the_gates_the_actors_and_wait_for_evidence() {
    let f = fixture();
    request_run(&f, "r1");
    let host = start_host(&f, engine(0), "a");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    let ckpts: Vec<(String, u64)> = f
        .ledger
        .read_type(EventType::CheckpointCommitted, 1, 10)
        .unwrap()
        .iter()
        .map(|r| match r.decode_event().unwrap() {
            Event::CheckpointCommitted(c) => (c.checkpoint_id, c.step),
            _ => panic!(),
        })
        .collect();
    let last = ckpts.last().unwrap().0.clone();
    let first = ckpts[0].0.clone(); // checkpoint 1 is never evaluated (every 2)

    let promote = |who: &str, id: &str, channel: &str| {
        append(
            &f.ledger,
            who,
            PromotionRequested {
                checkpoint_id: id.into(),
                channel: channel.into(),
                reason: "test".into(),
            },
        )
    };
    promote("bob", &last, "staging");
    promote("bob", &last, "production"); // bob may not promote to production
    promote("alice", &last, "nightly"); // no such policy
    promote("alice", &first, "staging"); // waits: no eval yet
    host.wait_idle(f.client.as_ref()).await.unwrap();

    let decisions: Vec<Event> = f
        .ledger
        .read_stream("channel/staging", 1)
        .unwrap()
        .into_iter()
        .chain(f.ledger.read_stream("channel/production", 1).unwrap())
        .chain(f.ledger.read_stream("channel/nightly", 1).unwrap())
        .map(|r| r.decode_event().unwrap())
        .filter(|e| !matches!(e, Event::PromotionRequested(_)))
        .collect();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    match &decisions[0] {
        Event::AdapterPromoted(p) => {
            assert_eq!(p.checkpoint_id, last);
            assert_eq!(p.evidence.len(), 2);
            assert!(p.gates.iter().all(|g| g.passed));
        }
        other => panic!("{other:?}"),
    }
    match &decisions[1] {
        Event::PromotionRejected(p) => {
            assert!(p.reason.contains("bob may not promote"), "{}", p.reason)
        }
        other => panic!("{other:?}"),
    }
    match &decisions[2] {
        Event::PromotionRejected(p) => {
            assert!(p.reason.contains("no promotion policy"), "{}", p.reason)
        }
        other => panic!("{other:?}"),
    }

    // The waiting request is decided when its evidence arrives.
    append(
        &f.ledger,
        "alice",
        foundry_events::EvalRequested {
            eval_id: "manual-1".into(),
            checkpoint_id: Some(first.clone()),
            run_id: Some("r1".into()),
            model_id: "m1".into(),
            dataset_id: "d1".into(),
            split: "test".into(),
            limit: Some(16),
        },
    );
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;
    let staging: Vec<Event> = f
        .ledger
        .read_stream("channel/staging", 1)
        .unwrap()
        .into_iter()
        .map(|r| r.decode_event().unwrap())
        .collect();
    let decided_first = staging.iter().any(|e| match e {
        Event::AdapterPromoted(p) => p.checkpoint_id == first,
        Event::PromotionRejected(p) => p.checkpoint_id == first,
        _ => false,
    });
    assert!(decided_first, "{staging:?}");
}

#[test]
fn decide_weighs_gates_actors_and_the_production_margin() {
    let resolved =
        foundry_recipes::resolve_str(RECIPE, "line.toml", &BTreeMap::new(), None).unwrap();
    let mut policy = resolved.recipe.promotion["staging"].clone();
    policy.beat_production_by = Some(0.5);
    let m = |v: f64| {
        let mut b = BTreeMap::new();
        b.insert(
            "field_exact_match".to_string(),
            MetricValue {
                value: v,
                ci_low: None,
                ci_high: None,
            },
        );
        b
    };
    let d = decide(&policy, "x", &m(0.9), None);
    assert!(d.promote, "{d:?}");
    let d = decide(&policy, "x", &m(0.9), Some(("prod", &m(0.898))));
    assert!(!d.promote);
    assert!(d.reason.contains("+0.20 points"), "{}", d.reason);
    let d = decide(&policy, "x", &m(0.9), Some(("prod", &m(0.89))));
    assert!(d.promote, "{d:?}");
    let d = decide(&policy, "x", &m(0.4), None);
    assert!(!d.promote);
    assert!(
        d.reason.contains("field_exact_match >= 0.5"),
        "{}",
        d.reason
    );
    let d = decide(&policy, "x", &BTreeMap::new(), None);
    assert!(
        d.reason.contains("no field_exact_match in the eval"),
        "{}",
        d.reason
    );
}
