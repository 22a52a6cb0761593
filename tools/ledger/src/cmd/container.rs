//! `ledger runner train --run ID`: trains one run inside a container (what a
//! Modal launcher runs). Its events go to the ledger over NATS when `--nats`
//! is given and reachable; otherwise the run trains against a scratch home
//! in `--work` (a Volume), imported from the `--bundle` snapshot, and every
//! event past the snapshot is written to `--work/outbox.foundry` after each
//! checkpoint and at the end, for the dispatcher to import. A line starting
//! with `FOUNDRY_COMMIT` is printed each time, so the launcher commits the
//! Volume. Re-running it (a retried container) resumes from the last
//! checkpoint in the scratch home.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use foundry_events::Event;
use foundry_ledger::{Home, Ledger};
use foundry_runner::{Delivery, LedgerClient, LocalLedger, Runner, RunnerContext, TrainerRunner};

use crate::context::Context;

/// Options of `ledger runner train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The run to train.
    #[arg(long)]
    run: String,
    /// The ledger snapshot the dispatcher sent (an export file).
    #[arg(long)]
    bundle: PathBuf,
    /// Work directory that survives retries (the run's folder in a Volume).
    #[arg(long)]
    work: PathBuf,
}

/// Opens the scratch ledger, importing the snapshot unless a previous
/// attempt already did (a partial import is redone).
fn open_scratch(
    home: &Home,
    bundle: &Path,
    anchor: foundry_modal::outbox::Anchor,
) -> Result<Ledger> {
    let mut ledger = if home.ledger_dir().exists() {
        home.open_ledger()?
    } else {
        home.init()?
    };
    let head = ledger.head();
    if head.seq < anchor.events {
        if head.seq > 0 {
            drop(ledger);
            let dir = home.ledger_dir();
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear the partial import in {}", dir.display()))?;
            ledger = home.init()?;
        }
        ledger.import(bundle, None)?;
    } else if anchor.events > 0 {
        let rec = ledger
            .get(anchor.events)?
            .ok_or_else(|| anyhow!("scratch ledger has no seq {}", anchor.events))?;
        if rec.hash != anchor.head_hash {
            bail!(
                "the scratch ledger in {} does not extend the snapshot {} (seq {} differs)",
                home.root().display(),
                bundle.display(),
                anchor.events
            );
        }
    }
    Ok(ledger)
}

/// One outbox write at a time (the watcher's and the final one share the
/// temporary file; an aborted task's blocking write still runs to its end).
static OUTBOX_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

async fn write_outbox(ledger: &Ledger, path: &Path) -> Result<()> {
    let ledger = ledger.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let _one = OUTBOX_WRITE.lock().unwrap_or_else(|p| p.into_inner());
        let at = foundry_events::Timestamp::from_unix_nanos(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
        );
        ledger.export(&path, &at.to_rfc3339())
    })
    .await
    .map_err(|e| anyhow!("outbox task: {e}"))??;
    Ok(())
}

/// The run's first event (its RunRequested), as the trigger.
async fn trigger(client: &dyn LedgerClient, run: &str) -> Result<foundry_events::RecordedEvent> {
    let rec = client
        .read_stream(&format!("run/{run}"), 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("run {run} is not in the ledger"))?;
    if !matches!(rec.decode_event()?, Event::RunRequested(_)) {
        bail!("run/{run} does not start with RunRequested");
    }
    Ok(rec)
}

async fn terminal(client: &dyn LedgerClient, run: &str) -> Result<Option<String>> {
    for rec in client.read_stream(&format!("run/{run}"), 1).await? {
        match rec.decode_event()? {
            Event::RunCompleted(_) => return Ok(Some("completed".into())),
            Event::RunFailed(f) => return Ok(Some(format!("failed: {}", f.reason))),
            Event::RunCancelled(_) => return Ok(Some("cancelled".into())),
            _ => {}
        }
    }
    Ok(None)
}

/// Runs the trainer on `run` with `client`, returning how the run ended.
async fn train(
    ctx: &Context,
    client: Arc<dyn LedgerClient>,
    home: Home,
    run: &str,
) -> Result<Option<String>> {
    let event = trigger(client.as_ref(), run).await?;
    let backend = match event.decode_event()? {
        Event::RunRequested(r) => r.backend,
        _ => bail!("run/{run} does not start with RunRequested"),
    };
    let trainer = TrainerRunner::new(super::engines::trainer())
        .with_lease(super::engines::lease())
        .with_max_attempts(super::engines::max_attempts())
        .for_backend(&backend);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let _ = ctx;
    let rctx = RunnerContext {
        client: client.clone(),
        // Stable across retries: a retried container takes its run back at once.
        runner_id: format!("modal/{run}"),
        home,
        stop,
    };
    trainer
        .handle(&rctx, &Delivery { event, attempt: 1 })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    terminal(client.as_ref(), run).await
}

