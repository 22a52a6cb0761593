//! End-to-end tests of `ledger infer` on the real binary and the committed tiny
//! Idefics2 fixtures (ml/idefics2/fixtures, written by
//! tools/fixtures/make_idefics2_fixtures.py with transformers): the CLI's prompt ids and
//! greedy generations must equal the ones transformers recorded.

use crate::common;
use common::{bin, fails, ok};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ml/idefics2/fixtures")
}

fn model_dir(config: &str) -> String {
    fixtures().join(config).to_string_lossy().into_owned()
}

fn image(name: &str) -> String {
    fixtures()
        .join("images")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// `gen{i}.input_ids` from golden.safetensors (int64, `[1, s]`).
fn golden_input_ids(config: &str, i: usize) -> Vec<u64> {
    let bytes = std::fs::read(fixtures().join(config).join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(&format!("gen{i}.input_ids")).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u64)
        .collect()
}

/// A recorded generation that `ledger infer` can reproduce: one user message made of
/// one image followed by one text part. Returns (image file, prompt text, new ids).
fn cli_shaped(g: &serde_json::Value) -> Option<(String, String, Vec<u64>)> {
    let msgs = g["messages"].as_array()?;
    let [m] = msgs.as_slice() else { return None };
    let parts = m["content"].as_array()?;
    let [img, text] = parts.as_slice() else {
        return None;
    };
    if m["role"] != "user" || img["type"] != "image" || text["type"] != "text" {
        return None;
    }
    let images = g["images"].as_array()?;
    let [file] = images.as_slice() else {
        return None;
    };
    Some((
        file.as_str()?.to_string(),
        text["text"].as_str()?.to_string(),
        ids(&g["new_ids"]),
    ))
}

#[test]
fn json_output_equals_the_transformers_golden_generations() {
    let home = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for config in ["tiny", "split"] {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join(config).join("golden.json")).unwrap(),
        )
        .unwrap();
        for (i, g) in meta["generate"].as_array().unwrap().iter().enumerate() {
            let Some((file, prompt, want)) = cli_shaped(g) else {
                continue;
            };
            let model = model_dir(config);
            let img = image(&file);
            let max = want.len().to_string();
            let mut args = vec![
                "infer",
                "--model",
                &model,
                "--image",
                &img,
                "--max-new-tokens",
                &max,
                "--json",
            ];
            // "Extract JSON." is the default prompt: exercise the default once.
            if prompt != "Extract JSON." {
                args.extend(["--prompt", &prompt]);
            }
            let out = ok(home.path(), &args);
            let v: serde_json::Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{config} gen{i}: not JSON ({e}): {out}"));
            assert_eq!(
                ids(&v["prompt_token_ids"]),
                golden_input_ids(config, i),
                "{config} gen{i}: prompt ids"
            );
            assert_eq!(
                ids(&v["generated_token_ids"]),
                want,
                "{config} gen{i}: generated ids"
            );
            // The golden text is decoded with special tokens; these generations contain
            // none, so the CLI's text (special tokens skipped) is the same string.
            assert_eq!(v["text"], g["text"], "{config} gen{i}: text");
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} golden generations checked");
}

