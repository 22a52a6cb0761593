//! Hostile and oversized input through the real binary: dataset rows that
//! reach outside their root, recipe values that would blow memory up,
//! template injection, image bombs, a login that fails, and a run whose
//! training process keeps dying while two runners serve over NATS. Every
//! refusal is one line, exits non-zero and records nothing.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, first_word, ledger_env, nats_server, ok, ok_env, repo, spawn};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_string()
}

/// Runs `ledger args` in `home`, expects a one-line error, returns it.
fn refused(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ledger_env(home, args, env);
    assert!(!out.status.success(), "ledger {args:?} should fail");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn event_count(home: &Path) -> usize {
    ok(home, &["log"]).lines().count()
}

fn synth(home: &Path, data: &Path, count: &str, seed: &str) {
    ok(
        home,
        &[
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            count,
            "--seed",
            seed,
            "--profile",
            "tiny",
        ],
    );
}

#[test]
fn pinning_refuses_images_outside_the_root_without_telling_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &["init"]);
    let data = dir.path().join("data");
    synth(&home, &data, "4", "1");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        data.join("data/images/train/0000000.png"),
        outside.join("secret.png"),
    )
    .unwrap();
    let images = data.join("data/images/train");
    std::os::unix::fs::symlink(outside.join("secret.png"), images.join("abs.png")).unwrap();
    std::os::unix::fs::symlink("../../../../outside/secret.png", images.join("rel.png")).unwrap();
    std::os::unix::fs::symlink(&outside, images.join("dir")).unwrap();
    let shard = data.join("data/train-00000-of-00001.jsonl");
    let good = std::fs::read_to_string(&shard).unwrap();
    let before = event_count(&home);
    let abs = outside.join("secret.png").display().to_string();
    let cases: Vec<(serde_json::Value, String)> = vec![
        (
            "../../outside/secret.png".into(),
            "../../outside/secret.png".into(),
        ),
        (abs.clone().into(), abs.clone()),
        (serde_json::json!({ "path": abs }), abs.clone()),
        ("/etc/passwd".into(), "/etc/passwd".into()),
        ("/etc/no-such-file".into(), "/etc/no-such-file".into()),
        ("images/train/abs.png".into(), "images/train/abs.png".into()),
        ("images/train/rel.png".into(), "images/train/rel.png".into()),
        (
            "images/train/dir/secret.png".into(),
            "images/train/dir/secret.png".into(),
        ),
    ];
    for (image, shown) in cases {
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let mut row: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        row["image"] = image.clone();
        lines[1] = row.to_string();
        std::fs::write(&shard, lines.join("\n") + "\n").unwrap();
        let err = refused(&home, &["dataset", "pin", data.to_str().unwrap()], &[]);
        assert_eq!(
            err,
            format!(
                "error: shard data/train-00000-of-00001.jsonl, row 2: image {shown:?} is outside the dataset root"
            ),
            "{image}"
        );
    }
    assert_eq!(
        event_count(&home),
        before,
        "a refused pin recorded something"
    );
    // The untouched dataset still pins.
    std::fs::write(&shard, &good).unwrap();
    for link in ["abs.png", "rel.png", "dir"] {
        std::fs::remove_file(images.join(link)).unwrap();
    }
    ok(&home, &["dataset", "pin", data.to_str().unwrap()]);
}

#[test]
fn an_oversized_target_and_an_image_bomb_are_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &["init"]);
    let data = dir.path().join("data");
    synth(&home, &data, "4", "2");
    let shard = data.join("data/train-00000-of-00001.jsonl");
    let good = std::fs::read_to_string(&shard).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let mut row: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    row["target"]["total"] = "9".repeat(2 << 20).into();
    lines[0] = row.to_string();
    std::fs::write(&shard, lines.join("\n") + "\n").unwrap();
    let err = refused(&home, &["dataset", "pin", data.to_str().unwrap()], &[]);
    assert!(
        err.contains("shard data/train-00000-of-00001.jsonl, row 1"),
        "{err}"
    );
    assert!(err.contains("bytes"), "{err}");

    // 12000 x 12000 greyscale: a small file that decodes to 144 MB.
    let bomb = dir.path().join("bomb.png");
    image::GrayImage::new(12000, 12000).save(&bomb).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let model = repo("ml/idefics2/fixtures/tiny");
    let err = refused(
        &home,
        &[
            "infer",
            "--model",
            model.to_str().unwrap(),
            "--image",
            bomb.to_str().unwrap(),
            "--max-new-tokens",
            "2",
        ],
        &[],
    );
    assert!(err.contains("12000"), "{err}");
    assert!(err.contains("8192"), "{err}");
    // The bomb in a dataset row is refused at pin, naming the row.
    std::fs::write(&shard, &good).unwrap();
    std::fs::copy(&bomb, data.join("data/images/train/0000003.png")).unwrap();
    let err = refused(&home, &["dataset", "pin", data.to_str().unwrap()], &[]);
    assert!(
        err.contains("images/train/0000003.png does not decode: it is 12000 x 12000 pixels, more than 8192 a side"),
        "{err}"
    );
}

