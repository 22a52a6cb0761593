//! The fast kernels: forward equal to the composed candle ops, backward checked against candle's
//! autograd of the composed ops and against central finite differences.

use candle_core::{DType, Device, Tensor, Var, D};
use foundry_kernels::{activation, attention, linear, loss, norm};
use foundry_kernels::{BaseWeight, Products};

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
    // Relative to the output's scale: the fused ops sum in their own order.
    let fwd = max_diff(&y, &yr) / max_abs(&yr).max(1.0);
    assert!(fwd < 1e-5, "{name}: forward differs by {fwd} (relative)");
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
        &|x| attention::softmax_last_dim(x).unwrap(),
        &|x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
    );
    // Large enough to take the parallel path.
    check(
        "softmax (parallel)",
        rand(&[64, 300], 2),
        &|x| attention::softmax_last_dim(x).unwrap(),
        &|x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
    );
}

#[test]
fn rms_norm_gradient() {
    check(
        "rms_norm",
        rand(&[4, 6, 32], 3),
        &|x| norm::rms_normalize(x, 1e-5).unwrap(),
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
        &|x| norm::layer_normalize(x, 1e-6).unwrap(),
        &|x| {
            let m = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&m).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            xc.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
                .unwrap()
        },
    );
}

/// RoPE tables `[s, d / 2]` (cos, sin) with random positive frequencies.
fn rope_tables(s: usize, d: usize, seed: u64) -> (Tensor, Tensor) {
    let pos = Tensor::arange(0f32, s as f32, &Device::Cpu)
        .unwrap()
        .reshape((s, 1))
        .unwrap();
    let inv = rand(&[1, d / 2], seed).abs().unwrap();
    let f = pos.broadcast_mul(&inv).unwrap();
    (f.cos().unwrap(), f.sin().unwrap())
}

#[test]
fn rope_gradient() {
    let (s, d) = (7, 16);
    let (cos, sin) = rope_tables(s, d, 5);
    check(
        "rope",
        rand(&[2, 3, s, d], 6),
        &|x| attention::rope(x, &cos, &sin).unwrap(),
        &|x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin).unwrap(),
    );
}

#[test]
fn frozen_linear_gives_input_gradient_only() {
    let w = rand(&[24, 40], 7);
    check(
        "frozen_linear",
        rand(&[9, 40], 8),
        &|x| linear::frozen_linear(x, BaseWeight::Dense(w.clone())).unwrap(),
        &|x| x.matmul(&w.t().unwrap()).unwrap(),
    );
    // A weight that is a Var still receives no gradient through the frozen op.
    let wv = Var::from_tensor(&w).unwrap();
    let xv = Var::from_tensor(&rand(&[9, 40], 9)).unwrap();
    let y =
        linear::frozen_linear(xv.as_tensor(), BaseWeight::Dense(wv.as_tensor().clone())).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(xv.as_tensor()).is_some());
    assert!(
        g.get(wv.as_tensor()).is_none(),
        "the frozen weight got a gradient"
    );
}

/// The composed reference of the fused LoRA linear: `x Wᵀ + s · ((x ⊙ mask) Aᵀ) Bᵀ`.
fn lora_reference(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s: f64,
    mask: Option<&Tensor>,
) -> Tensor {
    let xd = match mask {
        Some(m) => (x * m).unwrap(),
        None => x.clone(),
    };
    let base = x.matmul(&w.t().unwrap()).unwrap();
    let delta = xd
        .matmul(&a.t().unwrap())
        .unwrap()
        .matmul(&b.t().unwrap())
        .unwrap();
    (base + (delta * s).unwrap()).unwrap()
}

