//! Helpers shared by the end-to-end tests: run the real `ledger` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Path of the `ledger` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ledger")
}

/// Runs `ledger --home HOME args…` and returns its output.
pub fn ledger(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("FOUNDRY_HOME")
        .env("FOUNDRY_ACTOR", "tester")
        .output()
        .expect("run ledger")
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
