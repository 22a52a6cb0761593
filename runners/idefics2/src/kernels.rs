//! Fast CPU kernels with an analytic backward for the ops candle 0.11 only has forward-only:
//! softmax over the last dimension, RMS normalisation, layer normalisation, rotary embedding
//! (rotate-half layout) and a frozen linear whose backward computes only the input gradient.
//!
//! Each op is a candle `CustomOp` whose forward is a row-parallel loop over contiguous f32 data
//! and whose backward is another row loop (no autograd graph is built for the backward). The
//! callers in [`crate::ops`] fall back to composed differentiable candle ops for other devices
//! and dtypes.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::linear::FrozenWeight;

/// Rows handled per parallel task (small tensors run on one thread).
const MIN_PAR_ELEMS: usize = 1 << 14;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f(row_in, row_out)` over rows of length `d`, in parallel for large inputs.
fn rows_map(x: &[f32], d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if x.len() >= MIN_PAR_ELEMS {
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, r)| f(r, o));
    } else {
        out.chunks_mut(d)
            .zip(x.chunks(d))
            .for_each(|(o, r)| f(r, o));
    }
    out
}

/// Runs `f(row_a, row_b, row_out)` over matching rows of two equal-length slices.
fn rows_map2(
    a: &[f32],
    b: &[f32],
    d: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    if a.len() >= MIN_PAR_ELEMS {
        out.par_chunks_mut(d)
            .zip(a.par_chunks(d).zip(b.par_chunks(d)))
            .for_each(|(o, (ra, rb))| f(ra, rb, o));
    } else {
        out.chunks_mut(d)
            .zip(a.chunks(d).zip(b.chunks(d)))
            .for_each(|(o, (ra, rb))| f(ra, rb, o));
    }
    out
}

/// Applies a row kernel to two same-shaped f32 tensors (detached, made contiguous) and returns a
/// new tensor without autograd history.
fn map2_tensors(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Result<Tensor> {
    let a = a.detach().contiguous()?;
    let b = b.detach().contiguous()?;
    let d = a.dim(candle_core::D::Minus1)?;
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let out = match (&*sa, &*sb) {
        (Storage::Cpu(ca), Storage::Cpu(cb)) => {
            let xa = contiguous_f32(ca, la, "backward")?;
            let xb = contiguous_f32(cb, lb, "backward")?;
            rows_map2(xa, xb, d, f)
        }
        _ => candle_core::bail!("kernel backward: cpu tensors expected"),
    };
    Tensor::from_vec(out, a.shape(), a.device())
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// ---------------------------------------------------------------------------------------------
// softmax

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "foundry-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let out = rows_map(x, last_dim(l), |r, o| {
            let m = r.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let mut sum = 0f32;
            for (o, v) in o.iter_mut().zip(r) {
                *o = (v - m).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - <g, y>)
        let dx = map2_tensors(grad, res, |g, y, o| {
            let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
            for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                *o = y * (g - dot);
            }
        })?;
        Ok(Some(dx))
    }
}

/// Softmax over the last dimension of a contiguous f32 CPU tensor, with backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------------------------------------
// rms normalisation (without the weight)

struct RmsNormalize {
    eps: f32,
}

fn rms_inv(r: &[f32], eps: f32) -> f32 {
    let ms = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNormalize {
    fn name(&self) -> &'static str {
        "foundry-rms-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let eps = self.eps;
        let out = rows_map(x, last_dim(l), |r, o| {
            let inv = rms_inv(r, eps);
            for (o, v) in o.iter_mut().zip(r) {
                *o = v * inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // y = x r; dx = r (g - y <g, y> / d)
        let eps = self.eps;
        let dx = map2_tensors(grad, arg, |g, x, o| {
            let inv = rms_inv(x, eps);
            let d = x.len() as f32;
            let gy: f32 = g.iter().zip(x).map(|(a, b)| a * b * inv).sum::<f32>() / d;
            for ((o, g), x) in o.iter_mut().zip(g).zip(x) {
                *o = inv * (g - x * inv * gy);
            }
        })?;
        Ok(Some(dx))
    }
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension (f32, CPU), with backward.
pub fn rms_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNormalize { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// layer normalisation (without weight and bias)

struct LayerNormalize {
    eps: f32,
}

fn mean_rstd(r: &[f32], eps: f32) -> (f32, f32) {
    let d = r.len() as f32;
    let mean = r.iter().sum::<f32>() / d;
    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for LayerNormalize {
    fn name(&self) -> &'static str {
        "foundry-layer-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let eps = self.eps;
        let out = rows_map(x, last_dim(l), |r, o| {
            let (mean, rstd) = mean_rstd(r, eps);
            for (o, v) in o.iter_mut().zip(r) {
                *o = (v - mean) * rstd;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = rstd (g - mean(g) - y mean(g y))
        let eps = self.eps;
        let dx = map2_tensors(grad, arg, |g, x, o| {
            let (mean, rstd) = mean_rstd(x, eps);
            let d = x.len() as f32;
            let mg = g.iter().sum::<f32>() / d;
            let mgy = g
                .iter()
                .zip(x)
                .map(|(g, x)| g * (x - mean) * rstd)
                .sum::<f32>()
                / d;
            for ((o, g), x) in o.iter_mut().zip(g).zip(x) {
                *o = rstd * (g - mg - (x - mean) * rstd * mgy);
            }
        })?;
        Ok(Some(dx))
    }
}

/// `(x - mean) / sqrt(var + eps)` over the last dimension (f32, CPU), with backward.
pub fn layer_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1(LayerNormalize { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// rotary embedding, rotate-half layout

struct Rope {
    /// `[seq, half]`, contiguous f32.
    cos: Vec<f32>,
    /// `[seq, half]`, contiguous f32 (negated for the backward).
    sin: Vec<f32>,
    seq: usize,
    half: usize,
}

impl Rope {
    fn apply(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let (s, h) = (self.seq, self.half);
        let d = 2 * h;
        // One [seq, d] slab per (batch, head).
        let slab = |xs: &[f32], o: &mut [f32]| {
            for p in 0..s {
                let (c, sn) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
                let r = &xs[p * d..(p + 1) * d];
                let o = &mut o[p * d..(p + 1) * d];
                for i in 0..h {
                    let (a, b) = (r[i], r[i + h]);
                    let si = sign * sn[i];
                    o[i] = a * c[i] - b * si;
                    o[i + h] = b * c[i] + a * si;
                }
            }
        };
        rows_map(x, s * d, slab)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "foundry-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(self.apply(x, 1.0)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // A rotation: the gradient is the inverse rotation (sin negated).
        let g = grad.detach().contiguous()?;
        let (sg, lg) = g.storage_and_layout();
        let out = match &*sg {
            Storage::Cpu(c) => self.apply(contiguous_f32(c, lg, self.name())?, -1.0),
            _ => candle_core::bail!("rope backward: cpu tensor expected"),
        };
        Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
    }
}

/// Rotary embedding in rotate-half layout: `x` `[b, h, s, d]` f32, `cos`/`sin` `[s, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, seq, d) = x.dims4()?;
    let (cs, half) = cos.dims2()?;
    if cs != seq || 2 * half != d || sin.dims() != cos.dims() {
        candle_core::bail!(
            "rope: x {:?} does not fit cos/sin {:?}",
            x.dims(),
            cos.dims()
        );
    }
    let op = Rope {
        cos: cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        sin: sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        seq,
        half,
    };
    x.contiguous()?.apply_op1(op)
}

