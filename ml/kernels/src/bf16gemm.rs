//! bf16 products on the CPU, as PyTorch's bf16 autocast does them: both operands rounded to
//! bf16 (nearest, ties to even), products summed in f32.
//!
//! Two kernels, the best one the CPU has is used ([`kernel`]):
//! - [`Kernel::Amx`]: Intel AMX `tdpbf16ps` on 16 × 16 f32 tiles, a 32 × 32 block of the output
//!   in four accumulator tiles. It needs AMX-BF16 and Linux's permission for the tile state
//!   (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once). About 1.0–1.35 TFLOP/s on 2 threads of a
//!   Sapphire-Rapids-class Xeon.
//! - [`Kernel::Avx512Bf16`]: `vdpbf16ps`, a 12 × 32 microkernel with 24 f32 accumulators in
//!   registers, broadcasting one pair of the left row per step. 380–430 GFLOP/s on 2 cores of
//!   an AMD EPYC.
//!
//! Layouts, shared by both kernels. The left operand ([`PackedA`]) is its rows as bf16, two
//! consecutive values per `u32` (`(hi << 16) | lo`, which is simply the bf16 row in memory
//! order). The right operand ([`PackedB`]) is panels of 32 columns holding bf16 pairs along the
//! reduction (`(b[2p + 1][j] << 16) | b[2p][j]`), which is AMX's "VNNI" layout: one B tile is 16
//! pair-rows × 16 columns of a panel, loaded with a 128-byte stride. Both are zero-padded: the
//! reduction to a multiple of 32 values (16 pairs, one tile), `PackedA`'s rows to a multiple of
//! 16 (one tile), so that the kernels never read past a buffer.
//!
//! The packers convert f32 → bf16 with AVX512-BF16 (`vcvtne2ps2bf16`, which, unlike the scalar
//! [`bf16_bits`], reads denormal inputs as zero) and run over the rayon pool. [`PackedB`] can be
//! packed from any [`Blocks`] source, so a compact weight (NF4) is dequantized straight into the
//! packed panels, one panel at a time, without a dense f32 copy of the whole weight.

use rayon::prelude::*;

const NR: usize = 32;
const MR: usize = 12;
/// Pairs of the reduction per block of the AVX-512 kernel (the panel slice stays in L1).
const KC: usize = 256;
/// Pairs per AMX tile row (64 bytes).
const TILE_PAIRS: usize = 16;
/// Rows per AMX tile.
const TILE_ROWS: usize = 16;

/// The bf16 product kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 vectors (`vdpbf16ps`).
    Avx512Bf16,
}

/// Whether this CPU can run the bf16 products (x86-64 with AVX-512F, AVX-512BW and
/// AVX512-BF16; AMX is used on top where present).
pub fn available() -> bool {
    crate::cpu::features().avx512_bf16
}

/// The fastest kernel this CPU (and OS) can run, `None` when bf16 products are not available.
pub fn kernel() -> Option<Kernel> {
    if !available() {
        None
    } else if amx::available() {
        Some(Kernel::Amx)
    } else {
        Some(Kernel::Avx512Bf16)
    }
}

/// Every kernel this machine can run, fastest first (tests compare them).
pub fn kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    if available() {
        if amx::available() {
            all.push(Kernel::Amx);
        }
        all.push(Kernel::Avx512Bf16);
    }
    all
}

/// `v` rounded to bf16 (nearest, ties to even), as its 16 bits.
pub fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        return (b >> 16) | 0x40;
    }
    let round = ((b >> 16) & 1) + 0x7fff;
    b.wrapping_add(round) >> 16
}

/// The reduction length `k` in pairs, padded to whole tiles.
fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2 * TILE_PAIRS) * TILE_PAIRS
}

/// A source of blocks of an f32 matrix: a dense slice, or a compact weight decoded on the fly.
pub trait Blocks: Sync {
    /// The matrix's `(rows, cols)`.
    fn dims(&self) -> (usize, usize);
    /// Writes the `rows × cols` block at `(r0, c0)` into `out`, row-major (`out.len()` is
    /// `rows * cols`).
    fn block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> Result<(), String>;
}

