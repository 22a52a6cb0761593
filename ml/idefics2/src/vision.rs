//! The SigLIP-style vision encoder of Idefics2 (`model.vision_model`).

use candle_core::{DType, Module, Result as CResult, Tensor};

use crate::config::VisionConfig;
use crate::error::Result;
use crate::layers::{key_padding_mask, linear, mha, LayerNorm};
use crate::linear::SeamLinear;
use crate::weights::Weights;
use foundry_kernels::ops;
use foundry_kernels::AttentionShape;

/// Conv patch embedding plus bucketed position embedding.
#[derive(Debug, Clone)]
pub struct VisionEmbeddings {
    /// Conv weight `[hidden, channels, patch, patch]`.
    pub patch_weight: Tensor,
    /// Conv bias `[hidden]`.
    pub patch_bias: Tensor,
    /// Position embedding table `[(image_size / patch)^2, hidden]`.
    pub position_embedding: Tensor,
    patch_size: usize,
    num_patches_per_side: usize,
}

/// Position ids for one image with `nb_h × nb_w` valid patches inside a `max_h × max_w`
/// patch grid, exactly as transformers computes them (f32 fractional coordinates,
/// bucketized against `arange(1/n, 1, 1/n)`); padded patches get id 0.
pub fn bucketed_position_ids(
    mask: &[bool],
    max_h: usize,
    max_w: usize,
    num_patches_per_side: usize,
) -> Vec<u32> {
    let n = num_patches_per_side;
    // torch.arange(1/n, 1.0, 1/n) in float32: length ceil((end - start) / step) in double,
    // values start + i * step computed in double, stored as float32.
    let step = 1.0f64 / n as f64;
    let len = ((1.0 - step) / step).ceil().max(0.0) as usize;
    let boundaries: Vec<f32> = (0..len).map(|i| (step + i as f64 * step) as f32).collect();
    let nb_h = (0..max_h).filter(|&i| mask[i * max_w]).count().max(1);
    let nb_w = (0..max_w).filter(|&j| mask[j]).count().max(1);
    let bucket = |x: f32| boundaries.iter().take_while(|&&b| b <= x).count() as u32;
    let coords = |count: usize, nb: usize| -> Vec<u32> {
        let st = 1.0f32 / nb as f32;
        (0..count)
            .map(|i| {
                let c = (i as f32 * st).min((1.0f64 - 1e-6) as f32);
                bucket(c)
            })
            .collect()
    };
    let ch = coords(max_h, nb_h);
    let cw = coords(max_w, nb_w);
    let mut out = vec![0u32; max_h * max_w];
    for i in 0..max_h {
        for j in 0..max_w {
            if mask[i * max_w + j] {
                out[i * max_w + j] = ch[i] * n as u32 + cw[j];
            }
        }
    }
    out
}

impl VisionEmbeddings {
    fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let p = "model.vision_model.embeddings";
        let n = cfg.image_size / cfg.patch_size;
        Ok(Self {
            patch_weight: w.get(
                &format!("{p}.patch_embedding.weight"),
                &[
                    cfg.hidden_size,
                    cfg.num_channels,
                    cfg.patch_size,
                    cfg.patch_size,
                ],
            )?,
            patch_bias: w.get(&format!("{p}.patch_embedding.bias"), &[cfg.hidden_size])?,
            position_embedding: w.get(
                &format!("{p}.position_embedding.weight"),
                &[n * n, cfg.hidden_size],
            )?,
            patch_size: cfg.patch_size,
            num_patches_per_side: n,
        })
    }

    /// `pixel_values` `[n, c, h, w]`, `patch_mask` `[n, h/p, w/p]` (u8) → `[n, patches, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor, patch_mask: &Tensor) -> CResult<Tensor> {
        // The stride-p, kernel-p conv as a patch matmul: [n*gh*gw, c*p*p] x [c*p*p, hidden].
        let (n, c, h, w) = pixel_values.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let hidden = self.patch_weight.dim(0)?;
        let patches = pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((n, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * gh * gw, c * p * p))?;
        let wt = self.patch_weight.reshape((hidden, c * p * p))?.t()?;
        let x = ops::matmul(&patches, &wt)?
            .broadcast_add(&self.patch_bias)?
            .reshape((n, gh * gw, hidden))?;
        let mask: Vec<Vec<Vec<u8>>> = patch_mask.to_vec3()?;
        let mut ids = Vec::with_capacity(n * gh * gw);
        for m in mask {
            let flat: Vec<bool> = m.into_iter().flatten().map(|v| v != 0).collect();
            ids.extend(bucketed_position_ids(
                &flat,
                gh,
                gw,
                self.num_patches_per_side,
            ));
        }
        let ids = Tensor::from_vec(ids, n * gh * gw, x.device())?;
        let pos = self
            .position_embedding
            .index_select(&ids, 0)?
            .reshape((n, gh * gw, hidden))?;
        x.broadcast_add(&pos)
    }
}

