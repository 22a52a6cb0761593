use std::collections::BTreeMap;
use std::path::Path;

use crate::*;

const MIN: &str = "name = \"t\"\n[base_model]\nsource = \"hf://org/m@abc\"\n";

fn tiny_modules() -> Vec<String> {
    idefics2_module_names(&serde_json::json!({
        "vision_config": {"num_hidden_layers": 2},
        "perceiver_config": {"resampler_depth": 2},
        "text_config": {"num_hidden_layers": 2}
    }))
    .unwrap()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err(text: &str) -> String {
    err_env(text, &[])
}

fn err_env(text: &str, vars: &[(&str, &str)]) -> String {
    let m = tiny_modules();
    resolve_str(text, "r.toml", &env(vars), Some(&m))
        .unwrap_err()
        .to_string()
}

fn ok(text: &str) -> Resolved {
    let m = tiny_modules();
    resolve_str(text, "r.toml", &BTreeMap::new(), Some(&m)).unwrap()
}

fn with(section: &str, line: &str) -> String {
    format!("{MIN}[{section}]\n{line}\n")
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn shipped_recipes_resolve() {
    let m = tiny_modules();
    for f in ["recipes/idefics2-8b-finance.toml", "recipes/tiny-cpu.toml"] {
        let r = resolve_file(&repo_root().join(f), &BTreeMap::new(), Some(&m)).unwrap();
        assert_eq!(r.id.len(), 64);
    }
    let big = resolve_file(
        &repo_root().join("recipes/idefics2-8b-finance.toml"),
        &BTreeMap::new(),
        None,
    )
    .unwrap();
    let t = &big.recipe;
    assert_eq!((t.lora.r, t.lora.alpha, t.lora.dropout), (8, 8.0, 0.1));
    assert_eq!(t.lora.target_modules, schema::TUTORIAL_TARGET_MODULES);
    assert_eq!((t.training.lr, t.training.warmup_steps), (1e-4, 50));
    assert_eq!(
        (t.training.micro_batch, t.training.grad_accumulation),
        (2, 8)
    );
    assert_eq!(
        (t.quantization.method.as_str(), t.quantization.double_quant),
        ("nf4", true)
    );
    let prod = &t.promotion["production"];
    assert_eq!(prod.beat_production_by, Some(0.5));
    assert!(prod.allows("ci") && !prod.allows("mallory"));
    assert!(t.promotion["staging"].allows("anyone"));
    let gates = prod.parsed_gates();
    assert_eq!(gates.len(), 2);
    assert!(gates[0].passes(0.95) && !gates[0].passes(0.93));
}

#[test]
fn every_default_is_written_out() {
    let r = ok(MIN);
    let c = &r.config;
    for (section, specs) in schema::SECTIONS {
        for s in *specs {
            assert!(c[section].get(s.key).is_some(), "{section}.{}", s.key);
        }
    }
    assert_eq!(c["training"]["lr"], serde_json::json!(0.0001));
    assert_eq!(c["base_model"]["model_id"], serde_json::Value::Null);
    assert_eq!(c["format"], serde_json::json!(1));
    assert_eq!(c["promotion"], serde_json::json!({}));
}

#[test]
fn resolution_is_deterministic_and_content_addressed() {
    let a = ok(MIN);
    let b = ok(MIN);
    assert_eq!(a.id, b.id);
    assert_eq!(a.id, sha256_hex(canonical_json(&a.config).as_bytes()));
    // Writing a default explicitly, reordering or commenting changes nothing.
    let explicit = format!("# hi\n{MIN}[training]\nlr = 0.0001\n[lora]\nr = 8\n");
    assert_eq!(ok(&explicit).id, a.id);
    let reordered = "[base_model]\nsource = \"hf://org/m@abc\"\n";
    assert_eq!(ok(&format!("name = \"t\"\n{reordered}")).id, a.id);
    // Any result-changing value changes the id.
    assert_ne!(ok(&with("training", "lr = 0.0002")).id, a.id);
    assert_ne!(ok(&with("training", "seed = 1")).id, a.id);
}

#[test]
fn env_overrides_apply_and_are_recorded() {
    let m = tiny_modules();
    let vars = env(&[
        ("FOUNDRY_TRAINING_LR", "0.0003"),
        ("FOUNDRY_LORA_R", "16"),
        ("FOUNDRY_QUANTIZATION_DOUBLE_QUANT", "false"),
        ("FOUNDRY_BASE_MODEL_SOURCE", "/models/x"),
        ("FOUNDRY_EVAL_METRICS", "field_exact_match, field_f1"),
        ("FOUNDRY_PROMOTION_PRODUCTION_BEAT_PRODUCTION_BY", "1.5"),
        (
            "FOUNDRY_PROMOTION_PRODUCTION_GATES",
            "field_exact_match >= 0.9",
        ),
        ("FOUNDRY_HOME", "/tmp/elsewhere"),
    ]);
    let r = resolve_str(MIN, "r.toml", &vars, Some(&m)).unwrap();
    assert_eq!(r.recipe.training.lr, 3e-4);
    assert_eq!(r.recipe.lora.r, 16);
    assert!(!r.recipe.quantization.double_quant);
    assert_eq!(r.recipe.base_model.source, "/models/x");
    assert_eq!(r.recipe.eval.metrics, vec!["field_exact_match", "field_f1"]);
    let prod = &r.recipe.promotion["production"];
    assert_eq!(prod.beat_production_by, Some(1.5));
    assert_eq!(prod.gates, vec!["field_exact_match >= 0.9"]);
    // Every FOUNDRY_* variable is recorded, applied or not.
    assert_eq!(r.env.len(), 8);
    assert_eq!(r.env["FOUNDRY_HOME"], "/tmp/elsewhere");
    assert!(r
        .run_config_json()
        .contains("\"FOUNDRY_TRAINING_LR\": \"0.0003\""));
    // The override wins over the file and changes the id.
    let file = with("training", "lr = 0.1");
    let over = resolve_str(
        &file,
        "r.toml",
        &env(&[("FOUNDRY_TRAINING_LR", "0.0003")]),
        Some(&m),
    )
    .unwrap();
    assert_eq!(over.recipe.training.lr, 3e-4);
    assert_ne!(over.id, ok(MIN).id);
    // A Null-default key is reset by an empty value.
    let reset = resolve_str(
        "name = \"t\"\n[base_model]\nsource = \"d\"\nmodel_id = \"x\"\n",
        "r.toml",
        &env(&[("FOUNDRY_BASE_MODEL_MODEL_ID", "")]),
        Some(&m),
    )
    .unwrap();
    assert_eq!(reset.recipe.base_model.model_id, None);
}

#[test]
fn env_override_errors_name_the_variable() {
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_TRAINING_LR", "fast")]),
        "r.toml: training.lr (FOUNDRY_TRAINING_LR): expected a number, found \"fast\""
    );
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_TRAINING_LR", "-1")]),
        "r.toml: training.lr (FOUNDRY_TRAINING_LR): must be > 0, got -1"
    );
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_TRAINING_LRR", "1")]),
        "r.toml: training.lrr (FOUNDRY_TRAINING_LRR): unknown key"
    );
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_LORA_R", "1.5")]),
        "r.toml: lora.r (FOUNDRY_LORA_R): expected an integer, found \"1.5\""
    );
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_QUANTIZATION_DOUBLE_QUANT", "yes")]),
        "r.toml: quantization.double_quant (FOUNDRY_QUANTIZATION_DOUBLE_QUANT): expected a boolean, found \"yes\""
    );
    assert_eq!(
        err_env(MIN, &[("FOUNDRY_PROMOTION_PRODUCTION_SPEED", "1")]),
        "r.toml: promotion (FOUNDRY_PROMOTION_PRODUCTION_SPEED): unknown key (expected FOUNDRY_PROMOTION_<CHANNEL>_<KEY> with KEY one of GATES, BEAT_PRODUCTION_BY, COMPARE_METRIC, ACTORS, EVALUATORS)"
    );
}

