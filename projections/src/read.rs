//! Reading views, from the persisted store or from an in-memory fold, and
//! resolving id prefixes as git does.

use crate::{
    ChannelView, CheckpointView, DatasetView, EvalView, EvidenceView, LineageNodeView, ModelView,
    ProjectionError, RecipeView, Result, RunView, State, ViewKind,
};
use std::collections::BTreeMap;

/// Read access to the views, wherever they live.
pub trait ViewRead {
    /// Seq of the last event the views include.
    fn as_of(&self) -> u64;
    /// A recipe by exact id.
    fn recipe(&self, id: &str) -> Result<Option<RecipeView>>;
    /// A dataset by exact id.
    fn dataset(&self, id: &str) -> Result<Option<DatasetView>>;
    /// A base model by exact id.
    fn model(&self, id: &str) -> Result<Option<ModelView>>;
    /// A run by exact id.
    fn run(&self, id: &str) -> Result<Option<RunView>>;
    /// A checkpoint by exact id.
    fn checkpoint(&self, id: &str) -> Result<Option<CheckpointView>>;
    /// An eval by exact id.
    fn eval(&self, id: &str) -> Result<Option<EvalView>>;
    /// A channel by exact name.
    fn channel(&self, name: &str) -> Result<Option<ChannelView>>;
    /// A lineage node by `kind:id`.
    fn lineage_node(&self, key: &str) -> Result<Option<LineageNodeView>>;
    /// A citable event by event id.
    fn evidence(&self, event_id: &str) -> Result<Option<EvidenceView>>;
    /// Every run, in id order.
    fn runs(&self) -> Result<Vec<RunView>>;
    /// Every channel, in name order.
    fn channels(&self) -> Result<Vec<ChannelView>>;
    /// Ids of one view that start with `prefix`, in order.
    fn ids(&self, kind: ViewKind, prefix: &str) -> Result<Vec<String>>;
}

fn prefixed<T>(m: &BTreeMap<String, T>, prefix: &str) -> Vec<String> {
    m.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

impl ViewRead for State {
    fn as_of(&self) -> u64 {
        self.last_seq
    }
    fn recipe(&self, id: &str) -> Result<Option<RecipeView>> {
        Ok(self.recipes.get(id).cloned())
    }
    fn dataset(&self, id: &str) -> Result<Option<DatasetView>> {
        Ok(self.datasets.get(id).cloned())
    }
    fn model(&self, id: &str) -> Result<Option<ModelView>> {
        Ok(self.models.get(id).cloned())
    }
    fn run(&self, id: &str) -> Result<Option<RunView>> {
        Ok(self.runs.get(id).cloned())
    }
    fn checkpoint(&self, id: &str) -> Result<Option<CheckpointView>> {
        Ok(self.checkpoints.get(id).cloned())
    }
    fn eval(&self, id: &str) -> Result<Option<EvalView>> {
        Ok(self.evals.get(id).cloned())
    }
    fn channel(&self, name: &str) -> Result<Option<ChannelView>> {
        Ok(self.channels.get(name).cloned())
    }
    fn lineage_node(&self, key: &str) -> Result<Option<LineageNodeView>> {
        Ok(self.lineage.get(key).cloned())
    }
    fn evidence(&self, event_id: &str) -> Result<Option<EvidenceView>> {
        Ok(self.evidence.get(event_id).cloned())
    }
    fn runs(&self) -> Result<Vec<RunView>> {
        Ok(self.runs.values().cloned().collect())
    }
    fn channels(&self) -> Result<Vec<ChannelView>> {
        Ok(self.channels.values().cloned().collect())
    }
    fn ids(&self, kind: ViewKind, prefix: &str) -> Result<Vec<String>> {
        Ok(match kind {
            ViewKind::Recipes => prefixed(&self.recipes, prefix),
            ViewKind::Datasets => prefixed(&self.datasets, prefix),
            ViewKind::Models => prefixed(&self.models, prefix),
            ViewKind::Runs => prefixed(&self.runs, prefix),
            ViewKind::Checkpoints => prefixed(&self.checkpoints, prefix),
            ViewKind::Evals => prefixed(&self.evals, prefix),
            ViewKind::Channels => prefixed(&self.channels, prefix),
            ViewKind::Lineage => prefixed(&self.lineage, prefix),
            ViewKind::Evidence => prefixed(&self.evidence, prefix),
        })
    }
}

/// How many candidates an error lists.
const SHOW: usize = 8;

/// Resolves an id or unique id prefix in one view. An exact id wins; an
/// unknown or ambiguous prefix is an error listing the candidates.
pub fn resolve(views: &dyn ViewRead, kind: ViewKind, prefix: &str) -> Result<String> {
    resolve_any(views, &[kind], prefix).map(|(_, id)| id)
}

/// Resolves an id or unique prefix across several views (e.g. `lineage`
/// accepts a checkpoint or a run). Returns the view it was found in.
pub fn resolve_any(
    views: &dyn ViewRead,
    kinds: &[ViewKind],
    prefix: &str,
) -> Result<(ViewKind, String)> {
    let noun = kinds
        .iter()
        .map(|k| k.noun())
        .collect::<Vec<_>>()
        .join(" or ");
    if prefix.is_empty() {
        return Err(ProjectionError::Unknown {
            kind: noun,
            prefix: String::new(),
            candidates: Vec::new(),
            total: 0,
        });
    }
    let mut found = Vec::new();
    for &k in kinds {
        for id in views.ids(k, prefix)? {
            if id == prefix {
                return Ok((k, id));
            }
            found.push((k, id));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            let mut all = Vec::new();
            for &k in kinds {
                all.extend(views.ids(k, "")?);
            }
            Err(ProjectionError::Unknown {
                kind: noun,
                prefix: prefix.to_string(),
                total: all.len(),
                candidates: all.into_iter().take(SHOW).collect(),
            })
        }
        n => Err(ProjectionError::Ambiguous {
            kind: noun,
            prefix: prefix.to_string(),
            total: n,
            candidates: found
                .into_iter()
                .take(SHOW)
                .map(|(k, id)| {
                    if kinds.len() > 1 {
                        format!("{} {id}", k.noun())
                    } else {
                        id
                    }
                })
                .collect(),
        }),
    }
}
