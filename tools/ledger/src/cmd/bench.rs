//! `ledger bench append`: durable append throughput through the normal path.

use crate::context::Context;
use anyhow::{bail, Result};
use foundry_events::{MetricPoint, MetricsLogged};
use foundry_ledger::{AppendRequest, Home, NewEvent};
use std::io::Write;
use std::time::Instant;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Append N MetricsLogged events and print events/s as the last line.
    Append(AppendArgs),
}

/// Options of `ledger bench append`.
#[derive(clap::Args)]
pub struct AppendArgs {
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Events per atomic, flushed batch.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Append to the --home ledger instead of a fresh temporary one.
    #[arg(long)]
    in_home: bool,
    /// Print each acknowledged seq (used by the crash test).
    #[arg(long, hide = true)]
    print_acks: bool,
}

/// Runs a benchmark.
pub fn run(ctx: &Context, b: BenchCommand) -> Result<()> {
    let BenchCommand::Append(a) = b;
    if a.events == 0 || a.batch == 0 {
        bail!("--events and --batch must be at least 1");
    }
    let tmp;
    let ledger = if a.in_home {
        ctx.ledger()?
    } else {
        tmp = tempfile::tempdir()?;
        Home::at(tmp.path()).init()?
    };
    let start = Instant::now();
    let mut done = 0u64;
    let stdout = std::io::stdout();
    while done < a.events {
        let n = a.batch.min(a.events - done);
        let events = (0..n)
            .map(|i| {
                let step = done + i;
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
            })
            .collect();
        let out = ledger.append(AppendRequest::new(ctx.actor.clone(), events))?;
        if a.print_acks {
            let mut lock = stdout.lock();
            for r in &out.events {
                writeln!(lock, "ack {}", r.seq)?;
            }
            lock.flush()?;
        }
        done += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = a.events as f64 / secs;
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "events": a.events, "batch": a.batch, "seconds": secs, "events_per_s": rate,
        }))?;
    }
    println!(
        "appended {} events in batches of {} in {secs:.3} s",
        a.events, a.batch
    );
    println!("{rate:.0} events/s");
    Ok(())
}
