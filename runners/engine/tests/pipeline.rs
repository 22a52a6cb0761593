//! The real engines behind the real runners: a pinned dataset of PNG + JSONL
//! shards, the pinned tiny Idefics2, the tiny CPU recipe, QLoRA training with
//! checkpoints, and every checkpoint scored automatically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foundry_events::{Event, EventType, RecipeDeclared, RunRequested};
use foundry_ledger::{AppendRequest, Home, Ledger, NewEvent};
use foundry_runner::testkit::TestKeys;
use foundry_runner::{
    EmbeddedFeed, EvaluatorRunner, Host, LocalLedger, Runner, RunnerContext, TrainerRunner,
};

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A two-split dataset of small synthetic images whose targets are their colours.
fn write_dataset(root: &Path) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::write(
        root.join("foundry_schema.json"),
        r#"{"invoice": ["invoice_number", "total"]}"#,
    )
    .unwrap();
    for (split, n) in [("train", 6), ("test", 2)] {
        let mut lines = String::new();
        for i in 0..n {
            let name = format!("images/{split}-{i}.png");
            let img = image::RgbImage::from_fn(48, 32, |x, y| {
                image::Rgb([(x * 5 + i * 40) as u8, (y * 7) as u8, (i * 60) as u8])
            });
            img.save(root.join(&name)).unwrap();
            let row = serde_json::json!({
                "image": name,
                "doc_type": "invoice",
                "layout": if i % 2 == 0 { "invoice-a" } else { "invoice-b" },
                "target": {"invoice_number": format!("{}", 100 + i), "total": format!("{}.50", i)},
            });
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
        std::fs::write(root.join(format!("{split}-00000-of-00001.jsonl")), lines).unwrap();
    }
}

fn append(ledger: &Ledger, keys: &TestKeys, ev: impl Into<Event>) {
    ledger
        .append_as(&keys.alice, AppendRequest::new(vec![NewEvent::new(ev)]))
        .unwrap();
}

