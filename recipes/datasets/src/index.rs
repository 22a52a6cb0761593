//! Random access to the rows of a pinned split, in memory that does not grow
//! with the data: an index of (shard, row) with, per row, where its bytes
//! are and their digest (32 bytes a row, in an unlinked temporary file, read
//! back 32 bytes at a time), never the rows themselves.
//!
//! A shard is checked against its pinned digest the first time any of its
//! rows is asked for (one streaming pass, [`crate::scan`]); from then on each
//! row is read alone and re-verified against the digest that pass recorded.
//! So a shard that changed after pinning fails before any of its rows is
//! used, and a row that changes later fails when it is read.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use parquet::file::serialized_reader::SerializedFileReader;

use crate::scan::{read_jsonl_row, RowRef};
use crate::schema::Schema;
use crate::{io, scan_shard, DatasetError, DatasetPin, Jail, Result, Shard};

/// One example as read from its shard.
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

/// An open shard: its rows' references once it has been checked.
struct OpenShard {
    pin: Shard,
    refs: OnceLock<std::result::Result<Arc<RefTable>, String>>,
    file: OnceLock<std::result::Result<Arc<std::fs::File>, String>>,
    parquet: Mutex<Option<Arc<SerializedFileReader<std::fs::File>>>>,
}

/// The rows of one split of a pinned dataset, by position: shard by shard in
/// pinned (path) order, rows in file order.
pub struct SplitIndex {
    root: PathBuf,
    jail: Jail,
    schema: Schema,
    shards: Vec<OpenShard>,
    /// Row position where each shard starts (prefix sums of the pinned counts).
    starts: Vec<u64>,
    rows: u64,
}

impl SplitIndex {
    /// The index of `split` of `pin`. Reads only the schema: shards are
    /// checked when first used.
    pub fn open(pin: &DatasetPin, split: &str) -> Result<Self> {
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
        let mut starts = Vec::with_capacity(shards.len());
        let mut rows = 0u64;
        for s in &shards {
            starts.push(rows);
            rows += s.rows;
        }
        Ok(SplitIndex {
            root: pin.root.clone(),
            jail: Jail::open(&pin.root).map_err(|e| io(&pin.root, e))?,
            schema: Schema::load(&pin.root)?,
            shards: shards
                .into_iter()
                .map(|pin| OpenShard {
                    pin,
                    refs: OnceLock::new(),
                    file: OnceLock::new(),
                    parquet: Mutex::new(None),
                })
                .collect(),
            starts,
            rows,
        })
    }

    /// Rows in the split (as pinned).
    pub fn len(&self) -> u64 {
        self.rows
    }

    /// Whether the split has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Shards in the split.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Rows of shard `s` (as pinned).
    pub fn shard_rows(&self, s: usize) -> u64 {
        self.shards.get(s).map_or(0, |o| o.pin.rows)
    }

    /// The position of row `row` of shard `s`.
    pub fn position_of(&self, s: usize, row: u64) -> u64 {
        self.starts.get(s).copied().unwrap_or(self.rows) + row
    }

    /// Shard and 0-based row of position `i`.
    fn locate(&self, i: u64) -> Result<(usize, u64)> {
        if i >= self.rows {
            return Err(DatasetError::Invalid(format!(
                "row {i} is outside the split ({} rows)",
                self.rows
            )));
        }
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        Ok((s, i - self.starts[s]))
    }

    /// Checks shard `s` against its pin (once) and returns its row references.
    fn refs(&self, s: usize) -> Result<Arc<RefTable>> {
        let shard = &self.shards[s];
        let got = shard.refs.get_or_init(|| {
            let mut table = RefTable::create().map_err(|e| e.to_string())?;
            let scanned = scan_shard(
                &self.jail,
                &shard.pin.path,
                &self.schema,
                false,
                &|_| {},
                &mut |row| table.push(row.at),
            )
            .map_err(|e| e.to_string())?;
            if scanned.digest != shard.pin.sha256 {
                return Err(DatasetError::Changed {
                    shard: shard.pin.path.clone(),
                    expected: shard.pin.sha256.clone(),
                    actual: scanned.digest,
                }
                .to_string());
            }
            let table = table.finish().map_err(|e| e.to_string())?;
            if table.rows != shard.pin.rows {
                return Err(format!(
                    "shard {} has {} rows, pinned with {}",
                    shard.pin.path, table.rows, shard.pin.rows
                ));
            }
            Ok(Arc::new(table))
        });
        got.clone().map_err(DatasetError::Invalid)
    }

