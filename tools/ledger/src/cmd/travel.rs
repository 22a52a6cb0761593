//! What the view commands share: `--at` / `--until` time travel, opening
//! the views (caught up, or folded as of the past), and formatting helpers.

use crate::context::Context;
use anyhow::Result;
use foundry_events::Timestamp;
use foundry_projections::{fold_until, Bound, ViewRead, ViewStore};

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
        let mut store = ViewStore::open(&ctx.home)?;
        store.catch_up(&ledger)?;
        Ok((Box::new(store), bound))
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

/// An instant to the second, for tables.
pub fn time(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    match s.find('.') {
        Some(i) => format!("{}Z", &s[..i]),
        None => s,
    }
}

/// An optional instant, `-` when absent.
pub fn opt_time(t: Option<Timestamp>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// A duration in ms as `1h02m03s`.
pub fn duration_ms(ms: i64) -> String {
    if ms < 0 {
        return "-".into();
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{}.{:03}s", s, ms % 1000)
    }
}

/// The first 12 characters of a long id.
pub fn short(id: &str) -> String {
    foundry_projections::lineage::short(id).to_string()
}

/// `-` for a missing value.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A float with 4 decimals, or `-`.
pub fn f4(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// Flattens a JSON config into `a.b.c = value` pairs, in key order.
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
