//! The promoter runner: PromotionRequested (and EvalScored, for requests that
//! were waiting for their evidence) → AdapterPromoted or PromotionRejected,
//! and RollbackRequested → ChannelRolledBack or RollbackRejected, following
//! the channel's policies and citing the evidence with who signed it.
//!
//! Two policies bind a channel. The recipe that trained the candidate
//! names one (`[promotion.<channel>]`: requesters, trusted evaluators,
//! gates, the margin over production). An admin may pin one on the channel
//! itself (ChannelPolicySet): it binds every candidate whatever its recipe
//! says, so nobody lowers the bar by declaring a lenient recipe. Both must
//! be satisfied.
//!
//! Evidence is an EvalScored that the ledger accepted from a key with the
//! evaluator role (the ledger refuses any other signer), that both policies
//! trust by name, on the run's dataset and the recipe's eval split, with
//! the split's hash and the eval spec's hash the recipe implies, and with
//! at least the policy's minimum of examples (always at least one).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use foundry_events::{
    AdapterPromoted, ChannelPolicySet, ChannelRolledBack, DatasetPinned, EvalScored, Event,
    EventType, EvidenceSigner, GateResult, MetricValue, PromotionRejected, PromotionRequested,
    RecordedEvent, RollbackRejected, RollbackRequested, Sha256Digest,
};
use foundry_recipes::{Channel, Gate, GateOp};

use crate::host::{Runner, RunnerContext};
use crate::{lookup, Delivery, EvalSpecs, Result, RunnerError};

/// The outcome of weighing a promotion against a channel's policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether every gate passed.
    pub promote: bool,
    /// Every gate with its measured value.
    pub gates: Vec<GateResult>,
    /// One line: why.
    pub reason: String,
}

fn op_text(op: &GateOp) -> &'static str {
    match op {
        GateOp::Ge => ">=",
        GateOp::Gt => ">",
        GateOp::Le => "<=",
        GateOp::Lt => "<",
    }
}

fn requester_gate(list: &[String], actor: &str, whose: &str) -> GateResult {
    let ok = list.iter().any(|a| a == actor);
    GateResult {
        gate: format!("{whose} requesters [{}]", list.join(", ")),
        actual: None,
        passed: ok,
        detail: if ok {
            format!("{actor} may request it")
        } else {
            format!("{actor} may not request it")
        },
    }
}

fn metric_gate(gate: &Gate, candidate: &BTreeMap<String, MetricValue>, whose: &str) -> GateResult {
    let actual = candidate.get(&gate.metric).map(|m| m.value);
    let (passed, detail) = match actual {
        Some(v) if v.is_finite() => (gate.passes(v), format!("{} = {v:.4}", gate.metric)),
        _ => (false, format!("no {} in the eval", gate.metric)),
    };
    let prefix = if whose == "recipe" {
        String::new()
    } else {
        format!("{whose}: ")
    };
    GateResult {
        gate: format!(
            "{prefix}{} {} {}",
            gate.metric,
            op_text(&gate.op),
            gate.threshold
        ),
        actual,
        passed,
        detail,
    }
}

/// Weighs a candidate against the recipe's `policy` and, when an admin set
/// one, the channel's own `pinned` policy: who requested it, every gate on
/// the candidate's metrics, and the margin over the production adapter's
/// metric when the recipe asks for one. Pure, so it is tested on its own.
pub fn decide(
    policy: &Channel,
    pinned: Option<&ChannelPolicySet>,
    actor: &str,
    candidate: &BTreeMap<String, MetricValue>,
    production: Option<(&str, &BTreeMap<String, MetricValue>)>,
) -> Decision {
    let mut gates = Vec::new();
    if let Some(list) = pinned.and_then(|p| p.requesters.as_ref()) {
        gates.push(requester_gate(list, actor, "channel policy"));
    }
    if let Some(list) = &policy.actors {
        gates.push(requester_gate(list, actor, "recipe"));
    }
    for gate in policy.parsed_gates() {
        gates.push(metric_gate(&gate, candidate, "recipe"));
    }
    for text in pinned.map(|p| p.gates.as_slice()).unwrap_or_default() {
        match text.parse::<Gate>() {
            Ok(gate) => gates.push(metric_gate(&gate, candidate, "channel policy")),
            Err(e) => gates.push(GateResult {
                gate: format!("channel policy: {text}"),
                actual: None,
                passed: false,
                detail: format!("not a gate: {e}"),
            }),
        }
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

/// What an eval must match to count as evidence for a channel.
pub struct EvidenceRules<'a> {
    /// The run's pinned dataset.
    pub dataset: &'a DatasetPinned,
    /// The recipe's eval split.
    pub split: &'a str,
    /// The eval spec hash the recipe implies.
    pub spec: Sha256Digest,
    /// The recipe's policy for the channel.
    pub recipe: &'a Channel,
    /// The channel's own policy, if an admin set one.
    pub pinned: Option<&'a ChannelPolicySet>,
}

impl EvidenceRules<'_> {
    /// Why an eval, signed by `signer`, does not count; `None` when it does.
    pub fn disqualify(&self, signer: &str, e: &EvalScored) -> Option<String> {
        if !self.recipe.trusts(signer) {
            return Some(format!(
                "signed by {signer}, not an evaluator the recipe trusts"
            ));
        }
        if let Some(list) = self.pinned.and_then(|p| p.evaluators.as_ref()) {
            if !list.iter().any(|x| x == signer) {
                return Some(format!(
                    "signed by {signer}, not an evaluator the channel policy trusts"
                ));
            }
        }
        if e.dataset_id != self.dataset.dataset_id || e.split != self.split {
            return Some(format!(
                "scored {}/{}, not the recipe's {}/{}",
                short(&e.dataset_id),
                e.split,
                short(&self.dataset.dataset_id),
                self.split
            ));
        }
        if e.split_sha256 != self.dataset.split_sha256(self.split) {
            return Some("its split hash is not the pinned split's".into());
        }
        if e.eval_spec_sha256 != self.spec {
            return Some(format!(
                "its eval spec {} is not the recipe's {}",
                e.eval_spec_sha256.short(),
                self.spec.short()
            ));
        }
        let min = self.pinned.map_or(1, |p| p.min_examples.max(1));
        if e.examples < min {
            return Some(format!("{} examples, fewer than {min}", e.examples));
        }
        None
    }
}

