//! Records which code a build is: the git commit of the tree it was built
//! from, and whether that tree had uncommitted changes. `code_version()`
//! puts both on every RunStarted and EvalScored. A build outside a git
//! checkout (a crates tarball) records neither.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    // Tracked files that differ from HEAD (untracked files are not code).
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    println!("cargo:rustc-env=FOUNDRY_GIT_COMMIT={commit}");
    // The target the tests inspect the dependency graph for.
    println!(
        "cargo:rustc-env=FOUNDRY_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=FOUNDRY_GIT_DIRTY={}",
        if dirty { "1" } else { "0" }
    );
    // Rerun when the commit or the index moves, or any source changes (so
    // the dirty flag is never stale).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "index", "logs/HEAD"] {
            let p = Path::new(&dir).join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    if let Some(top) = git(&["rev-parse", "--show-toplevel"]) {
        for d in [
            "Cargo.toml",
            "Cargo.lock",
            "events",
            "ledger",
            "projections",
            "recipes",
            "runners",
            "tools",
            "vendor",
        ] {
            let p = Path::new(&top).join(d);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
