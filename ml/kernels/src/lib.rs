//! The CPU kernels below the model: what makes a QLoRA step fast on a CPU, with no model in it.
//!
//! candle 0.11's fused CPU ops (softmax, RMS/layer norm, rope) have no backward, and its matmul
//! cannot accumulate into a buffer or multiply in bf16. This crate holds the replacements, each a
//! candle `CustomOp` whose forward is a row-parallel loop over contiguous f32 data and whose
//! backward is another loop (no autograd graph for the backward):
//!
//! * by family: [`norm`], [`attention`] (softmax, eager attention probabilities, rope, one fused
//!   multi-head attention), [`linear`] (frozen linear, fused QLoRA linear), [`activation`]
//!   (SwiGLU, GELU) and [`loss`] (cross-entropy);
//! * what they are built from: the bf16 GEMM ([`bf16gemm`], AVX512-BF16 / AMX), the LoRA adapter's
//!   rank-r loops ([`adapter`]), vector math ([`vmath`]) and one CPU feature probe ([`cpu`]);
//! * the base weight of a linear, in one enum ([`BaseWeight`]: dense, or a compact
//!   [`FrozenWeight`] such as NF4 decoded panel by panel) and the precision of its products
//!   ([`Products`]);
//! * [`ops`]: the device dispatch the model calls: the fused kernel on the CPU in f32, candle's
//!   composed differentiable ops on any other device or dtype.
//!
//! It knows nothing about Idefics2, LoRA targeting or training: the model crate builds on it.

#![warn(missing_docs)]

pub mod activation;
pub mod adapter;
pub mod attention;
pub mod bf16gemm;
pub mod cpu;
mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod ops;
mod slices;
pub mod timing;
pub mod vmath;
pub mod weight;

pub use attention::AttentionShape;
pub use weight::{BaseWeight, FrozenWeight, Products};