/// Who signed an evidence event.
fn signer_of(r: &RecordedEvent) -> EvidenceSigner {
    EvidenceSigner {
        event_id: r.event_id.to_string(),
        event_type: r.event_type.clone(),
        actor: r.actor.clone(),
        signer: r.signer.clone(),
    }
}

/// The channel's own policy: its latest ChannelPolicySet, if any.
pub async fn pinned_policy(ctx: &RunnerContext, channel: &str) -> Result<Option<ChannelPolicySet>> {
    let mut out = None;
    for (_, e) in lookup::stream_events(ctx.client.as_ref(), &format!("channel/{channel}")).await? {
        if let Event::ChannelPolicySet(p) = e {
            out = Some(p);
        }
    }
    Ok(out)
}

/// The promoter runner.
pub struct PromoterRunner {
    specs: Arc<dyn EvalSpecs>,
}

impl PromoterRunner {
    /// A promoter that knows, through `specs`, which eval spec a recipe
    /// implies (the eval harness's own rule).
    pub fn new(specs: Arc<dyn EvalSpecs>) -> Self {
        PromoterRunner { specs }
    }
}

/// The latest eval of `checkpoint_id` that counts under `rules`, with its event.
async fn latest_evidence(
    ctx: &RunnerContext,
    checkpoint_id: &str,
    rules: &EvidenceRules<'_>,
) -> Result<Option<(RecordedEvent, EvalScored)>> {
    let mut best = None;
    for (r, e) in lookup::all_of_type(ctx.client.as_ref(), EventType::EvalScored).await? {
        if let Event::EvalScored(s) = e {
            if s.checkpoint_id.as_deref() == Some(checkpoint_id)
                && rules.disqualify(&r.actor, &s).is_none()
            {
                best = Some((r, s));
            }
        }
    }
    Ok(best)
}

