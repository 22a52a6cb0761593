//! LoRA adapters as PEFT makes them: configuration, initialization, attachment to the model's
//! linear seam by a PEFT-style regex, and the PEFT on-disk layout (`adapter_model.safetensors`
//! with `base_model.model.<module>.lora_{A,B}.weight` keys and `adapter_config.json`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use foundry_idefics2::linear::{DropoutRng, LinearVisitor, LoraAdapter};
use foundry_kernels::BaseWeight;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The adapter weights file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The PEFT key prefix of a module (`base_model.model.` + module path).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// How LoRA weights are initialized (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoraInit {
    /// `true`: A kaiming-uniform (a = √5, i.e. U(−1/√in, 1/√in)), B zero.
    Kaiming,
    /// `"gaussian"`: A normal with std 1/r, B zero.
    Gaussian,
}

/// A LoRA configuration with PEFT's meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter input.
    pub lora_dropout: f32,
    /// Target modules: a regex matched against full module names (`re.fullmatch`).
    pub target_modules: String,
    /// Initialization.
    pub init: LoraInit,
    /// rsLoRA: scale by alpha / √r instead of alpha / r.
    pub use_rslora: bool,
    /// `base_model_name_or_path` written into adapter_config.json.
    pub base_model_name_or_path: Option<String>,
    /// `revision` written into adapter_config.json.
    pub revision: Option<String>,
}

impl LoraConfig {
    /// The scale applied to `B(A(x))`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Lora("r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Lora(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            )));
        }
        foundry_idefics2::linear::full_match_regex(&self.target_modules)
            .map_err(|e| Error::Lora(e.to_string()))?;
        Ok(())
    }

    /// adapter_config.json as PEFT 0.21 writes it for this configuration.
    pub fn to_peft_json(&self) -> serde_json::Value {
        serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": {
                "base_model_class": "Idefics2ForConditionalGeneration",
                "parent_library": "transformers.models.idefics2.modeling_idefics2"
            },
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": match self.init {
                LoraInit::Kaiming => serde_json::Value::Bool(true),
                LoraInit::Gaussian => serde_json::Value::String("gaussian".into()),
            },
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": self.revision,
            "target_modules": self.target_modules,
            "task_type": null,
            "use_dora": false,
            "use_rslora": self.use_rslora
        })
    }

    /// Reads a PEFT adapter_config.json. Options Foundry does not implement (DoRA, LoRA biases,
    /// fan-in-fan-out, layer replication, trainable tokens, excluded modules, target
    /// parameters, QALoRA, aLoRA, …) are errors naming the key.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<Self> {
        let bad = |m: &str| Error::Lora(format!("adapter_config.json: {m}"));
        if v.get("peft_type").and_then(|x| x.as_str()) != Some("LORA") {
            return Err(bad("peft_type is not LORA"));
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("missing r"))? as usize;
        let lora_alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("missing lora_alpha"))?;
        let lora_dropout = v
            .get("lora_dropout")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0) as f32;
        let target_modules = match v.get("target_modules") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // PEFT: a list matches a module whose name equals an entry or ends with `.entry`.
            Some(serde_json::Value::Array(a)) => {
                let names: Vec<String> = a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(regex_escape)
                            .ok_or_else(|| bad("bad target_modules"))
                    })
                    .collect::<Result<_>>()?;
                format!("(?:.*\\.)?(?:{})", names.join("|"))
            }
            _ => return Err(bad("target_modules must be a regex string or a list")),
        };
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        if flag("use_dora") {
            return Err(bad("use_dora is set: DoRA is not supported"));
        }
        if flag("fan_in_fan_out") {
            return Err(bad("fan_in_fan_out is not supported"));
        }
        if v.get("bias").and_then(|x| x.as_str()).unwrap_or("none") != "none" {
            return Err(bad("only bias = \"none\" is supported"));
        }
        // Options that change what the adapter computes and that Foundry does not implement:
        // refused by name rather than silently ignored. (rank_pattern, alpha_pattern,
        // layers_to_transform / layers_pattern and modules_to_save are honoured when loading:
        // see [`PeftOptions`].)
        for k in UNSUPPORTED_PEFT_KEYS {
            let set = match v.get(*k) {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(serde_json::Value::Array(a)) => !a.is_empty(),
                Some(serde_json::Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(bad(&format!("{k} is set, which Foundry does not support")));
            }
        }
        let init = match v.get("init_lora_weights") {
            Some(serde_json::Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            _ => LoraInit::Kaiming,
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let c = Self {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            init,
            use_rslora: flag("use_rslora"),
            base_model_name_or_path: s("base_model_name_or_path"),
            revision: s("revision"),
        };
        c.validate()?;
        Ok(c)
    }
}

/// adapter_config.json keys whose non-default value Foundry refuses (see
/// [`LoraConfig::from_peft_json`]).
const UNSUPPORTED_PEFT_KEYS: &[&str] = &[
    "layer_replication",
    "trainable_token_indices",
    "exclude_modules",
    "target_parameters",
    "use_qalora",
    "lora_bias",
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "megatron_config",
    "corda_config",
    "eva_config",
    "kasa_config",
    "lora_ga_config",
    "monteclora_config",
    "velora_config",
];

/// The PEFT options that decide which linears an adapter covers and with what rank and scale,
/// beyond [`LoraConfig`], honoured when an adapter is loaded (Foundry trains without them):
/// `layers_to_transform` / `layers_pattern`, `rank_pattern` / `alpha_pattern` (matched as
/// PEFT's `get_pattern_key` does, in the file's order) and `modules_to_save` (full copies of
/// modules, here linears, saved beside the adapter).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeftOptions {
    /// Only these layer indices get an adapter (None: every layer).
    pub layers_to_transform: Option<Vec<u64>>,
    /// The module names whose next component is the layer index (e.g. `layers`); empty: any.
    pub layers_pattern: Vec<String>,
    /// Per-module ranks: (PEFT key regex, r), in the file's order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas: (PEFT key regex, alpha), in the file's order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Modules whose weights the adapter replaces outright.
    pub modules_to_save: Vec<String>,
}

