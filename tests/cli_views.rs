//! End-to-end tests of the view commands (`runs`, `show`, `lineage`,
//! `replay`, time travel) on the real binary and a seeded, scripted ledger.

use crate::common;
use common::{fails, ok};
use foundry_events::*;
use foundry_ledger::{Home, Ledger};
use std::collections::BTreeMap;
use std::path::Path;

const RECIPE: &str = "9ab3c0ffee000000000000000000000000000000000000000000000000000001";
const DATASET: &str = "77e0da7a00000000000000000000000000000000000000000000000000000002";
const MODEL: &str = "5c1d30de10000000000000000000000000000000000000000000000000000003";
const CP_A: &str = "aaaa111100000000000000000000000000000000000000000000000000000a0a";
const CP_B: &str = "bbbb222200000000000000000000000000000000000000000000000000000b0b";

fn append(ledger: &Ledger, actor: &str, e: impl Into<Event>) -> RecordedEvent {
    std::thread::sleep(std::time::Duration::from_millis(5));
    common::append_as_actor(ledger, actor, e.into())
}

fn requested(run: &str) -> RunRequested {
    RunRequested {
        run_id: run.into(),
        recipe_id: RECIPE.into(),
        dataset_id: DATASET.into(),
        model_id: MODEL.into(),
        backend: "local".into(),
        overrides: BTreeMap::new(),
    }
}

fn started(run: &str) -> RunStarted {
    RunStarted {
        run_id: run.into(),
        runner_id: "runner-7".into(),
        host: HostInfo {
            hostname: "gpu-01".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 16,
        },
        device: DeviceInfo {
            kind: "cuda".into(),
            name: "NVIDIA H100".into(),
            dtype: "bf16".into(),
        },
        code: CodeVersion {
            executable_sha256: None,
            version: "0.1.0".into(),
            git_commit: Some("dd4d14e".into()),
            dirty: false,
        },
        resolved_config: serde_json::json!({"lora": {"r": 8, "alpha": 8}, "train": {"lr": 0.0001}}),
        run_config_sha256: Sha256Digest([4; 32]),
        env: BTreeMap::new(),
        total_steps: 200,
    }
}

fn metrics(run: &str, from: u64, losses: &[f64]) -> MetricsLogged {
    MetricsLogged {
        run_id: run.into(),
        points: losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| MetricPoint {
                step: from + i as u64,
                loss,
                lr: 1e-4,
                grad_norm: 1.0,
                tokens: 500,
                tokens_per_s: 1000.0 + 100.0 * i as f64,
                elapsed_ms: 0,
            })
            .collect(),
    }
}

fn checkpoint(run: &str, id: &str, step: u64, file_byte: u8) -> CheckpointCommitted {
    CheckpointCommitted {
        run_id: run.into(),
        checkpoint_id: id.into(),
        step,
        files: vec![FileDigest {
            path: "adapter_model.safetensors".into(),
            sha256: Sha256Digest([file_byte; 32]),
            bytes: 1234,
        }],
        loss: Some(0.5),
        location: format!("adapters/{run}/{step}"),
    }
}

fn scored(eval: &str, cp: &str, v: f64) -> EvalScored {
    let mut m = BTreeMap::new();
    m.insert(
        "field_exact_match".to_string(),
        MetricValue {
            value: v,
            ci_low: Some(v - 0.01),
            ci_high: Some(v + 0.01),
        },
    );
    EvalScored {
        eval_id: eval.into(),
        checkpoint_id: Some(cp.into()),
        run_id: Some("run-alpha".into()),
        model_id: MODEL.into(),
        dataset_id: DATASET.into(),
        split: "test".into(),
        split_sha256: Sha256Digest([5; 32]),
        eval_spec_sha256: Sha256Digest([6; 32]),
        examples: 100,
        metrics: m,
        breakdown: BTreeMap::new(),
        latency_ms_mean: 800.0,
        throughput_docs_per_s: 1.25,
        code: CodeVersion::default(),
        device: DeviceInfo::default(),
    }
}

fn promoted(cp: &str, evidence: &[&RecordedEvent], reason: &str) -> AdapterPromoted {
    AdapterPromoted {
        checkpoint_id: cp.into(),
        channel: "production".into(),
        previous_checkpoint_id: None,
        gates: vec![GateResult {
            gate: "field_exact_match >= 0.9".into(),
            actual: Some(0.93),
            passed: true,
            detail: String::new(),
        }],
        evidence: evidence.iter().map(|e| e.event_id.to_string()).collect(),
        signed_by: vec![],
        reason: reason.into(),
    }
}

/// Seq and time marks of the scripted history.
struct Script {
    e1: RecordedEvent,
    p1: RecordedEvent,
    p2: RecordedEvent,
    rollback: RecordedEvent,
}

