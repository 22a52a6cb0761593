//! `ledger up`: the embedded default as a service. Every runner in this one
//! process over the local ledger, with no server to install; it handles
//! whatever is pending (detached runs, waiting promotions, runs a crash left
//! behind) and then whatever comes.

use anyhow::{anyhow, Result};

use super::embedded::{self, Which};
use crate::context::Context;

/// Options of `ledger up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Exit once everything pending is done, instead of waiting for more.
    #[arg(long)]
    until_idle: bool,
}

/// Runs the embedded runners until interrupted (or idle, with --until-idle).
pub fn run(ctx: &Context, a: UpArgs) -> Result<()> {
    if ctx.remote.is_some() {
        anyhow::bail!(
            "`ledger up` is the embedded default; with --nats, start `ledger runner` instead"
        );
    }
    let ledger = ctx.ledger()?;
    let rt = embedded::runtime()?;
    rt.block_on(async {
        let e = embedded::start(ctx, &ledger, Which::ALL)?;
        if !ctx.json {
            println!(
                "foundry up: trainer, evaluator, promoter and modal dispatcher on {} (head seq {})",
                ctx.home.root().display(),
                ledger.head().seq
            );
        }
        let r = if a.until_idle {
            tokio::select! {
                r = e.host.wait_idle(e.client.as_ref()) => r.map_err(anyhow::Error::from),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        } else {
            tokio::signal::ctrl_c()
                .await
                .map_err(|err| anyhow!("cannot wait for Ctrl-C: {err}"))
        };
        e.host.shutdown().await;
        if !ctx.json {
            println!("foundry up: stopped at head seq {}", ledger.head().seq);
        }
        r
    })
}
