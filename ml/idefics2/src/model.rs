//! `Idefics2ForConditionalGeneration`: vision encoder, connector, Mistral decoder and LM head.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};

use crate::config::Idefics2Config;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::layers::linear;
use crate::linear::{LinearVisitor, SeamLinear};
use crate::text::{KvCache, TextModel};
use crate::vision::VisionTransformer;
use crate::weights::{parse_dtype, safetensors_files, Weights};
use foundry_kernels::BaseWeight;

/// The full Idefics2 model.
#[derive(Debug, Clone)]
pub struct Idefics2 {
    /// The configuration it was built from.
    pub config: Idefics2Config,
    /// `model.vision_model`.
    pub vision: VisionTransformer,
    /// `model.connector`.
    pub connector: Connector,
    /// `model.text_model`.
    pub text: TextModel,
    /// `lm_head` (shares the embedding when `tie_word_embeddings`).
    pub lm_head: SeamLinear,
    dtype: DType,
    device: Device,
}

impl Idefics2 {
    /// Loads `config.json` and the safetensors weights of a Hugging Face model directory.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = Idefics2Config::from_file(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        Self::load(config, &files, dtype, device)
    }

    /// Builds the model from a config and safetensors files. Every tensor is checked
    /// for presence, shape and dtype (the checkpoint's `dtype` when config.json
    /// declares one); tensors the model does not use are an error too.
    pub fn load(
        config: Idefics2Config,
        files: &[std::path::PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::Config(format!(
                "unsupported compute dtype {dtype:?}"
            )));
        }
        config.validate()?;
        let file_dtype =
            match &config.dtype {
                Some(name) => Some(parse_dtype(name).ok_or_else(|| {
                    Error::Config(format!("unsupported checkpoint dtype `{name}`"))
                })?),
                None => None,
            };
        let w = Weights::open(files, dtype, file_dtype, device)?;
        let vision = VisionTransformer::load(&w, &config.vision_config)?;
        let connector = Connector::load(&w, &config)?;
        let text = TextModel::load(&w, &config.text_config)?;
        let t = &config.text_config;
        let lm_head = if config.tie_word_embeddings && !w.contains("lm_head.weight") {
            SeamLinear::new(
                "lm_head",
                BaseWeight::Dense(text.embed_tokens.clone()),
                None,
            )
        } else {
            linear(&w, "lm_head", t.hidden_size, t.vocab_size, false)?
        };
        let unused: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|n| {
                !n.ends_with("rotary_emb.inv_freq") && !n.ends_with("embeddings.position_ids")
            })
            .take(8)
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnexpectedTensors(unused));
        }
        Ok(Self {
            config,
            vision,
            connector,
            text,
            lm_head,
            dtype,
            device: device.clone(),
        })
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of `<image>` tokens per image (`resampler_n_latents`).
    pub fn image_seq_len(&self) -> usize {
        self.config.perceiver_config.resampler_n_latents
    }

    /// Image features for `pixel_values` `[b, n, c, h, w]` and the optional
    /// `pixel_attention_mask` `[b, n, h, w]` (0/1). All-zero (padding) images are
    /// dropped as transformers does. Returns `[real_images * n_latents, text_hidden]`.
    pub fn image_features(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, c, h, w) = pixel_values.dims5().map_err(|_| {
            Error::Input(format!(
                "pixel_values must be [b, n, c, h, w], got {:?}",
                pixel_values.dims()
            ))
        })?;
        let pv = pixel_values
            .to_dtype(self.dtype)?
            .reshape((b * n, c, h, w))?;
        let nonzero = pv
            .ne(0.0)?
            .to_dtype(DType::U32)?
            .flatten_from(1)?
            .sum(1)?
            .to_vec1::<u32>()?;
        let real: Vec<u32> = nonzero
            .iter()
            .enumerate()
            .filter(|(_, &nz)| nz != 0)
            .map(|(i, _)| i as u32)
            .collect();
        if real.is_empty() {
            return Err(Error::Input("all images are padding (all zeros)".into()));
        }
        let idx = Tensor::new(real.as_slice(), pv.device())?;
        let pv = pv.index_select(&idx, 0)?;
        let nr = real.len();
        let pmask = match pixel_attention_mask {
            Some(m) => {
                if m.dims() != [b, n, h, w] {
                    return Err(Error::Input(format!(
                        "pixel_attention_mask must be {:?}, got {:?}",
                        [b, n, h, w],
                        m.dims()
                    )));
                }
                m.to_dtype(DType::U32)?
                    .reshape((b * n, h, w))?
                    .index_select(&idx, 0)?
            }
            None => Tensor::ones((nr, h, w), DType::U32, pv.device())?,
        };
        let p = self.config.vision_config.patch_size;
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            return Err(Error::Input(format!(
                "images of {h}x{w} are smaller than one {p}px patch"
            )));
        }
        let patch_mask = pmask
            .narrow(1, 0, gh * p)?
            .narrow(2, 0, gw * p)?
            .reshape((nr, gh, p, gw, p))?
            .sum(4)?
            .sum(2)?
            .eq((p * p) as f64)?; // u8 [nr, gh, gw]
        let hidden = self.vision.forward(&pv, &patch_mask)?;
        let feats = self
            .connector
            .forward(&hidden, &patch_mask.reshape((nr, gh * gw))?)?;
        let (_, nl, d) = feats.dims3()?;
        Ok(feats.reshape((nr * nl, d))?)
    }

    /// Embeds `input_ids` `[b, s]` and replaces the `<image>` token rows, in order,
    /// with the rows of `image_features` `[k, hidden]`.
    pub fn merge_embeddings(
        &self,
        input_ids: &Tensor,
        image_features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.text.embed(input_ids)?;
        let Some(feats) = image_features else {
            return Ok(embeds);
        };
        let (b, s, d) = embeds.dims3()?;
        let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
        let total = b * s;
        let mut index = Vec::with_capacity(total);
        let mut k = 0u32;
        for (i, &t) in ids.iter().enumerate() {
            if t == self.config.image_token_id {
                index.push(total as u32 + k);
                k += 1;
            } else {
                index.push(i as u32);
            }
        }
        if k as usize != feats.dim(0)? {
            return Err(Error::Input(format!(
                "image features and image tokens do not match: {k} tokens, {} feature rows",
                feats.dim(0)?
            )));
        }
        let all = Tensor::cat(
            &[
                &embeds.reshape((total, d))?,
                &feats.to_dtype(embeds.dtype())?,
            ],
            0,
        )?;
        let index = Tensor::from_vec(index, total, all.device())?;
        Ok(all.index_select(&index, 0)?.reshape((b, s, d))?)
    }

    /// The full forward pass (no cache): `input_ids` `[b, s]` (u32), optional
    /// `pixel_values` `[b, n, c, h, w]` and `pixel_attention_mask` `[b, n, h, w]`
    /// → logits `[b, s, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, pixel_values, pixel_attention_mask)?;
        Ok(self.lm_head.forward(&h)?)
    }

    /// The full forward pass without `lm_head`: the final-normed hidden states `[b, s, hidden]`,
    /// so that a trainer can project only the positions in its loss.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let feats = match pixel_values {
            Some(pv) => Some(self.image_features(pv, pixel_attention_mask)?),
            None => None,
        };
        let embeds = self.merge_embeddings(input_ids, feats.as_ref())?;
        Ok(self.text.forward_embeds(&embeds, None)?)
    }

    /// One cached step: embeds `input_ids` (merging `image_features` if given), runs the
    /// decoder appending to `cache`, and returns the logits of the last position `[b, vocab]`.
    pub fn forward_step(
        &self,
        input_ids: &Tensor,
        image_features: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let embeds = self.merge_embeddings(input_ids, image_features)?;
        let h = self.text.forward_embeds(&embeds, Some(cache))?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        Ok(self.lm_head.forward(&last)?)
    }

    /// A fresh KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.text.layers.len())
    }

    /// Log-softmax helper for callers that score sequences: `[.., vocab]` → log-probs (f32).
    pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
        let l = logits.to_dtype(DType::F32)?;
        let max = l.max_keepdim(D::Minus1)?;
        let sh = l.broadcast_sub(&max)?;
        let lse = sh.exp()?.sum_keepdim(D::Minus1)?.log()?;
        Ok(sh.broadcast_sub(&lse)?)
    }
}

impl LinearVisitor for Idefics2 {
    fn visit_linears(
        &mut self,
        f: &mut dyn FnMut(&mut SeamLinear) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        for l in self.vision.linears() {
            f(l)?;
        }
        for l in self.connector.linears() {
            f(l)?;
        }
        for l in self.text.linears() {
            f(l)?;
        }
        f(&mut self.lm_head)
    }
}
