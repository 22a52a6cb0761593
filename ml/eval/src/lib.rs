//! The evaluation harness of Foundry: scores a vision-language model's JSON extractions.
//!
//! * [`normalize`]: numbers, currency amounts, dates and strings to canonical forms.
//! * [`score`]: one document: JSON parsing (bad output is scored, never a panic),
//!   field comparison, one-to-one table-row matching, ANLS.
//! * [`metrics`]: micro-averaged metrics per slice (`doc_type=…`, `layout=…`) with seeded
//!   percentile-bootstrap 95% intervals, and the [`metrics::EvalReport`].
//! * [`spec`]: the [`spec::EvalSpec`] and its stable sha256.
//! * [`driver`]: greedy Idefics2 inference (optionally with a PEFT adapter) over examples.
//! * [`event`]: the report as an `EvalScored` event.
//!
//! Metric definitions and normalization rules are in the crate README.

#![warn(missing_docs)]

pub mod driver;
pub mod error;
pub mod event;
pub mod metrics;
pub mod normalize;
pub mod score;
pub mod spec;

pub use driver::{EvalExample, ModelUnderTest};
pub use error::{EvalError, Result};
pub use event::EvalIdentity;
pub use metrics::{score, DocResult, EvalReport, Prediction};
pub use spec::EvalSpec;
