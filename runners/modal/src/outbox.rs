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
        let page = client.read_raw(next, PAGE.min((head - next + 1) as usize)).await?;
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
        while j < records.len() && records[j].idempotency_key.is_some() && import_key(&records[j]) == key {
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
