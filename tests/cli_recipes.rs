//! End-to-end tests of `ledger recipe`, `ledger dataset`, `ledger model` and
//! `ledger synth` on the real binary.

use crate::common;
use common::{bin, fails, ok};
use foundry_ledger::Home;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn init() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    ok(home.path(), &["init"]);
    home
}

/// Events in the ledger (opened and closed again).
/// Events recorded after the home's genesis.
fn events(home: &Path) -> u64 {
    Home::at(home.to_path_buf())
        .open_ledger()
        .unwrap()
        .head()
        .seq
        - common::GENESIS
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A small tiny-profile dataset written by `ledger synth`.
fn synth(home: &Path, out: &Path, seed: &str) {
    let s = ok(
        home,
        &[
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--count",
            "10",
            "--seed",
            seed,
            "--profile",
            "tiny",
        ],
    );
    assert!(s.starts_with("wrote 10 documents to "), "{s}");
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn recipe_declare_is_idempotent_and_show_accepts_a_prefix() {
    let home = init();
    let file = repo("recipes/tiny-cpu.toml");
    let f = file.to_str().unwrap();
    let id = first_line(&ok(home.path(), &["recipe", "declare", f]));
    assert!(is_id(&id), "{id}");
    assert_eq!(events(home.path()), 1);
    assert_eq!(first_line(&ok(home.path(), &["recipe", "declare", f])), id);
    assert_eq!(events(home.path()), 1, "declaring twice appends nothing");
    let shown = ok(home.path(), &["recipe", "show", &id[..10]]);
    assert!(
        shown.starts_with(&format!("recipe {id} (as of seq 7 (head))")),
        "{shown}"
    );
    assert!(shown.contains("tiny-cpu"), "{shown}");
    let js: serde_json::Value =
        serde_json::from_str(&ok(home.path(), &["--json", "recipe", "declare", f])).unwrap();
    assert_eq!(js["recipe_id"], id.as_str());
    assert_eq!(js["duplicate"], true);
    // An env override is a different resolved config, hence a new recipe.
    let out = Command::new(bin())
        .args([
            "--home",
            home.path().to_str().unwrap(),
            "recipe",
            "declare",
            f,
        ])
        .env("FOUNDRY_TRAINING_LR", "0.0005")
        .env("FOUNDRY_ACTOR", "tester")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = first_line(&String::from_utf8_lossy(&out.stdout));
    assert!(is_id(&other) && other != id);
    assert_eq!(events(home.path()), 2);
}

#[test]
fn recipe_bad_inputs_fail_with_one_line() {
    let home = init();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_eq!(
        fails(
            home.path(),
            &["recipe", "declare", missing.to_str().unwrap()]
        ),
        format!(
            "error: {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let text = std::fs::read_to_string(repo("recipes/tiny-cpu.toml")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("lr = 1e-3", "lr = -1.0")).unwrap();
    let e = fails(home.path(), &["recipe", "declare", bad.to_str().unwrap()]);
    assert!(
        e.starts_with(&format!("error: {}: training.lr: ", bad.display())),
        "{e}"
    );
    std::fs::write(&bad, text.replace("[lora]", "[lora]\nrank = 4")).unwrap();
    let e = fails(home.path(), &["recipe", "declare", bad.to_str().unwrap()]);
    assert!(
        e.starts_with(&format!("error: {}: lora.rank: ", bad.display())),
        "{e}"
    );
    assert_eq!(events(home.path()), 0, "nothing recorded");
    let e = fails(home.path(), &["recipe", "show", "abc"]);
    assert!(e.starts_with("error: no recipe"), "{e}");
}

#[test]
fn dataset_pin_is_idempotent_content_addressed_and_rejects_bad_rows() {
    let home = init();
    let d = tempfile::tempdir().unwrap();
    synth(home.path(), d.path(), "1");
    let src = d.path().to_str().unwrap();
    let out = ok(home.path(), &["dataset", "pin", src]);
    let id = first_line(&out);
    assert!(is_id(&id), "{out}");
    assert!(out.contains("train") && out.contains("invoice"), "{out}");
    assert_eq!(first_line(&ok(home.path(), &["dataset", "pin", src])), id);
    assert_eq!(events(home.path()), 1);
    let shown = ok(home.path(), &["dataset", "show", &id[..12]]);
    assert!(shown.starts_with(&format!("dataset {id} ")), "{shown}");
    assert!(shown.contains("data/train-00000-of-00001.jsonl"), "{shown}");
    let js: serde_json::Value =
        serde_json::from_str(&ok(home.path(), &["--json", "dataset", "pin", src])).unwrap();
    let train = js["splits"]["train"]["rows"].as_u64().unwrap();
    let total: u64 = ["train", "validation", "test"]
        .iter()
        .map(|s| js["splits"][s]["rows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 10);
    assert!(train > 0);
    // Another (valid) image in place of one changes the id.
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(d.path().join("data/images/train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    imgs.sort();
    assert!(imgs.len() >= 2);
    std::fs::copy(&imgs[1], &imgs[0]).unwrap();
    let id2 = first_line(&ok(home.path(), &["dataset", "pin", src]));
    assert!(is_id(&id2) && id2 != id);
    assert_eq!(events(home.path()), 2);
    // A bad row: its shard, row and reason; nothing recorded.
    let shard = d.path().join("data/train-00000-of-00001.jsonl");
    let text = std::fs::read_to_string(&shard).unwrap();
    let broken = text.replacen("\"total\"", "\"sum\"", 1);
    std::fs::write(&shard, broken).unwrap();
    assert_eq!(
        fails(home.path(), &["dataset", "pin", src]),
        "error: shard data/train-00000-of-00001.jsonl, row 1: target of invoice lacks field \"total\""
    );
    assert_eq!(events(home.path()), 2);
    let e = fails(home.path(), &["dataset", "pin", "hf://org-only@main"]);
    assert_eq!(
        e,
        "error: \"hf://org-only@main\" is not hf://ORG/NAME@REVISION"
    );
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        fails(home.path(), &["dataset", "pin", empty.path().to_str().unwrap()]),
        format!(
            "error: {}: no shards (expected files like data/train-00000-of-00001.jsonl or .parquet)",
            empty.path().display()
        )
    );
}

/// The hub cache layout: datasets--ORG--NAME/{refs/main, blobs/<sha>, snapshots/<commit>/…}.
fn hub_fixture(cache: &Path, files_from: &Path, commit: &str) {
    let repo = cache.join("datasets--org--fin");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (rel, bytes) in files(files_from) {
        let blob = repo
            .join("blobs")
            .join(format!("{:x}", sha2::Sha256::digest(&bytes)));
        std::fs::write(&blob, &bytes).unwrap();
        let link = repo.join("snapshots").join(commit).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
}

#[test]
fn hf_dataset_pins_offline_from_the_cache_with_the_same_id() {
    let home = init();
    let d = tempfile::tempdir().unwrap();
    let out = ok(
        home.path(),
        &[
            "synth",
            "--out",
            d.path().to_str().unwrap(),
            "--count",
            "8",
            "--seed",
            "4",
            "--profile",
            "tiny",
            "--format",
            "parquet",
        ],
    );
    assert!(out.starts_with("wrote 8 documents"), "{out}");
    let local = first_line(&ok(
        home.path(),
        &["dataset", "pin", d.path().to_str().unwrap()],
    ));
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    hub_fixture(cache.path(), d.path(), commit);
    let c = cache.path().to_str().unwrap();
    let js: serde_json::Value = serde_json::from_str(&ok(
        home.path(),
        &[
            "--json",
            "dataset",
            "pin",
            "hf://org/fin@main",
            "--hf-cache",
            c,
            "--offline",
        ],
    ))
    .unwrap();
    assert_eq!(js["dataset_id"], local.as_str());
    assert_eq!(js["resolved_revision"], commit);
    assert_eq!(
        js["duplicate"], true,
        "same content, same id: already pinned"
    );
    let e = fails(
        home.path(),
        &[
            "dataset",
            "pin",
            "hf://org/fin@v2",
            "--hf-cache",
            c,
            "--offline",
        ],
    );
    assert!(e.starts_with("error: hf://org/fin@v2: "), "{e}");
}

#[test]
fn model_pin_and_show() {
    let home = init();
    let m = repo("ml/idefics2/fixtures/tiny");
    let out = ok(home.path(), &["model", "pin", m.to_str().unwrap()]);
    let id = first_line(&out);
    assert!(is_id(&id), "{out}");
    assert!(out.contains("Idefics2ForConditionalGeneration"), "{out}");
    assert_eq!(
        first_line(&ok(home.path(), &["model", "pin", m.to_str().unwrap()])),
        id
    );
    assert_eq!(events(home.path()), 1);
    let shown = ok(home.path(), &["model", "show", &id[..8]]);
    assert!(shown.starts_with(&format!("model {id} ")), "{shown}");
    assert!(
        shown.contains("model.safetensors") && shown.contains("config.json"),
        "{shown}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        fails(
            home.path(),
            &["model", "pin", empty.path().to_str().unwrap()]
        ),
        format!(
            "error: {}: \"config.json\" not found",
            empty.path().display()
        )
    );
    assert_eq!(events(home.path()), 1);
}

#[test]
fn synth_is_deterministic_and_rejects_bad_options() {
    let home = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synth(home.path(), a.path(), "9");
    synth(home.path(), b.path(), "9");
    synth(home.path(), c.path(), "10");
    let fa = files(a.path());
    assert_eq!(
        fa.len(),
        10 + files(a.path())
            .iter()
            .filter(|(p, _)| !p.starts_with("data/images"))
            .count()
    );
    assert_eq!(fa, files(b.path()));
    assert_ne!(fa, files(c.path()));
    let out = a.path().to_str().unwrap();
    assert_eq!(
        fails(home.path(), &["synth", "--out", out, "--count", "1", "--types", "memo"]),
        "error: unknown document type \"memo\" (known: invoice, receipt, bank_statement, purchase_order)"
    );
    assert_eq!(
        fails(
            home.path(),
            &[
                "synth",
                "--out",
                out,
                "--count",
                "1",
                "--profile",
                "tiny",
                "--layouts",
                "receipt-a"
            ]
        ),
        "error: layouts: none of receipt-a belongs to the selected types (invoice)"
    );
    assert_eq!(
        fails(
            home.path(),
            &["synth", "--out", out, "--count", "1", "--format", "csv"]
        ),
        "error: unknown format \"csv\" (known: jsonl, parquet)"
    );
}
