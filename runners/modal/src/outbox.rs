//! The ledger snapshot a container starts from, and the outbox it writes
//! back when it cannot reach NATS.
//!
//! The snapshot is an ordinary export file (`ledger export` format) of the
//! whole ledger at submission. The container imports it into a scratch home
//! in the checkpoints Volume and appends there; its outbox is an export of
//! that scratch ledger. The dispatcher verifies the outbox completely (every
//! record, the chain, the file digest), checks that it extends the snapshot
//! it sent (same record and hash at the snapshot's head), and appends every
//! later record to the real ledger under an idempotency key: the record's
//! own key, or `import/<event id>`. Importing the same outbox twice, or a
//! longer one later, appends nothing twice.

use std::path::Path;

use foundry_events::{RecordedEvent, Sha256Digest};
use foundry_ledger::{AppendRequest, ExportReader, NewEvent};
use foundry_runner::LedgerClient;

use crate::{ModalError, Result};

/// Where a snapshot ends: the container's history must extend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Events in the snapshot (its head seq).
    pub events: u64,
    /// Hash of its last event.
    pub head_hash: Sha256Digest,
}

/// Records per read while snapshotting.
const PAGE: usize = 5_000;

/// Writes an export of everything `client` holds now to `path`.
pub async fn snapshot(client: &dyn LedgerClient, path: &Path, exported_at: &str) -> Result<Anchor> {
    let head = client.head().await?;
    let head_hash = match head {
        0 => Sha256Digest::ZERO,
        seq => {
            client
                .get(seq)
                .await?
                .ok_or_else(|| ModalError::Invalid(format!("ledger head {seq} is not readable")))?
                .hash
        }
    };
    let mut records: Vec<foundry_ledger::Result<(u64, Vec<u8>)>> = Vec::new();
    let mut next = 1u64;
    while next <= head {
        let page = client
            .read_raw(next, PAGE.min((head - next + 1) as usize))
            .await?;
        if page.is_empty() {
            break;
        }
        for bytes in page {
            records.push(Ok((next, bytes)));
            next += 1;
        }
    }
    let path = path.to_path_buf();
    let exported_at = exported_at.to_string();
    tokio::task::spawn_blocking(move || {
        foundry_ledger::write_export(&path, &exported_at, head, head_hash, records)
    })
    .await
    .map_err(|e| ModalError::Invalid(format!("snapshot task: {e}")))??;
    Ok(Anchor {
        events: head,
        head_hash,
    })
}

/// The anchor of a snapshot file (its header), after verifying the file.
pub fn anchor_of(path: &Path) -> Result<Anchor> {
    let summary = foundry_ledger::verify_export(path)?;
    Ok(Anchor {
        events: summary.events,
        head_hash: summary.head_hash,
    })
}

