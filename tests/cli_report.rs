//! `ledger report run <id> --html FILE` on a scripted ledger: the page is self-contained,
//! draws the curves, the evals and the lineage, and renders in headless Chromium with no
//! console errors (screenshot checked for the drawn colours).

use crate::common;
use common::{fails, ok};
use foundry_events::*;
use foundry_ledger::{Home, Ledger};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const RECIPE: &str = "9ab3c0ffee000000000000000000000000000000000000000000000000000001";
const DATASET: &str = "77e0da7a00000000000000000000000000000000000000000000000000000002";
const MODEL: &str = "5c1d30de10000000000000000000000000000000000000000000000000000003";
const CP_A: &str = "aaaa111100000000000000000000000000000000000000000000000000000a0a";
const CP_B: &str = "bbbb222200000000000000000000000000000000000000000000000000000b0b";

fn append(ledger: &Ledger, actor: &str, e: impl Into<Event>) -> RecordedEvent {
    common::append_as_actor(ledger, actor, e.into())
}

fn metrics(from: u64, n: u64) -> MetricsLogged {
    MetricsLogged {
        run_id: "run-alpha".into(),
        points: (from..from + n)
            .map(|s| MetricPoint {
                step: s,
                loss: 2.5 * (-(s as f64) / 40.0).exp() + 0.2,
                lr: if s < 10 {
                    1e-4 * s as f64 / 10.0
                } else {
                    1e-4 * (1.0 - s as f64 / 200.0)
                },
                grad_norm: 1.0,
                tokens: 500,
                tokens_per_s: 1000.0,
                elapsed_ms: s * 100,
            })
            .collect(),
    }
}

fn checkpoint(id: &str, step: u64, loss: f64) -> CheckpointCommitted {
    CheckpointCommitted {
        run_id: "run-alpha".into(),
        checkpoint_id: id.into(),
        step,
        files: vec![FileDigest {
            path: "adapter_model.safetensors".into(),
            sha256: Sha256Digest([step as u8; 32]),
            bytes: 1234,
        }],
        loss: Some(loss),
        location: format!("adapters/run-alpha/{step}"),
    }
}

fn scored(eval: &str, cp: &str, fem: f64) -> EvalScored {
    let mv = |v: f64| MetricValue {
        value: v,
        ci_low: Some(v - 0.05),
        ci_high: Some((v + 0.05).min(1.0)),
    };
    let mut m = BTreeMap::new();
    m.insert("field_exact_match".to_string(), mv(fem));
    m.insert("json_valid_rate".to_string(), mv(0.98));
    m.insert("doc_exact_match".to_string(), mv(fem - 0.2));
    m.insert("field_f1/total".to_string(), mv(fem));
    EvalScored {
        eval_id: eval.into(),
        checkpoint_id: Some(cp.into()),
        run_id: Some("run-alpha".into()),
        model_id: MODEL.into(),
        dataset_id: DATASET.into(),
        split: "test".into(),
        split_sha256: Sha256Digest([5; 32]),
        eval_spec_sha256: Sha256Digest([6; 32]),
        examples: 100,
        metrics: m,
        breakdown: BTreeMap::new(),
        latency_ms_mean: 800.0,
        throughput_docs_per_s: 1.25,
        code: CodeVersion::default(),
        device: DeviceInfo::default(),
    }
}

fn seed(home: &Path) {
    let ledger = Home::at(home).init().unwrap();
    common::scripted_genesis(&ledger, &["alice", "evaluator", "runner"]);
    append(
        &ledger,
        "alice",
        RecipeDeclared {
            recipe_id: RECIPE.into(),
            name: "invoices <r8> & co".into(),
            source: "recipes/tiny-cpu.toml".into(),
            resolved_config: serde_json::json!({"lora": {"r": 8}}),
            env_overrides: BTreeMap::new(),
        },
    );
    append(
        &ledger,
        "alice",
        DatasetPinned {
            dataset_id: DATASET.into(),
            source: "synth://invoices".into(),
            resolved_revision: None,
            shards: vec![ShardPin {
                split: "test".into(),
                path: "test-00000.jsonl".into(),
                sha256: Sha256Digest([8; 32]),
                bytes: 100,
                rows: 100,
            }],
            splits: BTreeMap::new(),
        },
    );
    append(
        &ledger,
        "alice",
        BaseModelPinned {
            model_id: MODEL.into(),
            source: "ml/idefics2/fixtures/tiny".into(),
            resolved_revision: None,
            architecture: "Idefics2ForConditionalGeneration".into(),
            files: vec![],
            parameters: None,
            quantization: "none".into(),
        },
    );
    append(
        &ledger,
        "alice",
        RunRequested {
            run_id: "run-alpha".into(),
            recipe_id: RECIPE.into(),
            dataset_id: DATASET.into(),
            model_id: MODEL.into(),
            backend: "local".into(),
            overrides: BTreeMap::new(),
        },
    );
    append(&ledger, "runner", metrics(1, 100));
    append(&ledger, "runner", checkpoint(CP_A, 100, 0.4));
    append(&ledger, "evaluator", scored("eval-one", CP_A, 0.72));
    append(&ledger, "runner", metrics(101, 99));
    append(&ledger, "runner", checkpoint(CP_B, 199, 0.22));
    append(&ledger, "evaluator", scored("eval-two", CP_B, 0.93));
    append(
        &ledger,
        "runner",
        RunCompleted {
            run_id: "run-alpha".into(),
            final_checkpoint_id: Some(CP_B.into()),
            steps: 199,
            final_loss: Some(0.22),
            duration_ms: 61_000,
        },
    );
}

