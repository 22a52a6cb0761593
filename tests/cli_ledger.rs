//! End-to-end tests of the ledger core commands on the real binary.

use crate::common;
use common::{fails, ledger, ok};
use foundry_events::{
    Event, RecordedEvent, Role, RunCancelled, Seal, Sha256Digest, Signature, Statement, Timestamp,
};
use sha2::{Digest, Sha256};
use std::process::{Command, Stdio};

#[test]
fn init_append_log_verify_stats() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    assert!(ok(&home, &["init"]).contains("initialized"));
    let out = ok(
        &home,
        &[
            "bench",
            "append",
            "--events",
            "250",
            "--batch",
            "50",
            "--in-home",
        ],
    );
    assert!(out.trim_end().lines().last().unwrap().ends_with("events/s"));
    let log = ok(&home, &["log", "--from", "10", "--limit", "3"]);
    assert!(
        log.contains("MetricsLogged") && log.contains("│ 10 "),
        "{log}"
    );
    assert!(!log.contains("│ 13 "), "{log}");
    let json = ok(
        &home,
        &["log", "--type", "MetricsLogged", "--limit", "2", "--json"],
    );
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "MetricsLogged");
    // Signed by the home's trainer key, which the genesis registered.
    assert!(
        lines[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("runner:trainer@")),
        "{}",
        lines[0]
    );
    assert!(lines[0]["signer"]
        .as_str()
        .is_some_and(|s| s.starts_with('U')));
    // The genesis holds the six keys `init` made.
    assert_eq!(lines[1]["seq"], 8);
    let stream = ok(&home, &["log", "--stream", "run/bench-3", "--json"]);
    assert_eq!(stream.lines().count(), 16);
    let verify = ok(&home, &["verify"]);
    assert!(
        verify.starts_with("ok: 256 events and 6 signed batches verified"),
        "{verify}"
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&home, &["stats", "--json"])).unwrap();
    assert_eq!(stats["events"], 256);
    assert_eq!(stats["events_by_type"]["MetricsLogged"], 250);
    assert_eq!(stats["events_by_type"]["KeyRegistered"], 6);
    assert_eq!(stats["streams"], 16 + 6);
}

#[test]
fn global_options_may_follow_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let out = Command::new(common::bin())
        .args(["init", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(home.join("ledger").is_dir());
}

#[test]
fn export_import_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&a, &["init"]);
    ok(
        &a,
        &[
            "bench",
            "append",
            "--events",
            "120",
            "--batch",
            "7",
            "--in-home",
        ],
    );
    let file = dir.path().join("ledger.export");
    let file_s = file.to_str().unwrap();
    assert!(ok(&a, &["export", file_s]).starts_with("exported 126 events"));
    assert!(ok(&b, &["import", file_s]).starts_with("imported 126 events"));
    assert!(ok(&b, &["verify"]).starts_with("ok: 126 events"));
    let err = fails(&b, &["import", file_s]);
    assert!(err.contains("already holds 126 events"), "{err}");
    // A flipped byte in the middle is refused, naming a seq, and writes nothing.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let c = dir.path().join("c");
    let err = fails(&c, &["import", file_s]);
    assert!(err.contains("import refused: seq "), "{err}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&c, &["stats", "--json"])).unwrap();
    assert_eq!(stats["events"], 0);
}

#[test]
fn missing_home_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nope");
    for args in [&["log"][..], &["verify"], &["stats"], &["export", "x.bin"]] {
        let err = fails(&home, args);
        assert!(err.contains("does not exist"), "{err}");
    }
    assert!(!home.exists());
    let err = fails(&home, &["import", "/no/such/file"]);
    assert!(err.contains("no such file"), "{err}");
    assert!(!home.exists());
}

#[test]
fn unknown_type_filter_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["init"]);
    let err = fails(dir.path(), &["log", "--type", "RunExploded"]);
    assert!(err.contains("unknown event type \"RunExploded\""), "{err}");
}

