//! `ledger init`.

use crate::context::Context;
use anyhow::Result;

/// Creates the home and an empty ledger; harmless on an existing one.
pub fn run(ctx: &Context) -> Result<()> {
    let ledger = ctx.home.init()?;
    let head = ledger.head();
    if ctx.json {
        crate::output::json(&serde_json::json!({
            "home": ctx.home.root(),
            "events": head.seq,
        }))
    } else {
        if head.seq == 0 {
            println!("initialized empty ledger in {}", ctx.home.root().display());
        } else {
            println!(
                "ledger in {} already holds {} events",
                ctx.home.root().display(),
                head.seq
            );
        }
        Ok(())
    }
}