fn seed(home: &Path) -> Script {
    let ledger = Home::at(home).init().unwrap();
    // Seqs below count from after this genesis (6 events).
    common::scripted_genesis(&ledger, &["alice", "bob", "carol", "evaluator", "runner-7"]);
    append(
        &ledger,
        "alice",
        RecipeDeclared {
            recipe_id: RECIPE.into(),
            name: "cord-v2-r8".into(),
            source: "recipes/cord.toml".into(),
            resolved_config: serde_json::json!({"lora": {"r": 8}}),
            env_overrides: BTreeMap::new(),
        },
    );
    append(
        &ledger,
        "alice",
        DatasetPinned {
            dataset_id: DATASET.into(),
            source: "hf://naver-clova-ix/cord-v2".into(),
            resolved_revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            shards: vec![ShardPin {
                split: "train".into(),
                path: "train-00000.jsonl".into(),
                sha256: Sha256Digest([8; 32]),
                bytes: 100,
                rows: 800,
            }],
            splits: BTreeMap::new(),
        },
    );
    append(
        &ledger,
        "alice",
        BaseModelPinned {
            model_id: MODEL.into(),
            source: "hf://HuggingFaceM4/idefics2-8b".into(),
            resolved_revision: Some("fedcba9876543210fedcba9876543210fedcba98".into()),
            architecture: "Idefics2ForConditionalGeneration".into(),
            files: vec![],
            parameters: None,
            quantization: "bnb-nf4".into(),
        },
    );
    for run in ["run-alpha", "run-beta", "run-bravo"] {
        append(&ledger, "alice", requested(run));
    }
    append(&ledger, "runner-7", started("run-alpha"));
    append(
        &ledger,
        "runner-7",
        metrics("run-alpha", 1, &[2.5, 1.9, 1.2]),
    );
    append(
        &ledger,
        "runner-7",
        checkpoint("run-alpha", CP_A, 100, 0xa1),
    );
    append(&ledger, "runner-7", metrics("run-alpha", 4, &[0.9, 1.1]));
    append(
        &ledger,
        "runner-7",
        checkpoint("run-alpha", CP_B, 200, 0xb2),
    );
    append(
        &ledger,
        "runner-7",
        RunCompleted {
            run_id: "run-alpha".into(),
            final_checkpoint_id: Some(CP_B.into()),
            steps: 200,
            final_loss: Some(1.1),
            duration_ms: 61_000,
        },
    );
    append(
        &ledger,
        "runner-7",
        RunFailed {
            run_id: "run-beta".into(),
            reason: "CUDA out of memory in text_model.layers.3".into(),
            step: None,
            retryable: false,
        },
    );
    append(&ledger, "runner-7", started("run-bravo"));
    let e1 = append(&ledger, "evaluator", scored("eval-one", CP_A, 0.93));
    let p1 = append(
        &ledger,
        "bob",
        promoted(CP_A, &[&e1], "first adapter to beat the base model"),
    );
    let e2 = append(&ledger, "evaluator", scored("eval-two", CP_B, 0.96));
    let p2 = append(
        &ledger,
        "bob",
        promoted(CP_B, &[&e2], "better field accuracy"),
    );
    let rollback = append(
        &ledger,
        "carol",
        ChannelRolledBack {
            channel: "production".into(),
            from_checkpoint_id: Some(CP_B.into()),
            to_checkpoint_id: Some(CP_A.into()),
            reason: "invoices regressed in production".into(),
        },
    );
    Script {
        e1,
        p1,
        p2,
        rollback,
    }
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Script) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let script = seed(&home);
    (dir, home, script)
}

#[test]
fn runs_lists_and_filters() {
    let (_d, home, _s) = setup();
    let out = ok(&home, &["runs"]);
    for needle in [
        "run-alpha",
        "completed",
        "run-beta",
        "failed",
        "run-bravo",
        "running",
        "cord-v2-r8",
        "0.9000",
        "1.1000",
    ] {
        assert!(out.contains(needle), "{needle} missing in\n{out}");
    }
    assert!(
        out.trim_end().ends_with("3 runs, as of seq 25 (head)"),
        "{out}"
    );
    let failed = ok(&home, &["runs", "--status", "failed"]);
    assert!(
        failed.contains("run-beta") && !failed.contains("run-alpha"),
        "{failed}"
    );
    let by_prefix = ok(&home, &["runs", "--recipe", "9ab3"]);
    assert!(by_prefix.contains("3 runs"), "{by_prefix}");
    let by_name = ok(
        &home,
        &[
            "runs",
            "--recipe",
            "cord-v2-r8",
            "--status",
            "running",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&by_name).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["runs"][0]["run_id"], "run-bravo");
    assert!(fails(&home, &["runs", "--status", "sleeping"]).contains("unknown status"));
    // As of seq 12 (the 6th after the genesis) no run had started.
    let past = ok(&home, &["runs", "--until", "12"]);
    assert!(
        past.contains("requested") && !past.contains("completed"),
        "{past}"
    );
}

