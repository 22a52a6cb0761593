//! The numerically delicate operations, routed through one module: what the model calls.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope` kernels have no
//! backward and silently drop gradients. On the CPU in f32 these ops run this crate's fused
//! kernels (row-parallel loops with an analytic backward); on other devices and dtypes they fall
//! back to candle's composed differentiable ops.

use candle_core::{DType, Result, Tensor, D};

use crate::weight::{BaseWeight, Products};

/// Softmax over the last dimension, computed in f32 and cast back to the input dtype
/// (as transformers' eager attention does).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    if fast(&x) {
        return crate::attention::softmax_last_dim(&x)?.to_dtype(dtype);
    }
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)?.to_dtype(dtype)
}

/// Eager attention's weights: `softmax(scores · scale + mask)` over the last dimension, computed
/// in f32 and cast back (one fused op on the CPU in f32). `mask` broadcasts to `scores`.
pub fn attention_probs(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    if fast(scores) && scores.rank() == 4 && mask.is_none_or(|m| m.rank() == 4) {
        return crate::attention::attention_probs(scores, scale, mask);
    }
    let mut w = (scores * scale)?;
    if let Some(m) = mask {
        w = w.broadcast_add(m)?;
    }
    softmax_last_dim(&w)
}

/// RMSNorm as in transformers' Mistral/Idefics2: normalise in f32, cast back to the
/// input dtype, then multiply by `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    if fast(x) && weight.dtype() == DType::F32 && !weight.track_op() && weight.rank() == 1 {
        return crate::norm::rms_norm(x, weight, eps);
    }
    let xf = x.to_dtype(DType::F32)?;
    let y = if fast(&xf) {
        crate::norm::rms_normalize(&xf, eps)?
    } else {
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        xf.broadcast_div(&(var + eps)?.sqrt()?)?
    };
    y.to_dtype(dtype)?.broadcast_mul(weight)
}

/// LayerNorm over the last dimension (computed in f32), with weight and bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let y = if fast(&xf) {
        crate::norm::layer_normalize(&xf, eps)?
    } else {
        let mean = xf.mean_keepdim(D::Minus1)?;
        let xc = xf.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)?
    };
    y.to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Rotary position embedding, non-interleaved ("rotate_half") layout.
///
/// `x` is `[batch, heads, seq, head_dim]`, `cos`/`sin` are `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fast(x) {
        return crate::attention::rope(x, cos, sin);
    }
    candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin)
}

/// Whether the fast CPU kernels apply (f32 on the CPU).
fn fast(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// `x · wᵀ (+ bias)` for `x` `[.., in]` and a base weight `w` `[out, in]` that is not trained,
/// its products in `products` precision. On the CPU in f32 with a bias that is not trained
/// either, one op whose backward computes only the input gradient (the bias accumulated in the
/// GEMM); a weight that tracks gradients (a `Var`), or another device, goes through candle's
/// differentiable matmul instead, in f32.
pub fn frozen_linear(
    x: &Tensor,
    w: BaseWeight,
    bias: Option<&Tensor>,
    products: Products,
) -> Result<Tensor> {
    let dense_trained = matches!(&w, BaseWeight::Dense(t) if t.track_op());
    if fast(x)
        && x.rank() >= 2
        && !dense_trained
        && bias.is_none_or(|b| !b.track_op() && b.rank() == 1)
    {
        return crate::linear::frozen_linear_with(x, w, bias, products);
    }
    // The other paths work on `[rows, in]`.
    let dims = x.dims().to_vec();
    if dims.len() != 2 {
        let inp = dims.last().copied().unwrap_or(0);
        let y = frozen_linear(
            &x.reshape((x.elem_count() / inp.max(1), inp))?,
            w,
            bias,
            products,
        )?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = y.dim(1)?;
        }
        return y.reshape(out);
    }
    let y = match &w {
        BaseWeight::Dense(t) if dense_trained || !x.device().is_cpu() => {
            matmul(x, &t.to_dtype(x.dtype())?.t()?)?
        }
        BaseWeight::Frozen(f) if !x.device().is_cpu() => {
            let t = f.dequantize(x.dtype(), x.device())?.detach();
            matmul(x, &t.t()?)?
        }
        _ => {
            let dtype = x.dtype();
            crate::linear::frozen_linear_with(&x.to_dtype(DType::F32)?, w, None, products)?
                .to_dtype(dtype)?
        }
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// SiLU activation.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        return crate::activation::gelu_tanh(x);
    }
    x.gelu()
}

/// Exact (erf) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// `act(gate) · up`, the gated MLP's product; SiLU on the CPU in f32 runs as one fused op
/// ([`crate::activation::silu_mul`]).
pub fn gated(act: &str, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if matches!(act, "silu" | "swish") && fast(gate) && fast(up) && gate.dims() == up.dims() {
        return crate::activation::silu_mul(gate, up);
    }
    activation(act, gate)? * up
}

/// Applies a named activation from a Hugging Face config (`silu`, `gelu`, `gelu_pytorch_tanh`, ...).
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "silu" | "swish" => silu(x),
        "gelu" => gelu_erf(x),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => gelu_tanh(x),
        "relu" => x.relu(),
        other => Err(candle_core::Error::Msg(format!(
            "unsupported activation `{other}`"
        ))),
    }
}

/// Matrix product. candle 0.11's CPU backend has no bf16 GEMM, so bf16 operands are
/// multiplied in f32 on the CPU and the result is cast back (differentiable either way).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::BF16 && a.device().is_cpu() {
        a.to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16)
    } else {
        a.matmul(b)
    }
}
