//! The Idefics2 processor: image preprocessing (matching transformers' PIL image
//! processor, including PIL's bilinear resampling byte for byte), the chat prompt
//! format, image-token expansion and tokenization.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Largest image file read (32 MiB; the same as a dataset row's image).
pub const MAX_IMAGE_BYTES: u64 = 32 << 20;
/// Longest image side decoded, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most memory one image may decode into (256 MiB).
pub const MAX_IMAGE_DECODED_BYTES: u64 = 256 << 20;

/// An 8-bit RGB image, row-major `height × width × 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps raw HWC RGB bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(Error::Input(format!(
                "RGB buffer of {} bytes does not fit {width}x{height}",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Decodes a PNG or JPEG file and converts it to RGB (alpha dropped, grey replicated,
    /// as PIL's `convert("RGB")`).
    pub fn open(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_IMAGE_BYTES {
            return Err(Error::Image {
                path: path.display().to_string(),
                message: format!("{len} bytes, more than the {MAX_IMAGE_BYTES} an image may have"),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes).map_err(|e| match e {
            Error::Image { message, .. } => Error::Image {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Decodes PNG or JPEG bytes, within the decode limits: at most
    /// [`MAX_IMAGE_SIDE`] pixels a side and [`MAX_IMAGE_DECODED_BYTES`] of
    /// memory, so a small file claiming an enormous size is refused before
    /// anything is allocated for it.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let image_err = |message: String| Error::Image {
            path: "<memory>".into(),
            message,
        };
        let reader = || {
            image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| image_err(e.to_string()))
        };
        // The header alone says how large the image claims to be.
        let (w, h) = reader()?
            .into_dimensions()
            .map_err(|e| image_err(e.to_string()))?;
        if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(image_err(format!(
                "it is {w} x {h} pixels, more than {MAX_IMAGE_SIDE} a side"
            )));
        }
        let mut reader = reader()?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_DECODED_BYTES);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| image_err(e.to_string()))?;
        let rgb = img.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        Self::new(w, h, rgb.into_raw())
    }

    /// The sub-image `[x0, x1) × [y0, y1)`.
    pub fn crop(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Self {
        let (w, h) = (x1 - x0, y1 - y0);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in y0..y1 {
            let row = (y * self.width + x0) * 3;
            data.extend_from_slice(&self.data[row..row + w * 3]);
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }

    /// Bilinear resize exactly as Pillow's `Image.resize(size, BILINEAR)` on an RGB image
    /// (the filter support widens with the downscale factor; 22-bit fixed-point
    /// coefficients; horizontal pass first, both passes rounding to 8 bits).
    pub fn resize_bilinear(&self, width: usize, height: usize) -> Self {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let (bh, kh, ksh) = precompute_coeffs(self.width, 0.0, self.width as f64, width);
        let (mut bv, kv, ksv) = precompute_coeffs(self.height, 0.0, self.height as f64, height);
        let need_h = width != self.width;
        let need_v = height != self.height;
        let mut cur = self.clone();
        if need_h {
            // Only rows used by the vertical pass are computed, as Pillow does.
            let first = bv[0];
            let last = bv[2 * (height - 1)] + bv[2 * (height - 1) + 1];
            for i in 0..height {
                bv[2 * i] -= first;
            }
            let rows = last - first;
            let mut out = vec![0u8; rows * width * 3];
            for y in 0..rows {
                let src =
                    &self.data[(y + first) * self.width * 3..(y + first + 1) * self.width * 3];
                for x in 0..width {
                    let (xmin, xmax) = (bh[2 * x], bh[2 * x + 1]);
                    let k = &kh[x * ksh..x * ksh + xmax];
                    for c in 0..3 {
                        let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                        for (i, &kk) in k.iter().enumerate() {
                            ss = ss.wrapping_add(src[(xmin + i) * 3 + c] as i32 * kk);
                        }
                        out[(y * width + x) * 3 + c] = clip8(ss);
                    }
                }
            }
            cur = Self {
                width,
                height: rows,
                data: out,
            };
        }
        if need_v {
            let mut out = vec![0u8; height * width * 3];
            for y in 0..height {
                let (ymin, ymax) = (bv[2 * y], bv[2 * y + 1]);
                let k = &kv[y * ksv..y * ksv + ymax];
                for x in 0..width {
                    for c in 0..3 {
                        let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                        for (i, &kk) in k.iter().enumerate() {
                            ss = ss.wrapping_add(
                                cur.data[((ymin + i) * width + x) * 3 + c] as i32 * kk,
                            );
                        }
                        out[(y * width + x) * 3 + c] = clip8(ss);
                    }
                }
            }
            cur = Self {
                width,
                height,
                data: out,
            };
        }
        cur
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter:
/// returns `(bounds [xmin, count] per output pixel, fixed-point kernels, kernel size)`.
fn precompute_coeffs(
    in_size: usize,
    in0: f64,
    in1: f64,
    out_size: usize,
) -> (Vec<usize>, Vec<i32>, usize) {
    let support_base = 1.0;
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support_base * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = vec![0usize; out_size * 2];
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < n {
                if ww != 0.0 {
                    k[x] / ww
                } else {
                    k[x]
                }
            } else {
                0.0
            };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f).trunc() as i32
            } else {
                (0.5 + f).trunc() as i32
            };
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = n;
    }
    (bounds, kk, ksize)
}

/// `size` of `preprocessor_config.json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SizeConfig {
    /// Minimum edge after resizing.
    pub shortest_edge: Option<usize>,
    /// Maximum edge after resizing.
    pub longest_edge: Option<usize>,
    /// Fixed height (alternative to the edge limits).
    pub height: Option<usize>,
    /// Fixed width (alternative to the edge limits).
    pub width: Option<usize>,
}

