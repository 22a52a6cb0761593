//! Fold tests per projection, the replay-equivalence test on a randomized
//! history, time travel on a scripted history, store recovery and id
//! prefixes.

use crate::histories::append_synthetic;
use crate::lineage::lineage;
use crate::*;
use foundry_events::*;
use foundry_ledger::{AppendRequest, Home, Ledger, NewEvent};
use std::collections::BTreeMap;

/// A test envelope at `seq`, recorded at `seq` seconds past 2026-01-01.
fn env(seq: u64, event: impl Into<Event>) -> Envelope {
    Envelope {
        seq,
        stream: String::new(),
        stream_version: seq,
        event_id: uuid_for(seq),
        schema_version: SCHEMA_VERSION,
        recorded_at: Timestamp(1_767_225_600_000_000_000 + seq as i64 * 1_000_000_000),
        actor: format!("actor-{seq}"),
        signer: "UTEST".into(),
        causation_id: None,
        correlation_id: None,
        idempotency_key: None,
        event: event.into(),
        prev_hash: Sha256Digest::ZERO,
        hash: Sha256Digest([seq as u8; 32]),
    }
}

fn uuid_for(seq: u64) -> EventId {
    EventId::from_u128(seq as u128)
}

fn fold(events: Vec<Event>) -> State {
    let mut s = State::new();
    for (i, e) in events.into_iter().enumerate() {
        assert!(s.apply(&env(i as u64 + 1, e)));
    }
    s
}

fn recipe(id: &str) -> Event {
    Event::RecipeDeclared(RecipeDeclared {
        recipe_id: id.into(),
        name: "cord".into(),
        source: "recipes/cord.toml".into(),
        resolved_config: serde_json::json!({"lora": {"r": 8}}),
        env_overrides: BTreeMap::new(),
    })
}

fn dataset(id: &str) -> Event {
    Event::DatasetPinned(DatasetPinned {
        dataset_id: id.into(),
        source: "./data".into(),
        resolved_revision: None,
        shards: vec![ShardPin {
            split: "train".into(),
            path: "train.jsonl".into(),
            sha256: Sha256Digest([7; 32]),
            bytes: 10,
            rows: 3,
        }],
        splits: BTreeMap::new(),
    })
}

fn model(id: &str) -> Event {
    Event::BaseModelPinned(BaseModelPinned {
        model_id: id.into(),
        source: "hf://org/m@main".into(),
        resolved_revision: Some("abc".into()),
        architecture: "Idefics2ForConditionalGeneration".into(),
        files: vec![],
        parameters: None,
        quantization: "bnb-nf4".into(),
    })
}

fn requested(run: &str) -> Event {
    Event::RunRequested(RunRequested {
        run_id: run.into(),
        recipe_id: "rec".into(),
        dataset_id: "ds".into(),
        model_id: "mod".into(),
        backend: "local".into(),
        overrides: BTreeMap::new(),
    })
}

fn started(run: &str, commit: &str) -> Event {
    Event::RunStarted(RunStarted {
        run_id: run.into(),
        runner_id: "runner-1".into(),
        host: HostInfo::default(),
        device: DeviceInfo {
            kind: "cpu".into(),
            name: "xeon".into(),
            dtype: "f32".into(),
        },
        code: CodeVersion {
            executable_sha256: None,
            version: "0.1.0".into(),
            git_commit: Some(commit.into()),
            dirty: false,
        },
        resolved_config: serde_json::json!({"train": {"lr": 0.0001}}),
        run_config_sha256: Sha256Digest([1; 32]),
        env: BTreeMap::new(),
        total_steps: 30,
    })
}

fn metrics(run: &str, pts: &[(u64, f64, f64)]) -> Event {
    Event::MetricsLogged(MetricsLogged {
        run_id: run.into(),
        points: pts
            .iter()
            .map(|&(step, loss, tps)| MetricPoint {
                step,
                loss,
                lr: 1e-4,
                grad_norm: 1.0,
                tokens: 100,
                tokens_per_s: tps,
                elapsed_ms: step,
            })
            .collect(),
    })
}