fn recipe_with(dir: &Path, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml")).unwrap();
    assert!(text.contains(from), "tiny-cpu.toml has no {from:?}");
    let p = dir.join(name);
    std::fs::write(&p, text.replace(from, to)).unwrap();
    p.display().to_string()
}

#[test]
fn recipe_values_that_would_blow_up_and_template_injection_are_refused_at_declare() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &["init"]);
    let before = event_count(&home);
    let modal = "[backend]\nkind = \"modal\"\ngpu = \"GPU\"";
    for (from, to, says) in [
        ("r = 8", "r = 2147483647", "lora.r"),
        (
            "micro_batch = 4",
            "micro_batch = 4000000000",
            "training.micro_batch",
        ),
        (
            "max_length = 256",
            "max_length = 1000000000",
            "training.max_length",
        ),
        (
            "image_longest_edge = 64",
            "image_longest_edge = 100000",
            "training.image_longest_edge",
        ),
        (
            "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
            &modal.replace("GPU", "{{NATS_URL}}"),
            "backend.gpu",
        ),
        (
            "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
            &modal.replace("GPU", "A{{DEVICE}}B"),
            "backend.gpu",
        ),
        (
            "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
            &modal.replace("GPU", "H100\\\"); import os; os.system(\\\"id"),
            "backend.gpu",
        ),
    ] {
        let f = recipe_with(dir.path(), "bad.toml", from, to);
        let err = refused(&home, &["recipe", "declare", &f], &[]);
        assert!(err.contains(says), "{to}: {err}");
        assert!(err.contains("bad.toml"), "{err}");
    }
    assert_eq!(event_count(&home), before, "a refused recipe was recorded");
}

#[test]
fn a_rank_wider_than_the_model_and_a_run_over_the_memory_budget_fail_the_run_with_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let dataset = common::home_with_tiny_dataset(&home, &dir.path().join("data"), 6, 3, &[]);
    let tiny = repo("ml/idefics2/fixtures/tiny");
    let model = first_word(&ok(&home, &["model", "pin", tiny.to_str().unwrap()]));
    let run_start = |recipe: &str, env: &[(&str, &str)]| {
        let args = [
            "run",
            "start",
            "--recipe",
            recipe,
            "--dataset",
            &dataset,
            "--model",
            &model,
        ];
        ledger_env(&home, &args, env)
    };
    let start = |recipe: &str, env: &[(&str, &str)]| {
        let out = run_start(recipe, env);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };

    // Within the declared bound (1024), beyond the tiny model's linears.
    let wide = recipe_with(dir.path(), "wide.toml", "r = 8", "r = 512");
    let wide = first_word(&ok(&home, &["recipe", "declare", &wide]));
    let err = start(&wide, &[]);
    assert!(err.contains("lora.r = 512 must be between 1 and"), "{err}");

    let tiny_recipe = repo("recipes/tiny-cpu.toml");
    let recipe = first_word(&ok(
        &home,
        &["recipe", "declare", tiny_recipe.to_str().unwrap()],
    ));
    let err = start(&recipe, &[("FOUNDRY_TRAIN_MEMORY_BYTES", "1MiB")]);
    assert!(err.contains("the run needs an estimated"), "{err}");
    assert!(
        err.contains("but 1.00 MiB is available (FOUNDRY_TRAIN_MEMORY_BYTES)"),
        "{err}"
    );

    // Both runs are failed in the ledger with the reason; neither started.
    let runs = ok(&home, &["--json", "log", "--type", "RunFailed"]);
    assert_eq!(runs.lines().count(), 2, "{runs}");
    assert!(runs.contains("lora.r = 512") && runs.contains("needs an estimated"));
    assert_eq!(
        ok(&home, &["--json", "log", "--type", "RunStarted"])
            .lines()
            .count(),
        0
    );
    // The same recipe trains within the machine's memory.
    let out = run_start(&recipe, &[("FOUNDRY_TRAINING_MAX_STEPS", "2")]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_failed_nats_login_creates_no_home() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::NatsServer::start_with_user("svc", "right");
    let url = nats.url();
    let home = dir.path().join("client");
    let attempt = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("--home")
            .arg(&home)
            .args(args)
            .env_remove("FOUNDRY_HOME")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !home.exists(),
            "{args:?} left {} behind: {err}",
            home.display()
        );
        err
    };
    // A refused login, a server nobody listens on, and a server where the
    // login works but no `ledger serve` answers.
    let err = attempt(&[
        "--nats",
        &url,
        "--nats-user",
        "svc",
        "--nats-password",
        "wrong",
        "log",
    ]);
    assert!(err.to_lowercase().contains("author"), "{err}");
    attempt(&["--nats", "nats://127.0.0.1:1", "log"]);
    let err = attempt(&[
        "--nats",
        &url,
        "--nats-user",
        "svc",
        "--nats-password",
        "right",
        "log",
    ]);
    assert!(err.contains("no ledger service is answering"), "{err}");
}

