//! One portable, self-describing file holding a whole ledger.
//!
//! Layout:
//! 1. the magic line `FOUNDRY-LEDGER-EXPORT\n`;
//! 2. one line of JSON, the [`ExportHeader`] (format, encoding, hash rule,
//!    event count, head hash), ending in `\n`;
//! 3. one frame per event: a u32 little-endian length, then the stored
//!    record bytes (MessagePack envelope, exactly as in the store);
//! 4. an end frame: length 0;
//! 5. 32 bytes: sha256 of everything before them.
//!
//! Import re-verifies every record and the chain, the header's count and head
//! hash, and the file digest, and refuses the file at the first flaw, naming
//! the seq.

use crate::verify::ChainVerifier;
use crate::{Ledger, LedgerError, Result};
use foundry_events::{RecordedEvent, Sha256Digest, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The first line of every export file.
pub const EXPORT_MAGIC: &[u8] = b"FOUNDRY-LEDGER-EXPORT\n";
/// Largest record a frame may hold.
const MAX_FRAME: u32 = 64 << 20;
/// Longest header line accepted.
const MAX_HEADER: usize = 64 << 10;
/// Records written to the store per batch during import.
const IMPORT_BATCH: usize = 10_000;
/// The export layout this build writes and reads.
const FORMAT_VERSION: u32 = 2;

/// The export file's self-description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Always `foundry-ledger-export`.
    pub format: String,
    /// Version of this file layout (2: signed records).
    pub format_version: u32,
    /// Newest event schema version inside.
    pub schema_version: u16,
    /// How records are encoded.
    pub record_encoding: String,
    /// How each record's hash is computed.
    pub hash_rule: String,
    /// Events in the file.
    pub events: u64,
    /// Hash of the last event (zero if empty).
    pub head_hash: Sha256Digest,
    /// When the export was written (RFC 3339).
    pub exported_at: String,
    /// The Foundry version that wrote it.
    pub foundry_version: String,
}

/// Summary of a written or imported export.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSummary {
    /// Events in the file.
    pub events: u64,
    /// Hash of the last event.
    pub head_hash: Sha256Digest,
    /// sha256 of the whole file.
    pub file_sha256: Sha256Digest,
    /// The history's root key (its genesis signer), when verified.
    pub root: Option<String>,
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Ledger {
    /// Writes the whole ledger to `path` (via a temporary file renamed into
    /// place, so a failed export leaves nothing half-written). The ledger is
    /// verified while it is read; a damaged ledger is not exported.
    pub fn export(&self, path: &Path, exported_at: &str) -> Result<ExportSummary> {
        let head = self.stored_head()?.unwrap_or_default();
        let records = self
            .scan_raw(1)
            .take_while(move |r| r.as_ref().map_or(true, |(seq, _)| *seq <= head.seq));
        write_export(path, exported_at, head.seq, head.hash, records)
    }
}

