//! Forward pass and per-generated-token time on the "small" Idefics2 config.
//!
//! The weights come from `tools/bench/idefics2_forward.py` (it creates them on first run):
//! `IDEFICS2_BENCH_DIR=/tmp/foundry-idefics2-small RAYON_NUM_THREADS=2 cargo bench -p foundry-idefics2`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use foundry_idefics2::{GenerationConfig, Idefics2};

const NEW_TOKENS: usize = 32;

fn setup() -> Option<(Idefics2, Tensor, Tensor, Tensor)> {
    let dir = PathBuf::from(
        std::env::var("IDEFICS2_BENCH_DIR")
            .unwrap_or_else(|_| "/tmp/foundry-idefics2-small".to_string()),
    );
    if !dir.join("config.json").exists() {
        eprintln!(
            "no bench model in {}: run tools/bench/idefics2_forward.py first (it writes the weights)",
            dir.display()
        );
        return None;
    }
    let model = Idefics2::load_dir(&dir, DType::F32, &Device::Cpu).ok()?;
    let inputs =
        candle_core::safetensors::load(dir.join("bench_inputs.safetensors"), &Device::Cpu).ok()?;
    let ids = inputs.get("input_ids")?.to_dtype(DType::U32).ok()?;
    let pv = inputs.get("pixel_values")?.clone();
    let pm = inputs.get("pixel_attention_mask")?.clone();
    Some((model, ids, pv, pm))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let Some((model, ids, pv, pm)) = setup() else {
        return;
    };
    let prompt: Vec<u32> = ids.squeeze(0).and_then(|t| t.to_vec1()).unwrap_or_default();
    let gen = |n: usize| {
        let cfg = GenerationConfig {
            max_new_tokens: n,
            ..Default::default()
        };
        model
            .generate(&prompt, Some(&pv), Some(&pm), &cfg)
            .map(|v| v.len())
    };
    // A direct measurement of the per-token figure, printed for the README.
    let time = |f: &dyn Fn(), n: usize| {
        f();
        median(
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let fwd = time(&|| drop(model.forward(&ids, Some(&pv), Some(&pm))), 10);
    let pre = time(&|| drop(gen(1)), 10);
    let full = time(&|| drop(gen(NEW_TOKENS + 1)), 3);
    println!(
        "{{\"impl\": \"foundry-candle\", \"forward_ms\": {:.2}, \"prefill_ms\": {:.2}, \"per_token_ms\": {:.3}}}",
        fwd * 1e3,
        pre * 1e3,
        (full - pre) / NEW_TOKENS as f64 * 1e3
    );
    let mut g = c.benchmark_group("idefics2_small");
    g.sample_size(10);
    g.bench_function("forward", |b| {
        b.iter(|| model.forward(&ids, Some(&pv), Some(&pm)))
    });
    g.bench_function("generate_1_token", |b| b.iter(|| gen(1)));
    g.bench_function("generate_33_tokens", |b| b.iter(|| gen(NEW_TOKENS + 1)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
