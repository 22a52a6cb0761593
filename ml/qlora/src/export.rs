//! Exporting models for other tools.
//!
//! * [`save_bnb_dir`]: the hub's `*-bnb-4bit` folder, as transformers + bitsandbytes save a model
//!   loaded with `load_in_4bit` (NF4, double quantization): config.json with its
//!   `quantization_config`, one `model.safetensors` with each NF4 linear as `X.weight` (packed
//!   u8), `X.weight.absmax`, `X.weight.quant_map`, `X.weight.nested_absmax`,
//!   `X.weight.nested_quant_map`, `X.weight.quant_state.bitsandbytes__nf4`, every other tensor as
//!   is, and the tokenizer / processor files.
//! * [`merge_lora`] folds attached LoRA adapters into their base weights
//!   (`W' = dequant(W) + scale · B·A`), and [`save_dense_dir`] writes a plain (f32 or bf16) folder
//!   without `quantization_config` that candle and transformers load as an ordinary model.
//! * [`merge_adapter_dir`] does both from a base folder (dense or bnb-4bit) and a PEFT adapter.
//!
//! Tensors that are not linear weights (embeddings, norms, biases, the vision patch embedding,
//! the perceiver latents) are frozen during QLoRA, so they are copied from the source folder the
//! model was loaded from; the linear weights come from the model itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use foundry_idefics2::linear::LinearVisitor;
use foundry_idefics2::Idefics2;
use foundry_kernels::BaseWeight;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{hash_dir, write_safetensors, FileHash};
use crate::nf4::{Absmax, Nf4Weight};
use crate::{Error, Result};

/// Tokenizer and processor files copied from the source folder when present.
pub const TOKENIZER_FILES: [&str; 11] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// The folder written.
    pub dir: PathBuf,
    /// Linears written in NF4.
    pub nf4_linears: usize,
    /// Linears written dense.
    pub dense_linears: usize,
    /// Tensors in model.safetensors.
    pub tensors: usize,
    /// Every file of the folder with its sha256 and size.
    pub files: Vec<FileHash>,
}

/// The output layout of [`write_dir`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    Bnb,
    Dense(DType),
}

/// The dtype name transformers writes in config.json.
fn dtype_name(d: DType) -> Result<&'static str> {
    match d {
        DType::F32 => Ok("float32"),
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        other => Err(Error::Quant(format!(
            "cannot export weights as {other:?}: use f32, bf16 or f16"
        ))),
    }
}

fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("config.json");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&s).map_err(|e| Error::Json {
        what: p.display().to_string(),
        message: e.to_string(),
    })
}

/// The checkpoint dtype a config.json declares (`dtype`, or `torch_dtype` before transformers 5).
fn config_dtype(cfg: &serde_json::Value) -> Result<DType> {
    let name = cfg
        .get("dtype")
        .or_else(|| cfg.get("torch_dtype"))
        .and_then(|v| v.as_str())
        .unwrap_or("float32");
    foundry_idefics2::weights::parse_dtype(name)
        .ok_or_else(|| Error::Quant(format!("config.json: unsupported dtype `{name}`")))
}

fn source_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for f in foundry_idefics2::weights::safetensors_files(dir)? {
        let t = candle_core::safetensors::load(&f, &Device::Cpu)
            .map_err(|e| Error::Quant(format!("{}: {e}", f.display())))?;
        all.extend(t);
    }
    Ok(all)
}

/// Whether a config.json declares a bitsandbytes 4-bit checkpoint.
pub fn is_bnb_dir(dir: &Path) -> Result<bool> {
    Ok(read_config(dir)?
        .get("quantization_config")
        .is_some_and(|q| !q.is_null()))
}

/// Loads a model folder for export or merging: a `*-bnb-4bit` folder through
/// [`crate::load_bnb_dir`] (its linears stay NF4), any other through the strict dense loader.
pub fn load_model_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Idefics2> {
    if is_bnb_dir(dir)? {
        Ok(crate::load_bnb_dir(dir, dtype, device)?.0)
    } else {
        Ok(Idefics2::load_dir(dir, dtype, device)?)
    }
}

