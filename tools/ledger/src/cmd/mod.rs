//! One module per command group.

pub mod bench;
pub mod dataset;
pub mod infer;
pub mod init;
pub mod lineage;
pub mod log;
pub mod model;
pub mod recipe;
pub mod replay;
pub mod runs;
pub mod show;
pub mod stats;
pub mod synth;
pub mod transfer;
pub mod travel;
pub mod verify;
