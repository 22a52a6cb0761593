//! Content-pinned datasets and base models.
//!
//! A dataset is a directory of split shards (`train|validation|test`): JSONL
//! files, each row `{"image", "doc_type", "layout", "target"}` with images
//! beside them, or Parquet files with the image bytes inline (`image:
//! {bytes, path}`, as Hugging Face datasets stores them). [`pin_dataset`] hashes every shard (with the images it references),
//! validates every row and returns a [`DatasetPin`] whose id is the Merkle
//! root of the shard digests, reading each shard in a stream (memory does not
//! grow with the rows). [`SplitIndex`] gives random access to a split's rows,
//! each read alone and re-verified; [`StreamReader`] reads a split shard by
//! shard in a seeded order, resumable.
//! [`pin_model`] hashes a base model's config, tokenizer, processor and weights.

mod hub;
mod index;
pub mod jail;
mod locate;
mod model;
mod parquet_in;
mod reader;
mod scan;
pub mod schema;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use hub::{parse_source, HubOptions, Source};
pub use index::{Example, SplitIndex};
pub use jail::{Denied, Jail};
pub use locate::{locate_model, staged_dir};
pub use model::{pin_model, verify_model, ModelPin};
pub use reader::{Position, StreamReader};

/// Why pinning or reading failed. One line, with the location.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A row is invalid.
    #[error("shard {shard}, row {row}: {reason}")]
    BadRow {
        /// Shard path relative to the dataset root.
        shard: String,
        /// 1-based row (line) number.
        row: u64,
        /// What is wrong.
        reason: String,
    },
    /// A shard's content differs from its pin.
    #[error("shard {shard} changed since it was pinned: sha256 {actual}, pinned {expected}")]
    Changed {
        /// Shard path.
        shard: String,
        /// Pinned digest.
        expected: String,
        /// Digest now.
        actual: String,
    },
    /// Anything else (no shards, bad source, hub error, bad model dir).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, DatasetError>;

pub(crate) fn io(path: &Path, e: std::io::Error) -> DatasetError {
    DatasetError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Largest image file a row may name (32 MiB).
pub const MAX_IMAGE_BYTES: u64 = 32 << 20;
/// Longest image side a decoder accepts (pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most memory one image may decode into (256 MiB).
pub const MAX_IMAGE_DECODED_BYTES: u64 = 256 << 20;
/// Longest JSONL line (one row): 1 MiB.
pub const MAX_ROW_BYTES: usize = 1 << 20;
/// Largest target (its JSON): 64 KiB.
pub const MAX_TARGET_BYTES: usize = 64 << 10;
/// Largest shard file read whole (4 GiB).
pub const MAX_SHARD_BYTES: u64 = 4 << 30;
/// Largest model metadata file (config.json, the index, tokenizer): 64 MiB.
pub const MAX_META_BYTES: u64 = 64 << 20;

/// A row's error for a file it names that could not be read: outside the
/// root (without a word about what exists there), missing, too large.
pub(crate) fn denied_row(shard: &str, row: u64, what: &str, name: &str, d: Denied) -> DatasetError {
    let reason = match d {
        Denied::Outside => format!("{what} {name:?} is outside the dataset root"),
        Denied::NotFound => format!("{what} {name:?} not found"),
        Denied::TooLarge { limit } => format!("{what} {name:?} is larger than {limit} bytes"),
        Denied::Io(e) => format!("{what} {name:?}: {e}"),
    };
    DatasetError::BadRow {
        shard: shard.to_string(),
        row,
        reason,
    }
}

/// A file's error outside of any row (a shard, a schema, a model file).
pub(crate) fn denied_file(root: &Path, name: &str, d: Denied) -> DatasetError {
    match d {
        Denied::Io(e) => DatasetError::Io {
            path: root.join(name).display().to_string(),
            reason: e.to_string(),
        },
        other => DatasetError::Invalid(format!("{}: {name:?} {other}", root.display())),
    }
}

/// The splits a shard may belong to.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// One pinned shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// `train`, `validation` or `test`.
    pub split: String,
    /// Path relative to the dataset root (forward slashes).
    pub path: String,
    /// Shard digest (hex): see [`shard_digest`].
    pub sha256: String,
    /// Bytes of the shard file plus the images it references.
    pub bytes: u64,
    /// Rows.
    pub rows: u64,
}

