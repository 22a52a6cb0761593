//! Modal dispatch end to end through the real binary, against the test double
//! of the `modal` CLI in tests/fake_modal (put first on PATH): the launcher is
//! rendered and submitted, the "container" runs `ledger runner train` from
//! the snapshot with Volumes as directories, its outbox and checkpoints come
//! back verified, and faults (preemption, crashes) end as they should.

use crate::common;

use common::{first_word, repo};

use std::path::{Path, PathBuf};
use std::process::Output;

const ENV: &[(&str, &str)] = common::QUICK_RUN;

struct Setup {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    fake_home: PathBuf,
    env: Vec<(String, String)>,
    recipe: String,
    dataset: String,
    model: String,
}

impl Setup {
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut e = self.env.clone();
        e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        e
    }

    fn ledger(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let env = self.env(extra);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::ledger_env(&self.home, args, &pairs)
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn ok(&self, args: &[&str]) -> String {
        common::ok_env(&self.home, args, &self.pairs())
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        common::json_env(&self.home, args, &self.pairs())
    }

    fn start(&self, extra: &[(&str, &str)]) -> Output {
        self.ledger(
            &[
                "--json",
                "run",
                "start",
                "--recipe",
                &self.recipe,
                "--dataset",
                &self.dataset,
                "--model",
                &self.model,
                "--quiet",
            ],
            extra,
        )
    }

    fn events(&self, ty: &str) -> Vec<serde_json::Value> {
        self.ok(&["--json", "log", "--type", ty])
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }
}

