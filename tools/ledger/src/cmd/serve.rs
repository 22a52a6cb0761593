//! `ledger serve`: the single writer of this home, shared over NATS. Remote
//! runners (`ledger runner`) append and read through it; every committed
//! event is published to the JetStream stream `FOUNDRY` by the outbox.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use foundry_bus::NatsOptions;

use crate::context::Context;

/// How to reach NATS: global options. `serve` shares the home's ledger
/// there; `runner` works for it; every other command, given a URL, appends
/// through it and reads a verified replica in its own home.
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL (nats://host:4222, tls://host:4222).
    #[arg(long = "nats", env = "FOUNDRY_NATS_URL", global = true)]
    pub url: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(
        long,
        env = "FOUNDRY_NATS_USER",
        requires = "nats_password",
        global = true
    )]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "FOUNDRY_NATS_PASSWORD",
        requires = "nats_user",
        global = true
    )]
    pub nats_password: Option<String>,
    /// NATS token authentication.
    #[arg(long, env = "FOUNDRY_NATS_TOKEN", global = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (JWT + NKey).
    #[arg(long, env = "FOUNDRY_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate to trust for TLS.
    #[arg(long, env = "FOUNDRY_NATS_CA", global = true)]
    pub nats_ca: Option<PathBuf>,
}

impl NatsArgs {
    /// The bus options these arguments describe; `None` without a URL.
    pub fn options(&self) -> Option<NatsOptions> {
        let url = self.url.clone().filter(|u| !u.trim().is_empty())?;
        Some(NatsOptions {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_ca.clone(),
            ..NatsOptions::url(url)
        })
    }
}

/// Arguments of `ledger serve` (the global `--nats URL` is required).
#[derive(Args, Debug)]
pub struct ServeArgs {}

/// The NATS options of a command that needs them.
pub fn required_nats(ctx: &Context) -> Result<NatsOptions> {
    ctx.remote
        .as_ref()
        .map(|r| r.opts.clone())
        .ok_or_else(|| anyhow::anyhow!("--nats URL (or FOUNDRY_NATS_URL) is required"))
}

/// Serves the home's ledger until Ctrl-C (or SIGTERM).
pub fn run(ctx: &Context, _args: ServeArgs) -> Result<()> {
    let opts = required_nats(ctx)?;
    let ledger = ctx.local_ledger()?;
    super::embedded::runtime()?.block_on(async move {
        let client = opts.connect().await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Appends naming files are confirmed once each is in this home.
        let artifacts = foundry_bus::ServeArtifacts::open(ctx.home.artifacts(), &client).await?;
        let mut service =
            foundry_bus::spawn_service(ledger.clone(), client, stop_rx, Some(artifacts)).await?;
        // Listen before announcing readiness, so no signal is missed.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot listen for Ctrl-C")?;
        eprintln!(
            "serving {} on {} (requests on {}.*, events on stream {}); Ctrl-C stops",
            ctx.home.root().display(),
            opts.url,
            foundry_bus::wire::API_PREFIX,
            foundry_bus::STREAM
        );
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            // The service only ends by itself when it failed.
            r = &mut service => {
                r.context("the ledger service task failed")?;
                anyhow::bail!("the ledger service stopped by itself");
            }
        }
        stop_tx.send_replace(true);
        service.await.context("the ledger service task failed")?;
        eprintln!(
            "stopped; published through seq {} of {}",
            ledger.published_through()?,
            ledger.head().seq
        );
        Ok(())
    })
}