/// Processes of `ledger engine-child train <run>`.
fn training_children(run: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        if has("engine-child") && has("train") && has(run) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn over_nats_a_run_whose_training_keeps_dying_fails_after_three_attempts_and_the_runners_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server();
    let server = dir.path().join("server");
    ok(&server, &["init"]);
    let _serve = spawn(&server, &["serve", "--nats", &url], &[], "serving");
    let key = |name: &str| server.join("keys").join(name).display().to_string();
    let runner_env: Vec<(String, String)> = [
        ("FOUNDRY_ACK_WAIT_MS", "2000"),
        ("FOUNDRY_LEASE_MS", "2000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let trainer = |work: &str| {
        spawn(
            &dir.path().join(work),
            &[
                "runner",
                "--nats",
                &url,
                "--only",
                "trainer",
                "--key",
                &key("runner-trainer.nk"),
            ],
            &runner_env,
            "running trainer",
        )
    };
    let mut a = trainer("work-a");
    let mut b = trainer("work-b");

    let client = dir.path().join("client");
    let op = key("operator.nk");
    let env = [
        ("FOUNDRY_NATS_URL", url.as_str()),
        ("FOUNDRY_KEY", op.as_str()),
    ];
    let data = dir.path().join("data");
    ok_env(
        &client,
        &[
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "8",
            "--seed",
            "4",
            "--profile",
            "tiny",
        ],
        &env,
    );
    let dataset = first_word(&ok_env(
        &client,
        &["dataset", "pin", data.to_str().unwrap()],
        &env,
    ));
    let tiny = repo("ml/idefics2/fixtures/tiny");
    let model = first_word(&ok_env(
        &client,
        &["model", "pin", tiny.to_str().unwrap()],
        &env,
    ));
    let tiny_recipe = repo("recipes/tiny-cpu.toml");
    let declare = |steps: &str| {
        let mut e = env.to_vec();
        e.extend([
            ("FOUNDRY_TRAINING_MAX_STEPS", steps),
            ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
            ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", steps),
            ("FOUNDRY_TRAINING_MICRO_BATCH", "2"),
        ]);
        first_word(&ok_env(
            &client,
            &["recipe", "declare", tiny_recipe.to_str().unwrap()],
            &e,
        ))
    };
    let start = |recipe: &str| -> String {
        let out = ok_env(
            &client,
            &[
                "--json",
                "run",
                "start",
                "--recipe",
                recipe,
                "--dataset",
                &dataset,
                "--model",
                &model,
                "--detach",
            ],
            &env,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["run_id"].as_str().unwrap().to_string()
    };
    let events = |ty: &str| -> Vec<serde_json::Value> {
        ok_env(&client, &["--json", "log", "--type", ty], &env)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // A run that never reaches a checkpoint, and whose training process
    // is killed (as the kernel's OOM killer would) on every attempt.
    let bad = start(&declare("100000"));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    while !events("RunFailed")
        .iter()
        .any(|e| e["payload"]["run_id"] == bad.as_str())
    {
        assert!(Instant::now() < deadline, "no RunFailed for the bad run");
        for pid in training_children(&bad) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(kills >= 3, "{kills} kills");
    let died: Vec<serde_json::Value> = events("RunAttemptFailed")
        .into_iter()
        .filter(|e| e["payload"]["run_id"] == bad.as_str())
        .collect();
    assert_eq!(died.len(), 3, "{died:?}");
    for d in &died {
        let reason = d["payload"]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("the train process was killed by signal 9"),
            "{reason}"
        );
    }
    let failed = events("RunFailed");
    let reason = failed[0]["payload"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("gave up after 3 attempts without a new checkpoint: attempt 1 on "),
        "{reason}"
    );
    assert!(reason.contains("attempt 3 on "), "{reason}");
    // Both runners are alive and serve the next run.
    assert!(a.0.try_wait().unwrap().is_none(), "runner a died");
    assert!(b.0.try_wait().unwrap().is_none(), "runner b died");
    let good = start(&declare("2"));
    let deadline = Instant::now() + Duration::from_secs(300);
    while !events("RunCompleted")
        .iter()
        .any(|e| e["payload"]["run_id"] == good.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "the good run did not complete: {}",
            ok_env(&client, &["log"], &env)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let shown = ok_env(&client, &["show", "run", &bad[..10]], &env);
    assert!(shown.contains("attempt died"), "{shown}");
    assert!(shown.contains("gave up after 3 attempts"), "{shown}");
}
