//! The base weight of a linear, in one enum: a dense tensor or a compact frozen weight (NF4), and
//! the products with it (f32, or bf16 where the CPU can).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::gemm::{sgemm, view};
use crate::slices::{cpu_contiguous, storage_f32};

/// A frozen base weight stored in some compact form (NF4 comes with the QLoRA work).
pub trait FrozenWeight: Send + Sync + std::fmt::Debug {
    /// Materialises the weight as a dense `[out, in]` tensor.
    fn dequantize(&self, dtype: DType, device: &Device) -> Result<Tensor>;
    /// The logical `[out, in]` shape of the weight.
    fn shape(&self) -> (usize, usize);
    /// Writes the `rows × cols` block at `(r0, c0)` of the dequantized weight (f32, row-major)
    /// into `out`, so that a product can decode a compact weight one panel at a time, in
    /// parallel, without a dense copy of all of it. The default dequantizes the whole weight;
    /// compact formats override it.
    fn dequantize_block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let (n, k) = self.shape();
        if !crate::bf16gemm::block_fits((n, k), (r0, c0), (rows, cols), out.len()) {
            candle_core::bail!("weight block {rows}×{cols} at ({r0}, {c0}) outside [{n}, {k}]");
        }
        let w = self
            .dequantize(DType::F32, &Device::Cpu)?
            .narrow(0, r0, rows)?
            .narrow(1, c0, cols)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        out.copy_from_slice(&w);
        Ok(())
    }
    /// The concrete weight, so that an exporter can write its compact storage as is (e.g. the
    /// NF4 bytes) instead of re-quantizing a dequantized copy. `None` when not exposed.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The base weight of a seam linear.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A dense `[out, in]` tensor.
    Dense(Tensor),
    /// A frozen weight dequantized at every forward pass.
    Frozen(Arc<dyn FrozenWeight>),
}

impl BaseWeight {
    /// The `[out, in]` shape of the weight.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(w) => {
                let d = w.dims();
                (d[0], d.get(1).copied().unwrap_or(1))
            }
            BaseWeight::Frozen(f) => f.shape(),
        }
    }

    /// The weight as a dense tensor in `dtype` (detached: it is never trained here).
    pub(crate) fn weight(&self, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => w.detach().to_dtype(dtype),
            BaseWeight::Frozen(f) => f.dequantize(dtype, device),
        }
    }
}

/// The precision of a linear's products with its frozen weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16 operands, f32 sums (AMX or AVX512-BF16), as PyTorch's bf16 autocast computes a linear.
    Bf16,
}

impl Products {
    /// Whether this CPU can compute products in this precision: bf16 needs AVX512-BF16.
    pub fn check_supported(self) -> std::result::Result<(), &'static str> {
        match self {
            Products::Bf16 if !crate::bf16gemm::available() => {
                Err("bf16 products need AVX512-BF16, which this CPU lacks")
            }
            _ => Ok(()),
        }
    }

    /// `Bf16` when `bf16` and the CPU can run it, else `F32`.
    pub fn bf16_if_available(bf16: bool) -> Self {
        if bf16 && crate::bf16gemm::available() {
            Products::Bf16
        } else {
            Products::F32
        }
    }
}

/// A frozen weight as a block source for the bf16 packers: decoded one panel at a time.
struct FrozenBlocks<'a>(&'a dyn FrozenWeight);

impl crate::bf16gemm::Blocks for FrozenBlocks<'_> {
    fn dims(&self) -> (usize, usize) {
        self.0.shape()
    }

    fn block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), String> {
        self.0
            .dequantize_block(r0, c0, rows, cols, out)
            .map_err(|e| e.to_string())
    }
}

impl BaseWeight {
    /// The weight's `[out, in]` shape.
    pub(crate) fn dims(&self) -> Result<(usize, usize)> {
        match self {
            BaseWeight::Dense(w) => w.dims2(),
            BaseWeight::Frozen(f) => Ok(f.shape()),
        }
    }

