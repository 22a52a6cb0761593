//! The connector (`model.connector`): modality projection and perceiver resampler.

use candle_core::{DType, Module, Result as CResult, Tensor};

use crate::config::Idefics2Config;
use crate::error::Result;
use crate::layers::{key_padding_mask, linear, mha, GatedMlp, RmsNorm};
use crate::linear::SeamLinear;
use crate::weights::Weights;
use foundry_kernels::AttentionShape;

/// Cross-attention of the latents over `[context; latents]` with grouped KV heads.
#[derive(Debug, Clone)]
pub struct PerceiverAttention {
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

impl PerceiverAttention {
    fn forward(&self, latents: &Tensor, context: &Tensor, mask: &Tensor) -> CResult<Tensor> {
        let hs = Tensor::cat(&[context, latents], 1)?;
        let q = self.q_proj.forward(latents)?;
        let k = self.k_proj.forward(&hs)?;
        let v = self.v_proj.forward(&hs)?;
        let shape = AttentionShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: (self.head_dim as f64).powf(-0.5),
        };
        let o = mha(&q, &k, &v, shape, None, Some(mask))?;
        self.o_proj.forward(&o)
    }
}

/// One perceiver layer.
#[derive(Debug, Clone)]
pub struct PerceiverLayer {
    /// `input_latents_norm`.
    pub input_latents_norm: RmsNorm,
    /// `input_context_norm`.
    pub input_context_norm: RmsNorm,
    /// `self_attn`.
    pub self_attn: PerceiverAttention,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp` (hidden × 4).
    pub mlp: GatedMlp,
}

impl PerceiverLayer {
    fn forward(&self, latents: &Tensor, context: &Tensor, mask: &Tensor) -> CResult<Tensor> {
        let l = self.input_latents_norm.forward(latents)?;
        let c = self.input_context_norm.forward(context)?;
        let h = self.self_attn.forward(&l, &c, mask)?;
        let latents = (latents + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&latents)?)?;
        latents + h
    }
}

/// Modality projection then perceiver resampler.
#[derive(Debug, Clone)]
pub struct Connector {
    /// `modality_projection` (gated MLP, vision width → text width).
    pub modality_projection: GatedMlp,
    /// Learned latents `[n_latents, hidden]`.
    pub latents: Tensor,
    /// Perceiver layers.
    pub layers: Vec<PerceiverLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

impl Connector {
    pub(crate) fn load(w: &Weights, cfg: &Idefics2Config) -> Result<Self> {
        let t = &cfg.text_config;
        let p = &cfg.perceiver_config;
        let hid = cfg.perceiver_hidden();
        let eps = p.rms_norm_eps;
        let modality_projection = GatedMlp::load(
            w,
            "model.connector.modality_projection",
            cfg.vision_config.hidden_size,
            t.intermediate_size,
            t.hidden_size,
            &t.hidden_act,
        )?;
        let pr = "model.connector.perceiver_resampler";
        let latents = w.get(&format!("{pr}.latents"), &[p.resampler_n_latents, hid])?;
        let hd = p.resampler_head_dim;
        let mut layers = Vec::new();
        for i in 0..p.resampler_depth {
            let lp = format!("{pr}.layers.{i}");
            let a = format!("{lp}.self_attn");
            layers.push(PerceiverLayer {
                input_latents_norm: RmsNorm::load(
                    w,
                    &format!("{lp}.input_latents_norm"),
                    hid,
                    eps,
                )?,
                input_context_norm: RmsNorm::load(
                    w,
                    &format!("{lp}.input_context_norm"),
                    hid,
                    eps,
                )?,
                self_attn: PerceiverAttention {
                    q_proj: linear(
                        w,
                        &format!("{a}.q_proj"),
                        hid,
                        p.resampler_n_heads * hd,
                        false,
                    )?,
                    k_proj: linear(
                        w,
                        &format!("{a}.k_proj"),
                        hid,
                        p.num_key_value_heads * hd,
                        false,
                    )?,
                    v_proj: linear(
                        w,
                        &format!("{a}.v_proj"),
                        hid,
                        p.num_key_value_heads * hd,
                        false,
                    )?,
                    o_proj: linear(
                        w,
                        &format!("{a}.o_proj"),
                        p.resampler_n_heads * hd,
                        hid,
                        false,
                    )?,
                    heads: p.resampler_n_heads,
                    kv_heads: p.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::load(
                    w,
                    &format!("{lp}.post_attention_layernorm"),
                    hid,
                    eps,
                )?,
                mlp: GatedMlp::load(w, &format!("{lp}.mlp"), hid, hid * 4, hid, &p.hidden_act)?,
            });
        }
        let norm = RmsNorm::load(w, &format!("{pr}.norm"), hid, eps)?;
        Ok(Self {
            modality_projection,
            latents,
            layers,
            norm,
        })
    }

    /// `image_hidden` `[n, patches, vision_hidden]`, `patch_mask` `[n, patches]` (u8)
    /// → `[n, n_latents, text_hidden]`.
    pub fn forward(&self, image_hidden: &Tensor, patch_mask: &Tensor) -> CResult<Tensor> {
        let context = self.modality_projection.forward(image_hidden)?;
        let n = context.dim(0)?;
        let (nl, hid) = self.latents.dims2()?;
        let latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((n, nl, hid))?
            .contiguous()?;
        let ones = Tensor::ones((n, nl), DType::U8, context.device())?;
        let full = Tensor::cat(&[&patch_mask.to_dtype(DType::U8)?, &ones], 1)?;
        let mask = key_padding_mask(&full, context.dtype())?;
        let mut x = latents;
        for l in &self.layers {
            x = l.forward(&x, &context, &mask)?;
        }
        self.norm.forward(&x)
    }

    pub(crate) fn linears(&mut self) -> Vec<&mut SeamLinear> {
        let mut v: Vec<&mut SeamLinear> = self.modality_projection.linears().into_iter().collect();
        for l in &mut self.layers {
            let a = &mut l.self_attn;
            v.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            v.extend(l.mlp.linears());
        }
        v
    }
}
