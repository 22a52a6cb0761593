//! Folding the ledger: from any seq up to the head, a seq or an instant.

use crate::decode::decode_record;
use crate::{ProjectionError, Result, State};
use foundry_events::{Envelope, Timestamp};
use foundry_ledger::{Chunk, Ledger};
use std::sync::mpsc;

/// How far to fold: the whole ledger, or the ledger as it was at some point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Bound {
    /// Everything appended so far.
    #[default]
    Head,
    /// Events with seq ≤ this.
    Seq(u64),
    /// Events recorded at or before this instant.
    Time(Timestamp),
}

impl Bound {
    /// From the CLI's `--at RFC3339` and `--until SEQ` (at most one).
    pub fn from_args(at: Option<&str>, until: Option<u64>) -> Result<Bound> {
        match (at, until) {
            (Some(_), Some(_)) => Err(ProjectionError::Bound(
                "give --at or --until, not both".into(),
            )),
            (Some(t), None) => Timestamp::parse_rfc3339(t)
                .map(Bound::Time)
                .map_err(|e| ProjectionError::Bound(e.to_string())),
            (None, Some(s)) => Ok(Bound::Seq(s)),
            (None, None) => Ok(Bound::Head),
        }
    }

    /// Whether an event lies within the bound. The ledger's `recorded_at`
    /// never decreases with seq, so the first event outside ends the fold.
    pub fn admits(&self, seq: u64, at: Timestamp) -> bool {
        match self {
            Bound::Head => true,
            Bound::Seq(s) => seq <= *s,
            Bound::Time(t) => at <= *t,
        }
    }

    /// A human description (`head`, `seq 42`, `2026-…Z`).
    pub fn describe(&self) -> String {
        match self {
            Bound::Head => "head".into(),
            Bound::Seq(s) => format!("seq {s}"),
            Bound::Time(t) => t.to_rfc3339(),
        }
    }
}

/// Stored bytes of chunks handed to a decoder at once: big enough to keep
/// channel traffic negligible, small enough to keep every thread busy.
const WORK_BYTES: usize = 256 << 10;

/// Decoding threads (the fold itself runs on the calling thread).
fn decoders() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// The events of one piece of work, decoded in order, and why the piece
/// ended early if it did: the bound was reached, or a record was damaged.
struct Decoded {
    events: Vec<Envelope>,
    end: Option<End>,
}

enum End {
    PastBound,
    Failed(ProjectionError),
}

fn decode_work(work: Result<Vec<Chunk>>, bound: Bound) -> Decoded {
    let mut events = Vec::new();
    let chunks = match work {
        Ok(c) => c,
        Err(e) => {
            return Decoded {
                events,
                end: Some(End::Failed(e)),
            }
        }
    };
    let admits = |seq, at| bound.admits(seq, at);
    for chunk in &chunks {
        for rec in chunk.records() {
            let decoded = rec
                .map_err(ProjectionError::from)
                .and_then(|(pos, bytes)| decode_record(pos, bytes, admits));
            match decoded {
                Ok(Some(env)) => events.push(env),
                Ok(None) => {
                    return Decoded {
                        events,
                        end: Some(End::PastBound),
                    }
                }
                Err(e) => {
                    return Decoded {
                        events,
                        end: Some(End::Failed(e)),
                    }
                }
            }
        }
    }
    Decoded { events, end: None }
}

/// Applies to `state` every event after `state.last_seq` that lies within
/// `bound`. Returns how many events were applied.
///
/// A reader thread walks the ledger's chunks (no copies) and deals pieces of
/// about [`WORK_BYTES`] round-robin to the decoding threads; this thread
/// takes their results round-robin too, so events are applied in seq order.
/// When the fold ends early (bound reached, error), dropping the receivers
/// stops the other threads.
pub(crate) fn fold_into(ledger: &Ledger, state: &mut State, bound: Bound) -> Result<u64> {
    let from = state.last_seq + 1;
    let k = decoders();
    std::thread::scope(|s| {
        let mut to_decoders = Vec::with_capacity(k);
        let mut from_decoders = Vec::with_capacity(k);
        for _ in 0..k {
            let (work_tx, work_rx) = mpsc::sync_channel::<Result<Vec<Chunk>>>(2);
            let (done_tx, done_rx) = mpsc::sync_channel::<Decoded>(2);
            let (spent_tx, spent_rx) = mpsc::channel::<Vec<Envelope>>();
            s.spawn(move || {
                for work in work_rx {
                    // Applied events come back to be freed here, where they
                    // were allocated, instead of on the folding thread.
                    drop(spent_rx.try_iter().collect::<Vec<_>>());
                    let d = decode_work(work, bound);
                    let last = d.end.is_some();
                    if done_tx.send(d).is_err() || last {
                        return;
                    }
                }
            });
            to_decoders.push(work_tx);
            from_decoders.push((done_rx, spent_tx));
        }
        s.spawn(move || {
            let mut next = 0;
            let mut work = Vec::new();
            let mut bytes = 0;
            for chunk in ledger.chunks_from(from) {
                let failed = chunk.is_err();
                let piece = match chunk {
                    Ok(c) => {
                        bytes += c.stored_len();
                        work.push(c);
                        if bytes < WORK_BYTES {
                            continue;
                        }
                        bytes = 0;
                        Ok(std::mem::take(&mut work))
                    }
                    Err(e) => {
                        // What came before the damage is applied first.
                        if !work.is_empty() {
                            let before = Ok(std::mem::take(&mut work));
                            if to_decoders[next % k].send(before).is_err() {
                                return;
                            }
                            next += 1;
                        }
                        Err(e.into())
                    }
                };
                if to_decoders[next % k].send(piece).is_err() || failed {
                    return;
                }
                next += 1;
            }
            if !work.is_empty() {
                let _ = to_decoders[next % k].send(Ok(work));
            }
        });
        let mut applied = 0u64;
        for i in 0.. {
            let (done, spent) = &from_decoders[i % k];
            let Ok(d) = done.recv() else {
                break;
            };
            for env in &d.events {
                if state.apply(env) {
                    applied += 1;
                }
            }
            // A decoder that has finished frees nothing more: drop them here.
            let _ = spent.send(d.events);
            match d.end {
                None => {}
                Some(End::PastBound) => break,
                Some(End::Failed(e)) => return Err(e),
            }
        }
        Ok(applied)
    })
}

/// The views as they were at `bound`, folded from seq 1 in memory. This is
/// what every `--at` / `--until` query reads.
pub fn fold_until(ledger: &Ledger, bound: Bound) -> Result<State> {
    let mut state = State::new();
    fold_into(ledger, &mut state, bound)?;
    Ok(state)
}