#[test]
fn every_documented_env_variable_is_accepted() {
    let m = tiny_modules();
    for (var, key, _, _) in env_docs() {
        if var.contains("<CHANNEL>") {
            continue;
        }
        let current = ok(MIN).config;
        let (section, k) = key.split_once('.').unwrap();
        let v = &current[section][k];
        let raw = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let r = resolve_str(MIN, "r.toml", &env(&[(&var, &raw)]), Some(&m));
        assert!(r.is_ok(), "{var}={raw}: {:?}", r.err());
    }
}

#[test]
fn syntax_and_io_errors() {
    assert_eq!(
        err("name = \"t\"\nlr = = 1\n"),
        "r.toml: invalid TOML at line 2, column 6: extra `=`, expected nothing"
    );
    let missing =
        resolve_file(Path::new("/nonexistent/r.toml"), &BTreeMap::new(), None).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "/nonexistent/r.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn structural_errors() {
    assert_eq!(
        err(&with("training", "lrr = 1")),
        "r.toml: training.lrr: unknown key"
    );
    assert_eq!(
        err(&format!("{MIN}[trainig]\nlr = 1\n")),
        "r.toml: trainig: unknown section"
    );
    assert_eq!(
        err(&format!("color = 1\n{MIN}")),
        "r.toml: color: unknown key"
    );
    assert_eq!(
        err(&format!("training = 1\n{MIN}")),
        "r.toml: training: expected a table, found an integer"
    );
    assert_eq!(
        err("[base_model]\nsource = \"d\"\n"),
        "r.toml: name: required key is missing"
    );
    assert_eq!(
        err("name = \"t\"\n"),
        "r.toml: base_model.source: required key is missing"
    );
    assert_eq!(
        err(&format!("{MIN}[promotion]\nprod = 3\n")),
        "r.toml: promotion.prod: expected a table, found an integer"
    );
    assert_eq!(
        err(&format!("{MIN}[promotion.Prod]\n")),
        "r.toml: promotion.Prod: channel names use a-z, 0-9, _ and - only"
    );
    assert_eq!(
        err(&format!("{MIN}[promotion.prod]\nspeed = 1\n")),
        "r.toml: promotion.prod.speed: unknown key"
    );
}