/// A JSON object's entries in the order of the text (serde_json's map is sorted).
#[derive(Default)]
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl PeftOptions {
    /// Reads them from adapter_config.json's text.
    pub fn from_peft_text(text: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            rank_pattern: Ordered,
            #[serde(default)]
            alpha_pattern: Ordered,
            #[serde(default)]
            layers_to_transform: Option<serde_json::Value>,
            #[serde(default)]
            layers_pattern: Option<serde_json::Value>,
            #[serde(default)]
            modules_to_save: Option<Vec<String>>,
        }
        let bad = |m: String| Error::Lora(format!("adapter_config.json: {m}"));
        let raw: Raw = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let rank_pattern = raw
            .rank_pattern
            .0
            .into_iter()
            .map(|(k, v)| match v.as_u64() {
                Some(r) if r > 0 => Ok((k, r as usize)),
                _ => Err(bad(format!(
                    "rank_pattern[{k:?}] is not a positive integer"
                ))),
            })
            .collect::<Result<_>>()?;
        let alpha_pattern = raw
            .alpha_pattern
            .0
            .into_iter()
            .map(|(k, v)| match v.as_f64() {
                Some(a) if a.is_finite() => Ok((k, a)),
                _ => Err(bad(format!("alpha_pattern[{k:?}] is not a number"))),
            })
            .collect::<Result<_>>()?;
        let layers_to_transform = match raw.layers_to_transform {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(vec![n
                .as_u64()
                .ok_or_else(|| bad("layers_to_transform is not a layer index".into()))?]),
            Some(serde_json::Value::Array(a)) if a.is_empty() => None,
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("layers_to_transform holds a non-index".into()))?,
            ),
            Some(other) => {
                return Err(bad(format!(
                    "layers_to_transform = {other} is not an index list"
                )))
            }
        };
        let layers_pattern = match raw.layers_pattern {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![s],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("layers_pattern holds a non-string".into()))?,
            Some(other) => return Err(bad(format!("layers_pattern = {other} is not a name"))),
        };
        Ok(PeftOptions {
            layers_to_transform,
            layers_pattern,
            rank_pattern,
            alpha_pattern,
            modules_to_save: raw.modules_to_save.unwrap_or_default(),
        })
    }

    /// Whether `name` (a module matched by `target_modules`) is in a layer the adapter covers,
    /// as PEFT's `check_target_module_exists` decides.
    fn covers_layer(&self, name: &str) -> Result<bool> {
        let Some(layers) = &self.layers_to_transform else {
            return Ok(true);
        };
        let patterns: Vec<String> = if self.layers_pattern.is_empty() {
            vec![r"^.*\.[^.]*\.(\d+)\.".into()]
        } else {
            self.layers_pattern
                .iter()
                .map(|p| format!(r"^.*\.{p}\.(\d+)\."))
                .collect()
        };
        for p in patterns {
            let re = regex::Regex::new(&p)
                .map_err(|e| Error::Lora(format!("layers_pattern {p:?}: {e}")))?;
            if let Some(c) = re.captures(name) {
                let index: u64 = c[1].parse().unwrap_or(u64::MAX);
                return Ok(layers.contains(&index));
            }
        }
        Ok(false)
    }

    /// The value of the first pattern key that matches `name` as PEFT's `get_pattern_key` does
    /// (`re.match(rf"(.*\.)?({key})$", name)`).
    fn pattern<'a, T>(keys: &'a [(String, T)], name: &str) -> Result<Option<&'a T>> {
        for (k, v) in keys {
            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .map_err(|e| Error::Lora(format!("pattern key {k:?}: {e}")))?;
            if re.is_match(name) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Whether `name` is one of `modules_to_save` (its name or a dotted suffix of it).
    fn saves(&self, name: &str) -> bool {
        self.modules_to_save
            .iter()
            .any(|m| name == m || name.ends_with(&format!(".{m}")))
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// One adapted linear: its module name and its trainable A and B.
#[derive(Debug, Clone)]
pub struct LoraParam {
    /// Full module path, e.g. `model.text_model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// `lora_A`, `[r, in]`.
    pub a: Var,
    /// `lora_B`, `[out, r]`.
    pub b: Var,
}

impl LoraParam {
    /// The PEFT key of A.
    pub fn key_a(&self) -> String {
        format!("{PEFT_PREFIX}{}.lora_A.weight", self.module)
    }
    /// The PEFT key of B.
    pub fn key_b(&self) -> String {
        format!("{PEFT_PREFIX}{}.lora_B.weight", self.module)
    }
}

/// Attaches fresh LoRA adapters to every linear of `model` matching `config.target_modules`,
/// initialized from `seed` as PEFT does (in visiting order). `rng` drives dropout while training.
pub fn attach_new(
    model: &mut dyn LinearVisitor,
    config: &LoraConfig,
    seed: u64,
    rng: Option<DropoutRng>,
    device: &Device,
) -> Result<Vec<LoraParam>> {
    config.validate()?;
    let mut g = StdRng::seed_from_u64(seed);
    let mut params = Vec::new();
    let r = config.r;
    let n = model.for_each_matching(&config.target_modules, &mut |l| {
        let (out, inp) = l.shape();
        let a: Vec<f32> = match config.init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (inp as f32).sqrt();
                (0..r * inp).map(|_| g.gen_range(-bound..bound)).collect()
            }
            LoraInit::Gaussian => {
                let std = 1.0 / r as f32;
                (0..r * inp)
                    .map(|_| std * standard_normal(&mut g))
                    .collect()
            }
        };
        let a = Var::from_tensor(&Tensor::from_vec(a, (r, inp), device)?)?;
        let b = Var::from_tensor(&Tensor::zeros((out, r), DType::F32, device)?)?;
        l.attach_lora(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: config.scale(),
            dropout: config.lora_dropout,
            training: false,
            rng: rng.clone(),
        })?;
        params.push(LoraParam {
            module: l.name().to_string(),
            a,
            b,
        });
        Ok(())
    })?;
    if n == 0 {
        return Err(Error::Lora(format!(
            "target_modules `{}` matches no linear of the model",
            config.target_modules
        )));
    }
    Ok(params)
}

