//! Fast CPU kernels with an analytic backward for the ops candle 0.11 only has forward-only:
//! softmax over the last dimension, RMS normalisation, layer normalisation, rotary embedding
//! (rotate-half layout) and a frozen linear whose backward computes only the input gradient.
//!
//! Each op is a candle `CustomOp` whose forward is a row-parallel loop over contiguous f32 data
//! and whose backward is another row loop (no autograd graph is built for the backward). The
//! callers in [`crate::ops`] fall back to composed differentiable candle ops for other devices
//! and dtypes.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::linear::FrozenWeight;

pub mod timing {
    //! Optional wall-clock totals per fused op and pass, to see where a training step goes
    //! (`bench_step` prints them). Off unless [`enable`]d: then each op adds one clock read
    //! and one uncontended lock per call.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    static ENABLED: AtomicBool = AtomicBool::new(false);
    /// Total time and calls per `(op, pass)`.
    type Totals = BTreeMap<(&'static str, Pass), (Duration, u64)>;
    static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

    /// Which pass of an op a time belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Pass {
        /// The op's forward.
        Forward,
        /// The op's backward.
        Backward,
    }

    /// Starts recording (process-wide).
    pub fn enable() {
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// The totals so far, `(op, pass, seconds, calls)`, and resets them.
    pub fn take() -> Vec<(&'static str, Pass, f64, u64)> {
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *totals)
            .into_iter()
            .map(|((op, pass), (d, n))| (op, pass, d.as_secs_f64(), n))
            .collect()
    }

    /// Adds the time from its creation to its drop to `(op, pass)` when recording is on.
    pub struct Scope {
        key: (&'static str, Pass),
        start: Option<Instant>,
    }