/// Verifies an outbox file and returns its records after `anchor`, in order.
/// A flawed file, or one whose history does not extend the snapshot, is an
/// error naming the file and the seq.
pub fn read_outbox(path: &Path, anchor: Anchor) -> Result<Vec<RecordedEvent>> {
    let bad = |why: String| ModalError::Outbox(format!("{}: {why}", path.display()));
    foundry_ledger::verify_export(path).map_err(|e| bad(e.to_string()))?;
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut reader = ExportReader::new(file).map_err(|e| bad(e.to_string()))?;
    if reader.header().events < anchor.events {
        return Err(bad(format!(
            "holds {} events, fewer than the {} of the snapshot it should extend",
            reader.header().events,
            anchor.events
        )));
    }
    let mut out = Vec::new();
    while let Some((rec, _)) = reader.next_record().map_err(|e| bad(e.to_string()))? {
        if rec.seq == anchor.events && rec.hash != anchor.head_hash {
            return Err(bad(format!(
                "seq {} has hash {}, not the snapshot's head {}: this outbox does not extend the snapshot sent",
                rec.seq,
                rec.hash.short(),
                anchor.head_hash.short()
            )));
        }
        if rec.seq > anchor.events {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The idempotency key a record is imported under.
pub fn import_key(rec: &RecordedEvent) -> String {
    rec.idempotency_key
        .clone()
        .unwrap_or_else(|| format!("import/{}", rec.event_id))
}

/// Appends `records` (from [`read_outbox`]) to the ledger, consecutive
/// records that share a key as one batch, as they were appended in the
/// container. Returns how many were new.
pub async fn import(client: &dyn LedgerClient, records: &[RecordedEvent]) -> Result<usize> {
    let mut appended = 0;
    let mut i = 0;
    while i < records.len() {
        let key = import_key(&records[i]);
        let mut j = i + 1;
        while j < records.len()
            && records[j].idempotency_key.is_some()
            && import_key(&records[j]) == key
        {
            j += 1;
        }
        let mut events = Vec::with_capacity(j - i);
        for rec in &records[i..j] {
            let mut ev = NewEvent::new(rec.decode_event()?);
            ev.stream = Some(rec.stream.clone());
            ev.causation_id = rec.causation_id;
            ev.correlation_id = rec.correlation_id;
            events.push(ev);
        }
        let out = client
            .append(AppendRequest::new(records[i].actor.clone(), events).idempotent(key))
            .await?;
        if !out.duplicate {
            appended += j - i;
        }
        i = j;
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundry_events::{Event, RunCancelled, RunHeartbeat};
    use foundry_ledger::Ledger;
    use foundry_runner::LocalLedger;

    fn append(ledger: &Ledger, ev: Event, key: Option<&str>) {
        let mut req = AppendRequest::new("t", vec![NewEvent::new(ev)]);
        if let Some(k) = key {
            req = req.idempotent(k);
        }
        ledger.append(req).unwrap();
    }

    fn beat(run: &str, step: u64) -> Event {
        Event::RunHeartbeat(RunHeartbeat {
            run_id: run.into(),
            runner_id: "r".into(),
            step,
            lease_ms: 1000,
        })
    }

    #[tokio::test]
    async fn an_outbox_that_extends_the_snapshot_imports_once() {
        let dir = tempfile::tempdir().unwrap();
        let main = Ledger::create(&dir.path().join("main")).unwrap();
        for s in 0..3 {
            append(&main, beat("a", s), None);
        }
        let client = LocalLedger::new(main.clone());
        let bundle = dir.path().join("bundle.foundry");
        let anchor = snapshot(&client, &bundle, "2026-11-29T00:00:00Z")
            .await
            .unwrap();
        assert_eq!(anchor.events, 3);
        assert_eq!(anchor_of(&bundle).unwrap(), anchor);

        // The container: the snapshot, then its own events.
        let scratch = Ledger::create(&dir.path().join("scratch")).unwrap();
        scratch.import(&bundle).unwrap();
        append(&scratch, beat("b", 1), None);
        append(&scratch, beat("b", 2), Some("trainer/x/metrics/1-2"));
        let out = dir.path().join("outbox.foundry");
        scratch.export(&out, "2026-11-29T00:00:01Z").unwrap();
        // Meanwhile the real ledger moved on.
        append(&main, beat("a", 9), None);

        let recs = read_outbox(&out, anchor).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(import(&client, &recs).await.unwrap(), 2);
        assert_eq!(import(&client, &recs).await.unwrap(), 0, "imported twice");
        assert_eq!(main.head().seq, 6);
        // Imported with their causation and stream, under their own keys.
        let last = main.get(6).unwrap().unwrap();
        assert_eq!(
            last.idempotency_key.as_deref(),
            Some("trainer/x/metrics/1-2")
        );
        assert_eq!(last.stream, recs[1].stream);
        let first = main.get(5).unwrap().unwrap();
        assert_eq!(
            first.idempotency_key,
            Some(format!("import/{}", recs[0].event_id))
        );
    }

    #[tokio::test]
    async fn an_outbox_from_another_history_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = Ledger::create(&dir.path().join("main")).unwrap();
        append(&main, beat("a", 1), None);
        let client = LocalLedger::new(main.clone());
        let bundle = dir.path().join("bundle.foundry");
        let anchor = snapshot(&client, &bundle, "t").await.unwrap();

        // A container that did not start from this snapshot.
        let other = Ledger::create(&dir.path().join("other")).unwrap();
        append(
            &other,
            Event::RunCancelled(RunCancelled {
                run_id: "z".into(),
                reason: "x".into(),
            }),
            None,
        );
        append(&other, beat("b", 1), None);
        let out = dir.path().join("outbox.foundry");
        other.export(&out, "t").unwrap();
        let e = read_outbox(&out, anchor).unwrap_err().to_string();
        assert!(e.contains("does not extend the snapshot"), "{e}");

        // One flipped byte anywhere: refused, naming the file.
        let scratch = Ledger::create(&dir.path().join("scratch")).unwrap();
        scratch.import(&bundle).unwrap();
        append(&scratch, beat("b", 1), None);
        scratch.export(&out, "t").unwrap();
        let mut bytes = std::fs::read(&out).unwrap();
        let at = bytes.len() - 60;
        bytes[at] ^= 0x40;
        std::fs::write(&out, &bytes).unwrap();
        let e = read_outbox(&out, anchor).unwrap_err().to_string();
        assert!(
            e.starts_with("outbox: ") && e.contains("outbox.foundry"),
            "{e}"
        );
        assert_eq!(main.head().seq, 1);
    }
}
