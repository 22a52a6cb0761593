//! What the view commands share: `--at` / `--until` time travel, and
//! opening the views (caught up, or folded as of the past). Formatting
//! helpers live in `crate::output`.

use crate::context::Context;
use anyhow::Result;
use foundry_projections::{fold_until, Bound, ViewRead};

/// Time travel: show the views as they were at an instant or a seq.
#[derive(clap::Args, Clone, Debug)]
pub struct TravelArgs {
    /// Show the views as of this instant (RFC 3339, e.g. 2026-11-29T10:00:00Z).
    #[arg(long, value_name = "RFC3339", conflicts_with = "until")]
    pub at: Option<String>,
    /// Show the views as of this seq (inclusive).
    #[arg(long, value_name = "SEQ")]
    pub until: Option<u64>,
}

impl TravelArgs {
    /// The bound these options name.
    pub fn bound(&self) -> Result<Bound> {
        Ok(Bound::from_args(self.at.as_deref(), self.until)?)
    }
}

/// Opens the views: the persisted ones caught up to the head, or, with a
/// bound, a fold of the ledger up to it. Returns them and the bound.
pub fn open(ctx: &Context, t: &TravelArgs) -> Result<(Box<dyn ViewRead>, Bound)> {
    let bound = t.bound()?;
    let ledger = ctx.ledger()?;
    if bound == Bound::Head {
        Ok((Box::new(ctx.views(&ledger)?), bound))
    } else {
        Ok((Box::new(fold_until(&ledger, bound)?), bound))
    }
}

/// `as of seq N` or `as of seq N (--at T)`, for headings.
pub fn as_of(views: &dyn ViewRead, bound: Bound) -> String {
    match bound {
        Bound::Head => format!("as of seq {} (head)", views.as_of()),
        Bound::Seq(_) => format!("as of seq {}", views.as_of()),
        Bound::Time(t) => format!("as of {t} (seq {})", views.as_of()),
    }
}
