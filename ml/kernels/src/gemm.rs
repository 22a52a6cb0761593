//! f32 products on slices through the `gemm` crate (the GEMM behind candle's CPU matmul), so
//! that a fused op can accumulate into one output buffer without building tensors.

use candle_core::Result;

/// A strided read-only view of an f32 matrix: `data[i * rows + j * cols]` is element `(i, j)`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

pub(crate) fn view(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    View { data, rows, cols }
}

/// `dst[m × n] (row-major) = (accumulate ? dst : 0) + beta · lhs[m × k] · rhs[k × n]`, with the
/// gemm crate (the same kernels candle's matmul uses), after checking that every view stays
/// inside its slice. Large products run on the rayon pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
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
pub(crate) fn serial_gemm<R>(f: impl FnOnce() -> R) -> R {
    let before = PARALLEL_GEMM.with(|p| p.replace(false));
    let r = f();
    PARALLEL_GEMM.with(|p| p.set(before));
    r
}
