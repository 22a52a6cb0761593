//! The fast kernels: forward equal to the composed candle ops, backward checked against candle's
//! autograd of the composed ops and against central finite differences.

use candle_core::{DType, Device, Tensor, Var, D};
use foundry_idefics2::kernels::{self, FrozenSource};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values in [-1, 1).
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
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

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Checks `f` against `reference` (forward and autograd), and against finite differences of
/// `sum(f(x) * r)` at a few coordinates.
fn check(
    name: &str,
    x: Tensor,
    f: &dyn Fn(&Tensor) -> Tensor,
    reference: &dyn Fn(&Tensor) -> Tensor,
) {
    let xv = Var::from_tensor(&x).unwrap();
    let y = f(xv.as_tensor());
    let r = rand(y.dims(), 99);
    let yr = reference(xv.as_tensor());
    let fwd = max_diff(&y, &yr);
    assert!(fwd < 1e-5, "{name}: forward differs by {fwd}");
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g.get(xv.as_tensor()).expect("no gradient").clone();
    let gr = (yr * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = gr.get(xv.as_tensor()).unwrap().clone();
    let bwd = max_diff(&g, &gr) / max_abs(&gr).max(1e-6);
    assert!(
        bwd < 1e-4,
        "{name}: backward differs from autograd by {bwd} (relative)"
    );
    // Central differences in f64 on the composed reference's inputs.
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let gs = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eps = 1e-2f32;
    let mut worst = 0f32;
    for k in (0..xs.len()).step_by((xs.len() / 13).max(1)) {
        let eval = |d: f32| {
            let mut v = xs.clone();
            v[k] += d;
            let t = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
            (f(&t) * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let num = ((eval(eps) - eval(-eps)) / (2.0 * eps as f64)) as f32;
        worst = worst.max((num - gs[k]).abs() / (1.0 + num.abs()));
    }
    assert!(worst < 2e-2, "{name}: finite differences differ by {worst}");
    println!("{name}: forward {fwd:.1e}, backward vs autograd {bwd:.1e}, vs finite differences {worst:.1e}");
}

#[test]
fn softmax_gradient() {
    check(
        "softmax",
        (rand(&[3, 5, 17], 1) * 3.0).unwrap(),
        &|x| kernels::softmax_last_dim(x).unwrap(),
        &|x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
    );
    // Large enough to take the parallel path.
    check(
        "softmax (parallel)",
        rand(&[64, 300], 2),
        &|x| kernels::softmax_last_dim(x).unwrap(),
        &|x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
    );
}

#[test]
fn rms_norm_gradient() {
    check(
        "rms_norm",
        rand(&[4, 6, 32], 3),
        &|x| kernels::rms_normalize(x, 1e-5).unwrap(),
        &|x| {
            let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            x.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
        },
    );
}

#[test]
fn layer_norm_gradient() {
    check(
        "layer_norm",
        (rand(&[4, 6, 32], 4) + 0.3).unwrap(),
        &|x| kernels::layer_normalize(x, 1e-6).unwrap(),
        &|x| {
            let m = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&m).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            xc.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
                .unwrap()
        },
    );
}

#[test]
fn rope_gradient() {
    let (s, d) = (7, 16);
    let pos = Tensor::arange(0f32, s as f32, &Device::Cpu)
        .unwrap()
        .reshape((s, 1))
        .unwrap();
    let inv = rand(&[1, d / 2], 5).abs().unwrap();
    let f = pos.broadcast_mul(&inv).unwrap();
    let (cos, sin) = (f.cos().unwrap(), f.sin().unwrap());
    check(
        "rope",
        rand(&[2, 3, s, d], 6),
        &|x| kernels::rope(x, &cos, &sin).unwrap(),
        &|x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin).unwrap(),
    );
}

#[test]
fn frozen_linear_gives_input_gradient_only() {
    let w = rand(&[24, 40], 7);
    check(
        "frozen_linear",
        rand(&[9, 40], 8),
        &|x| kernels::frozen_linear(x, FrozenSource::Dense(w.clone())).unwrap(),
        &|x| x.matmul(&w.t().unwrap()).unwrap(),
    );
    // A weight that is a Var still receives no gradient through the frozen op.
    let wv = Var::from_tensor(&w).unwrap();
    let xv = Var::from_tensor(&rand(&[9, 40], 9)).unwrap();
    let y = kernels::frozen_linear(xv.as_tensor(), FrozenSource::Dense(wv.as_tensor().clone()))
        .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(xv.as_tensor()).is_some());
    assert!(
        g.get(wv.as_tensor()).is_none(),
        "the frozen weight got a gradient"
    );
}