fn overrides() -> BTreeMap<String, String> {
    [
        ("FOUNDRY_TRAINING_MAX_STEPS", "4"),
        ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
        ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", "2"),
        ("FOUNDRY_TRAINING_MICRO_BATCH", "2"),
        ("FOUNDRY_EVAL_SPLIT", "test"),
        ("FOUNDRY_EVAL_MAX_EXAMPLES", "2"),
        ("FOUNDRY_EVAL_MAX_NEW_TOKENS", "6"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Pins everything, requests a run, drives trainer + evaluator until idle.
fn run_pipeline(
    home: &Home,
    model_dir: &Path,
    data_dir: &Path,
    before_run: impl FnOnce(),
) -> Ledger {
    let ledger = home.init().unwrap();
    let keys = TestKeys::new();
    keys.genesis(&ledger);
    let pin = foundry_datasets::pin_dir(data_dir, &data_dir.display().to_string(), None).unwrap();
    append(&ledger, &keys, pin.to_event());
    let model = foundry_datasets::pin_model(
        &model_dir.display().to_string(),
        &foundry_datasets::HubOptions::default(),
    )
    .unwrap();
    append(&ledger, &keys, model.to_event());
    let recipe =
        foundry_recipes::resolve_file(&repo("recipes/tiny-cpu.toml"), &overrides(), None).unwrap();
    append(
        &ledger,
        &keys,
        RecipeDeclared {
            recipe_id: recipe.id.clone(),
            name: recipe.recipe.name.clone(),
            source: recipe.source.clone(),
            resolved_config: recipe.config.clone(),
            env_overrides: recipe.env.clone(),
        },
    );
    before_run();
    append(
        &ledger,
        &keys,
        RunRequested {
            run_id: "run-1".into(),
            recipe_id: recipe.id,
            dataset_id: pin.dataset_id,
            model_id: model.model_id,
            backend: "local".into(),
            overrides: BTreeMap::new(),
        },
    );
    let client = Arc::new(LocalLedger::new(ledger.clone(), keys.alice.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut host = Host::new();
        let runners: Vec<Arc<dyn Runner>> = vec![
            Arc::new(TrainerRunner::new(Arc::new(
                foundry_engine::QloraEngine::new(),
            ))),
            Arc::new(EvaluatorRunner::new(Arc::new(
                foundry_engine::Idefics2Eval::new(),
            ))),
        ];
        for r in runners {
            let feed = EmbeddedFeed::open(
                ledger.clone(),
                &r.reacts_to(),
                home.root().join(format!("runners/{}.cursor", r.name())),
            )
            .unwrap();
            let ctx = RunnerContext {
                client: Arc::new(client.acting_as(keys.for_runner(r.name()))),
                runner_id: format!("{}-test", r.name()),
                home: home.clone(),
                stop: host.stop_signal(),
            };
            host.spawn(r, Box::new(feed), ctx);
        }
        host.wait_idle(client.as_ref()).await.unwrap();
        host.shutdown().await;
    });
    ledger
}

fn events_of(ledger: &Ledger, ty: EventType) -> Vec<Event> {
    ledger
        .read_type(ty, 1, 1000)
        .unwrap()
        .iter()
        .map(|r| r.decode_event().unwrap())
        .collect()
}

#[test]
fn qlora_training_commits_checkpoints_that_are_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let home = Home::at(tmp.path().join("home"));
    let ledger = run_pipeline(&home, &repo("ml/idefics2/fixtures/tiny"), &data, || {});

    let failed = events_of(&ledger, EventType::RunFailed);
    assert!(failed.is_empty(), "{failed:?}");
    let started = events_of(&ledger, EventType::RunStarted);
    let Event::RunStarted(s) = &started[0] else {
        panic!()
    };
    assert_eq!(s.total_steps, 4);
    assert_eq!(s.device.kind, "cpu");
    assert_eq!(events_of(&ledger, EventType::RunCompleted).len(), 1);

    let checkpoints = events_of(&ledger, EventType::CheckpointCommitted);
    assert_eq!(checkpoints.len(), 2);
    for c in &checkpoints {
        let Event::CheckpointCommitted(c) = c else {
            panic!()
        };
        let names: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert!(names.contains(&"adapter_model.safetensors"), "{names:?}");
        assert!(names.contains(&"adapter_config.json"), "{names:?}");
        for f in &c.files {
            assert!(home.artifacts().check(&f.sha256).unwrap(), "{}", f.path);
        }
        // The adapter is PEFT's: it loads back with PEFT key names.
        let dir = home.root().join(&c.location);
        let (_, weights) = foundry_qlora::lora::load_adapter(&dir).unwrap();
        assert!(weights
            .keys()
            .any(|k| k.starts_with("base_model.model.model.text_model.layers.0.")));
    }
    let losses: Vec<f64> = events_of(&ledger, EventType::MetricsLogged)
        .iter()
        .flat_map(|e| match e {
            Event::MetricsLogged(m) => m.points.iter().map(|p| p.loss).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(losses.len(), 4);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );

    let scored = events_of(&ledger, EventType::EvalScored);
    assert_eq!(scored.len(), 2, "every checkpoint is scored");
    for s in &scored {
        let Event::EvalScored(s) = s else { panic!() };
        assert_eq!(s.examples, 2);
        assert_eq!(s.split, "test");
        // A random tiny model writes no JSON; that is scored, not a crash.
        assert!(
            s.metrics.contains_key("json_valid_rate"),
            "{:?}",
            s.metrics.keys()
        );
        assert!(s.metrics.contains_key("field_exact_match"));
    }
}

#[test]
fn a_base_model_changed_after_pinning_fails_the_run_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(repo("ml/idefics2/fixtures/tiny")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    let home = Home::at(tmp.path().join("home"));
    let cfg = model.join("config.json");
    let ledger = run_pipeline(&home, &model, &data, || {
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push(' ');
        std::fs::write(&cfg, text).unwrap();
    });
    let failed = events_of(&ledger, EventType::RunFailed);
    let Event::RunFailed(f) = &failed[0] else {
        panic!("{failed:?}")
    };
    assert!(
        f.reason.contains("changed since it was pinned") && f.reason.contains("config.json"),
        "{}",
        f.reason
    );
    assert!(!f.retryable);
    assert!(events_of(&ledger, EventType::RunStarted).is_empty());
}
