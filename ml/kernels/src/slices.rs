//! Borrowing f32 data out of candle storage and tensors, and the row loops the fused ops share.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows handled per parallel task (small tensors run on one thread).
pub(crate) const MIN_PAR_ELEMS: usize = 1 << 14;

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f(row_in, row_out)` over rows of length `d`, in parallel for large inputs.
pub(crate) fn rows_map(x: &[f32], d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
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
pub(crate) fn rows_map2(
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
pub(crate) fn map2_tensors(
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

pub(crate) fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// A linear's input as `(rows, width)`: all leading dims flattened, so that `[b, s, in]` needs
/// no reshape node (whose backward would cost candle a zero-fill and an add of the gradient).
pub(crate) fn rows_by_width(shape: &Shape, op: &str) -> Result<(usize, usize)> {
    match shape.dims().split_last() {
        Some((&k, lead)) if !lead.is_empty() => Ok((lead.iter().product(), k)),
        _ => candle_core::bail!("{op}: input {shape:?} needs at least two dims"),
    }
}

/// `shape` with its last dim replaced by `n` (a linear's output shape).
pub(crate) fn with_last(shape: &Shape, n: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// A detached, contiguous f32 CPU copy-free handle on a tensor, to borrow its data.
pub(crate) fn cpu_contiguous(t: &Tensor, op: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        candle_core::bail!("{op}: f32 CPU tensors expected, got {:?}", t.dtype());
    }
    t.detach().contiguous()
}

pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => contiguous_f32(c, l, op),
        _ => candle_core::bail!("{op}: cpu storage expected"),
    }
}

/// Runs `f` on the f32 data of `tensors` (each detached and made contiguous, on the CPU), in
/// order: how a backward reads its inputs and the incoming gradient.
pub(crate) fn with_f32<R>(
    tensors: &[&Tensor],
    op: &str,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
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

/// Runs `f(chunk_index_offset, out_chunk)` over `out` in parallel chunks for large inputs.
pub(crate) fn par_fill(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    const CHUNK: usize = 1 << 14;
    if out.len() >= MIN_PAR_ELEMS {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, o)| f(i * CHUNK, o));
    } else {
        f(0, out);
    }
}

/// Checks that a per-feature parameter has one value per element of the last dimension.
pub(crate) fn check_features(p: &Option<Vec<f32>>, d: usize, op: &str) -> Result<()> {
    match p {
        Some(w) if w.len() != d => {
            candle_core::bail!("{op}: {} parameters for rows of {d}", w.len())
        }
        _ => Ok(()),
    }
}