/// A standard normal sample (Box–Muller), deterministic for a given generator.
fn standard_normal(g: &mut StdRng) -> f32 {
    let u1: f64 = g.gen_range(f64::EPSILON..1.0);
    let u2: f64 = g.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Attaches adapters with the given weights (PEFT keys) to the linears matching the config.
/// Every matched linear must have both tensors, every tensor must be used, shapes must fit.
pub fn attach_weights(
    model: &mut dyn LinearVisitor,
    config: &LoraConfig,
    weights: &HashMap<String, Tensor>,
    rng: Option<DropoutRng>,
) -> Result<Vec<LoraParam>> {
    attach_weights_with(model, config, &PeftOptions::default(), weights, rng)
}

/// [`attach_weights`] honouring `opts`: only the layers it covers, each module's rank and alpha
/// from its patterns, and `modules_to_save` linears replaced by their saved weights first.
pub fn attach_weights_with(
    model: &mut dyn LinearVisitor,
    config: &LoraConfig,
    opts: &PeftOptions,
    weights: &HashMap<String, Tensor>,
    rng: Option<DropoutRng>,
) -> Result<Vec<LoraParam>> {
    config.validate()?;
    let mut used = 0usize;
    if !opts.modules_to_save.is_empty() {
        let mut saved = 0usize;
        model.visit_linears(&mut |l| {
            let name = l.name().to_string();
            if !opts.saves(&name) {
                return Ok(());
            }
            let kw = format!("{PEFT_PREFIX}{name}.weight");
            let Some(w) = weights.get(&kw) else {
                return Err(candle_core::Error::Msg(format!(
                    "modules_to_save names `{name}` but the adapter has no `{kw}`"
                )));
            };
            let w = w.to_dtype(l.dense_weight(DType::F32, &Device::Cpu)?.dtype())?;
            l.set_base(BaseWeight::Dense(w))?;
            used += 1;
            let kb = format!("{PEFT_PREFIX}{name}.bias");
            if weights.contains_key(&kb) {
                return Err(candle_core::Error::Msg(format!(
                    "{kb}: a saved bias of a module to save is not supported"
                )));
            }
            saved += 1;
            Ok(())
        })?;
        if saved == 0 {
            return Err(Error::Lora(format!(
                "modules_to_save {:?}: no linear of the model has that name (only linears can be saved)",
                opts.modules_to_save
            )));
        }
    }
    let mut params = Vec::new();
    model.for_each_matching(&config.target_modules, &mut |l| {
        let name = l.name().to_string();
        if !opts
            .covers_layer(&name)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        {
            return Ok(());
        }
        let pat = |e: Error| candle_core::Error::Msg(e.to_string());
        let r = PeftOptions::pattern(&opts.rank_pattern, &name)
            .map_err(pat)?
            .copied()
            .unwrap_or(config.r);
        let alpha = PeftOptions::pattern(&opts.alpha_pattern, &name)
            .map_err(pat)?
            .copied()
            .unwrap_or(config.lora_alpha);
        let scale = if config.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        let ka = format!("{PEFT_PREFIX}{name}.lora_A.weight");
        let kb = format!("{PEFT_PREFIX}{name}.lora_B.weight");
        let (Some(a), Some(b)) = (weights.get(&ka), weights.get(&kb)) else {
            return Err(candle_core::Error::Msg(format!(
                "adapter has no weights for `{name}`"
            )));
        };
        let a = Var::from_tensor(&a.to_dtype(DType::F32)?)?;
        let b = Var::from_tensor(&b.to_dtype(DType::F32)?)?;
        if a.dims()[0] != r {
            return Err(candle_core::Error::Msg(format!(
                "{ka}: rank {} but r = {r} for this module",
                a.dims()[0]
            )));
        }
        l.attach_lora(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale,
            dropout: config.lora_dropout,
            training: false,
            rng: rng.clone(),
        })?;
        params.push(LoraParam { module: name, a, b });
        Ok(())
    })?;
    used += 2 * params.len();
    if used != weights.len() {
        let mut names: std::collections::HashSet<String> =
            params.iter().flat_map(|p| [p.key_a(), p.key_b()]).collect();
        model.visit_linears(&mut |l| {
            if opts.saves(l.name()) {
                names.insert(format!("{PEFT_PREFIX}{}.weight", l.name()));
            }
            Ok(())
        })?;
        let extra: Vec<&String> = weights
            .keys()
            .filter(|k| !names.contains(*k))
            .take(4)
            .collect();
        return Err(Error::Lora(format!(
            "adapter tensors that no target module uses: {extra:?}"
        )));
    }
    Ok(params)
}

