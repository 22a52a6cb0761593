//! Verification, shared by `ledger verify`, `ledger import`, export files
//! and replicas: the hash chain, stream order, and — unless only the chain
//! is asked for — every batch's signature and every event's authorization
//! against the key registry as of its seq.

use crate::chunk;
use crate::layout::Head;
use crate::trust::{failing_signatures, Claim, Placement, Registry};
use crate::{Ledger, LedgerError, Result};
use ed25519_dalek::VerifyingKey;
use foundry_events::{
    batch_message, Event, EventType, RecordRef, RecordedEvent, Sha256Digest, Signature,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;

/// The first thing found wrong with a history, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seq at which the history stops being trustworthy.
    pub seq: u64,
    /// What is wrong there.
    pub kind: ViolationKind,
}

/// The kinds of damage verification distinguishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// The record's bytes don't hash to its stored hash (edited).
    HashMismatch {
        /// Hash stored in the record.
        stored: Sha256Digest,
        /// Hash computed from its contents.
        computed: Sha256Digest,
    },
    /// `prev_hash` is not the previous event's hash (inserted, removed or replaced).
    ChainBroken,
    /// The event with this seq is missing (deleted).
    Gap {
        /// The next seq that is present.
        next_present: u64,
    },
    /// The record at this position claims another seq: a later one (an
    /// event was removed, or two were swapped) or an earlier one (moved).
    Reordered {
        /// The seq the record claims.
        claims: u64,
    },
    /// A stream's versions are out of order.
    StreamOrder {
        /// The stream.
        stream: String,
        /// The version the record claims.
        claims: u64,
        /// The version it should have.
        expected: u64,
    },
    /// The history ends before the recorded head (tail cut off).
    Truncated {
        /// The last seq present.
        last_present: u64,
    },
    /// Events exist past the recorded head.
    BeyondHead,
    /// The bytes are not a valid event (or an unknown type / newer schema).
    Undecodable(String),
    /// The records of a signed batch do not fit together (positions,
    /// signer, seal), or a batch is cut off.
    BatchBroken(String),
    /// The batch starting here is not signed by the key it names.
    BadSignature {
        /// The signer the records name.
        signer: String,
        /// The batch's last seq.
        last_seq: u64,
    },
    /// The signer was not allowed to append this event at this point
    /// (unregistered, revoked, expired, out of scope, lacking the role).
    Unauthorized(String),
    /// The history's root key is not the one the auditor trusts.
    UntrustedRoot {
        /// The root key of this history.
        found: String,
        /// The root the auditor named.
        trusted: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: ", self.seq)?;
        match &self.kind {
            ViolationKind::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch (stored {}, computed {})",
                stored.short(),
                computed.short()
            ),
            ViolationKind::ChainBroken => {
                f.write_str("chain broken (prev_hash is not the previous event's hash)")
            }
            ViolationKind::Gap { next_present } => {
                write!(f, "gap (event missing; next present is seq {next_present})")
            }
            ViolationKind::Reordered { claims } if *claims > self.seq => write!(
                f,
                "event missing or moved (the record here claims seq {claims})"
            ),
            ViolationKind::Reordered { claims } => {
                write!(f, "reordered (the record here claims seq {claims})")
            }
            ViolationKind::StreamOrder {
                stream,
                claims,
                expected,
            } => write!(
                f,
                "stream {stream} out of order (version {claims}, expected {expected})"
            ),
            ViolationKind::Truncated { last_present } => write!(
                f,
                "truncated (the head says this seq exists; the last present is {last_present})"
            ),
            ViolationKind::BeyondHead => f.write_str("event beyond the recorded head"),
            ViolationKind::Undecodable(r) => write!(f, "undecodable record ({r})"),
            ViolationKind::BatchBroken(r) => write!(f, "signed batch broken ({r})"),
            ViolationKind::BadSignature { signer, last_seq } => write!(
                f,
                "the signature of the batch ending at seq {last_seq} does not hold for its signer {signer}"
            ),
            ViolationKind::Unauthorized(r) => write!(f, "unauthorized ({r})"),
            ViolationKind::UntrustedRoot { found, trusted } => write!(
                f,
                "this history's root key is {found}, not the trusted root {trusted}"
            ),
        }
    }
}