/// Over NATS: prints `FOUNDRY_COMMIT` for each new checkpoint of the run.
async fn announce_checkpoints(client: Arc<dyn LedgerClient>, run: String) {
    let stream = format!("run/{run}");
    let mut next = 1u64;
    loop {
        if let Ok(recs) = client.read_stream(&stream, next).await {
            for rec in recs {
                next = rec.stream_version + 1;
                if let Ok(Event::CheckpointCommitted(c)) = rec.decode_event() {
                    println!("FOUNDRY_COMMIT checkpoint step={}", c.step);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs `ledger runner train`.
pub fn run(ctx: &Context, a: TrainArgs) -> Result<()> {
    if !a.bundle.is_file() {
        bail!("{}: no such snapshot file (--bundle)", a.bundle.display());
    }
    // Verified before anything is written.
    let anchor = foundry_modal::outbox::anchor_of(&a.bundle)
        .map_err(|e| anyhow!("snapshot {}: {e}", a.bundle.display()))?;
    std::fs::create_dir_all(&a.work)
        .with_context(|| format!("cannot create {}", a.work.display()))?;
    let home = Home::at(a.work.join("home"));
    // The run's own key (`--key`, the file the dispatcher put in the image):
    // registered for this run only, and expiring.
    let identity = ctx.identity()?.clone();
    let rt = super::embedded::runtime()?;
    let ended = rt.block_on(async {
        // The global --nats options (credentials from FOUNDRY_NATS_* env,
        // e.g. a Modal secret).
        if let Some(opts) = ctx.remote.as_ref().map(|r| r.opts.clone()) {
            let url = opts.url.clone();
            match tokio::time::timeout(Duration::from_secs(15), opts.connect()).await {
                Ok(Ok(nats)) => {
                    println!("foundry: events go to the ledger over NATS at {url}");
                    let client: Arc<dyn LedgerClient> = Arc::new(
                        foundry_bus::NatsLedgerClient::new(nats, identity.clone())
                            .with_artifacts(home.artifacts()),
                    );
                    // Checkpoint files stay in the Volume: have it committed
                    // after each checkpoint, so the dispatcher can pull them.
                    let watcher = tokio::spawn(announce_checkpoints(client.clone(), a.run.clone()));
                    let ended = train(ctx, client, home.clone(), &a.run).await;
                    watcher.abort();
                    println!("FOUNDRY_COMMIT end");
                    return ended;
                }
                Ok(Err(e)) => {
                    println!("foundry: NATS at {url} unreachable ({e}); using the outbox")
                }
                Err(_) => {
                    println!("foundry: NATS at {url} did not answer in 15s; using the outbox")
                }
            }
        }
        let ledger = open_scratch(&home, &a.bundle, anchor)?;
        let outbox = a.work.join("outbox.foundry");
        // After each checkpoint (and start, and end), rewrite the outbox.
        let watch_ledger = ledger.clone();
        let watch_outbox = outbox.clone();
        let run_stream = format!("run/{}", a.run);
        let watcher = tokio::spawn(async move {
            let mut tail = watch_ledger.tail(anchor.events);
            while let Ok(rec) = tail.next().await {
                if rec.stream != run_stream {
                    continue;
                }
                let what = match rec.decode_event() {
                    Ok(Event::CheckpointCommitted(c)) => format!("checkpoint step={}", c.step),
                    Ok(Event::RunStarted(_)) => "started".to_string(),
                    Ok(Event::RunResumed(r)) => format!("resumed step={}", r.step),
                    _ => continue,
                };
                match write_outbox(&watch_ledger, &watch_outbox).await {
                    Ok(()) => println!("FOUNDRY_COMMIT {what}"),
                    Err(e) => eprintln!("foundry: outbox not written: {e:#}"),
                }
            }
        });
        let client: Arc<dyn LedgerClient> =
            Arc::new(LocalLedger::new(ledger.clone(), identity.clone()));
        let result = train(ctx, client, home.clone(), &a.run).await;
        watcher.abort();
        let _ = watcher.await;
        write_outbox(&ledger, &outbox).await?;
        println!("FOUNDRY_COMMIT end");
        result
    })?;
    match ended {
        Some(how) => {
            println!("run {} {how}", a.run);
            Ok(())
        }
        None => bail!("run {} stopped before it ended", a.run),
    }
}