/// Switches dropout on or off in every attached adapter.
pub fn set_training(model: &mut dyn LinearVisitor, training: bool) -> Result<()> {
    model.visit_linears(&mut |l| {
        if let Some(a) = l.lora_mut() {
            a.training = training;
        }
        Ok(())
    })?;
    Ok(())
}

/// A new shared dropout generator.
pub fn dropout_rng(seed: u64) -> DropoutRng {
    Arc::new(std::sync::Mutex::new(StdRng::seed_from_u64(seed)))
}

/// Writes the adapter in PEFT's layout into `dir`: `adapter_model.safetensors` (f32, metadata
/// `{"format": "pt"}`) and `adapter_config.json`. Returns the two file paths.
pub fn save_adapter(
    dir: &Path,
    config: &LoraConfig,
    params: &[LoraParam],
) -> Result<[std::path::PathBuf; 2]> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::new();
    for p in params {
        tensors.push((p.key_a(), p.a.as_tensor().clone()));
        tensors.push((p.key_b(), p.b.as_tensor().clone()));
    }
    let wpath = dir.join(ADAPTER_WEIGHTS);
    crate::checkpoint::write_safetensors(&wpath, &tensors)?;
    let cpath = dir.join(ADAPTER_CONFIG);
    let js = serde_json::to_string_pretty(&config.to_peft_json()).map_err(|e| Error::Json {
        what: ADAPTER_CONFIG.into(),
        message: e.to_string(),
    })?;
    std::fs::write(&cpath, js + "\n").map_err(|e| Error::io(&cpath, e))?;
    Ok([wpath, cpath])
}

