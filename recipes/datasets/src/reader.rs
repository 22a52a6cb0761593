//! The streaming reader: shard by shard, digest re-verified, seeded shuffle,
//! resumable, one row in memory at a time.

use serde::{Deserialize, Serialize};

use crate::index::{Example, SplitIndex};
use crate::{DatasetPin, Result};

/// Where a reader is: serialize it with a checkpoint to resume exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Pass over the split.
    pub epoch: u64,
    /// Index into this epoch's shard order.
    pub shard: usize,
    /// Index into the shard's row order.
    pub row: usize,
}

/// SplitMix64: a tiny, stable PRNG (the order never changes across versions).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Reads one split of a pinned dataset in a seeded order: shards in a
/// permutation per epoch, the rows of each shard in a permutation of their
/// own. Holds one shard's order (a permutation of its row numbers), never
/// its rows: each row is read alone through a [`SplitIndex`].
pub struct StreamReader {
    index: SplitIndex,
    seed: u64,
    epochs: Option<u64>,
    pos: Position,
    /// This shard's row order, once the shard has been checked.
    rows: Option<Vec<usize>>,
    order: Vec<usize>,
}

impl StreamReader {
    /// A reader over `split` of `pin` (files under `pin.root`), shuffled by
    /// `seed`, for `epochs` passes (None: forever), starting at `from`.
    pub fn open(
        pin: &DatasetPin,
        split: &str,
        seed: u64,
        epochs: Option<u64>,
        from: Position,
    ) -> Result<Self> {
        let index = SplitIndex::open(pin, split)?;
        let mut r = StreamReader {
            index,
            seed,
            epochs,
            pos: from,
            rows: None,
            order: Vec::new(),
        };
        r.order = r.shard_order(from.epoch);
        Ok(r)
    }

    /// The position of the next example.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// The (shard, row) of every example of `epoch`, in reading order, without
    /// reading any: the exact order a reader from the start of that epoch
    /// yields (shard numbers index the split's shards in pinned order).
    pub fn epoch_order(&self, epoch: u64) -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(self.index.len() as usize);
        self.for_each_in_epoch(epoch, |s, r| out.push((s, r)));
        out
    }

    /// Calls `f(shard, row)` for every example of `epoch`, in reading order, without reading
    /// any (what [`StreamReader::epoch_order`] collects).
    pub fn for_each_in_epoch(&self, epoch: u64, mut f: impl FnMut(u32, u32)) {
        for s in self.shard_order(epoch) {
            for r in self.row_order(epoch, s) {
                f(s as u32, r as u32);
            }
        }
    }

    /// The split's rows, for random access.
    pub fn index(&self) -> &SplitIndex {
        &self.index
    }

    /// The split's rows, for random access, without the reader.
    pub fn into_index(self) -> SplitIndex {
        self.index
    }

    fn shard_order(&self, epoch: u64) -> Vec<usize> {
        permutation(
            self.index.shard_count(),
            self.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407),
        )
    }

    fn row_order(&self, epoch: u64, shard: usize) -> Vec<usize> {
        let seed = self.seed ^ (epoch << 32) ^ (shard as u64 + 1).wrapping_mul(0x9E37_79B9);
        permutation(self.index.shard_rows(shard) as usize, seed)
    }
}

impl Iterator for StreamReader {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.epochs.is_some_and(|e| self.pos.epoch >= e) {
                return None;
            }
            if self.pos.shard >= self.order.len() {
                self.pos = Position {
                    epoch: self.pos.epoch + 1,
                    shard: 0,
                    row: 0,
                };
                self.order = self.shard_order(self.pos.epoch);
                continue;
            }
            let shard = self.order[self.pos.shard];
            if self.rows.is_none() {
                // The whole shard is checked before any of its rows is used.
                if let Err(e) = self.index.check_shard(shard) {
                    self.epochs = Some(0);
                    return Some(Err(e));
                }
                self.rows = Some(self.row_order(self.pos.epoch, shard));
            }
            let Some(&row) = self.rows.as_ref().and_then(|r| r.get(self.pos.row)) else {
                self.rows = None;
                self.pos.shard += 1;
                self.pos.row = 0;
                continue;
            };
            self.pos.row += 1;
            let got = self.index.get(self.index.position_of(shard, row as u64));
            if got.is_err() {
                self.epochs = Some(0);
            }
            return Some(got);
        }
    }
}