/// Whether the `rows × cols` block at `(r0, c0)` lies inside a `dims` matrix and `out_len` is
/// its size: the one bounds check of every [`Blocks`] source.
pub fn block_fits(
    dims: (usize, usize),
    (r0, c0): (usize, usize),
    (rows, cols): (usize, usize),
    out_len: usize,
) -> bool {
    r0 + rows <= dims.0 && c0 + cols <= dims.1 && out_len == rows * cols
}

/// A dense row-major f32 matrix as a [`Blocks`] source.
pub struct Dense<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Dense<'a> {
    /// `data` as a `[rows, cols]` matrix; an error when it is too short.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, String> {
        if data.len() < rows * cols {
            return Err(format!(
                "bf16 pack: {} values cannot hold a {rows}×{cols} matrix",
                data.len()
            ));
        }
        Ok(Self { data, rows, cols })
    }
}

impl Blocks for Dense<'_> {
    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        if !block_fits(self.dims(), (r0, c0), (rows, cols), out.len()) {
            return Err(format!(
                "bf16 pack: block {rows}×{cols} at ({r0}, {c0}) outside {}×{}",
                self.rows, self.cols
            ));
        }
        for (i, o) in out.chunks_mut(cols.max(1)).enumerate().take(rows) {
            let at = (r0 + i) * self.cols + c0;
            o.copy_from_slice(&self.data[at..at + cols]);
        }
        Ok(())
    }
}

/// Two sources one above the other, `[top; bottom]`, with a zero row between them when `top`
/// has an odd number of rows (so that `bottom` starts on a bf16 pair): the right operand
/// `[W; A]` of an input gradient whose LoRA part rides in the reduction.
pub struct Stacked<'a> {
    /// The upper rows.
    pub top: &'a dyn Blocks,
    /// The lower rows (same column count).
    pub bottom: &'a dyn Blocks,
}

impl Blocks for Stacked<'_> {
    fn dims(&self) -> (usize, usize) {
        let ((t, c), (b, _)) = (self.top.dims(), self.bottom.dims());
        (t.next_multiple_of(2) + b, c)
    }

    fn block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        let ((t, tc), (b, bc)) = (self.top.dims(), self.bottom.dims());
        let split = t.next_multiple_of(2);
        if tc != bc || r0 + rows > split + b || out.len() != rows * cols {
            return Err(format!(
                "bf16 pack: stacked block {rows}×{cols} at ({r0}, {c0}) does not fit"
            ));
        }
        for (i, o) in out.chunks_mut(cols.max(1)).enumerate().take(rows) {
            let row = r0 + i;
            if row < t {
                self.top.block(row, c0, 1, cols, o)?;
            } else if row < split {
                o.iter_mut().for_each(|v| *v = 0.0);
            } else {
                self.bottom.block(row - split, c0, 1, cols, o)?;
            }
        }
        Ok(())
    }
}

/// Two sources side by side, `[left | right]`, with a zero column between them when `left` has
/// an odd number of columns: the `[W | B]` whose transpose is the right operand of a linear's
/// output with its LoRA up-projection riding in the reduction.
pub struct Beside<'a> {
    /// The left columns.
    pub left: &'a dyn Blocks,
    /// The right columns (same row count).
    pub right: &'a dyn Blocks,
}

impl Blocks for Beside<'_> {
    fn dims(&self) -> (usize, usize) {
        let ((r, l), (_, rc)) = (self.left.dims(), self.right.dims());
        (r, l.next_multiple_of(2) + rc)
    }

    fn block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        let ((lr, l), (rr, rc)) = (self.left.dims(), self.right.dims());
        let split = l.next_multiple_of(2);
        if lr != rr || r0 + rows > lr || c0 + cols > split + rc || out.len() != rows * cols {
            return Err(format!(
                "bf16 pack: side-by-side block {rows}×{cols} at ({r0}, {c0}) does not fit"
            ));
        }
        out.iter_mut().for_each(|v| *v = 0.0);
        // The columns of the block in each part: [c0, c1) ∩ [0, l) and ∩ [split, split + rc).
        let c1 = c0 + cols;
        let parts = [
            (self.left, c0.min(l), c1.min(l), 0),
            (self.right, c0.max(split), c1.max(split), split),
        ];
        let mut part = Vec::new();
        for (src, from, to, base) in parts {
            if to <= from {
                continue;
            }
            let n = to - from;
            part.resize(rows * n, 0.0);
            src.block(r0, from - base, rows, n, &mut part)?;
            for (o, p) in out.chunks_mut(cols).zip(part.chunks(n)) {
                o[from - c0..to - c0].copy_from_slice(p);
            }
        }
        Ok(())
    }
}

