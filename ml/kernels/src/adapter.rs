//! The LoRA adapter's products, whose inner (or outer) dimension is the small rank `r`:
//! `h = x·Aᵀ` and `y += s·h·Bᵀ` in the forward; `gb = g·B`, `dx += s·(gb·A) ⊙ mask`,
//! `dA = s·gbᵀ·x̃` and `dB = s·gᵀ·h` in the backward (`x̃` the dropped-out input).
//!
//! A general GEMM handles these shapes badly (for r = 8 the gemm crate ran the adapter's
//! backward at a few GFLOP/s). Here each row of `x` and `g` is read once: the backward visits
//! every row one time and does all five products for it, accumulating `dA` and `dBᵀ` per group
//! of rows. Groups are fixed by the row count alone and summed in order, so the result does not
//! depend on the number of threads. The loops are plain f32 multiply-adds (no FMA, so every
//! CPU rounds alike), compiled for AVX-512 and picked at run time where the CPU has it
//! ([`crate::cpu::vectorized`]).

use rayon::prelude::*;

use crate::bf16gemm::{pack_row, PackedA};
use crate::cpu::vectorized;

/// The shapes of one adapter: `m` rows, input width `k`, rank `r`, output width `n`.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Rows of `x` (tokens).
    pub m: usize,
    /// Input width (`A` is `[r, k]`).
    pub k: usize,
    /// Rank.
    pub r: usize,
    /// Output width (`B` is `[n, r]`).
    pub n: usize,
}

impl Dims {
    fn check(&self, x: usize, a: usize, b: usize, mask: Option<usize>) -> Result<(), String> {
        let Dims { m, k, r, n } = *self;
        if x != m * k || a != r * k || b != n * r || mask.is_some_and(|l| l != m * k) {
            return Err(format!(
                "lora adapter: buffers do not fit x [{m}, {k}], A [{r}, {k}], B [{n}, {r}]"
            ));
        }
        Ok(())
    }

    /// Rows per group: about eight groups, at least 16 rows each.
    fn group_rows(&self) -> usize {
        self.m.div_ceil(8).max(16)
    }
}

/// `Bᵀ` `[r, n]` of `B` `[n, r]`.
fn transpose(b: &[f32], n: usize, r: usize) -> Vec<f32> {
    let mut t = vec![0f32; r * n];
    for (i, row) in b.chunks(r.max(1)).enumerate().take(n) {
        for (j, v) in row.iter().enumerate() {
            t[j * n + i] = *v;
        }
    }
    t
}

/// Lanes per accumulator (one AVX-512 register of f32).
const LANES: usize = 16;

/// Sums the lanes of an accumulator in a fixed order.
#[inline(always)]
fn reduce(mut lanes: [f32; LANES]) -> f32 {
    for half in [8, 4, 2, 1] {
        for l in 0..half {
            lanes[l] += lanes[l + half];
        }
    }
    lanes[0]
}

/// `out[j] = Σ_c x[c]·rows[j·len + c]` (`len = x.len()`): the rows' dot products with `x`.
/// Each sum runs in [`LANES`] lanes (element `c` in lane `c % 16`) reduced by [`reduce`], then
/// the tail; the AVX-512 copy does the same operations four rows at a time.
fn dots(x: &[f32], rows: &[f32], out: &mut [f32]) {
    let len = x.len();
    assert!(rows.len() >= out.len() * len, "dots: rows too short");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked) and `rows` holds `out.len()` rows (asserted).
        unsafe { dots_avx512(x, rows, out) };
        return;
    }
    let full = len / LANES * LANES;
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * len..(j + 1) * len];
        let mut acc = [0f32; LANES];
        for (xc, rc) in x[..full]
            .chunks_exact(LANES)
            .zip(row[..full].chunks_exact(LANES))
        {
            for l in 0..LANES {
                acc[l] += xc[l] * rc[l];
            }
        }
        *o = reduce(acc) + dot_tail(x, row, full);
    }
}

