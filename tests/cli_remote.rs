//! The CLI over NATS: `ledger --nats URL …` appends through `ledger serve`
//! and reads a verified replica in its own home, while runners in other
//! processes do the work. Here a Modal run (test double of the `modal` CLI)
//! whose container reaches the ledger over NATS directly, and its
//! cancellation from the CLI.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, first_word, nats_server, repo, spawn};

const ENV: &[(&str, &str)] = &[
    ("FOUNDRY_TRAINING_MAX_STEPS", "4"),
    ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
    ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", "2"),
    ("FOUNDRY_TRAINING_MICRO_BATCH", "2"),
];

struct Client {
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Client {
    /// `--json run start` of a recipe on the pinned inputs, with one more flag.
    fn start(&self, recipe: &str, dataset: &str, model: &str, flag: &str) -> serde_json::Value {
        let args = [
            "--json",
            "run",
            "start",
            "--recipe",
            recipe,
            "--dataset",
            dataset,
            "--model",
            model,
            flag,
        ];
        serde_json::from_str(&self.ok(&args, &[])).expect("json output")
    }

    /// Synthesizes 12 tiny documents into `data` and pins them, and pins the
    /// tiny base model: (dataset id, model id).
    fn pin_inputs(&self, data: &Path, seed: &str) -> (String, String) {
        let data_s = data.to_str().unwrap();
        let synth = [
            "synth",
            "--out",
            data_s,
            "--count",
            "12",
            "--seed",
            seed,
            "--profile",
            "tiny",
        ];
        self.ok(&synth, &[]);
        let dataset = first_word(&self.ok(&["dataset", "pin", data_s], &[]));
        let tiny = repo("ml/idefics2/fixtures/tiny");
        let model = first_word(&self.ok(&["model", "pin", tiny.to_str().unwrap()], &[]));
        (dataset, model)
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        Command::new(bin())
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("FOUNDRY_HOME")
            .env_remove("FOUNDRY_KEY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], extra: &[(&str, &str)]) -> String {
        let out = self.run(args, extra);
        assert!(
            out.status.success(),
            "ledger {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn events(&self, ty: &str) -> Vec<serde_json::Value> {
        self.ok(&["--json", "log", "--type", ty], &[])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for(&self, ty: &str, what: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(e) = self.events(ty).into_iter().find(&what) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no matching {ty} within 120 s; the log:\n{}",
                self.ok(&["log"], &[])
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn modal_recipe(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml"))
        .unwrap()
        .replace(
            "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
            "[backend]\nkind = \"modal\"\ngpu = \"A10G\"\nretries = 1\napp_name = \"foundry-test\"\ncheckpoint_volume = \"ckpt\"\ndata_volume = \"data\"",
        );
    let p = dir.join("modal.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_cli_over_nats_starts_follows_and_cancels_a_modal_run_whose_container_uses_nats() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server();
    let server = dir.path().join("server");
    common::ok(&server, &["init"]);
    let _serve = spawn(&server, &["serve", "--nats", &url], &[], "serving");

    // The dispatcher, on "another machine" (its own home), with the fake
    // modal CLI; its containers are told to use NATS.
    let fake = dir.path().join("modal");
    let runner_home = dir.path().join("dispatcher");
    let path = format!(
        "{}:{}",
        repo("tests/fake_modal").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let runner_env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("FAKE_MODAL_HOME", fake.to_str().unwrap()),
        ("FOUNDRY_MODAL_DEVICE", "cpu"),
        ("FOUNDRY_MODAL_POLL_MS", "300"),
        ("FOUNDRY_MODAL_NATS_URL", url.as_str()),
        ("FOUNDRY_LEASE_MS", "3000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Each process signs with its own key; the server's `init` made them.
    let key = |name: &str| server.join("keys").join(name).display().to_string();
    let dispatcher_key = key("runner-dispatcher.nk");
    let _dispatcher = spawn(
        &runner_home,
        &[
            "runner",
            "--nats",
            &url,
            "--only",
            "modal",
            "--key",
            &dispatcher_key,
        ],
        &runner_env,
        "running modal",
    );

    // The client: every command with FOUNDRY_NATS_URL, its own home a replica.
    let mut env: Vec<(String, String)> = ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("FOUNDRY_NATS_URL".into(), url.clone()));
    env.push(("FOUNDRY_KEY".into(), key("operator.nk")));
    let client = Client {
        home: dir.path().join("client"),
        env,
    };
    let (dataset, model) = client.pin_inputs(&dir.path().join("data"), "3");
    let recipe_file = modal_recipe(dir.path());
    let recipe = first_word(&client.ok(&["recipe", "declare", recipe_file.to_str().unwrap()], &[]));

    // Start in the foreground: it follows the replica until the run ends.
    let started = client.start(&recipe, &dataset, &model, "--quiet");
    assert_eq!(started["status"], "completed", "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The container's events came over NATS, not through an outbox import.
    let log = std::fs::read_dir(fake.join("apps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    assert!(log.contains("events go to the ledger over NATS"), "{log}");
    // The dispatcher records the job's end once it has pulled the files.
    let end = client.wait_for("ModalJobUpdated", |e| {
        e["payload"]["run_id"] == run_id.as_str()
            && e["idempotency_key"]
                .as_str()
                .is_some_and(|k| k.ends_with("/state/end"))
    });
    assert_eq!(end["payload"]["state"], "succeeded", "{end}");
    let ckpts = client.events("CheckpointCommitted");
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    for c in &ckpts {
        // Signed by the container's own key, registered for this run only.
        let actor = c["actor"].as_str().unwrap();
        assert!(actor.starts_with(&format!("modal:{run_id}")), "{actor}");
        // Pulled from the Volume into the dispatcher's artifact store.
        let store = foundry_ledger::Home::at(&runner_home).artifacts();
        for f in c["payload"]["files"].as_array().unwrap() {
            let sha: foundry_events::Sha256Digest =
                serde_json::from_value(f["sha256"].clone()).unwrap();
            assert!(store.check(&sha).unwrap(), "{f} was not pulled");
        }
    }
    let keys = client.events("KeyRegistered");
    let container = keys
        .iter()
        .find(|k| k["payload"]["run_scope"] == run_id.as_str())
        .expect("the container's key was registered");
    assert_eq!(
        container["payload"]["roles"],
        serde_json::json!(["trainer"])
    );
    assert!(
        container["payload"]["expires_at"].is_string(),
        "{container}"
    );
    assert_eq!(client.events("RunCompleted").len(), 1);
    // The client's replica and the server's ledger are the same history.
    let verify = client.ok(&["verify"], &[]);
    assert!(verify.to_lowercase().contains("ok"), "{verify}");
    let stats: serde_json::Value =
        serde_json::from_str(&client.ok(&["--json", "stats"], &[])).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (seq, hash) = rt.block_on(async {
        use foundry_runner::LedgerClient;
        let c = foundry_bus::NatsLedgerClient::new(
            foundry_bus::NatsOptions::url(&url).connect().await.unwrap(),
            foundry_ledger::Identity::generate("reader").unwrap(),
        );
        let seq = stats["events"].as_u64().unwrap();
        (
            c.head().await.unwrap(),
            c.get(seq).await.unwrap().unwrap().hash,
        )
    });
    assert!(seq >= stats["events"].as_u64().unwrap());
    assert_eq!(stats["head_hash"], serde_json::to_value(hash).unwrap());
    let show = client.ok(&["show", "run", &run_id[..10]], &[]);
    assert!(show.contains("completed"), "{show}");

    // A long run, detached, cancelled from the CLI once it trains.
    let long = first_word(&client.ok(
        &["recipe", "declare", recipe_file.to_str().unwrap()],
        &[("FOUNDRY_TRAINING_MAX_STEPS", "100000")],
    ));
    let long_run = client.start(&long, &dataset, &model, "--detach")["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    client.wait_for("RunStarted", |e| {
        e["payload"]["run_id"] == long_run.as_str()
    });
    client.ok(&["run", "cancel", &long_run, "--reason", "enough"], &[]);
    client.wait_for("ModalJobUpdated", |e| {
        e["payload"]["run_id"] == long_run.as_str() && e["payload"]["state"] == "cancelled"
    });
    let shown: serde_json::Value =
        serde_json::from_str(&client.ok(&["--json", "show", "run", &long_run[..10]], &[])).unwrap();
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    assert!(client.events("RunFailed").is_empty());
}

#[test]
fn over_nats_a_killed_trainer_is_replaced_and_evals_gate_promotions() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server();
    let server = dir.path().join("server");
    common::ok(&server, &["init"]);
    let serve = spawn(&server, &["serve", "--nats", &url], &[], "serving");

    // Runners in their own processes, each with its own home (as machines
    // that share no disk: checkpoint files travel through the JetStream
    // artifact bucket). A dead trainer's delivery comes back after 2 s, its
    // lease lapses after 2 s.
    let home_of = |name: &str| dir.path().join(format!("home-{name}"));
    let runner_env: Vec<(String, String)> = [
        ("FOUNDRY_ACK_WAIT_MS", "2000"),
        ("FOUNDRY_LEASE_MS", "2000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let key = |name: &str| server.join("keys").join(name).display().to_string();
    let runner = |only: &str, home: &str| {
        let k = key(&format!("runner-{only}.nk"));
        spawn(
            &home_of(home),
            &["runner", "--nats", &url, "--only", only, "--key", &k],
            &runner_env,
            &format!("running {only}"),
        )
    };
    let mut trainer_a = runner("trainer", "trainer-a");
    let evaluator = runner("evaluator", "evaluator");
    let _promoter = runner("promoter", "promoter");

    let env: Vec<(String, String)> = [
        ("FOUNDRY_NATS_URL", url.as_str()),
        ("FOUNDRY_TRAINING_MAX_STEPS", "60"),
        ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
        ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", "10"),
        ("FOUNDRY_TRAINING_MICRO_BATCH", "2"),
        ("FOUNDRY_EVAL_MAX_EXAMPLES", "2"),
        ("FOUNDRY_EVAL_MAX_NEW_TOKENS", "6"),
        ("FOUNDRY_KEY", key("operator.nk").as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let client = Client {
        home: dir.path().join("client"),
        env,
    };
    let (dataset, model) = client.pin_inputs(&dir.path().join("data"), "5");
    // tiny-cpu, with a staging gate a random model passes.
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml"))
        .unwrap()
        .replace(
            "gates = [\"json_valid_rate >= 0.5\"]",
            "gates = [\"json_valid_rate >= 0.0\"]",
        );
    let recipe_file = dir.path().join("recipe.toml");
    std::fs::write(&recipe_file, text).unwrap();
    let recipe = first_word(&client.ok(&["recipe", "declare", recipe_file.to_str().unwrap()], &[]));

    let run_id = client.start(&recipe, &dataset, &model, "--detach")["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // kill -9 the trainer right after its first checkpoint.
    client.wait_for("CheckpointCommitted", |e| {
        e["payload"]["run_id"] == run_id.as_str()
    });
    trainer_a.0.kill().unwrap();
    let _ = trainer_a.0.wait();
    // Its replacement on another machine resumes from the checkpoint it
    // fetches from the bucket.
    let _trainer_b = runner("trainer", "trainer-b");
    client.wait_for("RunCompleted", |e| {
        e["payload"]["run_id"] == run_id.as_str()
    });

    let claims = client.events("RunClaimed");
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_ne!(
        claims[0]["payload"]["runner_id"],
        claims[1]["payload"]["runner_id"]
    );
    let resumed = client.events("RunResumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let from = resumed[0]["payload"]["step"].as_u64().unwrap();
    assert!(from >= 10, "resumed from step {from}");
    // Every checkpoint step once, in order, ending at 60.
    let steps: Vec<u64> = client
        .events("CheckpointCommitted")
        .iter()
        .map(|c| c["payload"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![10, 20, 30, 40, 50, 60], "{steps:?}");

    // Every checkpoint is evaluated on its own; then the gates decide.
    let last = client.wait_for("EvalScored", |e| {
        e["payload"]["checkpoint_id"].is_string()
            && client.events("EvalScored").len() == steps.len()
    });
    assert!(last.is_object());
    let shown: serde_json::Value =
        serde_json::from_str(&client.ok(&["--json", "show", "run", &run_id[..10]], &[])).unwrap();
    let ckpt = shown["checkpoints"][5]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();
    let promoted = client.ok(&["promote", &ckpt[..12], "--to", "staging"], &[]);
    assert!(promoted.contains("promoted"), "{promoted}");
    let rejected = client.run(&["promote", &ckpt[..12], "--to", "production"], &[]);
    assert!(!rejected.status.success());
    let err = String::from_utf8_lossy(&rejected.stderr);
    assert!(err.contains("rejected"), "{err}");
    let out = String::from_utf8_lossy(&rejected.stdout);
    assert!(out.contains("FAIL  field_exact_match >= 0.94"), "{out}");
    let channel: serde_json::Value =
        serde_json::from_str(&client.ok(&["--json", "show", "channel", "staging"], &[])).unwrap();
    assert!(channel.to_string().contains(&ckpt), "{channel}");

    // Retention lets the first checkpoint's weights leave the bucket (the
    // run ended, it was scored, it is outside keep_last, never promoted);
    // an eval of it asked for later calls them back from the serve home,
    // and the evaluator, on another machine, scores it.
    let first = &shown["checkpoints"][0];
    let weights: foundry_events::Sha256Digest = serde_json::from_value(
        first["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "adapter_model.safetensors")
            .expect("weights")["sha256"]
            .clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_bucket(&url, &weights) {
        assert!(
            Instant::now() < deadline,
            "retention never let the first weights go"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new evaluator, on a machine that holds none of it.
    drop(evaluator);
    let _evaluator = runner("evaluator", "evaluator-2");
    let first_id = first["checkpoint_id"].as_str().unwrap();
    let scored = client.ok(
        &[
            "eval",
            &first_id[..12],
            "--split",
            "validation",
            "--limit",
            "2",
        ],
        &[],
    );
    assert!(scored.contains("field_exact_match"), "{scored}");
    let fetched = foundry_ledger::Home::at(home_of("evaluator-2")).artifacts();
    assert!(
        fetched.check(&weights).unwrap(),
        "the new evaluator fetched the weights"
    );

    // The CLI on another machine merges the promoted adapter: its files
    // come from the bucket into the client's home, checked.
    let merged = dir.path().join("merged");
    client.ok(
        &[
            "adapter",
            "merge",
            &ckpt[..12],
            "--out",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    assert!(merged.join("model.safetensors").is_file());
    assert!(merged.join("config.json").is_file());

    // The evaluator's home holds what it fetched, checked, and nothing was
    // written to the trainer's disk by anyone else.
    let evaluator_store = foundry_ledger::Home::at(home_of("evaluator")).artifacts();
    let last_files = &shown["checkpoints"][5]["files"];
    for f in last_files.as_array().expect("files") {
        let sha: foundry_events::Sha256Digest =
            serde_json::from_value(f["sha256"].clone()).unwrap();
        assert!(evaluator_store.check(&sha).unwrap(), "{f}");
    }
    // An auditor's replica proves through the bucket every file still in
    // it; retention let the oldest checkpoints' weights go (the run ended,
    // they were scored, outside keep_last, never promoted) ...
    let audit: serde_json::Value =
        serde_json::from_str(&client.ok(&["--json", "verify", "--artifacts"], &[])).unwrap();
    assert!(audit["artifacts_checked"].as_u64().unwrap() > 0, "{audit}");
    assert!(
        audit["artifacts_left_bucket"].as_u64().unwrap() > 0,
        "{audit}"
    );
    // ... and the serve home, handed over as it is, proves every file the
    // history names: each checkpoint's and each run config.
    let named = client
        .events("CheckpointCommitted")
        .iter()
        .map(|c| c["payload"]["files"].as_array().unwrap().len() as u64)
        .sum::<u64>()
        + client.events("RunStarted").len() as u64;
    drop(serve);
    let verified: serde_json::Value =
        serde_json::from_str(&common::ok(&server, &["--json", "verify", "--artifacts"])).unwrap();
    assert_eq!(
        verified["artifacts_checked"].as_u64(),
        Some(named),
        "{verified}"
    );
}

/// A file of `len` pseudo-random bytes in `dir`, stored in `home`'s
/// artifact store: its digest.
fn stored_file(home: &Path, dir: &Path, len: usize) -> foundry_events::Sha256Digest {
    use std::io::Write;
    let path = dir.join("weights.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..len >> 20 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    drop(f);
    let (digest, _) = foundry_ledger::Home::at(home)
        .artifacts()
        .put_file(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    digest
}

/// Whether the artifact bucket holds `digest` whole.
fn in_bucket(url: &str, digest: &foundry_events::Sha256Digest) -> bool {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bucket = foundry_bus::ArtifactBucket::on(async_nats::connect(url).await.unwrap())
            .await
            .unwrap();
        bucket.contains(digest).await.unwrap()
    })
}

/// Chunks of the artifact bucket's stream, as the server counts them.
fn bucket_messages(url: &str) -> u64 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        match js.get_stream("OBJ_FOUNDRY_ARTIFACTS").await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    })
}

#[test]
fn a_killed_upload_resumes_and_a_killed_serve_pulls_again_leaving_one_verified_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server();
    let server = dir.path().join("server");
    common::ok(&server, &["init"]);
    let trainer_home = dir.path().join("trainer");
    common::ok(&trainer_home, &["init"]);
    let digest = stored_file(&trainer_home, dir.path(), 256 << 20);
    let hex = digest.to_hex();

    // kill -9 an upload midway: no object appears, and the next upload
    // continues where it stopped.
    let mut push = Command::new(bin())
        .args(["--home", trainer_home.to_str().unwrap(), "--nats", &url])
        .args(["artifact", "push", &hex])
        .env_remove("FOUNDRY_NATS_URL")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bucket_messages(&url) < 20 {
        assert!(Instant::now() < deadline, "the upload never started");
        assert!(
            push.try_wait().unwrap().is_none(),
            "the upload ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    push.kill().unwrap();
    push.wait().unwrap();
    let reader = dir.path().join("reader");
    let missing = common::ledger(&reader, &["--nats", &url, "artifact", "get", &hex]);
    assert!(
        !missing.status.success(),
        "a killed upload left a readable object"
    );
    let again = common::ok(&trainer_home, &["--nats", &url, "artifact", "push", &hex]);
    assert!(again.contains("resumed at chunk"), "{again}");
    assert_eq!(
        bucket_messages(&url),
        512 + 1,
        "every chunk once, and its metadata"
    );
    let fetched = common::ok(&reader, &["--nats", &url, "artifact", "get", &hex]);
    let (got, _) = foundry_ledger::hash_file(Path::new(fetched.trim())).unwrap();
    assert_eq!(got, digest);

    // kill -9 serve while it pulls the file an append names; a retry after
    // its restart is confirmed once the file is in its home, whole.
    let trainer_key =
        foundry_ledger::Identity::load(&server.join("keys").join("runner-trainer.nk"), None)
            .unwrap();
    let append = |url: String, key: foundry_ledger::Identity, home: PathBuf| {
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    use foundry_runner::LedgerClient;
                    let client = foundry_bus::NatsLedgerClient::new(
                        async_nats::connect(&url).await.unwrap(),
                        key,
                    )
                    .with_artifacts(foundry_ledger::Home::at(home).artifacts());
                    let req =
                        foundry_ledger::AppendRequest::new(vec![foundry_ledger::NewEvent::new(
                            foundry_events::Event::CheckpointCommitted(
                                foundry_events::CheckpointCommitted {
                                    run_id: "r1".into(),
                                    checkpoint_id: "c1".into(),
                                    step: 10,
                                    files: vec![foundry_events::FileDigest {
                                        path: "adapter_model.safetensors".into(),
                                        sha256: digest,
                                        bytes: 256 << 20,
                                    }],
                                    loss: None,
                                    location: "adapters/r1/step-10".into(),
                                },
                            ),
                        )])
                        .idempotent("trainer/r1/c1");
                    client.append(req).await.map(|o| o.events.len())
                })
        })
    };
    let serve = spawn(&server, &["serve", "--nats", &url], &[], "serving");
    let staged = foundry_ledger::Home::at(&server)
        .artifacts()
        .staging_path(&digest)
        .unwrap();
    let first = append(url.clone(), trainer_key.clone(), trainer_home.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&staged).map_or(0, |m| m.len()) < 16 << 20 {
        assert!(Instant::now() < deadline, "serve never started pulling");
        assert!(
            !first.is_finished(),
            "the pull ended before serve was killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(serve);
    assert!(
        first.join().unwrap().is_err(),
        "an append confirmed by a killed serve"
    );
    let store = foundry_ledger::Home::at(&server).artifacts();
    assert!(!store.contains(&digest), "a partial pull was installed");
    let serve = spawn(&server, &["serve", "--nats", &url], &[], "serving");
    let retried = append(url.clone(), trainer_key, trainer_home.clone());
    assert_eq!(retried.join().unwrap().unwrap(), 1);
    assert!(store.check(&digest).unwrap());
    assert!(!staged.exists(), "the staging file stayed behind");
    drop(serve);
    let verified: serde_json::Value =
        serde_json::from_str(&common::ok(&server, &["--json", "verify", "--artifacts"])).unwrap();
    assert_eq!(verified["artifacts_checked"], 1, "{verified}");
    assert_eq!(
        bucket_messages(&url),
        512 + 1,
        "no second copy in the bucket"
    );
}
