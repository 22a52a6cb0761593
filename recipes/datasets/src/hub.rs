//! `hf://ORG/NAME@REVISION` sources through hf-hub (the revision is resolved
//! to a commit sha; offline, strictly from the local HF cache).

use std::path::PathBuf;

use hf_hub::HFClientBuilder;

use crate::{DatasetError, Result};

/// Where data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local directory.
    Local(PathBuf),
    /// A hub repository at a revision.
    Hub {
        /// Owner.
        org: String,
        /// Name.
        name: String,
        /// Branch, tag or commit sha.
        revision: String,
    },
}

/// Hub settings.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// HF cache dir (default: hf-hub's `HF_HUB_CACHE` / `HF_HOME` rules).
    pub cache_dir: Option<PathBuf>,
    /// Never use the network (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Where pinned sources were staged on this machine, if not where they
    /// were pinned (a Modal container mounts them from a Volume):
    /// `<root>/datasets/<id>` and `<root>/models/<id>`. Content is still
    /// verified against the pin. Env `FOUNDRY_PIN_ROOT`.
    pub pin_root: Option<PathBuf>,
}

/// Parses a source string.
pub fn parse_source(s: &str) -> Result<Source> {
    let Some(rest) = s.strip_prefix("hf://") else {
        return Ok(Source::Local(PathBuf::from(s)));
    };
    let bad = || DatasetError::Invalid(format!("{s:?} is not hf://ORG/NAME@REVISION"));
    let (repo, revision) = rest.split_once('@').ok_or_else(bad)?;
    let (org, name) = repo.split_once('/').ok_or_else(bad)?;
    if org.is_empty() || name.is_empty() || revision.is_empty() || name.contains('/') {
        return Err(bad());
    }
    Ok(Source::Hub {
        org: org.into(),
        name: name.into(),
        revision: revision.into(),
    })
}

/// Repository kind.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Dataset,
    Model,
}

/// Downloads (or finds in the cache) the snapshot of `source` and returns its
/// directory and commit sha.
pub(crate) fn snapshot(source: &str, kind: Kind, opts: &HubOptions) -> Result<(PathBuf, String)> {
    let Source::Hub {
        org,
        name,
        revision,
    } = parse_source(source)?
    else {
        return Err(DatasetError::Invalid(format!(
            "{source:?} is not an hf:// source"
        )));
    };
    let offline = opts.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1");
    let hub = |e: hf_hub::HFError| DatasetError::Invalid(format!("{source}: {e}"));
    let mut builder = HFClientBuilder::new();
    if let Some(c) = &opts.cache_dir {
        builder = builder.cache_dir(c.clone());
    }
    let client = builder.build_sync().map_err(hub)?;
    let is_sha = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let fetch = |local_only: bool| match kind {
        Kind::Dataset => client
            .dataset(org.as_str(), name.as_str())
            .snapshot_download()
            .revision(revision.clone())
            .local_files_only(local_only)
            .send(),
        Kind::Model => client
            .model(org.as_str(), name.as_str())
            .snapshot_download()
            .revision(revision.clone())
            .local_files_only(local_only)
            .send(),
    };
    let dir = if offline {
        fetch(true).map_err(hub)?
    } else if is_sha {
        match fetch(true) {
            Ok(d) => d,
            Err(_) => fetch(false).map_err(hub)?,
        }
    } else {
        fetch(false).map_err(hub)?
    };
    let sha = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| DatasetError::Invalid(format!("{source}: snapshot dir has no name")))?;
    Ok((dir, sha))
}