/// `ledger infer --json` (with `adapter` attached, if any) generates, for every image-then-text
/// prompt of a fixture's golden.json, exactly the greedy ids transformers recorded.
fn generates_golden(
    home: &Path,
    model: &str,
    adapter: Option<&str>,
    meta: &serde_json::Value,
    what: &str,
) {
    for g in meta["generate"].as_array().unwrap() {
        let (file, prompt, want) = cli_shaped(g).expect("image-then-text prompts");
        let img = image(&file);
        let max = want.len().to_string();
        let mut args = vec![
            "infer",
            "--model",
            model,
            "--image",
            &img,
            "--prompt",
            &prompt,
            "--max-new-tokens",
            &max,
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let v: serde_json::Value = serde_json::from_str(&ok(home, &args)).unwrap();
        assert_eq!(
            ids(&v["generated_token_ids"]),
            want,
            "{what}: {prompt} (smallest top-2 margin {})",
            g["min_top2_margin"]
        );
    }
}

/// Checkpoints saved by transformers + bitsandbytes (tools/fixtures/make_bnb_variants.py):
/// every linear 4-bit (vision tower, connector, text model), NF4 and FP4, with and without
/// double quant, sharded, bf16 code storage, and the vision tower kept dense by
/// `llm_int8_skip_modules`. Each loads by path and generates what transformers generated.
#[test]
fn bitsandbytes_checkpoints_generate_what_transformers_generated() {
    let home = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ml/qlora/fixtures/bnb");
    let mut checked = Vec::new();
    for variant in [
        "nf4-dq",
        "fp4",
        "fp4-dq",
        "sharded",
        "skip-vision",
        "bf16-storage",
    ] {
        let dir = root.join(variant);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        generates_golden(home.path(), &dir.to_string_lossy(), None, &meta, variant);
        checked.push(variant);
    }
    assert_eq!(checked.len(), 6);
}

/// A PEFT adapter trained in Python with the options users set (target list,
/// layers_to_transform, rank_pattern, alpha_pattern, rsLoRA, modules_to_save = lm_head;
/// tools/fixtures/make_peft_options.py) attaches by path and generates what transformers +
/// PEFT generated with it; an option Foundry does not implement is refused by name.
#[test]
fn a_peft_adapter_folder_generates_what_peft_generated() {
    let home = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ml/qlora/fixtures/peft_options");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let model = model_dir("tiny");
    let adapter = dir.to_string_lossy().into_owned();
    generates_golden(home.path(), &model, Some(&adapter), &meta, "peft_options");
    // The same adapter from a hub cache, by hf://.
    let cache = tempfile::tempdir().unwrap();
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let snap = cache
        .path()
        .join("models--foundry-test--peft-options/snapshots")
        .join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.path().join("models--foundry-test--peft-options/refs")).unwrap();
    std::fs::write(
        cache
            .path()
            .join("models--foundry-test--peft-options/refs/main"),
        sha,
    )
    .unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(dir.join(f), snap.join(f)).unwrap();
    }
    let g = &meta["generate"][0];
    let (file, prompt, want) = cli_shaped(g).unwrap();
    let cache_s = cache.path().to_string_lossy().into_owned();
    let max = want.len().to_string();
    let img = image(&file);
    let out = common::ok_env(
        home.path(),
        &[
            "infer",
            "--offline",
            "--json",
            "--max-new-tokens",
            &max,
            "--model",
            &model,
            "--image",
            &img,
            "--prompt",
            &prompt,
            "--adapter",
            "hf://foundry-test/peft-options",
        ],
        &[("HF_HUB_CACHE", &cache_s)],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&v["generated_token_ids"]), want, "hf://");

    // DoRA, and a key Foundry does not implement, are one-line refusals naming the key.
    let img = image("c.png");
    for (key, value) in [
        ("use_dora", serde_json::json!(true)),
        ("layer_replication", serde_json::json!([[0, 1]])),
    ] {
        let bad = home.path().join(format!("bad-{key}"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(
            dir.join("adapter_model.safetensors"),
            bad.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap())
                .unwrap();
        cfg[key] = value;
        std::fs::write(bad.join("adapter_config.json"), cfg.to_string()).unwrap();
        let err = fails(
            home.path(),
            &[
                "infer",
                "--model",
                &model,
                "--adapter",
                bad.to_str().unwrap(),
                "--image",
                &img,
            ],
        );
        assert!(err.contains(key) && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn plain_output_is_the_text_and_sampling_is_seeded() {
    let home = tempfile::tempdir().unwrap();
    let (model, img) = (model_dir("tiny"), image("c.png"));
    let base = [
        "infer",
        "--model",
        &model,
        "--image",
        &img,
        "--prompt",
        "What is in this image?",
        "--max-new-tokens",
        "6",
    ];
    let json: serde_json::Value =
        serde_json::from_str(&ok(home.path(), &[&base[..], &["--json"]].concat())).unwrap();
    let plain = ok(home.path(), &base);
    assert_eq!(
        plain.strip_suffix('\n').unwrap(),
        json["text"].as_str().unwrap()
    );

    let sample = |seed: &str| -> Vec<u64> {
        let args = [
            &base[..],
            &[
                "--json",
                "--temperature",
                "1.0",
                "--top-p",
                "0.9",
                "--seed",
                seed,
            ],
        ]
        .concat();
        let v: serde_json::Value = serde_json::from_str(&ok(home.path(), &args)).unwrap();
        ids(&v["generated_token_ids"])
    };
    let (a, b) = (sample("3"), sample("3"));
    assert_eq!(a, b, "same seed, same tokens");
    assert!(!a.is_empty() && a.len() <= 6);

    // bf16 runs and produces the requested number of tokens at most.
    let v: serde_json::Value = serde_json::from_str(&ok(
        home.path(),
        &[&base[..], &["--json", "--dtype", "bf16"]].concat(),
    ))
    .unwrap();
    let n = ids(&v["generated_token_ids"]).len();
    assert!((1..=6).contains(&n), "{v}");
}

/// Builds `models--ORG--NAME/{refs/main, snapshots/<sha>/…}` like huggingface_hub.
fn fake_hub_cache(root: &Path, sha: &str) {
    let repo = root.join("models--foundry-test--idefics2-tiny");
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for e in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("golden") {
            std::fs::copy(e.path(), snap.join(&name)).unwrap();
        }
    }
}

#[test]
fn hub_models_resolve_from_the_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    fake_hub_cache(cache.path(), sha);
    let img = image("c.png");
    let run = |model: &str| {
        Command::new(bin())
            .arg("--home")
            .arg(home.path())
            .args(["infer", "--offline", "--json", "--max-new-tokens", "4"])
            .args(["--model", model, "--image", &img])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HOME")
            .output()
            .unwrap()
    };
    let local = ok(
        home.path(),
        &[
            "infer",
            "--json",
            "--max-new-tokens",
            "4",
            "--model",
            &model_dir("tiny"),
            "--image",
            &img,
        ],
    );
    for model in [
        format!("hf://foundry-test/idefics2-tiny@{sha}"),
        "hf://foundry-test/idefics2-tiny".to_string(),
    ] {
        let out = run(&model);
        assert!(
            out.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), local, "{model}");
    }
    let out = run("hf://foundry-test/idefics2-tiny@ffffffffffffffffffffffffffffffffffffffff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("hub"), "{err}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = model_dir("tiny");
    let img = image("c.png");
    let infer = |model: &str, image: &str, extra: &[&str]| -> String {
        let mut args = vec!["infer", "--model", model, "--image", image];
        args.extend_from_slice(extra);
        fails(home.path(), &args)
    };

    // Missing model directory.
    let missing = tmp.path().join("nope").to_string_lossy().into_owned();
    let err = infer(&missing, &img, &[]);
    assert!(err.contains("no such directory"), "{err}");

    // A directory that is not a model.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = infer(empty.to_str().unwrap(), &img, &[]);
    assert!(err.contains("config.json"), "{err}");

    // Missing and undecodable images.
    let err = infer(&tiny, tmp.path().join("none.png").to_str().unwrap(), &[]);
    assert!(err.contains("none.png"), "{err}");
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"not a png at all").unwrap();
    let err = infer(&tiny, junk.to_str().unwrap(), &[]);
    assert!(err.contains("junk.png"), "{err}");

    // Weights that do not match config.json: the tiny config with the split model's
    // weights. The error names the offending tensor.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for e in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), mixed.join(e.file_name())).unwrap();
    }
    std::fs::copy(
        fixtures().join("split/model.safetensors"),
        mixed.join("model.safetensors"),
    )
    .unwrap();
    let err = infer(mixed.to_str().unwrap(), &img, &[]);
    assert!(err.contains('`') && err.contains("model."), "{err}");

    // A processor whose image_seq_len disagrees with the model's resampler.
    let seq = tmp.path().join("seq");
    std::fs::create_dir(&seq).unwrap();
    for e in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), seq.join(e.file_name())).unwrap();
    }
    std::fs::write(
        seq.join("processor_config.json"),
        r#"{"image_seq_len": 3, "processor_class": "Idefics2Processor"}"#,
    )
    .unwrap();
    let err = infer(seq.to_str().unwrap(), &img, &[]);
    assert!(err.contains("image_seq_len"), "{err}");

    // Sampling options that would be silently ignored or are out of range.
    let err = infer(&tiny, &img, &["--top-p", "0.9"]);
    assert!(err.contains("--top-p"), "{err}");
    let err = infer(&tiny, &img, &["--temperature", "1", "--top-p", "1.5"]);
    assert!(err.contains("--top-p"), "{err}");
    let err = infer(&tiny, &img, &["--temperature=-1"]);
    assert!(err.contains("--temperature"), "{err}");

    // Malformed hub reference; --offline with a local directory.
    let err = infer("hf://just-a-name", &img, &[]);
    assert!(err.contains("hf://OWNER/NAME"), "{err}");
    let err = infer(&tiny, &img, &["--offline"]);
    assert!(err.contains("--offline"), "{err}");
}