/// `preprocessor_config.json` of an Idefics2 image processor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageProcessorConfig {
    /// Convert to RGB first.
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
    /// Resize to the edge limits.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// Edge limits.
    #[serde(default = "default_size")]
    pub size: SizeConfig,
    /// PIL resampling filter; only 2 (bilinear) is supported.
    #[serde(default = "bilinear")]
    pub resample: u32,
    /// Multiply by `rescale_factor`.
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// Usually 1/255.
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    /// Normalise with mean/std.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean.
    #[serde(default = "half3")]
    pub image_mean: Vec<f32>,
    /// Per-channel std.
    #[serde(default = "half3")]
    pub image_std: Vec<f32>,
    /// Pad to the batch maximum with a pixel mask.
    #[serde(default = "yes")]
    pub do_pad: bool,
    /// Split each image into 4 crops plus the whole image.
    #[serde(default)]
    pub do_image_splitting: bool,
}

fn yes() -> bool {
    true
}
fn bilinear() -> u32 {
    2
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn half3() -> Vec<f32> {
    vec![0.5; 3]
}
fn default_size() -> SizeConfig {
    SizeConfig {
        shortest_edge: Some(378),
        longest_edge: Some(980),
        height: None,
        width: None,
    }
}

impl ImageProcessorConfig {
    /// Output `(height, width)` of the resize (transformers' `get_resize_output_image_size`).
    pub fn output_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        match (
            &self.size.shortest_edge,
            &self.size.longest_edge,
            &self.size.height,
            &self.size.width,
        ) {
            (Some(min_len), Some(max_len), _, _) => {
                let (mut h, mut w) = (height, width);
                let aspect = w as f64 / h as f64;
                if w >= h && w > *max_len {
                    w = *max_len;
                    h = (w as f64 / aspect) as usize;
                } else if h > w && h > *max_len {
                    h = *max_len;
                    w = (h as f64 * aspect) as usize;
                }
                Ok((h.max(*min_len), w.max(*min_len)))
            }
            (_, _, Some(h), Some(w)) => Ok((*h, *w)),
            _ => Err(Error::Config(
                "preprocessor size needs shortest_edge+longest_edge or height+width".into(),
            )),
        }
    }
}

/// The tensors for a batch of images.
#[derive(Debug, Clone)]
pub struct PixelBatch {
    /// `[b, n, 3, h, w]` f32.
    pub pixel_values: Tensor,
    /// `[b, n, h, w]` u8 (1 = real pixel).
    pub pixel_attention_mask: Tensor,
}