fn checkpoint(run: &str, id: &str, step: u64) -> Event {
    Event::CheckpointCommitted(CheckpointCommitted {
        run_id: run.into(),
        checkpoint_id: id.into(),
        step,
        files: vec![FileDigest {
            path: "adapter_model.safetensors".into(),
            sha256: Sha256Digest([9; 32]),
            bytes: 100,
        }],
        loss: Some(0.5),
        location: format!("adapters/{run}/{step}"),
    })
}

fn scored(eval: &str, cp: &str, run: &str, v: f64) -> Event {
    let mut m = BTreeMap::new();
    m.insert(
        "field_exact_match".to_string(),
        MetricValue {
            value: v,
            ci_low: Some(v - 0.01),
            ci_high: Some(v + 0.01),
        },
    );
    Event::EvalScored(EvalScored {
        eval_id: eval.into(),
        checkpoint_id: Some(cp.into()),
        run_id: Some(run.into()),
        model_id: "mod".into(),
        dataset_id: "ds".into(),
        split: "test".into(),
        split_sha256: Sha256Digest([2; 32]),
        eval_spec_sha256: Sha256Digest([3; 32]),
        examples: 50,
        metrics: m,
        breakdown: BTreeMap::new(),
        latency_ms_mean: 10.0,
        throughput_docs_per_s: 1.0,
        code: CodeVersion::default(),
        device: DeviceInfo::default(),
    })
}

fn promoted(cp: &str, channel: &str, evidence: Vec<String>) -> Event {
    Event::AdapterPromoted(AdapterPromoted {
        signed_by: vec![],
        checkpoint_id: cp.into(),
        channel: channel.into(),
        previous_checkpoint_id: None,
        gates: vec![GateResult {
            gate: "field_exact_match >= 0.9".into(),
            actual: Some(0.95),
            passed: true,
            detail: String::new(),
        }],
        evidence,
        reason: format!("promote {cp}"),
    })
}

// ---------------------------------------------------------------- folds

#[test]
fn fold_recipes_datasets_models() {
    let s = fold(vec![
        recipe("rec"),
        recipe("rec"),
        dataset("ds"),
        model("mod"),
        requested("r1"),
        requested("r2"),
    ]);
    let r = &s.recipes["rec"];
    assert_eq!(r.declarations, 2);
    assert_eq!(r.declared.seq, 1);
    assert_eq!(r.runs, vec!["r1", "r2"]);
    assert_eq!(s.datasets["ds"].shards.len(), 1);
    assert_eq!(s.datasets["ds"].runs, vec!["r1", "r2"]);
    assert_eq!(s.models["mod"].quantization, "bnb-nf4");
    assert_eq!(s.models["mod"].runs.len(), 2);
}

