//! The ledger snapshot a container starts from, and the outbox it writes
//! back when it cannot reach NATS.
//!
//! The snapshot is an ordinary export file (`ledger export` format) of the
//! whole ledger at submission. The container imports it into a scratch home
//! in the checkpoints Volume and appends there; its outbox is an export of
//! that scratch ledger. The dispatcher verifies the outbox completely (every
//! record, the chain, the file digest), checks that it extends the snapshot
//! it sent (same record and hash at the snapshot's head), and relays every
//! later batch to the real ledger exactly as the container signed it: same
//! statements, same idempotency key, same signature by the container's
//! run-scoped key. The ledger checks that signature and that key's scope
//! again, so the dispatcher cannot add or change anything, and importing
//! the same outbox twice, or a longer one later, appends nothing twice.

use std::path::Path;

use foundry_events::{RecordedEvent, Sha256Digest};
use foundry_ledger::{ExportReader, SignedBatch};
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
    let summary = foundry_ledger::verify_export(path, None)?;
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
    foundry_ledger::verify_export(path, None).map_err(|e| bad(e.to_string()))?;
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut reader = ExportReader::new(file, None).map_err(|e| bad(e.to_string()))?;
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

/// Relays `records` (from [`read_outbox`]) to the ledger batch by batch,
/// each as its signer signed it. Returns how many records were new.
pub async fn import(client: &dyn LedgerClient, records: &[RecordedEvent]) -> Result<usize> {
    let mut appended = 0;
    let mut i = 0;
    while i < records.len() {
        let n = records[i].batch_len as usize;
        if records[i].batch_index != 0 || n == 0 || i + n > records.len() {
            return Err(ModalError::Outbox(format!(
                "seq {}: the outbox does not hold the whole batch starting there",
                records[i].seq
            )));
        }
        let batch = SignedBatch::relay(&records[i..i + n])
            .map_err(|e| ModalError::Outbox(e.to_string()))?;
        let out = client.append_signed(batch).await?;
        if !out.duplicate {
            appended += n;
        }
        i += n;
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundry_events::{Event, KeyRegistered, RunCancelled, RunHeartbeat, Timestamp};
    use foundry_ledger::{AppendRequest, Identity, Ledger, NewEvent};
    use foundry_runner::testkit::TestKeys;
    use foundry_runner::LocalLedger;

    fn append(ledger: &Ledger, id: &Identity, ev: Event, key: Option<&str>) {
        let mut req = AppendRequest::new(vec![NewEvent::new(ev)]);
        if let Some(k) = key {
            req = req.idempotent(k);
        }
        ledger.append_as(id, req).unwrap();
    }

    fn beat(run: &str, step: u64) -> Event {
        Event::RunHeartbeat(RunHeartbeat {
            run_id: run.into(),
            runner_id: "r".into(),
            step,
            lease_ms: 1000,
        })
    }

    /// A ledger with the test organisation, and a container key for run
    /// `b` registered by the dispatcher.
    fn main_ledger(dir: &Path) -> (Ledger, TestKeys, Identity) {
        let main = Ledger::create(&dir.join("main")).unwrap();
        let keys = TestKeys::new();
        keys.genesis(&main);
        let container = Identity::generate("modal:b").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        append(
            &main,
            &keys.dispatcher,
            Event::KeyRegistered(KeyRegistered {
                name: container.name().into(),
                public_key: container.public_key().into(),
                roles: vec!["trainer".into()],
                run_scope: Some("b".into()),
                expires_at: Some(Timestamp(now + 3_600_000_000_000)),
                note: "container".into(),
            }),
            None,
        );
        (main, keys, container)
    }

    #[tokio::test]
    async fn an_outbox_that_extends_the_snapshot_imports_once() {
        let dir = tempfile::tempdir().unwrap();
        let (main, keys, container) = main_ledger(dir.path());
        for s in 0..3 {
            append(&main, &keys.trainer, beat("a", s), None);
        }
        let client = LocalLedger::new(main.clone(), keys.dispatcher.clone());
        let bundle = dir.path().join("bundle.foundry");
        let anchor = snapshot(&client, &bundle, "2026-11-29T00:00:00Z")
            .await
            .unwrap();
        assert_eq!(anchor.events, main.head().seq);
        assert_eq!(anchor_of(&bundle).unwrap(), anchor);

        // The container: the snapshot, then its own events, by its own key.
        let scratch = Ledger::create(&dir.path().join("scratch")).unwrap();
        scratch.import(&bundle, None).unwrap();
        append(&scratch, &container, beat("b", 1), None);
        append(
            &scratch,
            &container,
            beat("b", 2),
            Some("trainer/x/metrics/1-2"),
        );
        let out = dir.path().join("outbox.foundry");
        scratch.export(&out, "2026-11-29T00:00:01Z").unwrap();
        // Meanwhile the real ledger moved on.
        append(&main, &keys.trainer, beat("a", 9), None);
        let head = main.head().seq;

        let recs = read_outbox(&out, anchor).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(import(&client, &recs).await.unwrap(), 2);
        assert_eq!(import(&client, &recs).await.unwrap(), 0, "imported twice");
        assert_eq!(main.head().seq, head + 2);
        // Relayed as signed: the container's key, its idempotency keys.
        let last = main.get(head + 2).unwrap().unwrap();
        assert_eq!(
            last.idempotency_key.as_deref(),
            Some("trainer/x/metrics/1-2")
        );
        assert_eq!(last.signer, container.public_key());
        assert_eq!(last.stream, recs[1].stream);
        assert_eq!(last.statement, recs[1].statement);
        assert!(main.verify().unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_outbox_with_events_beyond_the_containers_scope_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (main, keys, container) = main_ledger(dir.path());
        let client = LocalLedger::new(main.clone(), keys.dispatcher.clone());
        let bundle = dir.path().join("bundle.foundry");
        let anchor = snapshot(&client, &bundle, "t").await.unwrap();
        // A container that appends to another run of its scratch ledger
        // (which does not check signatures' scope: the forger's own copy).
        let scratch = Ledger::create(&dir.path().join("scratch")).unwrap();
        scratch.import(&bundle, None).unwrap();
        append(&scratch, &container, beat("b", 1), None);
        let out = dir.path().join("outbox.foundry");
        scratch.export(&out, "t").unwrap();
        let mut recs = read_outbox(&out, anchor).unwrap();
        // Even re-signed by the container, a statement about run a is refused.
        let mut batch = container
            .sign(AppendRequest::new(vec![NewEvent::new(beat("a", 1))]))
            .unwrap();
        batch.conditions = foundry_ledger::trust::Conditions::Relayed(Sha256Digest::ZERO);
        let (message, _) = batch.message();
        batch.signature = container.sign_message(&message);
        let e = client.append_signed(batch).await.unwrap_err().to_string();
        assert!(e.contains("scoped to run b"), "{e}");
        // And a relayed batch whose statements were edited is refused.
        recs[0].statement.payload = beat("b", 7).encode_payload().unwrap();
        let e = import(&client, &recs).await.unwrap_err().to_string();
        assert!(e.contains("does not hold"), "{e}");
    }

    #[tokio::test]
    async fn an_outbox_from_another_history_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (main, keys, container) = main_ledger(dir.path());
        append(&main, &keys.trainer, beat("a", 1), None);
        let client = LocalLedger::new(main.clone(), keys.dispatcher.clone());
        let bundle = dir.path().join("bundle.foundry");
        let anchor = snapshot(&client, &bundle, "t").await.unwrap();
        let head = main.head().seq;

        // A container that did not start from this snapshot.
        let (other, other_keys, _) = main_ledger(&dir.path().join("o"));
        append(
            &other,
            &other_keys.alice,
            Event::RunCancelled(RunCancelled {
                run_id: "z".into(),
                reason: "x".into(),
            }),
            None,
        );
        for s in 0..4 {
            append(&other, &other_keys.trainer, beat("b", s), None);
        }
        let out = dir.path().join("outbox.foundry");
        other.export(&out, "t").unwrap();
        let e = read_outbox(&out, anchor).unwrap_err().to_string();
        assert!(e.contains("does not extend the snapshot"), "{e}");

        // One flipped byte anywhere: refused, naming the file.
        let scratch = Ledger::create(&dir.path().join("scratch")).unwrap();
        scratch.import(&bundle, None).unwrap();
        append(&scratch, &container, beat("b", 1), None);
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
        assert_eq!(main.head().seq, head);
    }
}