// ---------------------------------------------------------------------------------------------
// frozen linear

/// Where a frozen linear gets its weight from.
#[derive(Clone)]
pub enum FrozenSource {
    /// A dense `[out, in]` tensor that is not trained.
    Dense(Tensor),
    /// A compact frozen weight, dequantized in the forward and again in the backward.
    Frozen(Arc<dyn FrozenWeight>),
}

impl FrozenSource {
    fn weight(&self, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
        match self {
            FrozenSource::Dense(w) => w.detach().to_dtype(dtype),
            FrozenSource::Frozen(f) => f.dequantize(dtype, device),
        }
    }
}

struct FrozenLinear {
    src: FrozenSource,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "foundry-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let w = self.src.weight(DType::F32, &candle_core::Device::Cpu)?;
        let (n, wk) = w.dims2()?;
        if wk != k {
            candle_core::bail!("frozen linear: input width {k} does not fit weight [{n}, {wk}]");
        }
        let wt = w.contiguous()?.t()?;
        let (sw, lw) = wt.storage_and_layout();
        let out = match &*sw {
            Storage::Cpu(cw) => s.matmul(cw, (1, m, n, k), l, lw)?,
            _ => candle_core::bail!("frozen linear: cpu weight expected"),
        };
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Only the input gradient: dx = g W. The weight gets none.
        let w = self.src.weight(DType::F32, arg.device())?;
        Ok(Some(grad.detach().matmul(&w)?))
    }
}

/// `x · Wᵀ` for a 2-D f32 CPU input `[n, in]` and a frozen `[out, in]` weight. The backward
/// returns only the input gradient (candle's matmul would also compute the weight's).
pub fn frozen_linear(x: &Tensor, src: FrozenSource) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinear { src })
}