#[test]
fn fold_run_lifecycle() {
    let s = fold(vec![
        requested("r1"),
        Event::RunClaimed(RunClaimed {
            run_id: "r1".into(),
            runner_id: "runner-1".into(),
            host: HostInfo::default(),
            lease_ms: 1000,
            attempt: 1,
        }),
        started("r1", "abc"),
        metrics("r1", &[(1, 2.0, 100.0), (2, 1.5, 300.0)]),
        checkpoint("r1", "cp1", 2),
        Event::RunFailed(RunFailed {
            run_id: "r1".into(),
            reason: "preempted".into(),
            step: Some(2),
            retryable: true,
        }),
        Event::RunResumed(RunResumed {
            run_id: "r1".into(),
            runner_id: "runner-2".into(),
            checkpoint_id: "cp1".into(),
            step: 2,
            reason: "lease expired".into(),
        }),
        metrics("r1", &[(3, 1.7, 200.0)]),
        Event::RunCompleted(RunCompleted {
            run_id: "r1".into(),
            final_checkpoint_id: Some("cp1".into()),
            steps: 3,
            final_loss: Some(1.7),
            duration_ms: 1234,
        }),
        requested("r2"),
    ]);
    let r = &s.runs["r1"];
    assert_eq!(r.status, "completed");
    assert_eq!(r.runner_id.as_deref(), Some("runner-2"));
    assert_eq!(
        r.code.as_ref().and_then(|c| c.git_commit.as_deref()),
        Some("abc")
    );
    assert_eq!(r.metrics.points, 3);
    assert_eq!(r.metrics.first_loss.map(|v| v.value), Some(2.0));
    assert_eq!(
        r.metrics.last_loss.map(|v| (v.step, v.value)),
        Some((3, 1.7))
    );
    assert_eq!(
        r.metrics.best_loss.map(|v| (v.step, v.value)),
        Some((2, 1.5))
    );
    assert_eq!(r.metrics.mean_tokens_per_s, Some(200.0));
    assert_eq!(r.metrics.max_tokens_per_s, Some(300.0));
    assert_eq!(r.metrics.tokens, 300);
    assert_eq!(r.checkpoints, vec!["cp1"]);
    assert_eq!(r.resumes.len(), 1);
    assert_eq!(
        r.failure.as_ref().map(|f| f.reason.as_str()),
        Some("preempted")
    );
    assert_eq!(r.duration_ms, Some(1234));
    assert_eq!((r.event_count, r.first_seq, r.last_seq), (9, 1, 9));
    assert_eq!(r.started_at, Some(env(3, recipe("x")).recorded_at));
    assert_eq!(r.ended_at, Some(env(9, recipe("x")).recorded_at));
    assert_eq!(s.runs["r2"].status, "requested");
    assert_eq!(s.runs["r2"].event_count, 1);
}

#[test]
fn fold_cancel_and_unknown_run_events() {
    let s = fold(vec![
        metrics("ghost", &[(1, 1.0, 1.0)]),
        requested("r1"),
        Event::RunCancelled(RunCancelled {
            run_id: "r1".into(),
            reason: "wrong dataset".into(),
        }),
        Event::RunClaimed(RunClaimed {
            run_id: "r1".into(),
            runner_id: "late".into(),
            host: HostInfo::default(),
            lease_ms: 1,
            attempt: 2,
        }),
    ]);
    assert_eq!(s.runs["ghost"].status, "unknown");
    assert_eq!(s.runs["ghost"].metrics.points, 1);
    assert_eq!(
        s.runs["r1"].status, "cancelled",
        "a late claim does not revive a cancelled run"
    );
    assert_eq!(s.runs["r1"].cancel_reason.as_deref(), Some("wrong dataset"));
}

#[test]
fn fold_checkpoints_evals_promotions() {
    let s = fold(vec![
        requested("r1"),
        checkpoint("r1", "cp1", 10),
        scored("e1", "cp1", "r1", 0.95),
        Event::PromotionRequested(PromotionRequested {
            checkpoint_id: "cp1".into(),
            channel: "production".into(),
            reason: "good".into(),
        }),
        promoted(
            "cp1",
            "production",
            vec![uuid_for(3).to_string(), uuid_for(4).to_string()],
        ),
        Event::PromotionRejected(PromotionRejected {
            signed_by: vec![],
            checkpoint_id: "cp1".into(),
            channel: "edge".into(),
            gates: vec![],
            evidence: vec![],
            reason: "latency".into(),
        }),
    ]);
    let c = &s.checkpoints["cp1"];
    assert_eq!((c.run_id.as_str(), c.step), ("r1", 10));
    assert_eq!(c.files[0].path, "adapter_model.safetensors");
    assert_eq!(c.evals.len(), 1);
    assert_eq!(c.evals[0].metrics["field_exact_match"].value, 0.95);
    let outcomes: Vec<_> = c.promotions.iter().map(|p| p.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["requested", "promoted", "rejected"]);
    assert_eq!(c.channels, vec!["production"]);
    assert_eq!(s.runs["r1"].promotions.len(), 3);
    assert_eq!(s.runs["r1"].evals, vec!["e1"]);
    assert_eq!(s.evals["e1"].status, "scored");
    assert_eq!(
        s.evidence[&uuid_for(3).to_string()].event_type,
        "EvalScored"
    );
}

