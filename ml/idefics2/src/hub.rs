//! Where a model comes from: a local Hugging Face directory, or the Hugging Face hub
//! (through `hf-hub`, at a pinned revision, optionally strictly from the local cache).

use std::path::{Path, PathBuf};

use hf_hub::{HFClientBuilder, HFError};

use crate::error::{Error, Result};

/// Files looked up besides the weights; missing ones are skipped.
pub const AUX_FILES: [&str; 6] = [
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// A model location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory in the Hugging Face layout.
    Local(PathBuf),
    /// A hub repository at a pinned revision.
    Hub {
        /// `owner/name`.
        repo_id: String,
        /// Commit sha (recommended) or branch/tag name.
        revision: String,
        /// Cache directory (default: `HF_HUB_CACHE` → `$HF_HOME/hub` → `~/.cache/huggingface/hub`).
        cache_dir: Option<PathBuf>,
        /// Never touch the network; resolve from the cache only.
        offline: bool,
    },
}

/// Resolves `source` to a local directory holding config.json, the safetensors
/// weights (single file or index + shards) and whatever processor files exist.
pub fn resolve(source: &ModelSource) -> Result<PathBuf> {
    match source {
        ModelSource::Local(dir) => local_with(dir, "config.json"),
        ModelSource::Hub { .. } => with_repo(source, |get, optional, hub_err| {
            let config = get("config.json").map_err(|e| hub_err("config.json", e))?;
            let dir = config
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Hub("config.json path has no parent".into()))?;
            if optional("model.safetensors")?.is_none() {
                let index = get("model.safetensors.index.json")
                    .map_err(|e| hub_err("model.safetensors(.index.json)", e))?;
                crate::weights::shard_files(&index, |f| get(f).map_err(|e| hub_err(f, e)))?;
            }
            for f in AUX_FILES {
                optional(f)?;
            }
            Ok(dir)
        }),
    }
}

/// Resolves `source` to a local directory holding a PEFT adapter: `adapter_config.json` and
/// `adapter_model.safetensors` (a hub repository's snapshot in the hf-hub cache, or a folder).
pub fn resolve_adapter(source: &ModelSource) -> Result<PathBuf> {
    match source {
        ModelSource::Local(dir) => local_with(dir, "adapter_config.json"),
        ModelSource::Hub { .. } => with_repo(source, |get, _, hub_err| {
            let config =
                get("adapter_config.json").map_err(|e| hub_err("adapter_config.json", e))?;
            get("adapter_model.safetensors")
                .map_err(|e| hub_err("adapter_model.safetensors", e))?;
            config
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Hub("adapter_config.json path has no parent".into()))
        }),
    }
}

/// A local folder, which must hold `file`.
fn local_with(dir: &Path, file: &str) -> Result<PathBuf> {
    if !dir.join(file).is_file() {
        return Err(Error::Config(format!("no {file} in {}", dir.display())));
    }
    Ok(dir.to_path_buf())
}

/// Fetches one file of a hub repository through the cache (or finds it there when offline).
type Get<'a> = &'a dyn Fn(&str) -> std::result::Result<PathBuf, HFError>;
/// Like [`Get`], `None` when the repository has no such file.
type Optional<'a> = &'a dyn Fn(&str) -> Result<Option<PathBuf>>;
/// Turns a failed fetch of a file into the one-line error naming the repository and file.
type HubErr<'a> = &'a dyn Fn(&str, HFError) -> Error;

/// Runs `f` with fetchers for the files of the hub repository `source` names.
fn with_repo<R>(
    source: &ModelSource,
    f: impl FnOnce(Get, Optional, HubErr) -> Result<R>,
) -> Result<R> {
    let ModelSource::Hub {
        repo_id,
        revision,
        cache_dir,
        offline,
    } = source
    else {
        return Err(Error::Hub("not a hub source".into()));
    };
    let (owner, name) = repo_id
        .split_once('/')
        .ok_or_else(|| Error::Hub(format!("repo id `{repo_id}` is not owner/name")))?;
    let mut builder = HFClientBuilder::new();
    if let Some(c) = cache_dir {
        builder = builder.cache_dir(c.clone());
    }
    let client = builder
        .build_sync()
        .map_err(|e| Error::Hub(e.to_string()))?;
    let repo = client.model(owner, name);
    let get = |file: &str| -> std::result::Result<PathBuf, HFError> {
        repo.download_file()
            .filename(file)
            .revision(revision.clone())
            .local_files_only(*offline)
            .send()
    };
    let hub_err = |file: &str, e: HFError| Error::Hub(format!("{repo_id}@{revision}: {file}: {e}"));
    let optional = |file: &str| -> Result<Option<PathBuf>> {
        match get(file) {
            Ok(p) => Ok(Some(p)),
            Err(HFError::EntryNotFound { .. }) | Err(HFError::LocalEntryNotFound { .. }) => {
                Ok(None)
            }
            Err(e) => Err(hub_err(file, e)),
        }
    };
    f(&get, &optional, &hub_err)
}
