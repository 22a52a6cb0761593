//! Where an adapter came from: a tree walked out of the lineage view.
//!
//! An adapter (checkpoint) hangs off its run; the run off its recipe, its
//! dataset (with every shard's hash), its base model revision and the code
//! version that trained it. Evals and promotions hang off the checkpoint,
//! promotions with the evidence events they cite.

use crate::{format_metrics, CheckpointView, ProjectionError, Result, ViewKind, ViewRead};
use serde::Serialize;

/// One node of a drawn lineage tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TreeNode {
    /// `adapter`, `run`, `recipe`, `dataset`, `shard`, `model`, `code`,
    /// `eval`, `promotion`, `evidence` or `checkpoint`.
    pub kind: String,
    /// Full id of the thing (empty for grouping nodes).
    pub id: String,
    /// One line for people.
    pub label: String,
    /// What hangs below it.
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    fn new(kind: &str, id: &str, label: String) -> Self {
        TreeNode {
            kind: kind.into(),
            id: id.into(),
            label,
            children: Vec::new(),
        }
    }

    /// Draws the tree with box-drawing characters, one node per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.label);
        out.push('\n');
        render_children(&self.children, "", &mut out);
        out
    }

    /// Every node, depth first (for tests and searches).
    pub fn walk(&self) -> Vec<&TreeNode> {
        let mut v = vec![self];
        for c in &self.children {
            v.extend(c.walk());
        }
        v
    }
}

fn render_children(children: &[TreeNode], indent: &str, out: &mut String) {
    for (i, c) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(indent);
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(&c.label);
        out.push('\n');
        let next = format!("{indent}{}", if last { "    " } else { "│   " });
        render_children(&c.children, &next, out);
    }
}

/// Shortens long content ids (hashes) to 12 characters for labels.
pub fn short(id: &str) -> &str {
    if id.len() > 16 && id.is_char_boundary(12) {
        &id[..12]
    } else {
        id
    }
}

fn run_node(views: &dyn ViewRead, run_id: &str) -> Result<TreeNode> {
    let label = match views.run(run_id)? {
        Some(r) => {
            let loss = match (r.metrics.first_loss, r.metrics.last_loss) {
                (Some(a), Some(b)) => format!(", loss {:.4} → {:.4}", a.value, b.value),
                _ => String::new(),
            };
            format!(
                "run {run_id} [{}] {} backend, {} steps{loss}",
                r.status,
                r.backend.as_deref().unwrap_or("?"),
                r.last_step.unwrap_or(0)
            )
        }
        None => format!("run {run_id} (no events)"),
    };
    let mut node = TreeNode::new("run", run_id, label);
    let Some(lin) = views.lineage_node(&format!("run:{run_id}"))? else {
        return Ok(node);
    };
    for e in &lin.inputs {
        let id = e.node.id.as_str();
        let child = match e.node.kind.as_str() {
            "recipe" => match views.recipe(id)? {
                Some(r) => TreeNode::new(
                    "recipe",
                    id,
                    format!("recipe {} \"{}\" ({})", short(id), r.name, r.source),
                ),
                None => TreeNode::new("recipe", id, format!("recipe {} (not declared)", short(id))),
            },
            "dataset" => match views.dataset(id)? {
                Some(d) => {
                    let rev = d
                        .resolved_revision
                        .as_deref()
                        .map(|r| format!(" @ {}", short(r)))
                        .unwrap_or_default();
                    let mut n = TreeNode::new(
                        "dataset",
                        id,
                        format!(
                            "dataset {} {}{rev}, {} shards",
                            short(id),
                            d.source,
                            d.shards.len()
                        ),
                    );
                    for s in &d.shards {
                        n.children.push(TreeNode::new(
                            "shard",
                            &s.sha256.to_hex(),
                            format!(
                                "shard {}/{} sha256 {} ({} rows)",
                                s.split,
                                s.path,
                                s.sha256.short(),
                                s.rows
                            ),
                        ));
                    }
                    n
                }
                None => TreeNode::new("dataset", id, format!("dataset {} (not pinned)", short(id))),
            },
            "model" => match views.model(id)? {
                Some(m) => {
                    let rev = m
                        .resolved_revision
                        .as_deref()
                        .map(|r| format!(" @ {}", short(r)))
                        .unwrap_or_default();
                    TreeNode::new(
                        "model",
                        id,
                        format!(
                            "base model {} {}{rev} ({}, {})",
                            short(id),
                            m.source,
                            m.architecture,
                            m.quantization
                        ),
                    )
                }
                None => TreeNode::new(
                    "model",
                    id,
                    format!("base model {} (not pinned)", short(id)),
                ),
            },
            "code" => TreeNode::new("code", id, format!("code {id}")),
            other => TreeNode::new(other, id, format!("{other} {id}")),
        };
        node.children.push(child);
    }
    Ok(node)
}