/// Reads a PEFT adapter directory: its config and its weights (keys as in the file).
pub fn load_adapter(dir: &Path) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let (config, _, weights) = load_adapter_with_options(dir)?;
    Ok((config, weights))
}

/// [`load_adapter`] with the [`PeftOptions`] its config sets.
pub fn load_adapter_with_options(
    dir: &Path,
) -> Result<(LoraConfig, PeftOptions, HashMap<String, Tensor>)> {
    let cpath = dir.join(ADAPTER_CONFIG);
    let s = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| Error::Json {
        what: cpath.display().to_string(),
        message: e.to_string(),
    })?;
    let config = LoraConfig::from_peft_json(&v)?;
    let options = PeftOptions::from_peft_text(&s)?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let weights = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|e| Error::Lora(format!("{}: {e}", wpath.display())))?;
    Ok((config, options, weights))
}

/// Loads a PEFT adapter directory onto `model` (frozen: the returned params are not trained).
pub fn load_adapter_into(
    model: &mut dyn LinearVisitor,
    dir: &Path,
) -> Result<(LoraConfig, Vec<LoraParam>)> {
    let (config, options, weights) = load_adapter_with_options(dir)?;
    let params = attach_weights_with(model, &config, &options, &weights, None)?;
    Ok((config, params))
}
