//! Attention: softmax, eager attention probabilities, rotary embedding and one fused multi-head
//! attention op (GQA, optional RoPE, additive mask), each with an analytic backward.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::gemm::*;
use crate::slices::*;
use crate::timing;

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
