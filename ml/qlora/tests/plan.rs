//! Dry-run planning against the real tiny model: the config-derived linear shapes, parameter
//! counts, NF4 bytes and LoRA sizes equal what loading, quantizing and attaching give; the
//! two-step rehearsal trains and leaves nothing behind.

mod common;

use candle_core::{DType, Device};
use common::*;
use foundry_idefics2::linear::LinearVisitor;
use foundry_qlora::plan::{dry_run, linear_shapes, other_params, plan, DatasetStats};
use foundry_qlora::{lora, quantize_model};

#[test]
fn config_derived_shapes_and_counts_equal_the_loaded_model() {
    let mut model = tiny();
    let shapes = linear_shapes(&model.config);
    let mut seen = Vec::new();
    model
        .visit_linears(&mut |l| {
            let (o, i) = l.shape();
            seen.push((l.name().to_string(), o, i));
            Ok(())
        })
        .unwrap();
    let planned: Vec<(String, usize, usize)> = shapes
        .iter()
        .map(|s| (s.name.clone(), s.out, s.inp))
        .collect();
    assert_eq!(planned, seen);
    // Every parameter of the checkpoint is a linear weight or one of the "other" parameters.
    let st =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let total: usize = st.values().map(|t| t.elem_count()).sum();
    let linear: usize = shapes.iter().map(|s| s.out * s.inp).sum();
    assert_eq!(linear + other_params(&model.config), total);
}

#[test]
fn plan_counts_steps_tokens_and_memory_parts() {
    let data = dataset();
    let stats = DatasetStats::from_source(&data).unwrap();
    assert_eq!(stats.examples, 4);
    assert_eq!(
        stats.tokens,
        data.iter().map(|e| e.input_ids.len() as u64).sum::<u64>()
    );
    assert!(stats.answer_tokens > 0 && stats.max_images == 1);
    let cfg = config(10, 0.1); // batch 2 x accum 2
    let mut model = tiny();
    let p = plan(&cfg, &model.config, Some(r"model\..*"), &stats, DType::F32).unwrap();
    assert_eq!((p.optimizer_steps, p.examples), (10, 40));
    assert!((p.epochs - 10.0).abs() < 1e-12);
    assert_eq!(p.tokens, 10 * stats.tokens);
    assert_eq!(p.answer_tokens, 10 * stats.answer_tokens);
    // NF4 bytes, linears and LoRA sizes: what quantizing and attaching really give.
    let (n, _, bytes) = quantize_model(&mut model, r"model\..*").unwrap();
    assert_eq!((p.nf4_linears, p.memory.nf4_weights), (n, bytes as u64));
    let params = lora::attach_new(&mut model, &cfg.lora, 0, None, &Device::Cpu).unwrap();
    let lp: usize = params
        .iter()
        .map(|p| p.a.elem_count() + p.b.elem_count())
        .sum();
    assert_eq!((p.lora_modules, p.lora_params), (params.len(), lp as u64));
    let m = &p.memory;
    assert_eq!(m.adam_moments, 2 * m.lora_params);
    assert_eq!(
        m.total,
        m.nf4_weights
            + m.dense_weights
            + m.lora_params
            + m.lora_grads
            + m.adam_moments
            + m.activations
            + m.dequant_transient
    );
    assert!(m.activations > 0);
    println!(
        "plan on the tiny model: {}",
        serde_json::to_string(&p).unwrap()
    );
    // Longer sequences and bigger batches need more activation memory; bf16 halves it.
    let mut big = cfg.clone();
    big.batch_size = 8;
    let pb = plan(&big, &model.config, Some(r"model\..*"), &stats, DType::F32).unwrap();
    assert!(pb.memory.activations > 3 * m.activations);
    let ph = plan(&cfg, &model.config, Some(r"model\..*"), &stats, DType::BF16).unwrap();
    assert_eq!(2 * ph.memory.activations, m.activations);
    // Without quantization the base weights are dense.
    let pd = plan(&cfg, &model.config, None, &stats, DType::F32).unwrap();
    assert_eq!((pd.nf4_linears, pd.memory.nf4_weights), (0, 0));
    assert_eq!(pd.memory.dense_weights, 4 * pd.base_params);
    // Mistakes are reported.
    let mut bad = cfg.clone();
    bad.lora.target_modules = "nothing_matches".into();
    let e = plan(&bad, &model.config, None, &stats, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no linear"), "{e}");
    let empty = DatasetStats {
        examples: 0,
        ..stats.clone()
    };
    assert!(plan(&cfg, &model.config, None, &empty, DType::F32).is_err());
}

#[test]
fn dry_run_trains_two_steps_and_leaves_nothing() {
    let data = dataset();
    let before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("foundry-dry-run"))
        .collect();
    let mut cfg = config(100, 0.1);
    cfg.warmup_steps = 0;
    let model = tiny();
    let r = dry_run(model, &cfg, &data, 2).unwrap();
    assert_eq!(r.examples_used, 2);
    assert_eq!(r.steps.len(), 2);
    assert_eq!(
        r.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(r.steps.iter().all(|s| s.loss.is_finite() && s.loss > 0.0));
    assert!(r.steps[1].grad_norm > 0.0);
    let names: Vec<&str> = r.checkpoint_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "trainer_state.json"
        ]
    );
    let after: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("foundry-dry-run"))
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "the dry run left a folder behind"
    );
    // A target regex that matches nothing fails before any step.
    let mut bad = cfg.clone();
    bad.lora.target_modules = "nothing".into();
    assert!(dry_run(tiny(), &bad, &data, 2).is_err());
}
