//! The folds: [`State::apply`] turns one event into changes of the views.
//! Pure: no I/O, no clock, no randomness; the same events in the same order
//! always give the same state, byte for byte.

use crate::views::*;
use foundry_events::{
    CodeVersion, Envelope, Event, GateResult, MetricValue, RollbackRejected, RollbackRequested,
    Sha256Digest,
};
use std::collections::{BTreeMap, BTreeSet};

/// Every view, in memory, as of `last_seq`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Seq of the last event applied (0: none).
    pub last_seq: u64,
    /// Hash of the last event applied.
    pub last_hash: Sha256Digest,
    /// Recipes by id.
    pub recipes: BTreeMap<String, RecipeView>,
    /// Datasets by id.
    pub datasets: BTreeMap<String, DatasetView>,
    /// Base models by id.
    pub models: BTreeMap<String, ModelView>,
    /// Runs by id.
    pub runs: BTreeMap<String, RunView>,
    /// Checkpoints by id.
    pub checkpoints: BTreeMap<String, CheckpointView>,
    /// Evals by id.
    pub evals: BTreeMap<String, EvalView>,
    /// Channels by name.
    pub channels: BTreeMap<String, ChannelView>,
    /// Lineage nodes by `kind:id`.
    pub lineage: BTreeMap<String, LineageNodeView>,
    /// Citable events by event id.
    pub evidence: BTreeMap<String, EvidenceView>,
    /// Entities changed since tracking began, when tracking.
    dirty: Option<BTreeSet<(ViewKind, String)>>,
}

fn event_ref(env: &Envelope) -> EventRef {
    EventRef {
        seq: env.seq,
        event_id: env.event_id.to_string(),
        at: env.recorded_at,
        actor: env.actor.clone(),
    }
}

/// Records that entry `id` of `kind` changed, when changes are tracked.
fn mark(dirty: &mut Option<BTreeSet<(ViewKind, String)>>, kind: ViewKind, id: &str) {
    if let Some(d) = dirty {
        if !d.contains(&(kind, id.to_string())) {
            d.insert((kind, id.to_string()));
        }
    }
}

/// Inserts entry `id` of a view made by `make` unless it exists (pins: the
/// first one wins).
fn insert_first<V>(
    map: &mut BTreeMap<String, V>,
    dirty: &mut Option<BTreeSet<(ViewKind, String)>>,
    kind: ViewKind,
    id: &str,
    make: impl FnOnce() -> V,
) {
    if !map.contains_key(id) {
        mark(dirty, kind, id);
        map.insert(id.to_string(), make());
    }
}

/// Appends `run_id` to the run list `runs` picks out of entry `id`, if the
/// entry exists (recipes, datasets and models list the runs that use them).
fn add_run<V>(
    map: &mut BTreeMap<String, V>,
    dirty: &mut Option<BTreeSet<(ViewKind, String)>>,
    kind: ViewKind,
    id: &str,
    run_id: &str,
    runs: impl FnOnce(&mut V) -> &mut Vec<String>,
) {
    if let Some(x) = map.get_mut(id) {
        runs(x).push(run_id.to_string());
        mark(dirty, kind, id);
    }
}

/// An eval entry made from the first event naming it, a request or a score
/// (both carry the eval's target under the same field names).
macro_rules! new_eval {
    ($p:expr, $status:expr, $limit:expr) => {
        EvalView {
            eval_id: $p.eval_id.clone(),
            status: $status.into(),
            checkpoint_id: $p.checkpoint_id.clone(),
            run_id: $p.run_id.clone(),
            model_id: $p.model_id.clone(),
            dataset_id: $p.dataset_id.clone(),
            split: $p.split.clone(),
            limit: $limit,
            requested: None,
            scored: None,
            examples: None,
            metrics: BTreeMap::new(),
            split_sha256: None,
            eval_spec_sha256: None,
            latency_ms_mean: None,
        }
    };
}

