//! The canonical encoding of view entries (MessagePack maps with field
//! names, maps sorted by key) and the per-view digests built on it.

use crate::{ProjectionError, Result, State, ViewKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Encodes one view entry canonically. Every map in a view is a `BTreeMap`,
/// so the same value always gives the same bytes.
pub fn encode_entry<T: Serialize>(kind: ViewKind, key: &str, v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| ProjectionError::Encode {
        view: kind.as_str(),
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes one stored view entry.
pub(crate) fn decode_entry<T: DeserializeOwned>(
    kind: ViewKind,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| ProjectionError::Decode {
        view: kind.as_str(),
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// The digest of one view: sha256 over its entries in key order, each as
/// `u32 BE key length ‖ key ‖ u32 BE value length ‖ value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDigest {
    /// The view's name.
    pub view: String,
    /// Number of entries.
    pub entries: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// Accumulates a [`ViewDigest`] from entries given in key order.
pub(crate) struct Digester {
    kind: ViewKind,
    h: Sha256,
    n: u64,
}

impl Digester {
    pub(crate) fn new(kind: ViewKind) -> Self {
        Digester {
            kind,
            h: Sha256::new(),
            n: 0,
        }
    }

    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        self.h.update((key.len() as u32).to_be_bytes());
        self.h.update(key);
        self.h.update((value.len() as u32).to_be_bytes());
        self.h.update(value);
        self.n += 1;
    }

    pub(crate) fn finish(self) -> ViewDigest {
        ViewDigest {
            view: self.kind.as_str().to_string(),
            entries: self.n,
            sha256: hex::encode(self.h.finalize()),
        }
    }
}

fn each<T: Serialize>(
    kind: ViewKind,
    map: &std::collections::BTreeMap<String, T>,
    f: &mut dyn FnMut(&str, Vec<u8>) -> Result<()>,
) -> Result<()> {
    for (k, v) in map {
        f(k, encode_entry(kind, k, v)?)?;
    }
    Ok(())
}

fn one<T: Serialize>(
    kind: ViewKind,
    map: &std::collections::BTreeMap<String, T>,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    map.get(key).map(|v| encode_entry(kind, key, v)).transpose()
}

impl State {
    /// Calls `f` with every entry of one view, encoded, in key order.
    pub fn for_each_entry(
        &self,
        kind: ViewKind,
        f: &mut dyn FnMut(&str, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        match kind {
            ViewKind::Recipes => each(kind, &self.recipes, f),
            ViewKind::Datasets => each(kind, &self.datasets, f),
            ViewKind::Models => each(kind, &self.models, f),
            ViewKind::Runs => each(kind, &self.runs, f),
            ViewKind::Checkpoints => each(kind, &self.checkpoints, f),
            ViewKind::Evals => each(kind, &self.evals, f),
            ViewKind::Channels => each(kind, &self.channels, f),
            ViewKind::Lineage => each(kind, &self.lineage, f),
            ViewKind::Evidence => each(kind, &self.evidence, f),
        }
    }

    /// Number of entries in one view.
    pub fn entry_count(&self, kind: ViewKind) -> usize {
        match kind {
            ViewKind::Recipes => self.recipes.len(),
            ViewKind::Datasets => self.datasets.len(),
            ViewKind::Models => self.models.len(),
            ViewKind::Runs => self.runs.len(),
            ViewKind::Checkpoints => self.checkpoints.len(),
            ViewKind::Evals => self.evals.len(),
            ViewKind::Channels => self.channels.len(),
            ViewKind::Lineage => self.lineage.len(),
            ViewKind::Evidence => self.evidence.len(),
        }
    }

    /// One entry, encoded, if present.
    pub fn encoded(&self, kind: ViewKind, key: &str) -> Result<Option<Vec<u8>>> {
        match kind {
            ViewKind::Recipes => one(kind, &self.recipes, key),
            ViewKind::Datasets => one(kind, &self.datasets, key),
            ViewKind::Models => one(kind, &self.models, key),
            ViewKind::Runs => one(kind, &self.runs, key),
            ViewKind::Checkpoints => one(kind, &self.checkpoints, key),
            ViewKind::Evals => one(kind, &self.evals, key),
            ViewKind::Channels => one(kind, &self.channels, key),
            ViewKind::Lineage => one(kind, &self.lineage, key),
            ViewKind::Evidence => one(kind, &self.evidence, key),
        }
    }

    /// Decodes a stored entry into this state (used when loading a store).
    pub(crate) fn insert_encoded(&mut self, kind: ViewKind, key: &str, bytes: &[u8]) -> Result<()> {
        let k = key.to_string();
        match kind {
            ViewKind::Recipes => {
                self.recipes.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Datasets => {
                self.datasets.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Models => {
                self.models.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Runs => {
                self.runs.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Checkpoints => {
                self.checkpoints.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Evals => {
                self.evals.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Channels => {
                self.channels.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Lineage => {
                self.lineage.insert(k, decode_entry(kind, key, bytes)?);
            }
            ViewKind::Evidence => {
                self.evidence.insert(k, decode_entry(kind, key, bytes)?);
            }
        }
        Ok(())
    }
}

/// The digest of every view of an in-memory state, in [`ViewKind::ALL`]
/// order. Equal to [`crate::ViewStore::digests`] of a store holding it.
pub fn digests(state: &State) -> Result<Vec<ViewDigest>> {
    ViewKind::ALL
        .iter()
        .map(|&kind| {
            let mut d = Digester::new(kind);
            state.for_each_entry(kind, &mut |k, v| {
                d.add(k.as_bytes(), &v);
                Ok(())
            })?;
            Ok(d.finish())
        })
        .collect()
}
