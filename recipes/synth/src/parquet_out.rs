//! Parquet shards in the Hugging Face datasets layout: `image` is a struct
//! `{bytes, path}` (the `Image` feature), `doc_type`, `layout` and `target`
//! (JSON text) are strings. The `huggingface` key/value metadata declares the
//! features so `datasets.load_dataset("parquet", …)` decodes the images.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::{io_err, Result};

/// The Parquet schema of a shard.
/// Every field is nullable, as Arrow (and so `datasets`) writes them: with non-nullable fields
/// `datasets` disregards the `huggingface` features and hands the image back as a
/// `{bytes, path}` dict instead of an image.
pub const SCHEMA: &str = "message foundry_document {
  optional group image {
    optional binary bytes;
    optional binary path (UTF8);
  }
  optional binary doc_type (UTF8);
  optional binary layout (UTF8);
  optional binary target (UTF8);
}";

const HF_FEATURES: &str = r#"{"info":{"features":{"image":{"_type":"Image"},"doc_type":{"dtype":"string","_type":"Value"},"layout":{"dtype":"string","_type":"Value"},"target":{"dtype":"string","_type":"Value"}}}}"#;

/// Rows per row group (images are large; HF uses small groups too).
const GROUP_ROWS: usize = 64;

/// One row.
pub(crate) struct Row {
    pub image: Vec<u8>,
    pub path: String,
    pub doc_type: String,
    pub layout: String,
    pub target: String,
}

/// Writes one shard, a row group every [`GROUP_ROWS`] rows.
pub(crate) struct ShardWriter {
    path: PathBuf,
    writer: SerializedFileWriter<File>,
    pending: Vec<Row>,
}

impl ShardWriter {
    /// Creates the shard file.
    pub fn create(path: &Path) -> Result<Self> {
        let err = |e: parquet::errors::ParquetError| io_err(path, e);
        let schema = Arc::new(parse_message_type(SCHEMA).map_err(err)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "huggingface".to_string(),
                HF_FEATURES.to_string(),
            )]))
            .build();
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(err)?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            writer,
            pending: Vec::new(),
        })
    }

    /// Adds a row.
    pub fn push(&mut self, row: Row) -> Result<()> {
        self.pending.push(row);
        if self.pending.len() >= GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e: parquet::errors::ParquetError| io_err(&path, e);
        let rows = std::mem::take(&mut self.pending);
        let columns: [Vec<ByteArray>; 5] = [
            rows.iter()
                .map(|r| ByteArray::from(r.image.clone()))
                .collect(),
            rows.iter()
                .map(|r| ByteArray::from(r.path.as_str()))
                .collect(),
            rows.iter()
                .map(|r| ByteArray::from(r.doc_type.as_str()))
                .collect(),
            rows.iter()
                .map(|r| ByteArray::from(r.layout.as_str()))
                .collect(),
            rows.iter()
                .map(|r| ByteArray::from(r.target.as_str()))
                .collect(),
        ];
        // Every value is present: definition level 2 inside the optional `image` group, 1 for
        // the top-level columns.
        let in_group = vec![2i16; rows.len()];
        let top = vec![1i16; rows.len()];
        let mut group = self.writer.next_row_group().map_err(err)?;
        let mut i = 0;
        while let Some(mut col) = group.next_column().map_err(err)? {
            let defs = Some(if i < 2 {
                in_group.as_slice()
            } else {
                top.as_slice()
            });
            col.typed::<ByteArrayType>()
                .write_batch(&columns[i], defs, None)
                .map_err(err)?;
            col.close().map_err(err)?;
            i += 1;
        }
        group.close().map_err(err)?;
        Ok(())
    }

    /// Writes the remaining rows and the footer.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let path = self.path.clone();
        self.writer.close().map_err(|e| io_err(&path, e))?;
        Ok(())
    }
}
