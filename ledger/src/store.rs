//! The sled-backed store: a single writer appends atomic, durable batches;
//! any number of readers scan by seq, stream or type, or tail the head.

use crate::keys::{self, Head};
use crate::{LedgerError, Result};
use foundry_events::{
    Event, EventId, EventType, RecordedEvent, Sha256Digest, Timestamp, SCHEMA_VERSION,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a batch expects of a stream before it appends, for optimistic
/// concurrency (e.g. two runners claiming one run: exactly one wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No expectation.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version.
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// One event to append, before the ledger assigns seq, version and hash.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The payload.
    pub event: Event,
    /// Target stream; `None` uses [`Event::default_stream`].
    pub stream: Option<String>,
    /// The event that caused this one.
    pub causation_id: Option<EventId>,
    /// The conversation it belongs to.
    pub correlation_id: Option<EventId>,
}

impl NewEvent {
    /// An event on its default stream with no causation.
    pub fn new(event: impl Into<Event>) -> Self {
        NewEvent {
            event: event.into(),
            stream: None,
            causation_id: None,
            correlation_id: None,
        }
    }

    /// Sets the causing event (and, if unset, the correlation).
    pub fn caused_by(mut self, cause: EventId, correlation: Option<EventId>) -> Self {
        self.causation_id = Some(cause);
        self.correlation_id = correlation.or(Some(cause));
        self
    }
}

/// A batch of events appended atomically: all or nothing.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// Who is appending (recorded on every event).
    pub actor: String,
    /// Appending the same key again returns the original events.
    pub idempotency_key: Option<String>,
    /// Stream versions the batch requires, checked before anything is written.
    pub expected: Vec<(String, ExpectedVersion)>,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// A batch by `actor` with no key and no expectations.
    pub fn new(actor: impl Into<String>, events: Vec<NewEvent>) -> Self {
        AppendRequest {
            actor: actor.into(),
            idempotency_key: None,
            expected: Vec::new(),
            events,
        }
    }

    /// Sets the idempotency key.
    pub fn idempotent(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a stream-version expectation.
    pub fn expect(mut self, stream: impl Into<String>, v: ExpectedVersion) -> Self {
        self.expected.push((stream.into(), v));
        self
    }
}

/// The result of an append.
#[derive(Clone, Debug)]
pub struct AppendOutcome {
    /// The events as stored (the originals when `duplicate`).
    pub events: Vec<RecordedEvent>,
    /// True when the idempotency key had been used: nothing was appended.
    pub duplicate: bool,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    writer: Mutex<Head>,
    head_tx: watch::Sender<u64>,
}