/// A batch being read: what its records must share, and their digests.
#[derive(Clone, Debug)]
struct PendingBatch {
    first_seq: u64,
    len: u32,
    signer: String,
    actor: String,
    idempotency_key: Option<String>,
    digests: Vec<Sha256Digest>,
}

/// A signature to check later, in parallel with others.
#[derive(Clone, Debug)]
struct SignatureJob {
    first_seq: u64,
    last_seq: u64,
    signer: String,
    key: VerifyingKey,
    message: [u8; 32],
    signature: Signature,
}

/// What verification keeps of a record's payload: its type, whether the
/// record sits in the event's own stream, and (only for the key events the
/// registry folds) the event itself.
struct Kind {
    ty: EventType,
    own_stream: bool,
    key_event: Option<Box<Event>>,
}

/// What can be computed from one record's bytes alone (in parallel): the
/// decoded view, its chain hash, its statement digest, and what its payload
/// says (decoded, checked, and dropped on the same thread).
pub struct RecordFacts<'a> {
    view: std::result::Result<RecordRef<'a>, String>,
    computed: std::result::Result<Sha256Digest, String>,
    digest: Sha256Digest,
    kind: Option<std::result::Result<Kind, String>>,
}

impl<'a> RecordFacts<'a> {
    /// Computes the facts of `bytes`; the payload is decoded when `full`.
    pub fn of(bytes: &'a [u8], full: bool) -> Self {
        let view = RecordRef::decode(bytes).map_err(|e| e.to_string());
        let digest = match &view {
            Ok(v) => v.statement_digest(),
            Err(_) => Sha256Digest::ZERO,
        };
        let computed = match &view {
            Ok(v) => Ok(v.chain_hash(&digest)),
            Err(e) => Err(e.clone()),
        };
        let kind = match (&view, full) {
            (Ok(v), true) => Some(
                v.decode_event()
                    .map(|e| Kind {
                        ty: e.event_type(),
                        own_stream: e.in_own_stream(v.stream),
                        key_event: Registry::changes_on(e.event_type()).then(|| Box::new(e)),
                    })
                    .map_err(|e| e.to_string()),
            ),
            _ => None,
        };
        RecordFacts {
            view,
            computed,
            digest,
            kind,
        }
    }
}

/// Checks records one by one, in order: the chain rule and, in full mode,
/// batches, signatures and authorization.
pub struct ChainVerifier {
    next_seq: u64,
    prev: Sha256Digest,
    versions: HashMap<String, u64>,
    full: bool,
    registry: Registry,
    trusted_root: Option<String>,
    pending: Option<PendingBatch>,
    defer_signatures: bool,
    jobs: Vec<SignatureJob>,
    batches: u64,
}

