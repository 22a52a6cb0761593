//! `ledger dataset pin SOURCE` and `ledger dataset show ID`.

use std::path::PathBuf;

use anyhow::Result;
use foundry_datasets::{pin_source_with, HubOptions, PinProgress};
use foundry_ledger::{AppendRequest, NewEvent};
use tabled::Tabled;

use super::show::{self, Kind};
use super::travel::TravelArgs;
use crate::context::Context;
use crate::output;

/// `ledger dataset …`.
#[derive(clap::Subcommand)]
pub enum DatasetCommand {
    /// Hash and validate every shard of a local dir or hf://ORG/NAME@REV; record DatasetPinned.
    Pin(PinArgs),
    /// Show a pinned dataset (id or unique prefix).
    Show {
        /// Dataset id or unique prefix.
        id: String,
        #[command(flatten)]
        travel: TravelArgs,
    },
}

/// Where hf:// sources come from (shared by `dataset pin` and `model pin`).
#[derive(clap::Args)]
pub struct HubArgs {
    /// HF cache dir (default: HF_HUB_CACHE / HF_HOME rules).
    #[arg(long, value_name = "DIR")]
    pub hf_cache: Option<PathBuf>,
    /// Never use the network: read hf:// sources from the cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

impl HubArgs {
    /// The hub options.
    pub fn options(&self) -> HubOptions {
        HubOptions {
            cache_dir: self.hf_cache.clone(),
            offline: self.offline,
            pin_root: None,
        }
    }
}

/// Options of `ledger dataset pin`.
#[derive(clap::Args)]
pub struct PinArgs {
    /// A local dataset dir or hf://ORG/NAME@REVISION.
    source: String,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Tabled)]
struct SplitRow {
    split: String,
    shards: usize,
    rows: u64,
    #[tabled(rename = "doc types")]
    doc_types: String,
    layouts: usize,
}

/// Runs a dataset subcommand.
pub fn run(ctx: &Context, c: DatasetCommand) -> Result<()> {
    match c {
        DatasetCommand::Pin(a) => pin(ctx, a),
        DatasetCommand::Show { id, travel } => {
            show::run(ctx, show::ShowArgs::new(Kind::Dataset, id, travel))
        }
    }
}

fn pin(ctx: &Context, a: PinArgs) -> Result<()> {
    // Bytes read, shards done and the rate, on a terminal only.
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !ctx.json {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] pinning: {bytes} read ({bytes_per_sec}), {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let pinned = pin_source_with(&a.source, &a.hub.options(), &|p: PinProgress| {
        bar.set_position(p.bytes);
        bar.set_message(format!(
            "shard {} of {}",
            p.shards_done.min(p.shards.saturating_sub(1)) + 1,
            p.shards
        ));
    });
    bar.finish_and_clear();
    let p = pinned?;
    let ledger = ctx.ledger()?;
    let out = ctx.append(
        &ledger,
        AppendRequest::new(vec![NewEvent::new(p.to_event())]).idempotent(p.dataset_id.clone()),
    )?;
    let seq = out.events.first().map(|e| e.seq).unwrap_or(0);
    if ctx.json {
        return output::json(&serde_json::json!({
            "dataset_id": p.dataset_id,
            "resolved_revision": p.resolved_revision,
            "seq": seq,
            "duplicate": out.duplicate,
            "shards": p.shards,
            "splits": p.splits,
        }));
    }
    println!("{}", p.dataset_id);
    if out.duplicate {
        eprintln!("dataset was already pinned (seq {seq})");
    }
    output::table(p.splits.iter().map(|(split, c)| {
        SplitRow {
            split: split.clone(),
            shards: p.shards.iter().filter(|s| &s.split == split).count(),
            rows: c.rows,
            doc_types: c
                .by_doc_type
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            layouts: c.by_layout.len(),
        }
    }));
    Ok(())
}
