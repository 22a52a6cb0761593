//! The trust model, attacked as a dishonest user would, through the real
//! binary and over a real nats-server with user/password authentication:
//! a NATS login never lets anyone append as someone else, roles bind event
//! types, channel policies bind requests and rollbacks, and a history
//! edited after the fact or forged from scratch is refused.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, fails, ok, spawn, GENESIS};
use foundry_bus::{NatsLedgerClient, NatsOptions};
use foundry_events::{
    AdapterPromoted, ChannelRolledBack, EvalScored, Event, MetricValue, RecordedEvent,
    Sha256Digest, Timestamp,
};
use foundry_ledger::{AppendRequest, Identity, LedgerError, NewEvent};
use foundry_runner::{LedgerClient, RunnerError};

const USER: &str = "foundry";
const PASSWORD: &str = "s3cret";

/// A key file of `home`.
fn key(home: &Path, file: &str) -> PathBuf {
    home.join("keys").join(file)
}

fn load(home: &Path, file: &str) -> Identity {
    Identity::load(&key(home, file), None).unwrap()
}

/// `ledger` with NATS credentials in the environment.
fn ledger_nats(
    home: &Path,
    url: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("FOUNDRY_HOME")
        .env_remove("FOUNDRY_KEY")
        .env_remove("FOUNDRY_TRUST_ROOT")
        .env("FOUNDRY_NATS_URL", url)
        .env("FOUNDRY_NATS_USER", USER)
        .env("FOUNDRY_NATS_PASSWORD", PASSWORD)
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

/// One line on stderr starting with `error:`, a non-zero exit.
fn one_line_error(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn nats_env() -> Vec<(String, String)> {
    vec![
        ("FOUNDRY_NATS_USER".into(), USER.into()),
        ("FOUNDRY_NATS_PASSWORD".into(), PASSWORD.into()),
    ]
}

fn head(home: &Path) -> u64 {
    let out = ok(home, &["--json", "stats"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["events"].as_u64().unwrap()
}

fn perfect_eval(checkpoint: &str) -> EvalScored {
    let mut metrics = BTreeMap::new();
    for m in ["field_exact_match", "json_valid_rate"] {
        metrics.insert(
            m.to_string(),
            MetricValue {
                value: 1.0,
                ci_low: None,
                ci_high: None,
            },
        );
    }
    EvalScored {
        eval_id: "forged".into(),
        checkpoint_id: Some(checkpoint.into()),
        run_id: Some("r".into()),
        model_id: "m".into(),
        dataset_id: "d".into(),
        split: "test".into(),
        split_sha256: Sha256Digest::ZERO,
        eval_spec_sha256: Sha256Digest::ZERO,
        examples: 0,
        metrics,
        breakdown: BTreeMap::new(),
        latency_ms_mean: 0.0,
        throughput_docs_per_s: 0.0,
        code: Default::default(),
        device: Default::default(),
    }
}

fn refused(r: Result<foundry_ledger::AppendOutcome, RunnerError>) -> String {
    match r {
        Err(RunnerError::Ledger(LedgerError::Unauthorized(m))) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn over_nats_no_login_lets_anyone_append_as_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::NatsServer::start_with_user(USER, PASSWORD);
    let url = nats.url();
    let server = dir.path().join("server");
    ok(&server, &["init"]);
    let _serve = spawn(&server, &["serve", "--nats", &url], &nats_env(), "serving");
    // Reads go through a replica home (serve holds the server's ledger).
    let client = dir.path().join("client");
    let remote_head = || {
        let out = ledger_nats(&client, &url, &["--json", "stats"], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["events"].as_u64().unwrap()
    };
    let genesis = remote_head();
    assert_eq!(genesis, GENESIS);

    // Mallory has the NATS login, and keys of her own making.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = NatsOptions {
        user: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..NatsOptions::url(&url)
    };
    let evaluator = load(&server, "runner-evaluator.nk");
    let operator = load(&server, "operator.nk");
    rt.block_on(async {
        let connect = || async { opts.connect().await.unwrap() };
        // 1. A perfect EvalScored under the evaluator's name, signed by her key.
        let posing = Identity::generate(evaluator.name()).unwrap();
        let c = NatsLedgerClient::new(connect().await, posing);
        let e = refused(
            c.append(AppendRequest::new(vec![NewEvent::new(perfect_eval("c1"))]))
                .await,
        );
        assert!(e.contains("not a registered key"), "{e}");
        // 2. The same, naming the evaluator's public key but signed by her.
        let mallory = Identity::generate("mallory").unwrap();
        let mut batch = evaluator
            .sign(AppendRequest::new(vec![NewEvent::new(perfect_eval("c1"))]))
            .unwrap();
        let (message, _) = batch.message();
        batch.signature = mallory.sign_message(&message);
        let e = refused(c.append_signed(batch).await);
        assert!(e.contains("signature of the batch does not hold"), "{e}");
        // 3. An AdapterPromoted for a checkpoint that does not exist, and a
        // ChannelRolledBack, signed by a real operator key (stolen or not,
        // the role does not allow them).
        let op = NatsLedgerClient::new(connect().await, operator.clone());
        let e = refused(
            op.append(AppendRequest::new(vec![NewEvent::new(AdapterPromoted {
                checkpoint_id: "does-not-exist".into(),
                channel: "production".into(),
                previous_checkpoint_id: None,
                gates: vec![],
                evidence: vec![],
                signed_by: vec![],
                reason: "trust me".into(),
            })]))
            .await,
        );
        assert!(
            e.contains("may not append AdapterPromoted") && e.contains("role promoter"),
            "{e}"
        );
        let e = refused(
            op.append(AppendRequest::new(vec![NewEvent::new(ChannelRolledBack {
                channel: "production".into(),
                from_checkpoint_id: None,
                to_checkpoint_id: Some("x".into()),
                reason: "trust me".into(),
            })]))
            .await,
        );
        assert!(e.contains("may not append ChannelRolledBack"), "{e}");
        // 4. The operator key signing evidence.
        let e = refused(
            op.append(AppendRequest::new(vec![NewEvent::new(perfect_eval("c1"))]))
                .await,
        );
        assert!(e.contains("may not append EvalScored"), "{e}");
    });
    assert_eq!(remote_head(), genesis, "nothing was appended");

    // Through the binary: a key of her own named after the operator (what
    // `--actor alice` used to be) is refused, in one line.
    let mallory_home = dir.path().join("mallory");
    ok(&mallory_home, &["key", "new", "operator"]);
    let out = ledger_nats(
        &mallory_home,
        &url,
        &[
            "--key",
            "operator",
            "channel",
            "policy",
            "production",
            "--requesters",
            "operator",
        ],
        &[],
    );
    let e = one_line_error(&out);
    assert!(e.contains("not a registered key"), "{e}");
    // The real operator's key may not set channel policies either.
    let op_key = key(&server, "operator.nk");
    let op_key = op_key.to_str().unwrap();
    let out = ledger_nats(
        &client,
        &url,
        &[
            "--key",
            op_key,
            "channel",
            "policy",
            "production",
            "--requesters",
            "operator",
        ],
        &[],
    );
    let e = one_line_error(&out);
    assert!(e.contains("may not append ChannelPolicySet"), "{e}");
    assert_eq!(remote_head(), genesis, "nothing was appended");

    // The admin pins production's policy: only `root` may roll it back.
    let root_key = key(&server, "root.nk");
    let out = ledger_nats(
        &client,
        &url,
        &[
            "--key",
            root_key.to_str().unwrap(),
            "channel",
            "policy",
            "production",
            "--rollbackers",
            "root",
            "--gate",
            "field_exact_match >= 0.9",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A promoter on the bus decides rollbacks under that policy.
    let promoter_key = key(&server, "runner-promoter.nk");
    let _promoter = spawn(
        &dir.path().join("promoter"),
        &[
            "runner",
            "--nats",
            &url,
            "--only",
            "promoter",
            "--key",
            promoter_key.to_str().unwrap(),
        ],
        &nats_env(),
        "running promoter",
    );
    let out = ledger_nats(
        &client,
        &url,
        &["--key", op_key, "rollback", "production"],
        &[("FOUNDRY_WAIT_S", "60")],
    );
    let e = one_line_error(&out);
    assert!(
        e.contains("rollback of production refused")
            && e.contains("operator may not roll back production"),
        "{e}"
    );
    // Recorded: the request and its refusal, signed by who made them; the
    // channel serves nothing it did not serve before.
    let out = ledger_nats(
        &client,
        &url,
        &["--json", "log", "--stream", "channel/production"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let types: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            format!(
                "{} by {}",
                v["type"].as_str().unwrap(),
                v["actor"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(types.len(), 3, "{types:?}");
    assert_eq!(types[0], "ChannelPolicySet by root");
    assert_eq!(types[1], "RollbackRequested by operator");
    assert!(
        types[2].starts_with("RollbackRejected by runner:promoter@"),
        "{types:?}"
    );
    // The replica checked every signature it copied.
    let out = ledger_nats(&client, &url, &["verify"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

/// Appends to an export file a record that continues its chain, signed by
/// `signer` (as the attacker could), and rewrites the file's digest.
fn forge_into_export(file: &Path, signer: &Identity, event: Event) {
    let mut reader =
        foundry_ledger::ExportReader::new(std::fs::File::open(file).unwrap(), None).unwrap();
    let mut records: Vec<RecordedEvent> = Vec::new();
    while let Some((r, _)) = reader.next_record().unwrap() {
        records.push(r);
    }
    let last = records.last().unwrap().clone();
    let mut batch = signer
        .sign(AppendRequest::new(vec![NewEvent::new(event)]))
        .unwrap();
    let (message, _) = batch.message();
    batch.signature = signer.sign_message(&message);
    let statement = batch.statements.remove(0);
    let forged = RecordedEvent {
        seq: last.seq + 1,
        stream_version: 1,
        recorded_at: Timestamp(last.recorded_at.0 + 1),
        batch_index: 0,
        batch_len: 1,
        seal: Some(foundry_events::Seal {
            conditions: Sha256Digest::ZERO,
            signature: batch.signature,
        }),
        statement,
        prev_hash: last.hash,
        hash: Sha256Digest::ZERO,
    }
    .with_hash()
    .unwrap();
    records.push(forged.clone());
    let n = records.len() as u64;
    let bytes: Vec<foundry_ledger::Result<(u64, Vec<u8>)>> = records
        .iter()
        .map(|r| Ok((r.seq, r.encode().unwrap())))
        .collect();
    foundry_ledger::write_export(file, "2026-12-02T00:00:00Z", n, forged.hash, bytes).unwrap();
}

#[test]
fn an_edited_export_and_a_history_forged_under_another_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    ok(&real, &["init"]);
    let root = ok(
        &real,
        &[
            "--json",
            "whoami",
            "--key",
            key(&real, "root.nk").to_str().unwrap(),
        ],
    );
    let root: serde_json::Value = serde_json::from_str(&root).unwrap();
    let root = root["public_key"].as_str().unwrap().to_string();
    let file = dir.path().join("real.export");
    let file_s = file.to_str().unwrap();
    ok(&real, &["export", file_s]);

    // A forged EvalScored with the chain and the file digest recomputed,
    // signed by the operator's key (which has no evaluator role) or by a
    // key of the attacker's own: refused at the forged seq.
    let seq = GENESIS + 1;
    for signer in [
        load(&real, "operator.nk"),
        Identity::generate("runner:evaluator@vm").unwrap(),
    ] {
        ok(&real, &["export", file_s]);
        forge_into_export(&file, &signer, Event::EvalScored(perfect_eval("c1")));
        let target = dir.path().join(format!("copy-{}", signer.public_key()));
        let e = fails(&target, &["import", file_s]);
        assert!(e.contains(&format!("seq {seq}: unauthorized")), "{e}");
        assert!(
            e.contains("may not append EvalScored") || e.contains("not a registered key"),
            "{e}"
        );
        assert!(!target.join("ledger").exists() || head(&target) == 0);
    }

    ok(&real, &["export", file_s]);

    // A whole history forged from scratch under its own root: it verifies
    // on its own, and is refused once the auditor names the real root.
    let forged = dir.path().join("forged");
    ok(&forged, &["init"]);
    let forged_file = dir.path().join("forged.export");
    ok(&forged, &["export", forged_file.to_str().unwrap()]);
    let out = ok(
        &dir.path().join("a"),
        &["import", forged_file.to_str().unwrap()],
    );
    assert!(out.contains("not checked: pass --trust-root"), "{out}");
    let e = fails(
        &dir.path().join("b"),
        &[
            "import",
            forged_file.to_str().unwrap(),
            "--trust-root",
            &root,
        ],
    );
    assert!(
        e.contains("seq 1:") && e.contains("not the trusted root"),
        "{e}"
    );
    // The real history passes with its root named.
    let out = ok(
        &dir.path().join("c"),
        &["import", file_s, "--trust-root", &root],
    );
    assert!(out.contains("(the trusted root)"), "{out}");
    // verify takes the same root.
    let e = fails(&forged, &["verify", "--trust-root", &root]);
    assert!(e.contains("not the trusted root"), "{e}");
    assert!(ok(&real, &["verify", "--trust-root", &root]).contains("the trusted root"));
}

#[test]
fn keys_are_made_registered_revoked_and_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    ok(&home, &["init"]);
    let root = key(&home, "root.nk");
    let root = root.to_str().unwrap();
    // bob makes a key elsewhere; the admin registers its public key.
    let bob_home = dir.path().join("bob");
    let made: serde_json::Value =
        serde_json::from_str(&ok(&bob_home, &["--json", "key", "new", "bob"])).unwrap();
    let bob_pub = made["public_key"].as_str().unwrap().to_string();
    let bob_file = PathBuf::from(made["file"].as_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&bob_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let bob = bob_file.to_str().unwrap();
    // Only an admin registers keys.
    let e = fails(
        &home,
        &[
            "key",
            "register",
            "bob",
            "--public-key",
            &bob_pub,
            "--roles",
            "operator",
        ],
    );
    assert!(e.contains("may not append KeyRegistered"), "{e}");
    ok(
        &home,
        &[
            "--key",
            root,
            "key",
            "register",
            "bob",
            "--public-key",
            &bob_pub,
            "--roles",
            "operator",
        ],
    );
    let me = ok(&home, &["--key", bob, "whoami"]);
    assert!(me.contains("roles operator"), "{me}");
    let cfg = common::repo("recipes/tiny-cpu.toml");
    let declared = ok(
        &home,
        &["--key", bob, "recipe", "declare", cfg.to_str().unwrap()],
    );
    assert!(!declared.is_empty());
    let revoked = ok(
        &home,
        &["--key", root, "key", "revoke", "bob", "--reason", "left"],
    );
    assert!(revoked.contains("revoked bob"), "{revoked}");
    let before = head(&home);
    let e = fails(
        &home,
        &[
            "--key",
            bob,
            "recipe",
            "declare",
            common::repo("recipes/demo-cpu.toml").to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("\"bob\"") && e.contains("was revoked at seq"),
        "{e}"
    );
    assert_eq!(head(&home), before);
    // His earlier events stay valid.
    assert!(ok(&home, &["verify"]).starts_with("ok: "));
    let list = ok(&home, &["key", "list"]);
    assert!(list.contains("revoked at seq"), "{list}");
    // A key file others can read is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bob_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = fails(&home, &["--key", bob, "whoami"]);
        assert!(e.contains("readable by others"), "{e}");
    }
}