#[test]
fn show_run_is_the_centrepiece() {
    let (_d, home, _s) = setup();
    let out = ok(&home, &["show", "run", "run-a"]);
    for needle in [
        "run run-alpha (as of seq 25 (head))",
        "│ status            │ completed",
        "9ab3c0ffee00 \"cord-v2-r8\" (recipes/cord.toml)",
        "77e0da7a0000 hf://naver-clova-ix/cord-v2 (1 shards)",
        "5c1d30de1000 hf://HuggingFaceM4/idefics2-8b @ fedcba987654 (bnb-nf4)",
        "runner-7 on gpu-01 (attempt 0)",
        "cuda NVIDIA H100 (bf16)",
        "0.1.0 @ dd4d14e",
        "1m01s",
        "resolved config",
        "│ lora.alpha │ 8 ",
        "│ train.lr   │ 0.0001",
        "│ first loss    │ 2.5000 (step 1)",
        "│ last loss     │ 1.1000 (step 5)",
        "│ best loss     │ 0.9000 (step 4)",
        "last 1100.0, mean 1080.0, max 1200.0",
        "checkpoints (2)",
        "a1a1a1a1a1a1",
        "eval-one: field_exact_match=0.9300 [0.9200, 0.9400]",
        "promotions (4)",
        "rolled_back_from",
        "invoices regressed in production",
        "7 events, seq 10..=18",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&home, &["show", "run", "run-al", "--json"])).unwrap();
    assert_eq!(json["run"]["status"], "completed");
    assert_eq!(json["run"]["metrics"]["best_loss"]["value"], 0.9);
    assert_eq!(json["run"]["event_count"], 7);
    assert_eq!(json["checkpoints"][1]["step"], 200);
    assert_eq!(json["checkpoints"][0]["channels"][0], "production");
    let failed = ok(&home, &["show", "run", "run-be"]);
    assert!(
        failed.contains("CUDA out of memory in text_model.layers.3 (step -, not retryable"),
        "{failed}"
    );
}

#[test]
fn prefixes_are_resolved_like_git() {
    let (_d, home, _s) = setup();
    let amb = fails(&home, &["show", "run", "run-b"]);
    assert_eq!(
        amb,
        "error: run prefix \"run-b\" is ambiguous; candidates: run-beta, run-bravo"
    );
    let unk = fails(&home, &["show", "run", "nope"]);
    assert_eq!(
        unk,
        "error: no run matches \"nope\" (3 known: run-alpha, run-beta, run-bravo)"
    );
    assert!(ok(&home, &["show", "checkpoint", "bbbb"]).contains(&format!("checkpoint {CP_B}")));
    assert!(ok(&home, &["show", "adapter", "aaaa"]).contains("│ serving   │ production"));
    assert!(ok(&home, &["show", "dataset", "77e"]).contains("train-00000.jsonl"));
    assert!(ok(&home, &["show", "recipe", "9a"]).contains("│ run-alpha │ completed"));
    assert!(fails(&home, &["show", "channel", "canary"])
        .contains("no channel matches \"canary\" (1 known: production)"));
}

#[test]
fn which_adapter_was_in_production_and_why() {
    let (_d, home, s) = setup();
    // Between the first and the second promotion.
    let mid = Timestamp(s.p2.recorded_at.0 - 1).to_rfc3339();
    let out = ok(&home, &["show", "channel", "production", "--at", &mid]);
    for needle in [
        &format!("│ current adapter │ {CP_A}"),
        "│ by              │ bob",
        "│ why             │ first adapter to beat the base model",
        "│ field_exact_match >= 0.9 │ passed (0.9300)",
        "eval eval-one of aaaa111100000000000000000000000000000000000000000000000000000a0a on test (100 examples): field_exact_match=0.9300",
        "history (1)",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in\n{out}");
    }
    let id = s.e1.event_id.to_string();
    let line = out
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no evidence line in\n{out}"));
    assert!(
        line.starts_with(&format!("│ {} ", s.e1.seq)) && line.contains("│ EvalScored "),
        "{line}"
    );
    // By seq: right after the second promotion.
    let out = ok(
        &home,
        &["show", "channel", "prod", "--until", &s.p2.seq.to_string()],
    );
    assert!(
        out.contains(&format!("│ current adapter │ {CP_B}")),
        "{out}"
    );
    assert!(out.contains("better field accuracy"), "{out}");
    // Now: rolled back to A, by carol, and why.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&home, &["show", "channel", "production", "--json"])).unwrap();
    assert_eq!(json["channel"]["current_checkpoint_id"], CP_A);
    assert_eq!(json["current"]["action"], "rolled_back");
    assert_eq!(json["current"]["event"]["actor"], "carol");
    assert_eq!(json["current"]["event"]["seq"], s.rollback.seq);
    assert_eq!(json["channel"]["history"].as_array().unwrap().len(), 3);
    // Before anything was promoted the channel did not exist.
    let before = Timestamp(s.p1.recorded_at.0 - 1).to_rfc3339();
    assert!(
        fails(&home, &["show", "channel", "production", "--at", &before])
            .contains("there are none")
    );
    assert!(fails(
        &home,
        &["show", "channel", "production", "--at", "last tuesday"]
    )
    .contains("RFC 3339"));
}

