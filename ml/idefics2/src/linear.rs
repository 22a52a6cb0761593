//! The linear seam: every `nn.Linear` of the model is a [`SeamLinear`].
//!
//! A seam linear has a base weight, either a plain dense tensor or a frozen
//! (e.g. NF4-quantized) weight that is dequantized inside the forward pass, an
//! optional bias, and optionally a LoRA adapter. Each seam linear knows its full
//! module path with transformers' names (for example
//! `model.text_model.layers.0.self_attn.q_proj`), so that a PEFT-style regex can
//! select the targets through [`LinearVisitor`].

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};

use foundry_kernels::{BaseWeight, Products};

/// A LoRA adapter: `y += scale * B(A(dropout(x)))`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `lora_A`, shape `[r, in]`.
    pub a: Tensor,
    /// `lora_B`, shape `[out, r]`.
    pub b: Tensor,
    /// `lora_alpha / r` (or `lora_alpha / sqrt(r)` for rsLoRA).
    pub scale: f64,
    /// Dropout probability applied to the adapter input while training.
    pub dropout: f32,
    /// Whether dropout is active.
    pub training: bool,
    /// The random source of the dropout masks while training. `None` uses candle's
    /// unseeded generator; a shared seeded generator makes training deterministic.
    pub rng: Option<DropoutRng>,
}

/// A shared, seedable random generator for LoRA dropout masks (reseeded by the trainer at every
/// micro-step so that a run, and a resumed run, draw identical masks).
pub type DropoutRng = Arc<std::sync::Mutex<rand::rngs::StdRng>>;

/// Inverted dropout with a mask drawn from `rng`: keeps each value with probability `1 - p` and
/// scales it by `1 / (1 - p)`.
pub fn seeded_dropout(x: &Tensor, p: f32, rng: &DropoutRng) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability has to be in [0, 1), got {p}");
    }
    let mask = dropout_mask(x.elem_count(), p, rng)?;
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// `n` inverted-dropout factors drawn from `rng`: `1 / (1 - p)` with probability `1 - p`, else 0.
fn dropout_mask(n: usize, p: f32, rng: &DropoutRng) -> Result<Vec<f32>> {
    use rand::Rng;
    let scale = 1.0 / (1.0 - p);
    let mut g = rng
        .lock()
        .map_err(|_| candle_core::Error::Msg("dropout rng poisoned".into()))?;
    Ok((0..n)
        .map(|_| if g.gen::<f32>() >= p { scale } else { 0.0 })
        .collect())
}

impl LoraAdapter {
    /// Whether the fused CPU kernel ([`foundry_kernels::linear::lora_linear`]) computes this adapter
    /// with its base: f32 on the CPU, a base weight that is not trained, and dropout (if any)
    /// drawn from the seeded generator.
    fn fuses_with(&self, x: &Tensor, base: &BaseWeight) -> bool {
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let frozen_base = match base {
            BaseWeight::Dense(w) => !w.track_op(),
            BaseWeight::Frozen(_) => true,
        };
        let dropout_ok = !(self.training && self.dropout > 0.0) || self.rng.is_some();
        f32_cpu(x) && f32_cpu(&self.a) && f32_cpu(&self.b) && frozen_base && dropout_ok
    }

    /// The delta `scale * B(A(dropout(x)))` for a 2-D input `[n, in]`.
    fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.training && self.dropout > 0.0 {
            match &self.rng {
                Some(rng) => seeded_dropout(x, self.dropout, rng)?,
                None => candle_nn::ops::dropout(x, self.dropout)?,
            }
        } else {
            x.clone()
        };
        let h = foundry_kernels::ops::matmul(&x, &self.a.t()?)?;
        let y = foundry_kernels::ops::matmul(&h, &self.b.t()?)?;
        y.affine(self.scale, 0.0)
    }
}

/// The one linear layer type of the model.
#[derive(Debug, Clone)]
pub struct SeamLinear {
    name: String,
    base: BaseWeight,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
    products: Products,
}

