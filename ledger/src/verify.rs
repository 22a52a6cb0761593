//! Chain verification, shared by `ledger verify` and `ledger import`.

use crate::chunk;
use crate::keys::Head;
use crate::{Ledger, LedgerError, Result};
use foundry_events::{hash_record_bytes, RecordView, RecordedEvent, Sha256Digest};
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
        }
    }
}

/// Checks records one by one, in order, against the chain rule.
pub struct ChainVerifier {
    next_seq: u64,
    prev: Sha256Digest,
    versions: HashMap<String, u64>,
    decode_payloads: bool,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new(true)
    }
}

impl ChainVerifier {
    /// A verifier starting at seq 1. `decode_payloads` also decodes every
    /// payload against the catalog (unknown types, newer schemas).
    pub fn new(decode_payloads: bool) -> Self {
        ChainVerifier {
            next_seq: 1,
            prev: Sha256Digest::ZERO,
            versions: HashMap::new(),
            decode_payloads,
        }
    }

    /// The seq the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last accepted record.
    pub fn last_hash(&self) -> Sha256Digest {
        self.prev
    }

    /// Checks the record stored at position `at`, decoding only what the
    /// chain rule needs (and the payload, when asked to).
    pub fn check(&mut self, at: u64, bytes: &[u8]) -> Result<(), Violation> {
        let v = |kind| Violation { seq: at, kind };
        if at != self.next_seq {
            return Err(Violation {
                seq: self.next_seq,
                kind: ViolationKind::Gap { next_present: at },
            });
        }
        let rec =
            RecordView::decode(bytes).map_err(|e| v(ViolationKind::Undecodable(e.to_string())))?;
        if rec.seq != at {
            return Err(v(ViolationKind::Reordered { claims: rec.seq }));
        }
        let computed =
            hash_record_bytes(bytes).map_err(|e| v(ViolationKind::Undecodable(e.to_string())))?;
        if computed != rec.hash {
            return Err(v(ViolationKind::HashMismatch {
                stored: rec.hash,
                computed,
            }));
        }
        if rec.prev_hash != self.prev {
            return Err(v(ViolationKind::ChainBroken));
        }
        let current = self.versions.get_mut(rec.stream);
        let expected = current.as_ref().map_or(0, |c| **c) + 1;
        if rec.stream_version != expected {
            return Err(v(ViolationKind::StreamOrder {
                stream: rec.stream.to_string(),
                claims: rec.stream_version,
                expected,
            }));
        }
        if self.decode_payloads {
            rec.decode_event()
                .map_err(|e| v(ViolationKind::Undecodable(e.to_string())))?;
        }
        match current {
            Some(c) => *c = expected,
            None => {
                self.versions.insert(rec.stream.to_string(), expected);
            }
        }
        self.prev = rec.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Checks a record and returns it fully decoded (used by import).
    pub fn check_full(&mut self, at: u64, bytes: &[u8]) -> Result<RecordedEvent, Violation> {
        self.check(at, bytes)?;
        RecordedEvent::decode(bytes).map_err(|e| Violation {
            seq: at,
            kind: ViolationKind::Undecodable(e.to_string()),
        })
    }
}

/// The outcome of verifying a ledger.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Events checked and found good.
    pub events: u64,
    /// The head the store records.
    pub head: Head,
    /// The first problem, if any.
    pub violation: Option<Violation>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.violation.is_none()
    }
}

impl Ledger {
    /// Recomputes every hash and the whole chain from seq 1 and reports the
    /// first bad seq and why.
    pub fn verify(&self) -> Result<VerifyReport> {
        let head = self.stored_head()?.unwrap_or_default();
        let mut checker = ChainVerifier::new(true);
        let mut last_present = 0;
        let mut violation = None;
        'chunks: for item in self.raw_chunks() {
            let (first, chunk_bytes) = item?;
            for frame in chunk::Frames::new(first, &chunk_bytes) {
                let (seq, bytes) = match frame {
                    Ok(x) => x,
                    Err(LedgerError::Corrupt { seq, reason }) => {
                        violation = Some(Violation {
                            seq,
                            kind: ViolationKind::Undecodable(reason),
                        });
                        break 'chunks;
                    }
                    Err(e) => return Err(e),
                };
                if seq > head.seq {
                    violation = Some(Violation {
                        seq,
                        kind: ViolationKind::BeyondHead,
                    });
                    break 'chunks;
                }
                if let Err(v) = checker.check(seq, bytes) {
                    violation = Some(v);
                    break 'chunks;
                }
                last_present = seq;
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
        Ok(VerifyReport {
            events: checker.next_seq() - 1,
            head,
            violation,
        })
    }
}
