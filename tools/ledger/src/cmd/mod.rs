//! One module per command group.

pub mod bench;
pub mod infer;
pub mod init;
pub mod lineage;
pub mod log;
pub mod replay;
pub mod report;
pub mod runs;
pub mod show;
pub mod stats;
pub mod transfer;
pub mod travel;
pub mod verify;
