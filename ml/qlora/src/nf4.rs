//! NF4 4-bit quantization, bit-compatible with bitsandbytes 0.50.
//!
//! * The 16-value NF4 code ([`NF4_CODE`]); a weight is cut into blocks of 64 values (row-major
//!   over the flattened weight), each scaled by its absolute maximum and rounded to the nearest
//!   code (ties to the lower code, as `torch.bucketize` does on the midpoints).
//! * Two codes per byte, the first in the high nibble; an odd count is padded with code 7 (0.0).
//! * Double quantization: the block absmaxes minus their mean (`offset`) are quantized to 8 bits in
//!   blocks of 256 with the 256-entry dynamic code map ([`dynamic_map`]), each block with its own
//!   f32 absmax (`nested_absmax`); the nearest dynamic code wins, ties to the lower one, as the
//!   bitsandbytes CPU kernel's binary search does.
//! * [`Nf4Tensor::from_bnb`] / [`Nf4Tensor::to_bnb`] read and write the hub's `*-bnb-4bit`
//!   safetensors layout (`X.weight`, `X.weight.absmax`, `X.weight.quant_map`,
//!   `X.weight.nested_absmax`, `X.weight.nested_quant_map`,
//!   `X.weight.quant_state.bitsandbytes__nf4`).
//! * [`Nf4Weight`] plugs an [`Nf4Tensor`] into the model's linear seam as a
//!   [`FrozenWeight`]: it is dequantized inside every forward pass.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use foundry_kernels::FrozenWeight;
use rayon::prelude::*;

use crate::{Error, Result};

/// Bit patterns of the NF4 code (from bitsandbytes 0.50).
const NF4_BITS: [u32; 16] = [
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];
/// Bit patterns of bitsandbytes' `create_dynamic_map()` (signed, 8 bits).
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The bitsandbytes NF4 code (`bitsandbytes.functional.get_4bit_type("nf4")`), sorted.
pub const NF4_CODE: [f32; 16] = {
    let mut c = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        c[i] = f32::from_bits(NF4_BITS[i]);
        i += 1;
    }
    c
};

/// The bitsandbytes FP4 code (`get_4bit_type("fp4")`, the table its `quant_map` holds): sign
/// bit, two exponent bits and one mantissa bit, in code order (not sorted).
pub const FP4_CODE: [f32; 16] = [
    0.0,
    1.0 / 192.0,
    2.0 / 3.0,
    1.0,
    1.0 / 3.0,
    0.5,
    1.0 / 6.0,
    0.25,
    -0.0,
    -1.0 / 192.0,
    -2.0 / 3.0,
    -1.0,
    -1.0 / 3.0,
    -0.5,
    -1.0 / 6.0,
    -0.25,
];

/// Which 4-bit code a tensor's nibbles index: bitsandbytes' `bnb_4bit_quant_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantType {
    /// NormalFloat4 (QLoRA's, the default).
    #[default]
    Nf4,
    /// The 4-bit float of bitsandbytes (e2m1).
    Fp4,
}

impl QuantType {
    /// The 16 values the codes stand for (before the block's absmax scales them).
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_CODE,
        }
    }

    /// bitsandbytes' name (`nf4`, `fp4`), as in the quant-state key and JSON.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }
}

/// The default NF4 block size.
pub const BLOCKSIZE: usize = 64;
/// The block size of the nested (double) quantization of the absmax values.
pub const NESTED_BLOCKSIZE: usize = 256;

/// The 256-entry signed dynamic code map of bitsandbytes (`create_dynamic_map()`), sorted.
pub fn dynamic_map() -> [f32; 256] {
    let mut c = [0f32; 256];
    for (o, b) in c.iter_mut().zip(DYNAMIC_MAP_BITS.iter()) {
        *o = f32::from_bits(*b);
    }
    c
}