    impl Scope {
        /// Starts timing one call of `op`'s `pass`.
        pub fn new(op: &'static str, pass: Pass) -> Self {
            let start = ENABLED.load(Ordering::Relaxed).then(Instant::now);
            Self {
                key: (op, pass),
                start,
            }
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            if let Some(start) = self.start {
                let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
                let e = totals.entry(self.key).or_default();
                e.0 += start.elapsed();
                e.1 += 1;
            }
        }
    }
}

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
    let d = a.dim(candle_core::D::Minus1)?;
    if a.shape() != b.shape() {
        candle_core::bail!("kernel backward: {:?} and {:?} differ", a.dims(), b.dims());
    }
    let out = with_f32(&[a, b], "kernel backward", |data| match data {
        &[xa, xb] => Ok(rows_map2(xa, xb, d, f)),
        _ => candle_core::bail!("kernel backward: two inputs expected"),
    })?;
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
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let x = contiguous_f32(s, l, self.name())?;
        let out = rows_map(x, last_dim(l), |r, o| {
            o.copy_from_slice(r);
            crate::vmath::softmax_in_place(o);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
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
    /// The per-feature weight multiplied in after normalising (not trained).
    weight: Option<Vec<f32>>,
}

fn rms_inv(r: &[f32], eps: f32) -> f32 {
    let ms = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// Checks that a per-feature parameter has one value per element of the last dimension.
fn check_features(p: &Option<Vec<f32>>, d: usize, op: &str) -> Result<()> {
    match p {
        Some(w) if w.len() != d => {
            candle_core::bail!("{op}: {} parameters for rows of {d}", w.len())
        }
        _ => Ok(()),
    }
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
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let x = contiguous_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(self.apply(x, 1.0)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
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

/// A linear's input as `(rows, width)`: all leading dims flattened, so that `[b, s, in]` needs
/// no reshape node (whose backward would cost candle a zero-fill and an add of the gradient).
fn rows_by_width(shape: &Shape, op: &str) -> Result<(usize, usize)> {
    match shape.dims().split_last() {
        Some((&k, lead)) if !lead.is_empty() => Ok((lead.iter().product(), k)),
        _ => candle_core::bail!("{op}: input {shape:?} needs at least two dims"),
    }
}

/// `shape` with its last dim replaced by `n` (a linear's output shape).
fn with_last(shape: &Shape, n: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

struct FrozenLinear {
    src: FrozenSource,
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
pub fn frozen_linear(x: &Tensor, src: FrozenSource) -> Result<Tensor> {
    frozen_linear_with(x, src, None, Products::F32)
}

/// [`frozen_linear`] with an optional bias `[out]` that is not trained (the product accumulates
/// onto the bias rows, so no separate pass adds it) and the precision of the products.
pub fn frozen_linear_with(
    x: &Tensor,
    src: FrozenSource,
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

// ---------------------------------------------------------------------------------------------
// f32 GEMM on slices

/// A strided read-only view of an f32 matrix: `data[i * rows + j * cols]` is element `(i, j)`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

fn view(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    View { data, rows, cols }
}

/// `dst[m × n] (row-major) = (accumulate ? dst : 0) + beta · lhs[m × k] · rhs[k × n]`, with the
/// gemm crate (the same kernels candle's matmul uses), after checking that every view stays
/// inside its slice. Large products run on the rayon pool.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    beta: f32,
    accumulate: bool,
) -> Result<()> {
    let last = |v: View<'_>, r: usize, c: usize| (r.max(1) - 1) * v.rows + (c.max(1) - 1) * v.cols;
    if dst.len() != m * n
        || (m * k > 0 && last(lhs, m, k) >= lhs.data.len())
        || (k * n > 0 && last(rhs, k, n) >= rhs.data.len())
    {
        candle_core::bail!("sgemm: views do not fit their buffers ({m}×{k} · {k}×{n})");
    }
    if m * n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.iter_mut().for_each(|v| *v = 0.0);
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let parallelism = if PARALLEL_GEMM.with(|p| p.get()) && threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the bounds of all three views were checked above, dst is exclusively borrowed and
    // does not alias the shared lhs / rhs slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cols as isize,
            lhs.rows as isize,
            rhs.data.as_ptr(),
            rhs.cols as isize,
            rhs.rows as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

thread_local! {
    /// Whether [`sgemm`] may split a product over the rayon pool (off inside tasks that are
    /// already parallel, e.g. one attention head group each).
    static PARALLEL_GEMM: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `f` with [`sgemm`] kept on the calling thread.
fn serial_gemm<R>(f: impl FnOnce() -> R) -> R {
    let before = PARALLEL_GEMM.with(|p| p.replace(false));
    let r = f();
    PARALLEL_GEMM.with(|p| p.set(before));
    r
}

/// A detached, contiguous f32 CPU copy-free handle on a tensor, to borrow its data.
fn cpu_contiguous(t: &Tensor, op: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        candle_core::bail!("{op}: f32 CPU tensors expected, got {:?}", t.dtype());
    }
    t.detach().contiguous()
}

fn storage_f32<'a>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => contiguous_f32(c, l, op),
        _ => candle_core::bail!("{op}: cpu storage expected"),
    }
}

/// Runs `f` on the f32 data of `tensors` (each detached and made contiguous, on the CPU), in
/// order: how a backward reads its inputs and the incoming gradient.
fn with_f32<R>(tensors: &[&Tensor], op: &str, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let owned: Vec<Tensor> = tensors
        .iter()
        .map(|t| cpu_contiguous(t, op))
        .collect::<Result<_>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let slices: Vec<&[f32]> = guards
        .iter()
        .map(|(s, l)| storage_f32(s, l, op))
        .collect::<Result<_>>()?;
    f(&slices)
}

// ---------------------------------------------------------------------------------------------
// products with a frozen weight: f32, or bf16 where the CPU has AVX512-BF16 and it is asked for

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

impl FrozenSource {
    /// The weight's `[out, in]` shape.
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            FrozenSource::Dense(w) => w.dims2(),
            FrozenSource::Frozen(f) => Ok(f.shape()),
        }
    }

    /// Runs `f` with the weight as a block source (a dense tensor's data, or the compact weight
    /// decoded block by block).
    fn with_blocks<R>(
        &self,
        f: impl FnOnce(&dyn crate::bf16gemm::Blocks) -> Result<R>,
    ) -> Result<R> {
        match self {
            FrozenSource::Dense(w) => {
                let w = cpu_contiguous(w, "frozen weight")?;
                let (n, k) = w.dims2()?;
                let (s, l) = w.storage_and_layout();
                let data = storage_f32(&s, l, "frozen weight")?;
                f(&crate::bf16gemm::Dense::new(data, n, k).map_err(candle_core::Error::Msg)?)
            }
            FrozenSource::Frozen(w) => f(&FrozenBlocks(w.as_ref())),
        }
    }

    /// The weight packed as the right operand of a bf16 product: `Wᵀ` (`transposed`, for
    /// `x · Wᵀ`) or `W` (for `g · W`), with `extra` appended along the reduction: `[W | extra]ᵀ`
    /// or `[W; extra]` (a LoRA adapter's `B` or `A` riding in the base product). A compact
    /// weight is decoded straight into the panels.
    fn packed(
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
    fn times(
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
    fn times_new(
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

// ---------------------------------------------------------------------------------------------
// fused QLoRA linear

struct LoraLinear {
    src: FrozenSource,
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
    src: FrozenSource,
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

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) · up

struct SiluMul;

/// Runs `f(chunk_index_offset, out_chunk)` over `out` in parallel chunks for large inputs.
fn par_fill(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    const CHUNK: usize = 1 << 14;
    if out.len() >= MIN_PAR_ELEMS {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, o)| f(i * CHUNK, o));
    } else {
        f(0, out);
    }
}

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
// attention probabilities: softmax(scale · scores + mask)

/// An additive mask broadcast over `[b, h, q, k]` scores: its own dims, each 1 or the scores'.
struct MaskData {
    data: Vec<f32>,
    dims: [usize; 4],
}

impl MaskData {
    /// The f32 values and 4 dims of a mask tensor (no gradient).
    fn of(m: &Tensor) -> Result<Self> {
        let (a, b, c, d) = m.dims4()?;
        Ok(Self {
            data: m.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            dims: [a, b, c, d],
        })
    }
}

struct AttentionProbs {
    scale: f32,
    mask: Option<MaskData>,
}

impl CustomOp1 for AttentionProbs {
    fn name(&self) -> &'static str {
        "foundry-attention-probs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let (_, h, q, k) = l.shape().dims4()?;
        let x = contiguous_f32(s, l, self.name())?;
        let scale = self.scale;
        let mut out = vec![0f32; x.len()];
        let row = |ri: usize, r: &[f32], o: &mut [f32]| {
            match &self.mask {
                Some(m) => {
                    let [mb, mh, mq, _] = m.dims;
                    let (bi, hi, qi) = (ri / (h * q), (ri / q) % h, ri % q);
                    let mi = (((bi % mb) * mh + hi % mh) * mq + qi % mq) * k;
                    let mrow = &m.data[mi..mi + k];
                    for ((o, v), mv) in o.iter_mut().zip(r).zip(mrow) {
                        *o = v * scale + mv;
                    }
                }
                None => o.iter_mut().zip(r).for_each(|(o, v)| *o = v * scale),
            }
            crate::vmath::softmax_in_place(o);
        };
        if k > 0 {
            if x.len() >= MIN_PAR_ELEMS {
                out.par_chunks_mut(k)
                    .zip(x.par_chunks(k))
                    .enumerate()
                    .for_each(|(ri, (o, r))| row(ri, r, o));
            } else {
                out.chunks_mut(k)
                    .zip(x.chunks(k))
                    .enumerate()
                    .for_each(|(ri, (o, r))| row(ri, r, o));
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        // dx = scale · y ⊙ (g − ⟨g, y⟩)
        let scale = self.scale;
        let dx = map2_tensors(grad, res, |g, y, o| {
            let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
            for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                *o = scale * y * (g - dot);
            }
        })?;
        Ok(Some(dx))
    }
}

/// `softmax(scale · scores + mask)` over the last dimension of f32 CPU `scores` `[b, h, q, k]`
/// in one op (eager attention's weights, computed in the same order as transformers), with the
/// scores' backward. `mask` (no gradient) has 4 dims, each 1 or equal to the scores'.
pub fn attention_probs(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let sd = scores.dims4()?;
    let mask = match mask {
        Some(m) => {
            let md = m.dims4()?;
            let fits = [md.0, md.1, md.2, md.3]
                .iter()
                .zip([sd.0, sd.1, sd.2, sd.3])
                .enumerate()
                .all(|(i, (a, b))| *a == b || (*a == 1 && i < 3));
            if !fits {
                candle_core::bail!(
                    "attention mask {:?} does not broadcast to scores {:?}",
                    m.dims(),
                    scores.dims()
                );
            }
            Some(MaskData::of(m)?)
        }
        None => None,
    };
    scores.contiguous()?.apply_op1(AttentionProbs {
        scale: scale as f32,
        mask,
    })
}

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

// ---------------------------------------------------------------------------------------------
// fused multi-head attention (GQA, optional RoPE, additive mask)

/// The shape of a fused attention: heads, key/value heads, head size and score scale.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key / value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Multiplies the scores before the mask is added (usually `head_dim^-0.5`).
    pub scale: f64,
}

struct FusedAttention {
    shape: AttentionShape,
    /// RoPE tables `[seq, head_dim / 2]` (cos, sin) applied to queries and keys at the same
    /// positions (self-attention).
    rope: Option<(Vec<f32>, Vec<f32>)>,
    mask: Option<MaskData>,
}

/// Rotates (`sign` 1) or un-rotates (`sign` −1) one `[s, d]` slab in place, rotate-half layout.
fn rope_slab(x: &mut [f32], d: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let h = d / 2;
    for (p, r) in x.chunks_mut(d).enumerate() {
        let (c, sn) = (&cos[p * h..(p + 1) * h], &sin[p * h..(p + 1) * h]);
        for i in 0..h {
            let (a, b) = (r[i], r[i + h]);
            let si = sign * sn[i];
            r[i] = a * c[i] - b * si;
            r[i + h] = b * c[i] + a * si;
        }
    }
}

/// Copies head `head` of batch row `bi` out of `x` `[b, s, heads * d]` into a `[s, d]` slab.
fn gather_head(x: &[f32], bi: usize, s: usize, heads: usize, d: usize, head: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(s * d);
    for p in 0..s {
        let o = (bi * s + p) * heads * d + head * d;
        out.extend_from_slice(&x[o..o + d]);
    }
    out
}

/// Adds (or writes) a `[s, d]` slab back into head `head` of batch row `bi` of `x`.
fn scatter_head(
    x: &mut [f32],
    slab: &[f32],
    bi: usize,
    s: usize,
    heads: usize,
    d: usize,
    head: usize,
) {
    for p in 0..s {
        let o = (bi * s + p) * heads * d + head * d;
        x[o..o + d].copy_from_slice(&slab[p * d..(p + 1) * d]);
    }
}

/// What one (batch row, key/value head) task of the attention works on.
struct HeadGroup {
    /// Rotated keys and the values, `[sk, d]` each.
    k: Vec<f32>,
    v: Vec<f32>,
}

impl FusedAttention {
    fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<(usize, usize, usize)> {
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
            ..
        } = self.shape;
        let (b, sq, qw) = q.shape().dims3()?;
        let (kb, sk, kw) = k.shape().dims3()?;
        if kv_heads == 0
            || heads % kv_heads != 0
            || qw != heads * d
            || kw != kv_heads * d
            || kb != b
            || v.shape() != k.shape()
        {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads / {kv_heads} kv heads of {d}",
                q.dims(), k.dims(), v.dims()
            );
        }
        if let Some((c, _)) = &self.rope {
            if sq != sk || c.len() != sq * d / 2 || d % 2 != 0 {
                candle_core::bail!("fused attention: RoPE tables do not fit {sq} positions of {d}");
            }
        }
        if let Some(m) = &self.mask {
            let [mb, mh, mq, mk] = m.dims;
            if !(mb == 1 || mb == b)
                || !(mh == 1 || mh == heads)
                || !(mq == 1 || mq == sq)
                || mk != sk
            {
                candle_core::bail!(
                    "fused attention: mask {:?} does not fit [{b}, {heads}, {sq}, {sk}]",
                    m.dims
                );
            }
        }
        Ok((b, sq, sk))
    }

    fn group(&self, k: &[f32], v: &[f32], bi: usize, sk: usize, g: usize) -> HeadGroup {
        let (kvh, d) = (self.shape.kv_heads, self.shape.head_dim);
        let mut kr = gather_head(k, bi, sk, kvh, d, g);
        if let Some((c, sn)) = &self.rope {
            rope_slab(&mut kr, d, c, sn, 1.0);
        }
        HeadGroup {
            k: kr,
            v: gather_head(v, bi, sk, kvh, d, g),
        }
    }

    /// Rotated queries `[sq, d]` and attention weights `[sq, sk]` of head `hh`.
    fn probs(
        &self,
        q: &[f32],
        grp: &HeadGroup,
        bi: usize,
        sq: usize,
        sk: usize,
        hh: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (h, d) = (self.shape.heads, self.shape.head_dim);
        let mut qr = gather_head(q, bi, sq, h, d, hh);
        if let Some((c, sn)) = &self.rope {
            rope_slab(&mut qr, d, c, sn, 1.0);
        }
        let mut p = vec![0f32; sq * sk];
        sgemm(
            &mut p,
            (sq, sk, d),
            view(&qr, d, 1),
            view(&grp.k, 1, d),
            1.0,
            false,
        )?;
        let scale = self.shape.scale as f32;
        for (qi, row) in p.chunks_mut(sk.max(1)).enumerate() {
            match &self.mask {
                Some(m) => {
                    let [mb, mh, mq, _] = m.dims;
                    let mi = (((bi % mb) * mh + hh % mh) * mq + qi % mq) * sk;
                    for (v, mv) in row.iter_mut().zip(&m.data[mi..mi + sk]) {
                        *v = *v * scale + mv;
                    }
                }
                None => row.iter_mut().for_each(|v| *v *= scale),
            }
            crate::vmath::softmax_in_place(row);
        }
        Ok((qr, p))
    }
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "foundry-fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq_: &CpuStorage,
        lq: &Layout,
        sk_: &CpuStorage,
        lk: &Layout,
        sv_: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Forward);
        let (b, sq, sk) = self.dims(lq, lk, lv)?;
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
            ..
        } = self.shape;
        let rep = heads / kv_heads;
        let (q, k, v) = (
            contiguous_f32(sq_, lq, self.name())?,
            contiguous_f32(sk_, lk, self.name())?,
            contiguous_f32(sv_, lv, self.name())?,
        );
        let tasks: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..kv_heads).map(move |g| (bi, g)))
            .collect();
        let outs: Vec<Result<Vec<Vec<f32>>>> = tasks
            .par_iter()
            .map(|&(bi, g)| {
                serial_gemm(|| {
                    let grp = self.group(k, v, bi, sk, g);
                    (0..rep)
                        .map(|r| {
                            let (_, p) = self.probs(q, &grp, bi, sq, sk, g * rep + r)?;
                            let mut o = vec![0f32; sq * d];
                            sgemm(
                                &mut o,
                                (sq, d, sk),
                                view(&p, sk, 1),
                                view(&grp.v, d, 1),
                                1.0,
                                false,
                            )?;
                            Ok(o)
                        })
                        .collect()
                })
            })
            .collect();
        let mut out = vec![0f32; b * sq * heads * d];
        for (&(bi, g), o) in tasks.iter().zip(outs) {
            for (r, slab) in o?.iter().enumerate() {
                scatter_head(&mut out, slab, bi, sq, heads, d, g * rep + r);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, sq, heads * d))))
    }

    fn bwd(
        &self,
        qt: &Tensor,
        kt: &Tensor,
        vt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _timer = timing::Scope::new(self.name(), timing::Pass::Backward);
        let (lq, lk, lv) = (qt.layout(), kt.layout(), vt.layout());
        let (b, sq, sk) = self.dims(lq, lk, lv)?;
        with_f32(&[qt, kt, vt, grad], self.name(), |data| {
            let &[q, k, v, go] = data else {
                candle_core::bail!("fused attention backward: four inputs expected");
            };
            self.backward((qt, kt, vt), (q, k, v, go), (b, sq, sk))
        })
    }
}

