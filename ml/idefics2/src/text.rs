//! The Mistral text decoder (`model.text_model`) with a KV cache.

use candle_core::{DType, Device, Module, Result as CResult, Tensor};

use crate::config::TextConfig;
use crate::error::Result;
use crate::layers::{attention, linear, mha, min_value, GatedMlp, RmsNorm};
use crate::linear::SeamLinear;
use crate::weights::Weights;
use foundry_kernels::ops;
use foundry_kernels::AttentionShape;

/// Per-layer cached keys and values, `[b, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = None;
        }
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> CResult<(Tensor, Tensor)> {
        if layer >= self.layers.len() {
            self.layers.resize(layer + 1, None);
        }
        let kv = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

/// Rotary embedding tables.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    fn new(cfg: &TextConfig) -> Self {
        let dim = cfg.head_dim();
        let base = cfg.rope_theta() as f32;
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
        let inv_freq = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / base.powf(i as f32 / dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// `(cos, sin)`, each `[seq, head_dim / 2]`, for positions `offset..offset + seq`.
    fn tables(
        &self,
        offset: usize,
        seq: usize,
        dtype: DType,
        device: &Device,
    ) -> CResult<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(seq * half);
        for p in offset..offset + seq {
            for &f in &self.inv_freq {
                freqs.push(p as f32 * f);
            }
        }
        let freqs = Tensor::from_vec(freqs, (seq, half), device)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }
}

/// GQA self-attention with RoPE.
#[derive(Debug, Clone)]
pub struct TextAttention {
    /// `q_proj`.
    pub q_proj: SeamLinear,
    /// `k_proj`.
    pub k_proj: SeamLinear,
    /// `v_proj`.
    pub v_proj: SeamLinear,
    /// `o_proj`.
    pub o_proj: SeamLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm,
    /// `self_attn`.
    pub self_attn: TextAttention,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp` (SwiGLU).
    pub mlp: GatedMlp,
}

/// The Mistral decoder (without the LM head).
#[derive(Debug, Clone)]
pub struct TextModel {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    rotary: Rotary,
    sliding_window: Option<usize>,
}

impl TextModel {
    pub(crate) fn load(w: &Weights, cfg: &TextConfig) -> Result<Self> {
        let p = "model.text_model";
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (nh, kv) = (cfg.num_attention_heads, cfg.kv_heads());
        let eps = cfg.rms_norm_eps;
        let embed_tokens = w.get(&format!("{p}.embed_tokens.weight"), &[cfg.vocab_size, h])?;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{p}.layers.{i}");
            let a = format!("{lp}.self_attn");
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(w, &format!("{lp}.input_layernorm"), h, eps)?,
                self_attn: TextAttention {
                    q_proj: linear(w, &format!("{a}.q_proj"), h, nh * hd, false)?,
                    k_proj: linear(w, &format!("{a}.k_proj"), h, kv * hd, false)?,
                    v_proj: linear(w, &format!("{a}.v_proj"), h, kv * hd, false)?,
                    o_proj: linear(w, &format!("{a}.o_proj"), nh * hd, h, false)?,
                    heads: nh,
                    kv_heads: kv,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::load(
                    w,
                    &format!("{lp}.post_attention_layernorm"),
                    h,
                    eps,
                )?,
                mlp: GatedMlp::load(
                    w,
                    &format!("{lp}.mlp"),
                    h,
                    cfg.intermediate_size,
                    h,
                    &cfg.hidden_act,
                )?,
            });
        }
        let norm = RmsNorm::load(w, &format!("{p}.norm"), h, eps)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            rotary: Rotary::new(cfg),
            sliding_window: cfg.sliding_window,
        })
    }

    /// Token embeddings of `ids` `[b, s]` → `[b, s, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> CResult<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.embed_tokens.dim(1)?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, h))
    }

    /// Runs the decoder on `embeds` `[b, s, hidden]`, appending to `cache` when given.
    /// Positions start at the cache length. Returns the final-normed hidden states.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> CResult<Tensor> {
        let (_b, s, _) = embeds.dims3()?;
        let offset = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        let dtype = embeds.dtype();
        let device = embeds.device();
        let (cos, sin) = self.rotary.tables(offset, s, dtype, device)?;
        let mask = causal_mask(s, offset, self.sliding_window, dtype, device)?;
        let mut x = embeds.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            let hn = l.input_layernorm.forward(&x)?;
            let (b, s, _) = hn.dims3()?;
            if cache.is_none() {
                // Training and scoring: one fused op from the projections to the output.
                let shape = AttentionShape {
                    heads: a.heads,
                    kv_heads: a.kv_heads,
                    head_dim: a.head_dim,
                    scale: (a.head_dim as f64).powf(-0.5),
                };
                let (q, k, v) = (
                    a.q_proj.forward(&hn)?,
                    a.k_proj.forward(&hn)?,
                    a.v_proj.forward(&hn)?,
                );
                let o = mha(&q, &k, &v, shape, Some((&cos, &sin)), mask.as_ref())?;
                x = (x + a.o_proj.forward(&o)?)?;
                let h = l.mlp.forward(&l.post_attention_layernorm.forward(&x)?)?;
                x = (x + h)?;
                continue;
            }
            let q = a
                .q_proj
                .forward(&hn)?
                .reshape((b, s, a.heads, a.head_dim))?
                .transpose(1, 2)?;
            let k = a
                .k_proj
                .forward(&hn)?
                .reshape((b, s, a.kv_heads, a.head_dim))?
                .transpose(1, 2)?;
            let v = a
                .v_proj
                .forward(&hn)?
                .reshape((b, s, a.kv_heads, a.head_dim))?
                .transpose(1, 2)?;
            let q = ops::rope(&q, &cos, &sin)?;
            let k = ops::rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_mut() {
                Some(c) => c.append(i, k, v.contiguous()?)?,
                None => (k, v),
            };
            let o = attention(&q, &k, &v, mask.as_ref(), (a.head_dim as f64).powf(-0.5))?;
            x = (x + a.o_proj.forward(&o)?)?;
            let h = l.mlp.forward(&l.post_attention_layernorm.forward(&x)?)?;
            x = (x + h)?;
        }
        self.norm.forward(&x)
    }

    pub(crate) fn linears(&mut self) -> Vec<&mut SeamLinear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            let a = &mut l.self_attn;
            v.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            v.extend(l.mlp.linears());
        }
        v
    }
}

/// Additive causal (optionally sliding-window) mask `[1, 1, s, offset + s]`, or `None`
/// when a single query attends to everything.
fn causal_mask(
    s: usize,
    offset: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> CResult<Option<Tensor>> {
    let total = offset + s;
    let min = min_value(dtype);
    let mut any = false;
    let mut m = vec![0f32; s * total];
    for i in 0..s {
        let q = offset + i;
        for j in 0..total {
            let masked = j > q || window.is_some_and(|w| q - j.min(q) >= w);
            if masked {
                m[i * total + j] = min;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(
        Tensor::from_vec(m, (1, 1, s, total), device)?.to_dtype(dtype)?,
    ))
}
