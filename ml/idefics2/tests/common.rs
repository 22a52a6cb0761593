//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn golden(config: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(config).join("golden.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn golden_json(config: &str) -> serde_json::Value {
    let s = std::fs::read_to_string(fixtures().join(config).join("golden.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

pub fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
