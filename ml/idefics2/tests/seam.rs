//! The linear seam: names, PEFT-style targeting, LoRA attachment and gradients.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use foundry_idefics2::linear::{LinearVisitor, LoraAdapter};
use foundry_idefics2::Idefics2;
use foundry_kernels::{BaseWeight, FrozenWeight};

const PEFT_TARGETS: &str = r".*(text_model|modality_projection|perceiver_resampler).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$";

fn load() -> Idefics2 {
    Idefics2::load_dir(&fixtures().join("tiny"), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn every_linear_has_its_transformers_name() {
    let mut m = load();
    let names = m.linear_names().unwrap();
    // vision: 2 layers × 6, connector: 3 + 2 × 7, text: 2 × 7, lm_head.
    assert_eq!(names.len(), 12 + 17 + 14 + 1);
    for n in [
        "model.vision_model.encoder.layers.0.self_attn.q_proj",
        "model.vision_model.encoder.layers.1.mlp.fc2",
        "model.connector.modality_projection.gate_proj",
        "model.connector.perceiver_resampler.layers.1.self_attn.k_proj",
        "model.connector.perceiver_resampler.layers.0.mlp.down_proj",
        "model.text_model.layers.0.self_attn.q_proj",
        "model.text_model.layers.1.mlp.up_proj",
        "lm_head",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n}");
    }
    // Each name is a real weight in the checkpoint.
    let st =
        candle_core::safetensors::load(fixtures().join("tiny/model.safetensors"), &Device::Cpu)
            .unwrap();
    for n in &names {
        assert!(
            st.contains_key(&format!("{n}.weight")),
            "{n}.weight not in checkpoint"
        );
    }
    // The tutorial's PEFT regex selects connector + text linears (not vision, not lm_head).
    let hit = m.for_each_matching(PEFT_TARGETS, &mut |_| Ok(())).unwrap();
    assert_eq!(hit, 17 + 14);
}

fn attach(m: &mut Idefics2, b_scale: f64, vars: &mut Vec<Var>) {
    m.for_each_matching(PEFT_TARGETS, &mut |l| {
        let (out, inp) = l.shape();
        let a = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (4, inp), &Device::Cpu)? * 0.1)?)?;
        let b = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (out, 4), &Device::Cpu)? * b_scale)?)?;
        l.attach_lora(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 2.0,
            dropout: 0.0,
            training: false,
            rng: None,
        })?;
        vars.push(a);
        vars.push(b);
        Ok(())
    })
    .unwrap();
}

#[test]
fn zero_lora_is_a_no_op_and_nonzero_lora_changes_logits() {
    let g = golden("tiny");
    let ids = ids_u32(&g["gen0.input_ids"]);
    let (pv, pm) = (&g["gen0.pixel_values"], &g["gen0.pixel_attention_mask"]);
    let mut m = load();
    let base = m.forward(&ids, Some(pv), Some(pm)).unwrap();
    let mut vars = Vec::new();
    attach(&mut m, 0.0, &mut vars);
    let same = m.forward(&ids, Some(pv), Some(pm)).unwrap();
    assert!(max_abs_diff(&base, &same) < 1e-6);
    let mut m2 = load();
    attach(&mut m2, 0.1, &mut Vec::new());
    let moved = m2.forward(&ids, Some(pv), Some(pm)).unwrap();
    assert!(max_abs_diff(&base, &moved) > 1e-3);
}

#[test]
fn every_lora_var_gets_a_nonzero_gradient() {
    let g = golden("tiny");
    let ids = ids_u32(&g["gen0.input_ids"]);
    let (pv, pm) = (&g["gen0.pixel_values"], &g["gen0.pixel_attention_mask"]);
    let mut m = load();
    let mut vars = Vec::new();
    attach(&mut m, 0.1, &mut vars);
    let logits = m.forward(&ids, Some(pv), Some(pm)).unwrap();
    let loss = Idefics2::log_softmax(&logits)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let gr = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("var {i} has no gradient"));
        let norm = gr
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "var {i} has a zero gradient");
    }
}

#[derive(Debug)]
struct Scaled(Tensor);

impl FrozenWeight for Scaled {
    fn dequantize(&self, dtype: DType, _device: &Device) -> candle_core::Result<Tensor> {
        self.0.to_dtype(dtype)
    }
    fn shape(&self) -> (usize, usize) {
        self.0.dims2().unwrap_or((0, 0))
    }
}

#[test]
fn frozen_base_weight_plugs_into_the_seam() {
    let g = golden("tiny");
    let ids = ids_u32(&g["gen0.input_ids"]);
    let (pv, pm) = (&g["gen0.pixel_values"], &g["gen0.pixel_attention_mask"]);
    let mut m = load();
    let base = m.forward(&ids, Some(pv), Some(pm)).unwrap();
    m.visit_linears(&mut |l| {
        let w = l.dense_weight(DType::F32, &Device::Cpu)?;
        l.set_base(BaseWeight::Frozen(std::sync::Arc::new(Scaled(w))))
    })
    .unwrap();
    let frozen = m.forward(&ids, Some(pv), Some(pm)).unwrap();
    assert_eq!(max_abs_diff(&base, &frozen), 0.0);
}
