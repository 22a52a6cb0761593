//! Per-step time and peak RSS of a QLoRA step on a model directory, shaped like the PyTorch peer
//! (`../shared/peers/pytorch_idefics2.py`): batch 8, one image per example, 64 image tokens + 64
//! text tokens, loss on every position, LoRA r=8 alpha=16 on the connector and text linears,
//! every linear but lm_head in NF4 with double quantization. Prints one JSON line.
//!
//! `cargo run --release -p foundry-qlora --example bench_step -- DIR [steps] [warmup] [--bf16-products] [--timings]`
//!
//! `--bf16-products` runs the products with the frozen weights in bf16 (AMX or AVX512-BF16), as
//! the peer's `--autocast-bf16` does. `--timings` prints, on stderr, the seconds per measured
//! step spent in each fused op's forward and backward (the rest is candle's own ops, autograd
//! and the optimizer).

use candle_core::{DType, Device, Tensor};
use foundry_idefics2::Idefics2;
use foundry_qlora::data::Example;
use foundry_qlora::lora::{LoraConfig, LoraInit};
use foundry_qlora::train::{Schedule, TrainConfig, Trainer};

/// Counts live heap bytes and their peak, to tell allocator retention from live tensors.
struct CountingAlloc;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        std::alloc::System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Minor page faults of this process so far (each one is a freshly touched page).
fn minor_faults() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    foundry_qlora::tune_allocator();
    let mut args: Vec<String> = std::env::args().collect();
    let bf16 = args.iter().any(|a| a == "--bf16-products");
    let timings = args.iter().any(|a| a == "--timings");
    args.retain(|a| a != "--bf16-products" && a != "--timings");
    let dir = std::path::PathBuf::from(
        args.get(1)
            .ok_or("usage: bench_step DIR [steps] [warmup] [--bf16-products] [--timings]")?,
    );
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let warmup: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let mut model = Idefics2::load_dir(&dir, DType::F32, &Device::Cpu)?;
    let (nq, nparams, bytes) = foundry_qlora::quantize_model(&mut model, r"model\..*")?;
    if bf16 {
        use foundry_idefics2::linear::LinearVisitor;
        model.visit_linears(&mut |l| l.set_products(foundry_kernels::Products::Bf16))?;
    }
    let cfg = &model.config;
    let image = cfg.vision_config.image_size;
    let n_lat = cfg.perceiver_config.resampler_n_latents;
    let vocab = cfg.text_config.vocab_size as u32;
    let image_token = cfg.image_token_id;
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let examples: Vec<Example> = (0..8)
        .map(|_| {
            let mut ids: Vec<u32> = (0..n_lat + 64)
                .map(|_| 10 + next() % (vocab - 10))
                .collect();
            ids[..n_lat].iter_mut().for_each(|v| *v = image_token);
            let labels = ids.iter().map(|&v| v as i64).collect();
            let pv = Tensor::randn(0f32, 1.0, (1, 3, image, image), &Device::Cpu)?;
            let pm = Tensor::ones((1, image, image), DType::U8, &Device::Cpu)?;
            Ok(Example {
                input_ids: ids,
                labels,
                pixel_values: Some(pv),
                pixel_attention_mask: Some(pm),
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let tc = TrainConfig {
        seed: 0,
        lr: 1e-4,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        max_grad_norm: None,
        warmup_steps: 0,
        schedule: Schedule::Constant,
        total_steps: (steps + warmup) as u64,
        batch_size: 8,
        grad_accum: 1,
        save_every: 0,
        keep_last: 1,
        lora: LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: r".*(text_model|modality_projection|perceiver_resampler).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$".into(),
            init: LoraInit::Gaussian,
            use_rslora: false,
            base_model_name_or_path: None,
            revision: None,
        },
    };
    let stats = foundry_qlora::plan::DatasetStats::from_source(&examples)?;
    let estimate =
        foundry_qlora::plan::plan(&tc, &model.config, Some(r"model\..*"), &stats, DType::F32)?
            .memory;
    let live_before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
    let mut t = Trainer::new(model, tc)?;
    let mut times = Vec::new();
    eprintln!(
        "ready: live heap {:.0} MiB, peak heap {:.0} MiB, peak RSS {} MiB",
        mib(LIVE.load(std::sync::atomic::Ordering::Relaxed)),
        mib(PEAK.load(std::sync::atomic::Ordering::Relaxed)),
        peak_rss_mib()
    );
    for i in 0..steps + warmup {
        PEAK.store(
            LIVE.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        if timings && i == warmup {
            foundry_kernels::timing::enable();
        }
        let f0 = minor_faults();
        let t0 = std::time::Instant::now();
        let m = t.train_step(&examples)?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "step {} loss {:.4} {:.3} s, peak heap {:.0} MiB, {} page faults",
            m.step,
            m.loss,
            dt,
            mib(PEAK.load(std::sync::atomic::Ordering::Relaxed)),
            minor_faults() - f0
        );
        if i >= warmup {
            times.push(dt);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    if timings {
        let mut rows = foundry_kernels::timing::take();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let per_step = |s: f64| s / times.len().max(1) as f64;
        let fused: f64 = rows
            .iter()
            .filter(|r| !r.0.starts_with("step:"))
            .map(|r| per_step(r.2))
            .sum();
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        eprintln!("seconds per step in the fused ops ({fused:.3} of {mean:.3}):");
        for (op, pass, secs, calls) in rows {
            eprintln!(
                "  {op:<28} {pass:<9?} {:.4} s  {:>5} calls",
                per_step(secs),
                calls / times.len().max(1) as u64
            );
        }
    }
    eprintln!(
        "plan's estimate: activations {:.0} MiB, total {:.0} MiB; measured: peak live heap {:.0} MiB ({:.0} MiB above the loaded model)",
        mib(estimate.activations as usize),
        mib(estimate.total as usize),
        mib(PEAK.load(std::sync::atomic::Ordering::Relaxed)),
        mib(PEAK.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(live_before)),
    );
    println!(
        "{{\"method\": \"qlora\", \"bf16_products\": {bf16}, \"median_step_s\": {:.4}, \"peak_rss_mib\": {}, \"nf4_linears\": {nq}, \"nf4_bits_per_param\": {:.4}, \"threads\": \"{}\"}}",
        times[times.len() / 2],
        peak_rss_mib(),
        8.0 * bytes as f64 / nparams as f64,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    Ok(())
}
