//! A real nats-server started by the test (free port, JetStream in a
//! temporary directory, optional user/password), and the small but real
//! line-fitting executor of the runner framework's own tests
//! (`foundry_runner::testkit`).

#![allow(dead_code)]

mod nats;
pub use nats::NatsServer;

#[allow(unused_imports)]
pub use foundry_runner::testkit::{request_run, LineEngine, LineEval, TestKeys};