#[test]
fn lora_linear_gradients_for_input_a_and_b() {
    // Small (serial gemm) and large enough for the parallel gemm path; with and without dropout.
    for (m, k, n, r, seed) in [(9, 40, 24, 4, 10u64), (300, 64, 48, 8, 20)] {
        let w = rand(&[n, k], seed);
        let x = rand(&[m, k], seed + 1);
        let a = rand(&[r, k], seed + 2);
        let b = rand(&[n, r], seed + 3);
        let s = 2.0;
        let keep: Vec<f32> = (0..m * k)
            .map(|i| if (i * 7919) % 10 < 2 { 0.0 } else { 1.25 })
            .collect();
        let mask_t = Tensor::from_vec(keep.clone(), (m, k), &Device::Cpu).unwrap();
        for mask in [None, Some(&mask_t)] {
            let mv = mask.map(|_| keep.clone());
            let src = || BaseWeight::Dense(w.clone());
            let tag = format!("lora_linear {m}x{k}x{n} r{r} mask {}", mask.is_some());
            check(
                &format!("{tag}: x"),
                x.clone(),
                &|x| linear::lora_linear(x, &a, &b, src(), s, mv.clone(), Products::F32).unwrap(),
                &|x| lora_reference(x, &w, &a, &b, s, mask),
            );
            check(
                &format!("{tag}: A"),
                a.clone(),
                &|a| linear::lora_linear(&x, a, &b, src(), s, mv.clone(), Products::F32).unwrap(),
                &|a| lora_reference(&x, &w, a, &b, s, mask),
            );
            check(
                &format!("{tag}: B"),
                b.clone(),
                &|b| linear::lora_linear(&x, &a, b, src(), s, mv.clone(), Products::F32).unwrap(),
                &|b| lora_reference(&x, &w, &a, b, s, mask),
            );
        }
    }
}

#[test]
fn lora_linear_skips_the_gradient_of_an_input_that_needs_none() {
    let (w, x) = (rand(&[24, 40], 30), rand(&[9, 40], 31));
    let av = Var::from_tensor(&rand(&[4, 40], 32)).unwrap();
    let bv = Var::from_tensor(&rand(&[24, 4], 33)).unwrap();
    let y = linear::lora_linear(
        &x,
        av.as_tensor(),
        bv.as_tensor(),
        BaseWeight::Dense(w.clone()),
        0.5,
        None,
        Products::F32,
    )
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(&x).is_none(),
        "an input without history got a gradient"
    );
    let reference = lora_reference(&x, &w, av.as_tensor(), bv.as_tensor(), 0.5, None);
    let gr = reference.sum_all().unwrap().backward().unwrap();
    for v in [&av, &bv] {
        let d = max_diff(
            g.get(v.as_tensor()).unwrap(),
            gr.get(v.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "adapter gradient differs by {d}");
    }
    // Mismatched shapes are an error, not a panic.
    let bad = linear::lora_linear(
        &x,
        &rand(&[4, 39], 1),
        bv.as_tensor(),
        BaseWeight::Dense(w),
        0.5,
        None,
        Products::F32,
    );
    assert!(bad.is_err());
}

#[test]
fn silu_mul_gradients() {
    let up = rand(&[6, 50], 40);
    let gate = (rand(&[6, 50], 41) * 4.0).unwrap();
    let reference = |g: &Tensor, u: &Tensor| (g.silu().unwrap() * u).unwrap();
    check(
        "silu_mul: gate",
        gate.clone(),
        &|g| activation::silu_mul(g, &up).unwrap(),
        &|g| reference(g, &up),
    );
    check(
        "silu_mul: up",
        up.clone(),
        &|u| activation::silu_mul(&gate, u).unwrap(),
        &|u| reference(&gate, u),
    );
    let big_gate = (rand(&[64, 400], 42) * 4.0).unwrap();
    let big_up = rand(&[64, 400], 43);
    check(
        "silu_mul (parallel): gate",
        big_gate.clone(),
        &|g| activation::silu_mul(g, &big_up).unwrap(),
        &|g| reference(g, &big_up),
    );
}