/// A `[m, k]` left operand packed for [`gemm`].
pub struct PackedA {
    data: Vec<u32>,
    m: usize,
    k: usize,
    pairs: usize,
}

impl PackedA {
    /// `m` zero rows of width `k`, for a caller that writes the rows itself with [`pack_row`]
    /// (row `i` is `data_mut()[i * pairs()..]`).
    pub fn zeroed(m: usize, k: usize) -> Self {
        let pairs = padded_pairs(k);
        Self {
            data: vec![0u32; m.div_ceil(TILE_ROWS) * TILE_ROWS * pairs],
            m,
            k,
            pairs,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.k
    }

    /// `u32` pairs per row (the width padded to whole tiles).
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The packed rows (row-padding rows included, which must stay zero).
    pub fn data_mut(&mut self) -> &mut [u32] {
        &mut self.data
    }

    /// Packs `a` `[m, k]`, row-major.
    pub fn from_rows(a: &[f32], m: usize, k: usize) -> Result<Self, String> {
        if a.len() < m * k {
            return Err(format!(
                "bf16 pack: {} values cannot hold a {m}×{k} matrix",
                a.len()
            ));
        }
        let mut packed = Self::zeroed(m, k);
        let pairs = packed.pairs;
        if pairs > 0 {
            packed
                .data
                .par_chunks_mut(pairs)
                .take(m)
                .enumerate()
                .for_each(|(i, row)| row_to_pairs(&a[i * k..(i + 1) * k], row));
        }
        Ok(packed)
    }
}

/// A `[k, n]` right operand packed for [`gemm`].
pub struct PackedB {
    data: Vec<u32>,
    pairs: usize,
    n: usize,
    panels: usize,
}

impl PackedB {
    /// Packs `b` `[k, n]`, row-major.
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Result<Self, String> {
        Self::from_blocks(&Dense::new(b, k, n)?)
    }

    /// Packs the transpose of `w` `[n, k]` (row-major), i.e. the `[k, n]` operand of `x · wᵀ`.
    pub fn from_rows_transposed(w: &[f32], n: usize, k: usize) -> Result<Self, String> {
        Self::from_blocks_transposed(&Dense::new(w, n, k)?)
    }

    /// Packs a `[k, n]` source: each panel reads the `k × 32` block of its columns.
    pub fn from_blocks(src: &dyn Blocks) -> Result<Self, String> {
        let (k, n) = src.dims();
        let mut packed = Self::empty(k, n);
        let pairs = packed.pairs;
        if pairs == 0 || n == 0 {
            return Ok(packed);
        }
        packed
            .data
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .try_for_each_init(Vec::new, |buf, (jp, panel)| {
                let (j0, cols) = (jp * NR, NR.min(n - jp * NR));
                buf.resize(k * cols, 0.0);
                src.block(0, j0, k, cols, buf)?;
                for (p, out) in panel.chunks_mut(NR).enumerate().take(k.div_ceil(2)) {
                    let lo = &buf[2 * p * cols..(2 * p + 1) * cols];
                    let hi = buf.get((2 * p + 1) * cols..(2 * p + 2) * cols);
                    interleave_pairs(lo, hi, &mut out[..cols]);
                }
                Ok::<(), String>(())
            })?;
        Ok(packed)
    }

    /// Packs the transpose of an `[n, k]` source (the `[k, n]` operand of `x · wᵀ`): each panel
    /// reads the `32 × k` block of its rows.
    pub fn from_blocks_transposed(src: &dyn Blocks) -> Result<Self, String> {
        let (n, k) = src.dims();
        let mut packed = Self::empty(k, n);
        let pairs = packed.pairs;
        if pairs == 0 || n == 0 {
            return Ok(packed);
        }
        packed
            .data
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .try_for_each_init(
                || (Vec::new(), vec![0u32; pairs]),
                |(buf, row), (jp, panel)| {
                    let (j0, rows) = (jp * NR, NR.min(n - jp * NR));
                    buf.resize(rows * k, 0.0);
                    src.block(j0, 0, rows, k, buf)?;
                    for jj in 0..rows {
                        row_to_pairs(&buf[jj * k..(jj + 1) * k], row);
                        for (p, v) in row.iter().enumerate() {
                            panel[p * NR + jj] = *v;
                        }
                    }
                    Ok::<(), String>(())
                },
            )?;
        Ok(packed)
    }