/// Writes an export file from stored records `1..=events` in order (how a
/// ledger is exported, and how a runner that only has a client's view of a
/// ledger snapshots it). The chain is checked while writing: records that
/// do not chain, or stop before `events` or do not end at `head_hash`, write
/// nothing. The file is written to a temporary name, synced and renamed.
pub fn write_export<I>(
    path: &Path,
    exported_at: &str,
    events: u64,
    head_hash: Sha256Digest,
    records: I,
) -> Result<ExportSummary>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>)>>,
{
    let io = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    let file = File::create(&tmp).map_err(io)?;
    let mut w = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let header = ExportHeader {
        format: "foundry-ledger-export".into(),
        format_version: FORMAT_VERSION,
        schema_version: SCHEMA_VERSION,
        record_encoding: "MessagePack record format 2: [seq, stream_version, recorded_at(ns), batch_index, batch_len, seal(nil | [conditions(bin32), signature(bin64)]), statement[format(2), stream, event_id(bin16), event_type, schema_version, actor, causation_id, correlation_id, idempotency_key, payload(bin, MessagePack map), signer(nkey)], prev_hash(bin32), hash(bin32)]".into(),
        hash_rule: "hash = sha256(prev_hash || 0x98 || the stored fields before the statement || sha256(statement) || the stored prev_hash); each batch's last record seals it with an Ed25519 signature by the signer over sha256(\"foundry-batch/v2\\0\" || conditions || u32 count || sha256(statement) of each record)".into(),
        events,
        head_hash,
        exported_at: exported_at.into(),
        foundry_version: env!("CARGO_PKG_VERSION").into(),
    };
    let header_json =
        serde_json::to_string(&header).map_err(|e| LedgerError::InvalidAppend(e.to_string()))?;
    let result = (|| -> Result<()> {
        w.write_all(EXPORT_MAGIC).map_err(io)?;
        w.write_all(header_json.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
        let mut checker = ChainVerifier::chain_only();
        for item in records {
            let (seq, bytes) = item?;
            if seq > events {
                break;
            }
            checker
                .check(seq, &bytes)
                .map_err(|v| LedgerError::Corrupt {
                    seq: v.seq,
                    reason: format!("not exported: {v}"),
                })?;
            let len = u32::try_from(bytes.len()).map_err(|_| LedgerError::Corrupt {
                seq,
                reason: "record too large".into(),
            })?;
            w.write_all(&len.to_le_bytes()).map_err(io)?;
            w.write_all(&bytes).map_err(io)?;
        }
        if checker.next_seq() - 1 != events {
            return Err(LedgerError::Corrupt {
                seq: checker.next_seq(),
                reason: "not exported: the ledger is truncated".into(),
            });
        }
        if checker.last_hash() != head_hash {
            return Err(LedgerError::Corrupt {
                seq: events,
                reason: "not exported: the last record does not have the head's hash".into(),
            });
        }
        w.write_all(&0u32.to_le_bytes()).map_err(io)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let digest: [u8; 32] = w.hasher.finalize_reset().into();
    let mut inner = w.inner;
    inner.write_all(&digest).map_err(io)?;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(ExportSummary {
        events,
        head_hash,
        file_sha256: Sha256Digest(digest),
        root: None,
    })
}

/// Reads and fully verifies an export file, record by record.
pub struct ExportReader<R: Read> {
    input: BufReader<R>,
    hasher: Sha256,
    header: ExportHeader,
    checker: ChainVerifier,
    finished: bool,
}

fn refused(msg: impl Into<String>) -> LedgerError {
    LedgerError::ImportRefused(msg.into())
}

impl<R: Read> ExportReader<R> {
    /// Reads the magic line and the header. Records are then checked in
    /// full (chain, payloads, batches, signatures, authorization); with
    /// `trusted_root`, a history under another root key is refused at seq 1.
    pub fn new(input: R, trusted_root: Option<&str>) -> Result<Self> {
        let mut input = BufReader::new(input);
        let mut hasher = Sha256::new();
        let mut magic = vec![0u8; EXPORT_MAGIC.len()];
        input
            .read_exact(&mut magic)
            .map_err(|_| refused("not a Foundry ledger export (file too short)"))?;
        if magic != EXPORT_MAGIC {
            return Err(refused("not a Foundry ledger export (bad magic line)"));
        }
        hasher.update(&magic);
        let mut line = Vec::new();
        (&mut input)
            .take(MAX_HEADER as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| refused(format!("header: {e}")))?;
        if line.last() != Some(&b'\n') {
            return Err(refused("header: missing or longer than 64 KiB"));
        }
        hasher.update(&line);
        let header: ExportHeader = serde_json::from_slice(&line[..line.len() - 1])
            .map_err(|e| refused(format!("header: {e}")))?;
        if header.format != "foundry-ledger-export" || header.format_version != FORMAT_VERSION {
            return Err(refused(format!(
                "header: unsupported format {:?} version {} (this build reads version {FORMAT_VERSION}: signed records)",
                header.format, header.format_version
            )));
        }
        if header.schema_version > SCHEMA_VERSION {
            return Err(refused(format!(
                "header: schema version {} is newer than the supported {SCHEMA_VERSION}: upgrade foundry",
                header.schema_version
            )));
        }
        Ok(ExportReader {
            input,
            hasher,
            header,
            checker: ChainVerifier::full(trusted_root).defer_signatures(),
            finished: false,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// The history's root key, once its first record has been read.
    pub fn root(&self) -> Option<&str> {
        self.checker.root()
    }

    fn read_exact_hashed(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let seq = self.checker.next_seq();
        self.input.read_exact(buf).map_err(|_| {
            refused(format!(
                "seq {seq}: file ends inside the {what} (truncated)"
            ))
        })?;
        self.hasher.update(&*buf);
        Ok(())
    }

    /// The next verified record with its stored bytes, or `None` after the
    /// end frame, once the trailer, count and head hash have been checked.
    pub fn next_record(&mut self) -> Result<Option<(RecordedEvent, Vec<u8>)>> {
        if self.finished {
            return Ok(None);
        }
        let seq = self.checker.next_seq();
        let mut len = [0u8; 4];
        self.read_exact_hashed(&mut len, "frame length")?;
        let len = u32::from_le_bytes(len);
        if len == 0 {
            self.finish()?;
            return Ok(None);
        }
        if seq > self.header.events {
            return Err(refused(format!(
                "seq {seq}: more events than the header's {}",
                self.header.events
            )));
        }
        if len > MAX_FRAME {
            return Err(refused(format!(
                "seq {seq}: frame length {len} is implausible"
            )));
        }
        // Grow with the data actually present, so a forged length can't
        // make the reader allocate more than the file holds.
        let mut bytes = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut bytes)
            .map_err(|e| refused(format!("seq {seq}: {e}")))?;
        if bytes.len() != len as usize {
            return Err(refused(format!(
                "seq {seq}: file ends inside the record (truncated)"
            )));
        }
        self.hasher.update(&bytes);
        let rec = self
            .checker
            .check_full(seq, &bytes)
            .map_err(|v| refused(v.to_string()))?;
        Ok(Some((rec, bytes)))
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(v) = self.checker.finish(None) {
            return Err(refused(v.to_string()));
        }
        let seq = self.checker.next_seq();
        let count = seq - 1;
        if count != self.header.events {
            return Err(refused(format!(
                "seq {seq}: file holds {count} events but its header says {} (truncated)",
                self.header.events
            )));
        }
        if self.checker.last_hash() != self.header.head_hash {
            return Err(refused(format!(
                "seq {count}: last hash differs from the header's head hash"
            )));
        }
        let expected: [u8; 32] = self.hasher.clone().finalize().into();
        let mut trailer = [0u8; 32];
        self.input
            .read_exact(&mut trailer)
            .map_err(|_| refused("file digest missing (truncated after the last event)"))?;
        if trailer != expected {
            return Err(refused(
                "file digest mismatch (bytes outside the events were altered)",
            ));
        }
        let mut extra = [0u8; 1];
        if self
            .input
            .read(&mut extra)
            .map_err(|e| refused(e.to_string()))?
            != 0
        {
            return Err(refused("trailing bytes after the file digest"));
        }
        self.finished = true;
        Ok(())
    }
}

/// Verifies a whole export file without importing it: every record, the
/// chain, every signature and authorization, and the file digest. With
/// `trusted_root`, a history under another root key is refused.
pub fn verify_export(path: &Path, trusted_root: Option<&str>) -> Result<ExportSummary> {
    let file = File::open(path).map_err(|source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = ExportReader::new(file, trusted_root)?;
    while reader.next_record()?.is_some() {}
    Ok(ExportSummary {
        events: reader.header.events,
        head_hash: reader.header.head_hash,
        root: reader.root().map(str::to_string),
        file_sha256: Sha256Digest(reader.hasher.finalize().into()),
    })
}

impl Ledger {
    /// Imports an export file into this (empty) ledger. The file is verified
    /// completely before anything is written (see [`verify_export`]); a
    /// flawed file, or with `trusted_root` one under another root key, is
    /// refused, naming the seq, and the ledger stays empty.
    pub fn import(&self, path: &Path, trusted_root: Option<&str>) -> Result<ExportSummary> {
        if self.head().seq != 0 {
            return Err(refused(format!(
                "the ledger already holds {} events; import needs an empty home",
                self.head().seq
            )));
        }
        let summary = verify_export(path, trusted_root)?;
        let file = File::open(path).map_err(|source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = ExportReader::new(file, trusted_root)?;
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        while let Some(item) = reader.next_record()? {
            batch.push(item);
            if batch.len() == IMPORT_BATCH {
                self.append_verbatim(&batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.append_verbatim(&batch)?;
        }
        Ok(summary)
    }
}

impl Ledger {
    /// Appends records copied from another ledger (a replica following a
    /// remote one), each checked in full first: the next seq, its hash, its
    /// link to this ledger's head, its stream version, its batch's signature
    /// and its signer's authorization against this ledger's registry. Only
    /// whole batches are stored: the records of a batch cut off at the end
    /// of `records` are left for the next call. Nothing is written unless
    /// everything stored passed. Returns how many records were stored.
    pub fn replicate(&self, records: &[Vec<u8>]) -> Result<usize> {
        let head = self.head();
        let mut checker = ChainVerifier::resume(head, self.registry());
        let mut seeded = std::collections::HashSet::new();
        let mut batch = Vec::with_capacity(records.len());
        let mut whole = 0;
        for (i, bytes) in records.iter().enumerate() {
            let at = head.seq + 1 + i as u64;
            let bad = |reason: String| LedgerError::Corrupt {
                seq: at,
                reason: format!("not replicated: {reason}"),
            };
            let rec = RecordedEvent::decode(bytes).map_err(|e| bad(e.to_string()))?;
            if seeded.insert(rec.stream.clone()) {
                checker.seed_version(&rec.stream, self.stream_version(&rec.stream)?);
            }
            checker.check(at, bytes).map_err(|v| {
                let hint = match v.kind {
                    crate::ViolationKind::ChainBroken if v.seq == head.seq + 1 => {
                        ": this is a replica of another ledger"
                    }
                    _ => "",
                };
                LedgerError::Corrupt {
                    seq: v.seq,
                    reason: format!("not replicated: {v}{hint}"),
                }
            })?;
            batch.push((rec, bytes.clone()));
            if checker.at_batch_boundary() {
                whole = batch.len();
            }
        }
        batch.truncate(whole);
        if !batch.is_empty() {
            self.append_verbatim(&batch)?;
        }
        Ok(whole)
    }
}