impl ChainVerifier {
    /// Checks the chain rule only (hashes, links, seqs, stream order): for
    /// reading back a ledger this process already trusts.
    pub fn chain_only() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev: Sha256Digest::ZERO,
            versions: HashMap::new(),
            full: false,
            registry: Registry::new(),
            trusted_root: None,
            pending: None,
            defer_signatures: false,
            jobs: Vec::new(),
            batches: 0,
        }
    }

    /// Checks everything, from seq 1: the chain, every payload against the
    /// catalog, every batch's signature and every event's authorization.
    /// With `trusted_root`, a history whose genesis key is another one is
    /// refused at seq 1.
    pub fn full(trusted_root: Option<&str>) -> Self {
        ChainVerifier {
            full: true,
            trusted_root: trusted_root.map(str::to_string),
            ..ChainVerifier::chain_only()
        }
    }

    /// A full verifier that continues a ledger already holding `head`, with
    /// its registry (how a replica checks what it copies).
    pub fn resume(head: Head, registry: Registry) -> Self {
        ChainVerifier {
            next_seq: head.seq + 1,
            prev: head.hash,
            registry,
            ..ChainVerifier::full(None)
        }
    }

    /// Collects signatures and checks them in parallel batches at
    /// [`ChainVerifier::finish`] (or when many are waiting) instead of one
    /// by one.
    pub fn defer_signatures(mut self) -> Self {
        self.defer_signatures = true;
        self
    }

    /// Tells the verifier a stream's version before the records it will
    /// see (a replica resuming mid-history).
    pub fn seed_version(&mut self, stream: &str, version: u64) {
        self.versions.entry(stream.to_string()).or_insert(version);
    }

    /// The seq the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last accepted record.
    pub fn last_hash(&self) -> Sha256Digest {
        self.prev
    }

    /// The key registry as of the last accepted record.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The history's root key, once its genesis has been read.
    pub fn root(&self) -> Option<&str> {
        self.registry.root()
    }

    /// Signed batches read so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Whether the last accepted record closed its batch.
    pub fn at_batch_boundary(&self) -> bool {
        self.pending.is_none()
    }

    /// Checks the record stored at position `at`.
    pub fn check(&mut self, at: u64, bytes: &[u8]) -> std::result::Result<(), Violation> {
        let facts = RecordFacts::of(bytes, self.full);
        self.check_facts(at, facts)
    }

    /// Checks a record and returns it fully decoded (used by import).
    pub fn check_full(
        &mut self,
        at: u64,
        bytes: &[u8],
    ) -> std::result::Result<RecordedEvent, Violation> {
        self.check(at, bytes)?;
        RecordedEvent::decode(bytes).map_err(|e| Violation {
            seq: at,
            kind: ViolationKind::Undecodable(e.to_string()),
        })
    }

    /// Checks a record from facts computed beforehand (perhaps on another
    /// thread).
    pub fn check_facts(
        &mut self,
        at: u64,
        facts: RecordFacts<'_>,
    ) -> std::result::Result<(), Violation> {
        let v = |kind| Violation { seq: at, kind };
        if at != self.next_seq {
            return Err(Violation {
                seq: self.next_seq,
                kind: ViolationKind::Gap { next_present: at },
            });
        }
        let rec = facts.view.map_err(|e| v(ViolationKind::Undecodable(e)))?;
        if rec.seq != at {
            return Err(v(ViolationKind::Reordered { claims: rec.seq }));
        }
        let computed = facts
            .computed
            .map_err(|e| v(ViolationKind::Undecodable(e)))?;
        if computed != rec.hash {
            return Err(v(ViolationKind::HashMismatch {
                stored: rec.hash,
                computed,
            }));
        }
        if rec.prev_hash != self.prev {
            return Err(v(ViolationKind::ChainBroken));
        }
        let current = self.versions.get(rec.stream).copied().unwrap_or(0);
        let expected = current + 1;
        if rec.stream_version != expected {
            return Err(v(ViolationKind::StreamOrder {
                stream: rec.stream.to_string(),
                claims: rec.stream_version,
                expected,
            }));
        }
        if self.full {
            let kind = match facts.kind {
                Some(Ok(k)) => k,
                Some(Err(e)) => return Err(v(ViolationKind::Undecodable(e))),
                None => {
                    let e = rec
                        .decode_event()
                        .map_err(|e| v(ViolationKind::Undecodable(e.to_string())))?;
                    Kind {
                        ty: e.event_type(),
                        own_stream: e.in_own_stream(rec.stream),
                        key_event: Some(Box::new(e)),
                    }
                }
            };
            self.check_trust(at, &rec, facts.digest, &kind)?;
        }
        match self.versions.get_mut(rec.stream) {
            Some(c) => *c = expected,
            None => {
                self.versions.insert(rec.stream.to_string(), expected);
            }
        }
        self.prev = rec.hash;
        self.next_seq += 1;
        Ok(())
    }

    fn check_trust(
        &mut self,
        at: u64,
        rec: &RecordRef<'_>,
        digest: Sha256Digest,
        kind: &Kind,
    ) -> std::result::Result<(), Violation> {
        let v = |kind| Violation { seq: at, kind };
        let broken = |m: String| v(ViolationKind::BatchBroken(m));
        // Batch membership.
        if rec.batch_len == 0 || rec.batch_index >= rec.batch_len {
            return Err(broken(format!(
                "event {} of a batch of {}",
                rec.batch_index, rec.batch_len
            )));
        }
        match &mut self.pending {
            None => {
                if rec.batch_index != 0 {
                    return Err(broken(format!(
                        "event {} of a batch whose first events are missing",
                        rec.batch_index
                    )));
                }
                self.pending = Some(PendingBatch {
                    first_seq: at,
                    len: rec.batch_len,
                    signer: rec.signer.to_string(),
                    actor: rec.actor.to_string(),
                    idempotency_key: rec.idempotency_key.map(str::to_string),
                    digests: Vec::with_capacity(rec.batch_len.min(4096) as usize),
                });
            }
            Some(p) => {
                if rec.batch_index as usize != p.digests.len() || rec.batch_len != p.len {
                    return Err(broken(format!(
                        "event {} of {} where event {} of {} was due (batch from seq {})",
                        rec.batch_index,
                        rec.batch_len,
                        p.digests.len(),
                        p.len,
                        p.first_seq
                    )));
                }
                if rec.signer != p.signer
                    || rec.actor != p.actor
                    || rec.idempotency_key != p.idempotency_key.as_deref()
                {
                    return Err(broken(format!(
                        "another signer, actor or key than the batch from seq {}",
                        p.first_seq
                    )));
                }
            }
        }
        let last = rec.batch_index + 1 == rec.batch_len;
        if last != rec.seal.is_some() {
            return Err(broken(if last {
                "the last event of the batch has no seal".into()
            } else {
                "a seal on an event that is not the batch's last".into()
            }));
        }
        // Authorization as of this seq.
        let placement = Placement {
            seq: at,
            recorded_at: rec.recorded_at,
        };
        if !kind.own_stream {
            return Err(v(ViolationKind::Unauthorized(format!(
                "{} does not belong in stream {}",
                kind.ty.as_str(),
                rec.stream
            ))));
        }
        let key_event = kind.key_event.as_deref();
        self.registry
            .authorize_checked(
                placement,
                Claim {
                    signer: rec.signer,
                    actor: rec.actor,
                    stream: rec.stream,
                },
                kind.ty,
                key_event,
            )
            .map_err(|e| v(ViolationKind::Unauthorized(e)))?;
        if at == 1 {
            if let Some(trusted) = &self.trusted_root {
                if rec.signer != trusted {
                    return Err(v(ViolationKind::UntrustedRoot {
                        found: rec.signer.to_string(),
                        trusted: trusted.clone(),
                    }));
                }
            }
        }
        if let Some(event) = key_event {
            self.registry.apply(placement, rec.actor, event);
        }
        let Some(mut p) = self.pending.take() else {
            return Err(broken("no batch in progress".into()));
        };
        p.digests.push(digest);
        let Some(seal) = rec.seal.filter(|_| last) else {
            self.pending = Some(p);
            return Ok(());
        };
        let key = self
            .registry
            .key(&p.signer)
            .map(|k| k.verifying)
            .ok_or_else(|| {
                v(ViolationKind::Unauthorized(format!(
                    "signer {} is not registered",
                    p.signer
                )))
            })?;
        self.jobs.push(SignatureJob {
            first_seq: p.first_seq,
            last_seq: at,
            message: batch_message(&seal.conditions, &p.digests),
            signer: p.signer,
            key,
            signature: seal.signature,
        });
        self.batches += 1;
        if !self.defer_signatures || self.jobs.len() >= 4096 {
            self.check_signatures()?;
        }
        Ok(())
    }

    fn check_signatures(&mut self) -> std::result::Result<(), Violation> {
        let jobs = std::mem::take(&mut self.jobs);
        if jobs.is_empty() {
            return Ok(());
        }
        let failing: Vec<usize> = if jobs.len() < 64 {
            let items: Vec<_> = jobs
                .iter()
                .map(|j| (j.key, j.message, j.signature))
                .collect();
            failing_signatures(&items)
        } else {
            let per = jobs
                .len()
                .div_ceil(rayon::current_num_threads().max(1) * 4)
                .max(32);
            jobs.par_chunks(per)
                .enumerate()
                .flat_map_iter(|(c, chunk)| {
                    let items: Vec<_> = chunk
                        .iter()
                        .map(|j| (j.key, j.message, j.signature))
                        .collect();
                    failing_signatures(&items)
                        .into_iter()
                        .map(move |i| c * per + i)
                })
                .collect()
        };
        match failing.into_iter().min() {
            None => Ok(()),
            Some(i) => {
                let j = &jobs[i];
                Err(Violation {
                    seq: j.first_seq,
                    kind: ViolationKind::BadSignature {
                        signer: j.signer.clone(),
                        last_seq: j.last_seq,
                    },
                })
            }
        }
    }

    /// Ends the history: checks the deferred signatures and that no batch
    /// is cut off. `earlier` is a violation found by the caller after the
    /// last record it fed; the earliest of all wins.
    pub fn finish(&mut self, earlier: Option<Violation>) -> Option<Violation> {
        let sig = self.check_signatures().err();
        // A batch in progress when reading stopped at another violation is
        // a consequence of that one, not a finding of its own.
        let cut = match (&self.pending, self.full && earlier.is_none()) {
            (Some(p), true) => Some(Violation {
                seq: p.first_seq,
                kind: ViolationKind::BatchBroken(format!(
                    "the batch of {} events from seq {} ends after {} of them",
                    p.len,
                    p.first_seq,
                    p.digests.len()
                )),
            }),
            _ => None,
        };
        [sig, earlier, cut]
            .into_iter()
            .flatten()
            .min_by_key(|v| v.seq)
    }
}

