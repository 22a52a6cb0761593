//! Export: the bnb-4bit folder writer (against the transformers-saved fixture and through a
//! round trip), LoRA merging into a dense folder, and the optional transformers / PEFT check
//! (tools/fixtures/check_qlora_export.py, run when FOUNDRY_PYTHON is set).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use foundry_idefics2::linear::LinearVisitor;
use foundry_idefics2::Idefics2;
use foundry_kernels::BaseWeight;
use foundry_qlora::export::{self, merge_adapter_dir, save_bnb_dir, save_dense_dir, MergeOnto};
use foundry_qlora::nf4::{Nf4Tensor, Nf4Weight};
use foundry_qlora::{load_bnb_dir, lora, quantize_model};

fn logits_of(model: &Idefics2) -> Tensor {
    let (ids, pv, pm) = golden_batch();
    model.forward(&ids, Some(&pv), Some(&pm)).unwrap()
}

fn load(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn nf4_of(model: &mut Idefics2) -> HashMap<String, Nf4Tensor> {
    let mut out = HashMap::new();
    model
        .visit_linears(&mut |l| {
            if let BaseWeight::Frozen(f) = l.base() {
                let w = f.as_any().unwrap().downcast_ref::<Nf4Weight>().unwrap();
                out.insert(l.name().to_string(), w.tensor.clone());
            }
            Ok(())
        })
        .unwrap();
    out
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs tools/fixtures/check_qlora_export.py with $FOUNDRY_PYTHON (a Python with torch,
/// transformers and bitsandbytes); only the ignored transformers test calls it, and it fails
/// when that Python is not given.
fn python_check(args: &[String]) {
    let py = std::env::var("FOUNDRY_PYTHON").expect(
        "FOUNDRY_PYTHON must name a Python with torch, transformers and bitsandbytes for this test",
    );
    let out = std::process::Command::new(py)
        .arg(repo_root().join("tools/fixtures/check_qlora_export.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("python check: {stdout}");
    assert!(
        out.status.success(),
        "python check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments of one transformers check, kept for the test that runs them.
fn check_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
#[ignore = "needs FOUNDRY_PYTHON: a Python with torch, transformers and bitsandbytes (tools/fixtures)"]
fn exported_folders_load_in_transformers_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut checks = bnb_round_trip(&tmp.path().join("a"));
    checks.extend(partly_quantized(&tmp.path().join("b")));
    checks.extend(merged_adapter(&tmp.path().join("c")));
    assert_eq!(checks.len(), 3, "{checks:?}");
    for args in &checks {
        python_check(args);
    }
}

#[test]
fn bnb_folder_matches_what_transformers_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-bnb-4bit");
    let mut model = tiny();
    let (n, _, _) = quantize_model(&mut model, r"model\..*").unwrap();
    assert_eq!(n, 43);
    let info = save_bnb_dir(&mut model, &tiny_dir(), &out).unwrap();
    assert_eq!((info.nf4_linears, info.dense_linears), (43, 1));
    // Every tensor transformers + bitsandbytes saved for the same model is here, with the same
    // dtype, shape and bytes (the quant-state JSON included), and nothing else.
    let want = load(&fixtures().join("tiny-bnb-4bit/model.safetensors"));
    let got = load(&out.join("model.safetensors"));
    let mut wk: Vec<&String> = want.keys().collect();
    let mut gk: Vec<&String> = got.keys().collect();
    wk.sort();
    gk.sort();
    assert_eq!(gk, wk);
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!((g.dtype(), g.dims()), (w.dtype(), w.dims()), "{k}");
        assert_eq!(bytes_of(g), bytes_of(w), "{k}: bytes differ");
    }
    let same_file = std::fs::read(out.join("model.safetensors")).unwrap()
        == std::fs::read(fixtures().join("tiny-bnb-4bit/model.safetensors")).unwrap();
    println!("model.safetensors byte-identical to transformers': {same_file}");
    // config.json: the source's, with transformers' quantization_config.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let want_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-bnb-4bit/config.json")).unwrap(),
    )
    .unwrap();
    for k in [
        "quantization_config",
        "text_config",
        "vision_config",
        "perceiver_config",
        "dtype",
    ] {
        assert_eq!(cfg[k], want_cfg[k], "config.json {k}");
    }
    // Tokenizer and processor files came along.
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let names: Vec<&str> = info.files.iter().map(|f| f.path.as_str()).collect();
    assert!(names.contains(&"model.safetensors") && names.contains(&"config.json"));
}

#[test]
fn bnb_folder_round_trips_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    bnb_round_trip(tmp.path());
}

/// The body of `bnb_folder_round_trips_and_loads_in_transformers`; returns the transformers checks of what it wrote.
fn bnb_round_trip(tmp: &Path) -> Vec<Vec<String>> {
    std::fs::create_dir_all(tmp).unwrap();
    let mut checks = Vec::new();
    let out = tmp.join("exported-bnb-4bit");
    let mut model = tiny();
    quantize_model(&mut model, r"model\..*").unwrap();
    let before = logits_of(&model);
    save_bnb_dir(&mut model, &tiny_dir(), &out).unwrap();
    let (mut back, n) = load_bnb_dir(&out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(n, 43);
    let (a, b) = (nf4_of(&mut model), nf4_of(&mut back));
    assert_eq!(a.len(), 43);
    assert_eq!(a, b, "NF4 state differs after write + load");
    let after = logits_of(&back);
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    // Saving the loaded folder again gives the same tensors (bnb source → bnb output).
    let again = tmp.join("again");
    save_bnb_dir(&mut back, &out, &again).unwrap();
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );
    let lp = tmp.join("logits.safetensors");
    foundry_qlora::checkpoint::write_safetensors(&lp, &[("logits".into(), after)]).unwrap();
    checks.push(check_args(&[
        "bnb",
        out.to_str().unwrap(),
        lp.to_str().unwrap(),
    ]));
    checks
}

#[test]
fn a_partly_quantized_model_lists_its_dense_linears() {
    let tmp = tempfile::tempdir().unwrap();
    partly_quantized(tmp.path());
}

/// The body of `a_partly_quantized_model_lists_its_dense_linears`; returns the transformers checks of what it wrote.
fn partly_quantized(tmp: &Path) -> Vec<Vec<String>> {
    std::fs::create_dir_all(tmp).unwrap();
    let mut checks = Vec::new();
    let out = tmp.join("text-only-bnb-4bit");
    let mut model = tiny();
    let (n, _, _) = quantize_model(&mut model, r"model\.text_model\..*").unwrap();
    let before = logits_of(&model);
    let info = save_bnb_dir(&mut model, &tiny_dir(), &out).unwrap();
    assert_eq!(info.nf4_linears, n);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let skip = cfg["quantization_config"]["llm_int8_skip_modules"]
        .as_array()
        .unwrap();
    assert_eq!(
        skip.len(),
        44 - n,
        "every dense linear is listed, lm_head too"
    );
    assert!(skip.iter().any(|s| s == "lm_head"));
    let (back, m) = load_bnb_dir(&out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m, n);
    assert_eq!(max_abs_diff(&before, &logits_of(&back)), 0.0);
    let lp = tmp.join("logits.safetensors");
    foundry_qlora::checkpoint::write_safetensors(&lp, &[("logits".into(), before)]).unwrap();
    checks.push(check_args(&[
        "bnb",
        out.to_str().unwrap(),
        lp.to_str().unwrap(),
    ]));
    checks
}

#[test]
fn export_refuses_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = tiny();
    // Nothing quantized: no bnb folder.
    let e = save_bnb_dir(&mut model, &tiny_dir(), &tmp.path().join("a"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no NF4 linear"), "{e}");
    // An attached adapter must be merged or detached first.
    lora::load_adapter_into(&mut model, &fixtures().join("peft_adapter")).unwrap();
    let e = save_dense_dir(&mut model, &tiny_dir(), &tmp.path().join("b"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attached LoRA adapter"), "{e}");
    // A non-empty output folder is never overwritten.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("x"), b"x").unwrap();
    let mut plain = tiny();
    let e = save_dense_dir(&mut plain, &tiny_dir(), &busy, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    let e = save_dense_dir(&mut plain, &tiny_dir(), &tmp.path().join("c"), DType::U8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32, bf16 or f16"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn merged_adapter_gives_the_adapted_logits() {
    let tmp = tempfile::tempdir().unwrap();
    merged_adapter(tmp.path());
}

/// The body of `merged_adapter_gives_the_adapted_logits`; returns the transformers checks of what it wrote.
fn merged_adapter(tmp: &Path) -> Vec<Vec<String>> {
    std::fs::create_dir_all(tmp).unwrap();
    let mut checks = Vec::new();
    let adapter = fixtures().join("peft_adapter");
    // Dense base.
    let mut model = tiny();
    lora::load_adapter_into(&mut model, &adapter).unwrap();
    let adapted = logits_of(&model);
    let out = tmp.join("merged");
    let (info, n) = merge_adapter_dir(
        &tiny_dir(),
        &adapter,
        &out,
        DType::F32,
        MergeOnto::Loaded,
        false,
    )
    .unwrap();
    assert_eq!((n, info.nf4_linears, info.dense_linears), (31, 0, 44));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("quantization_config").is_none());
    let merged = Idefics2::load_dir(&out, DType::F32, &Device::Cpu).unwrap();
    let got = logits_of(&merged);
    let d = masked_diff(&got, &adapted);
    println!("merged (dense base) vs base + adapter: {d:.2e}");
    assert!(d < 1e-4, "{d}");
    assert!(masked_diff(&got, &logits_of(&tiny())) > 0.1);
    let lp = tmp.join("logits.safetensors");
    foundry_qlora::checkpoint::write_safetensors(&lp, &[("logits".into(), got)]).unwrap();
    checks.push(check_args(&[
        "merged",
        out.to_str().unwrap(),
        lp.to_str().unwrap(),
        tiny_dir().to_str().unwrap(),
        adapter.to_str().unwrap(),
    ]));

    // NF4 base (the transformers-saved bnb folder): merged = dequant(W) + scale·B·A.
    let bnb = fixtures().join("tiny-bnb-4bit");
    let (mut qmodel, _) = load_bnb_dir(&bnb, DType::F32, &Device::Cpu).unwrap();
    lora::load_adapter_into(&mut qmodel, &adapter).unwrap();
    let q_adapted = logits_of(&qmodel);
    let qout = tmp.join("merged-from-nf4");
    let (qinfo, qn) =
        merge_adapter_dir(&bnb, &adapter, &qout, DType::F32, MergeOnto::Loaded, false).unwrap();
    assert_eq!((qn, qinfo.nf4_linears), (31, 0));
    let qmerged = Idefics2::load_dir(&qout, DType::F32, &Device::Cpu).unwrap();
    let d = masked_diff(&logits_of(&qmerged), &q_adapted);
    println!("merged (NF4 base) vs NF4 base + adapter: {d:.2e}");
    assert!(d < 1e-4, "{d}");

    // bf16 export: every tensor bf16, loads, logits close.
    let bout = tmp.join("merged-bf16");
    merge_adapter_dir(
        &tiny_dir(),
        &adapter,
        &bout,
        DType::BF16,
        MergeOnto::Loaded,
        false,
    )
    .unwrap();
    let st = load(&bout.join("model.safetensors"));
    assert!(st.values().all(|t| t.dtype() == DType::BF16));
    let bm = Idefics2::load_dir(&bout, DType::F32, &Device::Cpu).unwrap();
    let d = masked_diff(&logits_of(&bm), &adapted);
    println!("merged bf16 vs f32 adapted: {d:.2e}");
    // bf16 rounding of every weight of a random tiny model moves its logits by about 0.1.
    assert!(d < 0.25, "{d}");
    assert!(export::is_bnb_dir(&bnb).unwrap() && !export::is_bnb_dir(&bout).unwrap());
    checks
}
