//! Cross-entropy summed over rows, with an analytic backward.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::slices::*;
use crate::timing;

// ---------------------------------------------------------------------------------------------
// cross-entropy

struct CrossEntropySum {
    targets: Vec<u32>,
}

/// `(max, log Σ exp(x − max))` of a row.
fn row_lse(r: &[f32]) -> (f32, f32) {
    let mx = crate::vmath::max(r);
    let mut e = r.to_vec();
    crate::vmath::exp_shifted(&mut e, mx);
    (mx, crate::vmath::sum(&e).ln())
}

impl CustomOp1 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "foundry-cross-entropy-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!(
                "cross-entropy: {} targets for {n} rows of {v} classes (or one out of range)",
                self.targets.len()
            );
        }
        let x = contiguous_f32(s, l, self.name())?;
        let mut nll = vec![0f32; n];
        let per_row = |(i, o): (usize, &mut f32)| {
            let r = &x[i * v..(i + 1) * v];
            let (mx, lse) = row_lse(r);
            // -(x_t - max - lse), the same order as log_softmax then gather.
            *o = -((r[self.targets[i] as usize] - mx) - lse);
        };
        if x.len() >= MIN_PAR_ELEMS {
            nll.par_iter_mut().enumerate().for_each(per_row);
        } else {
            nll.iter_mut().enumerate().for_each(per_row);
        }
        let total: f32 = nll.iter().sum();
        Ok((CpuStorage::F32(vec![total]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        // d/dx_j = g · (softmax(x)_j − [j = t])
        let g = grad.detach().to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (n, v) = arg.dims2()?;
        let xt = cpu_contiguous(arg, self.name())?;
        let (sx, lx) = xt.storage_and_layout();
        let x = storage_f32(&sx, lx, self.name())?;
        let mut out = vec![0f32; n * v];
        let per_row = |(i, o): (usize, &mut [f32])| {
            let r = &x[i * v..(i + 1) * v];
            let (mx, lse) = row_lse(r);
            o.copy_from_slice(r);
            crate::vmath::exp_shifted(o, mx + lse);
            crate::vmath::scale(o, g);
            o[self.targets[i] as usize] -= g;
        };
        if v > 0 {
            if out.len() >= MIN_PAR_ELEMS {
                out.par_chunks_mut(v).enumerate().for_each(per_row);
            } else {
                out.chunks_mut(v).enumerate().for_each(per_row);
            }
        }
        Ok(Some(Tensor::from_vec(out, (n, v), arg.device())?))
    }
}

/// `Σᵢ −log softmax(logits)ᵢ[targetᵢ]` over the rows of f32 CPU `logits` `[n, vocab]`, as one
/// op: no `[n, vocab]` intermediate is kept for the backward, which recomputes the softmax.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(CrossEntropySum {
        targets: targets.to_vec(),
    })
}