/// The outcome of verifying a ledger.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Events checked and found good.
    pub events: u64,
    /// Signed batches among them.
    pub batches: u64,
    /// The head the store records.
    pub head: Head,
    /// The history's root key (the genesis signer), if it has one.
    pub root: Option<String>,
    /// The first problem, if any.
    pub violation: Option<Violation>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.violation.is_none()
    }
}

/// Stored bytes decoded per parallel window while verifying a whole ledger
/// (small enough that a window's facts stay in cache).
const WINDOW_BYTES: usize = 4 << 20;

impl Ledger {
    /// Recomputes every hash and the whole chain from seq 1, checks every
    /// batch's signature and every event's authorization, and reports the
    /// first bad seq and why. With `trusted_root`, a history under another
    /// root key is refused at seq 1.
    ///
    /// Decoding and hashing run on all cores, a window of chunks at a
    /// time; the chain, the registry and the batches are then checked in
    /// order, and the signatures in parallel batches.
    pub fn verify_trusting(&self, trusted_root: Option<&str>) -> Result<VerifyReport> {
        let head = self.stored_head()?.unwrap_or_default();
        let mut checker = ChainVerifier::full(trusted_root).defer_signatures();
        let mut last_present = 0;
        let mut violation = None;
        let mut window: Vec<(u64, sled::IVec)> = Vec::new();
        let mut window_bytes = 0usize;
        let mut chunks = self.raw_chunks();
        'outer: loop {
            let next = chunks.next();
            let end = next.is_none();
            if let Some(item) = next {
                let (first, bytes) = item?;
                window_bytes += bytes.len();
                window.push((first, bytes));
                if window_bytes < WINDOW_BYTES {
                    continue;
                }
            }
            // Frame every record of the window, then compute facts in parallel.
            let mut frames: Vec<(u64, &[u8])> = Vec::new();
            let mut frame_error = None;
            'frames: for (first, bytes) in &window {
                for frame in chunk::Frames::new(*first, bytes) {
                    match frame {
                        Ok(x) => frames.push(x),
                        Err(LedgerError::Corrupt { seq, reason }) => {
                            frame_error = Some(Violation {
                                seq,
                                kind: ViolationKind::Undecodable(reason),
                            });
                            break 'frames;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            let facts: Vec<RecordFacts<'_>> = frames
                .par_iter()
                .with_min_len(256)
                .map(|(_, b)| RecordFacts::of(b, true))
                .collect();
            for ((seq, _), f) in frames.iter().zip(facts) {
                if *seq > head.seq {
                    violation = Some(Violation {
                        seq: *seq,
                        kind: ViolationKind::BeyondHead,
                    });
                    break 'outer;
                }
                if let Err(v) = checker.check_facts(*seq, f) {
                    violation = Some(v);
                    break 'outer;
                }
                last_present = *seq;
            }
            if let Some(v) = frame_error {
                violation = Some(v);
                break 'outer;
            }
            window.clear();
            window_bytes = 0;
            if end {
                break;
            }
        }
        if violation.is_none() && last_present < head.seq {
            violation = Some(Violation {
                seq: last_present + 1,
                kind: ViolationKind::Truncated { last_present },
            });
        }
        if violation.is_none() && checker.last_hash() != head.hash {
            violation = Some(Violation {
                seq: head.seq,
                kind: ViolationKind::ChainBroken,
            });
        }
        let violation = checker.finish(violation);
        let events = match &violation {
            Some(v) => v.seq.saturating_sub(1).min(checker.next_seq() - 1),
            None => checker.next_seq() - 1,
        };
        Ok(VerifyReport {
            events,
            batches: checker.batches(),
            head,
            root: checker.root().map(str::to_string),
            violation,
        })
    }

    /// [`Ledger::verify_trusting`] with no trusted root named.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_trusting(None)
    }
}
