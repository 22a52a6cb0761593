//! `ledger bench append|verify`: durable, signed append throughput through
//! the normal path, and full verification throughput (hashes, chain,
//! signatures, authorization).

use crate::context::Context;
use anyhow::{bail, Result};
use foundry_events::{MetricPoint, MetricsLogged, Role};
use foundry_ledger::{AppendRequest, Home, Identity, Ledger, NewEvent};
use std::io::Write;
use std::time::Instant;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Append N MetricsLogged events (each batch signed here) and print events/s as the last line.
    Append(AppendArgs),
    /// Build a ledger of N events in batches of B, then time `verify` over it; prints events/s last.
    Verify(VerifyArgs),
}

/// Options of `ledger bench append`.
#[derive(clap::Args)]
pub struct AppendArgs {
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Events per atomic, flushed, signed batch.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Append to the --home ledger instead of a fresh temporary one (signed
    /// with --key, else the home's trainer key).
    #[arg(long)]
    in_home: bool,
    /// Print each acknowledged seq (used by the crash test).
    #[arg(long, hide = true)]
    print_acks: bool,
}

/// Options of `ledger bench verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Events per signed batch.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
}

fn metrics(step: u64) -> NewEvent {
    NewEvent::new(MetricsLogged {
        run_id: format!("bench-{}", step % 16),
        points: vec![MetricPoint {
            step,
            loss: 2.0 / (1.0 + step as f64).sqrt(),
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 512,
            tokens_per_s: 2048.0,
            elapsed_ms: step,
        }],
    })
}

/// A fresh ledger in `dir` whose root may append anything.
fn scratch(dir: &std::path::Path) -> Result<(Ledger, Identity)> {
    let ledger = Home::at(dir).init()?;
    let id = Identity::generate("bench")?;
    ledger.init_genesis(&id, Role::ALL, &[])?;
    Ok((ledger, id))
}

/// Appends `n` events in batches of `batch`, signing each; calls `each`
/// with every outcome.
fn fill(
    ledger: &Ledger,
    id: &Identity,
    n: u64,
    batch: u64,
    mut each: impl FnMut(&foundry_ledger::AppendOutcome) -> Result<()>,
) -> Result<()> {
    let mut done = 0u64;
    while done < n {
        let k = batch.min(n - done);
        let events = (done..done + k).map(metrics).collect();
        let out = ledger.append_as(id, AppendRequest::new(events))?;
        each(&out)?;
        done += k;
    }
    Ok(())
}

/// Runs a benchmark.
pub fn run(ctx: &Context, b: BenchCommand) -> Result<()> {
    match b {
        BenchCommand::Append(a) => append(ctx, a),
        BenchCommand::Verify(a) => verify(ctx, a),
    }
}

fn append(ctx: &Context, a: AppendArgs) -> Result<()> {
    if a.events == 0 || a.batch == 0 {
        bail!("--events and --batch must be at least 1");
    }
    let tmp;
    let (ledger, id) = if a.in_home {
        let id = if ctx.key_given() {
            ctx.identity()?.clone()
        } else {
            Identity::load(
                &super::init::runner_key_file(&ctx.keys_dir(), Role::Trainer),
                None,
            )?
        };
        (ctx.ledger()?, id)
    } else {
        tmp = tempfile::tempdir()?;
        scratch(tmp.path())?
    };
    let stdout = std::io::stdout();
    let start = Instant::now();
    fill(&ledger, &id, a.events, a.batch, |out| {
        if a.print_acks {
            let mut lock = stdout.lock();
            for r in &out.events {
                writeln!(lock, "ack {}", r.seq)?;
            }
            lock.flush()?;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let rate = a.events as f64 / secs;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "events": a.events, "batch": a.batch, "seconds": secs, "events_per_s": rate,
        }))?;
    }
    println!(
        "appended {} signed events in batches of {} in {secs:.3} s",
        a.events, a.batch
    );
    println!("{rate:.0} events/s");
    Ok(())
}

fn verify(ctx: &Context, a: VerifyArgs) -> Result<()> {
    if a.events == 0 || a.batch == 0 {
        bail!("--events and --batch must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let (ledger, id) = scratch(tmp.path())?;
    fill(&ledger, &id, a.events, a.batch, |_| Ok(()))?;
    let start = Instant::now();
    let report = ledger.verify()?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(v) = report.violation {
        bail!("verify failed at {v}");
    }
    let rate = report.events as f64 / secs;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "events": report.events, "batches": report.batches, "seconds": secs,
            "events_per_s": rate,
        }))?;
    }
    println!(
        "verified {} events and {} signatures in {secs:.3} s",
        report.events, report.batches
    );
    println!("{rate:.0} events/s");
    Ok(())
}
