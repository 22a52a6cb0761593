//! Deterministic synthetic financial documents.
//!
//! We cannot ship real invoices, yet tests, demos and benchmarks need many
//! documents with exact ground truth. [`generate`] writes `count` documents
//! (PNG + JSONL, or Parquet with the image bytes inline) in the Foundry
//! dataset format, split into train/validation/test. Document `i` depends
//! only on `(seed, i)` and the config, so the same seed gives identical bytes
//! whatever the thread count, and a larger count extends a smaller one.
//!
//! Two profiles: [`Profile::Standard`] draws full pages (four document types,
//! four layout families each, item tables, six date and five currency
//! formats, light noise and skew); [`Profile::Tiny`] draws small clean cards
//! with a few short fields, for a tiny model trained on CPU in minutes.

mod content;
mod layout;
mod parquet_out;
mod render;
mod rng;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use layout::FAMILIES;
use rng::Rng;

/// Why generation failed: one line naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The config is invalid.
    #[error("{0}")]
    Config(String),
    /// Writing an output file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS or encoder error.
        reason: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, SynthError>;

fn io_err(path: &Path, e: impl std::fmt::Display) -> SynthError {
    SynthError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A document type (the `doc_type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocType {
    /// vendor, invoice_number, date, due_date, currency, subtotal, tax, total, line_items.
    Invoice,
    /// merchant, date, time, currency, subtotal, tax, total, payment_method, line_items.
    Receipt,
    /// bank, account_holder, account_number, period_start, period_end, currency, balances, transactions.
    BankStatement,
    /// buyer, supplier, po_number, date, delivery_date, currency, total, line_items.
    PurchaseOrder,
}

impl DocType {
    /// Every type.
    pub const ALL: [DocType; 4] = [
        DocType::Invoice,
        DocType::Receipt,
        DocType::BankStatement,
        DocType::PurchaseOrder,
    ];

    /// The name used in rows and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DocType::Invoice => "invoice",
            DocType::Receipt => "receipt",
            DocType::BankStatement => "bank_statement",
            DocType::PurchaseOrder => "purchase_order",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        DocType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                SynthError::Config(format!(
                    "unknown document type {s:?} (known: invoice, receipt, bank_statement, purchase_order)"
                ))
            })
    }

    /// The target fields of this type, in schema order: the datasets crate's
    /// built-in schema, so what synth writes is what pinning validates.
    pub fn fields(self) -> &'static [&'static str] {
        foundry_datasets::schema::DOC_TYPES
            .iter()
            .find(|(t, _)| *t == self.as_str())
            .map_or(&[], |(_, f)| *f)
    }

    /// The layout name of this type's freely arranged tiny cards.
    pub fn free_layout(self) -> &'static str {
        match self {
            DocType::Invoice => "invoice-free",
            DocType::Receipt => "receipt-free",
            DocType::BankStatement => "bank_statement-free",
            DocType::PurchaseOrder => "purchase_order-free",
        }
    }

    /// The fields the tiny profile keeps by default (short scalars).
    pub fn tiny_fields(self) -> &'static [&'static str] {
        match self {
            DocType::Invoice => &["invoice_number", "date", "total"],
            DocType::Receipt => &["date", "time", "total"],
            DocType::BankStatement => &["account_number", "period_end", "closing_balance"],
            DocType::PurchaseOrder => &["po_number", "date", "total"],
        }
    }
}

/// The layout families of a type (`invoice-a` … `invoice-d`).
pub fn layout_families(t: DocType) -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter(|f| f.doc_type == t)
        .map(|f| f.name)
        .collect()
}

/// Which renderer and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Full pages, every field, varied formats, light noise and skew.
    Standard,
    /// Small clean cards with a few short fields (see [`DocType::tiny_fields`]).
    Tiny,
}

impl Profile {
    /// Parses `standard` or `tiny`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "standard" => Ok(Profile::Standard),
            "tiny" => Ok(Profile::Tiny),
            _ => Err(SynthError::Config(format!(
                "unknown profile {s:?} (known: standard, tiny)"
            ))),
        }
    }
}

/// How shards are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSONL shards with PNG files beside them.
    Jsonl,
    /// Parquet shards with the PNG bytes inline (`image: {bytes, path}`).
    Parquet,
}

/// Everything that decides the output. Start from [`SynthConfig::new`] and
/// change fields; [`SynthConfig::validate`] says what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Seed: the same seed and config give identical bytes.
    pub seed: u64,
    /// Number of documents.
    pub count: u64,
    /// Renderer and defaults.
    pub profile: Profile,
    /// Document types to draw from (uniformly).
    pub types: Vec<DocType>,
    /// Layout families to use (empty: every family of the chosen types).
    pub layouts: Vec<String>,
    /// Page width in pixels (receipts use 5/8 of it in the standard profile).
    pub width: u32,
    /// Page height in pixels.
    pub height: u32,
    /// Base font size in pixels.
    pub font_px: f32,
    /// Relative font size variation per document (0.1 = ±10 %).
    pub font_jitter: f32,
    /// Target fields to keep (None: every field of the type in the standard
    /// profile, [`DocType::tiny_fields`] in the tiny profile). A narrowed
    /// schema is written to `foundry_schema.json`.
    pub fields: Option<Vec<String>>,
    /// Noise level 0..=1 (pixel jitter and specks).
    pub noise: f32,
    /// Maximum rotation in degrees (uniform in ±max).
    pub max_skew_deg: f32,
    /// Relative weights of train, validation and test.
    pub split_weights: [u32; 3],
    /// Layout families held out: all their documents go to `test`, and only
    /// theirs (the others split by the train/validation weights).
    pub holdout_layouts: Vec<String>,
    /// Shard format.
    pub format: Format,
    /// Rows per shard.
    pub shard_rows: u64,
    /// Also write each page's transcription (`text`, JSON Lines only): the
    /// reading task the demo's base model is pretrained on.
    #[serde(default)]
    pub with_text: bool,
    /// Tiny profile only: arrange each card at random (field order, labels or
    /// none, label before, after or above the value, alignment, weight,
    /// position) instead of by its family; rows name their layout
    /// `<type>-free`. Held-out families keep their own arrangement (they are
    /// the test). The demo's base is pretrained on such cards, and the demo
    /// fine-tunes on them.
    #[serde(default)]
    pub free_arrangement: bool,
}

impl SynthConfig {
    /// The defaults of `profile`: standard pages are 768×992 with 15 px text,
    /// tiny cards are 160×96 with 16 px text and no noise or skew.
    pub fn new(profile: Profile, seed: u64, count: u64) -> Self {
        let (width, height, font_px, font_jitter, noise, skew) = match profile {
            Profile::Standard => (768, 992, 15.0, 0.15, 0.25, 1.0),
            Profile::Tiny => (160, 96, 16.0, 0.0, 0.0, 0.0),
        };
        SynthConfig {
            seed,
            count,
            profile,
            types: match profile {
                Profile::Standard => DocType::ALL.to_vec(),
                Profile::Tiny => vec![DocType::Invoice],
            },
            layouts: Vec::new(),
            width,
            height,
            font_px,
            font_jitter,
            fields: None,
            noise,
            max_skew_deg: skew,
            split_weights: [8, 1, 1],
            holdout_layouts: Vec::new(),
            format: Format::Jsonl,
            shard_rows: 10_000,
            with_text: false,
            free_arrangement: false,
        }
    }

    /// The fields kept for `t`, in schema order.
    pub fn kept_fields(&self, t: DocType) -> Vec<&'static str> {
        match (&self.fields, self.profile) {
            (Some(f), _) => t
                .fields()
                .iter()
                .copied()
                .filter(|x| f.iter().any(|k| k == x))
                .collect(),
            (None, Profile::Standard) => t.fields().to_vec(),
            (None, Profile::Tiny) => t.tiny_fields().to_vec(),
        }
    }

    /// The (type, family) pairs documents are drawn from.
    fn families(&self) -> Vec<Vec<&'static layout::Family>> {
        self.types
            .iter()
            .map(|t| {
                FAMILIES
                    .iter()
                    .filter(|f| f.doc_type == *t)
                    .filter(|f| self.layouts.is_empty() || self.layouts.iter().any(|l| l == f.name))
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Checks the config; the error names the setting and the reason.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SynthError::Config(m));
        if self.types.is_empty() {
            return bad("types: no document type selected".into());
        }
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        for l in self.layouts.iter().chain(&self.holdout_layouts) {
            if !known.contains(&l.as_str()) {
                return bad(format!(
                    "layouts: unknown layout family {l:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        if self.families().is_empty() {
            return bad(format!(
                "layouts: none of {} belongs to the selected types ({})",
                self.layouts.join(", "),
                self.types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(fields) = &self.fields {
            for f in fields {
                if !self.types.iter().any(|t| t.fields().contains(&f.as_str())) {
                    return bad(format!("fields: {f:?} is not a field of any selected type"));
                }
            }
        }
        for t in &self.types {
            let kept = self.kept_fields(*t);
            if kept.is_empty() {
                return bad(format!("fields: nothing kept for {}", t.as_str()));
            }
            if self.profile == Profile::Tiny {
                if let Some(a) = kept
                    .iter()
                    .find(|k| matches!(**k, "line_items" | "transactions"))
                {
                    return bad(format!(
                        "fields: the tiny profile draws scalar fields only, not {a:?}"
                    ));
                }
            }
        }
        if self.free_arrangement && self.profile != Profile::Tiny {
            return bad("free_arrangement: only the tiny profile arranges cards freely".into());
        }
        if !(16..=8192).contains(&self.width) || !(16..=8192).contains(&self.height) {
            return bad(format!(
                "size: {}x{} is outside 16..=8192 pixels",
                self.width, self.height
            ));
        }
        if !(4.0..=200.0).contains(&self.font_px) {
            return bad(format!("font_px: {} is outside 4..=200", self.font_px));
        }
        if !(0.0..=0.5).contains(&self.font_jitter) {
            return bad(format!(
                "font_jitter: {} is outside 0..=0.5",
                self.font_jitter
            ));
        }
        if !(0.0..=1.0).contains(&self.noise) {
            return bad(format!("noise: {} is outside 0..=1", self.noise));
        }
        if !(0.0..=10.0).contains(&self.max_skew_deg) {
            return bad(format!(
                "max_skew_deg: {} is outside 0..=10",
                self.max_skew_deg
            ));
        }
        let w = self.split_weights;
        let usable = if self.holdout_layouts.is_empty() {
            w[0] + w[1] + w[2]
        } else {
            w[0] + w[1]
        };
        if usable == 0 {
            return bad("split_weights: all zero".into());
        }
        if self.shard_rows == 0 {
            return bad("shard_rows: must be at least 1".into());
        }
        Ok(())
    }

    /// Type, family and split of document `index` (cheap: no drawing).
    fn plan(&self, fams: &[Vec<&'static layout::Family>], index: u64) -> Plan {
        let mut r = Rng::new(self.seed ^ 0x005E_ED0F_5EED, index);
        let group = &fams[r.below(fams.len() as u64) as usize];
        let family = group[r.below(group.len() as u64) as usize];
        let w = self.split_weights;
        let split = if self.holdout_layouts.iter().any(|l| l == family.name) {
            2
        } else {
            let (a, b, c) = if self.holdout_layouts.is_empty() {
                (w[0], w[1], w[2])
            } else {
                (w[0], w[1], 0)
            };
            let x = r.below(u64::from(a + b + c)) as u32;
            if x < a {
                0
            } else if x < a + b {
                1
            } else {
                2
            }
        };
        Plan { family, split }
    }
}

struct Plan {
    family: &'static layout::Family,
    split: usize,
}

/// The split names, in order.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// One generated document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Its index (0-based) in the generated sequence.
    pub index: u64,
    /// `train`, `validation` or `test`.
    pub split: &'static str,
    /// Document type.
    pub doc_type: DocType,
    /// Layout family.
    pub layout: &'static str,
    /// PNG bytes (8-bit grayscale).
    pub png: Vec<u8>,
    /// Ground truth, restricted to the kept fields.
    pub target: serde_json::Value,
    /// Every string printed on the page, one per line in drawing order: the
    /// transcription a reading model is pretrained on.
    pub text: String,
    /// The centre (x, y) in pixels of each character of `text` other than the
    /// line breaks, in order (before any skew).
    pub centres: Vec<[i32; 2]>,
}

/// Draws document `index` of `cfg` (which must be valid).
pub fn document(cfg: &SynthConfig, index: u64) -> Result<Document> {
    cfg.validate()?;
    let fams = cfg.families();
    draw(cfg, &fams, index)
}

fn draw(cfg: &SynthConfig, fams: &[Vec<&'static layout::Family>], index: u64) -> Result<Document> {
    let plan = cfg.plan(fams, index);
    let fam = plan.family;
    let mut r = Rng::new(cfg.seed, index);
    let short = cfg.profile == Profile::Tiny;
    let c = content::generate(fam.doc_type, &mut r, short);
    let kept = cfg.kept_fields(fam.doc_type);
    let target: serde_json::Map<String, serde_json::Value> = kept
        .iter()
        .filter_map(|k| c.target.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    // Held-out families keep their own arrangement: they are the test.
    let free = cfg.free_arrangement && !cfg.holdout_layouts.iter().any(|l| l == fam.name);
    let mut canvas = match cfg.profile {
        Profile::Standard => layout::standard(cfg, fam, &c, &mut r),
        Profile::Tiny if free => layout::tiny_free(cfg, &c, &kept, &mut r),
        Profile::Tiny => layout::tiny(cfg, fam, &c, &kept, &mut r),
    };
    let layout = if free {
        fam.doc_type.free_layout()
    } else {
        fam.name
    };
    let paper = canvas.img.get_pixel(0, 0).0[0];
    canvas.noise(&mut r, cfg.noise);
    let skew = cfg.max_skew_deg * (r.unit() * 2.0 - 1.0);
    canvas.skew(skew, paper);
    let png = canvas
        .png()
        .map_err(|e| io_err(Path::new(&format!("document {index}")), e))?;
    Ok(Document {
        index,
        split: SPLITS[plan.split],
        doc_type: fam.doc_type,
        layout,
        png,
        target: serde_json::Value::Object(target),
        text: canvas.drawn.join("\n"),
        centres: canvas.centres,
    })
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Documents written.
    pub documents: u64,
    /// Documents per split.
    pub splits: BTreeMap<String, u64>,
    /// Documents per layout family.
    pub layouts: BTreeMap<String, u64>,
    /// Shard paths relative to the output dir.
    pub shards: Vec<String>,
}

/// Shard file name: `train-00000-of-00002.jsonl`.
fn shard_name(split: &str, k: u64, n: u64, ext: &str) -> String {
    format!("data/{split}-{k:05}-of-{n:05}.{ext}")
}

enum Sink {
    Jsonl(std::io::BufWriter<std::fs::File>),
    Parquet(Box<parquet_out::ShardWriter>),
}

struct Open {
    rows: u64,
    path: PathBuf,
    sink: Sink,
}

/// Writes `cfg.count` documents under `out` (created if missing; existing
/// shards of the same names are replaced). Documents are drawn in parallel
/// batches and written in index order.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<Summary> {
    cfg.validate()?;
    let fams = cfg.families();
    let data = out.join("data");
    std::fs::create_dir_all(&data).map_err(|e| io_err(&data, e))?;
    // Plan every document first: shard counts are in the file names.
    let mut per_split = [0u64; 3];
    for i in 0..cfg.count {
        per_split[cfg.plan(&fams, i).split] += 1;
    }
    let n_shards: Vec<u64> = per_split
        .iter()
        .map(|&n| n.div_ceil(cfg.shard_rows))
        .collect();
    let ext = match cfg.format {
        Format::Jsonl => "jsonl",
        Format::Parquet => "parquet",
    };
    if cfg.format == Format::Jsonl {
        for (s, &n) in SPLITS.iter().zip(&per_split) {
            if n > 0 {
                let dir = data.join("images").join(s);
                std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            }
        }
    }
    if cfg.fields.is_some() || cfg.profile == Profile::Tiny {
        let schema: BTreeMap<&str, Vec<&str>> = cfg
            .types
            .iter()
            .map(|t| (t.as_str(), cfg.kept_fields(*t)))
            .collect();
        let p = out.join("foundry_schema.json");
        let text = serde_json::to_string_pretty(&schema).map_err(|e| io_err(&p, e))?;
        std::fs::write(&p, text + "\n").map_err(|e| io_err(&p, e))?;
    }
    let mut open: [Option<Open>; 3] = [None, None, None];
    let mut summary = Summary {
        documents: 0,
        splits: BTreeMap::new(),
        layouts: BTreeMap::new(),
        shards: Vec::new(),
    };
    let batch = 256u64;
    let mut start = 0u64;
    while start < cfg.count {
        let end = (start + batch).min(cfg.count);
        let docs: Vec<Result<Document>> = (start..end)
            .into_par_iter()
            .map(|i| draw(cfg, &fams, i))
            .collect();
        for d in docs {
            let d = d?;
            let s = SPLITS.iter().position(|x| *x == d.split).unwrap_or(0);
            if open[s].as_ref().is_some_and(|o| o.rows >= cfg.shard_rows) {
                if let Some(o) = open[s].take() {
                    close(o, &mut summary)?;
                }
            }
            if open[s].is_none() {
                let k = summary
                    .shards
                    .iter()
                    .filter(|p| p.starts_with(&format!("data/{}-", d.split)))
                    .count() as u64;
                let rel = shard_name(d.split, k, n_shards[s], ext);
                let path = out.join(&rel);
                let sink = match cfg.format {
                    Format::Jsonl => Sink::Jsonl(std::io::BufWriter::new(
                        std::fs::File::create(&path).map_err(|e| io_err(&path, e))?,
                    )),
                    Format::Parquet => {
                        Sink::Parquet(Box::new(parquet_out::ShardWriter::create(&path)?))
                    }
                };
                open[s] = Some(Open {
                    rows: 0,
                    path,
                    sink,
                });
            }
            let Some(o) = open[s].as_mut() else {
                continue;
            };
            let name = format!("{:07}.png", d.index);
            let target = serde_json::to_string(&d.target).map_err(|e| io_err(&o.path, e))?;
            match &mut o.sink {
                Sink::Jsonl(w) => {
                    let rel = format!("images/{}/{name}", d.split);
                    let img = data.join(&rel);
                    std::fs::write(&img, &d.png).map_err(|e| io_err(&img, e))?;
                    let mut row = serde_json::json!({
                        "image": rel,
                        "doc_type": d.doc_type.as_str(),
                        "layout": d.layout,
                        "target": d.target,
                    });
                    if cfg.with_text {
                        row["text"] = serde_json::Value::String(d.text);
                        row["centres"] = serde_json::json!(d.centres);
                    }
                    writeln!(w, "{row}").map_err(|e| io_err(&o.path, e))?;
                }
                Sink::Parquet(w) => {
                    w.push(parquet_out::Row {
                        image: d.png,
                        path: name,
                        doc_type: d.doc_type.as_str().to_string(),
                        layout: d.layout.to_string(),
                        target,
                    })?;
                }
            }
            o.rows += 1;
            summary.documents += 1;
            *summary.splits.entry(d.split.to_string()).or_default() += 1;
            *summary.layouts.entry(d.layout.to_string()).or_default() += 1;
        }
        start = end;
    }
    for o in open.into_iter().flatten() {
        close(o, &mut summary)?;
    }
    summary.shards.sort();
    Ok(summary)
}

fn close(o: Open, summary: &mut Summary) -> Result<()> {
    let rel = o
        .path
        .parent()
        .and_then(|p| p.file_name())
        .map(|d| {
            format!(
                "{}/{}",
                d.to_string_lossy(),
                o.path.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .unwrap_or_default();
    match o.sink {
        Sink::Jsonl(mut w) => w.flush().map_err(|e| io_err(&o.path, e))?,
        Sink::Parquet(w) => w.finish()?,
    }
    summary.shards.push(rel);
    Ok(())
}
