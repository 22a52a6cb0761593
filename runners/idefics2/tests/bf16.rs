//! bf16 products (AVX512-BF16) in the linear kernels: close to the f32 result, gradients too.

use candle_core::{Device, Tensor, Var};
use foundry_idefics2::kernels::{self, FrozenSource, Products};
use foundry_idefics2::linear::{BaseWeight, SeamLinear};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-6)
}

/// Output and gradients of the LoRA and frozen linears, f32 or bf16 products.
fn run(bf16: bool) -> Vec<Tensor> {
    let products = if bf16 { Products::Bf16 } else { Products::F32 };
    let (m, k, n, r) = (70, 96, 80, 8);
    let w = rand(&[n, k], 1);
    let xv = Var::from_tensor(&rand(&[m, k], 2)).unwrap();
    let av = Var::from_tensor(&rand(&[r, k], 3)).unwrap();
    let bv = Var::from_tensor(&rand(&[n, r], 4)).unwrap();
    let y = kernels::lora_linear(
        xv.as_tensor(),
        av.as_tensor(),
        bv.as_tensor(),
        FrozenSource::Dense(w.clone()),
        2.0,
        None,
        products,
    )
    .unwrap();
    let z = kernels::frozen_linear_with(&y, FrozenSource::Dense(rand(&[40, n], 5)), None, products)
        .unwrap();
    let g = (z.sqr().unwrap()).sum_all().unwrap().backward().unwrap();
    let mut out = vec![z];
    for v in [&xv, &av, &bv] {
        out.push(g.get(v.as_tensor()).unwrap().clone());
    }
    out
}

#[test]
fn bf16_products_stay_close_to_f32() {
    if !foundry_idefics2::bf16gemm::available() {
        let mut l = SeamLinear::new("l", BaseWeight::Dense(rand(&[4, 4], 1)), None);
        assert!(
            l.set_products(Products::Bf16).is_err(),
            "refused without AVX512-BF16"
        );
        println!("skip: this CPU has no AVX512-BF16");
        return;
    }
    let f = run(false);
    let b = run(true);
    for (name, (x, y)) in ["output", "dx", "dA", "dB"].iter().zip(b.iter().zip(&f)) {
        let d = rel_diff(x, y);
        println!("{name}: bf16 vs f32 relative difference {d:.1e}");
        // bf16 keeps 8 significant bits: a few 1e-3 relative through two products.
        assert!(d < 2e-2, "{name}: bf16 products differ from f32 by {d}");
        assert!(
            d > 0.0,
            "{name}: identical to f32, so the bf16 path did not run"
        );
    }
}