    fn empty(k: usize, n: usize) -> Self {
        let (pairs, panels) = (padded_pairs(k), n.div_ceil(NR));
        Self {
            data: vec![0u32; panels * pairs * NR],
            pairs,
            n,
            panels,
        }
    }
}

/// `row` (f32) as bf16 pairs into `out` (`ceil(len / 2)` values are written; an odd tail's high
/// half is zero): how a row of a [`PackedA`] is written.
pub fn pack_row(row: &[f32], out: &mut [u32]) {
    row_to_pairs(row, out)
}

/// See [`pack_row`].
fn row_to_pairs(row: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if available() && out.len() >= row.len().div_ceil(2) {
        // SAFETY: the CPU has the instructions (checked) and `out` holds the pairs.
        unsafe { simd::row_to_pairs(row, out) };
        return;
    }
    for (o, pair) in out.iter_mut().zip(row.chunks(2)) {
        let hi = pair.get(1).map_or(0, |h| bf16_bits(*h));
        *o = (hi << 16) | bf16_bits(pair[0]);
    }
}

/// `out[j] = (bf16(hi[j]) << 16) | bf16(lo[j])` (a missing `hi` row is zero).
fn interleave_pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if available() && out.len() == lo.len() && hi.is_none_or(|h| h.len() == lo.len()) {
        // SAFETY: the CPU has the instructions (checked) and the lengths agree.
        unsafe { simd::interleave_pairs(lo, hi, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let h = hi.map_or(0, |h| bf16_bits(h[j]));
        *o = (h << 16) | bf16_bits(lo[j]);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// 16 bf16 values of `lo` and of `hi` (lanes `0..16`, `16..32` of the conversion) as 16
    /// interleaved pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pairs(lo: __m512, hi: __m512) -> __m512i {
        // SAFETY: a register-only conversion; the transmute reinterprets 32 bf16 as 512 bits.
        unsafe {
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let idx = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            _mm512_permutexvar_epi16(idx, both)
        }
    }

    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// See [`super::row_to_pairs`]. Needs AVX512-BF16 and `out.len() >= ceil(row.len() / 2)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn row_to_pairs(row: &[f32], out: &mut [u32]) {
        let n = row.len();
        let mut i = 0;
        // SAFETY: every load reads lanes below `n` (masked), every store writes lanes below
        // `ceil(n / 2)` of `out` (masked), which the caller guarantees exist.
        unsafe {
            while i < n {
                let rem = n - i;
                let lo = _mm512_maskz_loadu_ps(mask16(rem), row.as_ptr().add(i));
                let hi = _mm512_maskz_loadu_ps(
                    mask16(rem.saturating_sub(16)),
                    row.as_ptr().add(i + 16.min(rem)),
                );
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                let pairs_left = rem.min(32).div_ceil(2);
                _mm512_mask_storeu_epi32(
                    out.as_mut_ptr().add(i / 2) as *mut i32,
                    mask16(pairs_left),
                    v,
                );
                i += 32;
            }
        }
    }

    /// See [`super::interleave_pairs`]. Needs AVX512-BF16 and equal lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        let n = lo.len();
        let mut j = 0;
        // SAFETY: masked loads and stores touch lanes below `n` only, and every slice has `n`.
        unsafe {
            while j < n {
                let m = mask16(n - j);
                let l = _mm512_maskz_loadu_ps(m, lo.as_ptr().add(j));
                let h = match hi {
                    Some(h) => _mm512_maskz_loadu_ps(m, h.as_ptr().add(j)),
                    None => _mm512_setzero_ps(),
                };
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add(j) as *mut i32, m, pairs(l, h));
                j += 16;
            }
        }
    }
}

/// `c[m, n] (row-major) = (accumulate ? c : 0) + a · b` with the fastest kernel ([`kernel`]).
pub fn gemm(c: &mut [f32], a: &PackedA, b: &PackedB, accumulate: bool) -> Result<(), String> {
    let kernel = kernel().ok_or("bf16 products need AVX512-BF16, which this CPU lacks")?;
    gemm_with(kernel, c, a, b, accumulate)
}

