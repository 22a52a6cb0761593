//! [`NatsLedgerClient`]: the ledger as a remote runner sees it, through the
//! `ledger serve` request/reply service.

use std::time::Duration;

use async_trait::async_trait;
use foundry_events::{EventType, RecordedEvent, Sha256Digest};
use foundry_ledger::{AppendOutcome, ArtifactStore, Identity, SignedBatch};
use foundry_runner::{LedgerClient, Result, RunnerError};
use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;

use crate::artifacts::ArtifactBucket;
use crate::wire::{self, ops, Page, Reply};

/// How fast `ledger serve` is assumed to fetch artifacts at worst, to size
/// the wait for an append that names them (on top of the usual timeout).
const SLOWEST_FETCH_BYTES_PER_S: u64 = 20 << 20;

/// How long a request waits for the service by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request keeps retrying by default while no service is
/// subscribed (a `ledger serve` restart).
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(5);

/// A [`LedgerClient`] over NATS request/reply. Conflicts and invalid appends
/// come back as the same `LedgerError`s the embedded client returns; an
/// unreachable or silent service is `RunnerError::Transport` saying which
/// operation and why. A request nobody received (no responders: the service
/// is restarting) is sent again for a while, which is always safe; a request
/// that timed out is not retried here, because it may have been applied.
///
/// Appends are signed here with the client's [`Identity`]; the service
/// checks the signature and the key's roles, so the NATS connection's own
/// credentials never let anyone append as someone else.
#[derive(Clone)]
pub struct NatsLedgerClient {
    client: async_nats::Client,
    identity: Identity,
    timeout: Duration,
    reconnect: Duration,
    /// The home whose artifact store uploads come from.
    upload_from: Option<ArtifactStore>,
    /// The artifact bucket, opened on first use.
    bucket: std::sync::Arc<tokio::sync::OnceCell<ArtifactBucket>>,
}

impl NatsLedgerClient {
    /// A client over a connected NATS client, signing as `identity`.
    pub fn new(client: async_nats::Client, identity: Identity) -> Self {
        NatsLedgerClient {
            client,
            identity,
            timeout: DEFAULT_TIMEOUT,
            reconnect: DEFAULT_RECONNECT,
            upload_from: None,
            bucket: Default::default(),
        }
    }

    /// Ships artifacts through the JetStream bucket: before an append that
    /// names files ([`foundry_events::Event::stored_artifacts`]: checkpoint files, run
    /// configs), each is uploaded from `store` unless the bucket holds it,
    /// so `ledger serve` can fetch it into its home before it confirms; and
    /// [`LedgerClient::fetch_artifact`] fetches into a store from the bucket.
    pub fn with_artifacts(mut self, store: ArtifactStore) -> Self {
        self.upload_from = Some(store);
        self
    }

    async fn bucket(&self) -> Result<&ArtifactBucket> {
        self.bucket
            .get_or_try_init(|| ArtifactBucket::on(self.client.clone()))
            .await
            .map_err(|e| RunnerError::Transport(e.to_string()))
    }

    /// Uploads what `batch` names and the bucket lacks; returns the bytes
    /// named, which size the wait for the append.
    async fn ship(&self, batch: &SignedBatch) -> Result<u64> {
        let named: Vec<(String, Sha256Digest)> = batch
            .statements
            .iter()
            .flat_map(|s| s.stored_artifacts())
            .collect();
        if named.is_empty() {
            return Ok(0);
        }
        let Some(store) = &self.upload_from else {
            return Ok(0);
        };
        let bucket = self.bucket().await?;
        let mut bytes = 0;
        for (what, digest) in named {
            let path = store.path_of(&digest);
            if let Ok(m) = std::fs::metadata(&path) {
                bytes += m.len();
                bucket
                    .upload(&digest, &path)
                    .await
                    .map_err(|e| RunnerError::Transport(format!("upload {what}: {e}")))?;
            } else if !bucket
                .contains(&digest)
                .await
                .map_err(|e| RunnerError::Transport(e.to_string()))?
            {
                return Err(RunnerError::Missing(format!(
                    "{what} ({}) is neither in {} nor in the artifact bucket, so the ledger could not hold it",
                    digest.short(),
                    store.path_of(&digest).display()
                )));
            }
        }
        Ok(bytes)
    }

    /// The same connection, signing as another identity.
    pub fn acting_as(&self, identity: Identity) -> Self {
        NatsLedgerClient {
            identity,
            ..self.clone()
        }
    }

    /// Sets how long a request keeps being resent while no service answers
    /// (zero: fail at once).
    pub fn with_reconnect(mut self, reconnect: Duration) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets how long one request waits for its reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<Q: Serialize, R: DeserializeOwned>(&self, op: &'static str, q: &Q) -> Result<R> {
        self.call_within(op, q, self.timeout).await
    }

