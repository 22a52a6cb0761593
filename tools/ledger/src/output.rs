//! Tables for people, JSON for programs.

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