    /// Checks shard `s` against its pin now, if that has not been done.
    pub fn check_shard(&self, s: usize) -> Result<()> {
        self.refs(s).map(|_| ())
    }

    /// The example at position `i`, read alone and re-verified.
    pub fn get(&self, i: u64) -> Result<Example> {
        let (s, r) = self.locate(i)?;
        let refs = self.refs(s)?;
        let rr = &refs.get(r)?;
        let shard = &self.shards[s];
        let rel = shard.pin.path.as_str();
        let (row, image) = if rel.ends_with(".parquet") {
            let reader = {
                let mut slot = shard
                    .parquet
                    .lock()
                    .map_err(|_| DatasetError::Invalid("parquet reader poisoned".into()))?;
                match slot.as_ref() {
                    Some(r) => r.clone(),
                    None => {
                        let r = Arc::new(crate::parquet_in::open_reader(&self.jail, rel)?);
                        *slot = Some(r.clone());
                        r
                    }
                }
            };
            crate::parquet_in::read_row(&reader, rel, &self.schema, rr)?
        } else {
            let file = shard
                .file
                .get_or_init(|| {
                    self.jail
                        .file(rel)
                        .map(Arc::new)
                        .map_err(|d| crate::denied_file(&self.root, rel, d).to_string())
                })
                .clone()
                .map_err(DatasetError::Invalid)?;
            read_jsonl_row(&self.jail, &file, rel, &self.schema, rr)?
        };
        Ok(Example {
            shard: shard.pin.path.clone(),
            row: rr.row(),
            image,
            doc_type: row.doc_type,
            layout: row.layout,
            target: row.target,
        })
    }
}

/// One shard's row references, 32 bytes each, in an unlinked temporary file: written once as
/// the shard is checked, then read one reference at a time (`pread`), so memory holds none.
struct RefTable {
    file: std::fs::File,
    writer: Option<std::io::BufWriter<std::fs::File>>,
    rows: u64,
}

impl RefTable {
    /// An empty table in a new file under the temporary directory, unlinked at once.
    fn create() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            ".foundry-rows-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        let writer = file.try_clone().map_err(|e| io(&path, e))?;
        Ok(RefTable {
            file,
            writer: Some(std::io::BufWriter::with_capacity(1 << 16, writer)),
            rows: 0,
        })
    }

    /// Appends the next row's reference.
    fn push(&mut self, r: RowRef) -> Result<()> {
        use std::io::Write;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| DatasetError::Invalid("row index already finished".into()))?;
        w.write_all(&r.to_bytes()).map_err(|e| DatasetError::Io {
            path: "row index".into(),
            reason: e.to_string(),
        })?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes the writes; the table is read-only from here on.
    fn finish(mut self) -> Result<Self> {
        use std::io::Write;
        if let Some(mut w) = self.writer.take() {
            w.flush().map_err(|e| DatasetError::Io {
                path: "row index".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(self)
    }

    /// The reference of row `r` (0-based).
    fn get(&self, r: u64) -> Result<RowRef> {
        use std::os::unix::fs::FileExt;
        if r >= self.rows {
            return Err(DatasetError::Invalid(format!(
                "row {r} is outside its shard ({} rows)",
                self.rows
            )));
        }
        let mut b = [0u8; RowRef::BYTES];
        self.file
            .read_exact_at(&mut b, r * RowRef::BYTES as u64)
            .map_err(|e| DatasetError::Io {
                path: "row index".into(),
                reason: e.to_string(),
            })?;
        Ok(RowRef::from_bytes(&b))
    }
}
