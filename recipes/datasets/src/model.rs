//! Base model pinning: config, tokenizer, processor and weight files.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hub::{self, HubOptions, Source};
use crate::{
    denied_file, digest_from_hex, io, parse_source, DatasetError, Denied, Jail, Result,
    MAX_META_BYTES,
};

/// Non-weight files pinned when present.
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "model.safetensors.index.json",
];

/// One pinned file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the model dir.
    pub path: String,
    /// sha256 hex.
    pub sha256: String,
    /// Size.
    pub bytes: u64,
}

/// A pinned base model: plain data, convertible to `BaseModelPinned`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPin {
    /// sha256 over `path\0sha256\0bytes\n` of every file, sorted by path.
    pub model_id: String,
    /// Source as given.
    pub source: String,
    /// Commit sha of a hub revision.
    pub resolved_revision: Option<String>,
    /// `architectures[0]` (or `model_type`) of config.json.
    pub architecture: String,
    /// Files sorted by path.
    pub files: Vec<FileEntry>,
    /// Parameter count from the safetensors headers (None when quantized).
    pub parameters: Option<u64>,
    /// `none`, `bnb-nf4` or the config's quant_method.
    pub quantization: String,
}

impl ModelPin {
    /// The `BaseModelPinned` payload.
    pub fn to_event(&self) -> foundry_events::BaseModelPinned {
        foundry_events::BaseModelPinned {
            model_id: self.model_id.clone(),
            source: self.source.clone(),
            resolved_revision: self.resolved_revision.clone(),
            architecture: self.architecture.clone(),
            files: self
                .files
                .iter()
                .map(|f| foundry_events::FileDigest {
                    path: f.path.clone(),
                    sha256: digest_from_hex(&f.sha256),
                    bytes: f.bytes,
                })
                .collect(),
            parameters: self.parameters,
            quantization: self.quantization.clone(),
        }
    }
}

/// Opens a model file through the jail, or an error naming it.
fn open(jail: &Jail, name: &str) -> Result<std::fs::File> {
    jail.file(name)
        .map_err(|d| denied_file(jail.root(), name, d))
}

/// Hashes a model file by streaming it (weights can be tens of GB).
fn hash_file(jail: &Jail, name: &str) -> Result<(String, u64)> {
    let mut f = open(jail, name)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| io(&jail.root().join(name), e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Largest safetensors header read (its JSON).
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// Parameters in a safetensors file, from its header alone.
fn safetensors_params(jail: &Jail, name: &str) -> Result<u64> {
    let path = jail.root().join(name);
    let bad = |r: &str| DatasetError::Invalid(format!("{}: {r}", path.display()));
    let mut f = open(jail, name)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad("shorter than a safetensors header"))?;
    let len = u64::from_le_bytes(n);
    if len > MAX_SAFETENSORS_HEADER {
        return Err(bad(&format!(
            "a {len}-byte header is more than {MAX_SAFETENSORS_HEADER}"
        )));
    }
    let mut header = Vec::with_capacity(len as usize);
    f.take(len)
        .read_to_end(&mut header)
        .map_err(|e| bad(&e.to_string()))?;
    if header.len() as u64 != len {
        return Err(bad("truncated header"));
    }
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    let mut total = 0u64;
    for (k, t) in v.as_object().into_iter().flatten() {
        if k == "__metadata__" {
            continue;
        }
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("tensor without shape"))?;
        total += shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
    }
    Ok(total)
}

