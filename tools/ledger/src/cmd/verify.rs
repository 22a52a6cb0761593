//! `ledger verify [--artifacts]`.

use crate::context::Context;
use anyhow::{bail, Result};
use foundry_events::{Event, Sha256Digest};

/// Options of `ledger verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Also re-hash every artifact file the history names (checkpoint
    /// files, run configs; with `--nats`, fetched from the service's
    /// artifact bucket first) and the pinned inputs the store holds.
    #[arg(long)]
    artifacts: bool,
}

/// The files an event names: those the home must hold (checkpoint files,
/// run configs), then pinned inputs, which the store holds only when they
/// were copied in.
fn files_of(e: &Event) -> Vec<(bool, String, Sha256Digest)> {
    let mut files: Vec<(bool, String, Sha256Digest)> = e
        .stored_artifacts()
        .into_iter()
        .map(|(what, d)| (true, what, d))
        .collect();
    if let Event::BaseModelPinned(p) = e {
        files.extend(p.files.iter().map(|f| (false, f.path.clone(), f.sha256)));
    }
    files
}

/// Runs `ledger verify`.
pub fn run(ctx: &Context, a: VerifyArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let report = ledger.verify_trusting(ctx.trust_root.as_deref())?;
    if let Some(v) = &report.violation {
        bail!("verify failed at {v}");
    }
    let (mut checked, mut not_stored, mut serve_only) = (0u64, 0u64, 0u64);
    if a.artifacts {
        let store = ctx.home.artifacts();
        for rec in ledger.iter_from(1) {
            let rec = rec?;
            for (required, what, digest) in files_of(&rec.decode_event()?) {
                if required && ctx.remote.is_some() && !store.contains(&digest) {
                    // A replica proves the files the service holds by
                    // fetching them from its artifact bucket; those that
                    // left it under retention only the serve home can prove.
                    ctx.fetch_artifacts(&[(what.clone(), digest)])?;
                    if !store.contains(&digest) {
                        serve_only += 1;
                        continue;
                    }
                }
                match store.check(&digest) {
                    Ok(true) => checked += 1,
                    Ok(false) if required => bail!(
                        "verify failed at seq {}: artifact {what} ({}) is missing from the store",
                        rec.seq,
                        digest.short()
                    ),
                    Ok(false) => not_stored += 1,
                    Err(e) => bail!("verify failed at seq {}: {what} ({e})", rec.seq),
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
            "artifacts_left_bucket": serve_only,
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
            if serve_only > 0 {
                println!(
                    "note: {serve_only} checkpoint files left the artifact bucket under retention; `verify --artifacts` on the serve home proves them"
                );
            }
        }
    }
    Ok(())
}
