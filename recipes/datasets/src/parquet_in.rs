//! Parquet shards, as Hugging Face datasets writes them: `image` is a struct
//! `{bytes, path}` (or plain binary), `doc_type` and `layout` are strings,
//! `target` is JSON text. A Parquet shard's digest is the sha256 of the file, which is
//! also its Git LFS object id on the hub.

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row as PqRow};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::schema::Schema;
use crate::{
    check_image, denied_file, row_from_value, DatasetError, Jail, Result, ShardContents,
    MAX_IMAGE_BYTES, MAX_SHARD_BYTES,
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

/// Reads and validates a Parquet shard: (digest hex, bytes, rows with image bytes).
pub(crate) fn read(
    jail: &Jail,
    rel: &str,
    schema: &Schema,
    decode_images: bool,
) -> Result<ShardContents> {
    let data = jail
        .read(rel, MAX_SHARD_BYTES)
        .map_err(|d| denied_file(jail.root(), rel, d))?;
    let digest = hex::encode(Sha256::digest(&data));
    let size = data.len() as u64;
    let reader = SerializedFileReader::new(bytes::Bytes::from(data)).map_err(|e| {
        DatasetError::Invalid(format!("shard {rel}: not a readable Parquet file: {e}"))
    })?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| DatasetError::Invalid(format!("shard {rel}: {e}")))?;
    let mut rows = Vec::new();
    for (i, r) in iter.enumerate() {
        let n = i as u64 + 1;
        let bad = |reason: String| DatasetError::BadRow {
            shard: rel.to_string(),
            row: n,
            reason,
        };
        let r = r.map_err(|e| bad(e.to_string()))?;
        let (img, name) = image_of(&r);
        let img = img.ok_or_else(|| bad("image has no bytes".into()))?;
        if img.len() as u64 > MAX_IMAGE_BYTES {
            return Err(bad(format!(
                "image is {} bytes, more than {MAX_IMAGE_BYTES}",
                img.len()
            )));
        }
        let name = name.unwrap_or_else(|| format!("#{n}"));
        let mut v = json!({ "image": name });
        for col in ["doc_type", "layout", "target"] {
            if let Some(s) = string_of(&r, col) {
                v[col] = s;
            }
        }
        let row = row_from_value(rel, n, &v, schema)?;
        if decode_images {
            check_image(rel, n, &row.image, &img)?;
        }
        rows.push((row, img));
    }
    Ok((digest, size, rows))
}
