//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use foundry_idefics2::processor::{Processor, RgbImage};
use foundry_idefics2::Idefics2;
use foundry_qlora::data::{encode_chat, ChatExample, Example};
use foundry_qlora::lora::{LoraConfig, LoraInit};
use foundry_qlora::train::{Schedule, TrainConfig};

pub const TARGETS: &str = r".*(text_model|modality_projection|perceiver_resampler).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../idefics2/fixtures/tiny")
}

pub fn tiny() -> Idefics2 {
    Idefics2::load_dir(&tiny_dir(), DType::F32, &Device::Cpu).unwrap()
}

pub fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny_dir().join("golden.safetensors"), &Device::Cpu).unwrap()
}

/// The golden batch inputs: (input_ids u32, pixel_values, pixel_attention_mask).
pub fn golden_batch() -> (Tensor, Tensor, Tensor) {
    let g = golden();
    (
        g["batch.input_ids"].to_dtype(DType::U32).unwrap(),
        g["batch.pixel_values"].clone(),
        g["batch.pixel_attention_mask"].clone(),
    )
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A small chat dataset on the fixture images.
pub fn dataset() -> Vec<Example> {
    let proc = Processor::from_dir(&tiny_dir()).unwrap();
    let img = |n: &str| RgbImage::open(&tiny_dir().join("../images").join(n)).unwrap();
    let items = [
        ("a.png", "what is in this image", "a cat sitting on the mat"),
        ("b.png", "describe the picture", "red green blue square"),
        ("c.png", "how many objects are there", "three"),
        ("d.png", "what colour", "the quick brown fox"),
    ];
    items
        .iter()
        .map(|(i, p, a)| {
            encode_chat(
                &proc,
                &ChatExample {
                    images: vec![img(i)],
                    prompt: p.to_string(),
                    answer: a.to_string(),
                },
            )
            .unwrap()
        })
        .collect()
}

pub fn lora(dropout: f32) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: dropout,
        target_modules: TARGETS.into(),
        init: LoraInit::Kaiming,
        use_rslora: false,
        base_model_name_or_path: Some("ml/idefics2/fixtures/tiny".into()),
        revision: None,
    }
}

pub fn config(total_steps: u64, dropout: f32) -> TrainConfig {
    TrainConfig {
        seed: 42,
        lr: 5e-3,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        max_grad_norm: Some(1.0),
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        total_steps,
        batch_size: 2,
        grad_accum: 2,
        save_every: 2,
        keep_last: 10,
        lora: lora(dropout),
    }
}

/// Max |a - b| over the real (unpadded) positions of the golden batch.
pub fn masked_diff(a: &Tensor, b: &Tensor) -> f32 {
    let mask: Vec<Vec<i64>> = golden()["batch.attention_mask"].to_vec2().unwrap();
    let mut worst = 0f32;
    for (i, row) in mask.iter().enumerate() {
        let n = row.iter().filter(|&&m| m == 1).count();
        let x = a.get(i).unwrap().narrow(0, 0, n).unwrap();
        let y = b.get(i).unwrap().narrow(0, 0, n).unwrap();
        worst = worst.max(max_abs_diff(&x, &y));
    }
    worst
}