fn checkpoint_children(views: &dyn ViewRead, cp: &CheckpointView) -> Result<Vec<TreeNode>> {
    let mut out = Vec::new();
    for e in &cp.evals {
        out.push(TreeNode::new(
            "eval",
            &e.eval_id,
            format!(
                "eval {} on {} ({} examples): {}",
                e.eval_id,
                e.split,
                e.examples,
                format_metrics(&e.metrics)
            ),
        ));
    }
    for p in &cp.promotions {
        let mut n = TreeNode::new(
            "promotion",
            &p.event.event_id,
            format!(
                "{} {} at {} by {} (seq {}): {}",
                p.outcome.replace('_', " "),
                p.channel,
                p.event.at,
                p.event.actor,
                p.event.seq,
                p.reason
            ),
        );
        if let Some(ch) = views.channel(&p.channel)? {
            if let Some(entry) = ch.history.iter().find(|h| h.event.seq == p.event.seq) {
                for g in &entry.gates {
                    let actual = g
                        .actual
                        .map(|a| format!("{a:.4}"))
                        .unwrap_or_else(|| "-".into());
                    n.children.push(TreeNode::new(
                        "gate",
                        "",
                        format!(
                            "gate {} = {actual}: {}",
                            g.gate,
                            if g.passed { "passed" } else { "FAILED" }
                        ),
                    ));
                }
                for ev in &entry.evidence {
                    n.children.push(TreeNode::new(
                        "evidence",
                        &ev.event_id,
                        format!(
                            "evidence {} seq {}: {}",
                            ev.event_type,
                            ev.seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                            ev.summary
                        ),
                    ));
                }
            }
        }
        out.push(n);
    }
    Ok(out)
}

fn checkpoint_label(kind: &str, cp: &CheckpointView) -> String {
    let serving = if cp.channels.is_empty() {
        String::new()
    } else {
        format!(" [serving {}]", cp.channels.join(", "))
    };
    let loss = cp
        .loss
        .map(|l| format!(", loss {l:.4}"))
        .unwrap_or_default();
    format!(
        "{kind} {} step {}{loss}, committed {}{serving}",
        cp.checkpoint_id, cp.step, cp.committed.at
    )
}

/// The lineage tree rooted at a checkpoint/adapter (`kind` =
/// [`ViewKind::Checkpoints`]) or a run ([`ViewKind::Runs`]), by exact id.
pub fn lineage(views: &dyn ViewRead, kind: ViewKind, id: &str) -> Result<TreeNode> {
    match kind {
        ViewKind::Checkpoints => {
            let cp = views
                .checkpoint(id)?
                .ok_or_else(|| unknown("checkpoint", id))?;
            let mut root = TreeNode::new("adapter", id, checkpoint_label("adapter", &cp));
            root.children.push(run_node(views, &cp.run_id)?);
            root.children.extend(checkpoint_children(views, &cp)?);
            Ok(root)
        }
        ViewKind::Runs => {
            let r = views.run(id)?.ok_or_else(|| unknown("run", id))?;
            let mut root = run_node(views, id)?;
            for c in &r.checkpoints {
                if let Some(cp) = views.checkpoint(c)? {
                    let mut n = TreeNode::new("checkpoint", c, checkpoint_label("checkpoint", &cp));
                    n.children = checkpoint_children(views, &cp)?;
                    root.children.push(n);
                }
            }
            Ok(root)
        }
        other => Err(unknown(other.noun(), id)),
    }
}

fn unknown(kind: &str, id: &str) -> ProjectionError {
    ProjectionError::Unknown {
        kind: kind.into(),
        prefix: id.into(),
        candidates: Vec::new(),
        total: 0,
    }
}