/// Preprocesses `images` (per sample, a list of images) into padded pixel tensors.
pub fn preprocess_images(
    cfg: &ImageProcessorConfig,
    images: &[Vec<RgbImage>],
    device: &Device,
) -> Result<PixelBatch> {
    if cfg.resample != 2 {
        return Err(Error::Config(format!(
            "only bilinear resampling (2) is supported, got {}",
            cfg.resample
        )));
    }
    if cfg.image_mean.len() != 3 || cfg.image_std.len() != 3 {
        return Err(Error::Config(
            "image_mean and image_std need 3 values".into(),
        ));
    }
    // Split, resize, rescale, normalise: each image becomes (h, w, CHW f32).
    let mut samples: Vec<Vec<(usize, usize, Vec<f32>)>> = Vec::new();
    for sample in images {
        let mut out = Vec::new();
        for img in sample {
            let parts = if cfg.do_image_splitting {
                let (mw, mh) = (img.width / 2, img.height / 2);
                vec![
                    img.crop(0, 0, mw, mh),
                    img.crop(mw, 0, img.width, mh),
                    img.crop(0, mh, mw, img.height),
                    img.crop(mw, mh, img.width, img.height),
                    img.clone(),
                ]
            } else {
                vec![img.clone()]
            };
            for p in parts {
                if p.width == 0 || p.height == 0 {
                    return Err(Error::Input("image too small to split".into()));
                }
                let p = if cfg.do_resize {
                    let (h, w) = cfg.output_size(p.height, p.width)?;
                    p.resize_bilinear(w, h)
                } else {
                    p
                };
                let (h, w) = (p.height, p.width);
                let mut chw = vec![0f32; 3 * h * w];
                for y in 0..h {
                    for x in 0..w {
                        for c in 0..3 {
                            let v = p.data[(y * w + x) * 3 + c];
                            let mut f = if cfg.do_rescale {
                                (v as f64 * cfg.rescale_factor) as f32
                            } else {
                                v as f32
                            };
                            if cfg.do_normalize {
                                f = (f - cfg.image_mean[c]) / cfg.image_std[c];
                            }
                            chw[c * h * w + y * w + x] = f;
                        }
                    }
                }
                out.push((h, w, chw));
            }
        }
        samples.push(out);
    }
    let b = samples.len();
    let n = samples.iter().map(|s| s.len()).max().unwrap_or(0);
    let mh = samples.iter().flatten().map(|s| s.0).max().unwrap_or(0);
    let mw = samples.iter().flatten().map(|s| s.1).max().unwrap_or(0);
    if n == 0 {
        return Err(Error::Input("no images".into()));
    }
    if !cfg.do_pad && samples.iter().flatten().any(|s| s.0 != mh || s.1 != mw) {
        return Err(Error::Input("images of different sizes need do_pad".into()));
    }
    let mut pv = vec![0f32; b * n * 3 * mh * mw];
    let mut pm = vec![0u8; b * n * mh * mw];
    for (i, s) in samples.iter().enumerate() {
        for (j, (h, w, chw)) in s.iter().enumerate() {
            let base = (i * n + j) * 3 * mh * mw;
            for c in 0..3 {
                for y in 0..*h {
                    let dst = base + c * mh * mw + y * mw;
                    let src = c * h * w + y * w;
                    pv[dst..dst + w].copy_from_slice(&chw[src..src + w]);
                }
            }
            let mbase = (i * n + j) * mh * mw;
            for y in 0..*h {
                pm[mbase + y * mw..mbase + y * mw + w].fill(1);
            }
        }
    }
    Ok(PixelBatch {
        pixel_values: Tensor::from_vec(pv, (b, n, 3, mh, mw), device)?,
        pixel_attention_mask: Tensor::from_vec(pm, (b, n, mh, mw), device)?,
    })
}

/// One part of a chat message.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    /// An image placeholder.
    Image,
    /// Text.
    Text(String),
}

/// A chat message (`role` is `user`, `assistant`, or `system`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// The role.
    pub role: String,
    /// The content parts in order.
    pub content: Vec<ContentPart>,
}