    /// Runs `f` with the weight as a block source (a dense tensor's data, or the compact weight
    /// decoded block by block).
    pub(crate) fn with_blocks<R>(
        &self,
        f: impl FnOnce(&dyn crate::bf16gemm::Blocks) -> Result<R>,
    ) -> Result<R> {
        match self {
            BaseWeight::Dense(w) => {
                let w = cpu_contiguous(w, "frozen weight")?;
                let (n, k) = w.dims2()?;
                let (s, l) = w.storage_and_layout();
                let data = storage_f32(&s, l, "frozen weight")?;
                f(&crate::bf16gemm::Dense::new(data, n, k).map_err(candle_core::Error::Msg)?)
            }
            BaseWeight::Frozen(w) => f(&FrozenBlocks(w.as_ref())),
        }
    }

    /// The weight packed as the right operand of a bf16 product: `Wᵀ` (`transposed`, for
    /// `x · Wᵀ`) or `W` (for `g · W`), with `extra` appended along the reduction: `[W | extra]ᵀ`
    /// or `[W; extra]` (a LoRA adapter's `B` or `A` riding in the base product). A compact
    /// weight is decoded straight into the panels.
    pub(crate) fn packed(
        &self,
        transposed: bool,
        extra: Option<&dyn crate::bf16gemm::Blocks>,
    ) -> Result<crate::bf16gemm::PackedB> {
        use crate::bf16gemm::{Beside, PackedB, Stacked};
        self.with_blocks(|w| {
            let packed = match (transposed, extra) {
                (true, None) => PackedB::from_blocks_transposed(w),
                (true, Some(right)) => PackedB::from_blocks_transposed(&Beside { left: w, right }),
                (false, None) => PackedB::from_blocks(w),
                (false, Some(bottom)) => PackedB::from_blocks(&Stacked { top: w, bottom }),
            };
            packed.map_err(candle_core::Error::Msg)
        })
    }

    /// `dst (+)= x · Wᵀ` for this `[n, k]` weight when `transposed` (x `[m, k]`, dst `[m, n]`),
    /// else `dst (+)= x · W` (x `[m, n]`, dst `[m, k]`: the input gradient).
    pub(crate) fn times(
        &self,
        transposed: bool,
        products: Products,
        dst: &mut [f32],
        m: usize,
        x: &[f32],
        accumulate: bool,
    ) -> Result<()> {
        let (n, k) = self.dims()?;
        let (inner, outer) = if transposed { (k, n) } else { (n, k) };
        if products == Products::Bf16 {
            let a = crate::bf16gemm::PackedA::from_rows(x, m, inner)
                .map_err(candle_core::Error::Msg)?;
            return crate::bf16gemm::gemm(dst, &a, &self.packed(transposed, None)?, accumulate)
                .map_err(candle_core::Error::Msg);
        }
        let w = self
            .weight(DType::F32, &candle_core::Device::Cpu)?
            .contiguous()?;
        let (sw, lw) = w.storage_and_layout();
        let wv = storage_f32(&sw, lw, "frozen weight")?;
        let rhs = if transposed {
            view(wv, 1, k)
        } else {
            view(wv, k, 1)
        };
        sgemm(
            dst,
            (m, outer, inner),
            view(x, inner, 1),
            rhs,
            1.0,
            accumulate,
        )
    }

    /// [`Self::times`] into a new buffer, not zero-filled first where the bf16 product writes
    /// all of it.
    pub(crate) fn times_new(
        &self,
        transposed: bool,
        products: Products,
        m: usize,
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let (n, k) = self.dims()?;
        let (inner, outer) = if transposed { (k, n) } else { (n, k) };
        if products == Products::Bf16 {
            let a = crate::bf16gemm::PackedA::from_rows(x, m, inner)
                .map_err(candle_core::Error::Msg)?;
            return crate::bf16gemm::gemm_new(&a, &self.packed(transposed, None)?)
                .map_err(candle_core::Error::Msg);
        }
        let mut y = vec![0f32; m * outer];
        self.times(transposed, products, &mut y, m, x, false)?;
        Ok(y)
    }
}