/// A home with a pinned tiny dataset and model, and a modal recipe (tiny-cpu
/// with `[backend] kind = "modal"`), with the fake `modal` first on PATH.
fn setup(retries: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    let fake_home = tmp.path().join("modal");
    let path = format!(
        "{}:{}",
        repo("tests/fake_modal").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env: Vec<(String, String)> = ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend([
        ("PATH".to_string(), path),
        (
            "FAKE_MODAL_HOME".to_string(),
            fake_home.display().to_string(),
        ),
        ("FOUNDRY_MODAL_DEVICE".to_string(), "cpu".to_string()),
        ("FOUNDRY_MODAL_POLL_MS".to_string(), "300".to_string()),
        ("FOUNDRY_MODAL_SECRETS".to_string(), "hf-token".to_string()),
    ]);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dataset = common::home_with_tiny_dataset(&home, &data, 12, 3, &pairs);
    let model = first_word(&common::ok_env(
        &home,
        &[
            "model",
            "pin",
            repo("ml/idefics2/fixtures/tiny").to_str().unwrap(),
        ],
        &pairs,
    ));
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml"))
        .unwrap()
        .replace(
            "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
            &format!(
                "[backend]\nkind = \"modal\"\ngpu = \"A10G\"\ntimeout_s = 900\nretries = {retries}\napp_name = \"foundry-test\"\ncheckpoint_volume = \"ckpt\"\ndata_volume = \"data\""
            ),
        );
    assert!(text.contains("kind = \"modal\""));
    let recipe_file = tmp.path().join("modal.toml");
    std::fs::write(&recipe_file, text).unwrap();
    let recipe = first_word(&common::ok_env(
        &home,
        &["recipe", "declare", recipe_file.to_str().unwrap()],
        &pairs,
    ));
    Setup {
        _tmp: tmp,
        home,
        fake_home,
        env,
        recipe,
        dataset,
        model,
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_preempted_modal_run_resumes_from_its_checkpoint_with_lineage_intact() {
    let s = setup(2);
    // The first container is killed right after its first checkpoint is on
    // the Volume (its 2nd FOUNDRY_COMMIT: start, checkpoint step 2).
    let out = s.start(&[("FAKE_MODAL_PREEMPT_AFTER_COMMITS", "2")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let started: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(started["status"], "completed", "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // Submitted once, with what was submitted.
    let submitted = s.events("ModalJobSubmitted");
    assert_eq!(submitted.len(), 1);
    let p = &submitted[0]["payload"];
    assert_eq!(p["gpu"], "A10G");
    assert!(p["app_id"].as_str().unwrap().starts_with("ap-"), "{p}");
    assert!(
        p["function_call_id"].as_str().unwrap().starts_with("fc-"),
        "{p}"
    );
    assert!(
        p["image_digest"].as_str().unwrap().starts_with("sha256:"),
        "{p}"
    );
    assert_eq!(p["command"][1], "run");
    let launcher = s.home.join("runs").join(&run_id).join("modal/launcher.py");
    let (sha, _) = foundry_sha256(&launcher);
    assert_eq!(p["launcher_sha256"], sha);

    // Two attempts: the claim was taken back at once (same runner id) and the
    // run resumed from the step-2 checkpoint, not from scratch.
    let claims = s.events("RunClaimed");
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_eq!(claims[1]["payload"]["attempt"], 2);
    let resumed = s.events("RunResumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["payload"]["step"], 2);
    assert_eq!(s.events("RunStarted").len(), 1);

    // Nothing doubled: one checkpoint per step, one completion, and the
    // imported events keep the container's causation (the RunRequested).
    let ckpts = s.events("CheckpointCommitted");
    let steps: Vec<u64> = ckpts
        .iter()
        .map(|c| c["payload"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![2, 4], "{ckpts:?}");
    assert_eq!(s.events("RunCompleted").len(), 1);
    let requested = &s.events("RunRequested")[0];
    for c in &ckpts {
        assert_eq!(c["causation_id"], requested["event_id"]);
    }

    // Status updates from the Volume, and the end.
    let updates = s.events("ModalJobUpdated");
    let states: Vec<&str> = updates
        .iter()
        .map(|u| u["payload"]["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"running"), "{states:?}");
    assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");

    // Every checkpoint was evaluated here, from files pulled off the Volume.
    assert_eq!(s.events("EvalScored").len(), 2);
    let run = s.json(&["show", "run", &run_id[..10]]);
    assert_eq!(run["run"]["status"], "completed", "{run}");
    assert_eq!(run["run"]["backend"], "modal", "{run}");
    assert_eq!(run["run"]["modal"]["state"], "succeeded", "{run}");
    assert_eq!(run["run"]["resumes"][0]["step"], 2, "{run}");
    assert_eq!(run["checkpoints"].as_array().unwrap().len(), 2, "{run}");
    let lineage = s.ok(&["lineage", &run_id[..10]]);
    assert!(
        lineage.contains(&s.dataset[..12]) || lineage.contains(&s.dataset[..8]),
        "{lineage}"
    );
    let verified = s.ok(&["verify", "--artifacts"]);
    assert!(verified.to_lowercase().contains("ok"), "{verified}");

    // The Volume holds the container's scratch home and outbox; importing it
    // again (a dispatcher restart) appends nothing.
    let ckpt_volume = s.fake_home.join("volumes/ckpt/runs").join(&run_id);
    assert!(ckpt_volume.join("outbox.foundry").is_file());
    let app_log: String = std::fs::read_dir(s.fake_home.join("apps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(
        std::fs::read_to_string(ckpt_volume.join("attempts")).unwrap(),
        "2",
        "{app_log}"
    );
    let before = s.json(&["stats"])["events"].clone();
    let again = s.ledger(&["up", "--until-idle"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(s.json(&["stats"])["events"], before);
}

/// sha256 of a file, hex.
fn foundry_sha256(p: &Path) -> (String, u64) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(p).unwrap();
    (
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        bytes.len() as u64,
    )
}

#[test]
fn a_modal_job_that_dies_on_every_attempt_fails_the_run_with_the_reason() {
    let s = setup(1);
    let out = s.start(&[("FAKE_MODAL_CRASH", "1")]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: run "), "{err}");
    assert!(err.contains("ended without finishing the run"), "{err}");
    assert!(err.contains("no attempt started the launcher"), "{err}");
    assert!(err.contains("at most 2 attempt(s)"), "{err}");
    assert!(err.contains("container crashed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let failed = s.events("RunFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["payload"]["retryable"], true);
    let updates = s.events("ModalJobUpdated");
    assert!(!updates.is_empty());
    // No container ever claimed the run.
    assert!(s.events("RunClaimed").is_empty());
}

#[test]
fn dry_run_renders_the_launcher_and_prints_the_commands_without_submitting() {
    let s = setup(3);
    let before = s.json(&["stats"])["events"].clone();
    let out = s.ok(&[
        "run",
        "start",
        "--recipe",
        &s.recipe,
        "--dataset",
        &s.dataset,
        "--model",
        &s.model,
        "--dry-run",
    ]);
    assert!(out.contains("nothing was submitted or recorded"), "{out}");
    assert!(out.contains("volume put --force data"), "{out}");
    assert!(out.contains(&format!("datasets/{}", s.dataset)), "{out}");
    assert!(out.contains("run --detach launcher.py::main"), "{out}");
    assert!(out.contains("A10G / 900s / 3"), "{out}");
    assert_eq!(
        s.json(&["stats"])["events"],
        before,
        "dry run recorded events"
    );
    assert!(
        !s.fake_home.join("apps").exists(),
        "dry run submitted a job"
    );

    let plan = s.json(&[
        "run",
        "start",
        "--recipe",
        &s.recipe,
        "--dataset",
        &s.dataset,
        "--model",
        &s.model,
        "--dry-run",
    ]);
    let launcher = PathBuf::from(plan["plan"]["launcher_path"].as_str().unwrap());
    let src = std::fs::read_to_string(&launcher).unwrap();
    assert!(src.contains("GPU = \"A10G\""), "{src}");
    assert!(src.contains("SECRETS = [\"hf-token\"]"), "{src}");
    assert!(src.contains("RETRIES = 3"), "{src}");

    // The launcher imports cleanly under the real `modal` package (from
    // PyPI; defining an App, Image, Volumes and Secrets needs no network).
    // tools/test.sh installs it; without it this part cannot run.
    let has_modal = std::process::Command::new("python3")
        .args(["-c", "import modal"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_modal,
        "the real `modal` Python package is not installed: run the tests with tools/test.sh, which installs it"
    );
    let check = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import importlib.util, sys, modal\n\
             spec = importlib.util.spec_from_file_location('launcher', sys.argv[1])\n\
             m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n\
             assert isinstance(m.app, modal.App), type(m.app)\n\
             assert m.app.name == 'foundry-test', m.app.name\n\
             assert 'train' in m.app.registered_functions, m.app.registered_functions\n\
             assert 'main' in m.app.registered_entrypoints, m.app.registered_entrypoints\n\
             print('launcher ok', modal.__version__)",
        )
        .arg(&launcher)
        .env("MODAL_TOKEN_ID", "")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the launcher does not import under modal: {}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(stdout(&check).contains("launcher ok"));
}

#[test]
fn a_bad_modal_backend_is_refused_with_a_clear_error() {
    let s = setup(0);
    // A volume name Modal would refuse: a run that fails at submission, with
    // the reason, and no job.
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml")).unwrap().replace(
        "[backend]\nkind = \"local\"\ndevice = \"cpu\"",
        "[backend]\nkind = \"modal\"\ngpu = \"H100\"\ncheckpoint_volume = \"no spaces allowed\"",
    );
    let f = s.home.join("bad.toml");
    std::fs::write(&f, text).unwrap();
    // Refused at declare time, before any event: one line naming the file,
    // the field and the value.
    let out = s.ledger(&["recipe", "declare", f.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("backend.checkpoint_volume"), "{err}");
    assert!(err.contains("\"no spaces allowed\""), "{err}");
    let recipes = s.ok(&["log"]);
    assert!(!recipes.contains("no spaces"), "{recipes}");
    assert!(!s
        .home
        .join("dry-runs")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
}

#[test]
fn runner_train_refuses_a_bad_snapshot_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    let garbage = dir.path().join("bad.foundry");
    std::fs::write(&garbage, "FOUNDRY-LEDGER-EXPORT\nnot json\n").unwrap();
    for (bundle, says) in [
        (dir.path().join("missing.foundry"), "no such snapshot file"),
        (garbage, "snapshot "),
    ] {
        let out = common::ledger(
            &home,
            &[
                "runner",
                "train",
                "--run",
                "r1",
                "--bundle",
                bundle.to_str().unwrap(),
                "--work",
                work.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.starts_with("error: ") && err.contains(says), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!work.exists(), "wrote {}", work.display());
    }
}