/// [`gemm`] with a chosen kernel (an error when this machine cannot run it).
pub fn gemm_with(
    kernel: Kernel,
    c: &mut [f32],
    a: &PackedA,
    b: &PackedB,
    accumulate: bool,
) -> Result<(), String> {
    let (m, pairs, n) = (a.m, b.pairs, b.n);
    if !kernels().contains(&kernel) {
        return Err(format!("bf16 products: this machine cannot run {kernel:?}"));
    }
    if c.len() != m * n || a.pairs != pairs {
        return Err(format!(
            "bf16 gemm: operands do not fit: c has {} values for {m}×{n}, a has {} pairs and b {pairs}",
            c.len(),
            a.pairs
        ));
    }
    if m * n == 0 {
        return Ok(());
    }
    if pairs == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
        return Ok(());
    }
    match kernel {
        // SAFETY: `c` holds m × n initialized floats (checked above).
        Kernel::Amx => unsafe { amx::gemm_raw(c.as_mut_ptr(), a, b, accumulate) },
        Kernel::Avx512Bf16 => avx512_gemm(c, a, b, accumulate),
    }
    Ok(())
}

/// `a · b` into a new `[m, n]` buffer. With AMX the product writes every element once, so the
/// buffer is never zero-filled first (one pass over memory saved per product).
pub fn gemm_new(a: &PackedA, b: &PackedB) -> Result<Vec<f32>, String> {
    let (m, n) = (a.m, b.n);
    if kernel() == Some(Kernel::Amx) && a.pairs == b.pairs && b.pairs > 0 && m * n > 0 {
        let mut c = Vec::<f32>::with_capacity(m * n);
        // SAFETY: AMX is available (checked); the spare capacity holds m × n floats, which the
        // product writes (every row and column, `accumulate` false, nothing read) before the
        // length is set.
        unsafe {
            amx::gemm_raw(c.as_mut_ptr(), a, b, false);
            c.set_len(m * n);
        }
        return Ok(c);
    }
    let mut c = vec![0f32; m * n];
    gemm(&mut c, a, b, false)?;
    Ok(c)
}

/// The AVX512-BF16 driver: row blocks over the pool, then reduction blocks, panels and 12-row
/// microkernels.
fn avx512_gemm(c: &mut [f32], a: &PackedA, b: &PackedB, accumulate: bool) {
    let (pairs, n) = (b.pairs, b.n);
    let rows_per_task = 4 * MR;
    c.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(t, block)| {
            let i0 = t * rows_per_task;
            let rows = block.len() / n;
            for k0 in (0..pairs).step_by(KC) {
                let kc = KC.min(pairs - k0);
                let first = k0 == 0 && !accumulate;
                for jp in 0..b.panels {
                    let panel = &b.data[jp * pairs * NR + k0 * NR..];
                    let cols = NR.min(n - jp * NR);
                    let mut r0 = 0;
                    while r0 < rows {
                        let rr = match rows - r0 {
                            12.. => 12,
                            8.. => 8,
                            4.. => 4,
                            _ => 1,
                        };
                        let at = (i0 + r0) * pairs + k0;
                        let c_at = r0 * n + jp * NR;
                        // SAFETY: the kernel was checked to be available; it reads rr rows of kc
                        // pairs at `at` (stride `pairs`) inside `a`, kc × 32 values of the
                        // panel, and writes rr rows of `cols` values at `c_at` (stride n)
                        // inside this task's block, all in bounds by construction.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            let (ap, bp, cp) = (
                                a.data[at..].as_ptr(),
                                panel.as_ptr(),
                                block[c_at..].as_mut_ptr(),
                            );
                            match rr {
                                12 => microkernel::<12>(ap, pairs, bp, kc, cp, n, cols, first),
                                8 => microkernel::<8>(ap, pairs, bp, kc, cp, n, cols, first),
                                4 => microkernel::<4>(ap, pairs, bp, kc, cp, n, cols, first),
                                _ => microkernel::<1>(ap, pairs, bp, kc, cp, n, cols, first),
                            }
                        }
                        r0 += rr;
                    }
                }
            }
        });
}

