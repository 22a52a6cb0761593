//! RMS and layer normalisation with an analytic backward.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::slices::*;
use crate::timing;

// ---------------------------------------------------------------------------------------------
// rms normalisation (without the weight)

struct RmsNormalize {
    eps: f32,
    /// The per-feature weight multiplied in after normalising (not trained).
    weight: Option<Vec<f32>>,
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
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let x = contiguous_f32(s, l, self.name())?;
        let eps = self.eps;
        check_features(&self.weight, last_dim(l), self.name())?;
        let out = rows_map(x, last_dim(l), |r, o| {
            let inv = rms_inv(r, eps);
            match &self.weight {
                // (x · inv) · w, in transformers' order.
                Some(w) => {
                    for ((o, v), w) in o.iter_mut().zip(r).zip(w) {
                        *o = (v * inv) * w;
                    }
                }
                None => {
                    for (o, v) in o.iter_mut().zip(r) {
                        *o = v * inv;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        // y = x r w; with gw = g w: dx = r (gw - x r <gw, x r> / d)
        let eps = self.eps;
        let dx = map2_tensors(grad, arg, |g, x, o| {
            let inv = rms_inv(x, eps);
            let d = x.len() as f32;
            match &self.weight {
                Some(w) => {
                    let gy: f32 = g
                        .iter()
                        .zip(w)
                        .zip(x)
                        .map(|((g, w), x)| g * w * x * inv)
                        .sum::<f32>()
                        / d;
                    for (((o, g), w), x) in o.iter_mut().zip(g).zip(w).zip(x) {
                        *o = inv * (g * w - x * inv * gy);
                    }
                }
                None => {
                    let gy: f32 = g.iter().zip(x).map(|(a, b)| a * b * inv).sum::<f32>() / d;
                    for ((o, g), x) in o.iter_mut().zip(g).zip(x) {
                        *o = inv * (g - x * inv * gy);
                    }
                }
            }
        })?;
        Ok(Some(dx))
    }
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension (f32, CPU), with backward.
pub fn rms_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNormalize {
        eps: eps as f32,
        weight: None,
    })
}

/// `x / sqrt(mean(x²) + eps) · weight` in one op (f32, CPU); the backward gives `x` its
/// gradient and the weight, which is not trained, none.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNormalize {
        eps: eps as f32,
        weight: Some(
            weight
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        ),
    })
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
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
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
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
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