/// Row counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Rows.
    pub rows: u64,
    /// Rows per doc type.
    pub by_doc_type: BTreeMap<String, u64>,
    /// Rows per layout family.
    pub by_layout: BTreeMap<String, u64>,
}

/// A pinned dataset: plain data, convertible to the `DatasetPinned` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetPin {
    /// Merkle root (hex) of the shard digests.
    pub dataset_id: String,
    /// The source as given.
    pub source: String,
    /// Commit sha of a hub revision.
    pub resolved_revision: Option<String>,
    /// The local directory the shards were read from.
    pub root: PathBuf,
    /// Shards sorted by path.
    pub shards: Vec<Shard>,
    /// Counts per split.
    pub splits: BTreeMap<String, SplitCounts>,
}

fn digest_from_hex(h: &str) -> foundry_events::Sha256Digest {
    let mut out = [0u8; 32];
    if let Ok(v) = hex::decode(h) {
        if v.len() == 32 {
            out.copy_from_slice(&v);
        }
    }
    foundry_events::Sha256Digest(out)
}

impl DatasetPin {
    /// The `DatasetPinned` payload.
    pub fn to_event(&self) -> foundry_events::DatasetPinned {
        foundry_events::DatasetPinned {
            dataset_id: self.dataset_id.clone(),
            source: self.source.clone(),
            resolved_revision: self.resolved_revision.clone(),
            shards: self
                .shards
                .iter()
                .map(|s| foundry_events::ShardPin {
                    split: s.split.clone(),
                    path: s.path.clone(),
                    sha256: digest_from_hex(&s.sha256),
                    bytes: s.bytes,
                    rows: s.rows,
                })
                .collect(),
            splits: self
                .splits
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        foundry_events::SplitStats {
                            rows: c.rows,
                            by_doc_type: c.by_doc_type.clone(),
                            by_layout: c.by_layout.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The split of a shard file name (`train-00000-of-00002.jsonl` → `train`),
/// or None when the file is not a shard.
pub fn shard_split(file_name: &str) -> Option<&'static str> {
    let stem = file_name
        .strip_suffix(".jsonl")
        .or_else(|| file_name.strip_suffix(".parquet"))?;
    SPLITS
        .into_iter()
        .find(|s| stem == *s || stem.strip_prefix(s).is_some_and(|r| r.starts_with('-')))
}

/// A parsed, validated row.
pub(crate) struct Row {
    pub image: String,
    pub doc_type: String,
    pub layout: String,
    pub target: serde_json::Value,
}

/// Parses and validates one JSONL line (`row` is 1-based). Image decoding is
/// checked by the caller, which has the bytes.
pub(crate) fn parse_row(shard: &str, row: u64, line: &str, schema: &schema::Schema) -> Result<Row> {
    let bad = |reason: String| DatasetError::BadRow {
        shard: shard.to_string(),
        row,
        reason,
    };
    if line.len() > MAX_ROW_BYTES {
        return Err(bad(format!(
            "the row is {} bytes, more than {MAX_ROW_BYTES}",
            line.len()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    row_from_value(shard, row, &v, schema)
}

/// Validates one JSONL row as pinning does (size, JSON, fields, image
/// reference, target against `schema`), without reading its image: for
/// tools that check rows before writing a shard, and for the fuzzer.
pub fn validate_row(line: &str, schema: &schema::Schema) -> Result<()> {
    parse_row("<row>", 1, line, schema).map(|_| ())
}

/// Validates one row given as a JSON object (a JSONL line, or a Parquet row
/// converted by the caller).
pub(crate) fn row_from_value(
    shard: &str,
    row: u64,
    v: &serde_json::Value,
    schema: &schema::Schema,
) -> Result<Row> {
    let bad = |reason: String| DatasetError::BadRow {
        shard: shard.to_string(),
        row,
        reason,
    };
    let field = |k: &str| -> Result<String> {
        v.get(k)
            .and_then(|x| {
                x.as_str()
                    .or_else(|| x.get("path").and_then(|p| p.as_str()))
            })
            .map(str::to_string)
            .ok_or_else(|| bad(format!("missing string field {k:?}")))
    };
    let image = field("image")?;
    let doc_type = field("doc_type")?;
    let layout = field("layout")?;
    let target = match v.get("target") {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(s).map_err(|e| bad(format!("target is not valid JSON: {e}")))?
        }
        Some(t @ serde_json::Value::Object(_)) => t.clone(),
        _ => return Err(bad("missing target (a JSON object or a JSON string)".into())),
    };
    let size = serde_json::to_string(&target).map_or(usize::MAX, |t| t.len());
    if size > MAX_TARGET_BYTES {
        return Err(bad(format!(
            "the target is {size} bytes of JSON, more than {MAX_TARGET_BYTES}"
        )));
    }
    schema.check(&doc_type, &target).map_err(bad)?;
    Ok(Row {
        image,
        doc_type,
        layout,
        target,
    })
}

/// Decodes `bytes` as an image within the decode limits: at most
/// [`MAX_IMAGE_SIDE`] pixels a side and [`MAX_IMAGE_DECODED_BYTES`] of
/// memory, so a small file claiming an enormous size is refused before it
/// is allocated.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::DynamicImage, String> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    // The header alone says how large the image claims to be.
    let (w, h) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(format!(
            "it is {w} x {h} pixels, more than {MAX_IMAGE_SIDE} a side"
        ));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_DECODED_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// Checks that `img` decodes as an image, within the decode limits.
pub(crate) fn check_image(shard: &str, row: u64, name: &str, img: &[u8]) -> Result<()> {
    decode_image(img).map_err(|e| DatasetError::BadRow {
        shard: shard.into(),
        row,
        reason: format!("image {name} does not decode: {e}"),
    })?;
    Ok(())
}

/// Scans shard `rel` (JSONL or Parquet, by extension) under `jail`: every
/// row validated against `schema` (images decoded when `decode_images`),
/// `visit` called for each in order, `progress` with the bytes read so far.
pub(crate) fn scan_shard(
    jail: &Jail,
    rel: &str,
    schema: &schema::Schema,
    decode_images: bool,
    progress: &(dyn Fn(u64) + Sync),
    visit: &mut dyn FnMut(scan::Scanned) -> Result<()>,
) -> Result<scan::ShardScan> {
    if rel.ends_with(".parquet") {
        parquet_in::scan(jail, rel, schema, decode_images, progress, visit)
    } else {
        scan::scan_jsonl(jail, rel, schema, decode_images, progress, visit)
    }
}

/// Merkle root (hex) of shards: leaf = sha256(0x00 ‖ split ‖ 0x00 ‖ path ‖
/// 0x00 ‖ digest hex), sorted by path; node = sha256(0x01 ‖ left ‖ right); an
/// odd node is carried up unchanged.
pub fn merkle_root(shards: &[Shard]) -> String {
    let mut sorted: Vec<&Shard> = shards.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut level: Vec<[u8; 32]> = sorted
        .iter()
        .map(|s| {
            let mut h = Sha256::new();
            for part in [&s.split, &s.path, &s.sha256] {
                h.update([0u8]);
                h.update(part.as_bytes());
            }
            h.finalize().into()
        })
        .collect();
    if level.is_empty() {
        return hex::encode(Sha256::digest(b""));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|c| match c {
                [l, r] => {
                    let mut h = Sha256::new();
                    h.update([1u8]);
                    h.update(l);
                    h.update(r);
                    h.finalize().into()
                }
                [one] => *one,
                _ => [0; 32],
            })
            .collect();
    }
    hex::encode(level[0])
}

/// Lists the shard files under `dir`. Linked directories are not entered
/// (they may lead anywhere); linked shard files are listed and then read
/// through the jail, which refuses them if they lead outside.
fn find_shards(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let p = entry.path();
        let ty = entry.file_type().map_err(|e| io(&p, e))?;
        if ty.is_dir() {
            find_shards(root, &p, out)?;
        } else if let Some(split) = p.file_name().and_then(|n| n.to_str()).and_then(shard_split) {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((split.to_string(), rel));
        }
    }
    Ok(())
}

/// How far a pin has got, for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PinProgress {
    /// Bytes read so far: shard files and the images they reference.
    pub bytes: u64,
    /// Shards finished.
    pub shards_done: usize,
    /// Shards in all.
    pub shards: usize,
}

/// Pins a local dataset directory (see [`pin_source`] for `hf://`).
pub fn pin_dir(root: &Path, source: &str, resolved_revision: Option<String>) -> Result<DatasetPin> {
    pin_dir_with(root, source, resolved_revision, &|_| {})
}

/// [`pin_dir`], telling `progress` how far it has got. Shards are read in a
/// stream, row by row, a window of rows validated in parallel (images
/// decoded) at a time: memory does not grow with the rows.
pub fn pin_dir_with(
    root: &Path,
    source: &str,
    resolved_revision: Option<String>,
    progress: &(dyn Fn(PinProgress) + Sync),
) -> Result<DatasetPin> {
    let schema = schema::Schema::load(root)?;
    let mut found = Vec::new();
    find_shards(root, root, &mut found)?;
    found.sort_by(|a, b| a.1.cmp(&b.1));
    if found.is_empty() {
        return Err(DatasetError::Invalid(format!(
            "{}: no shards (expected files like data/train-00000-of-00001.jsonl or .parquet)",
            root.display()
        )));
    }
    let jail = Jail::open(root).map_err(|e| io(root, e))?;
    let mut shards = Vec::new();
    let mut splits: BTreeMap<String, SplitCounts> = BTreeMap::new();
    let total = found.len();
    let mut before = 0u64;
    for (i, (split, rel)) in found.into_iter().enumerate() {
        let counts = splits.entry(split.clone()).or_default();
        let report = |bytes: u64| {
            progress(PinProgress {
                bytes: before + bytes,
                shards_done: i,
                shards: total,
            })
        };
        let scanned = scan_shard(&jail, &rel, &schema, true, &report, &mut |r| {
            counts.rows += 1;
            *counts.by_doc_type.entry(r.row.doc_type).or_default() += 1;
            *counts.by_layout.entry(r.row.layout).or_default() += 1;
            Ok(())
        })?;
        before += scanned.bytes;
        shards.push(Shard {
            split,
            path: rel,
            sha256: scanned.digest,
            bytes: scanned.bytes,
            rows: scanned.rows,
        });
    }
    progress(PinProgress {
        bytes: before,
        shards_done: total,
        shards: total,
    });
    if let Some(s) = &schema.file_digest {
        shards.push(s.clone());
    }
    Ok(DatasetPin {
        dataset_id: merkle_root(&shards),
        source: source.to_string(),
        resolved_revision,
        root: root.to_path_buf(),
        shards,
        splits,
    })
}

/// Pins `source`: a local directory or `hf://ORG/NAME@REVISION`.
pub fn pin_source(source: &str, opts: &HubOptions) -> Result<DatasetPin> {
    pin_source_with(source, opts, &|_| {})
}

/// [`pin_source`], telling `progress` how far it has got.
pub fn pin_source_with(
    source: &str,
    opts: &HubOptions,
    progress: &(dyn Fn(PinProgress) + Sync),
) -> Result<DatasetPin> {
    match parse_source(source)? {
        Source::Local(dir) => pin_dir_with(&dir, source, None, progress),
        Source::Hub { .. } => {
            let (dir, sha) = hub::snapshot(source, hub::Kind::Dataset, opts)?;
            pin_dir_with(&dir, source, Some(sha), progress)
        }
    }
}
