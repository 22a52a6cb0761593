//! The framework driven end to end over a real sled ledger, with a small but
//! real executor: gradient descent on a line, checkpointed to files and
//! resumed from them, scored by how many held-out points it predicts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foundry_events::{Event, EventType, MetricValue, PromotionRequested};
use foundry_ledger::{AppendRequest, Home, Identity, Ledger, NewEvent};

use crate::testkit::{LineEngine, LineEval, TestKeys, RECIPE};
use crate::*;

struct Fixture {
    _dir: tempfile::TempDir,
    home: Home,
    ledger: Ledger,
    keys: TestKeys,
    client: Arc<LocalLedger>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    let ledger = home.init().unwrap();
    let keys = TestKeys::new();
    keys.genesis(&ledger);
    let client = Arc::new(LocalLedger::new(ledger.clone(), keys.alice.clone()));
    Fixture {
        _dir: dir,
        home,
        ledger,
        keys,
        client,
    }
}

fn append(
    ledger: &Ledger,
    actor: &Identity,
    ev: impl Into<Event>,
) -> foundry_events::RecordedEvent {
    ledger
        .append_as(actor, AppendRequest::new(vec![NewEvent::new(ev)]))
        .unwrap()
        .events
        .remove(0)
}

/// Declares the recipe and pins inputs; returns the run id requested.
fn request_run(f: &Fixture, run_id: &str) -> String {
    testkit::request_run(&f.ledger, &f.keys.alice, run_id);
    run_id.to_string()
}

/// The client a runner of this name uses: the ledger, as its own key.
fn client_for(f: &Fixture, runner: &str) -> Arc<LocalLedger> {
    Arc::new(f.client.acting_as(f.keys.for_runner(runner)))
}

fn start_host(f: &Fixture, engine: Arc<LineEngine>, tag: &str) -> Host {
    let mut host = Host::new();
    let runners: Vec<Arc<dyn Runner>> = vec![
        Arc::new(TrainerRunner::new(engine).with_lease(Duration::from_millis(600))),
        Arc::new(EvaluatorRunner::new(Arc::new(LineEval))),
        Arc::new(PromoterRunner::new(Arc::new(LineEval))),
    ];
    for r in runners {
        let cursor = f
            .home
            .root()
            .join("runners")
            .join(format!("{}.cursor", r.name()));
        let feed = EmbeddedFeed::open(f.ledger.clone(), &r.reacts_to(), cursor).unwrap();
        let ctx = RunnerContext {
            client: client_for(f, r.name()),
            runner_id: format!("{}-{tag}", r.name()),
            home: f.home.clone(),
            stop: host.stop_signal(),
        };
        host.spawn(r, Box::new(feed), ctx);
    }
    host
}

fn types_of(ledger: &Ledger) -> Vec<String> {
    ledger
        .iter_from(1)
        .map(|r| r.unwrap().statement.event_type)
        .collect()
}

fn count(types: &[String], ty: EventType) -> usize {
    types.iter().filter(|t| *t == ty.as_str()).count()
}

