//! Resolution: TOML + env overrides → complete JSON config → typed recipe → id.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde_json::{Map, Number, Value};

use crate::canonical::{canonical_json, sha256_hex};
use crate::gates::Gate;
use crate::limits;
use crate::schema::{
    self, Default, KeySpec, Kind, KNOWN_METRICS, PROMOTION_CHANNEL, SECTIONS, TOP,
};
use crate::{Recipe, RecipeError, Resolved};

/// The recipe format version written into every resolved config.
pub const FORMAT: u32 = 1;

/// Every `FOUNDRY_*` variable of this process's environment.
pub fn foundry_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("FOUNDRY_"))
        .collect()
}

/// One line per overridable key: `FOUNDRY_TRAINING_LR  training.lr  a number  <doc>`.
/// Promotion keys are shown for a channel named `<CHANNEL>`.
pub fn env_docs() -> Vec<(String, String, &'static str, &'static str)> {
    let mut out = Vec::new();
    for (section, specs) in SECTIONS {
        for s in *specs {
            out.push((
                schema::env_name(section, s.key),
                format!("{section}.{}", s.key),
                s.kind.describe(),
                s.doc,
            ));
        }
    }
    for s in PROMOTION_CHANNEL {
        out.push((
            format!("FOUNDRY_PROMOTION_<CHANNEL>_{}", s.key.to_uppercase()),
            format!("promotion.<channel>.{}", s.key),
            s.kind.describe(),
            s.doc,
        ));
    }
    out
}

/// Reads and resolves the recipe at `path`. `env` is usually [`foundry_env`];
/// `modules`, when given, are the architecture's module names that
/// `lora.target_modules` must match at least one of.
pub fn resolve_file(
    path: &Path,
    env: &BTreeMap<String, String>,
    modules: Option<&[String]>,
) -> Result<Resolved, RecipeError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RecipeError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    resolve_str(&text, &file, env, modules)
}

/// Resolves recipe `text`; `file` names it in errors and in [`Resolved::source`].
pub fn resolve_str(
    text: &str,
    file: &str,
    env: &BTreeMap<String, String>,
    modules: Option<&[String]>,
) -> Result<Resolved, RecipeError> {
    let cx = Cx {
        file: file.to_string(),
        env_keys: BTreeMap::new(),
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| RecipeError::Syntax {
        file: file.to_string(),
        reason: toml_error_line(text, &e),
    })?;
    let mut cx = cx;
    let overrides = cx.env_overrides(env)?;
    let config = cx.build(&table, &overrides)?;
    let recipe: Recipe =
        serde_json::from_value(config.clone()).map_err(|e| RecipeError::Syntax {
            file: file.to_string(),
            reason: format!("internal: resolved config does not match the typed recipe: {e}"),
        })?;
    cx.validate(&recipe, modules)?;
    let id = sha256_hex(canonical_json(&config).as_bytes());
    Ok(Resolved {
        id,
        source: file.to_string(),
        config,
        env: env.clone(),
        recipe,
    })
}

fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {col}: {msg}")
        }
        None => format!("invalid TOML: {msg}"),
    }
}

/// Env overrides by (section, channel or "", key) → (variable, value).
type Overrides = BTreeMap<(String, String, String), (String, String)>;

struct Cx {
    file: String,
    /// dotted key → env variable that set it.
    env_keys: BTreeMap<String, String>,
}

