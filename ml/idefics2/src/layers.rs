//! Small building blocks shared by the three towers.

use candle_core::{DType, Module, Result as CResult, Tensor};

use crate::error::Result;
use crate::linear::SeamLinear;
use crate::weights::Weights;
use foundry_kernels::ops;
use foundry_kernels::BaseWeight;

/// Loads a seam linear `prefix` (`prefix.weight` `[out, in]`, optional `prefix.bias`).
pub(crate) fn linear(
    w: &Weights,
    prefix: &str,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<SeamLinear> {
    let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
    let b = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Ok(SeamLinear::new(prefix, BaseWeight::Dense(weight), b))
}

/// RMSNorm with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Scale, `[hidden]`.
    pub weight: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(w: &Weights, prefix: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[hidden])?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// LayerNorm with weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale, `[hidden]`.
    pub weight: Tensor,
    /// Shift, `[hidden]`.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(w: &Weights, prefix: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[hidden])?,
            bias: w.get(&format!("{prefix}.bias"), &[hidden])?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// The gated MLP `down(act(gate(x)) * up(x))` (Idefics2MLP, MistralMLP).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    /// `gate_proj`.
    pub gate_proj: SeamLinear,
    /// `up_proj`.
    pub up_proj: SeamLinear,
    /// `down_proj`.
    pub down_proj: SeamLinear,
    /// Activation name.
    pub act: String,
}

impl GatedMlp {
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        inp: usize,
        inter: usize,
        out: usize,
        act: &str,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: linear(w, &format!("{prefix}.gate_proj"), inp, inter, false)?,
            up_proj: linear(w, &format!("{prefix}.up_proj"), inp, inter, false)?,
            down_proj: linear(w, &format!("{prefix}.down_proj"), inter, out, false)?,
            act: act.to_string(),
        })
    }

    pub(crate) fn linears(&mut self) -> [&mut SeamLinear; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }
}

impl Module for GatedMlp {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let g = self.gate_proj.forward(x)?;
        let u = self.up_proj.forward(x)?;
        self.down_proj.forward(&ops::gated(&self.act, &g, &u)?)
    }
}

/// `[b, kv_heads, s, d]` → `[b, kv_heads * n_rep, s, d]` (transformers' `repeat_kv`).
pub(crate) fn repeat_kv(x: &Tensor, n_rep: usize) -> CResult<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, s, d))?
        .reshape((b, h * n_rep, s, d))
}

/// Eager attention: `softmax(q kᵀ · scale + mask) v`, with GQA expansion.
/// `q`: `[b, h, sq, d]`, `k`/`v`: `[b, kv, sk, d]`, `mask`: broadcastable to `[b, h, sq, sk]`.
/// Returns `[b, sq, h * d]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> CResult<Tensor> {
    let (b, h, sq, d) = q.dims4()?;
    let n_rep = h / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?.contiguous()?;
    let v = repeat_kv(v, n_rep)?.contiguous()?;
    let scores = ops::matmul(&q.contiguous()?, &k.t()?)?;
    let p = ops::attention_probs(&scores, scale, mask)?;
    let o = ops::matmul(&p, &v)?;
    o.transpose(1, 2)?.reshape((b, sq, h * d))
}

/// Multi-head attention on projection outputs: `q` `[b, sq, heads · d]`, `k`/`v`
/// `[b, sk, kv_heads · d]` → `[b, sq, heads · d]`, with optional RoPE (`cos`, `sin` `[s, d/2]`,
/// self-attention) and an additive mask broadcastable to `[b, heads, sq, sk]`. On the CPU in f32
/// this is one fused op ([`foundry_kernels::attention::fused_attention`]); elsewhere the composed ops.
pub(crate) fn mha(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: foundry_kernels::AttentionShape,
    rope: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
) -> CResult<Tensor> {
    let fast = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    if fast(q) && fast(k) && fast(v) && mask.is_none_or(|m| m.rank() == 4) {
        return foundry_kernels::attention::fused_attention(q, k, v, shape, rope, mask);
    }
    let (b, sq, _) = q.dims3()?;
    let sk = k.dim(1)?;
    let d = shape.head_dim;
    let q = q.reshape((b, sq, shape.heads, d))?.transpose(1, 2)?;
    let k = k.reshape((b, sk, shape.kv_heads, d))?.transpose(1, 2)?;
    let v = v.reshape((b, sk, shape.kv_heads, d))?.transpose(1, 2)?;
    let (q, k) = match rope {
        Some((cos, sin)) => (ops::rope(&q, cos, sin)?, ops::rope(&k, cos, sin)?),
        None => (q, k),
    };
    attention(&q, &k, &v, mask, shape.scale)
}

/// An additive key-padding mask `[b, 1, 1, k]` from a 0/1 mask `[b, k]`:
/// 0 where attended, the dtype's minimum where masked (transformers' convention).
pub(crate) fn key_padding_mask(mask01: &Tensor, dtype: DType) -> CResult<Tensor> {
    let min = min_value(dtype);
    let m = mask01.to_dtype(DType::F32)?;
    // (m - 1) * -min: 0 for m = 1, min for m = 0.
    let add = ((m - 1.0)? * (-(min as f64)))?;
    let (b, k) = add.dims2()?;
    add.to_dtype(dtype)?.reshape((b, 1, 1, k))
}

/// transformers fills masked scores with `torch.finfo(dtype).min`.
pub(crate) fn min_value(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => -3.389_531_4e38,
        DType::F16 => -65504.0,
        _ => f32::MIN,
    }
}
