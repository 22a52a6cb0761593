//! `ledger recipe declare FILE` and `ledger recipe show ID`.

use std::path::PathBuf;

use anyhow::Result;
use foundry_events::RecipeDeclared;
use foundry_ledger::{AppendRequest, NewEvent};

use super::show::{self, Kind};
use super::travel::TravelArgs;
use crate::context::Context;
use crate::output;

/// `ledger recipe …`.
#[derive(clap::Subcommand)]
pub enum RecipeCommand {
    /// Resolve a recipe (FOUNDRY_* overrides applied), record RecipeDeclared and print its id.
    Declare(DeclareArgs),
    /// Show a declared recipe (id or unique prefix).
    Show {
        /// Recipe id or unique prefix.
        id: String,
        #[command(flatten)]
        travel: TravelArgs,
    },
}

/// Options of `ledger recipe declare`.
#[derive(clap::Args)]
pub struct DeclareArgs {
    /// The recipe TOML file.
    file: PathBuf,
    /// A model dir whose config.json lists the modules `lora.target_modules` must match.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
}

/// Runs a recipe subcommand.
pub fn run(ctx: &Context, c: RecipeCommand) -> Result<()> {
    match c {
        RecipeCommand::Declare(a) => declare(ctx, a),
        RecipeCommand::Show { id, travel } => {
            show::run(ctx, show::ShowArgs::new(Kind::Recipe, id, travel))
        }
    }
}

fn declare(ctx: &Context, a: DeclareArgs) -> Result<()> {
    let modules = match &a.model_dir {
        Some(d) => Some(foundry_recipes::idefics2_module_names_from_dir(d)?),
        None => None,
    };
    let env = foundry_recipes::foundry_env();
    let r = foundry_recipes::resolve_file(&a.file, &env, modules.as_deref())?;
    let ledger = ctx.ledger()?;
    let ev = RecipeDeclared {
        recipe_id: r.id.clone(),
        name: r.recipe.name.clone(),
        source: r.source.clone(),
        resolved_config: r.config.clone(),
        env_overrides: r.env.clone(),
    };
    let out = ctx.append(
        &ledger,
        AppendRequest::new(vec![NewEvent::new(ev)]).idempotent(r.id.clone()),
    )?;
    let seq = out.events.first().map(|e| e.seq).unwrap_or(0);
    if ctx.json {
        return output::json(&serde_json::json!({
            "recipe_id": r.id,
            "name": r.recipe.name,
            "seq": seq,
            "duplicate": out.duplicate,
        }));
    }
    println!("{}", r.id);
    if out.duplicate {
        eprintln!("recipe {} was already declared (seq {seq})", r.recipe.name);
    }
    Ok(())
}
