//! `ledger artifact push|get`: the files the history names, moved between
//! this home's artifact store and the JetStream artifact bucket by hand
//! (runners and `ledger serve` do it on their own).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use foundry_bus::{ArtifactBucket, Uploaded};
use foundry_events::Sha256Digest;

use crate::context::Context;

/// `ledger artifact …`.
#[derive(clap::Subcommand)]
pub enum ArtifactCommand {
    /// Upload files of this home's artifact store to the service's bucket
    /// (--nats): resumable, and a no-op for files already there.
    Push(PushArgs),
    /// Bring a file into this home's store (with --nats, from the bucket,
    /// checked against its hash) and optionally copy it out.
    Get(GetArgs),
}

/// Options of `ledger artifact push`.
#[derive(clap::Args)]
pub struct PushArgs {
    /// sha256 (64 hex digits) of each file to upload.
    #[arg(required_unless_present = "all")]
    sha256: Vec<String>,
    /// Every file the history names that this home holds.
    #[arg(long, conflicts_with = "sha256")]
    all: bool,
}

/// Options of `ledger artifact get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// sha256 (64 hex digits) of the file.
    sha256: String,
    /// Copy it here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn digest(hex: &str) -> Result<Sha256Digest> {
    Sha256Digest::from_hex(hex.trim())
        .map_err(|e| anyhow!("{hex:?} is not a sha256 (64 hex digits): {e}"))
}

/// Runs `ledger artifact …`.
pub fn run(ctx: &Context, c: ArtifactCommand) -> Result<()> {
    match c {
        ArtifactCommand::Push(a) => push(ctx, a),
        ArtifactCommand::Get(a) => get(ctx, a),
    }
}

fn push(ctx: &Context, a: PushArgs) -> Result<()> {
    let opts = super::serve::required_nats(ctx)?;
    let store = ctx.home.artifacts();
    let digests: Vec<Sha256Digest> = if a.all {
        let ledger = ctx.ledger()?;
        let mut all = Vec::new();
        for rec in ledger.iter_from(1) {
            for (_, d) in rec?.decode_event()?.stored_artifacts() {
                if store.contains(&d) && !all.contains(&d) {
                    all.push(d);
                }
            }
        }
        all
    } else {
        a.sha256.iter().map(|h| digest(h)).collect::<Result<_>>()?
    };
    for d in &digests {
        if !store.contains(d) {
            bail!(
                "artifact {} is not in {}",
                d.to_hex(),
                ctx.home.artifacts_dir().display()
            );
        }
    }
    super::embedded::runtime()?.block_on(async {
        let nats = opts
            .connect()
            .await
            .with_context(|| format!("cannot reach NATS at {}", opts.url))?;
        let bucket = ArtifactBucket::on(nats).await?;
        let mut report = Vec::new();
        for d in &digests {
            let what = match bucket.upload(d, &store.path_of(d)).await? {
                Uploaded::AlreadyThere => "already in the bucket".to_string(),
                Uploaded::Written {
                    resumed_at: 0,
                    chunks,
                } => format!("uploaded ({chunks} chunks)"),
                Uploaded::Written { resumed_at, chunks } => {
                    format!("uploaded, resumed at chunk {resumed_at} of {chunks}")
                }
            };
            if ctx.json {
                report.push(serde_json::json!({"sha256": d.to_hex(), "result": what}));
            } else {
                println!("{}  {what}", d.to_hex());
            }
        }
        if ctx.json {
            crate::output::json(&report)?;
        }
        Ok(())
    })
}

fn get(ctx: &Context, a: GetArgs) -> Result<()> {
    let d = digest(&a.sha256)?;
    let store = ctx.home.artifacts();
    if ctx.remote.is_some() {
        ctx.fetch_artifacts(&[(format!("artifact {}", d.short()), d)])?;
    }
    let held = store.check(&d).map_err(|e| match e {
        foundry_ledger::LedgerError::Corrupt { reason, .. } => anyhow!("{reason}"),
        other => other.into(),
    })?;
    if !held {
        bail!(
            "artifact {} is not in {}{}",
            d.to_hex(),
            ctx.home.artifacts_dir().display(),
            if ctx.remote.is_some() {
                " nor in the service's artifact bucket"
            } else {
                ""
            }
        );
    }
    let path = match &a.out {
        Some(out) => {
            std::fs::copy(store.path_of(&d), out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            out.clone()
        }
        None => store.path_of(&d),
    };
    if ctx.json {
        crate::output::json(&serde_json::json!({"sha256": d.to_hex(), "path": path}))?;
    } else {
        println!("{}", path.display());
    }
    Ok(())
}