/// An open ledger. Cheap to clone; clones share the store and the writer lock.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// Longest stream name accepted.
const MAX_STREAM_LEN: usize = 512;

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Ledger {
    /// Creates an empty ledger in `dir` (which may exist). Idempotent.
    pub fn create(dir: &Path) -> Result<Ledger> {
        std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::open_dir(dir)
    }

    /// Opens an existing ledger directory; fails if it is missing or locked.
    pub fn open(dir: &Path) -> Result<Ledger> {
        if !dir.join("db").exists() && !dir.join("conf").exists() {
            return Err(LedgerError::NotInitialized(
                dir.parent().unwrap_or(dir).to_path_buf(),
            ));
        }
        Self::open_dir(dir)
    }

    fn open_dir(dir: &Path) -> Result<Ledger> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                let msg = e.to_string();
                if msg.contains("could not acquire lock") {
                    LedgerError::Locked(dir.to_path_buf())
                } else {
                    LedgerError::storage(dir, msg)
                }
            })?;
        let tree = db
            .open_tree("ledger")
            .map_err(|e| LedgerError::storage(dir, e))?;
        let head = match tree.get(keys::HEAD).map_err(|e| LedgerError::storage(dir, e))? {
            Some(v) => Head::decode(&v).ok_or_else(|| LedgerError::Corrupt {
                seq: 0,
                reason: "the head record is damaged".into(),
            })?,
            None => Head::default(),
        };
        let (head_tx, _) = watch::channel(head.seq);
        Ok(Ledger {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                db,
                tree,
                writer: Mutex::new(head),
                head_tx,
            }),
        })
    }

    /// The ledger's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn err(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::storage(&self.inner.path, e)
    }

    /// The last appended event's seq, hash and time.
    pub fn head(&self) -> Head {
        match self.inner.writer.lock() {
            Ok(h) => *h,
            Err(p) => *p.into_inner(),
        }
    }

    /// The head as stored on disk (what `verify` checks against).
    pub(crate) fn stored_head(&self) -> Result<Option<Head>> {
        let v = self.inner.tree.get(keys::HEAD).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| Head::decode(&v)))
    }

    /// Current version of a stream (0 if it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64> {
        let v = self
            .inner
            .tree
            .get(keys::version(stream))
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| keys::tail_u64(&v)).unwrap_or(0))
    }

    /// Appends a batch atomically and durably: when this returns `Ok`, the
    /// events are flushed to disk. With a used idempotency key, returns the
    /// original events and appends nothing. A failed expectation is a
    /// [`LedgerError::Conflict`] and nothing is written.
    pub fn append(&self, req: AppendRequest) -> Result<AppendOutcome> {
        if req.events.is_empty() {
            return Err(LedgerError::InvalidAppend("a batch needs at least one event".into()));
        }
        let mut head = self
            .inner
            .writer
            .lock()
            .map_err(|_| LedgerError::InvalidAppend("writer lock poisoned".into()))?;
        let tree = &self.inner.tree;

        if let Some(key) = &req.idempotency_key {
            if let Some(v) = tree.get(keys::idempotency(key)).map_err(|e| self.err(e))? {
                let (first, count) = decode_span(&v).ok_or_else(|| LedgerError::Corrupt {
                    seq: 0,
                    reason: format!("idempotency entry for {key:?} is damaged"),
                })?;
                let events = (first..first + count)
                    .map(|s| {
                        self.get(s)?.ok_or(LedgerError::Corrupt {
                            seq: s,
                            reason: "event named by an idempotency key is missing".into(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                return Ok(AppendOutcome {
                    events,
                    duplicate: true,
                });
            }
        }

        let mut versions: HashMap<String, u64> = HashMap::new();
        for (stream, expected) in &req.expected {
            let actual = self.stream_version(stream)?;
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual == 0,
                ExpectedVersion::Exact(v) => actual == *v,
            };
            if !ok {
                return Err(LedgerError::Conflict {
                    stream: stream.clone(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }

        let recorded_at = now_nanos().max(head.recorded_at);
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(req.events.len());
        let mut prev = head.hash;
        let mut seq = head.seq;
        for ne in &req.events {
            let stream = ne
                .stream
                .clone()
                .unwrap_or_else(|| ne.event.default_stream());
            if stream.is_empty() || stream.len() > MAX_STREAM_LEN || stream.contains('\0') {
                return Err(LedgerError::InvalidAppend(format!(
                    "stream name {stream:?} must be 1..={MAX_STREAM_LEN} bytes without NUL"
                )));
            }
            let version = match versions.get(&stream) {
                Some(v) => *v + 1,
                None => self.stream_version(&stream)? + 1,
            };
            versions.insert(stream.clone(), version);
            seq += 1;
            let ty = ne.event.event_type();
            let rec = RecordedEvent {
                seq,
                stream: stream.clone(),
                stream_version: version,
                event_id: uuid::Uuid::now_v7(),
                event_type: ty.as_str().to_string(),
                schema_version: SCHEMA_VERSION,
                recorded_at: Timestamp(recorded_at),
                actor: req.actor.clone(),
                causation_id: ne.causation_id,
                correlation_id: ne.correlation_id,
                idempotency_key: req.idempotency_key.clone(),
                payload: ne.event.encode_payload()?,
                prev_hash: prev,
                hash: Sha256Digest::ZERO,
            }
            .seal()?;
            prev = rec.hash;
            let bytes = rec.encode()?;
            batch.insert(&keys::event(seq), bytes);
            batch.insert(keys::stream_entry(&stream, version), &seq.to_be_bytes());
            batch.insert(keys::type_entry(ty.as_str(), seq), &[]);
            batch.insert(&keys::outbox(seq), &[]);
            out.push(rec);
        }
        for (stream, v) in &versions {
            batch.insert(keys::version(stream), &v.to_be_bytes());
        }
        let first = head.seq + 1;
        if let Some(key) = &req.idempotency_key {
            batch.insert(keys::idempotency(key), &encode_span(first, out.len() as u64));
        }
        let new_head = Head {
            seq,
            hash: prev,
            recorded_at,
        };
        batch.insert(keys::HEAD, new_head.encode().as_slice());
        tree.apply_batch(batch).map_err(|e| self.err(e))?;
        self.inner.db.flush().map_err(|e| self.err(e))?;
        *head = new_head;
        drop(head);
        self.inner.head_tx.send_replace(seq);
        Ok(AppendOutcome {
            events: out,
            duplicate: false,
        })
    }

    /// Stores already-sealed records verbatim (import). The caller has
    /// verified them; they must continue the chain from the current head.
    pub(crate) fn append_verbatim(&self, records: &[(RecordedEvent, Vec<u8>)]) -> Result<()> {
        let mut head = self
            .inner
            .writer
            .lock()
            .map_err(|_| LedgerError::InvalidAppend("writer lock poisoned".into()))?;
        let mut batch = sled::Batch::default();
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut spans: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut new_head = *head;
        for (rec, bytes) in records {
            if rec.seq != new_head.seq + 1 || rec.prev_hash != new_head.hash {
                return Err(LedgerError::ImportRefused(format!(
                    "seq {}: does not continue the chain at seq {}",
                    rec.seq, new_head.seq
                )));
            }
            batch.insert(&keys::event(rec.seq), bytes.as_slice());
            batch.insert(
                keys::stream_entry(&rec.stream, rec.stream_version),
                &rec.seq.to_be_bytes(),
            );
            batch.insert(keys::type_entry(&rec.event_type, rec.seq), &[]);
            batch.insert(&keys::outbox(rec.seq), &[]);
            versions.insert(&rec.stream, rec.stream_version);
            if let Some(k) = &rec.idempotency_key {
                spans
                    .entry(k)
                    .and_modify(|s| s.1 += 1)
                    .or_insert((rec.seq, 1));
            }
            new_head = Head {
                seq: rec.seq,
                hash: rec.hash,
                recorded_at: rec.recorded_at.0,
            };
        }
        for (stream, v) in versions {
            batch.insert(keys::version(stream), &v.to_be_bytes());
        }
        for (k, (first, count)) in spans {
            batch.insert(keys::idempotency(k), &encode_span(first, count));
        }
        batch.insert(keys::HEAD, new_head.encode().as_slice());
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.err(e))?;
        self.inner.db.flush().map_err(|e| self.err(e))?;
        *head = new_head;
        drop(head);
        self.inner.head_tx.send_replace(new_head.seq);
        Ok(())
    }

    /// The raw bytes stored at `seq`.
    pub fn get_raw(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .tree
            .get(keys::event(seq))
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// The event at `seq`, if any.
    pub fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        match self.inner.tree.get(keys::event(seq)).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_at(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Iterates stored records (seq, bytes) from `from` upwards, without decoding.
    pub fn scan_raw(&self, from: u64) -> impl Iterator<Item = Result<(u64, sled::IVec)>> + '_ {
        let start = keys::event(from);
        let end = [keys::EVENT + 1];
        self.inner
            .tree
            .range(start.as_slice()..end.as_slice())
            .map(move |r| {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let seq = keys::tail_u64(&k).ok_or_else(|| LedgerError::Corrupt {
                    seq: 0,
                    reason: "malformed event key".into(),
                })?;
                Ok((seq, v))
            })
    }

    /// Events with seq in `from..` (at most `limit`), in order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.scan_raw(from.max(1))
            .take(limit)
            .map(|r| r.and_then(|(seq, v)| decode_at(seq, &v)))
            .collect()
    }

    /// Iterates all events from `from` upwards, decoding as it goes.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<RecordedEvent>> + '_ {
        self.scan_raw(from.max(1))
            .map(|r| r.and_then(|(seq, v)| decode_at(seq, &v)))
    }

    /// The events of one stream from version `from_version` on.
    pub fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>> {
        let prefix = keys::stream_prefix(stream);
        let start = keys::stream_entry(stream, from_version.max(1));
        let mut out = Vec::new();
        for r in self.inner.tree.range(start..) {
            let (k, v) = r.map_err(|e| self.err(e))?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let seq = keys::tail_u64(&v).ok_or_else(|| LedgerError::Corrupt {
                seq: 0,
                reason: format!("stream index of {stream} is damaged"),
            })?;
            out.push(self.get(seq)?.ok_or(LedgerError::Corrupt {
                seq,
                reason: format!("indexed by stream {stream} but missing"),
            })?);
        }
        Ok(out)
    }

    /// Seqs of all events of one type from `from` on, in order.
    pub fn seqs_of_type(&self, ty: EventType, from: u64) -> Result<Vec<u64>> {
        let prefix = keys::type_prefix(ty.as_str());
        let start = keys::type_entry(ty.as_str(), from);
        let mut out = Vec::new();
        for r in self.inner.tree.range(start..) {
            let (k, _) = r.map_err(|e| self.err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(seq) = keys::tail_u64(&k) {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// Events of one type from `from` on (at most `limit`).
    pub fn read_type(&self, ty: EventType, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.seqs_of_type(ty, from)?
            .into_iter()
            .take(limit)
            .map(|s| {
                self.get(s)?.ok_or(LedgerError::Corrupt {
                    seq: s,
                    reason: "indexed by type but missing".into(),
                })
            })
            .collect()
    }

    /// Names of every stream with its current version.
    pub fn streams(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for r in self.inner.tree.scan_prefix([keys::VERSION]) {
            let (k, v) = r.map_err(|e| self.err(e))?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((name, keys::tail_u64(&v).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Seqs appended but not yet acknowledged by the distribution channel.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<u64>> {
        self.inner
            .tree
            .scan_prefix([keys::OUTBOX])
            .take(limit)
            .map(|r| {
                let (k, _) = r.map_err(|e| self.err(e))?;
                keys::tail_u64(&k).ok_or(LedgerError::Corrupt {
                    seq: 0,
                    reason: "malformed outbox key".into(),
                })
            })
            .collect()
    }

    /// Marks seqs as published (acknowledged by NATS); durable.
    pub fn outbox_ack(&self, seqs: &[u64]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for s in seqs {
            batch.remove(&keys::outbox(*s));
        }
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.err(e))?;
        self.inner.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Waits for events after `after` and yields them in order, forever.
    pub fn tail(&self, after: u64) -> Tail {
        Tail {
            ledger: self.clone(),
            next: after + 1,
            rx: self.inner.head_tx.subscribe(),
        }
    }

    /// Subscribes to head changes (the latest seq).
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head_tx.subscribe()
    }

    /// Size of the store on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Direct access for crate-internal tamper tests and tools.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.inner.tree
    }
}

/// An async cursor over events appended after a given seq.
pub struct Tail {
    ledger: Ledger,
    next: u64,
    rx: watch::Receiver<u64>,
}

impl Tail {
    /// The next event, waiting for it to be appended if needed.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(rec) = self.ledger.get(self.next)? {
                self.next += 1;
                return Ok(rec);
            }
            if self.rx.changed().await.is_err() {
                return Err(LedgerError::InvalidAppend("ledger closed".into()));
            }
        }
    }

    /// The seq the next call will return.
    pub fn position(&self) -> u64 {
        self.next
    }
}

pub(crate) fn decode_at(seq: u64, bytes: &[u8]) -> Result<RecordedEvent> {
    RecordedEvent::decode(bytes).map_err(|e| LedgerError::Corrupt {
        seq,
        reason: e.to_string(),
    })
}

fn encode_span(first: u64, count: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&first.to_be_bytes());
    v[8..].copy_from_slice(&count.to_be_bytes());
    v
}

fn decode_span(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(v[..8].try_into().ok()?),
        u64::from_be_bytes(v[8..].try_into().ok()?),
    ))
}