#[test]
fn fold_channels_history_and_evidence() {
    let s = fold(vec![
        requested("r1"),
        checkpoint("r1", "a", 1),
        checkpoint("r1", "b", 2),
        scored("e1", "a", "r1", 0.91),
        promoted("a", "production", vec![uuid_for(4).to_string()]),
        scored("e2", "b", "r1", 0.97),
        promoted(
            "b",
            "production",
            vec![uuid_for(6).to_string(), "no-such-event".into()],
        ),
        Event::ChannelRolledBack(ChannelRolledBack {
            channel: "production".into(),
            from_checkpoint_id: Some("b".into()),
            to_checkpoint_id: Some("a".into()),
            reason: "regression".into(),
        }),
    ]);
    let ch = &s.channels["production"];
    assert_eq!(ch.current_checkpoint_id.as_deref(), Some("a"));
    assert_eq!(ch.current_entry, Some(2));
    let actions: Vec<_> = ch.history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, vec!["promoted", "promoted", "rolled_back"]);
    assert_eq!(ch.history[1].previous_checkpoint_id.as_deref(), Some("a"));
    let ev = &ch.history[1].evidence;
    assert_eq!(ev[0].seq, Some(6));
    assert!(
        ev[0].summary.contains("field_exact_match=0.9700"),
        "{}",
        ev[0].summary
    );
    assert_eq!(ev[1].event_type, "unknown");
    assert_eq!(s.checkpoints["a"].channels, vec!["production"]);
    assert!(s.checkpoints["b"].channels.is_empty());
    let outcomes: Vec<_> = s.checkpoints["b"]
        .promotions
        .iter()
        .map(|p| p.outcome.as_str())
        .collect();
    assert_eq!(outcomes, vec!["promoted", "rolled_back_from"]);
}

#[test]
fn fold_lineage_edges() {
    let s = fold(vec![
        requested("r1"),
        started("r1", "abc"),
        started("r1", "abc"),
        checkpoint("r1", "cp1", 5),
        scored("e1", "cp1", "r1", 0.9),
        promoted("cp1", "staging", vec![]),
        promoted("cp1", "staging", vec![]),
    ]);
    let run = &s.lineage["run:r1"];
    let rels: Vec<_> = run
        .inputs
        .iter()
        .map(|e| (e.rel.as_str(), e.node.key()))
        .collect();
    assert_eq!(
        rels,
        vec![
            ("recipe", "recipe:rec".to_string()),
            ("dataset", "dataset:ds".to_string()),
            ("base_model", "model:mod".to_string()),
            ("code", "code:0.1.0@abc".to_string()),
        ]
    );
    assert_eq!(run.outputs[0].node.key(), "checkpoint:cp1");
    let cp = &s.lineage["checkpoint:cp1"];
    assert_eq!(
        cp.outputs.len(),
        2,
        "eval and channel, each once: {:?}",
        cp.outputs
    );
    assert_eq!(s.lineage["dataset:ds"].outputs[0].node.key(), "run:r1");
}

#[test]
fn apply_is_idempotent_per_seq() {
    let mut s = State::new();
    assert!(s.apply(&env(1, requested("r1"))));
    let before = s.clone();
    assert!(!s.apply(&env(1, requested("r1"))));
    assert_eq!(s, before);
}