/// How the per-block absmax values of an NF4 tensor are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (no double quantization).
    F32(Vec<f32>),
    /// Double quantization: one 8-bit dynamic code per block.
    Double {
        /// One code per block of the weight.
        codes: Vec<u8>,
        /// One f32 absmax per `nested_blocksize` codes.
        nested_absmax: Vec<f32>,
        /// The 256-entry code map the codes index.
        nested_code: Vec<f32>,
        /// The mean subtracted from the absmax values before quantization.
        offset: f32,
        /// Codes per nested block (256).
        nested_blocksize: usize,
    },
}

impl Absmax {
    /// The absmax of every block, decoded (`code[q] * nested_absmax + offset`, in f32 as
    /// bitsandbytes computes it).
    pub fn decode(&self) -> Vec<f32> {
        match self {
            Absmax::F32(v) => v.clone(),
            Absmax::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
                nested_blocksize,
            } => codes
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    nested_code[q as usize] * nested_absmax[i / nested_blocksize] + *offset
                })
                .collect(),
        }
    }

    /// Bytes this absmax storage takes at rest (codes, nested absmax and code map).
    pub fn bytes(&self) -> usize {
        match self {
            Absmax::F32(v) => 4 * v.len(),
            Absmax::Double {
                codes,
                nested_absmax,
                nested_code,
                ..
            } => codes.len() + 4 * nested_absmax.len() + 4 * nested_code.len() + 4,
        }
    }
}

/// A weight quantized to 4 bits (NF4, or FP4 as read from a checkpoint), in bitsandbytes' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The code the nibbles index (NF4 unless read from an FP4 checkpoint).
    pub quant_type: QuantType,
    /// The logical shape of the weight (`[out, in]` for a linear).
    pub shape: Vec<usize>,
    /// Two 4-bit codes per byte, the first in the high nibble.
    pub packed: Vec<u8>,
    /// The per-block scales.
    pub absmax: Absmax,
    /// Values per block (64).
    pub blocksize: usize,
    /// The dtype name of the original weight (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
}

/// Decodes `out.len()` values from `bytes` (two codes per byte, the first in the high nibble),
/// each `code · absmax`. The AVX-512 copy does the same products (a 16-entry table lookup per
/// lane), so both give the same bits.
fn decode_pairs(bytes: &[u8], absmax: f32, out: &mut [f32], code: &[f32; 16]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let whole = (out.len() / 32).min(bytes.len() / 16);
        // SAFETY: AVX-512F is present (checked); `whole` 16-byte groups of `bytes` and 32-value
        // groups of `out` exist.
        unsafe { decode_pairs_avx512(&bytes[..whole * 16], absmax, &mut out[..whole * 32], code) };
        done = whole * 32;
    }
    for (pair, byte) in out[done..].chunks_mut(2).zip(&bytes[done / 2..]) {
        pair[0] = code[(byte >> 4) as usize] * absmax;
        if let Some(second) = pair.get_mut(1) {
            *second = code[(byte & 15) as usize] * absmax;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// 16 bytes → 32 values at a time: the nibbles index the code held in a register (`vpermps`),
/// and two two-source permutes interleave the high and low codes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn decode_pairs_avx512(bytes: &[u8], absmax: f32, out: &mut [f32], table: &[f32; 16]) {
    use std::arch::x86_64::*;
    // SAFETY: loads read 16 bytes per group of `bytes`, stores write 32 values per group of
    // `out`; the caller sized both to whole groups.
    unsafe {
        let code = _mm512_loadu_ps(table.as_ptr());
        let am = _mm512_set1_ps(absmax);
        let low = _mm512_set1_epi32(15);
        let first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for (g, o) in bytes.chunks_exact(16).zip(out.chunks_exact_mut(32)) {
            let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(g.as_ptr() as *const __m128i));
            let hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), code), am);
            let lo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(b, low), code), am);
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_permutex2var_ps(hi, first, lo));
            _mm512_storeu_ps(
                o.as_mut_ptr().add(16),
                _mm512_permutex2var_ps(hi, second, lo),
            );
        }
    }
}

