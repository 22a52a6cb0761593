//! Idefics2 in candle, numerically matched to transformers' `modeling_idefics2.py`.
//!
//! * [`model::Idefics2`]: SigLIP-style vision encoder, connector (modality projection +
//!   perceiver resampler) and Mistral decoder with a KV cache.
//! * [`linear`]: the one linear seam (dense or frozen base weight, optional LoRA),
//!   with full module names and a visitor for PEFT-style targeting.
//! * [`ops`]: the numerically delicate, differentiable ops in one place, backed by the
//!   [`kernels`] (fast CPU custom ops with an analytic backward).
//! * [`processor`]: the Idefics2 image processor (PIL-exact bilinear resize), the chat
//!   prompt format and tokenization.
//! * [`hub`]: resolving a model from a local directory or the Hugging Face hub cache.
//! * [`generate`]: greedy and sampled generation.

#![warn(missing_docs)]

pub mod adapter;
pub mod bf16gemm;
pub mod config;
pub mod connector;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod hub;
pub mod kernels;
pub mod layers;
pub mod linear;
pub mod model;
pub mod ops;
pub mod processor;
pub mod text;
pub mod vision;
pub mod vmath;
pub mod weights;

pub use config::Idefics2Config;
pub use error::{Error, Result};
pub use generate::GenerationConfig;
pub use linear::{BaseWeight, FrozenWeight, LinearVisitor, LoraAdapter, SeamLinear};
pub use model::Idefics2;