    async fn call_within<Q: Serialize, R: DeserializeOwned>(
        &self,
        op: &'static str,
        q: &Q,
        timeout: Duration,
    ) -> Result<R> {
        let body = wire::encode(q)
            .map_err(|e| RunnerError::Transport(format!("{op}: cannot encode the request: {e}")))?;
        let started = tokio::time::Instant::now();
        let msg = loop {
            let req = async_nats::Request::new()
                .payload(body.clone().into())
                .timeout(Some(timeout));
            let answer = tokio::time::timeout(
                timeout + Duration::from_millis(500),
                self.client.send_request(op, req),
            )
            .await;
            match answer {
                Err(_) => return Err(self.timed_out(op, timeout)),
                Ok(Err(e)) => {
                    use async_nats::RequestErrorKind as K;
                    return Err(match e.kind() {
                        K::TimedOut => self.timed_out(op, timeout),
                        // Nobody received it: safe to send again for a while.
                        K::NoResponders if started.elapsed() < self.reconnect => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        K::NoResponders => RunnerError::Transport(format!(
                            "{op}: no ledger service is answering (is `ledger serve` running against this NATS server?)"
                        )),
                        _ => RunnerError::Transport(format!("{op}: {e}")),
                    });
                }
                Ok(Ok(m)) => break m,
            }
        };
        match wire::decode::<Reply<R>>(&msg.payload) {
            Ok(Reply::Ok(r)) => Ok(r),
            Ok(Reply::Err(w)) => Err(match w.to_ledger() {
                Some(l) => RunnerError::Ledger(l),
                None => RunnerError::Transport(format!("{op}: ledger service: {}", w.message)),
            }),
            Err(e) => Err(RunnerError::Transport(format!(
                "{op}: malformed reply from the ledger service: {e}"
            ))),
        }
    }

    fn timed_out(&self, op: &str, timeout: Duration) -> RunnerError {
        RunnerError::Transport(format!(
            "{op}: the ledger service did not answer within {:.1}s",
            timeout.as_secs_f64()
        ))
    }
}

fn records(b: &[ByteBuf]) -> Result<Vec<RecordedEvent>> {
    Ok(wire::decode_records(b)?)
}

#[async_trait]
impl LedgerClient for NatsLedgerClient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn append_signed(&self, batch: SignedBatch) -> Result<AppendOutcome> {
        let bytes = self.ship(&batch).await?;
        let w = wire::WireAppend::from_batch(&batch);
        let wait = self.timeout + Duration::from_secs(bytes / SLOWEST_FETCH_BYTES_PER_S);
        let o: wire::WireOutcome = self.call_within(ops::APPEND, &w, wait).await?;
        Ok(o.into_outcome()?)
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let mut from = from_version;
        loop {
            let q = wire::ReadStream {
                stream: stream.to_string(),
                from_version: from,
            };
            let p: Page = self.call(ops::READ_STREAM, &q).await?;
            let recs = records(&p.events)?;
            let last = recs.last().map(|r| r.stream_version);
            out.extend(recs);
            match (p.complete, last) {
                (false, Some(v)) => from = v + 1,
                _ => return Ok(out),
            }
        }
    }

    async fn read_type(
        &self,
        ty: EventType,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut out: Vec<RecordedEvent> = Vec::new();
        let mut from = from;
        loop {
            let q = wire::ReadType {
                event_type: ty.as_str().to_string(),
                from,
                limit: (limit - out.len()) as u64,
            };
            let p: Page = self.call(ops::READ_TYPE, &q).await?;
            let recs = records(&p.events)?;
            let last = recs.last().map(|r| r.seq);
            out.extend(recs);
            match (p.complete, last) {
                (false, Some(s)) if out.len() < limit => from = s + 1,
                _ => return Ok(out),
            }
        }
    }

    async fn read_raw(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut from = from;
        loop {
            let q = wire::ReadRaw {
                from,
                limit: (limit - out.len()) as u64,
            };
            let p: Page = self.call(ops::READ_RAW, &q).await?;
            let n = p.events.len() as u64;
            out.extend(p.events.into_iter().map(|b| b.into_vec()));
            if p.complete || n == 0 || out.len() >= limit {
                return Ok(out);
            }
            from += n;
        }
    }

    async fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        let b: Option<ByteBuf> = self.call(ops::GET, &wire::Get { seq }).await?;
        Ok(b.map(|b| RecordedEvent::decode(&b)).transpose()?)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let q = wire::StreamVersion {
            stream: stream.to_string(),
        };
        self.call(ops::STREAM_VERSION, &q).await
    }

    async fn head(&self) -> Result<u64> {
        self.call(ops::HEAD, &wire::Head {}).await
    }

    async fn fetch_artifact(&self, digest: &Sha256Digest, store: &ArtifactStore) -> Result<bool> {
        if store.contains(digest) {
            return Ok(true);
        }
        self.bucket()
            .await?
            .fetch(digest, store)
            .await
            .map_err(|e| RunnerError::Transport(e.to_string()))
    }
}
