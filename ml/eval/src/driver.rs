//! Running an Idefics2 model (optionally with a PEFT LoRA adapter) greedily over examples,
//! timing each document, and scoring the answers.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use foundry_idefics2::processor::{
    apply_chat_template, ChatMessage, ContentPart, Processor, RgbImage,
};
use foundry_idefics2::{GenerationConfig, Idefics2};
use serde_json::Value;

use crate::error::{EvalError, Result};
use crate::metrics::{score, EvalReport, Prediction};
use crate::spec::{EvalSpec, Strategy};

/// One example of an eval split.
#[derive(Debug, Clone)]
pub struct EvalExample {
    /// Stable id of the example (row id in the split).
    pub id: String,
    /// The document image.
    pub image: RgbImage,
    /// The user's instruction, placed after the image.
    pub prompt: String,
    /// Document type.
    pub doc_type: String,
    /// Layout family.
    pub layout: String,
    /// The target JSON object.
    pub target: Value,
}

impl EvalExample {
    /// An example from encoded image bytes (PNG or JPEG); a bad image is an error naming
    /// the example.
    pub fn from_image_bytes(
        id: impl Into<String>,
        bytes: &[u8],
        prompt: impl Into<String>,
        doc_type: impl Into<String>,
        layout: impl Into<String>,
        target: Value,
    ) -> Result<Self> {
        let id = id.into();
        let image = RgbImage::decode(bytes)
            .map_err(|e| EvalError::Input(format!("example {id:?}: image: {e}")))?;
        Ok(Self {
            id,
            image,
            prompt: prompt.into(),
            doc_type: doc_type.into(),
            layout: layout.into(),
            target,
        })
    }
}

/// A loaded model and its processor, ready to answer.
pub struct ModelUnderTest {
    /// The model (with the adapter attached, if any).
    pub model: Idefics2,
    /// Its processor.
    pub processor: Processor,
}

impl ModelUnderTest {
    /// Loads a model directory in the Hugging Face layout on the CPU, checks that processor
    /// and model agree, and attaches the PEFT adapter in `adapter` (a directory with
    /// `adapter_config.json` and `adapter_model.safetensors`) when given.
    pub fn load(dir: &Path, adapter: Option<&Path>, dtype: DType) -> Result<Self> {
        let processor = Processor::from_dir(dir)?;
        let mut model = foundry_qlora::export::load_model_dir(dir, dtype, &Device::Cpu)?;
        if processor.image_seq_len != model.image_seq_len() {
            return Err(EvalError::Input(format!(
                "model {}: processor_config.json has image_seq_len {} but the model has {} resampler latents",
                dir.display(),
                processor.image_seq_len,
                model.image_seq_len()
            )));
        }
        if processor.image_token_id() != model.config.image_token_id {
            return Err(EvalError::Input(format!(
                "model {}: the tokenizer's <image> id is {} but config.json's image_token_id is {}",
                dir.display(),
                processor.image_token_id(),
                model.config.image_token_id
            )));
        }
        if let Some(a) = adapter {
            foundry_qlora::lora::load_adapter_into(&mut model, a)?;
        }
        Ok(Self { model, processor })
    }

    /// Answers one example greedily; returns the decoded text (special tokens skipped).
    pub fn answer(&self, ex: &EvalExample, max_new_tokens: u32) -> Result<String> {
        let chat = apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: vec![ContentPart::Image, ContentPart::Text(ex.prompt.clone())],
            }],
            true,
        );
        let device = self.model.device().clone();
        let enc = self
            .processor
            .encode(&[chat], &[vec![ex.image.clone()]], &device)?;
        let ids = enc.input_ids.into_iter().next().unwrap_or_default();
        let pixels = enc
            .pixels
            .as_ref()
            .ok_or_else(|| EvalError::Input(format!("example {:?}: no pixel values", ex.id)))?;
        let cfg = GenerationConfig {
            max_new_tokens: max_new_tokens as usize,
            temperature: None,
            top_p: None,
            seed: 0,
            stop_token_ids: self.processor.stop_ids(),
        };
        let out = self.model.generate(
            &ids,
            Some(&pixels.pixel_values),
            Some(&pixels.pixel_attention_mask),
            &cfg,
        )?;
        Ok(self.processor.decode(&out, true)?)
    }

    /// Runs the model over `examples` (at most `spec.limit` of them, in order), timing each
    /// document from preprocessing to decoded text, and scores the answers. `progress` is
    /// called after each document with the number done. The report's throughput is the
    /// wall clock of the whole loop.
    pub fn evaluate<I>(
        &self,
        examples: I,
        spec: &EvalSpec,
        mut progress: impl FnMut(usize),
    ) -> Result<EvalReport>
    where
        I: IntoIterator<Item = Result<EvalExample>>,
    {
        spec.validate()?;
        let Strategy::Greedy = spec.decoding.strategy;
        let limit = spec.limit.map_or(usize::MAX, |l| l as usize);
        let start = Instant::now();
        let mut preds = Vec::new();
        for ex in examples.into_iter().take(limit) {
            let ex = ex?;
            let t0 = Instant::now();
            let raw = self.answer(&ex, spec.decoding.max_new_tokens)?;
            let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
            preds.push(Prediction {
                id: ex.id,
                doc_type: ex.doc_type,
                layout: ex.layout,
                target: ex.target,
                raw,
                latency_ms,
            });
            progress(preds.len());
        }
        let wall = start.elapsed().as_secs_f64();
        let mut report = score(&preds, spec)?;
        if wall > 0.0 {
            report.throughput_docs_per_s = preds.len() as f64 / wall;
        }
        Ok(report)
    }
}
