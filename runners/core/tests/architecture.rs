//! The layering ARCHITECTURE.md promises, checked on the real dependency
//! graph (`cargo metadata`): the runner framework depends on engine
//! interfaces, not on ML crates; the ledger knows nothing about ML; the
//! event catalog is pure data with no I/O.

use std::collections::{BTreeSet, HashMap};

/// The output of `cargo ARGS…` in this workspace, for the build target.
fn cargo(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The normal (non-dev, non-build) dependency closure of every package, by name.
fn closures() -> HashMap<String, BTreeSet<String>> {
    let out = cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        env!("FOUNDRY_BUILD_TARGET"),
    ]);
    let meta: serde_json::Value = serde_json::from_slice(&out).expect("metadata JSON");
    let name_of: HashMap<String, String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let id = node["id"].as_str().unwrap_or_default().to_string();
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null())
            })
            .filter_map(|d| d["pkg"].as_str().map(str::to_string))
            .collect();
        edges.insert(id, deps);
    }
    let mut out = HashMap::new();
    for (id, name) in &name_of {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id.clone()];
        while let Some(n) = todo.pop() {
            for d in edges.get(&n).into_iter().flatten() {
                if seen.insert(name_of[d].clone()) {
                    todo.push(d.clone());
                }
            }
        }
        out.insert(name.clone(), seen);
    }
    out
}

fn assert_free_of(all: &HashMap<String, BTreeSet<String>>, krate: &str, banned: &[&str]) {
    let deps = all
        .get(krate)
        .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
    let found: Vec<&&str> = banned.iter().filter(|b| deps.contains(**b)).collect();
    assert!(found.is_empty(), "{krate} depends on {found:?}");
}

const ML: &[&str] = &[
    "candle-core",
    "candle-nn",
    "candle-transformers",
    "tokenizers",
    "image",
    "foundry-idefics2",
    "foundry-qlora",
    "foundry-engine",
    "foundry-eval",
];

#[test]
fn the_layers_hold_on_the_real_dependency_graph() {
    let all = closures();
    assert_free_of(&all, "foundry-runner", ML);
    assert_free_of(&all, "foundry-ledger", ML);
    assert_free_of(&all, "foundry-bus", ML);
    assert_free_of(
        &all,
        "foundry-events",
        &[
            "sled",
            "tokio",
            "async-nats",
            "foundry-ledger",
            "candle-core",
        ],
    );
    // The check sees real edges: the engine does depend on the model.
    assert!(all["foundry-engine"].contains("foundry-idefics2"));
    assert!(all["foundry-runner"].contains("foundry-ledger"));
}

/// Test fixtures (the runner test kit, synthetic histories) are features
/// that only dev-dependencies turn on: the `ledger` binary is built without
/// them.
#[test]
fn the_ledger_binary_is_built_without_test_fixtures() {
    let out = cargo(&[
        "tree",
        "-p",
        "foundry-cli",
        "-e",
        "normal,features",
        "--target",
        env!("FOUNDRY_BUILD_TARGET"),
    ]);
    let tree = String::from_utf8_lossy(&out);
    // The check sees features: the runner crate is there with its default.
    assert!(
        tree.contains("foundry-runner feature \"default\""),
        "{tree}"
    );
    let fixtures: Vec<&str> = tree
        .lines()
        .filter(|l| l.contains("feature \"testkit\""))
        .collect();
    assert!(fixtures.is_empty(), "{fixtures:?}");
}
