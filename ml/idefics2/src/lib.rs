//! Idefics2 in candle, numerically matched to transformers' `modeling_idefics2.py`.
//!
//! * [`model::Idefics2`]: SigLIP-style vision encoder, connector (modality projection +
//!   perceiver resampler) and Mistral decoder with a KV cache.
//! * [`linear`]: the one linear seam (dense or frozen base weight, optional LoRA),
//!   with full module names and a visitor for PEFT-style targeting.
//! * The numerically delicate ops (norms, attention, rope, activations, the frozen and QLoRA
//!   linears) come from `foundry_kernels`: its `ops` dispatch to fused CPU kernels with an
//!   analytic backward, or to candle's composed ops on other devices.
//! * [`processor`]: the Idefics2 image processor (PIL-exact bilinear resize), the chat
//!   prompt format and tokenization.
//! * [`hub`]: resolving a model from a local directory or the Hugging Face hub cache.
//! * [`generate`]: greedy and sampled generation.

#![warn(missing_docs)]

pub mod config;
pub mod connector;
pub mod error;
pub mod generate;
pub mod hub;
pub mod layers;
pub mod linear;
pub mod model;
pub mod processor;
pub mod text;
pub mod vision;
pub mod weights;

pub use config::Idefics2Config;
pub use error::{Error, Result};
pub use generate::GenerationConfig;
pub use linear::{LinearVisitor, LoraAdapter, SeamLinear};
pub use model::Idefics2;
