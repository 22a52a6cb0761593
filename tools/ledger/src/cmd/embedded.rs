//! The embedded default: every runner in this process, over the local ledger.
//! Commands that start work (`run start`, `promote`, `eval`, `up`) append
//! their request and drive the runners here until the work is done.

use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use foundry_events::Role;
use foundry_ledger::{Identity, Ledger};
use foundry_runner::{EmbeddedFeed, Host, LocalLedger, RunnerContext};

use super::engines;
pub use super::engines::Which;
use crate::context::Context;

/// A started embedded runtime.
pub struct Embedded {
    /// The host driving the runners.
    pub host: Host,
    /// A client of the same ledger, for waiting on it.
    pub client: Arc<LocalLedger>,
}

/// The role whose key an embedded runner of this name signs with.
fn role_of(runner: &str) -> Role {
    match runner {
        "trainer" => Role::Trainer,
        "evaluator" => Role::Evaluator,
        "promoter" => Role::Promoter,
        _ => Role::Dispatcher,
    }
}

/// The home's key of the embedded runner with `role` (made by `ledger init`).
pub fn runner_identity(ctx: &Context, role: Role) -> Result<Identity> {
    let path = super::init::runner_key_file(&ctx.keys_dir(), role);
    if !path.is_file() {
        return Err(anyhow!(
            "this home has no {} key ({}): embedded runners sign with the keys `ledger init` makes",
            role.as_str(),
            path.display()
        ));
    }
    Ok(Identity::load(&path, None)?)
}

/// Starts the chosen runners over `ledger`, each with its cursor under
/// `home/runners/`.
pub fn start(ctx: &Context, ledger: &Ledger, which: Which) -> Result<Embedded> {
    let client = Arc::new(LocalLedger::new(
        ledger.clone(),
        runner_identity(ctx, Role::Promoter)?,
    ));
    let mut host = Host::new();
    let runners = engines::runner_set(which);
    let host_name = foundry_runner::host_info().hostname;
    let instance = uuid::Uuid::now_v7().simple().to_string();
    for r in runners {
        let id = runner_identity(ctx, role_of(r.name()))?;
        let cursor = ctx
            .home
            .root()
            .join("runners")
            .join(format!("{}.cursor", r.name()));
        let feed = EmbeddedFeed::open(ledger.clone(), &r.reacts_to(), cursor)
            .with_context(|| format!("runner {}", r.name()))?;
        let rctx = RunnerContext {
            client: Arc::new(client.acting_as(id)),
            runner_id: format!("{}@{host_name}/{}", r.name(), &instance[20..]),
            home: ctx.home.clone(),
            stop: host.stop_signal(),
        };
        host.spawn(r, Box::new(feed), rctx);
    }
    Ok(Embedded { host, client })
}

/// Starts the chosen runners, lets them work until the system is idle, and
/// stops them: what a command that appended a request needs.
pub fn drive(ctx: &Context, ledger: &Ledger, which: Which) -> Result<()> {
    runtime()?.block_on(async {
        let e = start(ctx, ledger, which)?;
        let r = e.host.wait_idle(e.client.as_ref()).await;
        e.host.shutdown().await;
        r.map_err(anyhow::Error::from)
    })
}

/// What a command that appended a request does next: in the embedded
/// default, [`drive`] the runners here; with `--nats`, wait (syncing the
/// replica) until `done` holds, while the runners on the bus do the work.
pub fn drive_until(
    ctx: &Context,
    ledger: &Ledger,
    which: Which,
    done: impl Fn(&Ledger) -> Result<bool>,
) -> Result<()> {
    if ctx.remote.is_some() {
        ctx.wait_remote(ledger, crate::context::remote_wait(), done)?;
        return Ok(());
    }
    drive(ctx, ledger, which)
}

/// A runtime for the async parts of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
