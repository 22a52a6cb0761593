//! Streaming shard scans: every row of a shard visited once, in order, in
//! bounded memory (a window of rows in flight, never the shard), validated in
//! parallel, and the shard's digest computed on the way.
//!
//! Pinning scans every shard with image decoding on; a reader scans a shard
//! (without decoding) the first time it touches it, to check the pin and to
//! learn where each row is and what its bytes hash to, so that it can later
//! read any one row alone and re-verify it ([`RowRef`]).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::schema::Schema;
use crate::{
    check_image, denied_file, denied_row, parse_row, DatasetError, Denied, Jail, Result, Row,
    MAX_IMAGE_BYTES, MAX_ROW_BYTES, MAX_SHARD_BYTES,
};

/// Rows validated together (their images are in memory at once).
pub(crate) const WINDOW: usize = 64;

/// Where a row is in its shard and what its bytes hash to: enough to read
/// it alone later and to check that it is still the row that was pinned.
/// 32 bytes a row, kept in an unlinked temporary file (not in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowRef {
    /// JSONL: the line's byte offset; Parquet: row group << 32 | index in the group.
    loc: u64,
    /// JSONL: the line's length without its break; Parquet: 0.
    len: u32,
    /// 1-based row number (JSONL line number; Parquet row in the file).
    pub n: u32,
    /// The first 128 bits of the sha256 of the row's bytes (the JSONL line then the image
    /// file, or the Parquet row's image then its doc type, layout and target): recorded when
    /// the shard was checked against its full pinned digest, so a row that changes later is
    /// caught when it is read alone.
    pub digest: RowDigest,
}

/// A row's digest: sha256 truncated to 128 bits.
pub(crate) type RowDigest = [u8; 16];

impl RowRef {
    /// A JSONL line at `offset`, `len` bytes without its break.
    pub(crate) fn line(n: u64, offset: u64, len: u32, digest: RowDigest) -> Self {
        RowRef {
            loc: offset,
            len,
            n: n as u32,
            digest,
        }
    }

    /// Row `index` of Parquet row group `group`.
    pub(crate) fn parquet(n: u64, group: u32, index: u32, digest: RowDigest) -> Self {
        RowRef {
            loc: (u64::from(group) << 32) | u64::from(index),
            len: 0,
            n: n as u32,
            digest,
        }
    }

    /// The JSONL line's offset and length.
    pub(crate) fn line_at(&self) -> (u64, u32) {
        (self.loc, self.len)
    }

    /// The Parquet row group and index.
    pub(crate) fn parquet_at(&self) -> (u32, u32) {
        ((self.loc >> 32) as u32, self.loc as u32)
    }

    /// The 1-based row number.
    pub(crate) fn row(&self) -> u64 {
        u64::from(self.n)
    }

    /// Its 32 bytes, as an index file holds them.
    pub(crate) fn to_bytes(self) -> [u8; RowRef::BYTES] {
        let mut b = [0u8; RowRef::BYTES];
        b[..8].copy_from_slice(&self.loc.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.n.to_le_bytes());
        b[16..].copy_from_slice(&self.digest);
        b
    }

    /// The reference [`RowRef::to_bytes`] wrote.
    pub(crate) fn from_bytes(b: &[u8; RowRef::BYTES]) -> Self {
        let mut loc = [0u8; 8];
        loc.copy_from_slice(&b[..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[8..12]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[12..16]);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&b[16..]);
        RowRef {
            loc: u64::from_le_bytes(loc),
            len: u32::from_le_bytes(len),
            n: u32::from_le_bytes(n),
            digest,
        }
    }

    /// Bytes a reference takes in an index file.
    pub(crate) const BYTES: usize = 32;
}

/// One scanned row, handed to the visitor in shard order.
pub(crate) struct Scanned {
    /// The parsed, validated row.
    pub row: Row,
    /// Where it is and its digest.
    pub at: RowRef,
}

/// What a whole-shard scan found.
pub(crate) struct ShardScan {
    /// The shard digest (hex), as pinned.
    pub digest: String,
    /// Bytes of the shard file plus the images it references.
    pub bytes: u64,
    /// Rows.
    pub rows: u64,
}