/// transformers' `quantization_config` for NF4 with or without double quantization (as
/// transformers 5 writes it for `BitsAndBytesConfig(load_in_4bit=True, ...)`).
fn bnb_quantization_config(
    double_quant: bool,
    compute: DType,
    skip: Option<Vec<String>>,
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": dtype_name(compute)?,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": skip,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    }))
}

/// Sets the dtype fields of a config (top level and sub-configs) to `name`.
fn set_config_dtype(cfg: &mut serde_json::Value, name: &str) {
    fn set(o: &mut serde_json::Map<String, serde_json::Value>, name: &str) {
        for k in ["dtype", "torch_dtype"] {
            if o.contains_key(k) {
                o.insert(k.into(), name.into());
            }
        }
    }
    if let Some(o) = cfg.as_object_mut() {
        set(o, name);
        if !o.contains_key("dtype") && !o.contains_key("torch_dtype") {
            o.insert("dtype".into(), name.into());
        }
        // transformers 5 writes the dtype into every sub-config too.
        for sub in ["vision_config", "perceiver_config", "text_config"] {
            if let Some(s) = o.get_mut(sub).and_then(|v| v.as_object_mut()) {
                set(s, name);
                if !s.contains_key("dtype") && !s.contains_key("torch_dtype") {
                    s.insert("dtype".into(), name.into());
                }
            }
        }
    }
}

/// Writes `model` as a `*-bnb-4bit` folder at `out` (which must not exist or be empty).
/// `source_dir` is the folder the model was loaded from (dense or bnb-4bit): its non-linear
/// tensors, config.json and tokenizer files are reused. NF4 linears are written from their
/// stored bytes (no re-quantization); a dense `lm_head` stays dense as transformers keeps it;
/// any other dense linear is listed in `llm_int8_skip_modules`. Attached LoRA adapters are
/// refused (save them with [`crate::lora::save_adapter`], or merge and use [`save_dense_dir`]).
pub fn save_bnb_dir(model: &mut Idefics2, source_dir: &Path, out: &Path) -> Result<ExportInfo> {
    write_dir(model, source_dir, out, Layout::Bnb)
}

/// Writes `model` as a plain folder at `out` with every floating tensor in `dtype` (f32, bf16 or
/// f16): NF4 linears dequantized, config.json without `quantization_config` and with the new
/// dtype, tokenizer files copied from `source_dir` (the folder the model was loaded from).
/// Attached LoRA adapters are refused: fold them in with [`merge_lora`] first.
pub fn save_dense_dir(
    model: &mut Idefics2,
    source_dir: &Path,
    out: &Path,
    dtype: DType,
) -> Result<ExportInfo> {
    dtype_name(dtype)?;
    write_dir(model, source_dir, out, Layout::Dense(dtype))
}

