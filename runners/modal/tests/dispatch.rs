//! The modal runner over a real local ledger, against the test double of the
//! `modal` CLI (tests/fake_modal/modal), with a stand-in container program in
//! place of the `ledger` binary: cancellation stops the job, and a container
//! whose outbox does not verify fails the run without importing anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foundry_events::{
    BaseModelPinned, DatasetPinned, Event, EventType, RecipeDeclared, RunCancelled, RunRequested,
};
use foundry_ledger::{AppendRequest, Home, Ledger, NewEvent};
use foundry_modal::{ModalCli, ModalOptions, ModalRunner};
use foundry_runner::testkit::TestKeys;
use foundry_runner::{EmbeddedFeed, Host, LocalLedger, Runner, RunnerContext};

fn fake_modal() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fake_modal/modal")
}

struct World {
    dir: tempfile::TempDir,
    home: Home,
    ledger: Ledger,
    keys: TestKeys,
    fake_home: PathBuf,
}

fn append(w: &World, ev: Event) -> u64 {
    w.ledger
        .append_as(&w.keys.alice, AppendRequest::new(vec![NewEvent::new(ev)]))
        .unwrap()
        .events[0]
        .seq
}

/// A home with a modal recipe, a dataset and a model pinned (plain
/// directories: the dispatcher only stages them), and a run requested.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    let ledger = home.init().unwrap();
    let keys = TestKeys::new();
    keys.genesis(&ledger);
    let data = dir.path().join("data");
    let model = dir.path().join("model");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(data.join("train.jsonl"), "{}\n").unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let config = serde_json::json!({"backend": {
        "kind": "modal", "device": "cpu", "gpu": "H100", "timeout_s": 600, "retries": 0,
        "app_name": "foundry-t", "checkpoint_volume": "ckpt", "data_volume": "data"}});
    w_append(
        &ledger,
        &keys,
        Event::RecipeDeclared(RecipeDeclared {
            recipe_id: "r1".into(),
            name: "t".into(),
            source: "t.toml".into(),
            resolved_config: config,
            env_overrides: BTreeMap::new(),
        }),
    );
    w_append(
        &ledger,
        &keys,
        Event::DatasetPinned(DatasetPinned {
            dataset_id: "d1".into(),
            source: data.display().to_string(),
            resolved_revision: None,
            shards: vec![],
            splits: BTreeMap::new(),
        }),
    );
    w_append(
        &ledger,
        &keys,
        Event::BaseModelPinned(BaseModelPinned {
            model_id: "m1".into(),
            source: model.display().to_string(),
            resolved_revision: None,
            architecture: "idefics2".into(),
            files: vec![],
            parameters: None,
            quantization: "none".into(),
        }),
    );
    w_append(
        &ledger,
        &keys,
        Event::RunRequested(RunRequested {
            run_id: "run1".into(),
            recipe_id: "r1".into(),
            dataset_id: "d1".into(),
            model_id: "m1".into(),
            backend: "modal".into(),
            overrides: BTreeMap::new(),
        }),
    );
    let fake_home = dir.path().join("fake");
    World {
        dir,
        home,
        ledger,
        keys,
        fake_home,
    }
}

fn w_append(ledger: &Ledger, keys: &TestKeys, ev: Event) -> u64 {
    ledger
        .append_as(&keys.alice, AppendRequest::new(vec![NewEvent::new(ev)]))
        .unwrap()
        .events[0]
        .seq
}

