//! `ledger promote <checkpoint> --to <channel>` and `ledger rollback
//! <channel>`: requests the promoter decides under the channel's policies.

use anyhow::{bail, Result};
use foundry_events::{Event, PromotionRequested, RollbackRequested};
use foundry_ledger::{AppendRequest, NewEvent};
use foundry_projections::{resolve, ViewKind, ViewStore};

use super::embedded::{self, Which};
use crate::context::Context;

/// Options of `ledger promote`.
#[derive(clap::Args)]
pub struct PromoteArgs {
    /// The checkpoint (adapter) to promote: id or unique prefix.
    checkpoint: String,
    /// The channel (staging, production, …).
    #[arg(long = "to")]
    channel: String,
    /// Why, in your words (recorded).
    #[arg(long, default_value = "")]
    reason: String,
    /// Only record the request; the promoter decides later.
    #[arg(long)]
    detach: bool,
}

/// Options of `ledger rollback`.
#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The channel to roll back.
    channel: String,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    reason: String,
}

/// Requests a promotion and, in embedded mode, lets the promoter decide it.
pub fn promote(ctx: &Context, a: PromoteArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let mut views = ViewStore::open(&ctx.home)?;
    views.catch_up(&ledger)?;
    let checkpoint_id = resolve(&views, ViewKind::Checkpoints, &a.checkpoint)?;
    let rec = ctx
        .append(
            &ledger,
            AppendRequest::new(vec![NewEvent::new(PromotionRequested {
                checkpoint_id: checkpoint_id.clone(),
                channel: a.channel.clone(),
                reason: a.reason,
            })]),
        )?
        .events
        .remove(0);
    if a.detach {
        println!("promotion of {checkpoint_id} to {} requested", a.channel);
        return Ok(());
    }
    let stream = format!("channel/{}", a.channel);
    embedded::drive_until(ctx, &ledger, Which::JUDGES, |l| {
        Ok(l.read_stream(&stream, 1)?
            .iter()
            .any(|r| r.causation_id == Some(rec.event_id)))
    })?;
    // The decision is the event caused by the request.
    for r in ledger.read_stream(&format!("channel/{}", a.channel), 1)? {
        if r.causation_id != Some(rec.event_id) {
            continue;
        }
        match r.decode_event()? {
            Event::AdapterPromoted(p) => {
                if ctx.json {
                    crate::output::json(
                        &serde_json::json!({"promoted": true, "seq": r.seq, "decision": p}),
                    )?;
                } else {
                    println!(
                        "promoted {} to {} (seq {})",
                        p.checkpoint_id, p.channel, r.seq
                    );
                    for g in &p.gates {
                        println!("  pass  {}  ({})", g.gate, g.detail);
                    }
                }
                return Ok(());
            }
            Event::PromotionRejected(p) => {
                if ctx.json {
                    crate::output::json(
                        &serde_json::json!({"promoted": false, "seq": r.seq, "decision": p}),
                    )?;
                } else {
                    for g in &p.gates {
                        println!(
                            "  {}  {}  ({})",
                            if g.passed { "pass" } else { "FAIL" },
                            g.gate,
                            g.detail
                        );
                    }
                }
                bail!(
                    "promotion of {} to {} rejected: {}",
                    p.checkpoint_id,
                    p.channel,
                    p.reason
                );
            }
            _ => {}
        }
    }
    println!(
        "promotion of {checkpoint_id} to {} is waiting for an eval of that checkpoint",
        a.channel
    );
    Ok(())
}

/// Asks for a channel to go back to the adapter it held before its current
/// one; in embedded mode the promoter decides here (the channel's policy
/// says who may), with `--nats` the promoter on the bus does.
pub fn rollback(ctx: &Context, a: RollbackArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let rec = ctx
        .append(
            &ledger,
            AppendRequest::new(vec![NewEvent::new(RollbackRequested {
                channel: a.channel.clone(),
                reason: a.reason,
            })]),
        )?
        .events
        .remove(0);
    let stream = format!("channel/{}", a.channel);
    embedded::drive_until(ctx, &ledger, Which::JUDGES, |l| {
        Ok(l.read_stream(&stream, 1)?
            .iter()
            .any(|r| r.causation_id == Some(rec.event_id)))
    })?;
    for r in ledger.read_stream(&stream, 1)? {
        if r.causation_id != Some(rec.event_id) {
            continue;
        }
        match r.decode_event()? {
            Event::ChannelRolledBack(p) => {
                if ctx.json {
                    crate::output::json(&serde_json::json!({
                        "channel": p.channel, "from": p.from_checkpoint_id,
                        "to": p.to_checkpoint_id, "seq": r.seq,
                    }))?;
                } else {
                    println!(
                        "{}: {} -> {} (seq {})",
                        p.channel,
                        p.from_checkpoint_id.as_deref().unwrap_or("(empty)"),
                        p.to_checkpoint_id.as_deref().unwrap_or("(empty)"),
                        r.seq
                    );
                }
                return Ok(());
            }
            Event::RollbackRejected(p) => {
                bail!("rollback of {} refused: {}", p.channel, p.reason)
            }
            _ => {}
        }
    }
    bail!(
        "rollback of {} requested (seq {}), but no promoter decided it in time",
        a.channel,
        rec.seq
    )
}
