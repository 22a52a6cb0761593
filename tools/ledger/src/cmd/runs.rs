//! `ledger runs`: the runs, filtered by status and recipe.

use super::travel::{self, TravelArgs};
use crate::context::Context;
use crate::output;
use anyhow::{bail, Result};
use foundry_projections::{resolve, RunView, ViewKind};
use tabled::Tabled;

/// Options of `ledger runs`.
#[derive(clap::Args)]
pub struct RunsArgs {
    /// Only runs in this status (requested, claimed, running, completed, failed, cancelled).
    #[arg(long)]
    status: Option<String>,
    /// Only runs of this recipe (id, unique id prefix, or name).
    #[arg(long)]
    recipe: Option<String>,
    #[command(flatten)]
    travel: TravelArgs,
}

const STATUSES: [&str; 7] = [
    "requested",
    "claimed",
    "running",
    "completed",
    "failed",
    "cancelled",
    "unknown",
];

#[derive(Tabled)]
struct Row {
    run: String,
    status: String,
    recipe: String,
    backend: String,
    step: String,
    #[tabled(rename = "last loss")]
    last_loss: String,
    #[tabled(rename = "best loss")]
    best_loss: String,
    ckpts: usize,
    started: String,
    duration: String,
}

/// Lists the runs.
pub fn run(ctx: &Context, a: RunsArgs) -> Result<()> {
    if let Some(s) = &a.status {
        if !STATUSES.contains(&s.as_str()) {
            bail!("unknown status {s:?} (one of {})", STATUSES.join(", "));
        }
    }
    let (views, bound) = travel::open(ctx, &a.travel)?;
    let recipe = match &a.recipe {
        None => None,
        Some(r) => match resolve(views.as_ref(), ViewKind::Recipes, r) {
            Ok(id) => Some(id),
            Err(e) => {
                let by_name: Vec<String> = views
                    .ids(ViewKind::Recipes, "")?
                    .into_iter()
                    .filter(|id| {
                        views
                            .recipe(id)
                            .ok()
                            .flatten()
                            .is_some_and(|x| &x.name == r)
                    })
                    .collect();
                match by_name.as_slice() {
                    [one] => Some(one.clone()),
                    [] => return Err(e.into()),
                    many => bail!(
                        "recipe name {r:?} is ambiguous; candidates: {}",
                        many.join(", ")
                    ),
                }
            }
        },
    };
    let mut runs: Vec<RunView> = views
        .runs()?
        .into_iter()
        .filter(|r| a.status.as_ref().is_none_or(|s| &r.status == s))
        .filter(|r| recipe.is_none() || r.recipe_id == recipe)
        .collect();
    runs.sort_by_key(|r| (r.first_seq, r.run_id.clone()));
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": views.as_of(), "runs": runs }));
    }
    let names: std::collections::BTreeMap<String, String> = views
        .ids(ViewKind::Recipes, "")?
        .into_iter()
        .filter_map(|id| views.recipe(&id).ok().flatten().map(|r| (id, r.name)))
        .collect();
    let n = runs.len();
    output::table(runs.into_iter().map(|r| {
        Row {
            recipe: r
                .recipe_id
                .as_ref()
                .map(|id| names.get(id).cloned().unwrap_or_else(|| output::short(id)))
                .unwrap_or_else(|| "-".into()),
            backend: output::or_dash(r.backend.clone()),
            step: match (r.last_step, r.total_steps) {
                (Some(s), Some(t)) => format!("{s}/{t}"),
                (s, _) => output::or_dash(s),
            },
            last_loss: output::f4(r.metrics.last_loss.map(|v| v.value)),
            best_loss: output::f4(r.metrics.best_loss.map(|v| v.value)),
            ckpts: r.checkpoints.len(),
            started: output::opt_time(r.started_at),
            duration: output::wall_ms(&r)
                .map(output::duration_ms)
                .unwrap_or_else(|| "-".into()),
            status: r.status,
            run: r.run_id,
        }
    }));
    println!("{n} runs, {}", travel::as_of(views.as_ref(), bound));
    Ok(())
}