#[test]
fn attention_probs_gradient_with_broadcast_masks() {
    let (b, h, q, k) = (2, 3, 5, 7);
    let min = f32::MIN;
    // A causal mask [1, 1, q, k] and a key-padding mask [b, 1, 1, k].
    let causal: Vec<f32> = (0..q * k)
        .map(|i| if i % k > i / k + 2 { min } else { 0.0 })
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, q, k), &Device::Cpu).unwrap();
    let pad: Vec<f32> = (0..b * k)
        .map(|i| {
            if i == k - 1 || i == 2 * k - 2 {
                min
            } else {
                0.0
            }
        })
        .collect();
    let pad = Tensor::from_vec(pad, (b, 1, 1, k), &Device::Cpu).unwrap();
    let scores = (rand(&[b, h, q, k], 50) * 3.0).unwrap();
    for (name, mask) in [
        ("none", None),
        ("causal", Some(&causal)),
        ("padding", Some(&pad)),
    ] {
        let reference = |x: &Tensor| {
            let mut w = (x * 0.125).unwrap();
            if let Some(m) = mask {
                w = w.broadcast_add(m).unwrap();
            }
            candle_nn::ops::softmax(&w, D::Minus1).unwrap()
        };
        check(
            &format!("attention_probs ({name} mask)"),
            scores.clone(),
            &|x| attention::attention_probs(x, 0.125, mask).unwrap(),
            &reference,
        );
    }
    let bad = Tensor::zeros((3, 1, 1, k), DType::F32, &Device::Cpu).unwrap();
    assert!(attention::attention_probs(&scores, 1.0, Some(&bad)).is_err());
}

#[test]
fn cross_entropy_sum_gradient() {
    let targets = [3u32, 0, 16, 7, 7];
    let tgt = Tensor::new(&targets, &Device::Cpu)
        .unwrap()
        .reshape((5, 1))
        .unwrap();
    check(
        "cross_entropy_sum",
        (rand(&[5, 17], 60) * 4.0).unwrap(),
        &|x| loss::cross_entropy_sum(x, &targets).unwrap(),
        &|x| {
            let logp = candle_nn::ops::log_softmax(x, D::Minus1).unwrap();
            logp.gather(&tgt, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .neg()
                .unwrap()
        },
    );
    assert!(loss::cross_entropy_sum(&rand(&[5, 17], 1), &[0, 1, 2, 3, 17]).is_err());
    assert!(loss::cross_entropy_sum(&rand(&[5, 17], 1), &[0, 1]).is_err());
}

#[test]
fn gelu_tanh_gradient() {
    check(
        "gelu_tanh",
        (rand(&[4, 300], 70) * 6.0).unwrap(),
        &|x| activation::gelu_tanh(x).unwrap(),
        &|x| x.gelu().unwrap(),
    );
}

#[test]
fn rms_norm_with_weight_gradient() {
    let w = (rand(&[32], 80) + 1.5).unwrap();
    check(
        "rms_norm with weight",
        rand(&[4, 6, 32], 81),
        &|x| norm::rms_norm(x, &w, 1e-5).unwrap(),
        &|x| {
            let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            x.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w)
                .unwrap()
        },
    );
    assert!(norm::rms_norm(&rand(&[4, 31], 1), &w, 1e-5).is_err());
}

/// The composed reference of the fused attention: heads split and transposed, RoPE, repeated
/// key/value heads, softmax(q kᵀ · scale + mask) v, heads merged back.
fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: foundry_kernels::AttentionShape,
    rope: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
) -> Tensor {
    let (b, sq, _) = q.dims3().unwrap();
    let sk = k.dim(1).unwrap();
    let d = shape.head_dim;
    let rep = shape.heads / shape.kv_heads;
    let split = |t: &Tensor, s: usize, h: usize| {
        t.reshape((b, s, h, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (mut qh, mut kh, vh) = (
        split(q, sq, shape.heads),
        split(k, sk, shape.kv_heads),
        split(v, sk, shape.kv_heads),
    );
    if let Some((c, s)) = rope {
        qh = candle_nn::rotary_emb::rope_slow(&qh, c, s).unwrap();
        kh = candle_nn::rotary_emb::rope_slow(&kh, c, s).unwrap();
    }
    let expand = |t: &Tensor| {
        t.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, shape.kv_heads, rep, sk, d))
            .unwrap()
            .reshape((b, shape.heads, sk, d))
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (kh, vh) = (expand(&kh), expand(&vh));
    let mut w = (qh.matmul(&kh.t().unwrap()).unwrap() * shape.scale).unwrap();
    if let Some(m) = mask {
        w = w.broadcast_add(m).unwrap();
    }
    let p = candle_nn::ops::softmax(&w, D::Minus1).unwrap();
    p.matmul(&vh)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, sq, shape.heads * d))
        .unwrap()
}

