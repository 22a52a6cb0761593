//! The embedded default end to end through the real binary: synthesize and
//! pin a dataset, pin the tiny base model, declare a recipe, train with QLoRA
//! (checkpoints evaluated automatically), promote through the gates, roll
//! back, and verify every artifact.

use crate::common;

use common::{first_word, repo};

use std::path::Path;
use std::process::Output;

const ENV: &[(&str, &str)] = common::QUICK_RUN;

fn ledger(home: &Path, args: &[&str]) -> Output {
    common::ledger_env(home, args, ENV)
}

fn ok(home: &Path, args: &[&str]) -> String {
    common::ok_env(home, args, ENV)
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    common::json_env(home, args, ENV)
}

#[test]
fn train_evaluate_promote_and_roll_back_in_the_embedded_default() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    let dataset = common::home_with_tiny_dataset(&home, &data, 12, 3, ENV);
    let model = first_word(&ok(
        &home,
        &[
            "model",
            "pin",
            repo("ml/idefics2/fixtures/tiny").to_str().unwrap(),
        ],
    ));
    let recipe_file = common::open_staging_recipe(tmp.path());
    let recipe = first_word(&ok(
        &home,
        &["recipe", "declare", recipe_file.to_str().unwrap()],
    ));

    let started = json(
        &home,
        &[
            "run",
            "start",
            "--recipe",
            &recipe[..8],
            "--dataset",
            &dataset[..8],
            "--model",
            &model[..8],
            "--quiet",
        ],
    );
    assert_eq!(started["status"], "completed", "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    let run = json(&home, &["show", "run", &run_id[..10]]);
    let checkpoints = run["checkpoints"].as_array().expect("checkpoints");
    assert_eq!(checkpoints.len(), 2, "{run}");
    // Every checkpoint was evaluated automatically (every_checkpoints = 1).
    let stats = ok(&home, &["log", "--type", "EvalScored"]);
    assert_eq!(stats.matches("EvalScored").count(), 2, "{stats}");
    let last = checkpoints[1]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();

    // An eval on a split the dataset lacks is refused before it is requested.
    let before = ok(&home, &["log", "--type", "EvalRequested"])
        .lines()
        .count();
    let err = common::fails(&home, &["eval", &last[..12], "--split", "holdout"]);
    assert!(err.contains("has no split \"holdout\""), "{err}");
    assert_eq!(
        ok(&home, &["log", "--type", "EvalRequested"])
            .lines()
            .count(),
        before
    );

    // A checkpoint scored on another pinned dataset records that dataset; its run's base
    // model is the only one it is scored with.
    let other_data = tmp.path().join("other-data");
    common::ok_env(
        &home,
        &[
            "synth",
            "--out",
            other_data.to_str().unwrap(),
            "--count",
            "12",
            "--seed",
            "9",
            "--profile",
            "tiny",
        ],
        ENV,
    );
    let other = first_word(&ok(
        &home,
        &["dataset", "pin", other_data.to_str().unwrap()],
    ));
    assert_ne!(other, dataset);
    let scored = json(
        &home,
        &[
            "eval",
            &last[..12],
            "--dataset",
            &other[..10],
            "--split",
            "test",
            "--limit",
            "2",
        ],
    );
    assert_eq!(scored["eval"]["dataset_id"], other.as_str(), "{scored}");
    assert_eq!(scored["eval"]["checkpoint_id"], last.as_str(), "{scored}");
    let err = common::fails(&home, &["eval", &last[..12], "--model", &model[..8]]);
    assert!(err.contains("--model applies to `eval base`"), "{err}");

    // run_config.json beside the run's artifacts.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.join("runs").join(&run_id).join("run_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["config"]["training"]["max_steps"], 4);
    assert_eq!(cfg["env"]["FOUNDRY_TRAINING_MAX_STEPS"], "4");
    // How the examples were ordered and read is part of the run's record.
    assert_eq!(cfg["data_order"]["prefetch_examples"], 2, "{cfg}");
    assert!(cfg["data_order"]["shuffle"]
        .as_str()
        .is_some_and(|s| s.contains("seeded permutation")));

    // Staging's gate passes; production's do not (a random model is no extractor).
    let promoted = ok(
        &home,
        &[
            "promote",
            &last[..12],
            "--to",
            "staging",
            "--reason",
            "smoke",
        ],
    );
    assert!(promoted.contains("promoted"), "{promoted}");
    let out = ledger(&home, &["promote", &last[..12], "--to", "production"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rejected") && err.contains("field_exact_match >= 0.94"),
        "{err}"
    );

    let channel = json(&home, &["show", "channel", "staging"]);
    assert_eq!(
        channel["channel"]["current_checkpoint_id"],
        last.as_str(),
        "{channel}"
    );
    ok(&home, &["rollback", "staging", "--reason", "test"]);
    let channel = json(&home, &["show", "channel", "staging"]);
    assert!(
        channel["channel"]["current_checkpoint_id"].is_null(),
        "{channel}"
    );

    // Lineage reaches the inputs; every artifact re-hashes.
    let tree = ok(&home, &["lineage", &last[..12]]);
    assert!(
        tree.contains(&dataset[..12]) && tree.contains(&model[..12]),
        "{tree}"
    );
    let verified = ok(&home, &["verify", "--artifacts"]);
    assert!(verified.contains("artifacts re-hashed"), "{verified}");
}

#[test]
fn a_run_on_an_unpinned_or_changed_model_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    let dataset = common::home_with_tiny_dataset(&home, &data, 6, 1, ENV);
    // A copy of the tiny model, pinned, then changed.
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for e in std::fs::read_dir(repo("ml/idefics2/fixtures/tiny")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), model_dir.join(e.file_name())).unwrap();
        }
    }
    let model = first_word(&ok(&home, &["model", "pin", model_dir.to_str().unwrap()]));
    let recipe_file = common::open_staging_recipe(tmp.path());
    let recipe = first_word(&ok(
        &home,
        &["recipe", "declare", recipe_file.to_str().unwrap()],
    ));
    let cfg = model_dir.join("config.json");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push('\n');
    std::fs::write(&cfg, text).unwrap();

    let out = ledger(
        &home,
        &[
            "run",
            "start",
            "--recipe",
            &recipe,
            "--dataset",
            &dataset,
            "--model",
            &model,
            "--quiet",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("changed since it was pinned") && err.contains("config.json"),
        "{err}"
    );
    let failed = ok(&home, &["log", "--type", "RunFailed"]);
    assert!(failed.contains("RunFailed"), "{failed}");

    // Unknown ids are a clear one-line error.
    let err = common::fails(
        &home,
        &[
            "run",
            "start",
            "--recipe",
            "ffff",
            "--dataset",
            &dataset,
            "--model",
            &model,
        ],
    );
    assert!(err.contains("ffff"), "{err}");
}
