//! One module per command group.

pub mod bench;
pub mod init;
pub mod log;
pub mod stats;
pub mod transfer;
pub mod verify;
