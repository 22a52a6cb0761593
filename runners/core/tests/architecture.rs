//! The layering ARCHITECTURE.md promises, checked on the real dependency
//! graph (`cargo metadata`): the runner framework depends on engine
//! interfaces, not on ML crates; the ledger knows nothing about ML; the
//! event catalog is pure data with no I/O; the kernels know no model and the
//! model no trainer. And inside every crate, no two modules import each other
//! (directly or around a circle).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
    // Below the model: kernels know no model, image or hub code (candle-core itself pulls in
    // tokenizers, so that one is not checked).
    assert_free_of(
        &all,
        "foundry-kernels",
        &[
            "foundry-idefics2",
            "foundry-qlora",
            "foundry-eval",
            "foundry-engine",
            "image",
            "hf-hub",
        ],
    );
    // The model knows no trainer, evaluator, ledger or runner.
    assert_free_of(
        &all,
        "foundry-idefics2",
        &[
            "foundry-qlora",
            "foundry-eval",
            "foundry-engine",
            "foundry-ledger",
            "foundry-runner",
        ],
    );
    // QLoRA and the eval harness are ML libraries: no ledger, bus or runner.
    for ml in ["foundry-qlora", "foundry-eval"] {
        assert_free_of(
            &all,
            ml,
            &[
                "foundry-ledger",
                "foundry-runner",
                "foundry-bus",
                "async-nats",
                "sled",
            ],
        );
    }
    // The check sees real edges: the engine does depend on the model, the model on the kernels.
    assert!(all["foundry-engine"].contains("foundry-idefics2"));
    assert!(all["foundry-idefics2"].contains("foundry-kernels"));
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

/// The `src` folder of every workspace member.
fn member_sources() -> Vec<(String, PathBuf)> {
    let out = cargo(&["metadata", "--format-version", "1", "--no-deps"]);
    let meta: serde_json::Value = serde_json::from_slice(&out).expect("metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str()?);
            let src = manifest.parent()?.join("src");
            Some((p["name"].as_str()?.to_string(), src))
        })
        .filter(|(_, src)| src.is_dir())
        .collect()
}

/// Every `.rs` file under `dir`, with its module path (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `a::b`; `lib.rs` and `main.rs` are the root).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if !(matches!(name.as_str(), "mod")
                || prefix.is_empty() && matches!(name.as_str(), "lib" | "main"))
            {
                p.push(name);
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.entry(p).or_default().push_str(&text);
        }
    }
}

/// `text` without `//` comments (doc links name modules without importing them).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths the `crate::…` and `super::…` references of module `module` name:
/// `crate::a::b::C` is `[a, b, C]`, a group `crate::{a::{b, c}, d}` names `[a, b]`, `[a, c]`
/// and `[d]`, and `super::x` in `a::b` is `[a, x]`.
fn crate_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    fn parse(chars: &[char], mut i: usize, base: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut path = base.clone();
        loop {
            if chars.get(i) == Some(&'{') {
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    if i >= chars.len() || chars[i] == '}' {
                        return i + 1;
                    }
                    let before = i;
                    i = parse(chars, i, path.clone(), out);
                    if i == before {
                        i += 1;
                    }
                }
            }
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if i > start {
                path.push(chars[start..i].iter().collect());
            }
            if i > start && chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
                continue;
            }
            out.push(path);
            return i;
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    let roots: [(&str, Vec<String>); 2] = [("crate::", Vec::new()), ("super::", parent)];
    let mut out = Vec::new();
    let mut i = 0;
    'scan: while i < chars.len() {
        let at_word_start = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if at_word_start {
            for (token, base) in &roots {
                let n = token.len();
                if i + n <= chars.len() && chars[i..i + n].iter().collect::<String>() == *token {
                    i = parse(&chars, i + n, base.clone(), &mut out);
                    continue 'scan;
                }
            }
        }
        i += 1;
    }
    out
}

/// A module circle in one crate, if any: each module's imports resolved to the longest module
/// path they name; a module's own ancestors and descendants do not count (a child uses its
/// parent's items, a parent declares its children).
fn module_circle(src: &Path) -> Option<Vec<String>> {
    let mut files = BTreeMap::new();
    modules(src, &[], &mut files);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &files {
        for path in crate_paths(&without_comments(text), module) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p));
            if let Some(t) = target.filter(|t| !related(module, t)) {
                edges.entry(module.clone()).or_default().insert(t);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, bool>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(m.clone(), false);
        stack.push(m.clone());
        for t in edges.get(m).into_iter().flatten() {
            match state.get(t) {
                Some(false) => {
                    let from = stack.iter().position(|s| s == t).unwrap_or(0);
                    let mut circle: Vec<String> =
                        stack[from..].iter().map(|s| s.join("::")).collect();
                    circle.push(t.join("::"));
                    return Some(circle);
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(t, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.clone(), true);
        None
    }
    let mut state = BTreeMap::new();
    for m in files.keys() {
        if !state.contains_key(m) {
            if let Some(c) = visit(m, &edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    let mut checked = 0;
    for (name, src) in member_sources() {
        checked += 1;
        if let Some(c) = module_circle(&src) {
            circles.push(format!("{name}: {}", c.join(" -> ")));
        }
    }
    assert!(checked >= 10, "only {checked} crates found");
    assert!(circles.is_empty(), "{circles:#?}");
}

#[test]
fn the_circle_check_finds_a_circle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("cmd")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod cmd;").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::{b::{Thing, Other}, cmd};").expect("write");
    std::fs::write(
        src.join("b.rs"),
        "// crate::a is only named here\npub struct Thing;",
    )
    .expect("write");
    std::fs::write(
        src.join("cmd/mod.rs"),
        "pub mod show; pub mod runs; use crate::cmd::show::x;",
    )
    .expect("write");
    std::fs::write(
        src.join("cmd/show.rs"),
        "fn f() { crate::cmd::runs::wall_ms(); super::y(); }",
    )
    .expect("write");
    std::fs::write(src.join("cmd/runs.rs"), "pub fn wall_ms() {}").expect("write");
    assert_eq!(
        module_circle(src),
        None,
        "a comment and a parent are not imports"
    );
    std::fs::write(
        src.join("cmd/runs.rs"),
        "use crate::cmd::show; pub fn wall_ms() {}",
    )
    .expect("write");
    assert_eq!(
        module_circle(src),
        Some(vec![
            "cmd::runs".into(),
            "cmd::show".into(),
            "cmd::runs".into()
        ])
    );
    std::fs::write(src.join("cmd/runs.rs"), "fn g() { super::show::x(); }").expect("write");
    assert!(module_circle(src).is_some(), "super:: imports count");
    std::fs::write(src.join("cmd/runs.rs"), "pub fn wall_ms() {}").expect("write");
    std::fs::write(src.join("b.rs"), "pub struct Thing(crate::a::X);").expect("write");
    assert_eq!(
        module_circle(src),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
