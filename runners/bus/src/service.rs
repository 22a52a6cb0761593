//! The ledger service: the single writer answering remote runners over NATS
//! request/reply, and publishing every append to JetStream through the
//! outbox.

use std::time::Duration;

use async_nats::jetstream;
use foundry_events::EventType;
use foundry_ledger::{ArtifactStore, Ledger, LedgerError, SignedBatch};
use futures::StreamExt;
use serde::Serialize;
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use crate::artifacts::ArtifactBucket;
use crate::wire::{self, ops, Page, Reply, WireError};
use crate::{ensure_stream, BusError, OutboxPublisher};

/// Where the service keeps the files its history names: the home's
/// artifact store, filled from the JetStream artifact bucket before an
/// append that names a file is confirmed.
#[derive(Clone)]
pub struct ServeArtifacts {
    store: ArtifactStore,
    bucket: ArtifactBucket,
    /// One fetch at a time: two appends naming the same file must not
    /// write its staging file together.
    fetching: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// One retention pass at a time.
    pruning: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Files this service already removed from the bucket (so a pass does
    /// not ask about them again).
    removed:
        std::sync::Arc<std::sync::Mutex<std::collections::HashSet<foundry_events::Sha256Digest>>>,
}

impl ServeArtifacts {
    /// The home's `store`, filled from the bucket on `client`'s JetStream.
    pub async fn open(store: ArtifactStore, client: &async_nats::Client) -> Result<Self, BusError> {
        Ok(ServeArtifacts {
            store,
            bucket: ArtifactBucket::on(client.clone()).await?,
            fetching: Default::default(),
            pruning: Default::default(),
            removed: Default::default(),
        })
    }

