//! Checkpoint files: safetensors with PEFT's metadata, sha256 of every file, retention.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A file of a checkpoint with its content hash, ready for a `CheckpointCommitted` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileHash {
    /// Path relative to the checkpoint directory.
    pub path: String,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Writes `tensors` (in the given order) with metadata `{"format": "pt"}` as PEFT does.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut md = std::collections::HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &Tensor)> = contiguous.iter().map(|(k, t)| (k.as_str(), t)).collect();
    safetensors::serialize_to_file(views, Some(md), path)
        .map_err(|e| Error::Checkpoint(format!("writing {}: {e}", path.display())))
}

/// sha256 and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Hashes every regular file directly inside `dir`, sorted by name.
pub fn hash_dir(dir: &Path) -> Result<Vec<FileHash>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let (sha256, bytes) = hash_file(p)?;
            Ok(FileHash {
                path: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256,
                bytes,
            })
        })
        .collect()
}

/// The checkpoint directories (`checkpoint-<step>`) under `root`, sorted by step.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` checkpoint directories under `root`; returns the removed ones.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let all = list_checkpoints(root)?;
    let n = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, p) in all.into_iter().take(n) {
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        removed.push(p);
    }
    Ok(removed)
}