/// The digest of a row's pieces, in order (each length-prefixed).
pub(crate) fn row_digest(parts: &[&[u8]]) -> RowDigest {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The sha256 of a whole file read in a stream, refusing one over `limit`.
pub(crate) fn file_sha256(jail: &Jail, rel: &str, limit: u64) -> Result<([u8; 32], u64)> {
    let f = jail
        .file(rel)
        .map_err(|d| denied_file(jail.root(), rel, d))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(limit + 1));
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let buf = r
            .fill_buf()
            .map_err(|e| crate::io(&jail.root().join(rel), e))?;
        if buf.is_empty() {
            break;
        }
        h.update(buf);
        n += buf.len() as u64;
        let len = buf.len();
        r.consume(len);
    }
    if n > limit {
        return Err(denied_file(jail.root(), rel, Denied::TooLarge { limit }));
    }
    Ok((h.finalize().into(), n))
}

/// The image path of a JSONL row, relative to the dataset root.
pub(crate) fn image_path(shard: &str, n: u64, image: &str) -> Result<String> {
    if Path::new(image).is_absolute() {
        // Never reinterpreted as relative: refused like any escape.
        return Err(denied_row(shard, n, "image", image, Denied::Outside));
    }
    let dir = Path::new(shard).parent().unwrap_or(Path::new(""));
    Ok(if dir.as_os_str().is_empty() {
        image.to_string()
    } else {
        format!("{}/{image}", dir.to_string_lossy())
    })
}

/// One JSONL line read but not yet checked.
struct Line {
    n: u64,
    offset: u64,
    bytes: Vec<u8>,
}

/// A JSONL line checked: the row, its image's sha256 and size, its digest.
struct Checked {
    row: Row,
    image_sha: [u8; 32],
    image_bytes: u64,
    digest: RowDigest,
}

fn check_line(
    jail: &Jail,
    rel: &str,
    schema: &Schema,
    decode_images: bool,
    line: &Line,
) -> Result<Checked> {
    let text = std::str::from_utf8(&line.bytes).map_err(|_| DatasetError::BadRow {
        shard: rel.into(),
        row: line.n,
        reason: "the row is not UTF-8".into(),
    })?;
    let row = parse_row(rel, line.n, text, schema)?;
    let img_rel = image_path(rel, line.n, &row.image)?;
    let img = jail
        .read(&img_rel, MAX_IMAGE_BYTES)
        .map_err(|d| denied_row(rel, line.n, "image", &row.image, d))?;
    if decode_images {
        check_image(rel, line.n, &row.image, &img)?;
    }
    Ok(Checked {
        image_sha: Sha256::digest(&img).into(),
        image_bytes: img.len() as u64,
        digest: row_digest(&[&line.bytes, &img]),
        row,
    })
}

/// Reads the next line (at most [`MAX_ROW_BYTES`] of it): the raw bytes read,
/// line break included, and the length of the line without it; None at the end.
fn next_line(r: &mut impl BufRead, rel: &str, n: u64) -> Result<Option<(Vec<u8>, usize)>> {
    let mut raw = Vec::new();
    let got = r
        .by_ref()
        .take(MAX_ROW_BYTES as u64 + 2)
        .read_until(b'\n', &mut raw)
        .map_err(|e| DatasetError::Io {
            path: rel.into(),
            reason: e.to_string(),
        })?;
    if got == 0 {
        return Ok(None);
    }
    let mut len = raw.len();
    if raw.last() == Some(&b'\n') {
        len -= 1;
        if len > 0 && raw[len - 1] == b'\r' {
            len -= 1;
        }
    }
    if len > MAX_ROW_BYTES {
        return Err(DatasetError::BadRow {
            shard: rel.into(),
            row: n,
            reason: format!("the row is more than {MAX_ROW_BYTES} bytes"),
        });
    }
    Ok(Some((raw, len)))
}