/// `Σ x[c]·row[c]` over `c ≥ full`, in order.
fn dot_tail(x: &[f32], row: &[f32], full: usize) -> f32 {
    x[full..].iter().zip(&row[full..]).map(|(a, b)| a * b).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(x: &[f32], rows: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = x.len();
    let full = len / LANES * LANES;
    let lanes = |v: __m512| -> [f32; LANES] {
        let mut a = [0f32; LANES];
        // SAFETY: `a` holds 16 f32.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        a
    };
    let (xp, rp) = (x.as_ptr(), rows.as_ptr());
    let mut j = 0;
    // SAFETY: every load reads 16 values below `full` of `x` or of row `j + q < out.len()`,
    // which the caller guarantees `rows` holds.
    unsafe {
        while j + 4 <= out.len() {
            let mut acc = [_mm512_setzero_ps(); 4];
            for c in (0..full).step_by(LANES) {
                let xv = _mm512_loadu_ps(xp.add(c));
                for (q, a) in acc.iter_mut().enumerate() {
                    let rv = _mm512_loadu_ps(rp.add((j + q) * len + c));
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(xv, rv));
                }
            }
            for (q, a) in acc.iter().enumerate() {
                let row = &rows[(j + q) * len..(j + q + 1) * len];
                out[j + q] = reduce(lanes(*a)) + dot_tail(x, row, full);
            }
            j += 4;
        }
        while j < out.len() {
            let mut acc = _mm512_setzero_ps();
            for c in (0..full).step_by(LANES) {
                let rv = _mm512_loadu_ps(rp.add(j * len + c));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(xp.add(c)), rv));
            }
            out[j] = reduce(lanes(acc)) + dot_tail(x, &rows[j * len..(j + 1) * len], full);
            j += 1;
        }
    }
}

/// `out[c] += Σ_j coef[j]·rows[j·len + c]` (`len = out.len()`), each element summed in `j`
/// order and loaded and stored once.
fn axpys(out: &mut [f32], coef: &[f32], rows: &[f32]) {
    let len = out.len();
    assert!(rows.len() >= coef.len() * len, "axpys: rows too short");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked) and `rows` holds `coef.len()` rows (asserted).
        unsafe { axpys_avx512(out, coef, rows) };
        return;
    }
    for (c, o) in out.iter_mut().enumerate() {
        let mut acc = *o;
        for (j, cj) in coef.iter().enumerate() {
            acc += cj * rows[j * len + c];
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpys_avx512(out: &mut [f32], coef: &[f32], rows: &[f32]) {
    use std::arch::x86_64::*;
    let len = out.len();
    let full = len / LANES * LANES;
    let (op, rp) = (out.as_mut_ptr(), rows.as_ptr());
    // SAFETY: loads and stores stay below `full` of `out` and of each of the `coef.len()` rows
    // the caller guarantees.
    unsafe {
        for c in (0..full).step_by(LANES) {
            let mut acc = _mm512_loadu_ps(op.add(c));
            for (j, cj) in coef.iter().enumerate() {
                let rv = _mm512_loadu_ps(rp.add(j * len + c));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(*cj), rv));
            }
            _mm512_storeu_ps(op.add(c), acc);
        }
    }
    for c in full..len {
        let mut acc = out[c];
        for (j, cj) in coef.iter().enumerate() {
            acc += cj * rows[j * len + c];
        }
        out[c] = acc;
    }
}

vectorized! {
    /// `out = a ⊙ b`.
    fn mul_into(out: &mut [f32], a: &[f32], b: &[f32]) {
        for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
            *o = x * y;
        }
    }
}

/// `y[m, n] += scale · (x ⊙ mask)·Aᵀ·Bᵀ`, row by row over the pool.
pub fn forward(
    y: &mut [f32],
    x: &[f32],
    mask: Option<&[f32]>,
    a: &[f32],
    b: &[f32],
    dims: Dims,
    scale: f32,
) -> Result<(), String> {
    let Dims { m, k, r, n } = dims;
    dims.check(x.len(), a.len(), b.len(), mask.map(<[f32]>::len))?;
    if y.len() != m * n {
        return Err(format!(
            "lora adapter: output has {} values, not {m}×{n}",
            y.len()
        ));
    }
    if m * n * r == 0 {
        return Ok(());
    }
    let bt = transpose(b, n, r);
    let rows = dims.group_rows();
    y.par_chunks_mut(rows * n).enumerate().for_each_init(
        || (vec![0f32; k], vec![0f32; r]),
        |(xd, h), (gi, out)| {
            for (ii, y_row) in out.chunks_mut(n).enumerate() {
                let i = gi * rows + ii;
                let x_row = &x[i * k..(i + 1) * k];
                let x_row = match mask {
                    Some(mk) => {
                        mul_into(xd, x_row, &mk[i * k..(i + 1) * k]);
                        &xd[..]
                    }
                    None => x_row,
                };
                dots(x_row, a, h);
                h.iter_mut().for_each(|v| *v *= scale);
                axpys(y_row, h, &bt);
            }
        },
    );
    Ok(())
}