#[test]
fn lineage_draws_a_tree() {
    let (_d, home, _s) = setup();
    let out = ok(&home, &["lineage", "aaaa"]);
    let expected = [
        &format!("adapter {CP_A} step 100, loss 0.5000, committed"),
        "├── run run-alpha [completed] local backend, 200 steps, loss 2.5000 → 1.1000",
        "│   ├── recipe 9ab3c0ffee00 \"cord-v2-r8\" (recipes/cord.toml)",
        "│   ├── dataset 77e0da7a0000 hf://naver-clova-ix/cord-v2 @ 0123456789ab, 1 shards",
        "│   │   └── shard train/train-00000.jsonl sha256 080808080808 (800 rows)",
        "│   ├── base model 5c1d30de1000 hf://HuggingFaceM4/idefics2-8b @ fedcba987654 (Idefics2ForConditionalGeneration, bnb-nf4)",
        "│   └── code 0.1.0@dd4d14e",
        "├── eval eval-one on test (100 examples): field_exact_match=0.9300 [0.9200, 0.9400]",
        "├── promoted production at",
        "│   ├── gate field_exact_match >= 0.9 = 0.9300: passed",
        "│   └── evidence EvalScored seq 21: eval eval-one",
        "└── rolled back to production at",
    ];
    for l in expected {
        assert!(out.contains(l), "{l:?} missing in\n{out}");
    }
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with("[serving production]"),
        "{out}"
    );
    let run = ok(&home, &["lineage", "run-al"]);
    assert!(run.starts_with("run run-alpha [completed]"), "{run}");
    assert_eq!(run.matches("checkpoint ").count(), 2, "{run}");
    let amb = fails(&home, &["lineage", "run-b"]);
    assert!(
        amb.contains("candidates: run run-beta, run run-bravo"),
        "{amb}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&home, &["lineage", "bbbb", "--json"])).unwrap();
    assert_eq!(json["tree"]["kind"], "adapter");
    assert_eq!(json["tree"]["children"][0]["kind"], "run");
}

#[test]
fn replay_prints_digests_and_matches_incremental_views() {
    let (_d, home, _s) = setup();
    // Build the views incrementally: read, append more, read again.
    ok(&home, &["runs"]);
    {
        let ledger = Home::at(&home).open_ledger().unwrap();
        append(&ledger, "runner-7", metrics("run-bravo", 1, &[3.0, 2.0]));
        append(
            &ledger,
            "runner-7",
            RunCancelled {
                run_id: "run-bravo".into(),
                reason: "superseded".into(),
            },
        );
    }
    assert!(ok(&home, &["runs", "--status", "cancelled"]).contains("run-bravo"));
    let out = ok(&home, &["replay"]);
    for view in [
        "recipes",
        "datasets",
        "models",
        "runs",
        "checkpoints",
        "evals",
        "channels",
        "lineage",
        "evidence",
    ] {
        assert!(
            out.contains(&format!("│ {view} ")),
            "{view} missing in\n{out}"
        );
    }
    assert_eq!(out.matches(" same ").count(), 9, "{out}");
    assert!(out.contains("replayed 27 events into"), "{out}");
    let a: serde_json::Value = serde_json::from_str(&ok(&home, &["replay", "--json"])).unwrap();
    let b: serde_json::Value = serde_json::from_str(&ok(&home, &["replay", "--json"])).unwrap();
    assert_eq!(a["views"], b["views"]);
    assert_eq!(a["incremental_matches"], true);
    // The same digests as the library's in-memory fold.
    let ledger = Home::at(&home).open_ledger().unwrap();
    let state = foundry_projections::fold_until(&ledger, foundry_projections::Bound::Head).unwrap();
    let digests = foundry_projections::digests(&state).unwrap();
    assert_eq!(a["views"], serde_json::to_value(&digests).unwrap());
}