/// A JSONL shard: the digest is sha256 over `foundry.jsonl-shard.v1\n`, the
/// hex sha256 of the JSONL bytes, a newline, then per row
/// `image_path\thex(sha256(image))\n`. The JSONL bytes are hashed first in a
/// stream of their own, then the rows are read again (and the bytes hashed
/// again: a shard that changes between the two passes is refused).
pub(crate) fn scan_jsonl(
    jail: &Jail,
    rel: &str,
    schema: &Schema,
    decode_images: bool,
    progress: &(dyn Fn(u64) + Sync),
    visit: &mut dyn FnMut(Scanned) -> Result<()>,
) -> Result<ShardScan> {
    let (text_sha, text_len) = file_sha256(jail, rel, MAX_SHARD_BYTES)?;
    let mut h = Sha256::new();
    h.update(b"foundry.jsonl-shard.v1\n");
    h.update(hex::encode(text_sha).as_bytes());
    h.update(b"\n");
    let f = jail
        .file(rel)
        .map_err(|d| denied_file(jail.root(), rel, d))?;
    let mut reader = BufReader::with_capacity(1 << 20, f.take(text_len));
    let mut again = Sha256::new();
    let (mut bytes, mut rows, mut offset, mut n) = (text_len, 0u64, 0u64, 0u64);
    let mut done = false;
    progress(text_len);
    while !done {
        let mut window = Vec::with_capacity(WINDOW);
        while window.len() < WINDOW {
            n += 1;
            let Some((mut line, len)) = next_line(&mut reader, rel, n)? else {
                done = true;
                break;
            };
            again.update(&line);
            let at = offset;
            offset += line.len() as u64;
            line.truncate(len);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            window.push(Line {
                n,
                offset: at,
                bytes: line,
            });
        }
        let checked: Vec<Result<Checked>> = window
            .par_iter()
            .map(|l| check_line(jail, rel, schema, decode_images, l))
            .collect();
        for (line, c) in window.into_iter().zip(checked) {
            let c = c?;
            h.update(c.row.image.as_bytes());
            h.update(b"\t");
            h.update(hex::encode(c.image_sha).as_bytes());
            h.update(b"\n");
            bytes += c.image_bytes;
            rows += 1;
            progress(bytes);
            visit(Scanned {
                at: RowRef::line(line.n, line.offset, line.bytes.len() as u32, c.digest),
                row: c.row,
            })?;
        }
    }
    if <[u8; 32]>::from(again.finalize()) != text_sha {
        return Err(DatasetError::Invalid(format!(
            "shard {rel} changed while it was being read"
        )));
    }
    Ok(ShardScan {
        digest: hex::encode(h.finalize()),
        bytes,
        rows,
    })
}

/// Reads JSONL row `r` of shard `rel` alone and checks it against its digest.
pub(crate) fn read_jsonl_row(
    jail: &Jail,
    file: &std::fs::File,
    rel: &str,
    schema: &Schema,
    r: &RowRef,
) -> Result<(Row, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let (offset, len) = r.line_at();
    let mut line = vec![0u8; len as usize];
    file.read_exact_at(&mut line, offset)
        .map_err(|e| changed_row(rel, r.row(), &e.to_string()))?;
    let text = std::str::from_utf8(&line).map_err(|_| changed_row(rel, r.row(), "not UTF-8"))?;
    let row = parse_row(rel, r.row(), text, schema)?;
    let img = jail
        .read(&image_path(rel, r.row(), &row.image)?, MAX_IMAGE_BYTES)
        .map_err(|d| denied_row(rel, r.row(), "image", &row.image, d))?;
    if row_digest(&[&line, &img]) != r.digest {
        return Err(changed_row(
            rel,
            r.row(),
            "its bytes differ from the pinned ones",
        ));
    }
    Ok((row, img))
}

/// A row that no longer reads as pinned.
pub(crate) fn changed_row(rel: &str, n: u64, why: &str) -> DatasetError {
    DatasetError::Invalid(format!(
        "shard {rel}, row {n} changed since it was pinned: {why}"
    ))
}