/// Folds every attached LoRA adapter into its linear's base weight, in f32:
/// `W' = dequant(W) + scale · B·A` (PEFT's `merge_and_unload` for `fan_in_fan_out = false`), and
/// detaches it. The merged base is dense in the model's compute dtype. Returns how many linears
/// were merged.
pub fn merge_lora(model: &mut dyn LinearVisitor) -> Result<usize> {
    let mut n = 0;
    model.visit_linears(&mut |l| {
        let Some(lora) = l.lora().cloned() else {
            return Ok(());
        };
        let (dtype, device) = (lora.a.dtype(), lora.a.device().clone());
        let w = l.dense_weight(DType::F32, &device)?;
        let delta = lora
            .b
            .to_dtype(DType::F32)?
            .matmul(&lora.a.to_dtype(DType::F32)?)?
            .affine(lora.scale, 0.0)?;
        let merged = (w + delta)?;
        let target = match l.base() {
            BaseWeight::Dense(t) => t.dtype(),
            BaseWeight::Frozen(_) => dtype,
        };
        l.set_base(BaseWeight::Dense(merged.to_dtype(target)?.detach()))?;
        l.detach_lora();
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// What a merge folds the adapter into and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOnto<'a> {
    /// The base as loaded (dense weights, or a bnb folder's 4-bit ones dequantized).
    Loaded,
    /// The base with the linears matching this pattern quantized to NF4 first, as training
    /// quantized them: the weights the adapter was trained against.
    Quantized(&'a str),
}

/// Merges the PEFT adapter in `adapter_dir` into the base model in `base_dir` (dense or
/// `*-bnb-4bit`), onto `onto`, and writes the result at `out`: a plain `dtype` folder, or with
/// `bnb_4bit` the linears of `onto`'s pattern quantized back to NF4 in the bnb-4bit layout.
/// Returns what was written and how many linears were merged.
pub fn merge_adapter_dir(
    base_dir: &Path,
    adapter_dir: &Path,
    out: &Path,
    dtype: DType,
    onto: MergeOnto,
    bnb_4bit: bool,
) -> Result<(ExportInfo, usize)> {
    dtype_name(dtype)?;
    let mut model = load_model_dir(base_dir, DType::F32, &Device::Cpu)?;
    if let MergeOnto::Quantized(pattern) = onto {
        crate::quantize_model(&mut model, pattern)?;
    }
    crate::lora::load_adapter_into(&mut model, adapter_dir)?;
    let n = merge_lora(&mut model)?;
    let info = if bnb_4bit {
        let MergeOnto::Quantized(pattern) = onto else {
            return Err(Error::Quant(
                "a bnb-4bit merge needs the linears to quantize (the run's recipe quantizes none)"
                    .into(),
            ));
        };
        crate::quantize_model(&mut model, pattern)?;
        save_bnb_dir(&mut model, base_dir, out)?
    } else {
        save_dense_dir(&mut model, base_dir, out, dtype)?
    };
    Ok((info, n))
}

fn is_linear_weight_key(key: &str, linears: &HashSet<String>) -> bool {
    let base = match key.find(".weight") {
        Some(i) => &key[..i],
        None => return false,
    };
    let rest = &key[base.len()..];
    (rest == ".weight" || rest.starts_with(".weight.")) && linears.contains(base)
}

fn write_dir(
    model: &mut Idefics2,
    source_dir: &Path,
    out: &Path,
    layout: Layout,
) -> Result<ExportInfo> {
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
        if non_empty {
            return Err(Error::Checkpoint(format!(
                "{}: the output folder exists and is not empty",
                out.display()
            )));
        }
    }
    let mut cfg = read_config(source_dir)?;
    let src_dtype = config_dtype(&cfg)?;
    let src = source_tensors(source_dir)?;
    let compute = model.dtype();
    let tied_embed = model.text.embed_tokens.id();
    let lm_head_in_source = src.contains_key("lm_head.weight");

    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut linears = HashSet::new();
    let (mut nf4, mut dense) = (0usize, 0usize);
    let mut double: HashSet<bool> = HashSet::new();
    let mut skip: Vec<String> = Vec::new();
    let mut untie = false;
    let mut failure: Option<Error> = None;
    model.visit_linears(&mut |l| {
        let name = l.name().to_string();
        linears.insert(name.clone());
        if l.lora().is_some() {
            failure = Some(Error::Lora(format!(
                "{name} has an attached LoRA adapter: merge it (merge_lora) or detach it before export"
            )));
            return Err(candle_core::Error::Msg("export refused".into()));
        }
        if name == "lm_head" && !lm_head_in_source {
            // Tied to the embedding: written only if a merge gave it its own weight.
            match l.base() {
                BaseWeight::Dense(t) if t.id() == tied_embed => return Ok(()),
                _ => untie = true,
            }
        }
        let key = format!("{name}.weight");
        match (layout, l.base()) {
            (Layout::Bnb, BaseWeight::Frozen(f)) => {
                let Some(w) = f.as_any().and_then(|a| a.downcast_ref::<Nf4Weight>()) else {
                    failure = Some(Error::Quant(format!(
                        "{name}: only NF4 frozen weights can be written in the bnb-4bit layout"
                    )));
                    return Err(candle_core::Error::Msg("export refused".into()));
                };
                double.insert(matches!(w.tensor.absmax, Absmax::Double { .. }));
                let parts = w
                    .tensor
                    .to_bnb(&name)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                tensors.extend(parts);
                nf4 += 1;
            }
            (Layout::Bnb, BaseWeight::Dense(t)) => {
                let dt = src.get(&key).map(|s| s.dtype()).unwrap_or(src_dtype);
                tensors.push((key, t.to_dtype(dt)?.to_device(&Device::Cpu)?));
                if name != "lm_head" {
                    skip.push(name);
                }
                dense += 1;
            }
            (Layout::Dense(dt), _) => {
                let w = l.dense_weight(DType::F32, &Device::Cpu)?;
                tensors.push((key, w.to_dtype(dt)?.to_device(&Device::Cpu)?));
                dense += 1;
            }
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(Error::Candle(e)))?;
    if double.len() > 1 {
        return Err(Error::Quant(
            "the NF4 linears mix double-quantized and plain absmax; transformers needs one setting"
                .into(),
        ));
    }
    for (k, t) in &src {
        if is_linear_weight_key(k, &linears) {
            continue;
        }
        let t = match layout {
            Layout::Dense(dt) if t.dtype().is_float() => t.to_dtype(dt)?,
            _ => t.clone(),
        };
        tensors.push((k.clone(), t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| Error::Quant("config.json is not an object".into()))?;
    if untie {
        obj.insert("tie_word_embeddings".into(), false.into());
        if let Some(t) = obj.get_mut("text_config").and_then(|v| v.as_object_mut()) {
            if t.contains_key("tie_word_embeddings") {
                t.insert("tie_word_embeddings".into(), false.into());
            }
        }
    }
    match layout {
        Layout::Bnb => {
            if nf4 == 0 {
                return Err(Error::Quant(
                    "the model has no NF4 linear to write in the bnb-4bit layout (quantize it first)"
                        .into(),
                ));
            }
            let skip = (!skip.is_empty()).then(|| {
                let mut s = skip;
                s.push("lm_head".into());
                s
            });
            let q = bnb_quantization_config(double.contains(&true), compute, skip)?;
            obj.insert("quantization_config".into(), q);
            set_config_dtype(&mut cfg, dtype_name(src_dtype)?);
        }
        Layout::Dense(dt) => {
            obj.remove("quantization_config");
            set_config_dtype(&mut cfg, dtype_name(dt)?);
        }
    }

    // Everything goes to a sibling temporary folder, renamed into place at the end.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let stem = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Checkpoint(format!("{}: not a folder path", out.display())))?;
    let tmp = parent.join(format!(".{stem}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<()> {
        write_safetensors(&tmp.join("model.safetensors"), &tensors)?;
        let js = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Json {
            what: "config.json".into(),
            message: e.to_string(),
        })?;
        let cp = tmp.join("config.json");
        std::fs::write(&cp, js + "\n").map_err(|e| Error::io(&cp, e))?;
        for f in TOKENIZER_FILES {
            let from = source_dir.join(f);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(f)).map_err(|e| Error::io(&from, e))?;
            }
        }
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ExportInfo {
        dir: out.to_path_buf(),
        nf4_linears: nf4,
        dense_linears: dense,
        tensors: tensors.len(),
        files: hash_dir(out)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weight_keys_are_recognised() {
        let l: HashSet<String> = ["model.a.q_proj".to_string(), "lm_head".into()].into();
        assert!(is_linear_weight_key("model.a.q_proj.weight", &l));
        assert!(is_linear_weight_key("model.a.q_proj.weight.absmax", &l));
        assert!(is_linear_weight_key(
            "model.a.q_proj.weight.quant_state.bitsandbytes__nf4",
            &l
        ));
        assert!(is_linear_weight_key("lm_head.weight", &l));
        assert!(!is_linear_weight_key("model.a.q_proj.bias", &l));
        assert!(!is_linear_weight_key("model.a.norm.weight", &l));
        assert!(!is_linear_weight_key("model.embed_tokens.weight", &l));
    }

    #[test]
    fn config_dtype_is_rewritten_everywhere() {
        let mut c = serde_json::json!({
            "torch_dtype": "float32",
            "text_config": {"dtype": "float32"},
            "vision_config": {}
        });
        set_config_dtype(&mut c, "bfloat16");
        assert_eq!(c["torch_dtype"], "bfloat16");
        assert_eq!(c["text_config"]["dtype"], "bfloat16");
        assert_eq!(c["vision_config"]["dtype"], "bfloat16");
        assert_eq!(config_dtype(&c).unwrap(), DType::BF16);
        assert!(dtype_name(DType::U8).is_err());
    }
}
