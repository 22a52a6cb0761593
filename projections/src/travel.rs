//! Folding the ledger: from any seq up to the head, a seq or an instant.

use crate::{ProjectionError, Result, State};
use foundry_events::{Envelope, RecordedEvent, Timestamp};
use foundry_ledger::Ledger;
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

fn envelope(rec: &RecordedEvent) -> Result<Envelope> {
    rec.to_envelope().map_err(|source| ProjectionError::Event {
        seq: rec.seq,
        source,
    })
}

/// Events decoded per message between the reader thread and the folder.
const BATCH: usize = 512;

/// Applies to `state` every event after `state.last_seq` that lies within
/// `bound`. Decoding runs on a second thread while this one folds. Returns
/// how many events were applied.
pub(crate) fn fold_into(ledger: &Ledger, state: &mut State, bound: Bound) -> Result<u64> {
    let from = state.last_seq + 1;
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<Envelope>>>(8);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for r in ledger.iter_from(from) {
                let env = r.map_err(ProjectionError::from).and_then(|rec| {
                    if bound.admits(rec.seq, rec.recorded_at) {
                        envelope(&rec).map(Some)
                    } else {
                        Ok(None)
                    }
                });
                match env {
                    Ok(Some(e)) => {
                        batch.push(e);
                        if batch.len() == BATCH {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                            if tx.send(Ok(full)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch));
            }
        });
        let mut n = 0u64;
        for msg in rx {
            for env in msg? {
                if state.apply(&env) {
                    n += 1;
                }
            }
        }
        Ok(n)
    })
}

/// The views as they were at `bound`, folded from seq 1 in memory. This is
/// what every `--at` / `--until` query reads.
pub fn fold_until(ledger: &Ledger, bound: Bound) -> Result<State> {
    let mut state = State::new();
    fold_into(ledger, &mut state, bound)?;
    Ok(state)
}