#[test]
fn changes_are_tracked() {
    let mut s = fold(vec![requested("r1"), checkpoint("r1", "cp1", 1)]);
    s.track_changes();
    s.apply(&env(3, scored("e1", "cp1", "r1", 0.9)));
    let ch = s.take_changes();
    let kinds: Vec<_> = ch.iter().map(|(k, id)| format!("{k}/{id}")).collect();
    assert!(kinds.contains(&"checkpoints/cp1".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"runs/r1".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"evals/e1".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"lineage/eval:e1".to_string()), "{kinds:?}");
}

// ---------------------------------------------------------------- store

fn home() -> (tempfile::TempDir, Home, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::at(dir.path().join("h"));
    let ledger = home.init().expect("init");
    (dir, home, ledger)
}

#[test]
fn replay_equals_incremental_catch_up_on_50k_events() {
    let (dir, home, ledger) = home();
    let mut store = ViewStore::open(&home).expect("views");
    // Catch up at irregular points while the history grows.
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut catch_ups = 0;
    let head = append_synthetic(&ledger, 7, 50_000, 250, |_| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        if rng_state.is_multiple_of(9) {
            let c = store.catch_up(&ledger)?;
            assert!(c.rebuilt.is_none() || catch_ups == 0, "{c:?}");
            catch_ups += 1;
        }
        Ok(())
    })
    .expect("append");
    assert!(head >= 50_000, "{head}");
    store.catch_up(&ledger).expect("final catch-up");
    assert!(catch_ups > 10, "{catch_ups}");
    let incremental = store.digests().expect("digests");

    let mut full = ViewStore::open_dir(&dir.path().join("full")).expect("views");
    let c = full.rebuild(&ledger).expect("rebuild");
    assert_eq!(c.to_seq, head);
    let rebuilt = full.digests().expect("digests");
    assert_eq!(incremental, rebuilt);

    let mem = fold_until(&ledger, Bound::Head).expect("fold");
    assert_eq!(digests(&mem).expect("digests"), rebuilt);
    assert_eq!(store.load_state().expect("load"), mem);

    // The history is plausible: every view is populated.
    for d in &rebuilt {
        assert!(d.entries > 0, "empty view {}", d.view);
    }
    assert!(mem.runs.len() > 100, "{}", mem.runs.len());
    assert!(mem
        .channels
        .values()
        .any(|c| c.history.iter().any(|h| h.action == "rolled_back")));
    let promoted = mem
        .channels
        .values()
        .flat_map(|c| &c.history)
        .filter(|h| h.action == "promoted")
        .collect::<Vec<_>>();
    assert!(!promoted.is_empty());
    assert!(promoted
        .iter()
        .all(|h| h.evidence.iter().all(|e| e.seq.is_some())));
}

#[test]
fn store_recovers_from_interrupted_write_and_foreign_ledger() {
    let (dir, home, ledger) = home();
    append_synthetic(&ledger, 1, 500, 100, |_| Ok(())).expect("append");
    let mut store = ViewStore::open(&home).expect("views");
    assert_eq!(
        store.catch_up(&ledger).expect("c").rebuilt.as_deref(),
        Some("new store")
    );
    assert!(store.catch_up(&ledger).expect("c").rebuilt.is_none());
    let good = store.digests().expect("d");
    // A crash mid-write leaves the store unclean.
    store
        .meta_for_tests()
        .insert("clean", b"0".as_slice())
        .expect("poke");
    let c = store.catch_up(&ledger).expect("c");
    assert_eq!(
        c.rebuilt.as_deref(),
        Some("an earlier write was interrupted")
    );
    assert_eq!(store.digests().expect("d"), good);
    // Views built from another ledger are rebuilt.
    let other = Home::at(dir.path().join("other"));
    let other_ledger = other.init().expect("init");
    append_synthetic(&other_ledger, 2, 600, 100, |_| Ok(())).expect("append");
    let c = store.catch_up(&other_ledger).expect("c");
    assert!(
        c.rebuilt
            .as_deref()
            .is_some_and(|r| r.contains("no longer holds")),
        "{c:?}"
    );
    assert_eq!(
        store.digests().expect("d"),
        digests(&fold_until(&other_ledger, Bound::Head).expect("f")).expect("d")
    );
}