/// One step of a channel's history.
fn channel_entry(
    action: &str,
    checkpoint_id: Option<String>,
    previous_checkpoint_id: Option<String>,
    reason: &str,
    gates: Vec<GateResult>,
    evidence: Vec<EvidenceRef>,
    event: &EventRef,
) -> ChannelEntry {
    ChannelEntry {
        action: action.to_string(),
        checkpoint_id,
        previous_checkpoint_id,
        reason: reason.to_string(),
        gates,
        evidence,
        event: event.clone(),
    }
}

fn push_unique(v: &mut Vec<String>, id: &str) {
    if !v.iter().any(|x| x == id) {
        v.push(id.to_string());
    }
}

/// `name=0.9510 [0.9300, 0.9700]` for each headline metric.
pub fn format_metrics(metrics: &BTreeMap<String, MetricValue>) -> String {
    metrics
        .iter()
        .map(|(k, m)| match (m.ci_low, m.ci_high) {
            (Some(lo), Some(hi)) => format!("{k}={:.4} [{lo:.4}, {hi:.4}]", m.value),
            _ => format!("{k}={:.4}", m.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl State {
    /// An empty state (before seq 1).
    pub fn new() -> Self {
        State::default()
    }

    /// Starts recording which entities change, for incremental persistence.
    pub fn track_changes(&mut self) {
        self.dirty = Some(BTreeSet::new());
    }

    /// The entities changed since [`State::track_changes`], and stops tracking.
    pub fn take_changes(&mut self) -> BTreeSet<(ViewKind, String)> {
        self.dirty.take().unwrap_or_default()
    }

    fn mark(&mut self, kind: ViewKind, id: &str) {
        mark(&mut self.dirty, kind, id);
    }

    fn run(&mut self, id: &str) -> &mut RunView {
        self.mark(ViewKind::Runs, id);
        self.runs
            .entry(id.to_string())
            .or_insert_with(|| RunView::new(id))
    }

    /// A run event: counts it and widens the run's seq range.
    fn run_event(&mut self, id: &str, seq: u64) -> &mut RunView {
        let r = self.run(id);
        if r.event_count == 0 {
            r.first_seq = seq;
        }
        r.event_count += 1;
        r.last_seq = seq;
        r
    }

    fn checkpoint(&mut self, id: &str) -> Option<&mut CheckpointView> {
        if self.checkpoints.contains_key(id) {
            self.mark(ViewKind::Checkpoints, id);
        }
        self.checkpoints.get_mut(id)
    }

    fn channel(&mut self, name: &str) -> &mut ChannelView {
        self.mark(ViewKind::Channels, name);
        self.channels
            .entry(name.to_string())
            .or_insert_with(|| ChannelView {
                channel: name.to_string(),
                current_checkpoint_id: None,
                current_entry: None,
                history: Vec::new(),
            })
    }

    /// Adds `child ← parent` to the lineage graph, once per (relation, node).
    fn edge(&mut self, child: NodeRef, rel_in: &str, parent: NodeRef, rel_out: &str, seq: u64) {
        let ck = child.key();
        let pk = parent.key();
        let c = self.lineage.entry(ck.clone()).or_default();
        if c.inputs.iter().any(|e| e.rel == rel_in && e.node == parent) {
            return;
        }
        c.inputs.push(Edge {
            rel: rel_in.to_string(),
            node: parent,
            seq,
        });
        self.lineage
            .entry(pk.clone())
            .or_default()
            .outputs
            .push(Edge {
                rel: rel_out.to_string(),
                node: child,
                seq,
            });
        self.mark(ViewKind::Lineage, &ck);
        self.mark(ViewKind::Lineage, &pk);
    }

    /// Records a promotion step on the checkpoint and on its run.
    fn promotion(
        &mut self,
        checkpoint_id: &str,
        channel: &str,
        outcome: &str,
        reason: &str,
        ev: &EventRef,
    ) {
        let p = PromotionRef {
            checkpoint_id: checkpoint_id.to_string(),
            channel: channel.to_string(),
            outcome: outcome.to_string(),
            reason: reason.to_string(),
            event: ev.clone(),
        };
        let Some(c) = self.checkpoint(checkpoint_id) else {
            return;
        };
        c.promotions.push(p.clone());
        let run_id = c.run_id.clone();
        self.run(&run_id).promotions.push(p);
    }

    /// Moves `channel` to serve `to` (or nothing), updating the checkpoints'
    /// `channels` lists.
    fn serve(&mut self, channel: &str, to: Option<&str>, entry: usize) {
        let from = self.channel(channel).current_checkpoint_id.clone();
        if let Some(f) = from.as_deref() {
            if let Some(c) = self.checkpoint(f) {
                c.channels.retain(|x| x != channel);
            }
        }
        if let Some(t) = to {
            if let Some(c) = self.checkpoint(t) {
                push_unique(&mut c.channels, channel);
                c.channels.sort();
            }
        }
        let ch = self.channel(channel);
        ch.current_checkpoint_id = to.map(str::to_string);
        ch.current_entry = Some(entry);
    }

    fn resolve_evidence(&self, ids: &[String]) -> Vec<EvidenceRef> {
        ids.iter()
            .map(|id| match self.evidence.get(id) {
                Some(e) => EvidenceRef {
                    event_id: id.clone(),
                    seq: Some(e.seq),
                    event_type: e.event_type.clone(),
                    at: Some(e.at),
                    summary: e.summary.clone(),
                },
                None => EvidenceRef {
                    event_id: id.clone(),
                    seq: None,
                    event_type: "unknown".into(),
                    at: None,
                    summary: "not in the ledger before this decision".into(),
                },
            })
            .collect()
    }

    fn cite(&mut self, env: &Envelope, summary: String) {
        let id = env.event_id.to_string();
        self.mark(ViewKind::Evidence, &id);
        self.evidence.insert(
            id,
            EvidenceView {
                seq: env.seq,
                event_type: env.event_type().as_str().to_string(),
                at: env.recorded_at,
                summary,
            },
        );
    }

    /// Applies one event. Events must come in seq order; an event at or
    /// below `last_seq` was already applied and is ignored (returns false).
    pub fn apply(&mut self, env: &Envelope) -> bool {
        if env.seq <= self.last_seq {
            return false;
        }
        self.last_seq = env.seq;
        self.last_hash = env.hash;
        let seq = env.seq;
        let at = env.recorded_at;
        match &env.event {
            Event::RecipeDeclared(p) => {
                self.mark(ViewKind::Recipes, &p.recipe_id);
                match self.recipes.get_mut(&p.recipe_id) {
                    Some(r) => r.declarations += 1,
                    None => {
                        self.recipes.insert(
                            p.recipe_id.clone(),
                            RecipeView {
                                recipe_id: p.recipe_id.clone(),
                                name: p.name.clone(),
                                source: p.source.clone(),
                                resolved_config: p.resolved_config.clone(),
                                env_overrides: p.env_overrides.clone(),
                                declared: event_ref(env),
                                declarations: 1,
                                runs: Vec::new(),
                            },
                        );
                    }
                }
            }
            Event::DatasetPinned(p) => insert_first(
                &mut self.datasets,
                &mut self.dirty,
                ViewKind::Datasets,
                &p.dataset_id,
                || DatasetView {
                    dataset_id: p.dataset_id.clone(),
                    source: p.source.clone(),
                    resolved_revision: p.resolved_revision.clone(),
                    shards: p.shards.clone(),
                    splits: p.splits.clone(),
                    pinned: event_ref(env),
                    runs: Vec::new(),
                    evals: Vec::new(),
                },
            ),
            Event::BaseModelPinned(p) => insert_first(
                &mut self.models,
                &mut self.dirty,
                ViewKind::Models,
                &p.model_id,
                || ModelView {
                    model_id: p.model_id.clone(),
                    source: p.source.clone(),
                    resolved_revision: p.resolved_revision.clone(),
                    architecture: p.architecture.clone(),
                    files: p.files.clone(),
                    parameters: p.parameters,
                    quantization: p.quantization.clone(),
                    pinned: event_ref(env),
                    runs: Vec::new(),
                },
            ),
            Event::RunRequested(p) => {
                let ev = event_ref(env);
                let r = self.run_event(&p.run_id, seq);
                // The run's lists of inputs grow by one per new run, without
                // a scan (a repeated request changes nothing there).
                let first = r.requested.is_none();
                r.status = "requested".into();
                r.recipe_id = Some(p.recipe_id.clone());
                r.dataset_id = Some(p.dataset_id.clone());
                r.model_id = Some(p.model_id.clone());
                r.backend = Some(p.backend.clone());
                r.overrides = p.overrides.clone();
                r.requested = Some(ev);
                if first {
                    let (d, run) = (&mut self.dirty, &p.run_id);
                    add_run(
                        &mut self.recipes,
                        d,
                        ViewKind::Recipes,
                        &p.recipe_id,
                        run,
                        |x| &mut x.runs,
                    );
                    add_run(
                        &mut self.datasets,
                        d,
                        ViewKind::Datasets,
                        &p.dataset_id,
                        run,
                        |x| &mut x.runs,
                    );
                    add_run(
                        &mut self.models,
                        d,
                        ViewKind::Models,
                        &p.model_id,
                        run,
                        |x| &mut x.runs,
                    );
                }
                let run = NodeRef::new("run", &p.run_id);
                self.edge(
                    run.clone(),
                    "recipe",
                    NodeRef::new("recipe", &p.recipe_id),
                    "run",
                    seq,
                );
                self.edge(
                    run.clone(),
                    "dataset",
                    NodeRef::new("dataset", &p.dataset_id),
                    "run",
                    seq,
                );
                self.edge(
                    run,
                    "base_model",
                    NodeRef::new("model", &p.model_id),
                    "run",
                    seq,
                );
            }
            Event::RunClaimed(p) => {
                let r = self.run_event(&p.run_id, seq);
                if !r.is_terminal() {
                    r.status = "claimed".into();
                }
                r.runner_id = Some(p.runner_id.clone());
                r.host = Some(p.host.clone());
                r.attempt = p.attempt;
                r.claimed_at.get_or_insert(at);
            }
            Event::RunStarted(p) => {
                let r = self.run_event(&p.run_id, seq);
                if !r.is_terminal() {
                    r.status = "running".into();
                }
                r.runner_id = Some(p.runner_id.clone());
                r.host = Some(p.host.clone());
                r.device = Some(p.device.clone());
                r.code = Some(p.code.clone());
                r.resolved_config = Some(p.resolved_config.clone());
                r.run_config_sha256 = Some(p.run_config_sha256);
                r.total_steps = Some(p.total_steps);
                r.started_at.get_or_insert(at);
                let code = code_label(&p.code);
                self.edge(
                    NodeRef::new("run", &p.run_id),
                    "code",
                    NodeRef::new("code", &code),
                    "run",
                    seq,
                );
            }
            Event::RunHeartbeat(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.last_heartbeat_at = Some(at);
                r.last_step = Some(r.last_step.map_or(p.step, |s| s.max(p.step)));
            }
            Event::MetricsLogged(p) => {
                let r = self.run_event(&p.run_id, seq);
                let m = &mut r.metrics;
                for pt in &p.points {
                    m.points += 1;
                    let sv = StepValue {
                        step: pt.step,
                        value: pt.loss,
                    };
                    if m.first_loss.is_none() {
                        m.first_loss = Some(sv);
                    }
                    m.last_loss = Some(sv);
                    if m.best_loss.is_none_or(|b| pt.loss < b.value) {
                        m.best_loss = Some(sv);
                    }
                    m.last_tokens_per_s = Some(pt.tokens_per_s);
                    if m.max_tokens_per_s.is_none_or(|b| pt.tokens_per_s > b) {
                        m.max_tokens_per_s = Some(pt.tokens_per_s);
                    }
                    m.sum_tokens_per_s += pt.tokens_per_s;
                    m.tokens += pt.tokens;
                    m.last_step = Some(m.last_step.map_or(pt.step, |s| s.max(pt.step)));
                    m.last_lr = Some(pt.lr);
                }
                if m.points > 0 {
                    m.mean_tokens_per_s = Some(m.sum_tokens_per_s / m.points as f64);
                }
                if let Some(s) = m.last_step {
                    r.last_step = Some(r.last_step.map_or(s, |x| x.max(s)));
                }
            }
            Event::CheckpointCommitted(p) => {
                let ev = event_ref(env);
                let r = self.run_event(&p.run_id, seq);
                push_unique(&mut r.checkpoints, &p.checkpoint_id);
                r.last_step = Some(r.last_step.map_or(p.step, |x| x.max(p.step)));
                if !self.checkpoints.contains_key(&p.checkpoint_id) {
                    self.mark(ViewKind::Checkpoints, &p.checkpoint_id);
                    self.checkpoints.insert(
                        p.checkpoint_id.clone(),
                        CheckpointView {
                            checkpoint_id: p.checkpoint_id.clone(),
                            run_id: p.run_id.clone(),
                            step: p.step,
                            files: p.files.clone(),
                            loss: p.loss,
                            location: p.location.clone(),
                            committed: ev,
                            evals: Vec::new(),
                            promotions: Vec::new(),
                            channels: Vec::new(),
                        },
                    );
                }
                self.edge(
                    NodeRef::new("checkpoint", &p.checkpoint_id),
                    "run",
                    NodeRef::new("run", &p.run_id),
                    "checkpoint",
                    seq,
                );
            }
            Event::RunResumed(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.status = "running".into();
                r.ended_at = None;
                r.runner_id = Some(p.runner_id.clone());
                r.resumes.push(Resume {
                    checkpoint_id: p.checkpoint_id.clone(),
                    step: p.step,
                    reason: p.reason.clone(),
                    runner_id: p.runner_id.clone(),
                    at,
                });
            }
            Event::RunCompleted(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.status = "completed".into();
                r.ended_at = Some(at);
                r.duration_ms = Some(p.duration_ms);
                r.steps = Some(p.steps);
                r.final_loss = p.final_loss;
                r.final_checkpoint_id = p.final_checkpoint_id.clone();
                r.last_step = Some(r.last_step.map_or(p.steps, |x| x.max(p.steps)));
            }
            Event::RunFailed(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.status = "failed".into();
                r.ended_at = Some(at);
                r.failure = Some(Failure {
                    reason: p.reason.clone(),
                    step: p.step,
                    retryable: p.retryable,
                    at,
                });
            }
            Event::RunAttemptFailed(p) => {
                let r = self.run_event(&p.run_id, seq);
                if !r.is_terminal() {
                    r.status = "retrying".into();
                }
                r.failed_attempts.push(AttemptFailure {
                    attempt: p.attempt,
                    runner_id: p.runner_id.clone(),
                    reason: p.reason.clone(),
                    step: p.step,
                    at,
                });
            }
            Event::RunCancelled(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.status = "cancelled".into();
                r.ended_at = Some(at);
                r.cancel_reason = Some(p.reason.clone());
            }
            Event::ModalJobSubmitted(p) => {
                let r = self.run_event(&p.run_id, seq);
                r.modal = Some(ModalJob {
                    app_id: p.app_id.clone(),
                    function_call_id: p.function_call_id.clone(),
                    gpu: p.gpu.clone(),
                    image_digest: p.image_digest.clone(),
                    state: "submitted".into(),
                    exit_code: None,
                    observed_at: None,
                });
            }
            Event::ModalJobUpdated(p) => {
                let r = self.run_event(&p.run_id, seq);
                if let Some(m) = &mut r.modal {
                    m.state = p.state.clone();
                    m.exit_code = p.exit_code;
                    m.observed_at = Some(p.observed_at);
                }
            }
            Event::EvalRequested(p) => {
                self.mark(ViewKind::Evals, &p.eval_id);
                let ev = event_ref(env);
                let e = self
                    .evals
                    .entry(p.eval_id.clone())
                    .or_insert_with(|| new_eval!(p, "requested", p.limit));
                e.requested.get_or_insert(ev);
            }
            Event::EvalScored(p) => {
                let ev = event_ref(env);
                self.mark(ViewKind::Evals, &p.eval_id);
                let e = self
                    .evals
                    .entry(p.eval_id.clone())
                    .or_insert_with(|| new_eval!(p, "scored", None));
                let first_score = e.scored.is_none();
                e.status = "scored".into();
                e.scored = Some(ev.clone());
                e.examples = Some(p.examples);
                e.metrics = p.metrics.clone();
                e.split_sha256 = Some(p.split_sha256);
                e.eval_spec_sha256 = Some(p.eval_spec_sha256);
                e.latency_ms_mean = Some(p.latency_ms_mean);
                let target = p.checkpoint_id.as_deref().unwrap_or("base model");
                let summary = format!(
                    "eval {} of {} on {} ({} examples): {}",
                    p.eval_id,
                    target,
                    p.split,
                    p.examples,
                    format_metrics(&p.metrics)
                );
                self.cite(env, summary);
                if first_score {
                    if let Some(d) = self.datasets.get_mut(&p.dataset_id) {
                        d.evals.push(p.eval_id.clone());
                        self.mark(ViewKind::Datasets, &p.dataset_id);
                    }
                }
                if let Some(cid) = &p.checkpoint_id {
                    if let Some(c) = self.checkpoint(cid) {
                        c.evals.retain(|x| x.eval_id != p.eval_id);
                        c.evals.push(EvalRef {
                            eval_id: p.eval_id.clone(),
                            split: p.split.clone(),
                            examples: p.examples,
                            metrics: p.metrics.clone(),
                            event: ev,
                        });
                        let run_id = c.run_id.clone();
                        push_unique(&mut self.run(&run_id).evals, &p.eval_id);
                    }
                    self.edge(
                        NodeRef::new("eval", &p.eval_id),
                        "checkpoint",
                        NodeRef::new("checkpoint", cid),
                        "eval",
                        seq,
                    );
                }
            }
            Event::PromotionRequested(p) => {
                let ev = event_ref(env);
                self.cite(
                    env,
                    format!(
                        "request to promote {} to {}: {}",
                        p.checkpoint_id, p.channel, p.reason
                    ),
                );
                self.channel(&p.channel).history.push(channel_entry(
                    "requested",
                    Some(p.checkpoint_id.clone()),
                    None,
                    &p.reason,
                    Vec::new(),
                    Vec::new(),
                    &ev,
                ));
                self.promotion(&p.checkpoint_id, &p.channel, "requested", &p.reason, &ev);
            }
            Event::AdapterPromoted(p) => {
                let ev = event_ref(env);
                let evidence = self.resolve_evidence(&p.evidence);
                let previous = self.channel(&p.channel).current_checkpoint_id.clone();
                let ch = self.channel(&p.channel);
                ch.history.push(channel_entry(
                    "promoted",
                    Some(p.checkpoint_id.clone()),
                    p.previous_checkpoint_id.clone().or(previous),
                    &p.reason,
                    p.gates.clone(),
                    evidence,
                    &ev,
                ));
                let entry = ch.history.len() - 1;
                self.serve(&p.channel, Some(&p.checkpoint_id), entry);
                self.promotion(&p.checkpoint_id, &p.channel, "promoted", &p.reason, &ev);
                self.edge(
                    NodeRef::new("channel", &p.channel),
                    "promoted",
                    NodeRef::new("checkpoint", &p.checkpoint_id),
                    "serves",
                    seq,
                );
            }
            Event::PromotionRejected(p) => {
                let ev = event_ref(env);
                let evidence = self.resolve_evidence(&p.evidence);
                self.channel(&p.channel).history.push(channel_entry(
                    "rejected",
                    Some(p.checkpoint_id.clone()),
                    None,
                    &p.reason,
                    p.gates.clone(),
                    evidence,
                    &ev,
                ));
                self.promotion(&p.checkpoint_id, &p.channel, "rejected", &p.reason, &ev);
            }
            Event::ChannelRolledBack(p) => {
                let ev = event_ref(env);
                let previous = self.channel(&p.channel).current_checkpoint_id.clone();
                let ch = self.channel(&p.channel);
                ch.history.push(channel_entry(
                    "rolled_back",
                    p.to_checkpoint_id.clone(),
                    p.from_checkpoint_id.clone().or(previous.clone()),
                    &p.reason,
                    Vec::new(),
                    Vec::new(),
                    &ev,
                ));
                let entry = ch.history.len() - 1;
                self.serve(&p.channel, p.to_checkpoint_id.as_deref(), entry);
                if let Some(from) = p.from_checkpoint_id.as_deref().or(previous.as_deref()) {
                    self.promotion(from, &p.channel, "rolled_back_from", &p.reason, &ev);
                }
                if let Some(to) = &p.to_checkpoint_id {
                    self.promotion(to, &p.channel, "rolled_back_to", &p.reason, &ev);
                    self.edge(
                        NodeRef::new("channel", &p.channel),
                        "rolled_back_to",
                        NodeRef::new("checkpoint", to),
                        "serves",
                        seq,
                    );
                }
            }
            Event::RollbackRequested(RollbackRequested { channel, reason })
            | Event::RollbackRejected(RollbackRejected { channel, reason }) => {
                let ev = event_ref(env);
                let action = if matches!(env.event, Event::RollbackRequested(_)) {
                    self.cite(env, format!("request to roll back {channel}: {reason}"));
                    "rollback_requested"
                } else {
                    "rollback_rejected"
                };
                self.channel(channel).history.push(channel_entry(
                    action,
                    None,
                    None,
                    reason,
                    Vec::new(),
                    Vec::new(),
                    &ev,
                ));
            }
            Event::ChannelPolicySet(p) => {
                let ev = event_ref(env);
                let names = |v: &Option<Vec<String>>| {
                    v.as_ref()
                        .map_or_else(|| "default".to_string(), |v| v.join(", "))
                };
                let summary = format!(
                    "policy: requesters {}; rollbacks {}; evaluators {}; gates [{}]; at least {} examples",
                    names(&p.requesters),
                    names(&p.rollbackers),
                    names(&p.evaluators),
                    p.gates.join(", "),
                    p.min_examples
                );
                self.channel(&p.channel).history.push(channel_entry(
                    "policy_set",
                    None,
                    None,
                    &summary,
                    Vec::new(),
                    Vec::new(),
                    &ev,
                ));
            }
            // Keys are the ledger's own business (see its registry).
            Event::KeyRegistered(_) | Event::KeyRevoked(_) => {}
        }
        true
    }
}

/// How lineage names the code that trained a run: the crate version, the
/// git commit (`+dirty` when the tree had uncommitted changes) and the
/// executable's hash, whichever are known.
pub fn code_label(c: &CodeVersion) -> String {
    let mut s = c.version.clone();
    if let Some(g) = &c.git_commit {
        s.push('@');
        s.push_str(g.get(..12).unwrap_or(g));
    }
    if c.dirty {
        s.push_str("+dirty");
    }
    if let Some(x) = &c.executable_sha256 {
        s.push_str(" exe ");
        s.push_str(&x.short());
    }
    s
}