impl SeamLinear {
    /// A linear layer named `name` (full module path) over `base`, with an optional bias.
    pub fn new(name: impl Into<String>, base: BaseWeight, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            base,
            bias,
            lora: None,
            products: Products::F32,
        }
    }

    /// The precision of the products with the base weight on the CPU ([`Products`]):
    /// bf16 needs AVX512-BF16 and is refused without it.
    pub fn set_products(&mut self, products: Products) -> Result<()> {
        if let Err(why) = products.check_supported() {
            candle_core::bail!("{}: {why}", self.name);
        }
        self.products = products;
        Ok(())
    }

    /// The precision of the products with the base weight.
    pub fn products(&self) -> Products {
        self.products
    }

    /// The full module path, e.g. `model.text_model.layers.0.self_attn.q_proj`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base weight.
    pub fn base(&self) -> &BaseWeight {
        &self.base
    }

    /// Replaces the base weight (e.g. with a quantized one); the shape must match.
    pub fn set_base(&mut self, base: BaseWeight) -> Result<()> {
        if base.shape() != self.base.shape() {
            candle_core::bail!(
                "{}: new base weight shape {:?} differs from {:?}",
                self.name,
                base.shape(),
                self.base.shape()
            );
        }
        self.base = base;
        Ok(())
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        self.base.shape()
    }

    /// The attached LoRA adapter, if any.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Mutable access to the attached LoRA adapter, if any.
    pub fn lora_mut(&mut self) -> Option<&mut LoraAdapter> {
        self.lora.as_mut()
    }

    /// Attaches a LoRA adapter, checking `A: [r, in]` and `B: [out, r]`.
    pub fn attach_lora(&mut self, lora: LoraAdapter) -> Result<()> {
        let (out, inp) = self.shape();
        let (ad, bd) = (lora.a.dims(), lora.b.dims());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != inp || bd[0] != out || ad[0] != bd[1] {
            candle_core::bail!(
                "{}: LoRA shapes A {:?} / B {:?} do not fit a [{out}, {inp}] linear",
                self.name,
                ad,
                bd
            );
        }
        self.lora = Some(lora);
        Ok(())
    }

    /// Detaches and returns the LoRA adapter.
    pub fn detach_lora(&mut self) -> Option<LoraAdapter> {
        self.lora.take()
    }

    /// The dense base weight in `dtype` (dequantizing a frozen one).
    pub fn dense_weight(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        match &self.base {
            BaseWeight::Dense(w) => w.to_dtype(dtype),
            BaseWeight::Frozen(f) => f.dequantize(dtype, device),
        }
    }
}

impl Module for SeamLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let src = self.base.clone();
        let products = self.products;
        match &self.lora {
            // The fused ops take `[.., in]` as is: no reshape nodes in the autograd graph.
            Some(l) if l.fuses_with(x, &src) && dims.len() >= 2 => {
                let mask = match (&l.rng, l.training && l.dropout > 0.0) {
                    (Some(rng), true) => Some(dropout_mask(x.elem_count(), l.dropout, rng)?),
                    _ => None,
                };
                let y = foundry_kernels::linear::lora_linear(
                    x, &l.a, &l.b, src, l.scale, mask, products,
                )?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Some(l) => {
                let inp = dims.last().copied().unwrap_or(0);
                let x2 = x.reshape((x.elem_count() / inp.max(1), inp))?;
                let y =
                    (foundry_kernels::ops::frozen_linear(&x2, src, self.bias.as_ref(), products)?
                        + l.delta(&x2)?)?;
                reshape_out(y, dims)
            }
            None => foundry_kernels::ops::frozen_linear(x, src, self.bias.as_ref(), products),
        }
    }
}

/// `y` `[rows, out]` back to the input's leading dims with `out` last.
fn reshape_out(y: Tensor, mut dims: Vec<usize>) -> Result<Tensor> {
    let last = dims.len().saturating_sub(1);
    match dims.get_mut(last) {
        Some(d) => *d = y.dim(1)?,
        None => candle_core::bail!("linear: a 0-d input"),
    }
    y.reshape(dims)
}

/// A visitor over all the seam linears of a model, with their full names.
pub trait LinearVisitor {
    /// Visits every linear of `self` in a fixed order.
    fn visit_linears(&mut self, f: &mut dyn FnMut(&mut SeamLinear) -> Result<()>) -> Result<()>;

    /// The names of all linears, in visiting order.
    fn linear_names(&mut self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        self.visit_linears(&mut |l| {
            names.push(l.name().to_string());
            Ok(())
        })?;
        Ok(names)
    }

    /// Applies `f` to every linear whose full name matches `pattern` as PEFT does
    /// with a string `target_modules` (`re.fullmatch`). Returns how many matched.
    fn for_each_matching(
        &mut self,
        pattern: &str,
        f: &mut dyn FnMut(&mut SeamLinear) -> Result<()>,
    ) -> Result<usize> {
        let re = full_match_regex(pattern)?;
        let mut n = 0;
        self.visit_linears(&mut |l| {
            if re.is_match(l.name()) {
                n += 1;
                f(l)?;
            }
            Ok(())
        })?;
        Ok(n)
    }
}

/// Compiles `pattern` anchored at both ends, i.e. Python's `re.fullmatch` semantics.
pub fn full_match_regex(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| candle_core::Error::Msg(format!("invalid target regex `{pattern}`: {e}")))
}
