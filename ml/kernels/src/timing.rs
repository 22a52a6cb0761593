//! Optional wall-clock totals per fused op and pass, to see where a training step goes
//! (`bench_step` prints them). Off unless [`enable`]d: then each op adds one clock read
//! and one uncontended lock per call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Total time and calls per `(op, pass)`.
type Totals = BTreeMap<(&'static str, Pass), (Duration, u64)>;
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

/// Which pass of an op a time belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    /// The op's forward.
    Forward,
    /// The op's backward.
    Backward,
}

/// Starts recording (process-wide).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The totals so far, `(op, pass, seconds, calls)`, and resets them.
pub fn take() -> Vec<(&'static str, Pass, f64, u64)> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *totals)
        .into_iter()
        .map(|((op, pass), (d, n))| (op, pass, d.as_secs_f64(), n))
        .collect()
}

/// Adds the time from its creation to its drop to `(op, pass)` when recording is on.
pub struct Scope {
    key: (&'static str, Pass),
    start: Option<Instant>,
}

impl Scope {
    /// Starts timing one call of `op`'s `pass`.
    pub fn new(op: &'static str, pass: Pass) -> Self {
        let start = ENABLED.load(Ordering::Relaxed).then(Instant::now);
        Self {
            key: (op, pass),
            start,
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = totals.entry(self.key).or_default();
            e.0 += start.elapsed();
            e.1 += 1;
        }
    }
}