/// `R` rows × 32 columns: `c (+)= a[R, kc pairs] · panel[kc pairs, 32]`, the first `cols`
/// columns written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel<const R: usize>(
    a: *const u32,
    lda: usize,
    b: *const u32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the bounds (see `avx512_gemm`); the transmutes reinterpret
    // 512-bit integer vectors as bf16 vectors of the same size.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..kc {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        let mask = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as u16
            }
        };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (r, row) in acc.iter().enumerate() {
            let cp = c.add(r * ldc);
            let (mut v0, mut v1) = (row[0], row[1]);
            if !first {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
            }
            _mm512_mask_storeu_ps(cp, m0, v0);
            _mm512_mask_storeu_ps(cp.add(16), m1, v1);
        }
    }
}

/// Intel AMX: tile configuration, the OS permission, and the tile driver.
mod amx {
    use super::{PackedA, PackedB, NR, TILE_PAIRS, TILE_ROWS};
    use rayon::prelude::*;

    /// Rows of the output per pool task (a multiple of 32).
    const ROWS_PER_TASK: usize = 64;

    /// Whether the CPU has AMX-BF16 and Linux lets this process use the tile registers.
    pub fn available() -> bool {
        crate::cpu::features().amx_bf16
    }

    /// The 64-byte tile configuration of `ldtilecfg` (palette 1: eight tiles of up to 16 rows
    /// of 64 bytes).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// The tile registers configured on this thread for the life of the value: tmm0–3 hold the
    /// 2 × 2 accumulators, tmm4–5 the left tiles and tmm6–7 the right ones, all 16 × 64 bytes.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    struct Tiles;

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    impl Tiles {
        /// Loads the configuration. Only called once `available()` is true.
        fn configure() -> Self {
            let mut cfg = TileConfig {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                bytes_per_row: [0; 16],
                rows: [0; 16],
            };
            for t in 0..8 {
                cfg.bytes_per_row[t] = 64;
                cfg.rows[t] = TILE_ROWS as u8;
            }
            // SAFETY: AMX is available and permitted (checked by the caller); the config is a
            // valid palette-1 layout and lives across the instruction.
            unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig) };
            Tiles
        }

        /// `c[16 or 32 rows, 32] (+)= a[rows, pairs] · panel[pairs, 32]` (32 rows when `two`):
        /// `a` points at the first row (stride `lda` pairs), `panel` at the panel, `c` at the
        /// output block (stride `ldc` floats), which is loaded first when `load`.
        ///
        /// # Safety
        /// `a` must hold 16 (or 32 with `two`) rows of `kblocks * 16` pairs at stride `lda`,
        /// `panel` `kblocks * 16 * 32` values, and `c` 16 (or 32) rows of 32 floats at `ldc`.
        #[allow(clippy::too_many_arguments)]
        unsafe fn block(
            &self,
            a: *const u32,
            lda: usize,
            panel: *const u32,
            kblocks: usize,
            two: bool,
            c: *mut f32,
            ldc: usize,
            load: bool,
        ) {
            use std::arch::asm;
            let (sa, sb, sc): (usize, usize, usize) = (lda * 4, NR * 4, ldc * 4);
            // SAFETY: the caller guarantees the bounds; tiles are configured (`self`).
            unsafe {
                let c2 = c.add(TILE_ROWS * ldc);
                if load {
                    asm!(
                        "tileloadd tmm0, [{c} + {sc}*1]",
                        "tileloadd tmm1, [{c1} + {sc}*1]",
                        c = in(reg) c,
                        c1 = in(reg) c.add(16),
                        sc = in(reg) sc,
                    );
                    if two {
                        asm!(
                            "tileloadd tmm2, [{c} + {sc}*1]",
                            "tileloadd tmm3, [{c1} + {sc}*1]",
                            c = in(reg) c2,
                            c1 = in(reg) c2.add(16),
                            sc = in(reg) sc,
                        );
                    }
                } else {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3"
                    );
                }
                for kb in 0..kblocks {
                    let ap = a.add(kb * TILE_PAIRS);
                    let bp = panel.add(kb * TILE_PAIRS * NR);
                    asm!(
                        "tileloadd tmm6, [{b} + {sb}*1]",
                        "tileloadd tmm7, [{b2} + {sb}*1]",
                        "tileloadd tmm4, [{a} + {sa}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        b = in(reg) bp,
                        b2 = in(reg) bp.add(16),
                        a = in(reg) ap,
                        sa = in(reg) sa,
                        sb = in(reg) sb,
                    );
                    if two {
                        asm!(
                            "tileloadd tmm5, [{a} + {sa}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a = in(reg) ap.add(TILE_ROWS * lda),
                            sa = in(reg) sa,
                        );
                    }
                }
                asm!(
                    "tilestored [{c} + {sc}*1], tmm0",
                    "tilestored [{c1} + {sc}*1], tmm1",
                    c = in(reg) c,
                    c1 = in(reg) c.add(16),
                    sc = in(reg) sc,
                );
                if two {
                    asm!(
                        "tilestored [{c} + {sc}*1], tmm2",
                        "tilestored [{c1} + {sc}*1], tmm3",
                        c = in(reg) c2,
                        c1 = in(reg) c2.add(16),
                        sc = in(reg) sc,
                    );
                }
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releases this thread's tile state (configured by `configure`).
            unsafe { std::arch::asm!("tilerelease") };
        }
    }

    /// The AMX driver: row blocks of [`ROWS_PER_TASK`] over the pool, then panels, then 32-row
    /// blocks over the whole reduction; each block's tiles go through a scratch buffer into `c`.
    /// The output as a raw pointer that the pool's tasks share; each writes its own rows.
    struct Out(*mut f32);
    // SAFETY: tasks write disjoint row ranges of the buffer behind the pointer, which outlives
    // the parallel loop (it is borrowed, or owned, by the caller of `gemm_raw`).
    unsafe impl Send for Out {}
    // SAFETY: as above.
    unsafe impl Sync for Out {}

    impl Out {
        fn at(&self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }

    /// The AMX driver: row blocks of [`ROWS_PER_TASK`] over the pool, then panels, then 32-row
    /// blocks over the whole reduction. Whole 32 × 32 blocks load and store `c` in place; edge
    /// blocks go through a scratch buffer.
    ///
    /// # Safety
    /// `c` must point to `a.m * b.n` floats this call may write, all initialized when
    /// `accumulate` (otherwise they are only written, never read).
    pub(super) unsafe fn gemm_raw(c: *mut f32, a: &PackedA, b: &PackedB, accumulate: bool) {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let (m, pairs, n) = (a.m, b.pairs, b.n);
            let kblocks = pairs / TILE_PAIRS;
            let out = Out(c);
            (0..m.div_ceil(ROWS_PER_TASK))
                .into_par_iter()
                .for_each(|t| {
                    let i0 = t * ROWS_PER_TASK;
                    let rows = ROWS_PER_TASK.min(m - i0);
                    let base = out.at(i0 * n);
                    let tiles = Tiles::configure();
                    let mut scratch = [0f32; 32 * 32];
                    for jp in 0..b.panels {
                        let (j0, cols) = (jp * NR, NR.min(n - jp * NR));
                        let mut r0 = 0;
                        while r0 < rows {
                            let rr = (rows - r0).min(32);
                            let (ap, bp) = (
                                // SAFETY (both): `a` has its rows padded to 16 and its pairs to whole
                                // tiles, so 16 (or 32 when rr > 16) rows from i0 + r0 exist; the
                                // panel holds `pairs * 32` values.
                                unsafe { a.data.as_ptr().add((i0 + r0) * pairs) },
                                unsafe { b.data.as_ptr().add(jp * pairs * NR) },
                            );
                            // SAFETY: rows i0 + r0 .. + rr of `c` (stride n) are this task's.
                            let cp = unsafe { base.add(r0 * n + j0) };
                            if cols == NR && (rr == 16 || rr == 32) {
                                // SAFETY: rr rows of 32 columns at `cp` lie inside this task's rows.
                                unsafe {
                                    tiles.block(ap, pairs, bp, kblocks, rr == 32, cp, n, accumulate)
                                };
                            } else {
                                // SAFETY: as above, and the scratch holds 32 × 32 floats.
                                unsafe {
                                    tiles.block(
                                        ap,
                                        pairs,
                                        bp,
                                        kblocks,
                                        rr > 16,
                                        scratch.as_mut_ptr(),
                                        32,
                                        false,
                                    )
                                };
                                for (r, src) in scratch.chunks(32).take(rr).enumerate() {
                                    // SAFETY: row r0 + r, columns j0 .. j0 + cols of this task's
                                    // rows; read only when `accumulate` (then initialized).
                                    unsafe {
                                        let dst = cp.add(r * n);
                                        if accumulate {
                                            for (c, v) in src.iter().take(cols).enumerate() {
                                                *dst.add(c) += v;
                                            }
                                        } else {
                                            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, cols);
                                        }
                                    }
                                }
                            }
                            r0 += rr;
                        }
                    }
                });
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            let _ = (c, a, b, accumulate);
            unreachable!("AMX is never available off x86-64 Linux");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(v: f32) -> f64 {
        f32::from_bits(bf16_bits(v) << 16) as f64
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
    }

    #[test]
    #[cfg_attr(not(host_avx512bf16), ignore = "needs a CPU with AVX512-BF16")]
    fn vector_conversion_matches_the_scalar_rounding() {
        assert!(available(), "this CPU has no AVX512-BF16");
        let row: Vec<f32> = (0..77)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0 / 512.0)
            .collect();
        let mut out = vec![0xdead_beefu32; 40];
        row_to_pairs(&row, &mut out);
        for (p, v) in out.iter().take(39).enumerate() {
            let hi = row.get(2 * p + 1).map_or(0, |h| bf16_bits(*h));
            assert_eq!(*v, (hi << 16) | bf16_bits(row[2 * p]), "pair {p}");
        }
        assert_eq!(out[39], 0xdead_beef, "nothing written past the pairs");
        let mut inter = vec![0u32; 21];
        interleave_pairs(&row[..21], Some(&row[30..51]), &mut inter);
        for (j, v) in inter.iter().enumerate() {
            assert_eq!(*v, (bf16_bits(row[30 + j]) << 16) | bf16_bits(row[j]));
        }
    }

    #[test]
    #[cfg_attr(not(host_avx512bf16), ignore = "needs a CPU with AVX512-BF16")]
    fn products_equal_f64_sums_of_bf16_rounded_operands() {
        assert!(available(), "this CPU has no AVX512-BF16");
        // Odd sizes: row tails (m % 12, m % 16, m % 32), a column tail (n % 32), odd
        // reductions, and reductions longer than one block.
        for kernel in kernels() {
            for (m, k, n) in [
                (37, 33, 45),
                (12, 600, 32),
                (5, 1, 3),
                (100, 64, 70),
                (70, 96, 33),
            ] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                    .collect();
                let w: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
                    .collect();
                // c = a · wᵀ, w stored [n, k].
                let b = PackedB::from_rows_transposed(&w, n, k).unwrap();
                let pa = PackedA::from_rows(&a, m, k).unwrap();
                let mut c = vec![7f32; m * n];
                gemm_with(kernel, &mut c, &pa, &b, false).unwrap();
                let mut acc = c.clone();
                gemm_with(kernel, &mut acc, &pa, &b, true).unwrap();
                if Some(kernel) == super::kernel() {
                    // A new buffer (never zero-filled under AMX) gets the same values.
                    assert!(
                        gemm_new(&pa, &b).unwrap() == c,
                        "{kernel:?} gemm_new {m}x{k}x{n}"
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k).map(|kk| bf(a[i * k + kk]) * bf(w[j * k + kk])).sum();
                        let got = c[i * n + j] as f64;
                        assert!(
                            (s - got).abs() <= 1e-5 * (1.0 + s.abs()),
                            "{kernel:?} {m}x{k}x{n} ({i},{j}): {got} vs {s}"
                        );
                        let twice = acc[i * n + j] as f64;
                        assert!(
                            (2.0 * s - twice).abs() <= 2e-5 * (1.0 + s.abs()),
                            "{kernel:?} accumulate ({i},{j})"
                        );
                    }
                }
            }
        }
        // The other packing: b given as [k, n] rows (here wᵀ materialized) packs the same.
        let (k, n) = (33, 45);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 31 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert!(
            PackedB::from_rows(&wt, k, n).unwrap().data
                == PackedB::from_rows_transposed(&w, n, k).unwrap().data
        );
        // Operands that do not fit are an error.
        let b = PackedB::from_rows(&[0.0; 4], 2, 2).unwrap();
        let a = PackedA::from_rows(&[0.0; 2], 1, 2).unwrap();
        assert!(gemm(&mut [0f32; 3], &a, &b, false).is_err());
        assert!(PackedA::from_rows(&[0.0; 3], 2, 2).is_err());
    }
}