/// The demo's base (`fixtures/reader`, pretrained in PyTorch by tools/pretrain/make_reader.sh to
/// transcribe cards and answer one-field questions) reads, in candle, new cards of layouts it was
/// pretrained on, and answers a question about each.
#[test]
fn the_reader_base_transcribes_and_answers_questions_in_candle() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("cards");
    let data_s = data.to_string_lossy().into_owned();
    ok(
        home.path(),
        &[
            "synth",
            "--out",
            &data_s,
            "--count",
            "8",
            "--seed",
            "5",
            "--profile",
            "tiny",
            "--layouts",
            "invoice-a,invoice-b,invoice-c",
            "--with-text",
        ],
    );
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for split in ["train", "validation", "test"] {
        let p = data.join(format!("data/{split}-00000-of-00001.jsonl"));
        if let Ok(t) = std::fs::read_to_string(p) {
            rows.extend(
                t.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
    }
    let model = model_dir("reader");
    let ask = |img: &std::path::Path, prompt: &str| {
        let out = ok(
            home.path(),
            &[
                "infer",
                "--model",
                &model,
                "--image",
                &img.to_string_lossy(),
                "--prompt",
                prompt,
                "--max-new-tokens",
                "64",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["text"].as_str().unwrap().trim().to_string()
    };
    let (mut exact, mut values, mut values_read, mut answered) = (0, 0, 0, 0);
    let cards = rows.iter().take(8).collect::<Vec<_>>();
    assert_eq!(cards.len(), 8);
    for (k, r) in cards.iter().enumerate() {
        let img = data.join("data").join(r["image"].as_str().unwrap());
        let got = ask(&img, "Read the text.");
        let want = r["text"].as_str().unwrap();
        exact += usize::from(got == want);
        let target = r["target"].as_object().unwrap();
        for value in target.values() {
            values += 1;
            values_read += usize::from(got.contains(value.as_str().unwrap()));
        }
        eprintln!("want {want:?}\n got {got:?}");
        // One field per card, in turn: "What is the invoice number?" and so on.
        let (key, value) = target.iter().nth(k % target.len()).unwrap();
        let answer = ask(&img, &format!("What is the {}?", key.replace('_', " ")));
        eprintln!("{key}: want {value} got {answer:?}");
        answered += usize::from(value.as_str() == Some(answer.as_str()));
    }
    assert!(exact >= 7, "{exact}/8 exact transcriptions");
    assert!(
        values_read * 10 >= values * 9,
        "{values_read}/{values} values read"
    );
    assert!(answered >= 7, "{answered}/8 questions answered exactly");
}
