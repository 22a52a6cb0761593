//! Linears over a base weight that is not trained: a frozen linear whose backward computes only
//! the input gradient, and the fused QLoRA linear (base product plus LoRA adapter in one op).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::slices::*;
use crate::timing;
use crate::weight::{BaseWeight, Products};

struct FrozenLinear {
    src: BaseWeight,
    products: Products,
    /// A bias added to every output row (not trained), written before the product accumulates.
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "foundry-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let (m, k) = rows_by_width(l.shape(), self.name())?;
        let (n, wk) = self.src.dims()?;
        if wk != k {
            candle_core::bail!("frozen linear: input width {k} does not fit weight [{n}, {wk}]");
        }
        check_features(&self.bias, n, self.name())?;
        let x = contiguous_f32(s, l, self.name())?;
        let y = match &self.bias {
            Some(b) => {
                let mut y = vec![0f32; m * n];
                y.chunks_mut(n.max(1))
                    .for_each(|row| row.copy_from_slice(b));
                self.src.times(true, self.products, &mut y, m, x, true)?;
                y
            }
            None => self.src.times_new(true, self.products, m, x)?,
        };
        Ok((CpuStorage::F32(y), with_last(l.shape(), n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        // Only the input gradient: dx = g W. The weight and bias get none.
        let (m, _) = rows_by_width(arg.shape(), self.name())?;
        let dx = with_f32(&[grad], self.name(), |data| {
            let &[g] = data else {
                candle_core::bail!("frozen linear backward: one gradient expected");
            };
            self.src.times_new(false, self.products, m, g)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `x · Wᵀ` for a 2-D f32 CPU input `[n, in]` and a frozen `[out, in]` weight. The backward
/// returns only the input gradient (candle's matmul would also compute the weight's).
pub fn frozen_linear(x: &Tensor, src: BaseWeight) -> Result<Tensor> {
    frozen_linear_with(x, src, None, Products::F32)
}

/// [`frozen_linear`] with an optional bias `[out]` that is not trained (the product accumulates
/// onto the bias rows, so no separate pass adds it) and the precision of the products.
pub fn frozen_linear_with(
    x: &Tensor,
    src: BaseWeight,
    bias: Option<&Tensor>,
    products: Products,
) -> Result<Tensor> {
    let bias = match bias {
        Some(b) => Some(b.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        None => None,
    };
    x.contiguous()?.apply_op1(FrozenLinear {
        src,
        products,
        bias,
    })
}

// fused QLoRA linear

struct LoraLinear {
    src: BaseWeight,
    products: Products,
    scale: f32,
    /// The inverted-dropout mask of the adapter's input (same shape as x), when training with
    /// dropout.
    mask: Option<Arc<Vec<f32>>>,
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "foundry-lora-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let (m, k) = rows_by_width(lx.shape(), self.name())?;
        let (r, ka) = la.shape().dims2()?;
        let (n, rb) = lb.shape().dims2()?;
        let (wn, wk) = self.src.dims()?;
        if ka != k || rb != r || wk != k || wn != n {
            candle_core::bail!(
                "lora linear: x [{m}, {k}], A [{r}, {ka}], B [{n}, {rb}] and weight [{wn}, {wk}] do not fit"
            );
        }
        if self.mask.as_ref().is_some_and(|mk| mk.len() != m * k) {
            candle_core::bail!("lora linear: dropout mask does not fit x [{m}, {k}]");
        }
        let x = contiguous_f32(sx, lx, self.name())?;
        let a = contiguous_f32(sa, la, self.name())?;
        let b = contiguous_f32(sb, lb, self.name())?;
        let dims = crate::adapter::Dims { m, k, r, n };
        let mask = self.mask.as_deref().map(|v| &v[..]);
        if self.products == Products::Bf16 {
            // y = [x | s·h] · [W | B]ᵀ, h = dropout(x) Aᵀ: one bf16 product.
            let rows = crate::adapter::forward_rows(x, mask, a, dims, self.scale)
                .map_err(candle_core::Error::Msg)?;
            let bsrc = crate::bf16gemm::Dense::new(b, n, r).map_err(candle_core::Error::Msg)?;
            let packed = self.src.packed(true, Some(&bsrc))?;
            let y = crate::bf16gemm::gemm_new(&rows, &packed).map_err(candle_core::Error::Msg)?;
            return Ok((CpuStorage::F32(y), with_last(lx.shape(), n)));
        }
        // y = x Wᵀ
        let mut y = self.src.times_new(true, self.products, m, x)?;
        // y += scale · (dropout(x) Aᵀ) Bᵀ
        crate::adapter::forward(&mut y, x, mask, a, b, dims, self.scale)
            .map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(y), with_last(lx.shape(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        let name = self.name();
        let (m, k) = rows_by_width(x.shape(), name)?;
        let (r, _) = a.dims2()?;
        let (n, _) = b.dims2()?;
        with_f32(&[x, a, b, grad], name, |data| {
            self.backward(x, a, b, data, (m, k, r, n))
        })
    }
}

impl LoraLinear {
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        data: &[&[f32]],
        (m, k, r, n): (usize, usize, usize, usize),
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let &[xv, av, bv, g] = data else {
            candle_core::bail!("lora linear backward: four inputs expected");
        };
        let dims = crate::adapter::Dims { m, k, r, n };
        if self.products == Products::Bf16 && self.mask.is_none() && x.track_op() {
            // dx = [g | s·gB] · [W; A]: one bf16 product, its left rows written by the
            // adapter's pass over g.
            let mut rows = crate::bf16gemm::PackedA::zeroed(m, n.next_multiple_of(2) + r);
            let crate::adapter::Grads { da, db } = crate::adapter::backward_packing(
                g,
                xv,
                None,
                av,
                bv,
                None,
                Some(&mut rows),
                dims,
                self.scale,
            )
            .map_err(candle_core::Error::Msg)?;
            let asrc = crate::bf16gemm::Dense::new(av, r, k).map_err(candle_core::Error::Msg)?;
            let packed = self.src.packed(false, Some(&asrc))?;
            let dx = crate::bf16gemm::gemm_new(&rows, &packed).map_err(candle_core::Error::Msg)?;
            return Ok((
                Some(Tensor::from_vec(dx, x.shape(), x.device())?),
                Some(Tensor::from_vec(da, (r, k), a.device())?),
                Some(Tensor::from_vec(db, (n, r), b.device())?),
            ));
        }
        // dx = g W (the frozen base) + the adapter's part, only when x needs a gradient.
        let mut dx = if x.track_op() {
            Some(self.src.times_new(false, self.products, m, g)?)
        } else {
            None
        };
        let crate::adapter::Grads { da, db } = crate::adapter::backward(
            g,
            xv,
            self.mask.as_deref().map(|v| &v[..]),
            av,
            bv,
            dx.as_deref_mut(),
            dims,
            self.scale,
        )
        .map_err(candle_core::Error::Msg)?;
        let dx = dx
            .map(|d| Tensor::from_vec(d, x.shape(), x.device()))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(da, (r, k), a.device())?),
            Some(Tensor::from_vec(db, (n, r), b.device())?),
        ))
    }
}

/// `x · Wᵀ + scale · (dropout(x) · Aᵀ) · Bᵀ` in one op for a 2-D f32 CPU input `[m, in]`, a
/// frozen `[out, in]` weight and LoRA `A` `[r, in]`, `B` `[out, r]`: one output tensor instead
/// of four, so that the autograd graph keeps a quarter of the activations. The backward gives
/// `A` and `B` their gradients, and `x` its gradient only when `x` needs one (never the
/// weight). `mask` is the inverted-dropout mask of `x`'s elements (`None`: no dropout).
pub fn lora_linear(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    src: BaseWeight,
    scale: f64,
    mask: Option<Vec<f32>>,
    products: Products,
) -> Result<Tensor> {
    let op = LoraLinear {
        src,
        products,
        scale: scale as f32,
        mask: mask.map(Arc::new),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}
