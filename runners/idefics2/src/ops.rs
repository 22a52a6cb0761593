//! The numerically delicate operations, routed through one module.
//!
//! Every op here is written with candle's *differentiable* building blocks
//! (candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope`
//! kernels have no backward and silently drop gradients). The QLoRA work
//! replaces these bodies with fast custom ops that carry a backward; the model
//! code calls only this module.

use candle_core::{DType, Result, Tensor, D};

/// Softmax over the last dimension, computed in f32 and cast back to the input dtype
/// (as transformers' eager attention does).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)?.to_dtype(dtype)
}

/// RMSNorm as in transformers' Mistral/Idefics2: normalise in f32, cast back to the
/// input dtype, then multiply by `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    y.to_dtype(dtype)?.broadcast_mul(weight)
}

/// LayerNorm over the last dimension (computed in f32), with weight and bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    y.to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Rotary position embedding, non-interleaved ("rotate_half") layout.
///
/// `x` is `[batch, heads, seq, head_dim]`, `cos`/`sin` are `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin)
}

/// SiLU activation.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// Exact (erf) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
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
