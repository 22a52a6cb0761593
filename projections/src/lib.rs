//! Foundry's projections: pure folds of the ledger into views that people
//! and programs query — recipes, datasets, base models, runs, checkpoints
//! (adapters), evals, channels, the lineage graph and the evidence index.
//!
//! * [`State::apply`] is the fold: one event in, changed views out. No I/O.
//! * [`ViewStore`] persists the views in sled trees under `home/views`,
//!   together with the last applied seq, and catches up incrementally.
//! * [`ViewStore::rebuild`] replays from seq 0; [`digests`] hash each view's
//!   canonical encoding so that rebuild and catch-up can be compared.
//! * [`fold_until`] gives the views as they were at any seq or time.
//! * [`lineage`] draws where an adapter came from.
//! * `histories` (feature `testkit`, tests, benchmarks and examples only)
//!   appends plausible seeded histories to a ledger.

#![warn(missing_docs)]

mod codec;
mod decode;
mod error;
#[cfg(any(test, feature = "testkit"))]
pub mod histories;
pub mod lineage;
mod read;
mod state;
mod store;
mod travel;
mod views;

pub use codec::{digests, encode_entry, ViewDigest};
pub use error::{ProjectionError, Result};
pub use read::{resolve, resolve_any, ViewRead};
pub use state::{format_metrics, State};
pub use store::{CatchUp, ViewStore};
pub use travel::{fold_until, Bound};
pub use views::*;

/// Version of the stored view encoding. A store written with another version
/// is rebuilt from the ledger on open.
pub const VIEW_FORMAT: u64 = 1;

#[cfg(test)]
mod tests;
