//! `ledger adapter merge` and `ledger infer --adapter` through the real binary:
//! train two steps on the tiny model, merge the checkpoint's adapter into a dense
//! folder, and check that the merged model generates what the base model with the
//! adapter attached generates.

use crate::common;

use common::{fails, first_word, repo};

use std::path::{Path, PathBuf};

/// Recipe overrides that keep these runs to seconds.
const ENV: &[(&str, &str)] = &[
    ("FOUNDRY_TRAINING_MAX_STEPS", "2"),
    ("FOUNDRY_TRAINING_WARMUP_STEPS", "1"),
    ("FOUNDRY_TRAINING_CHECKPOINT_EVERY", "2"),
    ("FOUNDRY_EVAL_MAX_EXAMPLES", "1"),
    ("FOUNDRY_EVAL_MAX_NEW_TOKENS", "4"),
];

fn ok(home: &Path, args: &[&str]) -> String {
    common::ok_env(home, args, ENV)
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    common::json_env(home, args, ENV)
}

fn first_png(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = first_png(&p) {
                return Some(f);
            }
        } else if p.extension().is_some_and(|x| x == "png") {
            return Some(p);
        }
    }
    None
}

#[test]
fn a_merged_adapter_generates_what_the_attached_adapter_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    let dataset = common::home_with_tiny_dataset(&home, &data, 6, 5, ENV);
    let tiny = repo("ml/idefics2/fixtures/tiny");
    let tiny_s = tiny.to_str().unwrap();
    let model = first_word(&ok(&home, &["model", "pin", tiny_s]));
    let recipe_file = repo("recipes/tiny-cpu.toml");
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
    let ckpt = run["checkpoints"][0]["checkpoint_id"]
        .as_str()
        .expect("a checkpoint")
        .to_string();
    let prefix = &ckpt[..10];

    let merged = tmp.path().join("merged");
    let merged_s = merged.to_str().unwrap();
    let m = json(&home, &["adapter", "merge", prefix, "--out", merged_s]);
    assert_eq!(m["checkpoint_id"], ckpt.as_str(), "{m}");
    assert_eq!(m["run_id"], run_id.as_str(), "{m}");
    assert!(m["merged_linears"].as_u64().unwrap() > 0, "{m}");
    // The recipe quantizes: the adapter is folded into the weights training used.
    assert_eq!(m["onto"], "nf4-dequantized", "{m}");
    assert_eq!(m["layout"], "dense", "{m}");
    assert!(merged.join("model.safetensors").is_file());
    assert!(merged.join("config.json").is_file());
    // The merge changed the weights: the merged model file is not the base one.
    let sha = |p: &Path| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    assert_ne!(
        sha(&merged.join("model.safetensors")),
        sha(&tiny.join("model.safetensors"))
    );

    // Greedy generation: merged model == base + attached adapter. Both sides use the base as
    // training did (its linears' NF4 round trip: the merge folds the adapter into the
    // dequantized weights, `infer --adapter` quantizes the base as the run's recipe says), so
    // Q·x + s·B(A·x) and (Q + s·BA)·x differ only by float rounding.
    let png = first_png(&data).expect("a synthesized png");
    let png_s = png.to_str().unwrap();
    let common_args = ["--image", png_s, "--max-new-tokens", "8"];
    let mut a = vec!["infer", "--model", merged_s];
    a.extend_from_slice(&common_args);
    let from_merged = json(&home, &a);
    let mut b = vec!["infer", "--model", tiny_s, "--adapter", prefix];
    b.extend_from_slice(&common_args);
    let from_adapter = json(&home, &b);
    assert!(!from_merged["generated_token_ids"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        from_merged["generated_token_ids"], from_adapter["generated_token_ids"],
        "merged: {from_merged}\nattached: {from_adapter}"
    );
    assert_eq!(
        from_merged["prompt_token_ids"],
        from_adapter["prompt_token_ids"]
    );
    // The equality means something: the trained adapter changes what the base generates.
    let mut c = vec!["infer", "--model", tiny_s];
    c.extend_from_slice(&common_args);
    let from_base = json(&home, &c);
    assert_ne!(
        from_base["generated_token_ids"], from_adapter["generated_token_ids"],
        "the adapter did not change the generation: {from_base}"
    );
    // Onto the pinned dense weights instead (what `adapter merge` did before): another model.
    let dense = tmp.path().join("merged-dense");
    let d = json(
        &home,
        &[
            "adapter",
            "merge",
            prefix,
            "--out",
            dense.to_str().unwrap(),
            "--onto-dense",
        ],
    );
    assert_eq!(d["onto"], "dense", "{d}");
    assert_ne!(
        sha(&dense.join("model.safetensors")),
        sha(&merged.join("model.safetensors"))
    );
    // The bnb-4bit layout: the recipe's linears back to NF4, loadable by path.
    let q = tmp.path().join("merged-bnb");
    let q_s = q.to_str().unwrap();
    let qm = json(
        &home,
        &["adapter", "merge", prefix, "--out", q_s, "--bnb-4bit"],
    );
    assert_eq!(
        (qm["onto"].as_str(), qm["layout"].as_str()),
        (Some("nf4-dequantized"), Some("bnb-4bit")),
        "{qm}"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4",
        "{cfg}"
    );
    let mut e = vec!["infer", "--model", q_s];
    e.extend_from_slice(&common_args);
    let from_bnb = json(&home, &e);
    assert_eq!(
        from_bnb["prompt_token_ids"],
        from_adapter["prompt_token_ids"]
    );
    assert!(!from_bnb["generated_token_ids"]
        .as_array()
        .unwrap()
        .is_empty());
    // Pruned checkpoint files come back from the artifact store.
    std::fs::remove_dir_all(home.join("adapters")).unwrap();
    let restored = json(&home, &b);
    assert_eq!(
        restored["generated_token_ids"],
        from_adapter["generated_token_ids"]
    );

    // A non-empty --out is refused; an unknown prefix is refused; both in one line.
    let err = fails(&home, &["adapter", "merge", prefix, "--out", merged_s]);
    assert!(err.contains("not empty"), "{err}");
    let other = tmp.path().join("other");
    let err = fails(
        &home,
        &["adapter", "merge", "zzzz", "--out", other.to_str().unwrap()],
    );
    assert!(err.contains("zzzz"), "{err}");
    assert!(!other.exists());
    let err = fails(
        &home,
        &[
            "infer",
            "--model",
            tiny_s,
            "--adapter",
            "zzzz",
            "--image",
            png_s,
        ],
    );
    assert!(err.contains("zzzz"), "{err}");
}
