//! `ledger stats`.

use crate::context::Context;
use anyhow::Result;
use foundry_events::EventType;
use std::collections::BTreeMap;

/// Runs `ledger stats`.
pub fn run(ctx: &Context) -> Result<()> {
    let ledger = ctx.ledger()?;
    let head = ledger.head();
    let mut by_type = BTreeMap::new();
    for t in EventType::ALL {
        let n = ledger.seqs_of_type(*t, 0)?.len();
        if n > 0 {
            by_type.insert(t.as_str(), n);
        }
    }
    let streams = ledger.streams()?;
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (s, _) in &streams {
        let kind = s.split('/').next().unwrap_or("").to_string();
        *by_kind.entry(kind).or_default() += 1;
    }
    let first = ledger.get(1)?.map(|r| r.recorded_at.to_rfc3339());
    let last = ledger.get(head.seq)?.map(|r| r.recorded_at.to_rfc3339());
    let pending = ledger.outbox_pending(usize::MAX)?.len();
    let size = ledger.size_on_disk();
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "events": head.seq,
            "head_hash": head.hash,
            "streams": streams.len(),
            "streams_by_kind": by_kind,
            "events_by_type": by_type,
            "first_event_at": first,
            "last_event_at": last,
            "outbox_pending": pending,
            "size_on_disk_bytes": size,
        }));
    }
    let mut rows: Vec<(String, String)> = vec![
        ("events".into(), head.seq.to_string()),
        ("head hash".into(), head.hash.to_hex()),
        ("streams".into(), streams.len().to_string()),
        ("first event".into(), first.unwrap_or_else(|| "-".into())),
        ("last event".into(), last.unwrap_or_else(|| "-".into())),
        ("outbox pending".into(), pending.to_string()),
        (
            "size on disk".into(),
            format!("{:.1} MiB", size as f64 / (1 << 20) as f64),
        ),
    ];
    for (k, n) in by_kind {
        rows.push((format!("streams: {k}"), n.to_string()));
    }
    for (t, n) in by_type {
        rows.push((format!("type: {t}"), n.to_string()));
    }
    crate::output::fields(rows);
    Ok(())
}
