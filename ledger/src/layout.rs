//! Key layout of the single sled tree. Everything one append writes lives in
//! one tree so that one `apply_batch` makes the whole append atomic.
//!
//!
//! sled 0.34 copies a leaf node on every insert, so per-event keys cap
//! appends near 10k events/s. Each append therefore writes one *chunk* of
//! records and one index entry per stream and per type it touches:
//!
//! | prefix | key                                | value                              |
//! |--------|------------------------------------|------------------------------------|
//! | `e`    | first seq of the batch (u64 BE)    | chunk: (u32 LE length, record)*    |
//! | `s`    | stream ‖ 0x00 ‖ first version (BE) | seqs of those versions (u64 BE)*   |
//! | `v`    | stream                             | current version (u64 BE)           |
//! | `t`    | type ‖ 0x00 ‖ first seq (BE)       | seqs of that type (u64 BE)*        |
//! | `k`    | idempotency key                    | first seq, count (u64 BE×2)        |
//! | `p`    | (none)                             | last seq published to NATS (u64 BE)|
//! | `h`    | (none)                             | head: seq, hash, time              |

pub(crate) const EVENT: u8 = b'e';
pub(crate) const STREAM: u8 = b's';
pub(crate) const VERSION: u8 = b'v';
pub(crate) const TYPE: u8 = b't';
pub(crate) const IDEMPOTENCY: u8 = b'k';
pub(crate) const PUBLISHED: &[u8] = b"p";
pub(crate) const HEAD: &[u8] = b"h";

pub(crate) fn event(seq: u64) -> [u8; 9] {
    let mut k = [EVENT; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a list of big-endian u64s.
pub(crate) fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
}

pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 2);
    k.push(STREAM);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k
}

pub(crate) fn stream_entry(stream: &str, version: u64) -> Vec<u8> {
    let mut k = stream_prefix(stream);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn version(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 1);
    k.push(VERSION);
    k.extend_from_slice(stream.as_bytes());
    k
}

pub(crate) fn type_prefix(ty: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ty.len() + 2);
    k.push(TYPE);
    k.extend_from_slice(ty.as_bytes());
    k.push(0);
    k
}

pub(crate) fn type_entry(ty: &str, seq: u64) -> Vec<u8> {
    let mut k = type_prefix(ty);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn idempotency(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(IDEMPOTENCY);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Reads a big-endian u64 from the last 8 bytes of a key or value.
pub(crate) fn tail_u64(bytes: &[u8]) -> Option<u64> {
    let n = bytes.len();
    if n < 8 {
        return None;
    }
    bytes[n - 8..].try_into().ok().map(u64::from_be_bytes)
}

/// The head record: last seq, its hash and its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last appended seq (0 for an empty ledger).
    pub seq: u64,
    /// Hash of that event (zero for an empty ledger).
    pub hash: foundry_events::Sha256Digest,
    /// Its recorded_at (nanoseconds).
    pub recorded_at: i64,
}

impl Head {
    pub(crate) fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..40].copy_from_slice(&self.hash.0);
        out[40..].copy_from_slice(&self.recorded_at.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Head> {
        if bytes.len() != 48 {
            return None;
        }
        Some(Head {
            seq: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            hash: foundry_events::Sha256Digest(bytes[8..40].try_into().ok()?),
            recorded_at: i64::from_be_bytes(bytes[40..].try_into().ok()?),
        })
    }
}