#[test]
fn type_errors() {
    assert_eq!(
        err(&with("training", "lr = \"fast\"")),
        "r.toml: training.lr: expected a number, found a string"
    );
    assert_eq!(
        err(&with("lora", "r = 8.5")),
        "r.toml: lora.r: expected an integer, found a float"
    );
    assert_eq!(
        err(&with("quantization", "double_quant = 1")),
        "r.toml: quantization.double_quant: expected a boolean, found an integer"
    );
    assert_eq!(
        err(&with("eval", "metrics = \"field_f1\"")),
        "r.toml: eval.metrics: expected an array of strings, found a string"
    );
    assert_eq!(
        err(&with("eval", "metrics = [\"field_f1\", 3]")),
        "r.toml: eval.metrics[1]: expected a string, found an integer"
    );
    assert_eq!(
        err(&with("quantization", "method = \"int8\"")),
        "r.toml: quantization.method: expected one of nf4, none, found \"int8\""
    );
    assert_eq!(
        err(&with("training", "lr = nan")),
        "r.toml: training.lr: expected a finite number, found NaN"
    );
    assert_eq!(
        err(&with("base_model", "")
            .replace("[base_model]\n\n", "")
            .replace("source = \"hf://org/m@abc\"", "source = 3")),
        "r.toml: base_model.source: expected a string, found an integer"
    );
}