fn found(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn num(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

impl Cx {
    fn err(&self, key: &str, reason: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            file: self.file.clone(),
            key: self.label(key),
            reason: reason.into(),
        }
    }

    fn label(&self, key: &str) -> String {
        // `a.b[2]` was set by the env variable of `a.b`.
        let base = key.split('[').next().unwrap_or(key);
        match self.env_keys.get(base) {
            Some(var) => format!("{key} ({var})"),
            None => key.to_string(),
        }
    }

    fn env_overrides(&mut self, env: &BTreeMap<String, String>) -> Result<Overrides, RecipeError> {
        let mut out = Overrides::new();
        let mut sections: Vec<&(&str, &[KeySpec])> = SECTIONS.iter().collect();
        sections.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("FOUNDRY_") else {
                continue;
            };
            if let Some(tail) = rest.strip_prefix("PROMOTION_") {
                let spec = PROMOTION_CHANNEL.iter().find(|s| {
                    let suffix = format!("_{}", s.key.to_uppercase());
                    tail.len() > suffix.len() && tail.ends_with(&suffix)
                });
                let Some(spec) = spec else {
                    return Err(RecipeError::Invalid {
                        file: self.file.clone(),
                        key: format!("promotion ({var})"),
                        reason: format!(
                            "unknown key (expected FOUNDRY_PROMOTION_<CHANNEL>_<KEY> with KEY one of {})",
                            PROMOTION_CHANNEL.iter().map(|s| s.key.to_uppercase()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                };
                let channel = tail[..tail.len() - spec.key.len() - 1].to_lowercase();
                self.env_keys
                    .insert(format!("promotion.{channel}.{}", spec.key), var.clone());
                out.insert(
                    ("promotion".into(), channel, spec.key.into()),
                    (var.clone(), value.clone()),
                );
                continue;
            }
            for (section, specs) in &sections {
                let Some(key) = rest.strip_prefix(&format!("{}_", section.to_uppercase())) else {
                    continue;
                };
                let key = key.to_lowercase();
                if !specs.iter().any(|s| s.key == key) {
                    return Err(RecipeError::Invalid {
                        file: self.file.clone(),
                        key: format!("{section}.{key} ({var})"),
                        reason: "unknown key".into(),
                    });
                }
                self.env_keys
                    .insert(format!("{section}.{key}"), var.clone());
                out.insert(
                    (section.to_string(), String::new(), key),
                    (var.clone(), value.clone()),
                );
                break;
            }
        }
        Ok(out)
    }

    fn build(&self, table: &toml::Table, overrides: &Overrides) -> Result<Value, RecipeError> {
        let mut root = Map::new();
        root.insert("format".into(), Value::from(FORMAT));
        for (key, value) in table {
            let known_section = SECTIONS.iter().any(|(s, _)| s == key) || key == "promotion";
            let known_top = TOP.iter().any(|s| s.key == key);
            if known_section && !value.is_table() {
                return Err(self.err(key, format!("expected a table, found {}", found(value))));
            }
            if !known_section && !known_top {
                let what = if value.is_table() {
                    "unknown section"
                } else {
                    "unknown key"
                };
                return Err(self.err(key, what));
            }
        }
        for spec in TOP {
            let v = self.value(spec, spec.key, table.get(spec.key), None)?;
            root.insert(spec.key.into(), v);
        }
        let empty = toml::Table::new();
        for (section, specs) in SECTIONS {
            let t = table
                .get(*section)
                .and_then(|v| v.as_table())
                .unwrap_or(&empty);
            let obj = self.section(section, "", t, specs, overrides)?;
            root.insert(section.to_string(), obj);
        }
        let promo = table
            .get("promotion")
            .and_then(|v| v.as_table())
            .unwrap_or(&empty);
        let mut channels = Map::new();
        let mut names: Vec<String> = promo.keys().cloned().collect();
        for (section, channel, _) in overrides.keys() {
            if section == "promotion" && !names.contains(channel) {
                names.push(channel.clone());
            }
        }
        names.sort();
        for name in names {
            let key = format!("promotion.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
                || name.is_empty()
            {
                return Err(self.err(&key, "channel names use a-z, 0-9, _ and - only"));
            }
            let t = match promo.get(&name) {
                None => &empty,
                Some(toml::Value::Table(t)) => t,
                Some(other) => {
                    return Err(self.err(&key, format!("expected a table, found {}", found(other))))
                }
            };
            let obj = self.section(&key, &name, t, PROMOTION_CHANNEL, overrides)?;
            channels.insert(name, obj);
        }
        root.insert("promotion".into(), Value::Object(channels));
        Ok(Value::Object(root))
    }

    fn section(
        &self,
        path: &str,
        channel: &str,
        t: &toml::Table,
        specs: &[KeySpec],
        overrides: &Overrides,
    ) -> Result<Value, RecipeError> {
        for (k, _) in t {
            if !specs.iter().any(|s| s.key == k) {
                return Err(self.err(&format!("{path}.{k}"), "unknown key"));
            }
        }
        let section = path.split('.').next().unwrap_or(path);
        let mut obj = Map::new();
        for spec in specs {
            let key = format!("{path}.{}", spec.key);
            let env = overrides
                .get(&(
                    section.to_string(),
                    channel.to_string(),
                    spec.key.to_string(),
                ))
                .map(|(_, v)| v.as_str());
            obj.insert(
                spec.key.into(),
                self.value(spec, &key, t.get(spec.key), env)?,
            );
        }
        Ok(Value::Object(obj))
    }

    fn value(
        &self,
        spec: &KeySpec,
        key: &str,
        toml: Option<&toml::Value>,
        env: Option<&str>,
    ) -> Result<Value, RecipeError> {
        if let Some(raw) = env {
            return self.env_value(spec, key, raw);
        }
        let Some(v) = toml else {
            return match spec.default {
                Default::Required => Err(self.err(key, "required key is missing")),
                Default::Null => Ok(Value::Null),
                Default::Str(s) => Ok(Value::from(s)),
                Default::Float(x) => Ok(num(x)),
                Default::Int(i) => Ok(Value::from(i)),
                Default::Bool(b) => Ok(Value::from(b)),
                Default::List(l) => Ok(Value::from(l.to_vec())),
            };
        };
        let wrong = || {
            self.err(
                key,
                format!("expected {}, found {}", spec.kind.describe(), found(v)),
            )
        };
        match spec.kind {
            Kind::Str => v.as_str().map(Value::from).ok_or_else(wrong),
            Kind::Choice(options) => {
                let s = v.as_str().ok_or_else(wrong)?;
                self.choice(key, options, s)
            }
            Kind::Int => v.as_integer().map(Value::from).ok_or_else(wrong),
            Kind::Bool => v.as_bool().map(Value::from).ok_or_else(wrong),
            Kind::Float => {
                let x = match v {
                    toml::Value::Float(x) => *x,
                    toml::Value::Integer(i) => *i as f64,
                    _ => return Err(wrong()),
                };
                if !x.is_finite() {
                    return Err(self.err(key, format!("expected a finite number, found {x}")));
                }
                Ok(num(x))
            }
            Kind::StrList => {
                let items = v.as_array().ok_or_else(wrong)?;
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let s = item.as_str().ok_or_else(|| {
                        self.err(
                            &format!("{key}[{i}]"),
                            format!("expected a string, found {}", found(item)),
                        )
                    })?;
                    out.push(Value::from(s));
                }
                Ok(Value::Array(out))
            }
        }
    }

    fn choice(&self, key: &str, options: &[&str], s: &str) -> Result<Value, RecipeError> {
        if options.contains(&s) {
            Ok(Value::from(s))
        } else {
            Err(self.err(
                key,
                format!("expected one of {}, found {s:?}", options.join(", ")),
            ))
        }
    }

    fn env_value(&self, spec: &KeySpec, key: &str, raw: &str) -> Result<Value, RecipeError> {
        if raw.is_empty() && spec.default == Default::Null {
            return Ok(Value::Null);
        }
        let wrong = || {
            self.err(
                key,
                format!("expected {}, found {raw:?}", spec.kind.describe()),
            )
        };
        match spec.kind {
            Kind::Str => Ok(Value::from(raw)),
            Kind::Choice(options) => self.choice(key, options, raw),
            Kind::Int => raw
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| wrong()),
            Kind::Bool => match raw.trim() {
                "true" | "1" => Ok(Value::from(true)),
                "false" | "0" => Ok(Value::from(false)),
                _ => Err(wrong()),
            },
            Kind::Float => {
                let x: f64 = raw.trim().parse().map_err(|_| wrong())?;
                if !x.is_finite() {
                    return Err(self.err(key, format!("expected a finite number, found {raw:?}")));
                }
                Ok(num(x))
            }
            Kind::StrList => Ok(Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Value::from)
                    .collect(),
            )),
        }
    }

    fn validate(&self, r: &Recipe, modules: Option<&[String]>) -> Result<(), RecipeError> {
        let min = |key: &str, v: i64, lo: i64| -> Result<(), RecipeError> {
            if v < lo {
                Err(self.err(key, format!("must be >= {lo}, got {v}")))
            } else {
                Ok(())
            }
        };
        // Every count a run allocates by is bounded (crate::limits), so no
        // recipe can make a trainer ask for terabytes.
        let within = |key: &str, v: i64, lo: i64, hi: i64| -> Result<(), RecipeError> {
            if v < lo || v > hi {
                Err(self.err(key, format!("must be in {lo}..={hi}, got {v}")))
            } else {
                Ok(())
            }
        };
        let positive = |key: &str, v: f64| -> Result<(), RecipeError> {
            if v > 0.0 {
                Ok(())
            } else {
                Err(self.err(key, format!("must be > 0, got {v}")))
            }
        };
        let unit = |key: &str, v: f64| -> Result<(), RecipeError> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(self.err(key, format!("must be in [0, 1), got {v}")))
            }
        };
        let non_negative = |key: &str, v: f64| -> Result<(), RecipeError> {
            if v >= 0.0 {
                Ok(())
            } else {
                Err(self.err(key, format!("must be >= 0, got {v}")))
            }
        };

        if r.name.trim().is_empty() {
            return Err(self.err("name", "must not be empty"));
        }
        let src = &r.base_model.source;
        if src.trim().is_empty() {
            return Err(self.err("base_model.source", "must not be empty"));
        }
        if let Some(rest) = src.strip_prefix("hf://") {
            let ok = rest.split_once('@').is_some_and(|(repo, rev)| {
                !rev.is_empty()
                    && repo.split('/').count() == 2
                    && repo.split('/').all(|p| !p.is_empty())
            });
            if !ok {
                return Err(self.err(
                    "base_model.source",
                    format!(
                        "{src:?} is not hf://ORG/NAME@REVISION (a pinned revision is required)"
                    ),
                ));
            }
        }
        if let Some(id) = &r.base_model.model_id {
            if id.len() != 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return Err(self.err(
                    "base_model.model_id",
                    format!("{id:?} is not a lowercase sha256 hex id"),
                ));
            }
        }
        let q = &r.quantization;
        if ![32, 64, 128, 256].contains(&q.blocksize) {
            return Err(self.err(
                "quantization.blocksize",
                format!("must be one of 32, 64, 128, 256, got {}", q.blocksize),
            ));
        }

        let l = &r.lora;
        within("lora.r", l.r, 1, limits::MAX_LORA_R)?;
        positive("lora.alpha", l.alpha)?;
        unit("lora.dropout", l.dropout)?;
        let re = Regex::new(&format!("^(?:{})$", l.target_modules)).map_err(|e| {
            let msg = e.to_string();
            let last = msg
                .lines()
                .rev()
                .find(|s| !s.trim().is_empty())
                .unwrap_or("")
                .trim();
            let last = last.strip_prefix("error: ").unwrap_or(last);
            self.err("lora.target_modules", format!("invalid regex: {last}"))
        })?;
        if let Some(names) = modules {
            if !names.iter().any(|n| re.is_match(n)) {
                let example = names.first().map(String::as_str).unwrap_or("none");
                return Err(self.err(
                    "lora.target_modules",
                    format!(
                        "matches no module of the {} architecture ({} modules, e.g. {example})",
                        r.base_model.architecture,
                        names.len()
                    ),
                ));
            }
        }

        let t = &r.training;
        min("training.seed", t.seed, 0)?;
        positive("training.lr", t.lr)?;
        min("training.warmup_steps", t.warmup_steps, 0)?;
        within("training.max_steps", t.max_steps, 0, limits::MAX_STEPS)?;
        within("training.epochs", t.epochs, 0, limits::MAX_EPOCHS)?;
        if (t.max_steps > 0) == (t.epochs > 0) {
            return Err(self.err(
                "training.max_steps",
                format!(
                    "exactly one of training.max_steps and training.epochs must be > 0 (got {} and {})",
                    t.max_steps, t.epochs
                ),
            ));
        }
        if t.max_steps > 0 && t.warmup_steps > t.max_steps {
            return Err(self.err(
                "training.warmup_steps",
                format!(
                    "must be <= training.max_steps ({}), got {}",
                    t.max_steps, t.warmup_steps
                ),
            ));
        }
        within(
            "training.micro_batch",
            t.micro_batch,
            1,
            limits::MAX_MICRO_BATCH,
        )?;
        within(
            "training.grad_accumulation",
            t.grad_accumulation,
            1,
            limits::MAX_GRAD_ACCUMULATION,
        )?;
        non_negative("training.grad_clip", t.grad_clip)?;
        non_negative("training.weight_decay", t.weight_decay)?;
        unit("training.adam_beta1", t.adam_beta1)?;
        unit("training.adam_beta2", t.adam_beta2)?;
        positive("training.adam_eps", t.adam_eps)?;
        min("training.checkpoint_every", t.checkpoint_every, 1)?;
        within("training.keep_last", t.keep_last, 1, limits::MAX_KEEP_LAST)?;
        within(
            "training.image_longest_edge",
            t.image_longest_edge,
            1,
            limits::MAX_IMAGE_EDGE,
        )?;
        within("training.max_length", t.max_length, 1, limits::MAX_LENGTH)?;

        let e = &r.eval;
        if e.metrics.is_empty() {
            return Err(self.err("eval.metrics", "must name at least one metric"));
        }
        for (i, m) in e.metrics.iter().enumerate() {
            if !KNOWN_METRICS.contains(&m.as_str()) {
                return Err(self.err(
                    &format!("eval.metrics[{i}]"),
                    format!("unknown metric {m:?} (known: {})", KNOWN_METRICS.join(", ")),
                ));
            }
        }
        min("eval.every_checkpoints", e.every_checkpoints, 1)?;
        min("eval.max_examples", e.max_examples, 0)?;
        within(
            "eval.max_new_tokens",
            e.max_new_tokens,
            1,
            limits::MAX_NEW_TOKENS,
        )?;

        for (name, c) in &r.promotion {
            for (i, g) in c.gates.iter().enumerate() {
                let key = format!("promotion.{name}.gates[{i}]");
                let gate: Gate = g.parse().map_err(|reason: String| self.err(&key, reason))?;
                if !e.metrics.contains(&gate.metric) {
                    return Err(self.err(
                        &key,
                        format!("metric {:?} is not in eval.metrics", gate.metric),
                    ));
                }
            }
            if let Some(points) = c.beat_production_by {
                non_negative(&format!("promotion.{name}.beat_production_by"), points)?;
            }
            if !e.metrics.contains(&c.compare_metric) {
                return Err(self.err(
                    &format!("promotion.{name}.compare_metric"),
                    format!("metric {:?} is not in eval.metrics", c.compare_metric),
                ));
            }
            for (key, names) in [("actors", &c.actors), ("evaluators", &c.evaluators)] {
                if let Some(names) = names {
                    if let Some(i) = names.iter().position(|a| a.trim().is_empty()) {
                        return Err(
                            self.err(&format!("promotion.{name}.{key}[{i}]"), "must not be empty")
                        );
                    }
                }
            }
        }

        let b = &r.backend;
        if b.kind == "modal" && b.gpu.as_deref().is_none_or(|g| g.trim().is_empty()) {
            return Err(self.err("backend.gpu", "required when backend.kind = \"modal\""));
        }
        if let Some(gpu) = &b.gpu {
            limits::check_modal_gpu(gpu).map_err(|m| self.err("backend.gpu", m))?;
        }
        for (key, v) in [
            ("backend.app_name", &b.app_name),
            ("backend.checkpoint_volume", &b.checkpoint_volume),
            ("backend.data_volume", &b.data_volume),
        ] {
            limits::check_modal_name(v).map_err(|m| self.err(key, m))?;
        }
        within(
            "backend.timeout_s",
            b.timeout_s,
            1,
            limits::MAX_MODAL_TIMEOUT_S,
        )?;
        if !(0..=10).contains(&b.retries) {
            return Err(self.err(
                "backend.retries",
                format!("must be in 0..=10 (Modal's limit), got {}", b.retries),
            ));
        }
        Ok(())
    }
}