/// Multi-head self-attention of the vision encoder (with biases).
#[derive(Debug, Clone)]
pub struct VisionAttention {
    /// `q_proj`.
    pub q_proj: SeamLinear,
    /// `k_proj`.
    pub k_proj: SeamLinear,
    /// `v_proj`.
    pub v_proj: SeamLinear,
    /// `out_proj`.
    pub out_proj: SeamLinear,
    heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> CResult<Tensor> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let shape = AttentionShape {
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.head_dim,
            scale: (self.head_dim as f64).powf(-0.5),
        };
        let o = mha(&q, &k, &v, shape, None, mask)?;
        self.out_proj.forward(&o)
    }
}

/// One pre-LayerNorm encoder layer.
#[derive(Debug, Clone)]
pub struct VisionLayer {
    /// `layer_norm1`.
    pub layer_norm1: LayerNorm,
    /// `self_attn`.
    pub self_attn: VisionAttention,
    /// `layer_norm2`.
    pub layer_norm2: LayerNorm,
    /// `mlp.fc1`.
    pub fc1: SeamLinear,
    /// `mlp.fc2`.
    pub fc2: SeamLinear,
    act: String,
}

impl VisionLayer {
    fn load(w: &Weights, cfg: &VisionConfig, i: usize) -> Result<Self> {
        let p = format!("model.vision_model.encoder.layers.{i}");
        let h = cfg.hidden_size;
        let a = format!("{p}.self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), h, cfg.layer_norm_eps)?,
            self_attn: VisionAttention {
                q_proj: linear(w, &format!("{a}.q_proj"), h, h, true)?,
                k_proj: linear(w, &format!("{a}.k_proj"), h, h, true)?,
                v_proj: linear(w, &format!("{a}.v_proj"), h, h, true)?,
                out_proj: linear(w, &format!("{a}.out_proj"), h, h, true)?,
                heads: cfg.num_attention_heads,
                head_dim: h / cfg.num_attention_heads,
            },
            layer_norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), h, cfg.layer_norm_eps)?,
            fc1: linear(w, &format!("{p}.mlp.fc1"), h, cfg.intermediate_size, true)?,
            fc2: linear(w, &format!("{p}.mlp.fc2"), cfg.intermediate_size, h, true)?,
            act: cfg.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> CResult<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&ops::activation(&self.act, &h)?)?;
        x + h
    }
}

/// The vision transformer: embeddings, encoder layers and post-LayerNorm.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// Patch and position embeddings.
    pub embeddings: VisionEmbeddings,
    /// Encoder layers.
    pub layers: Vec<VisionLayer>,
    /// Final LayerNorm.
    pub post_layernorm: LayerNorm,
}

impl VisionTransformer {
    pub(crate) fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        Ok(Self {
            embeddings: VisionEmbeddings::load(w, cfg)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| VisionLayer::load(w, cfg, i))
                .collect::<Result<_>>()?,
            post_layernorm: LayerNorm::load(
                w,
                "model.vision_model.post_layernorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `pixel_values` `[n, c, h, w]`, `patch_mask` `[n, gh, gw]` (u8) → `[n, gh*gw, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor, patch_mask: &Tensor) -> CResult<Tensor> {
        let mut x = self.embeddings.forward(pixel_values, patch_mask)?;
        let (n, gh, gw) = patch_mask.dims3()?;
        let flat = patch_mask.reshape((n, gh * gw))?;
        let all = flat.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize == n * gh * gw;
        let mask = if all {
            None
        } else {
            Some(key_padding_mask(&flat, x.dtype())?)
        };
        for l in &self.layers {
            x = l.forward(&x, mask.as_ref())?;
        }
        self.post_layernorm.forward(&x)
    }

    pub(crate) fn linears(&mut self) -> Vec<&mut SeamLinear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            let a = &mut l.self_attn;
            v.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.out_proj]);
            v.push(&mut l.fc1);
            v.push(&mut l.fc2);
        }
        v
    }
}
