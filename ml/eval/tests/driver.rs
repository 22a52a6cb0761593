//! The driver on the tiny random Idefics2 fixture: its answers are garbage, which must be
//! scored (as invalid JSON) without crashing, with timings and a valid event.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use foundry_eval::spec::EvalSpec;
use foundry_eval::{EvalError, EvalExample, ModelUnderTest};
use foundry_qlora::lora::{attach_new, save_adapter, LoraConfig, LoraInit};
use serde_json::json;

const TARGETS: &str = r".*text_model.*(q_proj|v_proj|o_proj|down_proj).*$";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../idefics2/fixtures")
}

fn examples() -> Vec<foundry_eval::Result<EvalExample>> {
    let items = [
        (
            "a.png",
            "invoice",
            "invoice-a",
            json!({"vendor": "ACME", "total": 12.5}),
        ),
        (
            "b.png",
            "invoice",
            "invoice-b",
            json!({"vendor": "Globex", "total": 3}),
        ),
        (
            "c.png",
            "receipt",
            "receipt-a",
            json!({"merchant": "Shop", "line_items": [{"description": "x", "amount": 1}]}),
        ),
        (
            "e_rgba.png",
            "receipt",
            "receipt-b",
            json!({"merchant": "Kiosk", "total": "1,00"}),
        ),
    ];
    items
        .iter()
        .enumerate()
        .map(|(i, (img, dt, layout, target))| {
            let bytes = std::fs::read(fixtures().join("images").join(img)).unwrap();
            EvalExample::from_image_bytes(
                i.to_string(),
                &bytes,
                "Extract JSON.",
                *dt,
                *layout,
                target.clone(),
            )
        })
        .collect()
}

fn spec() -> EvalSpec {
    let mut s = EvalSpec::default();
    s.decoding.max_new_tokens = 8;
    s.bootstrap.resamples = 50;
    s
}

#[test]
fn random_model_output_scores_as_invalid_json() {
    let m = ModelUnderTest::load(&fixtures().join("tiny"), None, DType::F32).unwrap();
    let mut done = Vec::new();
    let r = m.evaluate(examples(), &spec(), |n| done.push(n)).unwrap();
    assert_eq!(done, [1, 2, 3, 4]);
    assert_eq!(r.examples, 4);
    for d in &r.documents {
        assert!(
            !d.score.json_valid,
            "random model produced valid JSON? {:?}",
            d.raw
        );
        assert!(d.score.invalid_reason.is_some());
        assert!(d.latency_ms > 0.0);
    }
    assert_eq!(r.metrics["json_valid_rate"].value, 0.0);
    assert_eq!(r.metrics["field_exact_match"].value, 0.0);
    assert_eq!(r.metrics["doc_exact_match"].value, 0.0);
    assert!(r.latency_ms_mean > 0.0 && r.throughput_docs_per_s > 0.0);
    assert!(r.breakdown.contains_key("layout=receipt-b"));
    // Greedy decoding: the same answers every time.
    let again = m.evaluate(examples(), &spec(), |_| {}).unwrap();
    let raws = |r: &foundry_eval::EvalReport| {
        r.documents
            .iter()
            .map(|d| d.raw.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(raws(&r), raws(&again));
    assert_eq!(r.metrics, again.metrics);
    // The limit stops early.
    let mut s = spec();
    s.limit = Some(2);
    assert_eq!(m.evaluate(examples(), &s, |_| {}).unwrap().examples, 2);
}

#[test]
fn adapter_is_attached_and_changes_answers() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixtures().join("tiny");
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: TARGETS.into(),
        init: LoraInit::Kaiming,
        use_rslora: false,
        base_model_name_or_path: None,
        revision: None,
    };
    // A fresh PEFT adapter has B = 0 (no effect); give B large values so it matters.
    let mut base = foundry_idefics2::Idefics2::load_dir(&tiny, DType::F32, &Device::Cpu).unwrap();
    let params = attach_new(&mut base, &cfg, 3, None, &Device::Cpu).unwrap();
    assert!(!params.is_empty());
    for p in &params {
        let shape = p.b.as_tensor().shape().clone();
        p.b.set(&Tensor::randn(0f32, 3.0, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    save_adapter(dir.path(), &cfg, &params).unwrap();

    let plain = ModelUnderTest::load(&tiny, None, DType::F32).unwrap();
    let adapted = ModelUnderTest::load(&tiny, Some(dir.path()), DType::F32).unwrap();
    let exs: Vec<EvalExample> = examples().into_iter().map(|e| e.unwrap()).collect();
    let a: Vec<String> = exs.iter().map(|e| plain.answer(e, 8).unwrap()).collect();
    let b: Vec<String> = exs.iter().map(|e| adapted.answer(e, 8).unwrap()).collect();
    assert_ne!(a, b);

    // A missing adapter is a load error, not a panic.
    let err = ModelUnderTest::load(&tiny, Some(&dir.path().join("nope")), DType::F32)
        .err()
        .unwrap();
    assert!(matches!(err, EvalError::Adapter(_)), "{err}");
}

#[test]
fn bad_inputs_are_errors_naming_the_example() {
    let e = EvalExample::from_image_bytes("7", b"not an image", "p", "invoice", "l", json!({}))
        .unwrap_err();
    assert!(e.to_string().contains("example \"7\""), "{e}");
    let m = ModelUnderTest::load(&fixtures().join("tiny"), None, DType::F32).unwrap();
    let mut exs = examples();
    exs.truncate(1);
    exs.push(Err(EvalError::Input("row 2 of test.jsonl: bad".into())));
    let e = m.evaluate(exs, &spec(), |_| {}).unwrap_err();
    assert!(e.to_string().contains("row 2 of test.jsonl"), "{e}");
    assert!(ModelUnderTest::load(&fixtures().join("nope"), None, DType::F32).is_err());
}