#[test]
fn range_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("training", "lr = 0", "r.toml: training.lr: must be > 0, got 0"),
        ("training", "lr = -0.001", "r.toml: training.lr: must be > 0, got -0.001"),
        ("lora", "r = 0", "r.toml: lora.r: must be in 1..=1024, got 0"),
        ("lora", "r = 2147483647", "r.toml: lora.r: must be in 1..=1024, got 2147483647"),
        ("lora", "alpha = 0", "r.toml: lora.alpha: must be > 0, got 0"),
        ("lora", "dropout = 1.0", "r.toml: lora.dropout: must be in [0, 1), got 1"),
        ("training", "max_steps = 10", "r.toml: training.max_steps: exactly one of training.max_steps and training.epochs must be > 0 (got 10 and 2)"),
        ("training", "epochs = 0", "r.toml: training.max_steps: exactly one of training.max_steps and training.epochs must be > 0 (got 0 and 0)"),
        ("training", "epochs = 0\nmax_steps = 10\nwarmup_steps = 20", "r.toml: training.warmup_steps: must be <= training.max_steps (10), got 20"),
        ("training", "seed = -1", "r.toml: training.seed: must be >= 0, got -1"),
        ("training", "micro_batch = 0", "r.toml: training.micro_batch: must be in 1..=1024, got 0"),
        ("training", "micro_batch = 4000000000", "r.toml: training.micro_batch: must be in 1..=1024, got 4000000000"),
        ("training", "max_length = 1000000", "r.toml: training.max_length: must be in 1..=32768, got 1000000"),
        ("training", "image_longest_edge = 100000", "r.toml: training.image_longest_edge: must be in 1..=4096, got 100000"),
        ("training", "grad_accumulation = 0", "r.toml: training.grad_accumulation: must be in 1..=4096, got 0"),
        ("training", "grad_clip = -1", "r.toml: training.grad_clip: must be >= 0, got -1"),
        ("training", "weight_decay = -0.1", "r.toml: training.weight_decay: must be >= 0, got -0.1"),
        ("training", "adam_beta2 = 1", "r.toml: training.adam_beta2: must be in [0, 1), got 1"),
        ("training", "adam_eps = 0", "r.toml: training.adam_eps: must be > 0, got 0"),
        ("training", "checkpoint_every = 0", "r.toml: training.checkpoint_every: must be >= 1, got 0"),
        ("training", "keep_last = 0", "r.toml: training.keep_last: must be in 1..=10000, got 0"),
        ("quantization", "blocksize = 48", "r.toml: quantization.blocksize: must be one of 32, 64, 128, 256, got 48"),
        ("eval", "metrics = []", "r.toml: eval.metrics: must name at least one metric"),
        ("eval", "metrics = [\"bleu\"]", "r.toml: eval.metrics[0]: unknown metric \"bleu\" (known: field_exact_match, json_valid_rate, field_f1, doc_exact_match)"),
        ("eval", "max_new_tokens = 0", "r.toml: eval.max_new_tokens: must be in 1..=8192, got 0"),
        ("backend", "kind = \"modal\"", "r.toml: backend.gpu: required when backend.kind = \"modal\""),
        ("backend", "retries = 11", "r.toml: backend.retries: must be in 0..=10 (Modal's limit), got 11"),
        ("backend", "timeout_s = 0", "r.toml: backend.timeout_s: must be in 1..=86400, got 0"),
        ("backend", "gpu = \"{{NATS_URL}}\"", "r.toml: backend.gpu: \"{{NATS_URL}}\": a Modal GPU is 1 to 32 letters, digits, '-', ':' or '!' (e.g. H100, A100-80GB, H100:2)"),
        ("backend", "app_name = \"bad app\"", "r.toml: backend.app_name: \"bad app\": Modal names are 1 to 64 letters, digits, '-', '_' or '.'"),
        ("backend", "data_volume = \"\"", "r.toml: backend.data_volume: \"\": Modal names are 1 to 64 letters, digits, '-', '_' or '.'"),
    ];
    for (section, line, want) in cases {
        assert_eq!(&err(&with(section, line)), want, "{section}: {line}");
    }
    assert_eq!(
        err("name = \"t\"\n[base_model]\nsource = \"hf://org/m\"\n"),
        "r.toml: base_model.source: \"hf://org/m\" is not hf://ORG/NAME@REVISION (a pinned revision is required)"
    );
    assert_eq!(
        err("name = \"t\"\n[base_model]\nsource = \"d\"\nmodel_id = \"abc\"\n"),
        "r.toml: base_model.model_id: \"abc\" is not a lowercase sha256 hex id"
    );
    assert_eq!(
        err("name = \" \"\n[base_model]\nsource = \"d\"\n"),
        "r.toml: name: must not be empty"
    );
}

#[test]
fn target_module_errors() {
    assert_eq!(
        err(&with("lora", "target_modules = \".*(q_proj\"")),
        "r.toml: lora.target_modules: invalid regex: unclosed group"
    );
    assert_eq!(
        err(&with("lora", "target_modules = \".*qkv_proj\"")),
        "r.toml: lora.target_modules: matches no module of the idefics2 architecture (44 modules, e.g. model.vision_model.encoder.layers.0.self_attn.q_proj)"
    );
    // PEFT full-matches: a bare suffix matches nothing, an anchored pattern does.
    assert!(err(&with("lora", "target_modules = \"q_proj\"")).contains("matches no module"));
    let r = ok(&with("lora", "target_modules = \".*text_model.*q_proj\""));
    assert_eq!(r.recipe.lora.target_modules, ".*text_model.*q_proj");
    // Without a module list only the syntax is checked.
    assert!(resolve_str(
        &with("lora", "target_modules = \"q_proj\""),
        "r.toml",
        &BTreeMap::new(),
        None
    )
    .is_ok());
}

#[test]
fn promotion_errors() {
    let p = |body: &str| format!("{MIN}[promotion.production]\n{body}\n");
    assert_eq!(
        err(&p("gates = [\"field_exact_match >= high\"]")),
        "r.toml: promotion.production.gates[0]: cannot parse \"field_exact_match >= high\" (expected \"<metric> >= <number>\")"
    );
    assert_eq!(
        err(&p(
            "gates = [\"json_valid_rate >= 0.99\", \"field_f1 >= 0.9\"]"
        )),
        "r.toml: promotion.production.gates[1]: metric \"field_f1\" is not in eval.metrics"
    );
    assert_eq!(
        err(&p("beat_production_by = -0.5")),
        "r.toml: promotion.production.beat_production_by: must be >= 0, got -0.5"
    );
    assert_eq!(
        err(&p("compare_metric = \"field_f1\"")),
        "r.toml: promotion.production.compare_metric: metric \"field_f1\" is not in eval.metrics"
    );
    assert_eq!(
        err(&p("actors = [\"a\", \"\"]")),
        "r.toml: promotion.production.actors[1]: must not be empty"
    );
}