/// Renders messages with the Idefics2 chat template:
/// `User:<image>text<end_of_utterance>\nAssistant:` (a space follows the colon unless
/// the message starts with an image).
pub fn apply_chat_template(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        let mut role = m.role.to_lowercase();
        if let Some(f) = role.get(0..1) {
            role = f.to_uppercase() + &role[1..];
        }
        s.push_str(&role);
        s.push_str(if matches!(m.content.first(), Some(ContentPart::Image)) {
            ":"
        } else {
            ": "
        });
        for p in &m.content {
            match p {
                ContentPart::Image => s.push_str(IMAGE_TOKEN),
                ContentPart::Text(t) => s.push_str(t),
            }
        }
        s.push_str(END_OF_UTTERANCE);
        s.push('\n');
    }
    if add_generation_prompt {
        s.push_str("Assistant:");
    }
    s
}

/// The image placeholder token.
pub const IMAGE_TOKEN: &str = "<image>";
/// The token around each image.
pub const FAKE_IMAGE_TOKEN: &str = "<fake_token_around_image>";
/// The end-of-turn token.
pub const END_OF_UTTERANCE: &str = "<end_of_utterance>";

/// Expands each `<image>` to `<fake>` + `<image>` × `image_seq_len` + `<fake>` (× 5 with
/// image splitting), merges doubled fake tokens, and puts a space after a closing fake
/// token that is followed by a character other than whitespace or `<`, as transformers'
/// Idefics2Processor does.
pub fn expand_image_tokens(text: &str, image_seq_len: usize, splitting: bool) -> String {
    let one = format!(
        "{FAKE_IMAGE_TOKEN}{}{FAKE_IMAGE_TOKEN}",
        IMAGE_TOKEN.repeat(image_seq_len)
    );
    let image_str = if splitting { one.repeat(5) } else { one };
    let s = text.replace(IMAGE_TOKEN, &image_str);
    let s = s.replace(
        &format!("{FAKE_IMAGE_TOKEN}{FAKE_IMAGE_TOKEN}"),
        FAKE_IMAGE_TOKEN,
    );
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s.as_str();
    while let Some(i) = rest.find(FAKE_IMAGE_TOKEN) {
        let end = i + FAKE_IMAGE_TOKEN.len();
        out.push_str(&rest[..end]);
        rest = &rest[end..];
        if let Some(c) = rest.chars().next() {
            if !c.is_whitespace() && c != '<' {
                out.push(' ');
            }
        }
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Deserialize)]
struct ProcessorFile {
    #[serde(default = "default_seq_len")]
    image_seq_len: usize,
}
fn default_seq_len() -> usize {
    64
}

#[derive(Debug, Deserialize, Default)]
struct TokenizerConfigFile {
    #[serde(default)]
    pad_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
}

fn token_content(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => {
            o.get("content").and_then(|c| c.as_str()).map(String::from)
        }
        _ => None,
    }
}

/// A processed batch ready for [`crate::Idefics2::forward`].
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Token ids per sample, right-padded to one length.
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Pixel tensors, when images were given.
    pub pixels: Option<PixelBatch>,
    /// The expanded prompt strings that were tokenized.
    pub prompts: Vec<String>,
}

impl Encoding {
    /// `input_ids` as a `[b, s]` u32 tensor.
    pub fn input_ids_tensor(&self, device: &Device) -> Result<Tensor> {
        let b = self.input_ids.len();
        let s = self.input_ids.first().map(|r| r.len()).unwrap_or(0);
        let flat: Vec<u32> = self.input_ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (b, s), device)?)
    }
}

/// The full Idefics2 processor.
#[derive(Debug, Clone)]
pub struct Processor {
    /// Image preprocessing settings.
    pub image: ImageProcessorConfig,
    /// `<image>` tokens per image.
    pub image_seq_len: usize,
    /// The tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    pad_id: u32,
    eos_id: Option<u32>,
}

