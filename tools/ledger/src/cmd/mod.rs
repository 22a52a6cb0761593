//! One module per command group.

pub mod adapter;
pub mod bench;
pub mod container;
pub mod dataset;
pub mod embedded;
pub mod eval;
pub mod infer;
pub mod init;
pub mod lineage;
pub mod log;
pub mod model;
pub mod promote;
pub mod recipe;
pub mod remote;
pub mod replay;
pub mod report;
pub mod run;
pub mod runs;
pub mod serve;
pub mod show;
pub mod stats;
pub mod synth;
pub mod transfer;
pub mod travel;
pub mod up;
pub mod verify;
