//! Checkpoints as files and as content: the content id over a checkpoint's
//! file list, committing a checkpoint directory's files to the artifact
//! store, and materializing a committed checkpoint's directory on any
//! machine (missing files fetched through the ledger client, every file
//! checked against its hash).

use std::path::{Path, PathBuf};

use foundry_events::{CheckpointCommitted, Event, FileDigest};
use sha2::{Digest, Sha256};

use crate::host::RunnerContext;
use crate::{Result, RunnerError};

/// The content id of a checkpoint: sha256 over its sorted file list
/// (`path sha256 bytes` lines).
pub fn checkpoint_id(files: &[FileDigest]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .map(|f| format!("{} {} {}\n", f.path, f.sha256.to_hex(), f.bytes))
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
    }
    hex_of(&h.finalize())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes the files of a checkpoint directory (recursively, sorted), storing
/// each in the artifact store so `ledger verify --artifacts` can re-check it.
pub(crate) fn commit_files(ctx: &RunnerContext, dir: &Path) -> Result<Vec<FileDigest>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| RunnerError::io(&d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| RunnerError::io(&d, e))?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let (sha256, bytes) = ctx.home.artifacts().put_file(&p)?;
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                files.push(FileDigest {
                    path: rel,
                    sha256,
                    bytes,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The directory of a committed checkpoint (its `location`, relative to the
/// home root unless absolute), with every missing or changed file put back
/// from the artifact store (verified by hash): checkpoints pruned by
/// `keep_last` or lost can still be resumed, evaluated, merged or served.
pub fn checkpoint_dir(
    home: &foundry_ledger::Home,
    checkpoint_id: &str,
    location: &str,
    files: &[FileDigest],
) -> Result<PathBuf> {
    let loc = PathBuf::from(location);
    let dir = if loc.is_absolute() {
        loc
    } else {
        home.root().join(loc)
    };
    let store = home.artifacts();
    for f in files {
        let dst = dir.join(&f.path);
        if dst.is_file() {
            let (have, _) = foundry_ledger::hash_file(&dst)?;
            if have == f.sha256 {
                continue;
            }
        }
        if !store.check(&f.sha256)? {
            return Err(RunnerError::Missing(format!(
                "checkpoint {checkpoint_id} file {} ({}) is neither in {} nor in the artifact store",
                f.path,
                f.sha256.short(),
                dir.display()
            )));
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RunnerError::io(parent, e))?;
        }
        std::fs::copy(store.path_of(&f.sha256), &dst).map_err(|e| RunnerError::io(&dst, e))?;
    }
    Ok(dir)
}

/// [`checkpoint_dir`] of a CheckpointCommitted, for this runner's home,
/// after fetching the files its artifact store lacks through the ledger
/// client (a checkpoint trained on another machine).
pub(crate) async fn materialize(ctx: &RunnerContext, c: &CheckpointCommitted) -> Result<PathBuf> {
    let named = Event::CheckpointCommitted(c.clone()).stored_artifacts();
    crate::fetch_artifacts(ctx.client.as_ref(), &ctx.home, &named).await?;
    checkpoint_dir(&ctx.home, &c.checkpoint_id, &c.location, &c.files)
}

/// The location string of a checkpoint directory: relative to the home when
/// inside it.
pub(crate) fn location_of(ctx: &RunnerContext, dir: &Path) -> String {
    dir.strip_prefix(ctx.home.root())
        .unwrap_or(dir)
        .to_string_lossy()
        .replace('\\', "/")
}
