//! Finding a pinned source's files again, for the runners that read them:
//! a local directory as recorded, or the hub snapshot of the pinned commit.

use std::path::PathBuf;

use foundry_events::{BaseModelPinned, DatasetPinned};

use crate::hub::{parse_source, snapshot, HubOptions, Kind, Source};
use crate::{DatasetError, DatasetPin, Result, Shard, SplitCounts};

impl HubOptions {
    /// Settings from the environment: `FOUNDRY_HF_CACHE` (else hf-hub's own
    /// `HF_HUB_CACHE` / `HF_HOME` rules) and `HF_HUB_OFFLINE=1`.
    pub fn from_env() -> Self {
        HubOptions {
            cache_dir: std::env::var_os("FOUNDRY_HF_CACHE").map(PathBuf::from),
            offline: std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1"),
            pin_root: std::env::var_os("FOUNDRY_PIN_ROOT").map(PathBuf::from),
        }
    }
}

/// Where a pinned source with content id `id` is staged under a pin root.
pub fn staged_dir(pin_root: &std::path::Path, dataset: bool, id: &str) -> PathBuf {
    pin_root
        .join(if dataset { "datasets" } else { "models" })
        .join(id)
}

fn locate(
    id: &str,
    source: &str,
    resolved_revision: Option<&str>,
    kind: Kind,
    opts: &HubOptions,
) -> Result<PathBuf> {
    if let Some(root) = &opts.pin_root {
        let dir = staged_dir(root, matches!(kind, Kind::Dataset), id);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DatasetError::Invalid(format!(
                "{}: the pinned source was not staged here (FOUNDRY_PIN_ROOT)",
                dir.display()
            )))
        };
    }
    match parse_source(source)? {
        Source::Local(dir) => {
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(DatasetError::Invalid(format!(
                    "{}: the pinned directory is not here",
                    dir.display()
                )))
            }
        }
        Source::Hub { org, name, .. } => {
            // The pinned commit, never the moving branch it was pinned from.
            let at = match resolved_revision {
                Some(sha) => format!("hf://{org}/{name}@{sha}"),
                None => source.to_string(),
            };
            Ok(snapshot(&at, kind, opts)?.0)
        }
    }
}

impl DatasetPin {
    /// The pin a `DatasetPinned` event recorded, with its files located
    /// again (nothing is re-hashed here; the reader verifies each shard as it
    /// reads it).
    pub fn from_event(ev: &DatasetPinned, opts: &HubOptions) -> Result<DatasetPin> {
        let root = locate(
            &ev.dataset_id,
            &ev.source,
            ev.resolved_revision.as_deref(),
            Kind::Dataset,
            opts,
        )?;
        Ok(DatasetPin {
            dataset_id: ev.dataset_id.clone(),
            source: ev.source.clone(),
            resolved_revision: ev.resolved_revision.clone(),
            root,
            shards: ev
                .shards
                .iter()
                .map(|s| Shard {
                    split: s.split.clone(),
                    path: s.path.clone(),
                    sha256: s.sha256.to_hex(),
                    bytes: s.bytes,
                    rows: s.rows,
                })
                .collect(),
            splits: ev
                .splits
                .iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        SplitCounts {
                            rows: s.rows,
                            by_doc_type: s.by_doc_type.clone(),
                            by_layout: s.by_layout.clone(),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// The local directory of a pinned base model (the caller re-hashes its files).
pub fn locate_model(ev: &BaseModelPinned, opts: &HubOptions) -> Result<PathBuf> {
    locate(
        &ev.model_id,
        &ev.source,
        ev.resolved_revision.as_deref(),
        Kind::Model,
        opts,
    )
}
