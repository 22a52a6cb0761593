//! `ledger verify [--artifacts]`.

use crate::context::Context;
use anyhow::{bail, Result};
use foundry_events::{Event, FileDigest};

/// Options of `ledger verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Also re-hash every stored artifact the history names.
    #[arg(long)]
    artifacts: bool,
}

fn files_of(e: &Event) -> (bool, Vec<FileDigest>) {
    match e {
        Event::CheckpointCommitted(p) => (true, p.files.clone()),
        Event::BaseModelPinned(p) => (false, p.files.clone()),
        _ => (false, Vec::new()),
    }
}

/// Runs `ledger verify`.
pub fn run(ctx: &Context, a: VerifyArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let report = ledger.verify_trusting(ctx.trust_root.as_deref())?;
    if let Some(v) = &report.violation {
        bail!("verify failed at {v}");
    }
    let (mut checked, mut not_stored) = (0u64, 0u64);
    if a.artifacts {
        let store = ctx.home.artifacts();
        for rec in ledger.iter_from(1) {
            let rec = rec?;
            let (required, files) = files_of(&rec.decode_event()?);
            for f in files {
                match store.check(&f.sha256) {
                    Ok(true) => checked += 1,
                    Ok(false) if required => bail!(
                        "verify failed at seq {}: artifact {} ({}) is missing from the store",
                        rec.seq,
                        f.path,
                        f.sha256.short()
                    ),
                    Ok(false) => not_stored += 1,
                    Err(e) => bail!("verify failed at seq {}: {} ({e})", rec.seq, f.path),
                }
            }
        }
    }
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "ok": true,
            "events": report.events,
            "head_seq": report.head.seq,
            "head_hash": report.head.hash,
            "signed_batches": report.batches,
            "root": report.root,
            "root_trusted": ctx.trust_root.is_some(),
            "artifacts_checked": checked,
            "artifacts_not_stored": not_stored,
        }))?;
    } else {
        println!(
            "ok: {} events and {} signed batches verified, head seq {} hash {}",
            report.events,
            report.batches,
            report.head.seq,
            report.head.hash.short()
        );
        crate::output::root_line(report.root.as_deref(), ctx.trust_root.is_some());
        if a.artifacts {
            println!("ok: {checked} artifacts re-hashed ({not_stored} pinned inputs kept outside the store)");
        }
    }
    Ok(())
}