impl FusedAttention {
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        (qt, kt, vt): (&Tensor, &Tensor, &Tensor),
        (q, k, v, go): (&[f32], &[f32], &[f32], &[f32]),
        (b, sq, sk): (usize, usize, usize),
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
            scale,
        } = self.shape;
        let (scale, rep) = (scale as f32, heads / kv_heads);
        let tasks: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..kv_heads).map(move |g| (bi, g)))
            .collect();
        type Grads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
        let outs: Vec<Result<Grads>> = tasks
            .par_iter()
            .map(|&(bi, g)| {
                serial_gemm(|| {
                    let grp = self.group(k, v, bi, sk, g);
                    let (mut dk, mut dv) = (vec![0f32; sk * d], vec![0f32; sk * d]);
                    let mut dqs = Vec::with_capacity(rep);
                    for r in 0..rep {
                        let hh = g * rep + r;
                        let (qr, p) = self.probs(q, &grp, bi, sq, sk, hh)?;
                        let dout = gather_head(go, bi, sq, heads, d, hh);
                        // dV += Pᵀ dO
                        sgemm(
                            &mut dv,
                            (sk, d, sq),
                            view(&p, 1, sk),
                            view(&dout, d, 1),
                            1.0,
                            true,
                        )?;
                        // dP = dO Vᵀ; dS = scale · P ⊙ (dP − ⟨dP, P⟩)
                        let mut ds = vec![0f32; sq * sk];
                        sgemm(
                            &mut ds,
                            (sq, sk, d),
                            view(&dout, d, 1),
                            view(&grp.v, 1, d),
                            1.0,
                            false,
                        )?;
                        for (drow, prow) in ds.chunks_mut(sk.max(1)).zip(p.chunks(sk.max(1))) {
                            let dot: f32 = drow.iter().zip(prow).map(|(a, b)| a * b).sum();
                            for (dv_, pv) in drow.iter_mut().zip(prow) {
                                *dv_ = scale * pv * (*dv_ - dot);
                            }
                        }
                        // dQ = dS K (then un-rotated); dK += dSᵀ Q
                        let mut dq = vec![0f32; sq * d];
                        sgemm(
                            &mut dq,
                            (sq, d, sk),
                            view(&ds, sk, 1),
                            view(&grp.k, d, 1),
                            1.0,
                            false,
                        )?;
                        sgemm(
                            &mut dk,
                            (sk, d, sq),
                            view(&ds, 1, sk),
                            view(&qr, d, 1),
                            1.0,
                            true,
                        )?;
                        if let Some((c, sn)) = &self.rope {
                            rope_slab(&mut dq, d, c, sn, -1.0);
                        }
                        dqs.push(dq);
                    }
                    if let Some((c, sn)) = &self.rope {
                        rope_slab(&mut dk, d, c, sn, -1.0);
                    }
                    Ok((dqs, dk, dv))
                })
            })
            .collect();
        let mut dq = vec![0f32; b * sq * heads * d];
        let mut dk = vec![0f32; b * sk * kv_heads * d];
        let mut dv = vec![0f32; b * sk * kv_heads * d];
        for (&(bi, g), o) in tasks.iter().zip(outs) {
            let (dqs, dkg, dvg) = o?;
            for (r, slab) in dqs.iter().enumerate() {
                scatter_head(&mut dq, slab, bi, sq, heads, d, g * rep + r);
            }
            scatter_head(&mut dk, &dkg, bi, sk, kv_heads, d, g);
            scatter_head(&mut dv, &dvg, bi, sk, kv_heads, d, g);
        }
        let dev = qt.device();
        let grad_if = |t: &Tensor, data: Vec<f32>| -> Result<Option<Tensor>> {
            Ok(if t.track_op() {
                Some(Tensor::from_vec(data, t.shape(), dev)?)
            } else {
                None
            })
        };
        Ok((grad_if(qt, dq)?, grad_if(kt, dk)?, grad_if(vt, dv)?))
    }
}

/// Eager multi-head attention in one op on f32 CPU data laid out as the projections give it:
/// `q` `[b, sq, heads · d]`, `k`/`v` `[b, sk, kv_heads · d]` → `[b, sq, heads · d]`. Keys and
/// values are shared by `heads / kv_heads` query heads (GQA); `rope` (`cos`, `sin`, each
/// `[s, d / 2]`) rotates queries and keys at the same positions; `mask` (4 dims, each 1 or the
/// scores' `[b, heads, sq, sk]`) is added to the scaled scores. Only the output is kept for the
/// backward, which recomputes the weights per head.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: AttentionShape,
    rope: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    let rope = match rope {
        Some((c, s)) => Some((flat(c)?, flat(s)?)),
        None => None,
    };
    let mask = mask.map(MaskData::of).transpose()?;
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        FusedAttention { shape, rope, mask },
    )
}
