//! The ledger as runners see it.

use async_trait::async_trait;
use foundry_events::{EventType, RecordedEvent, Sha256Digest};
use foundry_ledger::{AppendOutcome, AppendRequest, ArtifactStore, Identity, Ledger, SignedBatch};

use crate::Result;

/// Append and read: everything a runner does with the ledger. Implemented
/// in-process by [`LocalLedger`] and over NATS by the `ledger serve` client,
/// so runners never care which one they got. A client acts as one
/// [`Identity`]: what it appends is signed with that key.
#[async_trait]
pub trait LedgerClient: Send + Sync {
    /// The identity this client signs as.
    fn identity(&self) -> &Identity;
    /// Appends a batch that is already signed (by this client's identity, or
    /// relayed as another key signed it; see [`Ledger::append`]).
    async fn append_signed(&self, batch: SignedBatch) -> Result<AppendOutcome>;
    /// Signs `req` as this client's identity and appends it atomically.
    async fn append(&self, req: AppendRequest) -> Result<AppendOutcome> {
        let batch = self.identity().sign(req)?;
        self.append_signed(batch).await
    }
    /// The events of one stream from `from_version` (1-based) on.
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>>;
    /// Up to `limit` events of one type with seq ≥ `from`.
    async fn read_type(&self, ty: EventType, from: u64, limit: usize)
        -> Result<Vec<RecordedEvent>>;
    /// Up to `limit` stored records (every type) with seq ≥ `from`, as the
    /// store holds them: what a snapshot of the ledger is made of.
    async fn read_raw(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>>;
    /// The event at `seq`.
    async fn get(&self, seq: u64) -> Result<Option<RecordedEvent>>;
    /// The current version of a stream (0 when it does not exist).
    async fn stream_version(&self, stream: &str) -> Result<u64>;
    /// The latest seq (0 when empty).
    async fn head(&self) -> Result<u64>;
    /// Brings the artifact `digest` into `store`, checked against its hash,
    /// from wherever the ledger keeps the files its history names (over
    /// NATS: the JetStream artifact bucket); `Ok(false)` when it is not
    /// there. The embedded client shares its home's store, so it has
    /// nothing to fetch.
    async fn fetch_artifact(&self, digest: &Sha256Digest, store: &ArtifactStore) -> Result<bool> {
        Ok(store.contains(digest))
    }
}

/// The embedded client: the ledger opened in this process, acting as one
/// identity.
#[derive(Clone)]
pub struct LocalLedger {
    ledger: Ledger,
    identity: Identity,
}

impl LocalLedger {
    /// Wraps an open ledger; appends are signed as `identity`.
    pub fn new(ledger: Ledger, identity: Identity) -> Self {
        LocalLedger { ledger, identity }
    }

    /// The same ledger, acting as another identity.
    pub fn acting_as(&self, identity: Identity) -> Self {
        LocalLedger {
            ledger: self.ledger.clone(),
            identity,
        }
    }

    /// The wrapped ledger (the embedded feed tails it).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

#[async_trait]
impl LedgerClient for LocalLedger {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn append_signed(&self, batch: SignedBatch) -> Result<AppendOutcome> {
        let ledger = self.ledger.clone();
        // Appends fsync; keep them off the async workers.
        tokio::task::spawn_blocking(move || ledger.append(batch))
            .await
            .map_err(|e| crate::RunnerError::Transport(format!("append task: {e}")))?
            .map_err(Into::into)
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>> {
        Ok(self.ledger.read_stream(stream, from_version)?)
    }

    async fn read_type(
        &self,
        ty: EventType,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self.ledger.read_type(ty, from, limit)?)
    }

    async fn read_raw(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        self.ledger
            .scan_raw(from.max(1))
            .take(limit)
            .map(|r| r.map(|(_, b)| b).map_err(Into::into))
            .collect()
    }

    async fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        Ok(self.ledger.get(seq)?)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        Ok(self.ledger.stream_version(stream)?)
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.ledger.head().seq)
    }
}
