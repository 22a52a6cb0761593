//! Runners and the host that drives them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use foundry_events::EventType;
use foundry_ledger::Home;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Delivery, EventFeed, LedgerClient, Result, RunnerError};

/// What a runner's handler gets besides the event.
#[derive(Clone)]
pub struct RunnerContext {
    /// The ledger, local or remote, acting as this runner's identity
    /// (its registered name is the actor of everything it appends).
    pub client: Arc<dyn LedgerClient>,
    /// This runner instance's id (claims and heartbeats name it).
    pub runner_id: String,
    /// The local home: run directories and the artifact store.
    pub home: Home,
    /// Becomes `true` when the host is shutting down.
    pub stop: watch::Receiver<bool>,
}

impl RunnerContext {
    /// The registered name this runner appends as.
    pub fn actor(&self) -> &str {
        self.client.identity().name()
    }

    /// Whether the host asked runners to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A reactive worker: the types it reacts to and what it does with one event.
///
/// `handle` must append its outcome with an idempotency key derived from the
/// trigger (see [`crate::outcome_key`]) and return `Ok` only once the outcome
/// is durable; the host acks after that. An `Err` is transient: the event is
/// delivered again, up to the host's attempt limit.
#[async_trait]
pub trait Runner: Send + Sync {
    /// Short name (`trainer`, `evaluator`, `promoter`); names its cursor too.
    fn name(&self) -> &str;
    /// The event types it reacts to.
    fn reacts_to(&self) -> Vec<EventType>;
    /// Handles one event.
    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> Result<()>;
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// How many deliveries of one event a runner gets before the host gives up
/// on it (and logs why), so one poisonous event cannot wedge a runner.
pub const MAX_ATTEMPTS: u32 = 5;

/// Drives runners: one task per runner, each over its own feed.
pub struct Host {
    stop_tx: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
    progress: Vec<watch::Receiver<u64>>,
    busy: Vec<watch::Receiver<bool>>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host with no runners yet.
    pub fn new() -> Self {
        let (stop_tx, _) = watch::channel(false);
        Host {
            stop_tx,
            tasks: Vec::new(),
            progress: Vec::new(),
            busy: Vec::new(),
        }
    }

    /// A stop signal for contexts of runners this host drives.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Starts driving `runner` over `feed`.
    pub fn spawn(
        &mut self,
        runner: Arc<dyn Runner>,
        mut feed: Box<dyn EventFeed>,
        ctx: RunnerContext,
    ) {
        self.progress.push(feed.progress());
        let (busy_tx, busy_rx) = watch::channel(false);
        self.busy.push(busy_rx);
        let mut stop = self.stop_tx.subscribe();
        let name = runner.name().to_string();
        let task = tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    d = feed.next() => d,
                    _ = crate::host::stopped(&mut stop) => return,
                };
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(runner = runner.name(), "feed failed: {e}");
                        return;
                    }
                };
                busy_tx.send_replace(true);
                let seq = delivery.event.seq;
                let outcome = {
                    let work = runner.handle(&ctx, &delivery);
                    tokio::pin!(work);
                    let mut tick = tokio::time::interval(Duration::from_secs(10));
                    loop {
                        tokio::select! {
                            r = &mut work => break r,
                            _ = tick.tick() => { let _ = feed.in_progress().await; }
                        }
                    }
                };
                let settled = match outcome {
                    Ok(()) => feed.ack(seq).await,
                    Err(RunnerError::Stopped) => {
                        busy_tx.send_replace(false);
                        return;
                    }
                    Err(RunnerError::Final(reason)) => {
                        tracing::error!(
                            runner = runner.name(),
                            seq,
                            "failed, and another attempt would fail the same way: {reason}"
                        );
                        feed.ack(seq).await
                    }
                    Err(e) if delivery.attempt >= MAX_ATTEMPTS => {
                        tracing::error!(
                            runner = runner.name(),
                            seq,
                            "giving up after {} attempts: {e}",
                            delivery.attempt
                        );
                        feed.ack(seq).await
                    }
                    Err(e) => {
                        tracing::warn!(runner = runner.name(), seq, "will retry: {e}");
                        let backoff = Duration::from_millis(200 << delivery.attempt.min(6));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = crate::host::stopped(&mut stop) => { busy_tx.send_replace(false); return; }
                        }
                        feed.nak(seq).await
                    }
                };
                busy_tx.send_replace(false);
                if let Err(e) = settled {
                    tracing::error!(runner = runner.name(), "feed failed: {e}");
                    return;
                }
            }
        });
        self.tasks.push((name, task));
    }

    /// Waits until every runner has handled (or skipped) every event through
    /// the ledger's head, including events the runners themselves appended
    /// meanwhile: the system is quiescent. Fails if a runner task ended.
    pub async fn wait_idle(&self, client: &dyn LedgerClient) -> Result<()> {
        loop {
            let head = client.head().await?;
            for (i, p) in self.progress.iter().enumerate() {
                let mut p = p.clone();
                let mut busy = self.busy[i].clone();
                loop {
                    if self.tasks[i].1.is_finished() {
                        return Err(RunnerError::Transport(format!(
                            "runner {} stopped",
                            self.tasks[i].0
                        )));
                    }
                    if *p.borrow() >= head && !*busy.borrow() {
                        break;
                    }
                    tokio::select! {
                        _ = p.changed() => {}
                        _ = busy.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
            if client.head().await? == head {
                return Ok(());
            }
        }
    }

    /// Asks every runner to stop and waits for them. A handler in the middle
    /// of its work is dropped at its next await point; its event was not
    /// acked, so it is delivered again next time.
    pub async fn shutdown(self) {
        self.stop_tx.send_replace(true);
        for (_, t) in self.tasks {
            let _ = t.await;
        }
    }
}