// ---------------------------------------------------------------- time travel

/// The key the scripted histories are appended with (every role).
fn tester() -> foundry_ledger::Identity {
    static ID: std::sync::OnceLock<foundry_ledger::Identity> = std::sync::OnceLock::new();
    ID.get_or_init(|| foundry_ledger::Identity::generate("alice").expect("key"))
        .clone()
}

fn append(ledger: &Ledger, e: Event) -> RecordedEvent {
    std::thread::sleep(std::time::Duration::from_millis(3));
    if ledger.head().seq == 0 {
        ledger
            .init_genesis(&tester(), Role::ALL, &[])
            .expect("genesis");
    }
    let out = ledger
        .append_as(&tester(), AppendRequest::new(vec![NewEvent::new(e)]))
        .expect("append");
    out.events.into_iter().next().expect("one event")
}

#[test]
fn time_travel_on_a_scripted_history() {
    let (_dir, _home, ledger) = home();
    append(&ledger, recipe("rec"));
    append(&ledger, requested("r1"));
    append(&ledger, checkpoint("r1", "aaaa1111", 100));
    append(&ledger, checkpoint("r1", "bbbb2222", 200));
    let e1 = append(&ledger, scored("e1", "aaaa1111", "r1", 0.93));
    let p1 = append(
        &ledger,
        promoted("aaaa1111", "production", vec![e1.event_id.to_string()]),
    );
    let e2 = append(&ledger, scored("e2", "bbbb2222", "r1", 0.96));
    let p2 = append(
        &ledger,
        promoted("bbbb2222", "production", vec![e2.event_id.to_string()]),
    );
    let rb = append(
        &ledger,
        Event::ChannelRolledBack(ChannelRolledBack {
            channel: "production".into(),
            from_checkpoint_id: Some("bbbb2222".into()),
            to_checkpoint_id: Some("aaaa1111".into()),
            reason: "regression on invoices".into(),
        }),
    );

    let prod_at = |b: Bound| {
        let s = fold_until(&ledger, b).expect("fold");
        s.channels.get("production").map(|c| {
            let entry = c.current_entry.map(|i| c.history[i].clone());
            (c.current_checkpoint_id.clone(), entry)
        })
    };
    // Before any promotion there is no production channel.
    assert_eq!(prod_at(Bound::Time(e1.recorded_at)), None);
    assert_eq!(prod_at(Bound::Seq(5)), None);
    // Between the two promotions: a, promoted because of e1.
    let mid = Timestamp(p2.recorded_at.0 - 1);
    let (cur, why) = prod_at(Bound::Time(mid)).expect("channel");
    assert_eq!(cur.as_deref(), Some("aaaa1111"));
    let why = why.expect("entry");
    assert_eq!(why.event.seq, p1.seq);
    assert_eq!(why.evidence[0].seq, Some(e1.seq));
    assert_eq!(why.evidence[0].event_type, "EvalScored");
    // After the second: b, because of e2.
    let (cur, why) = prod_at(Bound::Seq(p2.seq)).expect("channel");
    assert_eq!(cur.as_deref(), Some("bbbb2222"));
    assert_eq!(why.expect("entry").evidence[0].seq, Some(e2.seq));
    // After the rollback: a again, and the reason is the rollback.
    let (cur, why) = prod_at(Bound::Time(rb.recorded_at)).expect("channel");
    assert_eq!(cur.as_deref(), Some("aaaa1111"));
    assert_eq!(why.expect("entry").reason, "regression on invoices");
    // A run as it was after its first checkpoint (seq 1 is the genesis).
    let s = fold_until(&ledger, Bound::Seq(4)).expect("fold");
    assert_eq!(s.runs["r1"].checkpoints, vec!["aaaa1111"]);
    assert_eq!(s.last_seq, 4);
    // Bounds from CLI arguments.
    assert_eq!(Bound::from_args(None, Some(3)).expect("b"), Bound::Seq(3));
    assert!(Bound::from_args(Some("yesterday"), None).is_err());
    assert!(Bound::from_args(Some("2026-01-01T00:00:00Z"), Some(1)).is_err());
}

