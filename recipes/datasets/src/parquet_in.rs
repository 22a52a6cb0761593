//! Parquet shards, as Hugging Face datasets writes them: `image` is a struct
//! `{bytes, path}` (or plain binary), `doc_type` and `layout` are strings,
//! `target` is JSON text. A Parquet shard's digest is the sha256 of the file, which is
//! also its Git LFS object id on the hub. Shards are read one row group at
//! a time, a row alone by decoding its row group up to it.

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row as PqRow};
use serde_json::{json, Value};

use rayon::prelude::*;

use crate::scan::{
    changed_row, file_sha256, row_digest, RowDigest, RowRef, Scanned, ShardScan, WINDOW,
};
use crate::schema::Schema;
use crate::{
    check_image, denied_file, row_from_value, DatasetError, Jail, Result, Row, MAX_IMAGE_BYTES,
    MAX_SHARD_BYTES,
};

/// The image bytes and path of a row's `image` column.
fn image_of(row: &PqRow) -> (Option<Vec<u8>>, Option<String>) {
    for (name, field) in row.get_column_iter() {
        if name != "image" {
            continue;
        }
        return match field {
            Field::Bytes(b) => (Some(b.data().to_vec()), None),
            Field::Group(g) => {
                let mut bytes = None;
                let mut path = None;
                for (k, f) in g.get_column_iter() {
                    match (k.as_str(), f) {
                        ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                        ("path", Field::Str(s)) => path = Some(s.clone()),
                        _ => {}
                    }
                }
                (bytes, path)
            }
            _ => (None, None),
        };
    }
    (None, None)
}

fn string_of(row: &PqRow, col: &str) -> Option<Value> {
    row.get_column_iter()
        .find(|(name, _)| name.as_str() == col)
        .and_then(|(_, f)| match f {
            Field::Str(s) => Some(Value::String(s.clone())),
            Field::Bytes(b) => std::str::from_utf8(b.data())
                .ok()
                .map(|s| Value::String(s.to_string())),
            _ => None,
        })
}

/// A Parquet row's pieces: image bytes and name, and the text columns.
struct Fields {
    image: Vec<u8>,
    name: String,
    text: [Option<String>; 3],
}

/// The text columns a row is validated from.
const TEXT: [&str; 3] = ["doc_type", "layout", "target"];

fn fields(rel: &str, n: u64, r: &PqRow) -> Result<Fields> {
    let bad = |reason: String| DatasetError::BadRow {
        shard: rel.to_string(),
        row: n,
        reason,
    };
    let (img, name) = image_of(r);
    let image = img.ok_or_else(|| bad("image has no bytes".into()))?;
    if image.len() as u64 > MAX_IMAGE_BYTES {
        return Err(bad(format!(
            "image is {} bytes, more than {MAX_IMAGE_BYTES}",
            image.len()
        )));
    }
    let text = TEXT.map(|col| match string_of(r, col) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    });
    Ok(Fields {
        image,
        name: name.unwrap_or_else(|| format!("#{n}")),
        text,
    })
}

impl Fields {
    fn digest(&self) -> RowDigest {
        let t = |i: usize| self.text[i].as_deref().unwrap_or_default().as_bytes();
        let present = |i: usize| [u8::from(self.text[i].is_some())];
        row_digest(&[
            &self.image,
            &present(0),
            t(0),
            &present(1),
            t(1),
            &present(2),
            t(2),
        ])
    }

    fn row(&self, rel: &str, n: u64, schema: &Schema) -> Result<Row> {
        let mut v = json!({ "image": self.name });
        for (col, text) in TEXT.iter().zip(&self.text) {
            if let Some(s) = text {
                v[*col] = Value::String(s.clone());
            }
        }
        row_from_value(rel, n, &v, schema)
    }
}

fn open(jail: &Jail, rel: &str) -> Result<SerializedFileReader<std::fs::File>> {
    let f = jail
        .file(rel)
        .map_err(|d| denied_file(jail.root(), rel, d))?;
    SerializedFileReader::new(f).map_err(|e| {
        DatasetError::Invalid(format!("shard {rel}: not a readable Parquet file: {e}"))
    })
}

/// Scans a Parquet shard row group by row group (never the whole file in
/// memory); its digest is the sha256 of the file, read in a stream first.
pub(crate) fn scan(
    jail: &Jail,
    rel: &str,
    schema: &Schema,
    decode_images: bool,
    progress: &(dyn Fn(u64) + Sync),
    visit: &mut dyn FnMut(Scanned) -> Result<()>,
) -> Result<ShardScan> {
    let (digest, size) = file_sha256(jail, rel, MAX_SHARD_BYTES)?;
    progress(size);
    let reader = open(jail, rel)?;
    let groups = reader.metadata().num_row_groups();
    let mut n = 0u64;
    for g in 0..groups {
        let group = reader
            .get_row_group(g)
            .map_err(|e| DatasetError::Invalid(format!("shard {rel}: row group {g}: {e}")))?;
        let mut iter = group
            .get_row_iter(None)
            .map_err(|e| DatasetError::Invalid(format!("shard {rel}: row group {g}: {e}")))?
            .enumerate()
            .peekable();
        while iter.peek().is_some() {
            let window: Vec<(u64, u32, std::result::Result<PqRow, String>)> = iter
                .by_ref()
                .take(WINDOW)
                .map(|(i, r)| {
                    n += 1;
                    (n, i as u32, r.map_err(|e| e.to_string()))
                })
                .collect();
            let checked: Vec<Result<(Row, Fields)>> = window
                .par_iter()
                .map(|(n, _, r)| {
                    let r = r.as_ref().map_err(|e| DatasetError::BadRow {
                        shard: rel.to_string(),
                        row: *n,
                        reason: e.clone(),
                    })?;
                    let f = fields(rel, *n, r)?;
                    let row = f.row(rel, *n, schema)?;
                    if decode_images {
                        check_image(rel, *n, &row.image, &f.image)?;
                    }
                    Ok((row, f))
                })
                .collect();
            for ((n, index, _), c) in window.into_iter().zip(checked) {
                let (row, f) = c?;
                visit(Scanned {
                    at: RowRef::parquet(n, g as u32, index, f.digest()),
                    row,
                })?;
            }
        }
    }
    Ok(ShardScan {
        digest: hex::encode(digest),
        bytes: size,
        rows: n,
    })
}

/// Reads Parquet row `r` of shard `rel` alone (decoding only its row group
/// up to it) and checks it against its digest.
pub(crate) fn read_row(
    reader: &SerializedFileReader<std::fs::File>,
    rel: &str,
    schema: &Schema,
    r: &RowRef,
) -> Result<(Row, Vec<u8>)> {
    let (group, index) = r.parquet_at();
    let changed = |why: String| changed_row(rel, r.row(), &why);
    let row = reader
        .get_row_group(group as usize)
        .map_err(|e| changed(e.to_string()))?
        .get_row_iter(None)
        .map_err(|e| changed(e.to_string()))?
        .nth(index as usize)
        .ok_or_else(|| changed("it is gone".into()))?
        .map_err(|e| changed(e.to_string()))?;
    let f = fields(rel, r.row(), &row)?;
    if f.digest() != r.digest {
        return Err(changed("its bytes differ from the pinned ones".into()));
    }
    Ok((f.row(rel, r.row(), schema)?, f.image))
}

/// Opens a Parquet shard for reading rows alone.
pub(crate) fn open_reader(jail: &Jail, rel: &str) -> Result<SerializedFileReader<std::fs::File>> {
    open(jail, rel)
}