/// Console messages Chromium logged (`--enable-logging=stderr` prints them as
/// `…:CONSOLE:…] "message", source: …`).
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Renders `html` to a PNG with headless Chromium; `None` (with a printed notice) when no
/// Chromium is installed. Returns the stderr log.
fn chromium_screenshot(html: &Path, png: &Path, profile: &Path) -> Option<String> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(bin) = bin else {
        eprintln!("NOTICE: chromium is not installed (apt-get install chromium); browser rendering check skipped");
        return None;
    };
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Pixels within a small distance of an RGB colour.
fn count_color(img: &image::RgbImage, c: [u8; 3]) -> usize {
    img.pixels()
        .filter(|p| {
            p.0.iter()
                .zip(c)
                .all(|(a, b)| (*a as i32 - b as i32).abs() <= 12)
        })
        .count()
}

#[test]
fn report_page_is_self_contained_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    seed(&home);
    let html = dir.path().join("run.html");
    let out = ok(
        &home,
        &["report", "run", "run-al", "--html", html.to_str().unwrap()],
    );
    assert!(out.contains("199 metric points, 2 checkpoints"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    // Self-contained: no scripts, no external references.
    for bad in ["<script", "http://", "https://", "src=", "@import", "url("] {
        let without_ns = page.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_ns.contains(bad), "page contains {bad}");
    }
    // Loss and lr curves, eval chart, lineage.
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "three charts and the lineage"
    );
    assert!(page.contains("training loss") && page.contains("learning rate"));
    assert!(
        page.matches("<polyline").count() >= 4,
        "loss, checkpoint loss, lr, evals"
    );
    assert!(page.contains("eval-one") && page.contains("eval-two"));
    assert!(
        page.contains("field_exact_match 0.930 [0.880, 0.980]"),
        "eval table"
    );
    assert!(page.contains("class=\"lineage\"") && page.contains("kind-run"));
    // Labels are escaped.
    assert!(
        page.contains("invoices &lt;r8&gt; &amp; co"),
        "escaped recipe name"
    );
    assert!(!page.contains("<r8>"));

    let e = fails(
        &home,
        &["report", "run", "nope", "--html", html.to_str().unwrap()],
    );
    assert!(e.contains("nope"), "{e}");
    let e = fails(
        &home,
        &[
            "report",
            "run",
            "run-alpha",
            "--html",
            dir.path().join("no/such/dir/x.html").to_str().unwrap(),
        ],
    );
    assert!(e.contains("writing"), "{e}");
}

#[test]
fn report_renders_in_headless_chromium_without_console_errors() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    seed(&home);
    let html = dir.path().join("run.html");
    ok(
        &home,
        &[
            "report",
            "run",
            "run-alpha",
            "--html",
            html.to_str().unwrap(),
        ],
    );

    // Negative control: the console check does catch a broken page.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><html><body><script>nope();</script></body></html>",
    )
    .unwrap();
    let Some(err) = chromium_screenshot(&bad, &dir.path().join("bad.png"), &dir.path().join("p0"))
    else {
        return;
    };
    assert!(
        !console_lines(&err).is_empty(),
        "the console check sees nothing: {err}"
    );

    let png = dir.path().join("run.png");
    let err = chromium_screenshot(&html, &png, &dir.path().join("p1")).unwrap();
    assert!(
        console_lines(&err).is_empty(),
        "console errors: {:?}",
        console_lines(&err)
    );
    // To look at it: FOUNDRY_REPORT_SCREENSHOT=/tmp/run.png cargo test --test cli_report
    if let Ok(keep) = std::env::var("FOUNDRY_REPORT_SCREENSHOT") {
        std::fs::copy(&png, &keep).unwrap();
    }
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (1280, 2000));
    // The drawn colours are on screen: loss curve (#cf222e), lr curve (#0969da),
    // field exact match (#1a7f37), run node fill (#ddf4ff).
    for (name, c) in [
        ("loss", [0xcf, 0x22, 0x2e]),
        ("lr", [0x09, 0x69, 0xda]),
        ("eval", [0x1a, 0x7f, 0x37]),
        ("run node", [0xdd, 0xf4, 0xff]),
    ] {
        let n = count_color(&img, c);
        assert!(n > 50, "{name}: only {n} pixels of {c:?}");
    }
}