/// The rows `[x | scale · (x ⊙ mask)·Aᵀ]` as bf16 (width `k` rounded up to even, plus `r`): the
/// left operand of `[W | B]ᵀ`, whose product is the whole output of the linear, the adapter's
/// up-projection riding in the base product's reduction.
pub fn forward_rows(
    x: &[f32],
    mask: Option<&[f32]>,
    a: &[f32],
    dims: Dims,
    scale: f32,
) -> Result<PackedA, String> {
    let Dims { m, k, r, .. } = dims;
    if x.len() != m * k || a.len() != r * k || mask.is_some_and(|mk| mk.len() != m * k) {
        return Err(format!(
            "lora adapter: buffers do not fit x [{m}, {k}], A [{r}, {k}]"
        ));
    }
    let mut packed = PackedA::zeroed(m, k.next_multiple_of(2) + r);
    let pairs = packed.pairs();
    if pairs == 0 {
        return Ok(packed);
    }
    let half = k.div_ceil(2);
    packed
        .data_mut()
        .par_chunks_mut(pairs)
        .take(m)
        .enumerate()
        .for_each_init(
            || (vec![0f32; k], vec![0f32; r]),
            |(xd, h), (i, row)| {
                let x_row = &x[i * k..(i + 1) * k];
                pack_row(x_row, &mut row[..half]);
                let x_row = match mask {
                    Some(mk) => {
                        mul_into(xd, x_row, &mk[i * k..(i + 1) * k]);
                        &xd[..]
                    }
                    None => x_row,
                };
                dots(x_row, a, h);
                h.iter_mut().for_each(|v| *v *= scale);
                pack_row(h, &mut row[half..]);
            },
        );
    Ok(packed)
}

/// The adapter's gradients: `dA` `[r, k]` and `dB` `[n, r]`.
pub struct Grads {
    /// `scale · gbᵀ · (x ⊙ mask)`.
    pub da: Vec<f32>,
    /// `scale · gᵀ · ((x ⊙ mask)·Aᵀ)`.
    pub db: Vec<f32>,
}

/// The adapter's backward for the upstream gradient `g` `[m, n]`: returns `dA` and `dB`, and adds
/// the adapter's part of the input gradient, `scale · (g·B·A) ⊙ mask`, into `dx` when given.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &[f32],
    x: &[f32],
    mask: Option<&[f32]>,
    a: &[f32],
    b: &[f32],
    dx: Option<&mut [f32]>,
    dims: Dims,
    scale: f32,
) -> Result<Grads, String> {
    backward_packing(g, x, mask, a, b, dx, None, dims, scale)
}

