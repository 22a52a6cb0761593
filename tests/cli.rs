//! End-to-end tests of the `ledger` binary: one test binary, one module
//! per area. Each module runs the real binary (`CARGO_BIN_EXE_ledger`)
//! against real homes, a real nats-server and real training on the tiny
//! fixtures; `common` holds what they share.

mod common;

mod cli_adapter;
mod cli_hostile;
mod cli_infer;
mod cli_ledger;
mod cli_modal;
mod cli_recipes;
mod cli_remote;
mod cli_report;
mod cli_runs;
mod cli_serve;
mod cli_trust;
mod cli_views;
mod crash;