fn engine(delay_ms: u64) -> Arc<LineEngine> {
    Arc::new(LineEngine::new(delay_ms))
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
        assert_eq!(c.checkpoint_id, checkpoint_id(&c.files));
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
        client: client_for(&f, "trainer"),
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

    // bob is an operator too, but the production policy names alice only.
    let bob = Identity::generate("bob").unwrap();
    append(
        &f.ledger,
        &f.keys.root,
        foundry_ledger::trust::Grant::of(&bob, &[foundry_events::Role::Operator], "").event(),
    );
    let alice = f.keys.alice.clone();
    let promote = |who: &Identity, id: &str, channel: &str| {
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
    promote(&bob, &last, "staging");
    promote(&bob, &last, "production"); // bob may not promote to production
    promote(&alice, &last, "nightly"); // no such policy
    promote(&alice, &first, "staging"); // waits: no eval yet
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
            // Who signed the evidence: the evaluator's key, and bob's request.
            let who: Vec<(&str, &str)> = p
                .signed_by
                .iter()
                .map(|s| (s.event_type.as_str(), s.actor.as_str()))
                .collect();
            assert_eq!(
                who,
                vec![
                    ("EvalScored", "runner:evaluator"),
                    ("PromotionRequested", "bob")
                ]
            );
            assert_eq!(p.signed_by[0].signer, f.keys.evaluator.public_key());
        }
        other => panic!("{other:?}"),
    }
    match &decisions[1] {
        Event::PromotionRejected(p) => {
            assert!(p.reason.contains("bob may not request it"), "{}", p.reason)
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
        &alice,
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
    let d = decide(&policy, None, "x", &m(0.9), None);
    assert!(d.promote, "{d:?}");
    let d = decide(&policy, None, "x", &m(0.9), Some(("prod", &m(0.898))));
    assert!(!d.promote);
    assert!(d.reason.contains("+0.20 points"), "{}", d.reason);
    let d = decide(&policy, None, "x", &m(0.9), Some(("prod", &m(0.89))));
    assert!(d.promote, "{d:?}");
    let d = decide(&policy, None, "x", &m(0.4), None);
    assert!(!d.promote);
    assert!(
        d.reason.contains("field_exact_match >= 0.5"),
        "{}",
        d.reason
    );
    let d = decide(&policy, None, "x", &BTreeMap::new(), None);
    assert!(
        d.reason.contains("no field_exact_match in the eval"),
        "{}",
        d.reason
    );
}

/// An EvalScored for `checkpoint` as the runner would write it, with the
/// dataset's real split hash and the line spec.
fn evidence(f: &Fixture, eval_id: &str, checkpoint: &str) -> foundry_events::EvalScored {
    let dataset = f
        .ledger
        .read_stream("dataset/d1", 1)
        .unwrap()
        .remove(0)
        .decode_event()
        .unwrap();
    let Event::DatasetPinned(d) = dataset else {
        panic!()
    };
    let mut metrics = BTreeMap::new();
    metrics.insert(
        "field_exact_match".to_string(),
        MetricValue {
            value: 1.0,
            ci_low: None,
            ci_high: None,
        },
    );
    foundry_events::EvalScored {
        eval_id: eval_id.into(),
        checkpoint_id: Some(checkpoint.into()),
        run_id: Some("r1".into()),
        model_id: "m1".into(),
        dataset_id: "d1".into(),
        split: "test".into(),
        split_sha256: d.split_sha256("test"),
        eval_spec_sha256: testkit::line_spec(),
        examples: 16,
        metrics,
        breakdown: BTreeMap::new(),
        latency_ms_mean: 0.0,
        throughput_docs_per_s: 0.0,
        code: code_version(),
        device: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_evidence_that_matches_the_recipe_and_the_policies_promotes() {
    let f = fixture();
    request_run(&f, "r1");
    let host = start_host(&f, engine(0), "a");
    host.wait_idle(f.client.as_ref()).await.unwrap();
    let first = f
        .ledger
        .read_type(EventType::CheckpointCommitted, 1, 1)
        .unwrap()
        .remove(0);
    let Event::CheckpointCommitted(c) = first.decode_event().unwrap() else {
        panic!()
    };
    let cp = c.checkpoint_id; // never evaluated automatically (every 2nd)
                              // The admin pins staging: only `runner:evaluator` counts, with 10+ examples.
    append(
        &f.ledger,
        &f.keys.root,
        foundry_events::ChannelPolicySet {
            channel: "staging".into(),
            requesters: None,
            rollbackers: None,
            evaluators: Some(vec!["runner:evaluator".into()]),
            gates: vec!["field_exact_match >= 0.5".into()],
            min_examples: 10,
        },
    );
    // A second evaluator key, which the channel does not trust.
    let other = Identity::generate("eval-2").unwrap();
    append(
        &f.ledger,
        &f.keys.root,
        foundry_ledger::trust::Grant::of(&other, &[foundry_events::Role::Evaluator], "").event(),
    );
    let decided = |f: &Fixture| {
        f.ledger
            .read_stream("channel/staging", 1)
            .unwrap()
            .iter()
            .filter(|r| {
                matches!(
                    r.decode_event().unwrap(),
                    Event::AdapterPromoted(_) | Event::PromotionRejected(_)
                )
            })
            .count()
    };
    append(
        &f.ledger,
        &f.keys.alice,
        PromotionRequested {
            checkpoint_id: cp.clone(),
            channel: "staging".into(),
            reason: "test".into(),
        },
    );
    // Evidence that does not count: no decision, however perfect it looks.
    let zero = foundry_events::EvalScored {
        examples: 0,
        ..evidence(&f, "e-zero", &cp)
    };
    let few = foundry_events::EvalScored {
        examples: 5,
        ..evidence(&f, "e-few", &cp)
    };
    let no_spec = foundry_events::EvalScored {
        eval_spec_sha256: foundry_events::Sha256Digest::ZERO,
        split_sha256: foundry_events::Sha256Digest::ZERO,
        ..evidence(&f, "e-spec", &cp)
    };
    let other_split = foundry_events::EvalScored {
        split: "train".into(),
        ..evidence(&f, "e-split", &cp)
    };
    for bad in [zero, few, no_spec, other_split] {
        append(&f.ledger, &f.keys.evaluator, bad);
    }
    append(&f.ledger, &other, evidence(&f, "e-untrusted", &cp));
    host.wait_idle(f.client.as_ref()).await.unwrap();
    assert_eq!(decided(&f), 0, "promoted on evidence that does not count");
    // The one that counts.
    let good = append(&f.ledger, &f.keys.evaluator, evidence(&f, "e-good", &cp));
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;
    let decision = f
        .ledger
        .read_stream("channel/staging", 1)
        .unwrap()
        .into_iter()
        .map(|r| r.decode_event().unwrap())
        .find_map(|e| match e {
            Event::AdapterPromoted(p) => Some(p),
            _ => None,
        })
        .expect("promoted once the real evidence came");
    assert_eq!(decision.evidence[0], good.event_id.to_string());
    assert_eq!(decision.signed_by[0].actor, "runner:evaluator");
    // Both policies' gates were weighed.
    let gates: Vec<&str> = decision.gates.iter().map(|g| g.gate.as_str()).collect();
    assert!(
        gates.contains(&"channel policy: field_exact_match >= 0.5"),
        "{gates:?}"
    );
}

/// The line trainer, except that every attempt at a run whose id starts with
/// `bad` dies after two steps, as a training process killed by the kernel does.
struct DyingEngine(Arc<LineEngine>);

impl TrainingEngine for DyingEngine {
    fn prepare(&self, job: &TrainJob) -> std::result::Result<TrainPlan, EngineFailure> {
        self.0.prepare(job)
    }

    fn train(
        &self,
        job: &TrainJob,
        sink: &mut dyn TrainSink,
    ) -> std::result::Result<TrainSummary, EngineFailure> {
        if !job.run_id.starts_with("bad") {
            return self.0.train(job, sink);
        }
        for step in 1..=2 {
            sink.on_step(foundry_events::MetricPoint {
                step,
                loss: 1.0,
                lr: 0.1,
                grad_norm: 1.0,
                tokens: 1,
                tokens_per_s: 1.0,
                elapsed_ms: 1,
            });
        }
        Err(EngineFailure::retryable(format!(
            "the train process was killed by signal 9 (attempt {})",
            job.attempt
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_attempts_keep_dying_fails_naming_them_and_the_runner_goes_on() {
    let f = fixture();
    request_run(&f, "bad-1");
    request_run(&f, "good-1");
    let mut host = Host::new();
    let trainer = TrainerRunner::new(Arc::new(DyingEngine(engine(0))))
        .with_lease(Duration::from_millis(600))
        .with_max_attempts(3);
    let r: Arc<dyn Runner> = Arc::new(trainer);
    let cursor = f.home.root().join("runners").join("trainer.cursor");
    let feed = EmbeddedFeed::open(f.ledger.clone(), &r.reacts_to(), cursor).unwrap();
    let ctx = RunnerContext {
        client: client_for(&f, "trainer"),
        runner_id: "trainer-a".into(),
        home: f.home.clone(),
        stop: host.stop_signal(),
    };
    host.spawn(r, Box::new(feed), ctx);
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;

    let events: Vec<Event> = f
        .ledger
        .read_stream("run/bad-1", 1)
        .unwrap()
        .iter()
        .map(|r| r.decode_event().unwrap())
        .collect();
    let died: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunAttemptFailed(a) => Some(a.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(died, vec![1, 2, 3]);
    let failed: Vec<&foundry_events::RunFailed> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunFailed(x) => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    let reason = &failed[0].reason;
    assert!(
        reason.starts_with("gave up after 3 attempts without a new checkpoint"),
        "{reason}"
    );
    for n in 1..=3 {
        assert!(
            reason.contains(&format!(
                "attempt {n} on trainer-a: the train process was killed by signal 9 (attempt {n})"
            )),
            "{reason}"
        );
    }
    assert!(!reason.contains('\n'));
    // No fourth claim, and the good run, requested after it, completed.
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::RunClaimed(_)))
            .count(),
        3
    );
    let good = f.ledger.read_stream("run/good-1", 1).unwrap();
    assert!(good
        .iter()
        .any(|r| r.statement.event_type == EventType::RunCompleted.as_str()));
}

/// An eval engine whose every job fails, fatally or not, counting its calls.
struct FailingEval {
    retry: bool,
    calls: std::sync::atomic::AtomicU32,
}

impl EvalSpecs for FailingEval {
    fn spec_sha256(
        &self,
        _config: Option<&serde_json::Value>,
        _split: &str,
        _limit: Option<u64>,
    ) -> std::result::Result<foundry_events::Sha256Digest, String> {
        Ok(testkit::line_spec())
    }
}

impl EvalEngine for FailingEval {
    fn evaluate(&self, _job: &EvalJob) -> std::result::Result<EvalOutcome, EngineFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(EngineFailure {
            reason: "split validation has no rows with images".into(),
            retry: self.retry,
        })
    }
}

/// Requests an eval of the base model and runs an evaluator over an engine
/// that fails it (`retry` as given); returns the host and the engine.
fn evaluate_failing(f: &Fixture, retry: bool) -> (Host, Arc<FailingEval>) {
    let engine = Arc::new(FailingEval {
        retry,
        calls: Default::default(),
    });
    request_run(f, "r-eval");
    append(
        &f.ledger,
        &f.keys.alice,
        foundry_events::EvalRequested {
            eval_id: "e-base".into(),
            checkpoint_id: None,
            run_id: None,
            model_id: testkit::model_pinned().model_id,
            dataset_id: testkit::dataset_pinned().dataset_id,
            split: "train".into(),
            limit: None,
        },
    );
    let mut host = Host::new();
    let r: Arc<dyn Runner> = Arc::new(EvaluatorRunner::new(engine.clone()));
    let cursor = f.home.root().join("runners").join("evaluator.cursor");
    let feed = EmbeddedFeed::open(f.ledger.clone(), &r.reacts_to(), cursor).unwrap();
    let ctx = RunnerContext {
        client: client_for(f, "evaluator"),
        runner_id: "evaluator-t".into(),
        home: f.home.clone(),
        stop: host.stop_signal(),
    };
    host.spawn(r, Box::new(feed), ctx);
    (host, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failure_that_a_retry_cannot_change_is_not_retried() {
    let f = fixture();
    let (host, engine) = evaluate_failing(&f, false);
    host.wait_idle(f.client.as_ref()).await.unwrap();
    host.shutdown().await;
    assert_eq!(engine.calls.load(Ordering::SeqCst), 1);
    assert_eq!(count(&types_of(&f.ledger), EventType::EvalScored), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failure_that_a_retry_may_fix_is_delivered_again() {
    let f = fixture();
    let (host, engine) = evaluate_failing(&f, true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while engine.calls.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.shutdown().await;
}