/// Rounds `x` (already scaled to [-1, 1]) to the nearest NF4 code as `torch.bucketize` on the
/// midpoints does: the index is the number of midpoints strictly below `x`.
#[inline]
fn nf4_index(x: f32, mids: &[f32; 15]) -> u8 {
    let mut q = 0u8;
    for m in mids {
        q += u8::from(*m < x);
    }
    q
}

fn nf4_midpoints() -> [f32; 15] {
    let mut m = [0f32; 15];
    for (i, o) in m.iter_mut().enumerate() {
        *o = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
    }
    m
}

/// `torch.sum` of a contiguous f32 vector on the CPU, bit for bit: 8-lane vectors (AVX2),
/// 4-way ILP and the cascade of 4 levels of ATen's SumKernel, then the tail and the lanes.
/// (bitsandbytes' double-quant offset is `absmax.mean()`.)
pub fn torch_sum_f32(a: &[f32]) -> f32 {
    const W: usize = 8;
    const ILP: usize = 4;
    let vs = a.len() / W;
    let vec = |i: usize| -> [f32; W] {
        let mut v = [0f32; W];
        v.copy_from_slice(&a[i * W..(i + 1) * W]);
        v
    };
    let add = |x: &mut [f32; W], y: &[f32; W]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    let mut part = [[0f32; W]; ILP];
    let size_ilp = vs / ILP;
    if size_ilp > 0 {
        const LEVELS: usize = 4;
        let ceil_log2 = if size_ilp > 1 {
            usize::BITS - (size_ilp - 1).leading_zeros()
        } else {
            0
        } as usize;
        let level_power = 4.max(ceil_log2 / LEVELS);
        let level_step = 1usize << level_power;
        let level_mask = level_step - 1;
        let mut acc = [[[0f32; W]; ILP]; LEVELS];
        let mut i = 0;
        while i + level_step <= size_ilp {
            for _ in 0..level_step {
                for (k, a0) in acc[0].iter_mut().enumerate() {
                    add(a0, &vec(i * ILP + k));
                }
                i += 1;
            }
            for j in 1..LEVELS {
                let (lo, hi) = acc.split_at_mut(j);
                for (dst, src) in hi[0].iter_mut().zip(lo[j - 1].iter_mut()) {
                    add(dst, src);
                    *src = [0f32; W];
                }
                if i & (level_mask << (j * level_power)) != 0 {
                    break;
                }
            }
        }
        while i < size_ilp {
            for (k, a0) in acc[0].iter_mut().enumerate() {
                add(a0, &vec(i * ILP + k));
            }
            i += 1;
        }
        let (first, rest) = acc.split_at_mut(1);
        for level in rest.iter() {
            for (dst, src) in first[0].iter_mut().zip(level) {
                add(dst, src);
            }
        }
        part = acc[0];
    }
    for i in size_ilp * ILP..vs {
        add(&mut part[0], &vec(i));
    }
    for k in 1..ILP {
        let v = part[k];
        add(&mut part[0], &v);
    }
    let mut fin = 0f32;
    for v in &a[vs * W..] {
        fin += v;
    }
    for v in part[0] {
        fin += v;
    }
    fin
}

/// Grid points of the bitsandbytes 0.50 CPU blockwise quantizer: it looks values up in a
/// 65536-entry table spanning [-1, 1] (found by probing the kernel: the switch points sit at
/// `(x + 1) * 32767.5 = k + 0.5`), each grid point holding the code nearest to it.
const GRID: usize = 65536;

fn dynamic_lut(code: &[f32]) -> Vec<u8> {
    (0..GRID)
        .map(|k| {
            let g = (-1.0f64 + 2.0 * k as f64 / (GRID - 1) as f64) as f32;
            let mut best = 0usize;
            for (i, c) in code.iter().enumerate() {
                let c = if i == 0 { -1.0 } else { *c };
                let cb = if best == 0 { -1.0 } else { code[best] };
                if (g - c).abs() < (g - cb).abs() {
                    best = i;
                }
            }
            best as u8
        })
        .collect()
}

