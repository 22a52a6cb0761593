//! `ledger promote <checkpoint> --to <channel>` and `ledger rollback
//! <channel>`: requests the promoter decides under the channel's policies.

use anyhow::{bail, Result};
use foundry_events::{Event, PromotionRequested, RecordedEvent, RollbackRequested};
use foundry_ledger::{AppendRequest, Ledger, NewEvent};
use foundry_projections::{resolve, ViewKind};

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

/// Appends `request` to the channel, lets the promoter decide it (here in
/// embedded mode, on the bus with `--nats`) and returns the decision: the
/// event of the channel caused by the request, if one came.
fn request_and_decide(
    ctx: &Context,
    ledger: &Ledger,
    channel: &str,
    request: Event,
    detach: bool,
) -> Result<(RecordedEvent, Option<(u64, Event)>)> {
    let rec = ctx
        .append(ledger, AppendRequest::new(vec![NewEvent::new(request)]))?
        .events
        .remove(0);
    if detach {
        return Ok((rec, None));
    }
    let stream = format!("channel/{channel}");
    let caused = |l: &Ledger| -> Result<Option<RecordedEvent>> {
        Ok(l.read_stream(&stream, 1)?
            .into_iter()
            .find(|r| r.causation_id == Some(rec.event_id)))
    };
    embedded::drive_until(ctx, ledger, Which::JUDGES, |l| Ok(caused(l)?.is_some()))?;
    let decision = match caused(ledger)? {
        Some(r) => Some((r.seq, r.decode_event()?)),
        None => None,
    };
    Ok((rec, decision))
}

/// Requests a promotion and, in embedded mode, lets the promoter decide it.
pub fn promote(ctx: &Context, a: PromoteArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let views = ctx.views(&ledger)?;
    let checkpoint_id = resolve(&views, ViewKind::Checkpoints, &a.checkpoint)?;
    let request = Event::PromotionRequested(PromotionRequested {
        checkpoint_id: checkpoint_id.clone(),
        channel: a.channel.clone(),
        reason: a.reason,
    });
    let (_, decision) = request_and_decide(ctx, &ledger, &a.channel, request, a.detach)?;
    if a.detach {
        println!("promotion of {checkpoint_id} to {} requested", a.channel);
        return Ok(());
    }
    if let Some((seq, event)) = decision {
        match event {
            Event::AdapterPromoted(p) => {
                if ctx.json {
                    crate::output::json(
                        &serde_json::json!({"promoted": true, "seq": seq, "decision": p}),
                    )?;
                } else {
                    println!("promoted {} to {} (seq {seq})", p.checkpoint_id, p.channel);
                    for g in &p.gates {
                        println!("  pass  {}  ({})", g.gate, g.detail);
                    }
                }
                return Ok(());
            }
            Event::PromotionRejected(p) => {
                if ctx.json {
                    crate::output::json(
                        &serde_json::json!({"promoted": false, "seq": seq, "decision": p}),
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
    let request = Event::RollbackRequested(RollbackRequested {
        channel: a.channel.clone(),
        reason: a.reason,
    });
    let (rec, decision) = request_and_decide(ctx, &ledger, &a.channel, request, false)?;
    if let Some((seq, event)) = decision {
        match event {
            Event::ChannelRolledBack(p) => {
                if ctx.json {
                    crate::output::json(&serde_json::json!({
                        "channel": p.channel, "from": p.from_checkpoint_id,
                        "to": p.to_checkpoint_id, "seq": seq,
                    }))?;
                } else {
                    println!(
                        "{}: {} -> {} (seq {seq})",
                        p.channel,
                        p.from_checkpoint_id.as_deref().unwrap_or("(empty)"),
                        p.to_checkpoint_id.as_deref().unwrap_or("(empty)"),
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
