//! Training examples: a small trait the dataset reader plugs into, tokenization of
//! (images, prompt, answer) with the loss restricted to the answer, and batch collation.

use candle_core::{DType, Device, Tensor};
use foundry_idefics2::processor::{
    apply_chat_template, ChatMessage, ContentPart, Processor, RgbImage,
};

use crate::{Error, Result};

/// Label value that is excluded from the loss (as in PyTorch's cross entropy).
pub const IGNORE: i64 = -100;

/// One tokenized training example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Token ids, with `<image>` tokens already expanded.
    pub input_ids: Vec<u32>,
    /// Per position, the token that position must be predicted as, or [`IGNORE`]. Aligned with
    /// `input_ids` (the trainer shifts: position `t` predicts `labels[t + 1]`).
    pub labels: Vec<i64>,
    /// `[n_images, 3, h, w]` f32, or `None` for a text-only example.
    pub pixel_values: Option<Tensor>,
    /// `[n_images, h, w]` (1 = real pixel), matching `pixel_values`.
    pub pixel_attention_mask: Option<Tensor>,
}

/// An indexable source of training examples (the dataset reader implements this).
pub trait ExampleSource {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The example at `index` (`< len()`).
    fn get(&self, index: usize) -> Result<Example>;
    /// A hint: these indices will be asked for next, in this order. A source that reads from
    /// disk may start preparing them in the background; the default ignores it.
    fn prefetch(&self, _upcoming: &[usize]) {}
}

impl ExampleSource for Vec<Example> {
    fn len(&self) -> usize {
        <[Example]>::len(self)
    }
    fn get(&self, index: usize) -> Result<Example> {
        self.as_slice()
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Train(format!("example {index} out of range")))
    }
}

/// An untokenized example: images, the user's prompt and the assistant's answer.
#[derive(Debug, Clone)]
pub struct ChatExample {
    /// Images shown before the prompt text.
    pub images: Vec<RgbImage>,
    /// The user's text.
    pub prompt: String,
    /// The assistant's answer (the only tokens in the loss, with the closing `<end_of_utterance>`).
    pub answer: String,
}

/// Tokenizes a chat example: `User:<image>…prompt<end_of_utterance>\nAssistant: answer<end_of_utterance>\n`,
/// with labels on the answer tokens and the closing `<end_of_utterance>` only.
pub fn encode_chat(processor: &Processor, ex: &ChatExample) -> Result<Example> {
    let mut content: Vec<ContentPart> = ex.images.iter().map(|_| ContentPart::Image).collect();
    content.push(ContentPart::Text(ex.prompt.clone()));
    let user = ChatMessage {
        role: "user".into(),
        content,
    };
    let prefix = apply_chat_template(std::slice::from_ref(&user), true);
    let full = format!("{prefix} {}<end_of_utterance>\n", ex.answer);
    let images = if ex.images.is_empty() {
        vec![]
    } else {
        vec![ex.images.clone(), ex.images.clone()]
    };
    let enc = processor.encode(&[prefix, full], &images, &Device::Cpu)?;
    let p_len = enc.attention_mask[0].iter().filter(|m| **m == 1).count();
    let f_len = enc.attention_mask[1].iter().filter(|m| **m == 1).count();
    let ids = enc.input_ids[1][..f_len].to_vec();
    if enc.input_ids[0][..p_len] != ids[..p_len.min(f_len)] {
        return Err(Error::Train(
            "the prompt's tokens are not a prefix of the full conversation's".into(),
        ));
    }
    // Answer tokens up to and including the first <end_of_utterance> after the prompt.
    let eou = processor.end_of_utterance_id();
    let mut labels = vec![IGNORE; f_len];
    for t in p_len..f_len {
        labels[t] = ids[t] as i64;
        if ids[t] == eou {
            break;
        }
    }
    let (pv, pm) = match &enc.pixels {
        Some(p) => (
            Some(p.pixel_values.get(1)?),
            Some(p.pixel_attention_mask.get(1)?),
        ),
        None => (None, None),
    };
    Ok(Example {
        input_ids: ids,
        labels,
        pixel_values: pv,
        pixel_attention_mask: pm,
    })
}

/// A padded batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, s]` u32, right-padded with `pad_id`.
    pub input_ids: Tensor,
    /// `[b, n, 3, h, w]` f32 (zero images pad), if any example has images.
    pub pixel_values: Option<Tensor>,
    /// `[b, n, h, w]` u8.
    pub pixel_attention_mask: Option<Tensor>,
    /// Flat indices `b * s + t` of the positions whose next token is in the loss.
    pub positions: Vec<u32>,
    /// The target token of each position in `positions`.
    pub targets: Vec<u32>,
}

/// Collates examples into a right-padded batch.
pub fn collate(examples: &[Example], pad_id: u32, device: &Device) -> Result<Batch> {
    if examples.is_empty() {
        return Err(Error::Train("empty batch".into()));
    }
    let b = examples.len();
    let s = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut ids = vec![pad_id; b * s];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (i, e) in examples.iter().enumerate() {
        if e.labels.len() != e.input_ids.len() {
            return Err(Error::Train(format!(
                "example {i}: {} labels for {} tokens",
                e.labels.len(),
                e.input_ids.len()
            )));
        }
        ids[i * s..i * s + e.input_ids.len()].copy_from_slice(&e.input_ids);
        for t in 0..e.input_ids.len().saturating_sub(1) {
            let l = e.labels[t + 1];
            if l != IGNORE {
                if l < 0 {
                    return Err(Error::Train(format!("example {i}: bad label {l}")));
                }
                positions.push((i * s + t) as u32);
                targets.push(l as u32);
            }
        }
    }
    let input_ids = Tensor::from_vec(ids, (b, s), device)?;
    let with_images: Vec<&Example> = examples
        .iter()
        .filter(|e| e.pixel_values.is_some())
        .collect();
    let (pixel_values, pixel_attention_mask) = if with_images.is_empty() {
        (None, None)
    } else {
        let mut n = 0;
        let (mut h, mut w) = (0, 0);
        for e in &with_images {
            if let Some(pv) = &e.pixel_values {
                let (k, _, hh, ww) = pv.dims4()?;
                n = n.max(k);
                h = h.max(hh);
                w = w.max(ww);
            }
        }
        let mut pvs = Vec::new();
        let mut pms = Vec::new();
        for e in examples {
            let pv = Tensor::zeros((n, 3, h, w), DType::F32, device)?;
            let pm = Tensor::zeros((n, h, w), DType::U8, device)?;
            let (pv, pm) = match (&e.pixel_values, &e.pixel_attention_mask) {
                (Some(x), m) => {
                    let (k, _, hh, ww) = x.dims4()?;
                    let m = match m {
                        Some(m) => m.to_dtype(DType::U8)?,
                        None => Tensor::ones((k, hh, ww), DType::U8, device)?,
                    };
                    (
                        pv.slice_assign(&[0..k, 0..3, 0..hh, 0..ww], &x.to_dtype(DType::F32)?)?,
                        pm.slice_assign(&[0..k, 0..hh, 0..ww], &m)?,
                    )
                }
                (None, _) => (pv, pm),
            };
            pvs.push(pv);
            pms.push(pm);
        }
        (Some(Tensor::stack(&pvs, 0)?), Some(Tensor::stack(&pms, 0)?))
    };
    Ok(Batch {
        input_ids,
        pixel_values,
        pixel_attention_mask,
        positions,
        targets,
    })
}