impl Processor {
    /// Loads preprocessor_config.json, processor_config.json (optional) and tokenizer.json
    /// (plus tokenizer_config.json for the pad/eos tokens) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            if p.exists() {
                std::fs::read_to_string(&p)
                    .map(Some)
                    .map_err(|e| Error::io(&p, e))
            } else {
                Ok(None)
            }
        };
        let json = |name: &str, text: &str| -> Result<serde_json::Value> {
            serde_json::from_str(text).map_err(|source| Error::Json {
                path: dir.join(name),
                source,
            })
        };
        let pre = read("preprocessor_config.json")?.ok_or_else(|| {
            Error::Config(format!("no preprocessor_config.json in {}", dir.display()))
        })?;
        let image: ImageProcessorConfig =
            serde_json::from_value(json("preprocessor_config.json", &pre)?).map_err(|source| {
                Error::Json {
                    path: dir.join("preprocessor_config.json"),
                    source,
                }
            })?;
        let image_seq_len = match read("processor_config.json")? {
            Some(t) => {
                serde_json::from_value::<ProcessorFile>(json("processor_config.json", &t)?)
                    .map_err(|source| Error::Json {
                        path: dir.join("processor_config.json"),
                        source,
                    })?
                    .image_seq_len
            }
            None => default_seq_len(),
        };
        let tok_cfg: TokenizerConfigFile = match read("tokenizer_config.json")? {
            Some(t) => {
                serde_json::from_value(json("tokenizer_config.json", &t)?).unwrap_or_default()
            }
            None => TokenizerConfigFile::default(),
        };
        let tokenizer =
            tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
                Error::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display()))
            })?;
        Self::new(
            image,
            image_seq_len,
            tokenizer,
            token_content(&tok_cfg.pad_token),
            token_content(&tok_cfg.eos_token),
        )
    }

    /// Builds a processor from its parts.
    pub fn new(
        image: ImageProcessorConfig,
        image_seq_len: usize,
        tokenizer: tokenizers::Tokenizer,
        pad_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        for t in [IMAGE_TOKEN, FAKE_IMAGE_TOKEN, END_OF_UTTERANCE] {
            if tokenizer.token_to_id(t).is_none() {
                return Err(Error::Tokenizer(format!("tokenizer has no `{t}` token")));
            }
        }
        let pad_id = pad_token
            .and_then(|p| tokenizer.token_to_id(&p))
            .unwrap_or(0);
        let eos_id = eos_token.and_then(|e| tokenizer.token_to_id(&e));
        Ok(Self {
            image,
            image_seq_len,
            tokenizer,
            pad_id,
            eos_id,
        })
    }

    /// Id of a token that the constructor checked exists.
    fn id(&self, t: &str) -> u32 {
        self.tokenizer.token_to_id(t).unwrap_or(0)
    }

    /// Id of `<image>`.
    pub fn image_token_id(&self) -> u32 {
        self.id(IMAGE_TOKEN)
    }

    /// Id of `<end_of_utterance>`.
    pub fn end_of_utterance_id(&self) -> u32 {
        self.id(END_OF_UTTERANCE)
    }

    /// Id of the EOS token, if the tokenizer config names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Stop ids for generation: `<end_of_utterance>` and EOS.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v = vec![self.end_of_utterance_id()];
        v.extend(self.eos_id);
        v
    }

    /// Processes prompts (each containing `<image>` placeholders) and their images.
    pub fn encode(
        &self,
        texts: &[String],
        images: &[Vec<RgbImage>],
        device: &Device,
    ) -> Result<Encoding> {
        if !images.is_empty() {
            if images.len() != texts.len() {
                return Err(Error::Input(format!(
                    "{} prompts but {} image lists",
                    texts.len(),
                    images.len()
                )));
            }
            for (i, (t, im)) in texts.iter().zip(images).enumerate() {
                let n = t.matches(IMAGE_TOKEN).count();
                if n != im.len() {
                    return Err(Error::Input(format!(
                        "prompt {i} has {n} {IMAGE_TOKEN} tokens but {} images",
                        im.len()
                    )));
                }
            }
        }
        let prompts: Vec<String> = texts
            .iter()
            .map(|t| expand_image_tokens(t, self.image_seq_len, self.image.do_image_splitting))
            .collect();
        let mut ids = Vec::new();
        for p in &prompts {
            let enc = self
                .tokenizer
                .encode(p.as_str(), true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            ids.push(enc.get_ids().to_vec());
        }
        let len = ids.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut mask = Vec::new();
        for r in &mut ids {
            let n = r.len();
            mask.push((0..len).map(|i| u32::from(i < n)).collect());
            r.resize(len, self.pad_id);
        }
        let pixels = if images.iter().any(|v| !v.is_empty()) {
            Some(preprocess_images(&self.image, images, device)?)
        } else {
            None
        };
        Ok(Encoding {
            input_ids: ids,
            attention_mask: mask,
            pixels,
            prompts,
        })
    }

    /// Decodes token ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}
