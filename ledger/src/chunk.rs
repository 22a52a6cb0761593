//! A chunk: the records of one append, framed as `(u32 LE length, bytes)*`.

use crate::{LedgerError, Result};

/// Frames records into one chunk value.
pub(crate) fn encode<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Walks the records of a chunk whose first record sits at `first_seq`.
/// A damaged frame yields an error naming the seq at its position.
pub(crate) struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    seq: u64,
    failed: bool,
}

impl<'a> Frames<'a> {
    pub(crate) fn new(first_seq: u64, bytes: &'a [u8]) -> Self {
        Frames {
            bytes,
            pos: 0,
            seq: first_seq,
            failed: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(u64, &'a [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let seq = self.seq;
        let rest = &self.bytes[self.pos..];
        let frame = (|| {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            rest.get(4..4 + len)
        })();
        match frame {
            Some(rec) => {
                self.pos += 4 + rec.len();
                self.seq += 1;
                Some(Ok((seq, rec)))
            }
            None => {
                self.failed = true;
                Some(Err(LedgerError::Corrupt {
                    seq,
                    reason: "undecodable record (damaged frame length)".into(),
                }))
            }
        }
    }
}