enum Weighed {
    Waiting,
    Refused(String),
    Decided {
        decision: Decision,
        evidence: Vec<RecordedEvent>,
        previous: Option<String>,
    },
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
        let reject = |reason: String, gates: Vec<GateResult>, evidence: &[RecordedEvent]| {
            Event::PromotionRejected(PromotionRejected {
                checkpoint_id: p.checkpoint_id.clone(),
                channel: p.channel.clone(),
                gates,
                evidence: evidence.iter().map(|r| r.event_id.to_string()).collect(),
                signed_by: evidence.iter().map(signer_of).collect(),
                reason,
            })
        };
        let outcome = match self.weigh(ctx, request, p).await? {
            Weighed::Waiting => return Ok(()),
            Weighed::Refused(reason) => reject(reason, vec![], std::slice::from_ref(request)),
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
                        evidence: evidence.iter().map(|r| r.event_id.to_string()).collect(),
                        signed_by: evidence.iter().map(signer_of).collect(),
                        reason: p.reason.clone(),
                    })
                } else {
                    reject(decision.reason, decision.gates, &evidence)
                }
            }
        };
        crate::append_outcome(ctx, request, Some(key), vec![outcome]).await
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
        let recipe = lookup::typed(declared.clone())?;
        let Some(policy) = recipe.promotion.get(&p.channel) else {
            return Ok(Weighed::Refused(format!(
                "recipe {} has no promotion policy for channel {:?}",
                recipe.name, p.channel
            )));
        };
        let pinned = pinned_policy(ctx, &p.channel).await?;
        let dataset = lookup::dataset(client, &run.dataset_id).await?;
        let split = recipe.eval.split.clone();
        let limit = u64::try_from(recipe.eval.max_examples)
            .ok()
            .filter(|n| *n > 0);
        let spec = self
            .specs
            .spec_sha256(Some(&declared.resolved_config), &split, limit)
            .map_err(RunnerError::Engine)?;
        let rules = EvidenceRules {
            dataset: &dataset,
            split: &split,
            spec,
            recipe: policy,
            pinned: pinned.as_ref(),
        };
        let Some((eval_rec, eval)) = latest_evidence(ctx, &p.checkpoint_id, &rules).await? else {
            return Ok(Weighed::Waiting);
        };
        let (current, _) = lookup::channel_state(client, &p.channel).await?;
        let (production, _) = lookup::channel_state(client, "production").await?;
        let mut evidence = vec![eval_rec, request.clone()];
        let prod_eval = match production.as_deref() {
            Some(id) if id != p.checkpoint_id => {
                let e = latest_evidence(ctx, id, &rules).await?;
                if let Some((r, _)) = &e {
                    evidence.push(r.clone());
                }
                e.map(|(_, s)| (id.to_string(), s.metrics))
            }
            _ => None,
        };
        let decision = decide(
            policy,
            pinned.as_ref(),
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

    /// Rolls a channel back to the adapter it held before its current one,
    /// if the requester may: the channel policy's rollbackers (else its
    /// requesters) and the current adapter's recipe's requesters for the
    /// channel must name them, when set.
    async fn rollback(
        &self,
        ctx: &RunnerContext,
        request: &RecordedEvent,
        r: &RollbackRequested,
    ) -> Result<()> {
        let key = crate::outcome_key("promoter", &request.event_id, "rollback");
        let refuse = |reason: String| {
            Event::RollbackRejected(RollbackRejected {
                channel: r.channel.clone(),
                reason,
            })
        };
        let stack = lookup::channel_stack(ctx.client.as_ref(), &r.channel).await?;
        let refusal = self
            .may_roll_back(
                ctx,
                &request.actor,
                &r.channel,
                stack.last().map(String::as_str),
            )
            .await?;
        let outcome = match (refusal, stack.last()) {
            (Some(why), _) => refuse(why),
            (None, None) => refuse(format!(
                "channel {:?} serves no adapter; nothing to roll back",
                r.channel
            )),
            (None, Some(current)) => Event::ChannelRolledBack(ChannelRolledBack {
                channel: r.channel.clone(),
                from_checkpoint_id: Some(current.clone()),
                to_checkpoint_id: stack.len().checked_sub(2).map(|i| stack[i].clone()),
                reason: r.reason.clone(),
            }),
        };
        crate::append_outcome(ctx, request, Some(key), vec![outcome]).await
    }

    /// `None` when `actor` may roll `channel` back from `current`, else why not.
    async fn may_roll_back(
        &self,
        ctx: &RunnerContext,
        actor: &str,
        channel: &str,
        current: Option<&str>,
    ) -> Result<Option<String>> {
        if let Some(p) = pinned_policy(ctx, channel).await? {
            if let Some(list) = p.rollbackers.as_ref().or(p.requesters.as_ref()) {
                if !list.iter().any(|a| a == actor) {
                    return Ok(Some(format!(
                        "{actor} may not roll back {channel}: the channel policy allows [{}]",
                        list.join(", ")
                    )));
                }
            }
        }
        let client = ctx.client.as_ref();
        let Some(current) = current else {
            return Ok(None);
        };
        if let Ok((_, c)) = lookup::checkpoint(client, current).await {
            let run = lookup::run_request(client, &c.run_id).await?;
            let recipe = lookup::typed_recipe(client, &run.recipe_id).await?;
            if let Some(policy) = recipe.promotion.get(channel) {
                if !policy.allows(actor) {
                    return Ok(Some(format!(
                        "{actor} may not roll back {channel}: recipe {} allows [{}]",
                        recipe.name,
                        policy.actors.clone().unwrap_or_default().join(", ")
                    )));
                }
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Runner for PromoterRunner {
    fn name(&self) -> &str {
        "promoter"
    }

    fn reacts_to(&self) -> Vec<EventType> {
        vec![
            EventType::PromotionRequested,
            EventType::EvalScored,
            EventType::RollbackRequested,
        ]
    }

    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> Result<()> {
        match delivery.event.decode_event()? {
            Event::PromotionRequested(p) => self.consider(ctx, &delivery.event, &p).await,
            Event::RollbackRequested(r) => self.rollback(ctx, &delivery.event, &r).await,
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