/// A container program standing in for `ledger runner train`.
fn container(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("container.sh");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --work ] && WORK=$2; shift; done\n{body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn start(w: &World, binary: PathBuf) -> (Host, Arc<LocalLedger>) {
    let opts = ModalOptions {
        cli: ModalCli {
            bin: fake_modal(),
            timeout: Duration::from_secs(60),
            env: vec![("FAKE_MODAL_HOME".into(), w.fake_home.display().to_string())],
        },
        ledger_binary: binary,
        device: "cpu".into(),
        secrets: vec![],
        hf_cache_volume: "hf".into(),
        nats_url: String::new(),
        poll: Duration::from_millis(200),
    };
    let runner: Arc<dyn Runner> = Arc::new(ModalRunner::new(opts));
    let client = Arc::new(LocalLedger::new(
        w.ledger.clone(),
        w.keys.dispatcher.clone(),
    ));
    let mut host = Host::new();
    let feed = EmbeddedFeed::open(
        w.ledger.clone(),
        &runner.reacts_to(),
        w.home.root().join("runners/modal.cursor"),
    )
    .unwrap();
    let ctx = RunnerContext {
        client: client.clone(),
        runner_id: "modal@test".into(),
        home: w.home.clone(),
        stop: host.stop_signal(),
    };
    host.spawn(runner, Box::new(feed), ctx);
    (host, client)
}

fn events(ledger: &Ledger, ty: EventType) -> Vec<Event> {
    ledger
        .read_type(ty, 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.decode_event().unwrap())
        .collect()
}

fn app_json(fake_home: &Path) -> serde_json::Value {
    let dir = fake_home.join("apps");
    let f = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_run_stops_the_modal_job() {
    let w = world();
    let marker = w.dir.path().join("container-started");
    let binary = container(
        w.dir.path(),
        &format!("touch {}\nsleep 120", marker.display()),
    );
    let (host, client) = start(&w, binary);
    // Wait until the container runs, then cancel the run here.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the container never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events(&w.ledger, EventType::ModalJobSubmitted).len(), 1);
    append(
        &w,
        Event::RunCancelled(RunCancelled {
            run_id: "run1".into(),
            reason: "no longer needed".into(),
        }),
    );
    tokio::time::timeout(Duration::from_secs(60), host.wait_idle(client.as_ref()))
        .await
        .expect("the dispatcher did not notice the cancellation")
        .unwrap();
    host.shutdown().await;
    let updates = events(&w.ledger, EventType::ModalJobUpdated);
    let Some(Event::ModalJobUpdated(last)) = updates.last() else {
        panic!("no ModalJobUpdated")
    };
    assert_eq!(last.state, "cancelled");
    let app = app_json(&w.fake_home);
    assert_eq!(app["state"], "stopped", "{app}");
    // The container process is gone.
    let pid = app["attempt_pid"].as_i64().unwrap();
    // (A killed process may linger as a zombie until reaped: that is gone.)
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(), "the container (pid {pid}) still runs");
    assert!(events(&w.ledger, EventType::RunFailed).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_does_not_verify_fails_the_run_and_imports_nothing() {
    let w = world();
    let binary = container(
        w.dir.path(),
        "echo 'FOUNDRY-LEDGER-EXPORT' > \"$WORK/outbox.foundry\"\necho 'not a ledger' >> \"$WORK/outbox.foundry\"\necho FOUNDRY_COMMIT end\nexit 0",
    );
    let head_before = w.ledger.head().seq;
    let (host, client) = start(&w, binary);
    tokio::time::timeout(Duration::from_secs(60), host.wait_idle(client.as_ref()))
        .await
        .expect("the dispatcher hung")
        .unwrap();
    host.shutdown().await;
    let failed = events(&w.ledger, EventType::RunFailed);
    let Some(Event::RunFailed(f)) = failed.first() else {
        panic!("no RunFailed")
    };
    assert!(f.reason.starts_with("outbox: "), "{}", f.reason);
    assert!(f.reason.contains("outbox.foundry"), "{}", f.reason);
    assert!(!f.retryable);
    // Only the dispatcher's own events were appended (the container's key
    // registered, then revoked once the job was over).
    for rec in w.ledger.read_from(head_before + 1, usize::MAX).unwrap() {
        assert!(
            [
                "ModalJobSubmitted",
                "ModalJobUpdated",
                "RunFailed",
                "KeyRegistered",
                "KeyRevoked"
            ]
            .contains(&rec.event_type.as_str()),
            "imported {}",
            rec.event_type
        );
        assert_eq!(rec.actor, w.keys.dispatcher.name());
    }
}
