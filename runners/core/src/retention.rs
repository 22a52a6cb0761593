//! Which checkpoint files may leave the artifact bucket that carries them
//! between machines (`ledger serve`'s home keeps every file the history
//! names; this is only about the transport).
//!
//! A checkpoint's files stay in the bucket while any of these holds:
//! - its run has not ended (a trainer may resume from it);
//! - it is among its run's newest `training.keep_last` checkpoints (the
//!   recipe's retention, as the run resolved it);
//! - it was ever promoted to a channel;
//! - an evaluation of it is pending: requested and not yet scored, or (none
//!   requested yet) due under the recipe's `eval.every_checkpoints`, as the
//!   evaluator counts, and not yet scored.
//!
//! A file leaves only when no checkpoint that stays names it (checkpoints
//! share files such as `adapter_config.json`). Run configs are small and
//! always stay.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use foundry_events::{Event, Sha256Digest};
use foundry_recipes::Recipe;

/// The event types the rule reads.
pub const READS: &[foundry_events::EventType] = &[
    foundry_events::EventType::RecipeDeclared,
    foundry_events::EventType::RunRequested,
    foundry_events::EventType::RunStarted,
    foundry_events::EventType::CheckpointCommitted,
    foundry_events::EventType::RunCompleted,
    foundry_events::EventType::RunFailed,
    foundry_events::EventType::RunCancelled,
    foundry_events::EventType::EvalRequested,
    foundry_events::EventType::EvalScored,
    foundry_events::EventType::AdapterPromoted,
];

#[derive(Default)]
struct RunFacts {
    recipe_id: Option<String>,
    started_config: Option<serde_json::Value>,
    checkpoints: Vec<(String, Vec<Sha256Digest>)>,
    ended: bool,
}