/// The code index bitsandbytes' CPU kernel gives a value `x` already scaled to [-1, 1].
fn dynamic_index(x: f32, lut: &[u8]) -> u8 {
    let k = ((x + 1.0) * 32767.5 + 0.5).floor();
    let k = if k.is_nan() {
        0
    } else {
        (k.max(0.0) as usize).min(GRID - 1)
    };
    lut[k]
}

/// The packed code bytes of a bnb 4-bit weight as stored: `uint8`, or the same bytes viewed as
/// another `bnb_4bit_quant_storage` dtype (bf16, f16, f32), little-endian as safetensors holds them.
fn storage_bytes(t: &Tensor, prefix: &str) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        other => {
            return Err(Error::Quant(format!(
                "{prefix}.weight: 4-bit codes stored as {other:?} (expected u8, bf16, f16 or f32)"
            )))
        }
    })
}

impl Nf4Tensor {
    /// Quantizes `data` (row-major, `shape`) to NF4 with blocks of `blocksize`, with double
    /// quantization of the absmax values when `double_quant` (bitsandbytes' `compress_statistics`).
    pub fn quantize(
        data: &[f32],
        shape: &[usize],
        blocksize: usize,
        double_quant: bool,
    ) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() || n == 0 {
            return Err(Error::Quant(format!(
                "shape {shape:?} does not fit {} values",
                data.len()
            )));
        }
        if !matches!(blocksize, 32 | 64 | 128 | 256 | 512 | 1024 | 2048 | 4096) {
            return Err(Error::Quant(format!("invalid blocksize {blocksize}")));
        }
        let mids = nf4_midpoints();
        let blocks = n.div_ceil(blocksize);
        let mut absmax = Vec::with_capacity(blocks);
        let mut q = Vec::with_capacity(n + 1);
        for chunk in data.chunks(blocksize) {
            let am = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            if chunk.len() == blocksize {
                // torch: A * (1.0 / absmax.clamp(min=1e-38)), clamped to [-1, 1].
                let inv = 1.0f32 / am.max(1e-38);
                absmax.push(am);
                q.extend(
                    chunk
                        .iter()
                        .map(|v| nf4_index((v * inv).clamp(-1.0, 1.0), &mids)),
                );
            } else {
                // The remainder block divides by its clamped absmax, which is also what is stored.
                let am = am.max(1e-38);
                absmax.push(am);
                q.extend(
                    chunk
                        .iter()
                        .map(|v| nf4_index((v / am).clamp(-1.0, 1.0), &mids)),
                );
            }
        }
        if q.len() % 2 == 1 {
            q.push(nf4_index(0.0, &mids));
        }
        let packed = q.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let absmax = if double_quant {
            Self::double_quantize(&absmax)
        } else {
            Absmax::F32(absmax)
        };
        Ok(Self {
            quant_type: QuantType::Nf4,
            shape: shape.to_vec(),
            packed,
            absmax,
            blocksize,
            dtype: "float32".into(),
        })
    }

    /// Double-quantizes absmax values: subtract their mean, then 8-bit dynamic codes in blocks
    /// of 256, each with its f32 absmax.
    fn double_quantize(absmax: &[f32]) -> Absmax {
        let offset = torch_sum_f32(absmax) / absmax.len() as f32;
        let code = dynamic_map();
        let lut = dynamic_lut(&code);
        let centered: Vec<f32> = absmax.iter().map(|v| v - offset).collect();
        let mut codes = Vec::with_capacity(centered.len());
        let mut nested_absmax = Vec::new();
        for chunk in centered.chunks(NESTED_BLOCKSIZE) {
            let am = chunk.iter().fold(f32::MIN, |m, v| m.max(v.abs()));
            nested_absmax.push(am);
            codes.extend(chunk.iter().map(|v| dynamic_index(v / am, &lut)));
        }
        Absmax::Double {
            codes,
            nested_absmax,
            nested_code: code.to_vec(),
            offset,
            nested_blocksize: NESTED_BLOCKSIZE,
        }
    }

    /// Number of values of the weight.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Dequantizes to f32 values (row-major), exactly as bitsandbytes does on the CPU. Runs
    /// over the rayon pool in chunks of whole blocks.
    pub fn dequantize_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        let chunk = self.blocksize.max(1) * 256;
        let failed = out
            .par_chunks_mut(chunk)
            .enumerate()
            .any(|(i, part)| self.dequantize_range(i * chunk, part).is_err());
        if failed {
            // Only a tensor whose codes or scales are too short for its shape gets here (the
            // loaders refuse those); it dequantizes to zeros rather than reading out of bounds.
            out.iter_mut().for_each(|v| *v = 0.0);
        }
        out
    }

    /// The decoded absmax of block `block` (the same f32 arithmetic as [`Absmax::decode`]).
    fn block_absmax(&self, block: usize) -> Option<f32> {
        match &self.absmax {
            Absmax::F32(v) => v.get(block).copied(),
            Absmax::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
                nested_blocksize,
            } => {
                let q = *codes.get(block)?;
                let nested = *nested_absmax.get(block / (*nested_blocksize).max(1))?;
                Some(*nested_code.get(q as usize)? * nested + *offset)
            }
        }
    }

    /// Dequantizes the flattened values `start .. start + out.len()` into `out`: the one decode
    /// loop behind [`Self::dequantize_f32`] and the panel-by-panel decode of the bf16 products.
    pub fn dequantize_range(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let end = start + out.len();
        let bs = self.blocksize;
        if end > self.numel() || self.packed.len() < end.div_ceil(2) || bs == 0 || bs % 2 == 1 {
            return Err(Error::Quant(format!(
                "NF4 values {start}..{end} are outside a {:?} tensor of {} code bytes and blocks of {bs}",
                self.shape,
                self.packed.len()
            )));
        }
        let (mut e, mut o) = (start, 0);
        while e < end {
            let block = e / bs;
            let am = self.block_absmax(block).ok_or_else(|| {
                Error::Quant(format!(
                    "NF4 tensor {:?} has no scale for block {block}",
                    self.shape
                ))
            })?;
            let seg_end = ((block + 1) * bs).min(end);
            let seg = &mut out[o..o + seg_end - e];
            let mut skip = 0;
            if e % 2 == 1 {
                // The second code of a byte.
                seg[0] = self.quant_type.code()[(self.packed[e / 2] & 15) as usize] * am;
                skip = 1;
            }
            decode_pairs(
                &self.packed[(e + skip) / 2..],
                am,
                &mut seg[skip..],
                self.quant_type.code(),
            );
            o += seg_end - e;
            e = seg_end;
        }
        Ok(())
    }

    /// Dequantizes to a tensor of `shape` in `dtype` on `device`.
    pub fn dequantize(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.dequantize_f32(), self.shape.as_slice(), device)?.to_dtype(dtype)
    }

    /// Bytes at rest: packed codes plus absmax storage (and the 16-entry NF4 map).
    pub fn bytes_at_rest(&self) -> usize {
        self.packed.len() + self.absmax.bytes() + 4 * 16
    }

    /// Bits per parameter at rest (≈ 4.127 with double quantization and blocks of 64).
    pub fn bits_per_param(&self) -> f64 {
        8.0 * self.bytes_at_rest() as f64 / self.numel() as f64
    }

    /// Reads the bnb 4-bit layout of the weight `prefix` (e.g. `model.text_model.layers.0.mlp.up_proj`)
    /// from `tensors` (the safetensors of a `*-bnb-4bit` checkpoint).
    pub fn from_bnb(tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let get = |suffix: &str| -> Result<&Tensor> {
            let k = format!("{prefix}.weight{suffix}");
            tensors
                .get(&k)
                .ok_or_else(|| Error::Quant(format!("missing tensor `{k}`")))
        };
        let u8s = |t: &Tensor, what: &str| -> Result<Vec<u8>> {
            if t.dtype() != DType::U8 {
                return Err(Error::Quant(format!(
                    "{prefix}: {what} has dtype {:?}, expected u8",
                    t.dtype()
                )));
            }
            Ok(t.flatten_all()?.to_vec1::<u8>()?)
        };
        let f32s = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        let (quant_type, state_key, state_t) = [QuantType::Nf4, QuantType::Fp4]
            .into_iter()
            .find_map(|q| {
                let k = format!("{prefix}.weight.quant_state.bitsandbytes__{}", q.name());
                tensors.get(&k).map(|t| (q, k, t))
            })
            .ok_or_else(|| {
                Error::Quant(format!(
                    "missing tensor `{prefix}.weight.quant_state.bitsandbytes__nf4` (or __fp4)"
                ))
            })?;
        let state_bytes = u8s(state_t, "quant_state")?;
        let state: serde_json::Value =
            serde_json::from_slice(&state_bytes).map_err(|e| Error::Json {
                what: state_key.clone(),
                message: e.to_string(),
            })?;
        let field = |k: &str| {
            state
                .get(k)
                .ok_or_else(|| Error::Quant(format!("{state_key}: missing `{k}`")))
        };
        if field("quant_type")?.as_str() != Some(quant_type.name()) {
            return Err(Error::Quant(format!(
                "{state_key}: quant_type is not {}",
                quant_type.name()
            )));
        }
        let blocksize = field("blocksize")?
            .as_u64()
            .ok_or_else(|| Error::Quant(format!("{state_key}: bad blocksize")))?
            as usize;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .ok_or_else(|| Error::Quant(format!("{state_key}: bad shape")))?
            .iter()
            .map(|v| v.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Quant(format!("{state_key}: bad shape")))?;
        let dtype = field("dtype")?.as_str().unwrap_or("float32").to_string();
        let quant_map = f32s(get(".quant_map")?)?;
        let code = quant_type.code();
        if quant_map.len() != 16 || quant_map.iter().zip(code.iter()).any(|(a, b)| a != b) {
            return Err(Error::Quant(format!(
                "{prefix}: quant_map is not the {} code",
                quant_type.name()
            )));
        }
        let packed = storage_bytes(get("")?, prefix)?;
        let numel: usize = shape.iter().product();
        if packed.len() != numel.div_ceil(2) || blocksize == 0 || blocksize % 2 == 1 {
            return Err(Error::Quant(format!(
                "{prefix}: {} packed bytes do not fit shape {shape:?} (blocksize {blocksize})",
                packed.len()
            )));
        }
        let blocks = numel.div_ceil(blocksize);
        let am = get(".absmax")?;
        let absmax = if am.dtype() == DType::U8 {
            let codes = u8s(am, "absmax")?;
            let nested_absmax = f32s(get(".nested_absmax")?)?;
            let nested_code = f32s(get(".nested_quant_map")?)?;
            let nb = field("nested_blocksize")?.as_u64().unwrap_or(0) as usize;
            let offset = field("nested_offset")?
                .as_f64()
                .ok_or_else(|| Error::Quant(format!("{state_key}: bad nested_offset")))?
                as f32;
            if codes.len() != blocks
                || nb == 0
                || nested_absmax.len() != blocks.div_ceil(nb)
                || nested_code.len() != 256
            {
                return Err(Error::Quant(format!(
                    "{prefix}: double-quantized absmax does not fit {blocks} blocks"
                )));
            }
            Absmax::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
                nested_blocksize: nb,
            }
        } else {
            let v = f32s(am)?;
            if v.len() != blocks {
                return Err(Error::Quant(format!(
                    "{prefix}: {} absmax values for {blocks} blocks",
                    v.len()
                )));
            }
            Absmax::F32(v)
        };
        Ok(Self {
            quant_type,
            shape,
            packed,
            absmax,
            blocksize,
            dtype,
        })
    }

    /// The quant-state JSON bitsandbytes stores as `X.weight.quant_state.bitsandbytes__nf4`.
    pub fn quant_state_json(&self) -> String {
        let shape = self
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{shape}]",
            self.quant_type.name(),
            self.blocksize,
            self.dtype
        );
        if let Absmax::Double {
            offset,
            nested_blocksize,
            ..
        } = &self.absmax
        {
            s.push_str(&format!(
                ", \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                python_float(*offset as f64)
            ));
        }
        s.push('}');
        s
    }

    /// The tensors of the bnb 4-bit layout for the weight `prefix`, as transformers saves them.
    pub fn to_bnb(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let dev = Device::Cpu;
        let mut out = vec![
            (
                format!("{prefix}.weight"),
                Tensor::from_vec(self.packed.clone(), (self.packed.len(), 1), &dev)?,
            ),
            (
                format!("{prefix}.weight.quant_map"),
                Tensor::new(self.quant_type.code(), &dev)?,
            ),
        ];
        match &self.absmax {
            Absmax::F32(v) => out.push((
                format!("{prefix}.weight.absmax"),
                Tensor::new(v.as_slice(), &dev)?,
            )),
            Absmax::Double {
                codes,
                nested_absmax,
                nested_code,
                ..
            } => {
                out.push((
                    format!("{prefix}.weight.absmax"),
                    Tensor::new(codes.as_slice(), &dev)?,
                ));
                out.push((
                    format!("{prefix}.weight.nested_absmax"),
                    Tensor::new(nested_absmax.as_slice(), &dev)?,
                ));
                out.push((
                    format!("{prefix}.weight.nested_quant_map"),
                    Tensor::new(nested_code.as_slice(), &dev)?,
                ));
            }
        }
        let js = self.quant_state_json().into_bytes();
        out.push((
            format!(
                "{prefix}.weight.quant_state.bitsandbytes__{}",
                self.quant_type.name()
            ),
            Tensor::new(js.as_slice(), &dev)?,
        ));
        Ok(out)
    }
}