/// Checks the fused attention's gradient for each of q, k and v against the composed reference.
fn check_qkv(
    name: &str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: foundry_kernels::AttentionShape,
    rope: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
) {
    let fused = |q: &Tensor, k: &Tensor, v: &Tensor| {
        attention::fused_attention(q, k, v, shape, rope, mask).unwrap()
    };
    let reference =
        |q: &Tensor, k: &Tensor, v: &Tensor| attention_reference(q, k, v, shape, rope, mask);
    check(
        &format!("{name}: q"),
        q.clone(),
        &|x| fused(x, k, v),
        &|x| reference(x, k, v),
    );
    check(
        &format!("{name}: k"),
        k.clone(),
        &|x| fused(q, x, v),
        &|x| reference(q, x, v),
    );
    check(
        &format!("{name}: v"),
        v.clone(),
        &|x| fused(q, k, x),
        &|x| reference(q, k, x),
    );
}

#[test]
fn fused_attention_gradients_for_q_k_and_v() {
    let min = f32::MIN;
    // Self-attention with RoPE, a causal mask and 2 query heads per kv head (the text model).
    let (b, s, heads, kvh, d) = (2, 6, 4, 2, 8);
    let shape = foundry_kernels::AttentionShape {
        heads,
        kv_heads: kvh,
        head_dim: d,
        scale: 0.35,
    };
    let (cos, sin) = rope_tables(s, d, 90);
    let causal: Vec<f32> = (0..s * s)
        .map(|i| if i % s > i / s { min } else { 0.0 })
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, s, s), &Device::Cpu).unwrap();
    let (q, k, v) = (
        rand(&[b, s, heads * d], 91),
        rand(&[b, s, kvh * d], 92),
        rand(&[b, s, kvh * d], 93),
    );
    let rope = Some((&cos, &sin));
    let mask = Some(&causal);
    check_qkv(
        "fused attention (rope, causal)",
        &q,
        &k,
        &v,
        shape,
        rope,
        mask,
    );
    // Cross-attention (the perceiver): fewer queries than keys, a key-padding mask [b, 1, 1, sk].
    let (sq, sk) = (3, 9);
    let shape = foundry_kernels::AttentionShape {
        heads: 4,
        kv_heads: 1,
        head_dim: d,
        scale: 0.5,
    };
    let pad: Vec<f32> = (0..b * sk)
        .map(|i| if i == 2 || i == sk + 7 { min } else { 0.0 })
        .collect();
    let pad = Tensor::from_vec(pad, (b, 1, 1, sk), &Device::Cpu).unwrap();
    let (q, k, v) = (
        rand(&[b, sq, 4 * d], 94),
        rand(&[b, sk, d], 95),
        rand(&[b, sk, d], 96),
    );
    let mask = Some(&pad);
    check_qkv(
        "fused attention (cross, padding)",
        &q,
        &k,
        &v,
        shape,
        None,
        mask,
    );
    // Shapes that do not fit are errors.
    assert!(
        attention::fused_attention(&q, &rand(&[b, sk, d + 1], 1), &v, shape, None, None).is_err()
    );
    assert!(attention::fused_attention(&q, &k, &v, shape, rope, None).is_err());
}

fn rel_max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_diff(a, b) / max_abs(b).max(1e-6)
}

/// Output and gradients of the LoRA and frozen linears, f32 or bf16 products, optionally with
/// a dropout mask on the adapter's input.
fn run(bf16: bool, (m, k, n, r): (usize, usize, usize, usize), dropout: bool) -> Vec<Tensor> {
    let products = if bf16 { Products::Bf16 } else { Products::F32 };
    let mask = dropout.then(|| {
        (0..m * k)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.25 })
            .collect::<Vec<f32>>()
    });
    let w = rand(&[n, k], 1);
    let xv = Var::from_tensor(&rand(&[m, k], 2)).unwrap();
    let av = Var::from_tensor(&rand(&[r, k], 3)).unwrap();
    let bv = Var::from_tensor(&rand(&[n, r], 4)).unwrap();
    let y = linear::lora_linear(
        xv.as_tensor(),
        av.as_tensor(),
        bv.as_tensor(),
        BaseWeight::Dense(w.clone()),
        2.0,
        mask,
        products,
    )
    .unwrap();
    let z = linear::frozen_linear_with(&y, BaseWeight::Dense(rand(&[40, n], 5)), None, products)
        .unwrap();
    let g = (z.sqr().unwrap()).sum_all().unwrap().backward().unwrap();
    let mut out = vec![z];
    for v in [&xv, &av, &bv] {
        out.push(g.get(v.as_tensor()).unwrap().clone());
    }
    out
}

