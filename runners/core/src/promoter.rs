//! The promoter runner: PromotionRequested (and EvalScored, for requests that
//! were waiting for their evidence) → AdapterPromoted or PromotionRejected,
//! following the recipe's policy for the channel and citing the evidence.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use foundry_events::{
    AdapterPromoted, EvalScored, Event, EventType, GateResult, MetricValue, PromotionRejected,
    PromotionRequested, RecordedEvent,
};
use foundry_ledger::{AppendRequest, NewEvent};
use foundry_recipes::{Channel, Recipe};

use crate::host::{Runner, RunnerContext};
use crate::{lookup, Delivery, Result, RunnerError};

/// The outcome of weighing a promotion against a channel's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether every gate passed.
    pub promote: bool,
    /// Every gate with its measured value.
    pub gates: Vec<GateResult>,
    /// One line: why.
    pub reason: String,
}

/// Weighs a candidate against `policy`: the actor restriction, every gate on
/// the candidate's metrics, and the margin over the production adapter's
/// metric when the policy asks for one. Pure, so it is tested on its own.
pub fn decide(
    policy: &Channel,
    actor: &str,
    candidate: &BTreeMap<String, MetricValue>,
    production: Option<(&str, &BTreeMap<String, MetricValue>)>,
) -> Decision {
    let mut gates = Vec::new();
    if let Some(allowed) = &policy.actors {
        let ok = policy.allows(actor);
        gates.push(GateResult {
            gate: format!("actor in [{}]", allowed.join(", ")),
            actual: None,
            passed: ok,
            detail: if ok {
                format!("{actor} may promote")
            } else {
                format!("{actor} may not promote to this channel")
            },
        });
    }
    for gate in policy.parsed_gates() {
        let actual = candidate.get(&gate.metric).map(|m| m.value);
        let (passed, detail) = match actual {
            Some(v) if v.is_finite() => (gate.passes(v), format!("{} = {v:.4}", gate.metric)),
            _ => (false, format!("no {} in the eval", gate.metric)),
        };
        gates.push(GateResult {
            gate: format!(
                "{} {} {}",
                gate.metric,
                match gate.op {
                    foundry_recipes::GateOp::Ge => ">=",
                    foundry_recipes::GateOp::Gt => ">",
                    foundry_recipes::GateOp::Le => "<=",
                    foundry_recipes::GateOp::Lt => "<",
                },
                gate.threshold
            ),
            actual,
            passed,
            detail,
        });
    }
    if let Some(points) = policy.beat_production_by {
        let metric = &policy.compare_metric;
        let gate = format!("{metric} beats production by {points} points");
        let mine = candidate.get(metric).map(|m| m.value);
        let result = match (production, mine) {
            (None, _) => GateResult {
                gate,
                actual: mine,
                passed: true,
                detail: "no production adapter to beat".into(),
            },
            (Some((id, prod)), Some(v)) => match prod.get(metric).map(|m| m.value) {
                Some(p) => {
                    let margin = (v - p) * 100.0;
                    GateResult {
                        gate,
                        actual: Some(margin),
                        passed: margin >= points,
                        detail: format!(
                            "{v:.4} vs production {} at {p:.4}: {margin:+.2} points",
                            short(id)
                        ),
                    }
                }
                None => GateResult {
                    gate,
                    actual: Some(v),
                    passed: true,
                    detail: format!("production {} has no {metric} on this split", short(id)),
                },
            },
            (Some(_), None) => GateResult {
                gate,
                actual: None,
                passed: false,
                detail: format!("no {metric} in the eval"),
            },
        };
        gates.push(result);
    }
    let failed: Vec<&GateResult> = gates.iter().filter(|g| !g.passed).collect();
    let promote = failed.is_empty();
    let reason = if promote {
        format!("all {} gates passed", gates.len())
    } else {
        format!(
            "failed: {}",
            failed
                .iter()
                .map(|g| format!("{} ({})", g.gate, g.detail))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    Decision {
        promote,
        gates,
        reason,
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The promoter runner.
#[derive(Default)]
pub struct PromoterRunner;

impl PromoterRunner {
    /// A promoter.
    pub fn new() -> Self {
        PromoterRunner
    }
}

/// The latest eval of `checkpoint_id` on `dataset_id`/`split`, with its event.
async fn latest_eval(
    ctx: &RunnerContext,
    checkpoint_id: &str,
    dataset_id: &str,
    split: &str,
) -> Result<Option<(RecordedEvent, EvalScored)>> {
    let mut best = None;
    for (r, e) in lookup::all_of_type(ctx.client.as_ref(), EventType::EvalScored).await? {
        if let Event::EvalScored(s) = e {
            if s.checkpoint_id.as_deref() == Some(checkpoint_id)
                && s.dataset_id == dataset_id
                && s.split == split
            {
                best = Some((r, s));
            }
        }
    }
    Ok(best)
}

impl PromoterRunner {
    /// Decides one request, unless it is waiting for its eval. Idempotent:
    /// the decision's key is derived from the request.
    async fn consider(
        &self,
        ctx: &RunnerContext,
        request: &RecordedEvent,
        p: &PromotionRequested,
    ) -> Result<()> {
        let key = crate::outcome_key("promoter", &request.event_id, "decision");
        let reject = |reason: String, gates: Vec<GateResult>, evidence: Vec<String>| {
            Event::PromotionRejected(PromotionRejected {
                checkpoint_id: p.checkpoint_id.clone(),
                channel: p.channel.clone(),
                gates,
                evidence,
                reason,
            })
        };
        let request_id = request.event_id.to_string();
        let outcome = match self.weigh(ctx, request, p).await? {
            Weighed::Waiting => return Ok(()),
            Weighed::Refused(reason) => reject(reason, vec![], vec![request_id]),
            Weighed::Decided {
                decision,
                evidence,
                previous,
            } => {
                if decision.promote {
                    Event::AdapterPromoted(AdapterPromoted {
                        checkpoint_id: p.checkpoint_id.clone(),
                        channel: p.channel.clone(),
                        previous_checkpoint_id: previous,
                        gates: decision.gates,
                        evidence,
                        reason: p.reason.clone(),
                    })
                } else {
                    reject(decision.reason, decision.gates, evidence)
                }
            }
        };
        ctx.client
            .append(
                AppendRequest::new(
                    ctx.actor.clone(),
                    vec![NewEvent::new(outcome).caused_by(request.event_id, request.correlation_id)],
                )
                .idempotent(key),
            )
            .await?;
        Ok(())
    }

    async fn weigh(
        &self,
        ctx: &RunnerContext,
        request: &RecordedEvent,
        p: &PromotionRequested,
    ) -> Result<Weighed> {
        let client = ctx.client.as_ref();
        let checkpoint = match lookup::checkpoint(client, &p.checkpoint_id).await {
            Ok((_, c)) => c,
            Err(RunnerError::Missing(m)) => return Ok(Weighed::Refused(m)),
            Err(e) => return Err(e),
        };
        let run = lookup::run_request(client, &checkpoint.run_id).await?;
        let declared = lookup::recipe(client, &run.recipe_id).await?;
        let recipe: Recipe = serde_json::from_value(declared.resolved_config.clone())
            .map_err(|e| RunnerError::Missing(format!("recipe {}: {e}", run.recipe_id)))?;
        let Some(policy) = recipe.promotion.get(&p.channel) else {
            return Ok(Weighed::Refused(format!(
                "recipe {} has no promotion policy for channel {:?}",
                recipe.name, p.channel
            )));
        };
        let split = &recipe.eval.split;
        let Some((eval_rec, eval)) =
            latest_eval(ctx, &p.checkpoint_id, &run.dataset_id, split).await?
        else {
            return Ok(Weighed::Waiting);
        };
        let (current, _) = lookup::channel_state(client, &p.channel).await?;
        let (production, _) = lookup::channel_state(client, "production").await?;
        let mut evidence = vec![eval_rec.event_id.to_string(), request.event_id.to_string()];
        let prod_eval = match production.as_deref() {
            Some(id) if id != p.checkpoint_id => {
                let e = latest_eval(ctx, id, &run.dataset_id, split).await?;
                if let Some((r, _)) = &e {
                    evidence.push(r.event_id.to_string());
                }
                e.map(|(_, s)| (id.to_string(), s.metrics))
            }
            _ => None,
        };
        let decision = decide(
            policy,
            &request.actor,
            &eval.metrics,
            prod_eval.as_ref().map(|(id, m)| (id.as_str(), m)),
        );
        Ok(Weighed::Decided {
            decision,
            evidence,
            previous: current,
        })
    }

    /// Requests for `checkpoint_id` that have no decision yet.
    async fn pending_for(
        &self,
        ctx: &RunnerContext,
        checkpoint_id: &str,
    ) -> Result<Vec<(RecordedEvent, PromotionRequested)>> {
        let client = ctx.client.as_ref();
        let mut decided: HashSet<uuid::Uuid> = HashSet::new();
        for ty in [EventType::AdapterPromoted, EventType::PromotionRejected] {
            for (r, _) in lookup::all_of_type(client, ty).await? {
                if let Some(c) = r.causation_id {
                    decided.insert(c);
                }
            }
        }
        let mut out = Vec::new();
        for (r, e) in lookup::all_of_type(client, EventType::PromotionRequested).await? {
            if let Event::PromotionRequested(p) = e {
                if p.checkpoint_id == checkpoint_id && !decided.contains(&r.event_id) {
                    out.push((r, p));
                }
            }
        }
        Ok(out)
    }
}

enum Weighed {
    Waiting,
    Refused(String),
    Decided {
        decision: Decision,
        evidence: Vec<String>,
        previous: Option<String>,
    },
}

#[async_trait]
impl Runner for PromoterRunner {
    fn name(&self) -> &str {
        "promoter"
    }

    fn reacts_to(&self) -> Vec<EventType> {
        vec![EventType::PromotionRequested, EventType::EvalScored]
    }

    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> Result<()> {
        match delivery.event.decode_event()? {
            Event::PromotionRequested(p) => self.consider(ctx, &delivery.event, &p).await,
            Event::EvalScored(s) => {
                let Some(checkpoint_id) = s.checkpoint_id else {
                    return Ok(());
                };
                for (r, p) in self.pending_for(ctx, &checkpoint_id).await? {
                    self.consider(ctx, &r, &p).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
