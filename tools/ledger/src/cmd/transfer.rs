//! `ledger export FILE` and `ledger import FILE`.

use crate::context::{now_rfc3339, Context};
use anyhow::{Context as _, Result};
use std::path::PathBuf;

/// Options of `ledger export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The file to write.
    file: PathBuf,
}

/// Options of `ledger import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The export file to read.
    file: PathBuf,
}

/// Runs `ledger export`.
pub fn export(ctx: &Context, a: ExportArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let s = ledger
        .export(&a.file, &now_rfc3339())
        .with_context(|| format!("export to {}", a.file.display()))?;
    report(ctx, "exported", &a.file, &s)
}

/// Runs `ledger import`.
pub fn import(ctx: &Context, a: ImportArgs) -> Result<()> {
    if ctx.remote.is_some() {
        anyhow::bail!("import loads a local home; it cannot write into the ledger at --nats");
    }
    if !a.file.is_file() {
        anyhow::bail!("{}: no such file", a.file.display());
    }
    let ledger = ctx.home.init()?;
    let s = ledger
        .import(&a.file, ctx.trust_root.as_deref())
        .with_context(|| format!("{}", a.file.display()))?;
    report(ctx, "imported", &a.file, &s)
}

fn report(
    ctx: &Context,
    verb: &str,
    file: &std::path::Path,
    s: &foundry_ledger::ExportSummary,
) -> Result<()> {
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "file": file,
            "events": s.events,
            "head_hash": s.head_hash,
            "file_sha256": s.file_sha256,
            "root": s.root,
            "root_trusted": ctx.trust_root.is_some(),
        }))
    } else {
        println!(
            "{verb} {} events ({}), head {}, file sha256 {}",
            s.events,
            file.display(),
            s.head_hash.short(),
            s.file_sha256.short()
        );
        crate::output::root_line(s.root.as_deref(), ctx.trust_root.is_some());
        Ok(())
    }
}
