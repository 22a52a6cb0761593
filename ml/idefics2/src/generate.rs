//! Greedy and sampled (temperature / top-p, seeded) generation with the KV cache.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::Idefics2;

/// How to pick the next token and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Sampling temperature; `None` or `0` means greedy decoding.
    pub temperature: Option<f64>,
    /// Nucleus (top-p) threshold in `(0, 1]`; only used when sampling.
    pub top_p: Option<f64>,
    /// Seed of the sampler's RNG.
    pub seed: u64,
    /// Token ids that end generation (`<end_of_utterance>`, EOS); the stop token is kept
    /// in the output, as transformers does.
    pub stop_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: None,
            top_p: None,
            seed: 0,
            stop_token_ids: Vec::new(),
        }
    }
}

/// Picks the next token from a `[vocab]` logits row.
pub fn pick_token(
    logits: &Tensor,
    cfg: &GenerationConfig,
    rng: &mut rand::rngs::StdRng,
) -> Result<u32> {
    let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
    match cfg.temperature {
        Some(t) if t > 0.0 => {
            let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / t).collect();
            let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut probs: Vec<(usize, f64)> = scaled
                .iter()
                .map(|&l| (l - max).exp())
                .enumerate()
                .collect();
            let sum: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= sum);
            if let Some(top_p) = cfg.top_p {
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(Error::Input(format!(
                        "top_p must be in (0, 1], got {top_p}"
                    )));
                }
                // Keep the smallest set of most likely tokens whose mass reaches top_p.
                probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut acc = 0.0;
                let mut keep = 0;
                for p in &probs {
                    keep += 1;
                    acc += p.1;
                    if acc >= top_p {
                        break;
                    }
                }
                probs.truncate(keep.max(1));
                let s: f64 = probs.iter().map(|p| p.1).sum();
                probs.iter_mut().for_each(|p| p.1 /= s);
            }
            let r: f64 = rng.gen();
            let mut acc = 0.0;
            for &(i, p) in &probs {
                acc += p;
                if r < acc {
                    return Ok(i as u32);
                }
            }
            Ok(probs.last().map(|p| p.0 as u32).unwrap_or(0))
        }
        _ => {
            // First maximum, like torch.argmax.
            let mut best = 0usize;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            Ok(best as u32)
        }
    }
}

impl Idefics2 {
    /// Generates up to `cfg.max_new_tokens` tokens after the prompt `input_ids` (one
    /// sequence), with optional images (`pixel_values` `[1, n, c, h, w]`, mask
    /// `[1, n, h, w]`). Returns the new token ids only.
    pub fn generate(
        &self,
        input_ids: &[u32],
        pixel_values: Option<&Tensor>,
        pixel_attention_mask: Option<&Tensor>,
        cfg: &GenerationConfig,
    ) -> Result<Vec<u32>> {
        if input_ids.is_empty() {
            return Err(Error::Input("empty prompt".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let feats = match pixel_values {
            Some(pv) => Some(self.image_features(pv, pixel_attention_mask)?),
            None => None,
        };
        let mut cache = self.new_cache();
        let ids = Tensor::new(input_ids, self.device())?.unsqueeze(0)?;
        let mut logits = self.forward_step(&ids, feats.as_ref(), &mut cache)?;
        let mut out = Vec::new();
        for _ in 0..cfg.max_new_tokens {
            let next = pick_token(&logits.squeeze(0)?, cfg, &mut rng)?;
            out.push(next);
            if cfg.stop_token_ids.contains(&next) || out.len() == cfg.max_new_tokens {
                break;
            }
            let ids = Tensor::new(&[next], self.device())?.unsqueeze(0)?;
            logits = self.forward_step(&ids, None, &mut cache)?;
        }
        Ok(out)
    }
}
