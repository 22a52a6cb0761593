//! Helpers shared by the end-to-end tests: run the real `ledger` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Events in the genesis `ledger init` writes: the root and five more keys
/// (you, the trainer, the evaluator, the promoter, the Modal dispatcher).
pub const GENESIS: u64 = 6;

/// Path of the `ledger` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ledger")
}

/// Runs `ledger --home HOME args…` and returns its output.
pub fn ledger(home: &Path, args: &[&str]) -> Output {
    ledger_env(home, args, &[])
}

/// Runs `ledger --home HOME args…` with extra environment variables (e.g.
/// `FOUNDRY_*` recipe overrides) and returns its output.
pub fn ledger_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("FOUNDRY_HOME")
        .env_remove("FOUNDRY_NATS_URL")
        .env_remove("FOUNDRY_KEY")
        .env_remove("FOUNDRY_TRUST_ROOT")
        .envs(env.iter().copied())
        .output()
        .expect("run ledger")
}

/// Like [`ok`], with extra environment variables.
pub fn ok_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ledger_env(home, args, env);
    assert!(
        out.status.success(),
        "ledger {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`ok_env`] with `--json`, parsed.
pub fn json_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok_env(home, &a, env)).expect("json output")
}

/// The first word of a command's output (pins and declares print their id first).
pub fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_string()
}

/// A path in the repository.
pub fn repo(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Runs and requires success; returns stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = ledger(home, args);
    assert!(
        out.status.success(),
        "ledger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and requires failure with a one-line error; returns that line.
pub fn fails(home: &Path, args: &[&str]) -> String {
    let out = ledger(home, args);
    assert!(!out.status.success(), "ledger {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Initializes `home`, synthesizes `count` tiny-profile documents into
/// `data` with `seed`, pins them, and returns the dataset id.
pub fn home_with_tiny_dataset(
    home: &Path,
    data: &Path,
    count: u32,
    seed: u32,
    env: &[(&str, &str)],
) -> String {
    ok_env(home, &["init"], env);
    let (count, seed) = (count.to_string(), seed.to_string());
    let data_s = data.to_str().expect("utf-8 path");
    ok_env(
        home,
        &[
            "synth",
            "--out",
            data_s,
            "--count",
            &count,
            "--seed",
            &seed,
            "--profile",
            "tiny",
        ],
        env,
    );
    first_word(&ok_env(home, &["dataset", "pin", data_s], env))
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "../../runners/bus/tests/common/nats.rs"]
mod nats;
pub use nats::NatsServer;

/// A nats-server with JetStream on a free port (killed when the first value
/// drops), and its URL.
pub fn nats_server() -> (NatsServer, String) {
    let server = NatsServer::start();
    let url = server.url();
    (server, url)
}

/// Recipe overrides that keep test runs of the tiny model to seconds.
pub const QUICK_RUN: &[(&str, &str)] = &[
    ("FOUNDRY_TRAINING_MAX_STEPS", "4"),
    ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
    ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", "2"),
    ("FOUNDRY_TRAINING_MICRO_BATCH", "2"),
    ("FOUNDRY_EVAL_MAX_EXAMPLES", "2"),
    ("FOUNDRY_EVAL_MAX_NEW_TOKENS", "6"),
];

/// `recipes/tiny-cpu.toml` with its staging gate opened (a random model
/// passes it), written to `dir/recipe.toml`.
pub fn open_staging_recipe(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml"))
        .expect("tiny-cpu recipe")
        .replace(
            "gates = [\"json_valid_rate >= 0.5\"]",
            "gates = [\"json_valid_rate >= 0.0\"]",
        );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).expect("write recipe");
    p
}

/// Starts `ledger --home HOME args…` with `env` and waits for `ready` on
/// the first line of its stderr; returns the process and the rest of it.
pub fn start(
    home: &Path,
    args: &[&str],
    env: &[(String, String)],
    ready: &str,
) -> (Proc, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("FOUNDRY_HOME")
        .env_remove("FOUNDRY_NATS_URL")
        .env_remove("FOUNDRY_KEY")
        .env_remove("FOUNDRY_TRUST_ROOT")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ledger");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("first line");
    assert!(line.contains(ready), "{line}");
    (Proc(child), err)
}

/// Like [`start`], and keeps draining the process's stderr so it never
/// blocks on a full pipe.
pub fn spawn(home: &Path, args: &[&str], env: &[(String, String)], ready: &str) -> Proc {
    use std::io::BufRead;
    let (proc, mut err) = start(home, args, env, ready);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    proc
}

/// One key per actor name, shared by every scripted history of this test
/// process, and the root that registers them.
fn scripted_key(name: &str) -> foundry_ledger::Identity {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KEYS: OnceLock<Mutex<HashMap<String, foundry_ledger::Identity>>> = OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    keys.entry(name.to_string())
        .or_insert_with(|| foundry_ledger::Identity::generate(name).expect("key"))
        .clone()
}

/// Appends `e` to a scripted history as `actor`, signed with that actor's
/// key: the ledger gets a genesis first if it is empty, and the actor's
/// key is registered (with every role) by the root on first use.
pub fn append_as_actor(
    ledger: &foundry_ledger::Ledger,
    actor: &str,
    e: foundry_events::Event,
) -> foundry_events::RecordedEvent {
    use foundry_events::Role;
    use foundry_ledger::trust::Grant;
    use foundry_ledger::{AppendRequest, NewEvent};
    let root = scripted_key("root");
    if ledger.head().seq == 0 {
        ledger
            .init_genesis(&root, &[Role::Admin], &[])
            .expect("genesis");
    }
    let id = scripted_key(actor);
    if ledger.registry().key(id.public_key()).is_none() {
        ledger
            .append_as(
                &root,
                AppendRequest::new(vec![NewEvent::new(Grant::of(&id, Role::ALL, "").event())]),
            )
            .expect("register");
    }
    ledger
        .append_as(&id, AppendRequest::new(vec![NewEvent::new(e)]))
        .expect("append")
        .events
        .remove(0)
}

/// Starts a scripted history: a genesis in which the root registers a key
/// (every role) for each of `actors`, so the history after it is offset by
/// `1 + actors.len()` seqs whatever the order of the actors' first events.
pub fn scripted_genesis(ledger: &foundry_ledger::Ledger, actors: &[&str]) -> u64 {
    use foundry_events::Role;
    use foundry_ledger::trust::Grant;
    let grants: Vec<Grant> = actors
        .iter()
        .map(|a| Grant::of(&scripted_key(a), Role::ALL, "scripted"))
        .collect();
    ledger
        .init_genesis(&scripted_key("root"), &[Role::Admin], &grants)
        .expect("genesis");
    1 + actors.len() as u64
}
