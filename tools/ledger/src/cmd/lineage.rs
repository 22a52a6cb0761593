//! `ledger lineage <adapter|checkpoint|run id>`: where it came from, drawn.

use super::travel::{self, TravelArgs};
use crate::context::Context;
use crate::output;
use anyhow::Result;
use foundry_projections::{lineage::lineage, resolve_any, ViewKind};

/// Options of `ledger lineage`.
#[derive(clap::Args)]
pub struct LineageArgs {
    /// An adapter/checkpoint id or a run id (or a unique prefix of either).
    id: String,
    #[command(flatten)]
    travel: TravelArgs,
}

/// Draws the lineage tree.
pub fn run(ctx: &Context, a: LineageArgs) -> Result<()> {
    let (views, bound) = travel::open(ctx, &a.travel)?;
    let v = views.as_ref();
    let (kind, id) = resolve_any(v, &[ViewKind::Checkpoints, ViewKind::Runs], &a.id)?;
    let tree = lineage(v, kind, &id)?;
    if ctx.json {
        return output::json(&serde_json::json!({ "as_of_seq": v.as_of(), "tree": tree }));
    }
    print!("{}", tree.render());
    println!("({})", travel::as_of(v, bound));
    Ok(())
}
