//! `config.json` of an Idefics2 checkpoint (transformers' `Idefics2Config`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The vision encoder's config (`vision_config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    /// Width of the encoder.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Nominal image side; sets the position-embedding grid.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Patch side in pixels.
    #[serde(default = "d_32")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_gelu_tanh")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_1e6")]
    pub layer_norm_eps: f64,
}

/// The perceiver resampler's config (`perceiver_config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerceiverConfig {
    /// MLP activation.
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    /// Width; transformers forces it to the text model's width.
    #[serde(default)]
    pub hidden_size: Option<usize>,
    /// RMSNorm epsilon (forced to the text model's when `hidden_size` is overridden).
    #[serde(default = "d_1e6")]
    pub rms_norm_eps: f64,
    /// Number of latents (= image tokens per image).
    #[serde(default = "d_64")]
    pub resampler_n_latents: usize,
    /// Number of perceiver layers.
    #[serde(default = "d_3")]
    pub resampler_depth: usize,
    /// Number of query heads.
    #[serde(default = "d_16")]
    pub resampler_n_heads: usize,
    /// Head width.
    #[serde(default = "d_96")]
    pub resampler_head_dim: usize,
    /// Number of key/value heads.
    #[serde(default = "d_4")]
    pub num_key_value_heads: usize,
}

/// RoPE parameters (`rope_parameters` in transformers 5, `rope_theta` before).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeParameters {
    /// RoPE base.
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    /// RoPE type; only `default` is supported.
    #[serde(default = "d_default")]
    pub rope_type: String,
}

/// The Mistral text decoder's config (`text_config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextConfig {
    /// Vocabulary size.
    #[serde(default = "d_32000")]
    pub vocab_size: usize,
    /// Width of the decoder.
    #[serde(default = "d_4096")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_14336")]
    pub intermediate_size: usize,
    /// Number of decoder layers.
    #[serde(default = "d_32")]
    pub num_hidden_layers: usize,
    /// Number of query heads.
    #[serde(default = "d_32")]
    pub num_attention_heads: usize,
    /// Number of key/value heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width (defaults to `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation.
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    /// Maximum sequence length.
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "d_1e5")]
    pub rms_norm_eps: f64,
    /// RoPE parameters (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE base (transformers 4).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Sliding attention window, if any.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id(s).
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
}

/// One EOS id or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EosTokenId {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl EosTokenId {
    /// All ids.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            EosTokenId::One(i) => vec![*i],
            EosTokenId::Many(v) => v.clone(),
        }
    }
}

impl TextConfig {
    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// RoPE base.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
}

/// The whole `Idefics2Config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Idefics2Config {
    /// Vision encoder config.
    pub vision_config: VisionConfig,
    /// Perceiver resampler config.
    pub perceiver_config: PerceiverConfig,
    /// Text decoder config.
    pub text_config: TextConfig,
    /// Id of the `<image>` token.
    #[serde(default = "d_image_token")]
    pub image_token_id: u32,
    /// Whether `lm_head` shares the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The checkpoint's dtype (`dtype` in transformers 5, `torch_dtype` before).
    #[serde(default, alias = "torch_dtype")]
    pub dtype: Option<String>,
}

impl Idefics2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies transformers' post-init rules (the perceiver width follows the text width).
    pub fn normalize(&mut self) {
        if self.perceiver_config.hidden_size != Some(self.text_config.hidden_size) {
            self.perceiver_config.hidden_size = Some(self.text_config.hidden_size);
            self.perceiver_config.rms_norm_eps = self.text_config.rms_norm_eps;
        }
    }

    /// The perceiver width (= text width).
    pub fn perceiver_hidden(&self) -> usize {
        self.perceiver_config
            .hidden_size
            .unwrap_or(self.text_config.hidden_size)
    }

    /// Checks divisibility and supported options.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let p = &self.perceiver_config;
        let bad = |m: String| Err(Error::Config(m));
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return bad(format!(
                "vision image_size {} / patch_size {} invalid",
                v.image_size, v.patch_size
            ));
        }
        if t.num_attention_heads == 0
            || t.kv_heads() == 0
            || !t.num_attention_heads.is_multiple_of(t.kv_heads())
        {
            return bad(format!(
                "text num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.kv_heads()
            ));
        }
        if !t.head_dim().is_multiple_of(2) {
            return bad(format!(
                "text head_dim {} must be even for RoPE",
                t.head_dim()
            ));
        }
        if p.num_key_value_heads == 0 || !p.resampler_n_heads.is_multiple_of(p.num_key_value_heads)
        {
            return bad(format!(
                "perceiver resampler_n_heads {} is not a multiple of num_key_value_heads {}",
                p.resampler_n_heads, p.num_key_value_heads
            ));
        }
        if let Some(r) = &t.rope_parameters {
            if r.rope_type != "default" {
                return bad(format!("unsupported rope_type `{}`", r.rope_type));
            }
        }
        for act in [&v.hidden_act, &t.hidden_act, &p.hidden_act] {
            if !matches!(
                act.as_str(),
                "silu" | "swish" | "gelu" | "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "relu"
            ) {
                return bad(format!("unsupported activation `{act}`"));
            }
        }
        Ok(())
    }
}

fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_12() -> usize {
    12
}
fn d_16() -> usize {
    16
}
fn d_32() -> usize {
    32
}
fn d_64() -> usize {
    64
}
fn d_96() -> usize {
    96
}
fn d_224() -> usize {
    224
}
fn d_768() -> usize {
    768
}
fn d_3072() -> usize {
    3072
}
fn d_4096() -> usize {
    4096
}
fn d_14336() -> usize {
    14336
}
fn d_32000() -> usize {
    32000
}
fn d_maxpos() -> usize {
    32768
}
fn d_1e6() -> f64 {
    1e-6
}
fn d_1e5() -> f64 {
    1e-5
}
fn d_theta() -> f64 {
    10000.0
}
fn d_image_token() -> u32 {
    32001
}
fn d_silu() -> String {
    "silu".into()
}
fn d_gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_default() -> String {
    "default".into()
}
