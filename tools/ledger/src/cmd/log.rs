//! `ledger log`: the raw history, filtered.

use crate::context::Context;
use anyhow::{anyhow, Result};
use foundry_events::{Envelope, Event, EventType, RecordedEvent};
use std::time::Duration;
use tabled::Tabled;

/// Options of `ledger log`.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Only this stream (e.g. `run/0193…`).
    #[arg(long)]
    stream: Option<String>,
    /// Only this event type (e.g. `CheckpointCommitted`).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Start at this seq.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// At most this many events (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Keep waiting for new events and print them as they are appended.
    #[arg(long)]
    follow: bool,
}

#[derive(Tabled)]
struct Row {
    seq: u64,
    time: String,
    #[tabled(rename = "type")]
    ty: String,
    stream: String,
    ver: u64,
    actor: String,
    summary: String,
}

/// Parses a type name, listing the catalog when it is unknown.
pub fn parse_type(name: &str) -> Result<EventType> {
    EventType::parse(name).ok_or_else(|| {
        let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        anyhow!("unknown event type {name:?} (known: {})", known.join(", "))
    })
}

struct Filter {
    stream: Option<String>,
    ty: Option<EventType>,
}

impl Filter {
    fn keep(&self, r: &RecordedEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| &r.stream == s)
            && self.ty.is_none_or(|t| r.event_type == t.as_str())
    }
}

/// Runs `ledger log`.
pub fn run(ctx: &Context, a: LogArgs) -> Result<()> {
    let filter = Filter {
        stream: a.stream.clone(),
        ty: a.event_type.as_deref().map(parse_type).transpose()?,
    };
    let limit = a.limit.unwrap_or(usize::MAX);
    let mut printed = 0usize;
    let mut next = a.from.max(1);
    let mut rows = Vec::new();
    loop {
        let ledger = ctx.ledger()?;
        let batch: Vec<RecordedEvent> = match (&filter.stream, filter.ty) {
            (Some(s), _) => ledger
                .read_stream(s, 1)?
                .into_iter()
                .filter(|r| r.seq >= next)
                .collect(),
            (None, Some(t)) => ledger.read_type(t, next, limit - printed)?,
            (None, None) => ledger.read_from(next, limit - printed)?,
        };
        drop(ledger);
        for rec in batch {
            next = rec.seq + 1;
            if !filter.keep(&rec) || printed >= limit {
                continue;
            }
            let env = rec
                .to_envelope()
                .map_err(|e| anyhow!("seq {}: {e}", rec.seq))?;
            printed += 1;
            if ctx.json {
                println!("{}", serde_json::to_string(&env)?);
            } else if a.follow {
                print_row(&env);
            } else {
                rows.push(row(&env));
            }
        }
        if !a.follow || printed >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !ctx.json && !a.follow {
        if rows.is_empty() {
            println!("no events");
        } else {
            crate::output::table(rows);
        }
    }
    Ok(())
}

fn row(env: &Envelope) -> Row {
    Row {
        seq: env.seq,
        time: env.recorded_at.to_rfc3339(),
        ty: env.event_type().as_str().to_string(),
        stream: env.stream.clone(),
        ver: env.stream_version,
        actor: env.actor.clone(),
        summary: summarize(&env.event),
    }
}

fn print_row(env: &Envelope) {
    let r = row(env);
    println!(
        "{:>8}  {}  {:<20} {:<40} {}",
        r.seq, r.time, r.ty, r.stream, r.summary
    );
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One line saying what an event is about.
pub fn summarize(e: &Event) -> String {
    match e {
        Event::RecipeDeclared(p) => format!("recipe {} ({})", short(&p.recipe_id), p.name),
        Event::DatasetPinned(p) => format!(
            "dataset {} from {} ({} shards)",
            short(&p.dataset_id),
            p.source,
            p.shards.len()
        ),
        Event::BaseModelPinned(p) => format!(
            "model {} {} ({} files)",
            short(&p.model_id),
            p.architecture,
            p.files.len()
        ),
        Event::RunRequested(p) => format!("run on {} (recipe {})", p.backend, short(&p.recipe_id)),
        Event::RunClaimed(p) => format!("claimed by {} (attempt {})", p.runner_id, p.attempt),
        Event::RunStarted(p) => format!(
            "{} steps on {} {}",
            p.total_steps, p.device.kind, p.device.dtype
        ),
        Event::RunHeartbeat(p) => format!("step {}", p.step),
        Event::MetricsLogged(p) => match (p.points.first(), p.points.last()) {
            (Some(a), Some(b)) => format!("steps {}..{} loss {:.4}", a.step, b.step, b.loss),
            _ => "no points".into(),
        },
        Event::CheckpointCommitted(p) => {
            format!("checkpoint {} at step {}", short(&p.checkpoint_id), p.step)
        }
        Event::RunResumed(p) => format!("resumed from step {} ({})", p.step, p.reason),
        Event::RunCompleted(p) => format!("completed after {} steps", p.steps),
        Event::RunFailed(p) => format!("failed: {}", p.reason),
        Event::RunAttemptFailed(p) => format!("attempt {} died: {}", p.attempt, p.reason),
        Event::RunCancelled(p) => format!("cancelled: {}", p.reason),
        Event::EvalRequested(p) => format!(
            "eval of {} on {}",
            p.checkpoint_id.as_deref().map(short).unwrap_or("base"),
            p.split
        ),
        Event::EvalScored(p) => {
            let fem = p
                .metrics
                .get("field_exact_match")
                .map(|m| format!("{:.3}", m.value))
                .unwrap_or_else(|| "-".into());
            format!(
                "{} field_exact_match {fem} ({} docs)",
                p.checkpoint_id.as_deref().map(short).unwrap_or("base"),
                p.examples
            )
        }
        Event::PromotionRequested(p) => format!("{} → {}", short(&p.checkpoint_id), p.channel),
        Event::AdapterPromoted(p) => {
            format!("{} promoted to {}", short(&p.checkpoint_id), p.channel)
        }
        Event::PromotionRejected(p) => format!(
            "{} rejected for {} ({} gates failed)",
            short(&p.checkpoint_id),
            p.channel,
            p.gates.iter().filter(|g| !g.passed).count()
        ),
        Event::ChannelRolledBack(p) => format!(
            "{} rolled back to {}",
            p.channel,
            p.to_checkpoint_id
                .as_deref()
                .map(short)
                .unwrap_or("nothing")
        ),
        Event::ModalJobSubmitted(p) => format!("modal {} on {}", p.function_call_id, p.gpu),
        Event::ModalJobUpdated(p) => format!("modal {} {}", p.function_call_id, p.state),
        Event::KeyRegistered(p) => format!(
            "key {} {}… roles {}{}",
            p.name,
            p.public_key.get(..12).unwrap_or(&p.public_key),
            p.roles.join(","),
            p.run_scope
                .as_deref()
                .map(|r| format!(" (run {r} only)"))
                .unwrap_or_default()
        ),
        Event::KeyRevoked(p) => format!(
            "key {} {}… revoked: {}",
            p.name,
            p.public_key.get(..12).unwrap_or(&p.public_key),
            p.reason
        ),
        Event::ChannelPolicySet(p) => format!(
            "policy of {}: {} gates, at least {} examples",
            p.channel,
            p.gates.len(),
            p.min_examples
        ),
        Event::RollbackRequested(p) => format!("roll back {}: {}", p.channel, p.reason),
        Event::RollbackRejected(p) => format!("rollback of {} refused: {}", p.channel, p.reason),
    }
}
