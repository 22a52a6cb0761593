//! Element-wise math that vectorizes: an `exp` built from a polynomial and exponent bits (no
//! libm call), and the loops of the fused kernels that use it (softmax rows, SiLU·up, GELU).
//!
//! Every loop is a [`vectorized`] function: one source, compiled for baseline x86-64 and for
//! AVX-512, and both copies do the same f32 operations in the same order (no FMA), so the two
//! give the same bits.

use crate::cpu::vectorized;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and the rest (Cody–Waite), for the range reduction.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// `1.5 · 2²³`: adding it rounds a float of magnitude < 2²² to an integer (nearest, ties even).
const ROUND: f32 = 12_582_912.0;
/// Above this, `exp` would overflow the exponent field; the result is clamped to `exp(MAX_X)`.
const MAX_X: f32 = 88.3;
/// Below this, `exp` is denormal or zero in f32; the result is 0.
const MIN_X: f32 = -87.3;

/// `e^x` to about 1 ulp (relative error below 2.5e-7), 0 below −87.3 (no denormals), clamped
/// at `e^88.3` above, NaN for NaN. Written without branches that block vectorization.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = if x > MAX_X { MAX_X } else { x };
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| ≤ ln2 / 2: Taylor to degree 6 (Horner).
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^n from the integer in t's low mantissa bits (t and ROUND share their exponent).
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits((ni.wrapping_add(127) << 23) as u32);
    let e = p * scale;
    if c < MIN_X {
        0.0
    } else {
        e
    }
}

/// The logistic function through [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh through one [`exp`]: `1 − 2 / (e^{2x} + 1)` (exactly ±1 far out, since `exp` saturates).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

vectorized! {
    /// `row[i] = e^(row[i] − shift)`.
    pub fn exp_shifted(row: &mut [f32], shift: f32) {
        for v in row.iter_mut() {
            *v = exp(*v - shift);
        }
    }
}

vectorized! {
    /// The sum of `v` in 16 lanes (element `i` in lane `i % 16`), the lanes folded in halves.
    pub fn sum(v: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        let chunks = v.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for l in 0..16 {
                lanes[l] += c[l];
            }
        }
        for half in [8, 4, 2, 1] {
            for l in 0..half {
                lanes[l] += lanes[l + half];
            }
        }
        lanes[0] + tail
    }
}

vectorized! {
    /// The largest value of `v` (−∞ when empty; a NaN is skipped).
    pub fn max(v: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = v.chunks_exact(16);
        let mut m = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
        for c in chunks {
            for l in 0..16 {
                lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
            }
        }
        for l in lanes {
            m = m.max(l);
        }
        m
    }
}

/// Softmax of one row in place: `e^(v − max) / Σ`.
pub fn softmax_in_place(row: &mut [f32]) {
    let mx = max(row);
    exp_shifted(row, mx);
    let inv = 1.0 / sum(row);
    scale(row, inv);
}

vectorized! {
    /// `v *= s`.
    pub fn scale(v: &mut [f32], s: f32) {
        for x in v.iter_mut() {
            *x *= s;
        }
    }
}

vectorized! {
    /// `out = silu(g) · u`.
    pub fn silu_mul(out: &mut [f32], g: &[f32], u: &[f32]) {
        for (o, (x, y)) in out.iter_mut().zip(g.iter().zip(u)) {
            *o = x * sigmoid(*x) * y;
        }
    }
}

vectorized! {
    /// The gradients of `silu(g) · u` for the upstream `d`: `dg = d·u·s·(1 + g·(1 − s))` and
    /// `du = d·g·s`, `s = sigmoid(g)`.
    pub fn silu_mul_grads(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], d: &[f32]) {
        for ((a, b), ((x, y), z)) in dg.iter_mut().zip(du.iter_mut()).zip(g.iter().zip(u).zip(d)) {
            let s = sigmoid(*x);
            *a = z * y * s * (1.0 + x * (1.0 - s));
            *b = z * x * s;
        }
    }
}

vectorized! {
    /// `out = gelu_tanh(x)`.
    pub fn gelu_tanh(out: &mut [f32], x: &[f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * v * (1.0 + 0.044715 * v * v)));
        }
    }
}

vectorized! {
    /// `out = g · gelu_tanh'(x)`.
    pub fn gelu_tanh_grad(out: &mut [f32], g: &[f32], x: &[f32]) {
        for (o, (gv, v)) in out.iter_mut().zip(g.iter().zip(x)) {
            let t = tanh(SQRT_2_OVER_PI * v * (1.0 + 0.044715 * v * v));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
            *o = gv * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert_eq!(tanh(30.0), 1.0);
        assert_eq!(tanh(-30.0), -1.0);
    }

    #[test]
    fn the_vector_and_scalar_copies_agree_bit_for_bit() {
        // The public functions run the AVX-512 copy where the CPU has it; the `exp` above is
        // the scalar definition. Same bits either way.
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut v = xs.clone();
        exp_shifted(&mut v, 1.5);
        for (a, x) in v.iter().zip(&xs) {
            assert_eq!(a.to_bits(), exp(x - 1.5).to_bits());
        }
        let mut row = vec![0.5f32, f32::NEG_INFINITY, 2.0, -1.0];
        softmax_in_place(&mut row);
        assert_eq!(row[1], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        assert_eq!(sum(&(1..=40).map(|i| i as f32).collect::<Vec<_>>()), 820.0);
    }
}
