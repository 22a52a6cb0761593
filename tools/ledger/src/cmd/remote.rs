//! `ledger runner`: runners in their own process (or machine), reaching the
//! ledger through `ledger serve` over NATS and receiving events from
//! JetStream durable consumers (`runner-<name>`), until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use foundry_bus::{FeedOptions, JetStreamFeed, NatsLedgerClient};
use foundry_runner::{
    EvalEngine, EvaluatorRunner, Host, PromoterRunner, Runner, RunnerContext, TrainerRunner,
    TrainingEngine,
};

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

/// The engines behind the trainer and the evaluator; `None` where this build
/// has none (then only the other runners can be started).
pub struct Engines {
    /// Trains runs.
    pub trainer: Option<Arc<dyn TrainingEngine>>,
    /// Scores checkpoints.
    pub evaluator: Option<Arc<dyn EvalEngine>>,
    /// The eval spec a recipe implies (what the promoter checks evidence against).
    pub specs: Arc<dyn foundry_runner::EvalSpecs>,
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
pub fn run(ctx: &Context, args: RunnerArgs, engines: Engines) -> Result<()> {
    let want = |o: Only| args.only.is_none_or(|x| x == o);
    let mut runners: Vec<Arc<dyn Runner>> = Vec::new();
    if want(Only::Trainer) {
        let Some(engine) = engines.trainer else {
            bail!("this build has no training engine; start another runner with --only evaluator|promoter");
        };
        runners.push(Arc::new(
            TrainerRunner::new(engine)
                .with_lease(super::embedded::lease())
                .with_max_attempts(super::embedded::max_attempts()),
        ));
    }
    if want(Only::Evaluator) {
        let Some(engine) = engines.evaluator else {
            bail!("this build has no evaluation engine; start another runner with --only trainer|promoter");
        };
        runners.push(Arc::new(EvaluatorRunner::new(engine)));
    }
    if want(Only::Promoter) {
        runners.push(Arc::new(PromoterRunner::new(engines.specs.clone())));
    }
    // Without --only, a machine without the `modal` CLI leaves Modal runs to
    // a dispatcher that has it.
    if want(Only::Modal)
        && (args.only == Some(Only::Modal) || foundry_modal::ModalCli::from_env().available())
    {
        runners.push(Arc::new(foundry_modal::ModalRunner::new(
            foundry_modal::ModalOptions::from_env(),
        )));
    }
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