#[test]
fn a_second_process_on_the_same_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    ok(&home, &["init"]);
    let mut holder = Command::new(common::bin())
        .arg("--home")
        .arg(&home)
        .args([
            "bench",
            "append",
            "--events",
            "100000000",
            "--batch",
            "1",
            "--in-home",
            "--print-acks",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it holds the lock and has appended.
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("ack "), "{line}");
    let err = fails(&home, &["stats"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(err.contains("in use by another process"), "{err}");
    // After the holder is gone, the ledger opens and verifies.
    assert!(ok(&home, &["verify"]).starts_with("ok: "));
}

/// Writes an export file by hand (used to forge unknown and newer events).
fn write_export(path: &std::path::Path, records: &[RecordedEvent]) {
    let mut body = foundry_ledger::EXPORT_MAGIC.to_vec();
    let head = records.last().map(|r| r.hash).unwrap_or(Sha256Digest::ZERO);
    let header = serde_json::json!({
        "format": "foundry-ledger-export", "format_version": 2, "schema_version": 2,
        "record_encoding": "msgpack", "hash_rule": "sha256", "events": records.len(),
        "head_hash": head, "exported_at": "2026-11-29T00:00:00Z", "foundry_version": "test",
    });
    body.extend_from_slice(header.to_string().as_bytes());
    body.push(b'\n');
    for r in records {
        let bytes = r.encode().unwrap();
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(&bytes);
    }
    body.extend_from_slice(&0u32.to_le_bytes());
    let digest: [u8; 32] = Sha256::digest(&body).into();
    body.extend_from_slice(&digest);
    std::fs::write(path, body).unwrap();
}

/// A ledger's first record: its root's self-registration.
fn genesis() -> RecordedEvent {
    let dir = tempfile::tempdir().unwrap();
    let l = foundry_ledger::Home::at(dir.path()).init().unwrap();
    let root = foundry_ledger::Identity::generate("root").unwrap();
    l.init_genesis(&root, Role::ALL, &[]).unwrap();
    l.get(1).unwrap().unwrap()
}

/// A record that continues the chain from `prev`, with any type name and
/// schema version (what only a forger would write).
fn forged(seq: u64, prev: Sha256Digest, ty: &str, schema: u16) -> RecordedEvent {
    let e = Event::RunCancelled(RunCancelled {
        run_id: "r".into(),
        reason: "x".into(),
    });
    RecordedEvent {
        seq,
        stream_version: 1,
        recorded_at: Timestamp(1_800_000_000_000_000_000),
        batch_index: 0,
        batch_len: 1,
        seal: Some(Seal {
            conditions: Sha256Digest::ZERO,
            signature: Signature([0; 64]),
        }),
        statement: Statement {
            stream: "run/r".into(),
            event_id: uuid::Uuid::from_u128(seq as u128),
            event_type: ty.into(),
            schema_version: schema,
            actor: "forger".into(),
            causation_id: None,
            correlation_id: None,
            idempotency_key: None,
            payload: e.encode_payload().unwrap(),
            signer: "UFORGER".into(),
        },
        prev_hash: prev,
        hash: Sha256Digest::ZERO,
    }
    .with_hash()
    .unwrap()
}

#[test]
fn unknown_type_or_newer_schema_in_an_import_is_refused_naming_the_seq() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.export");
    let r1 = genesis();
    for (ty, schema, want) in [
        (
            "RunExploded",
            2,
            "seq 2: undecodable record (unknown event type \"RunExploded\"",
        ),
        (
            "RunCancelled",
            3,
            "seq 2: undecodable record (RunCancelled has schema version 3",
        ),
        // Well-formed, but signed by nobody the ledger knows.
        (
            "RunCancelled",
            2,
            "seq 2: unauthorized (signer UFORGER is not a registered key",
        ),
    ] {
        let r2 = forged(2, r1.hash, ty, schema);
        write_export(&file, &[r1.clone(), r2]);
        let home = dir.path().join(format!("h-{ty}-{schema}"));
        let err = fails(&home, &["import", file.to_str().unwrap()]);
        assert!(err.contains(want), "{err}");
        let out = ledger(&home, &["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stats["events"], 0, "nothing written");
    }
    // The well-formed file imports.
    write_export(&file, &[r1]);
    ok(
        &dir.path().join("good"),
        &["import", file.to_str().unwrap()],
    );
}

/// A closed stdout (`ledger … | head`) ends the command quietly, the way it
/// ends other Unix tools, after the work is done: no panic, files written.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_command_quietly_after_its_work() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cards");
    let mut child = Command::new(common::bin())
        .arg("--home")
        .arg(dir.path().join("h"))
        .args(["synth", "--count", "2", "--profile", "tiny", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the summary table is printed.
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Ended by SIGPIPE (13), not by a panic's exit code.
    assert_eq!(done.status.signal(), Some(13), "{stderr}");
    let shards = std::fs::read_dir(out.join("data")).unwrap().count();
    assert!(shards >= 1);
}
