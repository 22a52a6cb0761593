//! Tables for people, JSON for programs, and the formatting every command
//! shares (instants, durations, short ids, dashes for absent values).

use foundry_events::Timestamp;
use foundry_projections::RunView;
use serde::Serialize;
use tabled::settings::Style;
use tabled::{Table, Tabled};

/// Prints rows as a table.
pub fn table<T: Tabled>(rows: impl IntoIterator<Item = T>) {
    let mut t = Table::new(rows);
    t.with(Style::sharp());
    println!("{t}");
}

/// Prints rows of strings under `headers` as a table.
pub fn grid(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut b = tabled::builder::Builder::default();
    b.push_record(headers.iter().map(|h| h.to_string()));
    for r in rows {
        b.push_record(r);
    }
    let mut t = b.build();
    t.with(Style::sharp());
    println!("{t}");
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A two-column key/value table.
#[derive(Tabled)]
pub struct Field {
    /// The name.
    #[tabled(rename = "field")]
    pub name: String,
    /// The value.
    #[tabled(rename = "value")]
    pub value: String,
}

/// Prints key/value pairs as a table.
pub fn fields(pairs: impl IntoIterator<Item = (impl Into<String>, impl ToString)>) {
    table(pairs.into_iter().map(|(k, v)| Field {
        name: k.into(),
        value: v.to_string(),
    }));
}

/// Prints a history's root key and whether it was checked against
/// `--trust-root`.
pub fn root_line(root: Option<&str>, trusted: bool) {
    if let Some(root) = root {
        let how = if trusted {
            "the trusted root"
        } else {
            "not checked: pass --trust-root to require it"
        };
        println!("root key {root} ({how})");
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

/// Wall time of a run, from its start to its end (`None` until both are known).
pub fn wall_ms(r: &RunView) -> Option<i64> {
    let start = r.started_at?;
    let end = r.ended_at?;
    Some(end.unix_millis() - start.unix_millis())
}