#[test]
#[cfg_attr(host_avx512bf16, ignore = "needs a CPU without AVX512-BF16")]
fn bf16_products_are_refused_without_avx512_bf16() {
    assert!(!foundry_kernels::bf16gemm::available());
    assert!(
        Products::Bf16.check_supported().is_err(),
        "refused without AVX512-BF16"
    );
    assert!(Products::F32.check_supported().is_ok());
    assert_eq!(Products::bf16_if_available(true), Products::F32);
}

#[test]
#[cfg_attr(not(host_avx512bf16), ignore = "needs a CPU with AVX512-BF16")]
fn bf16_products_stay_close_to_f32() {
    assert!(
        foundry_kernels::bf16gemm::available(),
        "this CPU has no AVX512-BF16"
    );
    // Even and odd widths (the adapter rides in the reduction after a zero pad when odd), with
    // and without dropout (which keeps the adapter's input gradient out of the product).
    for (dims, dropout) in [
        ((70, 96, 80, 8), false),
        ((37, 95, 81, 4), false),
        ((70, 96, 80, 8), true),
    ] {
        let f = run(false, dims, dropout);
        let b = run(true, dims, dropout);
        for (name, (x, y)) in ["output", "dx", "dA", "dB"].iter().zip(b.iter().zip(&f)) {
            let d = rel_max_diff(x, y);
            println!("{dims:?} dropout {dropout} {name}: bf16 vs f32 relative difference {d:.1e}");
            // bf16 keeps 8 significant bits: a few 1e-3 relative through two products.
            assert!(d < 2e-2, "{name}: bf16 products differ from f32 by {d}");
            assert!(
                d > 0.0,
                "{name}: identical to f32, so the bf16 path did not run"
            );
        }
    }
}

#[test]
fn linears_take_leading_dims_as_rows() {
    // `[b, s, in]` goes through the fused linears as is (no reshape node) and gives what
    // `[b·s, in]` gives, gradients included.
    let (b, s, k, n, r) = (3, 5, 12, 7, 4);
    let w = rand(&[n, k], 1);
    let x3 = rand(&[b, s, k], 2);
    let av = Var::from_tensor(&rand(&[r, k], 3)).unwrap();
    let bv = Var::from_tensor(&rand(&[n, r], 4)).unwrap();
    let run = |x: &Tensor| {
        let xv = Var::from_tensor(x).unwrap();
        let y = linear::lora_linear(
            xv.as_tensor(),
            av.as_tensor(),
            bv.as_tensor(),
            BaseWeight::Dense(w.clone()),
            0.5,
            None,
            Products::F32,
        )
        .unwrap();
        let z = linear::frozen_linear(&y, BaseWeight::Dense(rand(&[6, n], 5))).unwrap();
        let g = z.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (
            z.dims().to_vec(),
            flat(&z),
            g.get(xv.as_tensor()).unwrap().dims().to_vec(),
            flat(g.get(xv.as_tensor()).unwrap()),
            flat(g.get(av.as_tensor()).unwrap()),
        )
    };
    let three = run(&x3);
    let two = run(&x3.reshape((b * s, k)).unwrap());
    assert_eq!(three.0, vec![b, s, 6]);
    assert_eq!(three.2, vec![b, s, k]);
    assert_eq!((&three.1, &three.3, &three.4), (&two.1, &two.3, &two.4));
    // A 1-D input is refused with an error.
    assert!(linear::frozen_linear(&rand(&[k], 6), BaseWeight::Dense(w.clone())).is_err());
}
