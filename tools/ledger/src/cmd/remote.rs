//! `ledger runner`: runners in their own process (or machine), reaching the
//! ledger through `ledger serve` over NATS and receiving events from
//! JetStream durable consumers (`runner-<name>`), until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use foundry_bus::{FeedOptions, JetStreamFeed, NatsLedgerClient};
use foundry_runner::{Host, RunnerContext};

use crate::context::Context;

/// One runner kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Only {
    /// RunRequested → training events.
    Trainer,
    /// CheckpointCommitted / EvalRequested → EvalScored.
    Evaluator,
    /// PromotionRequested / EvalScored → promotions.
    Promoter,
    /// RunRequested (backend modal) → a Modal job, followed to its end.
    Modal,
}

/// `ledger runner`: runners over NATS, or `ledger runner train` in a container.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunnerCli {
    /// `train`: one run, in a container.
    #[command(subcommand)]
    pub command: Option<RunnerCommand>,
    /// Runners over NATS.
    #[command(flatten)]
    pub args: RunnerArgs,
}

/// Subcommands of `ledger runner`.
#[derive(clap::Subcommand, Debug)]
pub enum RunnerCommand {
    /// Train one run here, as a Modal container does (see the modal runner).
    Train(super::container::TrainArgs),
}

/// Arguments of `ledger runner`.
#[derive(Args, Debug)]
pub struct RunnerArgs {
    /// Run only this runner (default: all four; the Modal dispatcher only
    /// where the `modal` CLI is found).
    #[arg(long, value_enum)]
    only: Option<Only>,
}

/// The feed options, with the ack wait from FOUNDRY_ACK_WAIT_MS (how soon
/// JetStream redelivers what a runner that died had in hand; default 30 s).
fn feed_options() -> FeedOptions {
    let mut o = FeedOptions::default();
    if let Some(ms) = std::env::var("FOUNDRY_ACK_WAIT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        o.ack_wait = Duration::from_millis(ms.max(100));
    }
    o
}

/// Runs the chosen runners until Ctrl-C (or SIGTERM). Run directories and
/// artifacts live in this machine's `--home`; the ledger is remote.
pub fn run(ctx: &Context, args: RunnerArgs) -> Result<()> {
    let want = |o: Only| args.only.is_none_or(|x| x == o);
    // Without --only, a machine without the `modal` CLI leaves Modal runs to
    // a dispatcher that has it.
    let runners = super::engines::runner_set(super::engines::Which {
        trainer: want(Only::Trainer),
        evaluator: want(Only::Evaluator),
        promoter: want(Only::Promoter),
        modal: want(Only::Modal)
            && (args.only == Some(Only::Modal) || foundry_modal::ModalCli::from_env().available()),
    });
    let opts = super::serve::required_nats(ctx)?;
    // This process's own key: every runner here signs with it, so it must
    // hold the roles of the runners it runs.
    let identity = ctx.identity()?.clone();
    super::embedded::runtime()?.block_on(async move {
        let nats = opts.connect().await?;
        let js = async_nats::jetstream::new(nats.clone());
        // Artifacts travel through the JetStream bucket: uploaded from this
        // home before an append names them, fetched into it when needed.
        let client = Arc::new(
            NatsLedgerClient::new(nats, identity.clone()).with_artifacts(ctx.home.artifacts()),
        );
        let host_name = foundry_runner::host_info().hostname;
        let instance = uuid::Uuid::now_v7().simple().to_string();
        let mut host = Host::new();
        let mut names = Vec::new();
        for r in runners {
            let feed = JetStreamFeed::open(&js, r.name(), &r.reacts_to(), feed_options())
                .await
                .with_context(|| format!("runner {}", r.name()))?
                .confirming_with(client.clone());
            names.push(format!(
                "{} (consumer {})",
                r.name(),
                foundry_bus::consumer_name(r.name())
            ));
            let rctx = RunnerContext {
                client: client.clone(),
                runner_id: format!("{}@{host_name}/{}", r.name(), &instance[20..]),
                home: ctx.home.clone(),
                stop: host.stop_signal(),
            };
            host.spawn(r, Box::new(feed), rctx);
        }
        // Listen before announcing readiness, so no signal is missed.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot listen for Ctrl-C")?;
        eprintln!(
            "running {} over {} as {}; Ctrl-C stops",
            names.join(", "),
            opts.url,
            identity.name()
        );
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        host.shutdown().await;
        eprintln!("stopped");
        Ok(())
    })
}