// ---------------------------------------------------------------- queries

#[test]
fn prefixes_resolve_like_git() {
    let s = fold(vec![
        requested("run-aa01"),
        requested("run-aa02"),
        requested("run-b"),
        checkpoint("run-b", "run-c-cp", 1),
    ]);
    assert_eq!(
        resolve(&s, ViewKind::Runs, "run-b").expect("exact"),
        "run-b"
    );
    assert_eq!(
        resolve(&s, ViewKind::Runs, "run-aa01").expect("exact"),
        "run-aa01"
    );
    let amb = resolve(&s, ViewKind::Runs, "run-a")
        .expect_err("ambiguous")
        .to_string();
    assert_eq!(
        amb,
        "run prefix \"run-a\" is ambiguous; candidates: run-aa01, run-aa02"
    );
    let unk = resolve(&s, ViewKind::Runs, "zz")
        .expect_err("unknown")
        .to_string();
    assert_eq!(
        unk,
        "no run matches \"zz\" (3 known: run-aa01, run-aa02, run-b)"
    );
    let (k, id) = resolve_any(&s, &[ViewKind::Checkpoints, ViewKind::Runs], "run-c").expect("one");
    assert_eq!((k, id.as_str()), (ViewKind::Checkpoints, "run-c-cp"));
    let amb = resolve_any(&s, &[ViewKind::Checkpoints, ViewKind::Runs], "run-").expect_err("amb");
    assert!(
        amb.to_string()
            .contains("checkpoint run-c-cp, run run-aa01"),
        "{amb}"
    );
}

#[test]
fn lineage_tree_of_an_adapter() {
    let s = fold(vec![
        recipe("rec"),
        dataset("ds"),
        model("mod"),
        requested("r1"),
        started("r1", "abc"),
        checkpoint("r1", "cp1", 5),
        scored("e1", "cp1", "r1", 0.95),
        promoted("cp1", "production", vec![uuid_for(7).to_string()]),
    ]);
    let tree = lineage(&s, ViewKind::Checkpoints, "cp1").expect("tree");
    let text = tree.render();
    let expected_lines = [
        "adapter cp1 step 5, loss 0.5000",
        "├── run r1 [running] local backend, 5 steps",
        "│   ├── recipe rec \"cord\" (recipes/cord.toml)",
        "│   ├── dataset ds ./data, 1 shards",
        "│   │   └── shard train/train.jsonl sha256 070707070707 (3 rows)",
        "│   ├── base model mod hf://org/m@main @ abc (Idefics2ForConditionalGeneration, bnb-nf4)",
        "│   └── code 0.1.0@abc",
        "├── eval e1 on test (50 examples): field_exact_match=0.9500 [0.9400, 0.9600]",
        "└── promoted production at",
        "    ├── gate field_exact_match >= 0.9 = 0.9500: passed",
        "    └── evidence EvalScored seq 7: eval e1 of cp1 on test",
    ];
    for l in expected_lines {
        assert!(text.contains(l), "missing {l:?} in\n{text}");
    }
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.ends_with("[serving production]")),
        "{text}"
    );
    let run_tree = lineage(&s, ViewKind::Runs, "r1").expect("tree");
    assert_eq!(
        run_tree
            .walk()
            .iter()
            .filter(|n| n.kind == "checkpoint")
            .count(),
        1
    );
}
