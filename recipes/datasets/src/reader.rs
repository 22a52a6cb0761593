//! The streaming reader: shard by shard, digest re-verified, seeded shuffle,
//! resumable.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::schema::Schema;
use crate::{read_shard, DatasetError, DatasetPin, Result, Shard};

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

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Shard path.
    pub shard: String,
    /// 1-based row in the shard.
    pub row: u64,
    /// Encoded image bytes (PNG or JPEG).
    pub image: Vec<u8>,
    /// Doc type.
    pub doc_type: String,
    /// Layout family.
    pub layout: String,
    /// Target JSON.
    pub target: serde_json::Value,
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

/// Reads one split of a pinned dataset.
pub struct StreamReader {
    root: PathBuf,
    shards: Vec<Shard>,
    schema: Schema,
    seed: u64,
    epochs: Option<u64>,
    pos: Position,
    loaded: Option<Vec<Example>>,
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
        let shards: Vec<Shard> = pin
            .shards
            .iter()
            .filter(|s| s.split == split)
            .cloned()
            .collect();
        if shards.is_empty() {
            return Err(DatasetError::Invalid(format!(
                "dataset {} has no {split} split",
                pin.dataset_id
            )));
        }
        let schema = Schema::load(&pin.root)?;
        let mut r = StreamReader {
            root: pin.root.clone(),
            shards,
            schema,
            seed,
            epochs,
            pos: from,
            loaded: None,
            order: Vec::new(),
        };
        r.order = r.shard_order(from.epoch);
        Ok(r)
    }

    /// The position of the next example.
    pub fn position(&self) -> Position {
        self.pos
    }

    fn shard_order(&self, epoch: u64) -> Vec<usize> {
        permutation(
            self.shards.len(),
            self.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407),
        )
    }

    fn load(&mut self) -> Result<()> {
        let shard = &self.shards[self.order[self.pos.shard]];
        let (sha, _, rows) = read_shard(&self.root, &shard.path, &self.schema, false)?;
        if sha != shard.sha256 {
            return Err(DatasetError::Changed {
                shard: shard.path.clone(),
                expected: shard.sha256.clone(),
                actual: sha,
            });
        }
        let mut examples: Vec<Example> = Vec::with_capacity(rows.len());
        for (i, (row, image)) in rows.into_iter().enumerate() {
            examples.push(Example {
                shard: shard.path.clone(),
                row: i as u64 + 1,
                image,
                doc_type: row.doc_type,
                layout: row.layout,
                target: row.target,
            });
        }
        let seed = self.seed
            ^ (self.pos.epoch << 32)
            ^ (self.order[self.pos.shard] as u64 + 1).wrapping_mul(0x9E37_79B9);
        let perm = permutation(examples.len(), seed);
        let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
        self.loaded = Some(perm.into_iter().filter_map(|i| slots[i].take()).collect());
        Ok(())
    }
}

impl Iterator for StreamReader {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.epochs.is_some_and(|e| self.pos.epoch >= e) {
                return None;
            }
            if self.pos.shard >= self.shards.len() {
                self.pos = Position {
                    epoch: self.pos.epoch + 1,
                    shard: 0,
                    row: 0,
                };
                self.order = self.shard_order(self.pos.epoch);
                continue;
            }
            if self.loaded.is_none() {
                if let Err(e) = self.load() {
                    self.epochs = Some(0);
                    return Some(Err(e));
                }
            }
            let rows = self.loaded.as_ref().map_or(0, Vec::len);
            if self.pos.row >= rows {
                self.loaded = None;
                self.pos.shard += 1;
                self.pos.row = 0;
                continue;
            }
            let ex = self
                .loaded
                .as_ref()
                .and_then(|l| l.get(self.pos.row))
                .cloned();
            self.pos.row += 1;
            return ex.map(Ok);
        }
    }
}