/// The checkpoint files that may leave the bucket, given the history's
/// events of the types in [`READS`], in seq order.
pub fn bucket_drops(events: &[Event]) -> BTreeSet<Sha256Digest> {
    let mut recipes: HashMap<&str, &serde_json::Value> = HashMap::new();
    let mut runs: BTreeMap<&str, RunFacts> = BTreeMap::new();
    let mut requested: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut scored_evals: HashSet<&str> = HashSet::new();
    let mut scored: HashSet<&str> = HashSet::new();
    let mut promoted: HashSet<&str> = HashSet::new();
    for e in events {
        match e {
            Event::RecipeDeclared(r) => {
                recipes.insert(&r.recipe_id, &r.resolved_config);
            }
            Event::RunRequested(r) => {
                runs.entry(&r.run_id).or_default().recipe_id = Some(r.recipe_id.clone());
            }
            Event::RunStarted(r) => {
                runs.entry(&r.run_id).or_default().started_config = Some(r.resolved_config.clone());
            }
            Event::CheckpointCommitted(c) => runs.entry(&c.run_id).or_default().checkpoints.push((
                c.checkpoint_id.clone(),
                c.files.iter().map(|f| f.sha256).collect(),
            )),
            Event::RunCompleted(r) => runs.entry(&r.run_id).or_default().ended = true,
            Event::RunFailed(r) => runs.entry(&r.run_id).or_default().ended = true,
            Event::RunCancelled(r) => runs.entry(&r.run_id).or_default().ended = true,
            Event::EvalRequested(r) => {
                if let Some(c) = &r.checkpoint_id {
                    requested.entry(c).or_default().push(&r.eval_id);
                }
            }
            Event::EvalScored(s) => {
                scored_evals.insert(&s.eval_id);
                if let Some(c) = &s.checkpoint_id {
                    scored.insert(c);
                }
            }
            Event::AdapterPromoted(p) => {
                promoted.insert(&p.checkpoint_id);
            }
            _ => {}
        }
    }
    let mut stays: HashSet<Sha256Digest> = HashSet::new();
    let mut leaves: BTreeSet<Sha256Digest> = BTreeSet::new();
    for facts in runs.values() {
        let recipe = facts
            .recipe_id
            .as_deref()
            .and_then(|id| recipes.get(id).copied());
        // A config that does not read as a resolved recipe keeps everything.
        let typed = |c: &serde_json::Value| serde_json::from_value::<Recipe>(c.clone()).ok();
        let started = facts.started_config.as_ref().and_then(typed);
        let declared = recipe.and_then(typed);
        let keep_last = started
            .as_ref()
            .or(declared.as_ref())
            .and_then(|r| usize::try_from(r.training.keep_last).ok())
            .unwrap_or(usize::MAX);
        // Declaration guarantees every_checkpoints >= 1, as the evaluator reads it.
        let every = declared
            .as_ref()
            .and_then(|r| usize::try_from(r.eval.every_checkpoints).ok())
            .unwrap_or(1)
            .max(1);
        let n = facts.checkpoints.len();
        for (i, (id, files)) in facts.checkpoints.iter().enumerate() {
            let newest = n - i <= keep_last;
            let asked = requested.get(id.as_str());
            // An eval asked for and not scored, or (nobody asked yet) one
            // the evaluator will run for this checkpoint.
            let pending = match asked {
                Some(evals) => evals.iter().any(|e| !scored_evals.contains(e)),
                None => (i + 1).is_multiple_of(every) && !scored.contains(id.as_str()),
            };
            let keep = !facts.ended || newest || promoted.contains(id.as_str()) || pending;
            if keep {
                stays.extend(files.iter().copied());
            } else {
                leaves.extend(files.iter().copied());
            }
        }
    }
    leaves.retain(|d| !stays.contains(d));
    leaves
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundry_events::{
        AdapterPromoted, CheckpointCommitted, EvalRequested, EvalScored, FileDigest,
        RecipeDeclared, RunCompleted, RunRequested,
    };

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest([n; 32])
    }

    /// A real resolved recipe with this retention and eval cadence.
    fn resolved(keep_last: u64, every: u64) -> serde_json::Value {
        let text = format!(
            "name = \"r\"\n[base_model]\nsource = \"m\"\n[training]\nkeep_last = {keep_last}\n\
             [eval]\nsplit = \"test\"\nevery_checkpoints = {every}\n"
        );
        foundry_recipes::resolve_str(&text, "r.toml", &Default::default(), None)
            .expect("recipe resolves")
            .config
    }

    fn recipe(keep_last: u64, every: u64) -> Event {
        Event::RecipeDeclared(RecipeDeclared {
            recipe_id: "r".into(),
            name: "r".into(),
            source: "r.toml".into(),
            resolved_config: resolved(keep_last, every),
            env_overrides: Default::default(),
        })
    }

    fn request() -> Event {
        Event::RunRequested(RunRequested {
            run_id: "run".into(),
            recipe_id: "r".into(),
            dataset_id: "ds".into(),
            model_id: "m".into(),
            backend: "local".into(),
            overrides: Default::default(),
        })
    }

    /// Checkpoint `n` has its own weights (digest n) and the shared config
    /// (digest 200).
    fn ckpt(n: u8) -> Event {
        let file = |path: &str, sha| FileDigest {
            path: path.into(),
            sha256: sha,
            bytes: 1,
        };
        Event::CheckpointCommitted(CheckpointCommitted {
            run_id: "run".into(),
            checkpoint_id: format!("c{n}"),
            step: n as u64 * 10,
            files: vec![
                file("adapter_config.json", d(200)),
                file("adapter_model.safetensors", d(n)),
            ],
            loss: None,
            location: format!("adapters/run/{n}"),
        })
    }

    fn scored(n: u8) -> Event {
        Event::EvalScored(EvalScored {
            eval_id: format!("e{n}"),
            checkpoint_id: Some(format!("c{n}")),
            run_id: Some("run".into()),
            model_id: "m".into(),
            dataset_id: "ds".into(),
            split: "test".into(),
            split_sha256: d(0),
            eval_spec_sha256: d(0),
            examples: 1,
            metrics: Default::default(),
            breakdown: Default::default(),
            latency_ms_mean: 0.0,
            throughput_docs_per_s: 0.0,
            code: Default::default(),
            device: Default::default(),
        })
    }

    fn completed() -> Event {
        Event::RunCompleted(RunCompleted {
            run_id: "run".into(),
            final_checkpoint_id: None,
            steps: 40,
            final_loss: None,
            duration_ms: 1,
        })
    }

    #[test]
    fn a_running_run_keeps_everything() {
        let h = vec![
            recipe(1, 1),
            request(),
            ckpt(1),
            ckpt(2),
            ckpt(3),
            scored(1),
            scored(2),
        ];
        assert!(bucket_drops(&h).is_empty());
    }

    #[test]
    fn an_ended_run_keeps_its_newest_promoted_and_unscored_checkpoints() {
        let mut h = vec![recipe(1, 1), request()];
        h.extend((1..=4).map(ckpt));
        h.extend([scored(1), scored(3), completed()]);
        h.push(Event::AdapterPromoted(AdapterPromoted {
            checkpoint_id: "c1".into(),
            channel: "staging".into(),
            previous_checkpoint_id: None,
            gates: Vec::new(),
            evidence: Vec::new(),
            signed_by: Vec::new(),
            reason: String::new(),
        }));
        // c1 promoted, c2 not scored yet, c4 newest: only c3's own file goes;
        // the shared config stays.
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(3)]));
        h.push(scored(2));
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(2), d(3)]));
    }

    #[test]
    fn an_eval_asked_for_later_calls_an_old_checkpoint_back() {
        let mut h = vec![recipe(1, 1), request()];
        h.extend((1..=3).map(ckpt));
        h.extend([scored(1), scored(2), scored(3), completed()]);
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(1), d(2)]));
        h.push(Event::EvalRequested(EvalRequested {
            eval_id: "manual".into(),
            checkpoint_id: Some("c1".into()),
            run_id: Some("run".into()),
            model_id: "m".into(),
            dataset_id: "ds".into(),
            split: "validation".into(),
            limit: None,
        }));
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(2)]));
    }

    #[test]
    fn checkpoints_the_evaluator_skips_are_not_waited_for() {
        // Every second checkpoint is evaluated: c1 and c3 never will be.
        let mut h = vec![recipe(1, 2), request()];
        h.extend((1..=4).map(ckpt));
        h.extend([scored(2), completed()]);
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(1), d(2), d(3)]));
    }

    #[test]
    fn unknown_retention_keeps_everything() {
        let mut h = vec![request()];
        h.extend((1..=3).map(ckpt));
        h.extend([scored(1), scored(2), scored(3), completed()]);
        assert!(bucket_drops(&h).is_empty());
        // A config that names keep_last but does not read as a resolved recipe is unknown too.
        let mut partial = recipe(1, 1);
        if let Event::RecipeDeclared(r) = &mut partial {
            r.resolved_config = serde_json::json!({"training": {"keep_last": 1}});
        }
        h.insert(0, partial);
        assert!(bucket_drops(&h).is_empty());
        h[0] = recipe(1, 1);
        assert_eq!(bucket_drops(&h), BTreeSet::from([d(1), d(2)]));
    }
}