/// [`backward`] that also writes, when `pack` is given, the rows `[g | scale · g·B]` as bf16 into
/// it (a [`PackedA`] of width `n` rounded up to even, plus `r`; see [`PackedA::zeroed`]), in the
/// same pass over `g`. The product of those rows with `[W; A]` is then the whole input gradient
/// of a linear whose adapter has no dropout: the adapter's part rides in the base product.
#[allow(clippy::too_many_arguments)]
pub fn backward_packing(
    g: &[f32],
    x: &[f32],
    mask: Option<&[f32]>,
    a: &[f32],
    b: &[f32],
    dx: Option<&mut [f32]>,
    pack: Option<&mut PackedA>,
    dims: Dims,
    scale: f32,
) -> Result<Grads, String> {
    let Dims { m, k, r, n } = dims;
    dims.check(x.len(), a.len(), b.len(), mask.map(<[f32]>::len))?;
    if g.len() != m * n || dx.as_ref().is_some_and(|d| d.len() != m * k) {
        return Err(format!(
            "lora adapter: gradients do not fit [{m}, {n}] / [{m}, {k}]"
        ));
    }
    if let Some(p) = pack.as_deref() {
        if p.rows() != m || p.width() != n.next_multiple_of(2) + r {
            return Err(format!(
                "lora adapter: the packed rows hold {}×{}, not {m}×{}",
                p.rows(),
                p.width(),
                n.next_multiple_of(2) + r
            ));
        }
    }
    let bt = transpose(b, n, r);
    let rows = dims.group_rows();
    // One group of rows: its partial dA [r, k] and dBᵀ [r, n], its rows of dx updated. The rows
    // go in blocks of 16: first every row's gb = g·B and h = x̃·Aᵀ, then dA and dBᵀ take the
    // block's rows (still in L1) as a few wide multiply-adds per accumulator row.
    let pairs = pack.as_deref().map_or(0, PackedA::pairs);
    let group = |gi: usize,
                 mut dx: Option<&mut [f32]>,
                 mut packed: Option<&mut [u32]>|
     -> (Vec<f32>, Vec<f32>) {
        let mut scaled = vec![0f32; r];
        const BLOCK: usize = 16;
        let (mut da, mut dbt) = (vec![0f32; r * k], vec![0f32; r * n]);
        let mut xd = vec![0f32; BLOCK * k];
        let (mut gb, mut h) = (vec![0f32; BLOCK * r], vec![0f32; BLOCK * r]);
        let (mut gb_t, mut h_t) = (vec![0f32; r * BLOCK], vec![0f32; r * BLOCK]);
        let mut t = vec![0f32; k];
        let (start, end) = (gi * rows, ((gi + 1) * rows).min(m));
        for i0 in (start..end).step_by(BLOCK) {
            let bl = BLOCK.min(end - i0);
            let g_rows = &g[i0 * n..(i0 + bl) * n];
            let x_rows: &[f32] = match mask {
                Some(mk) => {
                    mul_into(
                        &mut xd[..bl * k],
                        &x[i0 * k..(i0 + bl) * k],
                        &mk[i0 * k..(i0 + bl) * k],
                    );
                    &xd[..bl * k]
                }
                None => &x[i0 * k..(i0 + bl) * k],
            };
            for ii in 0..bl {
                dots(
                    &g_rows[ii * n..(ii + 1) * n],
                    &bt,
                    &mut gb[ii * r..(ii + 1) * r],
                );
                dots(
                    &x_rows[ii * k..(ii + 1) * k],
                    a,
                    &mut h[ii * r..(ii + 1) * r],
                );
                if let Some(packed) = packed.as_deref_mut() {
                    let at = (i0 + ii - start) * pairs;
                    let row = &mut packed[at..at + pairs];
                    pack_row(&g_rows[ii * n..(ii + 1) * n], &mut row[..n.div_ceil(2)]);
                    for (sv, gv) in scaled.iter_mut().zip(&gb[ii * r..(ii + 1) * r]) {
                        *sv = scale * gv;
                    }
                    pack_row(&scaled, &mut row[n.div_ceil(2)..]);
                }
                for j in 0..r {
                    gb_t[j * bl + ii] = gb[ii * r + j];
                    h_t[j * bl + ii] = h[ii * r + j];
                }
            }
            for j in 0..r {
                axpys(
                    &mut da[j * k..(j + 1) * k],
                    &gb_t[j * bl..(j + 1) * bl],
                    x_rows,
                );
                axpys(
                    &mut dbt[j * n..(j + 1) * n],
                    &h_t[j * bl..(j + 1) * bl],
                    g_rows,
                );
            }
            if let Some(dx) = dx.as_deref_mut() {
                for ii in 0..bl {
                    let i = i0 + ii;
                    let gbs: Vec<f32> =
                        gb[ii * r..(ii + 1) * r].iter().map(|v| scale * v).collect();
                    let dx_row = &mut dx[(i - start) * k..(i - start + 1) * k];
                    match mask {
                        None => axpys(dx_row, &gbs, a),
                        Some(mk) => {
                            t.iter_mut().for_each(|v| *v = 0.0);
                            axpys(&mut t, &gbs, a);
                            let mut tm = vec![0f32; k];
                            mul_into(&mut tm, &t, &mk[i * k..(i + 1) * k]);
                            axpys(dx_row, &[1.0], &tm);
                        }
                    }
                }
            }
        }
        (da, dbt)
    };
    // Each group's own rows of dx and of the packed rows, as separate mutable slices.
    let groups = m.div_ceil(rows);
    let mut dx_parts: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) if k > 0 => dx.chunks_mut(rows * k).map(Some).collect(),
        _ => Vec::new(),
    };
    dx_parts.resize_with(groups, || None);
    let mut pack_parts: Vec<Option<&mut [u32]>> = match pack {
        Some(p) if pairs > 0 => p.data_mut().chunks_mut(rows * pairs).map(Some).collect(),
        _ => Vec::new(),
    };
    pack_parts.resize_with(groups, || None);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx_parts
        .into_iter()
        .zip(pack_parts)
        .enumerate()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(gi, (d, p))| group(gi, d, p))
        .collect();
    let (mut da, mut dbt) = (vec![0f32; r * k], vec![0f32; r * n]);
    for (pa, pb) in &parts {
        axpys(&mut da, &[1.0], pa);
        axpys(&mut dbt, &[1.0], pb);
    }
    da.iter_mut().for_each(|v| *v *= scale);
    let mut db = transpose(&dbt, r, n);
    db.iter_mut().for_each(|v| *v *= scale);
    Ok(Grads { da, db })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1009) as f32 / 504.5) - 1.0)
            .collect()
    }

    /// The products in f64 the plain way.
    fn reference(
        g: &[f32],
        x: &[f32],
        mask: Option<&[f32]>,
        a: &[f32],
        b: &[f32],
        d: Dims,
        s: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let Dims { m, k, r, n } = d;
        let xd: Vec<f64> = (0..m * k)
            .map(|i| x[i] as f64 * mask.map_or(1.0, |mk| mk[i] as f64))
            .collect();
        let h: Vec<f64> = (0..m * r)
            .map(|e| {
                (0..k)
                    .map(|c| xd[e / r * k + c] * a[e % r * k + c] as f64)
                    .sum()
            })
            .collect();
        let y: Vec<f64> = (0..m * n)
            .map(|e| {
                s * (0..r)
                    .map(|j| h[e / n * r + j] * b[e % n * r + j] as f64)
                    .sum::<f64>()
            })
            .collect();
        let gb: Vec<f64> = (0..m * r)
            .map(|e| {
                (0..n)
                    .map(|c| g[e / r * n + c] as f64 * b[c * r + e % r] as f64)
                    .sum()
            })
            .collect();
        let dx: Vec<f64> = (0..m * k)
            .map(|e| {
                s * (0..r)
                    .map(|j| gb[e / k * r + j] * a[j * k + e % k] as f64)
                    .sum::<f64>()
                    * mask.map_or(1.0, |mk| mk[e] as f64)
            })
            .collect();
        let da: Vec<f64> = (0..r * k)
            .map(|e| {
                s * (0..m)
                    .map(|i| gb[i * r + e / k] * xd[i * k + e % k])
                    .sum::<f64>()
            })
            .collect();
        let db: Vec<f64> = (0..n * r)
            .map(|e| {
                s * (0..m)
                    .map(|i| g[i * n + e / r] as f64 * h[i * r + e % r])
                    .sum::<f64>()
            })
            .collect();
        (y, dx, da, db)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_f64_products_with_and_without_dropout() {
        for (m, k, r, n) in [(37, 33, 8, 45), (130, 64, 16, 20), (5, 1, 1, 3)] {
            let d = Dims { m, k, r, n };
            let (x, a, b, g) = (
                values(m * k, 1),
                values(r * k, 2),
                values(n * r, 3),
                values(m * n, 4),
            );
            let mask: Vec<f32> = (0..m * k)
                .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
                .collect();
            for mk in [None, Some(&mask[..])] {
                let (y_ref, dx_ref, da_ref, db_ref) = reference(&g, &x, mk, &a, &b, d, 0.5);
                let mut y = vec![0f32; m * n];
                forward(&mut y, &x, mk, &a, &b, d, 0.5).unwrap();
                close(&y, &y_ref, "y");
                let mut dx = vec![0f32; m * k];
                let grads = backward(&g, &x, mk, &a, &b, Some(&mut dx), d, 0.5).unwrap();
                close(&dx, &dx_ref, "dx");
                close(&grads.da, &da_ref, "dA");
                close(&grads.db, &db_ref, "dB");
                // Without dx, the same dA and dB, bit for bit.
                let again = backward(&g, &x, mk, &a, &b, None, d, 0.5).unwrap();
                assert_eq!(again.da, grads.da);
                assert_eq!(again.db, grads.db);
            }
        }
        let d = Dims {
            m: 2,
            k: 2,
            r: 1,
            n: 2,
        };
        assert!(forward(
            &mut [0f32; 4],
            &[0f32; 3],
            None,
            &[0f32; 2],
            &[0f32; 2],
            d,
            1.0
        )
        .is_err());
    }

    #[test]
    fn does_not_depend_on_the_thread_count() {
        let d = Dims {
            m: 300,
            k: 48,
            r: 8,
            n: 40,
        };
        let (x, a, b, g) = (
            values(300 * 48, 5),
            values(8 * 48, 6),
            values(40 * 8, 7),
            values(300 * 40, 8),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut dx = vec![0f32; 300 * 48];
                let gr = backward(&g, &x, None, &a, &b, Some(&mut dx), d, 2.0).unwrap();
                (dx, gr.da, gr.db)
            })
        };
        assert!(run(1) == run(3));
    }
}