/// Formats a float the way Python's `repr` does for ordinary magnitudes.
fn python_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// An NF4 weight in the linear seam: dequantized inside every forward pass.
#[derive(Debug, Clone)]
pub struct Nf4Weight {
    /// The quantized weight, `[out, in]`.
    pub tensor: Nf4Tensor,
}

impl Nf4Weight {
    /// Wraps a 2-D NF4 tensor.
    pub fn new(tensor: Nf4Tensor) -> Result<Self> {
        if tensor.shape.len() != 2 {
            return Err(Error::Quant(format!(
                "a linear weight must be 2-D, got {:?}",
                tensor.shape
            )));
        }
        Ok(Self { tensor })
    }
}

impl FrozenWeight for Nf4Weight {
    fn dequantize(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.tensor.dequantize(dtype, device)?.to_device(device)
    }

    fn shape(&self) -> (usize, usize) {
        (self.tensor.shape[0], self.tensor.shape[1])
    }

    fn dequantize_block(
        &self,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (n, k) = self.shape();
        if !foundry_kernels::bf16gemm::block_fits((n, k), (r0, c0), (rows, cols), out.len()) {
            candle_core::bail!("NF4 block {rows}×{cols} at ({r0}, {c0}) outside [{n}, {k}]");
        }
        for (i, row) in out.chunks_mut(cols.max(1)).enumerate().take(rows) {
            self.tensor
                .dequantize_range((r0 + i) * k + c0, row)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