/// Pins the model in `dir` (given as `source`). Every file is read through
/// a [`Jail`] at `dir`: a weight shard the index names outside the
/// directory, or a file linked to somewhere outside, is refused.
pub fn pin_model_dir(
    dir: &Path,
    source: &str,
    resolved_revision: Option<String>,
) -> Result<ModelPin> {
    let jail = Jail::open(dir).map_err(|e| io(dir, e))?;
    let read_meta = |name: &str| {
        jail.read(name, MAX_META_BYTES)
            .map_err(|d| denied_file(dir, name, d))
    };
    let cfg_text = read_meta("config.json")?;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg_text).map_err(|e| {
        DatasetError::Invalid(format!("{}: {e}", dir.join("config.json").display()))
    })?;
    let mut names: Vec<String> = MODEL_FILES
        .iter()
        .filter(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
        .map(|f| f.to_string())
        .collect();
    let index = "model.safetensors.index.json";
    let mut weights: Vec<String> = Vec::new();
    if std::fs::symlink_metadata(dir.join(index)).is_ok() {
        let text = read_meta(index)?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| DatasetError::Invalid(format!("{}: {e}", dir.join(index).display())))?;
        for f in v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .into_iter()
            .flatten()
            .filter_map(|(_, f)| f.as_str())
        {
            if !weights.iter().any(|w| w == f) {
                weights.push(f.to_string());
            }
        }
        for w in &weights {
            match jail.file(w) {
                Ok(_) => {}
                Err(Denied::NotFound) => {
                    return Err(DatasetError::Invalid(format!(
                        "{}: shard {w} named in {index} is missing",
                        dir.display()
                    )))
                }
                Err(d) => return Err(denied_file(dir, w, d)),
            }
        }
    } else if jail.is_file("model.safetensors") {
        weights.push("model.safetensors".into());
    }
    if weights.is_empty() {
        return Err(DatasetError::Invalid(format!(
            "{}: no weights (model.safetensors or model.safetensors.index.json)",
            dir.display()
        )));
    }
    let quantization = match cfg.get("quantization_config") {
        None => "none".to_string(),
        Some(q) => {
            let method = q
                .get("quant_method")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown");
            let nf4 = q.get("bnb_4bit_quant_type").and_then(|m| m.as_str()) == Some("nf4");
            if method == "bitsandbytes" && nf4 {
                "bnb-nf4".into()
            } else {
                method.to_string()
            }
        }
    };
    let parameters = if quantization == "none" {
        let mut total = 0;
        for w in &weights {
            total += safetensors_params(&jail, w)?;
        }
        Some(total)
    } else {
        None
    };
    names.extend(weights);
    names.sort();
    let mut files = Vec::new();
    let mut h = Sha256::new();
    for n in names {
        let (sha256, bytes) = hash_file(&jail, &n)?;
        h.update(format!("{n}\0{sha256}\0{bytes}\n").as_bytes());
        files.push(FileEntry {
            path: n,
            sha256,
            bytes,
        });
    }
    let architecture = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| cfg.get("model_type").and_then(|m| m.as_str()))
        .unwrap_or("unknown")
        .to_string();
    Ok(ModelPin {
        model_id: hex::encode(h.finalize()),
        source: source.to_string(),
        resolved_revision,
        architecture,
        files,
        parameters,
        quantization,
    })
}

/// Pins `source`: a local directory or `hf://ORG/NAME@REVISION`.
pub fn pin_model(source: &str, opts: &HubOptions) -> Result<ModelPin> {
    match parse_source(source)? {
        Source::Local(dir) => pin_model_dir(&dir, source, None),
        Source::Hub { .. } => {
            let (dir, sha) = hub::snapshot(source, hub::Kind::Model, opts)?;
            pin_model_dir(&dir, source, Some(sha))
        }
    }
}

/// Re-hashes every pinned file under `dir` (through a jail: the pinned
/// names are input too); errors on the first mismatch.
pub fn verify_model(dir: &Path, pin: &ModelPin) -> Result<()> {
    let jail = Jail::open(dir).map_err(|e| io(dir, e))?;
    for f in &pin.files {
        let (sha, _) = hash_file(&jail, &f.path)?;
        if sha != f.sha256 {
            return Err(DatasetError::Changed {
                shard: f.path.clone(),
                expected: f.sha256.clone(),
                actual: sha,
            });
        }
    }
    Ok(())
}