    /// Removes from the bucket the checkpoint files that retention lets go
    /// ([`foundry_runner::retention`]; this home keeps them all). Returns how
    /// many it removed. (An eval request for a checkpoint whose files went
    /// puts them back before it is confirmed: `recall_for_evals`.)
    pub async fn prune(&self, ledger: &Ledger) -> Result<usize, BusError> {
        let _one = self.pruning.lock().await;
        let reader = ledger.clone();
        let events =
            tokio::task::spawn_blocking(move || -> Result<Vec<foundry_events::Event>, BusError> {
                let mut recs = Vec::new();
                for ty in foundry_runner::retention::READS {
                    recs.extend(reader.read_type(*ty, 1, usize::MAX)?);
                }
                recs.sort_by_key(|r| r.seq);
                recs.iter()
                    .map(|r| r.decode_event().map_err(BusError::from))
                    .collect()
            })
            .await
            .map_err(|e| BusError::JetStream(format!("retention task: {e}")))??;
        let drops = foundry_runner::retention::bucket_drops(&events);
        let mut removed = 0;
        for d in drops {
            let done = self.removed.lock().map(|r| r.contains(&d)).unwrap_or(false);
            if done {
                continue;
            }
            self.bucket.remove(&d).await?;
            if let Ok(mut r) = self.removed.lock() {
                r.insert(d);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Puts back into the bucket, from this home, the files of every
    /// checkpoint an EvalRequested of `batch` names that retention let go,
    /// before the request is confirmed: the evaluator that sees it can
    /// fetch them.
    async fn recall_for_evals(
        &self,
        ledger: &Ledger,
        batch: &SignedBatch,
    ) -> Result<(), LedgerError> {
        let wanted: Vec<(String, Option<String>)> = batch
            .statements
            .iter()
            .filter(|s| s.event_type == "EvalRequested")
            .filter_map(|s| match s.decode_event() {
                Ok(foundry_events::Event::EvalRequested(r)) => Some((r.checkpoint_id?, r.run_id)),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        ledger.precheck(batch)?;
        // Not while a retention pass, which read the history before this
        // request, is still removing files.
        let _no_pass = self.pruning.lock().await;
        // The checkpoints live in their runs' streams; a request without a
        // run id is looked up among every commit.
        let reader = ledger.clone();
        let runs: Vec<Option<String>> = wanted.iter().map(|(_, r)| r.clone()).collect();
        let commits = tokio::task::spawn_blocking(move || {
            let mut recs = Vec::new();
            for run in runs {
                recs.extend(match run {
                    Some(run) => reader.read_stream(&format!("run/{run}"), 1)?,
                    None => reader.read_type(
                        foundry_events::EventType::CheckpointCommitted,
                        1,
                        usize::MAX,
                    )?,
                });
            }
            Ok::<_, LedgerError>(recs)
        })
        .await
        .map_err(|e| LedgerError::InvalidAppend(format!("checkpoint lookup task: {e}")))??;
        for rec in commits {
            let Ok(foundry_events::Event::CheckpointCommitted(c)) = rec.decode_event() else {
                continue;
            };
            if !wanted.iter().any(|(id, _)| *id == c.checkpoint_id) {
                continue;
            }
            for f in &c.files {
                let back = async {
                    if self.store.contains(&f.sha256) && !self.bucket.contains(&f.sha256).await? {
                        self.bucket
                            .upload(&f.sha256, &self.store.path_of(&f.sha256))
                            .await?;
                    }
                    Ok::<_, BusError>(())
                };
                back.await.map_err(|e| {
                    LedgerError::InvalidAppend(format!(
                        "checkpoint {} file {} could not be put back into the artifact bucket: {e}",
                        c.checkpoint_id, f.path
                    ))
                })?;
                if let Ok(mut r) = self.removed.lock() {
                    r.remove(&f.sha256);
                }
            }
        }
        Ok(())
    }

    /// Fetches every file `batch` names that the store lacks, after checking
    /// the batch's signer (so no forged request makes the service fetch).
    /// An error names the first file that is not in the bucket.
    async fn take_in(&self, ledger: &Ledger, batch: &SignedBatch) -> Result<(), LedgerError> {
        let named: Vec<(usize, String, foundry_events::Sha256Digest)> = batch
            .statements
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.stored_artifacts()
                    .into_iter()
                    .map(move |(w, d)| (i, w, d))
            })
            .collect();
        // A file named again may be in the bucket again: retention decides anew.
        if let Ok(mut removed) = self.removed.lock() {
            for (_, _, d) in &named {
                removed.remove(d);
            }
        }
        let named: Vec<_> = named
            .into_iter()
            .filter(|(_, _, d)| !self.store.contains(d))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        ledger.precheck(batch)?;
        let _one = self.fetching.lock().await;
        for (i, what, digest) in named {
            match self.bucket.fetch(&digest, &self.store).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(LedgerError::InvalidAppend(format!(
                        "event {i} names {what} ({}), which is not in the artifact bucket {}: upload it before appending",
                        digest.short(),
                        crate::artifacts::BUCKET
                    )))
                }
                Err(BusError::Ledger(e)) => {
                    return Err(LedgerError::InvalidAppend(format!(
                        "event {i} names {what}: {e}"
                    )))
                }
                Err(e) => {
                    return Err(LedgerError::InvalidAppend(format!(
                        "event {i} names {what}, which could not be fetched: {e}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// How the service retries the outbox while JetStream is unreachable.
pub const OUTBOX_RETRY: Duration = Duration::from_millis(250);

/// Serves `ledger` on `foundry.api.*` until `stop` turns true, and runs the
/// outbox publisher beside it so every committed event reaches the `FOUNDRY`
/// stream. Requests are answered concurrently; appends run on the blocking
/// pool (they fsync) and are serialised by the ledger's writer lock.
pub async fn serve(
    ledger: Ledger,
    client: async_nats::Client,
    stop: watch::Receiver<bool>,
    artifacts: Option<ServeArtifacts>,
) -> Result<(), BusError> {
    spawn_service(ledger, client, stop, artifacts)
        .await?
        .await
        .map_err(|e| BusError::JetStream(format!("ledger service task: {e}")))
}

/// Like [`serve`], but returns once the service is subscribed (requests
/// sent from then on are answered), with the task that runs it. With
/// `artifacts`, an append that names files (checkpoint files, run configs)
/// is confirmed only once each is in the home's store, fetched from the
/// artifact bucket and checked against its hash.
pub async fn spawn_service(
    ledger: Ledger,
    client: async_nats::Client,
    mut stop: watch::Receiver<bool>,
    artifacts: Option<ServeArtifacts>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let js = jetstream::new(client.clone());
    ensure_stream(&js).await?;
    let mut sub = client
        .subscribe(format!("{}.>", wire::API_PREFIX))
        .await
        .map_err(|e| BusError::JetStream(format!("subscribe {}.>: {e}", wire::API_PREFIX)))?;
    client
        .flush()
        .await
        .map_err(|e| BusError::JetStream(format!("subscribe {}.>: {e}", wire::API_PREFIX)))?;
    let outbox =
        tokio::spawn(OutboxPublisher::new(ledger.clone(), js).run(stop.clone(), OUTBOX_RETRY));
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let ledger = ledger.clone();
                    let client = client.clone();
                    let artifacts = artifacts.clone();
                    tokio::spawn(async move { answer(ledger, client, msg, artifacts.as_ref()).await });
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let _ = sub.unsubscribe().await;
        let _ = outbox.await;
        let _ = client.flush().await;
    }))
}

async fn answer(
    ledger: Ledger,
    client: async_nats::Client,
    msg: async_nats::Message,
    artifacts: Option<&ServeArtifacts>,
) {
    let Some(reply_to) = msg.reply.clone() else {
        tracing::warn!(subject = %msg.subject, "request without a reply subject, ignored");
        return;
    };
    // Pages stay well under the negotiated max payload.
    let budget = (client.server_info().max_payload / 2).max(64 * 1024);
    let body = handle(
        &ledger,
        msg.subject.as_str(),
        &msg.payload,
        budget,
        artifacts,
    )
    .await;
    if let Err(e) = client.publish(reply_to, body.into()).await {
        tracing::warn!(subject = %msg.subject, "cannot send the reply: {e}");
    }
}

fn ok<T: Serialize>(v: T) -> Vec<u8> {
    match wire::encode(&Reply::Ok(v)) {
        Ok(b) => b,
        Err(e) => err(WireError::bad_request(format!(
            "cannot encode the reply: {e}"
        ))),
    }
}

fn err(e: WireError) -> Vec<u8> {
    // A WireError always encodes (strings and integers only).
    wire::encode(&Reply::<()>::Err(e)).unwrap_or_default()
}

fn ledger_err(e: LedgerError) -> Vec<u8> {
    err(WireError::from_ledger(&e))
}

fn req<T: serde::de::DeserializeOwned>(op: &str, payload: &[u8]) -> Result<T, Vec<u8>> {
    wire::decode(payload).map_err(|e| {
        err(WireError::bad_request(format!(
            "{op}: malformed request: {e}"
        )))
    })
}

/// Fills a page from `records` until the byte budget is spent.
fn page(
    records: impl Iterator<Item = Result<Vec<u8>, LedgerError>>,
    limit: usize,
    budget: usize,
) -> Vec<u8> {
    let mut events = Vec::new();
    let mut used = 0;
    let mut complete = true;
    for (i, r) in records.enumerate() {
        if i >= limit {
            break;
        }
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return ledger_err(e),
        };
        if !events.is_empty() && used + bytes.len() + 8 > budget {
            complete = false;
            break;
        }
        used += bytes.len() + 8;
        events.push(ByteBuf::from(bytes));
    }
    ok(Page { events, complete })
}

/// Answers one request exactly as `ledger serve` does (the reply's encoded
/// bytes; a malformed request gets an error reply, never a panic): the
/// service loop calls it for every message, and the fuzzer calls it directly.
pub async fn handle_request(
    ledger: &Ledger,
    subject: &str,
    payload: &[u8],
    budget: usize,
) -> Vec<u8> {
    handle(ledger, subject, payload, budget, None).await
}

async fn handle(
    ledger: &Ledger,
    subject: &str,
    payload: &[u8],
    budget: usize,
    artifacts: Option<&ServeArtifacts>,
) -> Vec<u8> {
    let r = match subject {
        ops::APPEND => append(ledger, payload, artifacts).await,
        ops::READ_STREAM => req::<wire::ReadStream>(subject, payload).map(|q| {
            match ledger.read_stream(&q.stream, q.from_version) {
                Ok(recs) => page(recs.iter().map(|r| Ok(r.encode()?)), usize::MAX, budget),
                Err(e) => ledger_err(e),
            }
        }),
        ops::READ_TYPE => req::<wire::ReadType>(subject, payload).map(|q| {
            let Some(ty) = EventType::parse(&q.event_type) else {
                return err(WireError::bad_request(format!(
                    "read_type: unknown event type {:?}",
                    q.event_type
                )));
            };
            let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
            match ledger.read_type(ty, q.from, limit) {
                Ok(recs) => page(recs.iter().map(|r| Ok(r.encode()?)), limit, budget),
                Err(e) => ledger_err(e),
            }
        }),
        ops::READ_RAW => req::<wire::ReadRaw>(subject, payload).map(|q| {
            let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
            page(
                ledger.scan_raw(q.from.max(1)).map(|r| r.map(|(_, b)| b)),
                limit,
                budget,
            )
        }),
        ops::GET => req::<wire::Get>(subject, payload).map(|q| match ledger.get_raw(q.seq) {
            Ok(b) => ok(b.map(ByteBuf::from)),
            Err(e) => ledger_err(e),
        }),
        ops::STREAM_VERSION => {
            req::<wire::StreamVersion>(subject, payload).map(|q| {
                match ledger.stream_version(&q.stream) {
                    Ok(v) => ok(v),
                    Err(e) => ledger_err(e),
                }
            })
        }
        ops::HEAD => Ok(ok(ledger.head().seq)),
        other => Err(err(WireError::bad_request(format!(
            "unknown operation {other:?} (expected one of {}.append, read_stream, read_type, get, stream_version, head)",
            wire::API_PREFIX
        )))),
    };
    r.unwrap_or_else(|e| e)
}

async fn append(
    ledger: &Ledger,
    payload: &[u8],
    artifacts: Option<&ServeArtifacts>,
) -> Result<Vec<u8>, Vec<u8>> {
    let w = req::<wire::WireAppend>(ops::APPEND, payload)?;
    let batch = w.into_batch().map_err(ledger_err)?;
    if let Some(a) = artifacts {
        a.take_in(ledger, &batch).await.map_err(ledger_err)?;
        a.recall_for_evals(ledger, &batch)
            .await
            .map_err(ledger_err)?;
    }
    // A run's end, a score or a promotion can let checkpoint files leave
    // the bucket, an eval request call them back: a pass in the
    // background, after the reply.
    let retention_may_change = batch.statements.iter().any(|s| {
        matches!(
            s.event_type.as_str(),
            "RunCompleted"
                | "RunFailed"
                | "RunCancelled"
                | "EvalRequested"
                | "EvalScored"
                | "AdapterPromoted"
        )
    });
    let ledger_for_retention = ledger.clone();
    let ledger = ledger.clone();
    // The ledger checks the signature against the key registered for the
    // statements' actor and the key's roles; the NATS user is irrelevant.
    let outcome = tokio::task::spawn_blocking(move || ledger.append(batch))
        .await
        .map_err(|e| err(WireError::other(format!("append task failed: {e}"))))?
        .map_err(ledger_err)?;
    if let (true, Some(a)) = (retention_may_change, artifacts) {
        let (a, ledger) = (a.clone(), ledger_for_retention);
        tokio::spawn(async move {
            if let Err(e) = a.prune(&ledger).await {
                tracing::warn!("artifact retention: {e}");
            }
        });
    }
    let w = wire::WireOutcome::from_outcome(&outcome).map_err(ledger_err)?;
    Ok(ok(w))
}
