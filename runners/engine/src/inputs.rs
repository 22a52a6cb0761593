//! Resolving a job's pinned inputs to files, re-verified by content.

use std::path::{Path, PathBuf};

use candle_core::Device;
use foundry_datasets::StreamReader;
use foundry_events::{BaseModelPinned, DatasetPinned, DeviceInfo};
use foundry_recipes::Recipe;

use crate::{EngineError, Result};

/// The typed recipe of a resolved config recorded in RecipeDeclared.
pub fn recipe_of(config: &serde_json::Value) -> Result<Recipe> {
    serde_json::from_value(config.clone())
        .map_err(|e| EngineError::Invalid(format!("recorded recipe config is not a recipe: {e}")))
}

/// The local directory of a pinned base model: the source itself when it is
/// a directory, the hub snapshot of its resolved revision otherwise.
pub fn model_dir(model: &BaseModelPinned) -> Result<PathBuf> {
    let opts = foundry_datasets::HubOptions::from_env();
    foundry_datasets::locate_model(model, &opts)
        .map_err(|e| EngineError::Invalid(format!("base model {}: {e}", short(&model.model_id))))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Re-hashes every file the pin lists; a missing or changed file is an error.
pub fn verify_model(dir: &Path, model: &BaseModelPinned) -> Result<()> {
    if model.files.is_empty() {
        return Err(EngineError::Invalid(format!(
            "base model {} was pinned with no files",
            short(&model.model_id)
        )));
    }
    for f in &model.files {
        let p = dir.join(&f.path);
        let (sha, _) = foundry_ledger::hash_file(&p).map_err(|e| EngineError::Changed {
            what: format!("base model {}", short(&model.model_id)),
            detail: e.to_string(),
        })?;
        if sha != f.sha256 {
            return Err(EngineError::Changed {
                what: format!("base model {}", short(&model.model_id)),
                detail: format!(
                    "{} hashes to {}, pinned {}",
                    p.display(),
                    sha.short(),
                    f.sha256.short()
                ),
            });
        }
    }
    Ok(())
}

/// The compute device a recipe's `backend.device` names, failing fast when
/// it is not available in this build or on this machine.
pub fn select_device(name: &str) -> Result<(Device, DeviceInfo)> {
    match name {
        "cpu" => Ok((
            Device::Cpu,
            DeviceInfo {
                kind: "cpu".into(),
                name: cpu_name(),
                dtype: "f32".into(),
            },
        )),
        other => Err(EngineError::Invalid(format!(
            "backend.device = {other:?}: this build trains on the CPU only (no CUDA support compiled in)"
        ))),
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// One dataset row as the engines use it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Encoded image bytes.
    pub image: Vec<u8>,
    /// Document type.
    pub doc_type: String,
    /// Layout family.
    pub layout: String,
    /// Ground-truth JSON.
    pub target: serde_json::Value,
}

/// The reader of `split` of a pinned dataset in its pinned reading order
/// (seed 0, one pass): each shard checked against its pin before its first
/// row is used, each row read alone and re-verified.
pub fn split_reader(dataset: &DatasetPinned, split: &str) -> Result<StreamReader> {
    let opts = foundry_datasets::HubOptions::from_env();
    let pin = foundry_datasets::DatasetPin::from_event(dataset, &opts).map_err(|e| {
        EngineError::Invalid(format!("dataset {}: {e}", short(&dataset.dataset_id)))
    })?;
    StreamReader::open(
        &pin,
        split,
        0,
        Some(1),
        foundry_datasets::Position::default(),
    )
    .map_err(|e| EngineError::Invalid(e.to_string()))
}

/// A row of a dataset, or why it no longer reads as pinned.
pub(crate) fn row_of(
    dataset: &DatasetPinned,
    ex: foundry_datasets::Result<foundry_datasets::Example>,
) -> Result<Row> {
    let ex = ex.map_err(|e| EngineError::Changed {
        what: format!("dataset {}", short(&dataset.dataset_id)),
        detail: e.to_string(),
    })?;
    Ok(Row {
        image: ex.image,
        doc_type: ex.doc_type,
        layout: ex.layout,
        target: ex.target,
    })
}

/// The rows of `split` in their pinned reading order, read one at a time as
/// the iterator is advanced (at most `limit`): memory holds one row, and
/// only the shards the rows come from are read.
pub fn split_rows<'d>(
    dataset: &'d DatasetPinned,
    split: &str,
    limit: Option<usize>,
) -> Result<impl Iterator<Item = Result<Row>> + 'd> {
    let reader = split_reader(dataset, split)?;
    Ok(reader
        .take(limit.unwrap_or(usize::MAX))
        .map(move |ex| row_of(dataset, ex)))
}

/// The answer a model is taught to give for a target: compact JSON with
/// keys in sorted order, so the same target is always the same text.
pub fn answer_text(target: &serde_json::Value) -> String {
    serde_json::to_string(target).unwrap_or_default()
}
