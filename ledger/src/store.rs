//! The sled-backed store: a single writer appends atomic, durable batches;
//! any number of readers scan by seq, stream or type, or tail the head.

use crate::chunk;
use crate::layout::{self, Head};
use crate::trust::{
    parse_public_key, signature_holds, Claim, Conditions, Identity, Placement, Registry,
    SignedBatch,
};
use crate::{LedgerError, Result};
use foundry_events::{
    chain_hash, encode_record, Event, EventId, EventType, ExpectedVersion, RecordPlacement,
    RecordRef, RecordedEvent, Seal, Sha256Digest, Timestamp,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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

/// A batch of events to append atomically, all or nothing, once an
/// [`Identity`] has signed it ([`Identity::sign`]).
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// Appending the same key again returns the original events.
    pub idempotency_key: Option<String>,
    /// Stream versions the batch requires, checked before anything is written.
    pub expected: Vec<(String, ExpectedVersion)>,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// A batch with no key and no expectations.
    pub fn new(events: Vec<NewEvent>) -> Self {
        AppendRequest {
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

/// What the single writer holds while it appends: the head, and the key
/// registry as of the head.
struct WriterState {
    head: Head,
    registry: Registry,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    writer: Mutex<WriterState>,
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
        let head = match tree
            .get(layout::HEAD)
            .map_err(|e| LedgerError::storage(dir, e))?
        {
            Some(v) => Head::decode(&v).ok_or_else(|| LedgerError::Corrupt {
                seq: 0,
                reason: "the head record is damaged".into(),
            })?,
            None => Head::default(),
        };
        let (head_tx, _) = watch::channel(head.seq);
        let ledger = Ledger {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                db,
                tree,
                writer: Mutex::new(WriterState {
                    head,
                    registry: Registry::new(),
                }),
                head_tx,
            }),
        };
        let registry = ledger.fold_registry(head.seq)?;
        ledger.writer()?.registry = registry;
        Ok(ledger)
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, WriterState>> {
        self.inner
            .writer
            .lock()
            .map_err(|_| LedgerError::InvalidAppend("writer lock poisoned".into()))
    }

    /// Folds the key events up to `through` into a registry (how the
    /// registry is rebuilt when a ledger is opened).
    fn fold_registry(&self, through: u64) -> Result<Registry> {
        let mut seqs = self.seqs_of_type(EventType::KeyRegistered, 1)?;
        seqs.extend(self.seqs_of_type(EventType::KeyRevoked, 1)?);
        seqs.sort_unstable();
        let mut registry = Registry::new();
        for seq in seqs.into_iter().filter(|s| *s <= through) {
            let rec = self.get(seq)?.ok_or(LedgerError::Corrupt {
                seq,
                reason: "indexed key event is missing".into(),
            })?;
            let event = rec.decode_event()?;
            registry.apply(
                Placement {
                    seq,
                    recorded_at: rec.recorded_at,
                },
                &rec.actor,
                &event,
            );
        }
        Ok(registry)
    }

    /// The key registry as of the head: who may append what.
    pub fn registry(&self) -> Registry {
        match self.inner.writer.lock() {
            Ok(w) => w.registry.clone(),
            Err(p) => p.into_inner().registry.clone(),
        }
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
            Ok(w) => w.head,
            Err(p) => p.into_inner().head,
        }
    }

    /// The head as stored on disk (what `verify` checks against).
    pub(crate) fn stored_head(&self) -> Result<Option<Head>> {
        let v = self.inner.tree.get(layout::HEAD).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| Head::decode(&v)))
    }

    /// Current version of a stream (0 if it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64> {
        let v = self
            .inner
            .tree
            .get(layout::version(stream))
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| layout::tail_u64(&v)).unwrap_or(0))
    }

    /// Signs `req` as `id` and appends it (see [`Ledger::append`]).
    pub fn append_as(&self, id: &Identity, req: AppendRequest) -> Result<AppendOutcome> {
        self.append(id.sign(req)?)
    }

    /// Creates the history of an empty ledger: the root key registers
    /// itself with `root_roles` (admin among them), then `others`.
    pub fn init_genesis(
        &self,
        root: &Identity,
        root_roles: &[foundry_events::Role],
        others: &[crate::trust::Grant],
    ) -> Result<AppendOutcome> {
        if self.head().seq != 0 {
            return Err(LedgerError::InvalidAppend(format!(
                "the ledger already holds {} events; a genesis goes first",
                self.head().seq
            )));
        }
        self.append_as(
            root,
            crate::trust::genesis_request(root, root_roles, others),
        )
    }

    /// Checks, without appending, what needs no fetch: the batch's shape,
    /// that its signer is a registered, unrevoked key, that the signature
    /// holds, and that the key may append each event as of the head.
    /// `ledger serve` runs it before it fetches the artifacts a batch names,
    /// so an unsigned, forged or unauthorized request cannot make it pull
    /// anything. [`Ledger::append`] checks all of it again under the writer
    /// lock.
    pub fn precheck(&self, batch: &SignedBatch) -> Result<()> {
        batch.check_shape().map_err(LedgerError::InvalidAppend)?;
        let signer = batch.signer();
        let writer = self.writer()?;
        let verifying = {
            match writer.registry.key(signer) {
                Some(k) if k.revoked_at.is_none() => k.verifying,
                Some(k) => {
                    return Err(LedgerError::Unauthorized(format!(
                        "key {} ({signer}) was revoked at seq {}",
                        k.name,
                        k.revoked_at.unwrap_or_default()
                    )))
                }
                None => {
                    return Err(LedgerError::Unauthorized(format!(
                        "signer {signer} is not a registered key"
                    )))
                }
            }
        };
        let (message, _) = batch.message();
        if !signature_holds(&verifying, &message, &batch.signature) {
            return Err(LedgerError::Unauthorized(format!(
                "the signature of the batch does not hold for signer {signer}"
            )));
        }
        let head = writer.head;
        let recorded_at = Timestamp(now_nanos().max(head.recorded_at));
        for (i, s) in batch.statements.iter().enumerate() {
            let event = s.decode_event()?;
            let at = Placement {
                seq: head.seq + 1 + i as u64,
                recorded_at,
            };
            let claim = Claim {
                signer: &s.signer,
                actor: &s.actor,
                stream: &s.stream,
            };
            writer.registry.authorize(at, claim, &event).map_err(|e| {
                LedgerError::Unauthorized(format!("event {i} ({}): {e}", s.event_type))
            })?;
        }
        Ok(())
    }

    /// Appends a signed batch atomically and durably: when this returns
    /// `Ok`, the events are flushed to disk. Before anything is written the
    /// signature must hold for the signer's key, and the registry must let
    /// that key append every event (registered under the actor, live, not
    /// expired, in scope, with a role for the type); otherwise
    /// [`LedgerError::Unauthorized`]. With a used idempotency key, returns
    /// the original events and appends nothing. A failed expectation is a
    /// [`LedgerError::Conflict`] and nothing is written.
    pub fn append(&self, batch: SignedBatch) -> Result<AppendOutcome> {
        batch.check_shape().map_err(LedgerError::InvalidAppend)?;
        let mut writer = self.writer()?;
        let (message, encoded) = batch.message();
        let signer = batch.signer();
        let verifying = match writer.registry.key(signer) {
            Some(k) => k.verifying,
            None => parse_public_key(signer).map_err(LedgerError::Unauthorized)?,
        };
        if !signature_holds(&verifying, &message, &batch.signature) {
            return Err(LedgerError::Unauthorized(format!(
                "the signature of the batch does not hold for signer {signer}"
            )));
        }
        let tree = &self.inner.tree;
        if let Some(key) = batch.idempotency_key() {
            if let Some(v) = tree
                .get(layout::idempotency(key))
                .map_err(|e| self.err(e))?
            {
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

        let head = writer.head;
        let recorded_at = Timestamp(now_nanos().max(head.recorded_at));
        let typed: Vec<Event> = batch
            .statements
            .iter()
            .map(|s| s.decode_event())
            .collect::<std::result::Result<_, _>>()?;
        // Authorize in order against the registry as each event would find
        // it (a genesis registers the root before the root registers more).
        let mut staged: Option<Registry> = None;
        for (i, (s, event)) in batch.statements.iter().zip(&typed).enumerate() {
            let at = Placement {
                seq: head.seq + 1 + i as u64,
                recorded_at,
            };
            let registry = staged.as_ref().unwrap_or(&writer.registry);
            registry
                .authorize(
                    at,
                    Claim {
                        signer: &s.signer,
                        actor: &s.actor,
                        stream: &s.stream,
                    },
                    event,
                )
                .map_err(|e| {
                    LedgerError::Unauthorized(format!("event {i} ({}): {e}", s.event_type))
                })?;
            if Registry::changes_on(event.event_type()) {
                let mut next = staged.take().unwrap_or_else(|| writer.registry.clone());
                next.apply(at, &s.actor, event);
                staged = Some(next);
            }
        }
        match &batch.conditions {
            Conditions::Expect(expected) => {
                for (stream, expected) in expected {
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
            }
            Conditions::Relayed(_) => {
                let scoped = writer
                    .registry
                    .key(signer)
                    .is_some_and(|k| k.run_scope.is_some());
                if !scoped {
                    return Err(LedgerError::Unauthorized(format!(
                        "only batches of run-scoped keys can be relayed; {signer} is not one"
                    )));
                }
            }
        }
        let records = self.place(head, recorded_at, batch, encoded)?;
        let new_head = self.write_batch(&records, head)?;
        writer.head = new_head;
        if let Some(r) = staged {
            writer.registry = r;
        }
        drop(writer);
        self.inner.head_tx.send_replace(new_head.seq);
        Ok(AppendOutcome {
            events: records.into_iter().map(|(r, _)| r).collect(),
            duplicate: false,
        })
    }

    /// Turns a signed batch into the records that continue the chain from
    /// `head`: seqs, stream versions, batch positions, the seal on the last
    /// one, and the hashes. `encoded` are the statements' bytes. Checks no
    /// authorization (that is [`Ledger::append`]'s job).
    pub(crate) fn place(
        &self,
        head: Head,
        recorded_at: Timestamp,
        batch: SignedBatch,
        encoded: Vec<Vec<u8>>,
    ) -> Result<Vec<(RecordedEvent, Vec<u8>)>> {
        let n = batch.statements.len();
        let seal = Seal {
            conditions: batch.conditions.digest(),
            signature: batch.signature,
        };
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut records = Vec::with_capacity(n);
        let mut prev = head.hash;
        for (i, (statement, bytes)) in batch.statements.into_iter().zip(encoded).enumerate() {
            let stream = &statement.stream;
            if stream.is_empty() || stream.len() > MAX_STREAM_LEN || stream.contains('\0') {
                return Err(LedgerError::InvalidAppend(format!(
                    "stream name {stream:?} must be 1..={MAX_STREAM_LEN} bytes without NUL"
                )));
            }
            let version = match versions.get(stream) {
                Some(v) => *v + 1,
                None => self.stream_version(stream)? + 1,
            };
            versions.insert(stream.clone(), version);
            let seq = head.seq + 1 + i as u64;
            let seal = (i + 1 == n).then_some(seal);
            // Encode once, hash the stored bytes, patch the hash in place.
            let digest = Sha256Digest::of(&bytes);
            let (mut stored, range) = encode_record(
                &RecordPlacement {
                    seq,
                    stream_version: version,
                    recorded_at,
                    batch_index: i as u32,
                    batch_len: n as u32,
                },
                &seal,
                &bytes,
                &prev,
                &Sha256Digest::ZERO,
            );
            let hash = chain_hash(&stored, range, &digest)?;
            let len = stored.len();
            stored[len - 32..].copy_from_slice(&hash.0);
            let rec = RecordedEvent {
                seq,
                stream_version: version,
                recorded_at,
                batch_index: i as u32,
                batch_len: n as u32,
                seal,
                statement,
                prev_hash: prev,
                hash,
            };
            prev = hash;
            records.push((rec, stored));
        }
        Ok(records)
    }

    /// Writes sealed records that continue the chain from `head` as one
    /// atomic sled batch (chunk, indexes, versions, idempotency, head) and
    /// flushes it. Returns the new head.
    fn write_batch(&self, records: &[(RecordedEvent, Vec<u8>)], head: Head) -> Result<Head> {
        let Some((first, _)) = records.first() else {
            return Ok(head);
        };
        let first_seq = first.seq;
        let mut batch = sled::Batch::default();
        batch.insert(
            &layout::event(first_seq),
            chunk::encode(records.iter().map(|(_, b)| b.as_slice())),
        );
        // Per stream: first version in this batch and the seqs, in order.
        let mut streams: HashMap<&str, (u64, Vec<u8>)> = HashMap::new();
        let mut types: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut spans: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut new_head = head;
        for (rec, _) in records {
            if rec.seq != new_head.seq + 1 || rec.prev_hash != new_head.hash {
                return Err(LedgerError::InvalidAppend(format!(
                    "seq {}: does not continue the chain at seq {}",
                    rec.seq, new_head.seq
                )));
            }
            let entry = streams
                .entry(&rec.stream)
                .or_insert((rec.stream_version, Vec::new()));
            entry.1.extend_from_slice(&rec.seq.to_be_bytes());
            types
                .entry(&rec.event_type)
                .or_default()
                .extend_from_slice(&rec.seq.to_be_bytes());
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
        for (stream, (first_version, seqs)) in streams {
            let last_version = first_version + seqs.len() as u64 / 8 - 1;
            batch.insert(layout::stream_entry(stream, first_version), seqs);
            batch.insert(layout::version(stream), &last_version.to_be_bytes());
        }
        for (ty, seqs) in types {
            batch.insert(layout::type_entry(ty, first_seq), seqs);
        }
        for (k, (first, count)) in spans {
            batch.insert(layout::idempotency(k), &encode_span(first, count));
        }
        batch.insert(layout::HEAD, new_head.encode().as_slice());
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.err(e))?;
        self.inner.db.flush().map_err(|e| self.err(e))?;
        Ok(new_head)
    }

    /// Stores already-sealed records verbatim (import). The caller has
    /// verified them; they must continue the chain from the current head.
    pub(crate) fn append_verbatim(&self, records: &[(RecordedEvent, Vec<u8>)]) -> Result<()> {
        let mut writer = self.writer()?;
        let new_head = self
            .write_batch(records, writer.head)
            .map_err(|e| LedgerError::ImportRefused(e.to_string()))?;
        writer.head = new_head;
        for (rec, _) in records {
            if EventType::parse(&rec.event_type).is_some_and(Registry::changes_on) {
                let event = rec.decode_event()?;
                writer.registry.apply(
                    Placement {
                        seq: rec.seq,
                        recorded_at: rec.recorded_at,
                    },
                    &rec.actor,
                    &event,
                );
            }
        }
        drop(writer);
        self.inner.head_tx.send_replace(new_head.seq);
        Ok(())
    }

    /// The chunk holding `seq`: its first seq and bytes.
    pub(crate) fn chunk_of(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>> {
        let lo = [layout::EVENT];
        let hi = layout::event(seq);
        match self
            .inner
            .tree
            .range(lo.as_slice()..=hi.as_slice())
            .next_back()
        {
            Some(r) => {
                let (k, v) = r.map_err(|e| self.err(e))?;
                Ok(layout::tail_u64(&k).map(|first| (first, v)))
            }
            None => Ok(None),
        }
    }

    /// The raw bytes stored at `seq`.
    pub fn get_raw(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        let Some((first, chunk)) = self.chunk_of(seq)? else {
            return Ok(None);
        };
        for frame in chunk::Frames::new(first, &chunk) {
            let (s, bytes) = frame?;
            if s == seq {
                return Ok(Some(bytes.to_vec()));
            }
        }
        Ok(None)
    }

    /// The event at `seq`, if any.
    pub fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        match self.get_raw(seq)? {
            Some(v) => Ok(Some(decode_at(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Iterates the stored chunks (first seq, bytes) in order.
    pub(crate) fn raw_chunks(&self) -> impl Iterator<Item = Result<(u64, sled::IVec)>> + '_ {
        let lo = [layout::EVENT];
        let hi = [layout::EVENT + 1];
        self.inner
            .tree
            .range(lo.as_slice()..hi.as_slice())
            .map(move |r| {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let first = layout::tail_u64(&k).ok_or_else(|| LedgerError::Corrupt {
                    seq: 0,
                    reason: "malformed chunk key".into(),
                })?;
                Ok((first, v))
            })
    }

    /// Iterates the stored chunks holding seqs `from..`, in order, without
    /// copying or decoding a record: the fast path for whole-ledger folds.
    /// Each [`Chunk`] shares the stored bytes and yields only records at or
    /// after `from`.
    pub fn chunks_from(&self, from: u64) -> impl Iterator<Item = Result<Chunk>> + '_ {
        let start = match self.chunk_of(from) {
            Ok(Some((first, _))) => first,
            _ => from,
        };
        let lo = layout::event(start);
        let hi = [layout::EVENT + 1];
        self.inner
            .tree
            .range(lo.as_slice()..hi.as_slice())
            .map(move |r| {
                let (k, bytes) = r.map_err(|e| self.err(e))?;
                let first_seq = layout::tail_u64(&k).ok_or_else(|| LedgerError::Corrupt {
                    seq: 0,
                    reason: "malformed chunk key".into(),
                })?;
                Ok(Chunk {
                    first_seq,
                    from,
                    bytes,
                })
            })
    }

    /// Iterates stored records (position seq, bytes) from `from` upwards,
    /// without decoding. The seq is the record's position in the store; a
    /// damaged frame is an error naming that position.
    pub fn scan_raw(&self, from: u64) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> + '_ {
        self.chunks_from(from)
            .flat_map(|c| -> Vec<Result<(u64, Vec<u8>)>> {
                match c {
                    Ok(c) => c
                        .records()
                        .map(|f| f.map(|(s, b)| (s, b.to_vec())))
                        .collect(),
                    Err(e) => vec![Err(e)],
                }
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
        let prefix = layout::stream_prefix(stream);
        let from_version = from_version.max(1);
        let hi = layout::stream_entry(stream, from_version);
        let start = match self
            .inner
            .tree
            .range(prefix.as_slice()..=hi.as_slice())
            .next_back()
        {
            Some(r) => r.map_err(|e| self.err(e))?.0.to_vec(),
            None => hi,
        };
        let mut out = Vec::new();
        for r in self.inner.tree.range(start..) {
            let (k, v) = r.map_err(|e| self.err(e))?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let first_version = layout::tail_u64(&k).unwrap_or(0);
            for (i, seq) in layout::u64s(&v).enumerate() {
                if first_version + i as u64 >= from_version {
                    out.push(self.get(seq)?.ok_or(LedgerError::Corrupt {
                        seq,
                        reason: format!("indexed by stream {stream} but missing"),
                    })?);
                }
            }
        }
        Ok(out)
    }

    /// Seqs of all events of one type from `from` on, in order.
    pub fn seqs_of_type(&self, ty: EventType, from: u64) -> Result<Vec<u64>> {
        let prefix = layout::type_prefix(ty.as_str());
        let mut out = Vec::new();
        for r in self.inner.tree.scan_prefix(&prefix) {
            let (_, v) = r.map_err(|e| self.err(e))?;
            out.extend(layout::u64s(&v).filter(|s| *s >= from));
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
        for r in self.inner.tree.scan_prefix([layout::VERSION]) {
            let (k, v) = r.map_err(|e| self.err(e))?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((name, layout::tail_u64(&v).unwrap_or(0)));
        }
        Ok(out)
    }

    /// The last seq acknowledged by the distribution channel (NATS).
    pub fn published_through(&self) -> Result<u64> {
        let v = self
            .inner
            .tree
            .get(layout::PUBLISHED)
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| layout::tail_u64(&v)).unwrap_or(0))
    }

    /// Seqs appended but not yet acknowledged by the distribution channel,
    /// oldest first (the outbox).
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<u64>> {
        let from = self.published_through()? + 1;
        let to = self.head().seq;
        Ok((from..=to).take(limit).collect())
    }

    /// Records that every seq up to `seq` has been published; durable.
    /// Publishing is in order, so a watermark is the whole outbox state.
    pub fn outbox_ack_through(&self, seq: u64) -> Result<()> {
        let seq = seq.min(self.head().seq);
        if seq <= self.published_through()? {
            return Ok(());
        }
        self.inner
            .tree
            .insert(layout::PUBLISHED, &seq.to_be_bytes())
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

/// The records of one append as stored, shared with the store (no copy):
/// what [`Ledger::chunks_from`] yields.
#[derive(Clone, Debug)]
pub struct Chunk {
    first_seq: u64,
    from: u64,
    bytes: sled::IVec,
}

impl Chunk {
    /// Position (seq) of the chunk's first stored record.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Size of the chunk's stored bytes (records and frames), for sizing
    /// work handed to other threads.
    pub fn stored_len(&self) -> usize {
        self.bytes.len()
    }

    /// The chunk's records at or after the scan's start, in order, as
    /// (position seq, record bytes). A damaged frame is an error naming the
    /// seq at its position and ends the iteration.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, &[u8])>> + '_ {
        let from = self.from;
        chunk::Frames::new(self.first_seq, &self.bytes)
            .filter(move |f| f.as_ref().map_or(true, |(s, _)| *s >= from))
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
    RecordRef::decode(bytes)
        .map(|r| r.to_owned())
        .map_err(|e| LedgerError::Corrupt {
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
