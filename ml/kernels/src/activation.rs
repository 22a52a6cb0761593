//! Activations with an analytic backward: SwiGLU's `silu(gate) · up` as one op, and GELU
//! (tanh approximation).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::slices::*;
use crate::timing;

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) · up

struct SiluMul;

impl candle_core::CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "foundry-silu-mul"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        if lg.shape() != lu.shape() {
            candle_core::bail!(
                "silu·mul: gate {:?} and up {:?} differ",
                lg.shape(),
                lu.shape()
            );
        }
        let g = contiguous_f32(sg, lg, self.name())?;
        let u = contiguous_f32(su, lu, self.name())?;
        let mut out = vec![0f32; g.len()];
        par_fill(&mut out, |off, o| {
            crate::vmath::silu_mul(o, &g[off..off + o.len()], &u[off..off + o.len()])
        });
        Ok((CpuStorage::F32(out), lg.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        with_f32(&[gate, up, grad], self.name(), |data| {
            let &[g, u, d] = data else {
                candle_core::bail!("silu·mul backward: three inputs expected");
            };
            silu_mul_backward(gate, up, g, u, d)
        })
    }
}

/// The gradients of `silu(gate) · up` for the inputs that need one.
fn silu_mul_backward(
    gate: &Tensor,
    up: &Tensor,
    g: &[f32],
    u: &[f32],
    d: &[f32],
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    // d/dx silu(x) = s(x) (1 + x (1 - s(x))); both gradients in one pass.
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    const CHUNK: usize = 1 << 14;
    let grads = |(i, (a, b)): (usize, (&mut [f32], &mut [f32]))| {
        let r = i * CHUNK..i * CHUNK + a.len();
        crate::vmath::silu_mul_grads(a, b, &g[r.clone()], &u[r.clone()], &d[r]);
    };
    if g.len() >= MIN_PAR_ELEMS {
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(grads);
    } else {
        dg.chunks_mut(CHUNK)
            .zip(du.chunks_mut(CHUNK))
            .enumerate()
            .for_each(grads);
    }
    let dgate = if gate.track_op() {
        Some(Tensor::from_vec(dg, gate.shape(), gate.device())?)
    } else {
        None
    };
    let dup = if up.track_op() {
        Some(Tensor::from_vec(du, up.shape(), up.device())?)
    } else {
        None
    };
    Ok((dgate, dup))
}

/// `silu(gate) · up` for two same-shaped f32 CPU tensors in one op (one saved output instead of
/// three), with a backward for both inputs.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// GELU, tanh approximation

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "foundry-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        par_fill(&mut out, |off, o| {
            crate::vmath::gelu_tanh(o, &x[off..off + o.len()])
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        let dx = map2_tensors(grad, arg, |g, x, o| crate::vmath::gelu_tanh_grad(o, g, x))?;
        Ok(Some(dx))
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`) on f32 CPU data, parallel, with
/// backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh)
}
