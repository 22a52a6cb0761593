//! The eval spec: everything that decides an eval's numbers besides the model and the data,
//! with a stable hash so that EvalScored events computed differently can't be compared.

use std::collections::BTreeSet;

use foundry_events::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::normalize::{DateOrder, NORMALIZATION_VERSION};
use crate::score::ScoreConfig;

/// Metric families an eval can compute (see the README for definitions).
pub const METRIC_FAMILIES: &[&str] = &[
    "anls",
    "doc_exact_match",
    "field_exact_match",
    "field_prf",
    "json_valid_rate",
    "line_items",
];

/// Free-text fields of the built-in document types, scored with ANLS by default.
pub const DEFAULT_ANLS_FIELDS: &[&str] = &[
    "account_holder",
    "bank",
    "buyer",
    "description",
    "merchant",
    "supplier",
    "vendor",
];

/// How values are normalized before comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizationSpec {
    /// Version of the rules in [`crate::normalize`]; only the current one can be scored.
    pub version: u32,
    /// How all-numeric dates (`05/03/2024`) are read.
    pub date_order: DateOrder,
    /// Fields scored with ANLS.
    pub anls_fields: Vec<String>,
    /// ANLS threshold: similarities with a normalized distance at or above it score 0.
    pub anls_threshold: f64,
}

/// Decoding strategy; evals are greedy so that they are reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Argmax at every step.
    Greedy,
}

/// How answers are generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodingSpec {
    /// The strategy.
    pub strategy: Strategy,
    /// Generation stops after this many tokens (a truncated answer is usually invalid JSON).
    pub max_new_tokens: u32,
}

/// Bootstrap confidence intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapSpec {
    /// Resamples of the documents (0: no intervals).
    pub resamples: u32,
    /// Seed; the same seed gives the same intervals.
    pub seed: u64,
}

/// Everything that decides an eval's numbers besides the model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    /// The split evaluated (`test` by default).
    pub split: String,
    /// Only the first N examples of the split, in order.
    pub limit: Option<u64>,
    /// Metric families computed (from [`METRIC_FAMILIES`]).
    pub metrics: Vec<String>,
    /// Value normalization.
    pub normalization: NormalizationSpec,
    /// Decoding.
    pub decoding: DecodingSpec,
    /// Confidence intervals.
    pub bootstrap: BootstrapSpec,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            split: "test".into(),
            limit: None,
            metrics: METRIC_FAMILIES.iter().map(|s| s.to_string()).collect(),
            normalization: NormalizationSpec {
                version: NORMALIZATION_VERSION,
                date_order: DateOrder::DayFirst,
                anls_fields: DEFAULT_ANLS_FIELDS.iter().map(|s| s.to_string()).collect(),
                anls_threshold: 0.5,
            },
            decoding: DecodingSpec {
                strategy: Strategy::Greedy,
                max_new_tokens: 512,
            },
            bootstrap: BootstrapSpec {
                resamples: 1000,
                seed: 0,
            },
        }
    }
}

/// Domain prefix of the hashed bytes.
const SPEC_HASH_DOMAIN: &[u8] = b"foundry-eval-spec/v1\n";

impl EvalSpec {
    /// Checks the spec; the error names the offending setting.
    pub fn validate(&self) -> Result<()> {
        if self.split.trim().is_empty() {
            return Err(EvalError::Spec("split is empty".into()));
        }
        if self.limit == Some(0) {
            return Err(EvalError::Spec("limit must be at least 1".into()));
        }
        if self.metrics.is_empty() {
            return Err(EvalError::Spec("no metrics requested".into()));
        }
        for m in &self.metrics {
            if !METRIC_FAMILIES.contains(&m.as_str()) {
                return Err(EvalError::Spec(format!(
                    "unknown metric {m:?} (known: {})",
                    METRIC_FAMILIES.join(", ")
                )));
            }
        }
        if self.normalization.version != NORMALIZATION_VERSION {
            return Err(EvalError::Spec(format!(
                "normalization version {} is not implemented by this build (it has {NORMALIZATION_VERSION})",
                self.normalization.version
            )));
        }
        let t = self.normalization.anls_threshold;
        if !(t > 0.0 && t <= 1.0) {
            return Err(EvalError::Spec(format!(
                "anls_threshold must be in (0, 1], got {t}"
            )));
        }
        if self.decoding.max_new_tokens == 0 {
            return Err(EvalError::Spec("max_new_tokens must be at least 1".into()));
        }
        Ok(())
    }

    /// The spec with its lists sorted and deduplicated: specs that mean the same thing have
    /// the same canonical form.
    pub fn canonical(&self) -> EvalSpec {
        let sorted = |v: &[String]| -> Vec<String> {
            v.iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let mut c = self.clone();
        c.metrics = sorted(&self.metrics);
        c.normalization.anls_fields = sorted(&self.normalization.anls_fields);
        c
    }

    /// Canonical JSON bytes of the spec (struct fields in declaration order, sorted lists).
    pub fn canonical_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings, integers and a finite float cannot fail.
        serde_json::to_vec(&self.canonical()).unwrap_or_default()
    }

    /// `eval_spec_sha256`: sha256 of a domain prefix and [`Self::canonical_json`].
    pub fn sha256(&self) -> Sha256Digest {
        let mut bytes = SPEC_HASH_DOMAIN.to_vec();
        bytes.extend(self.canonical_json());
        Sha256Digest::of(&bytes)
    }

    /// Whether a metric family is requested.
    pub fn wants(&self, family: &str) -> bool {
        self.metrics.iter().any(|m| m == family)
    }

    /// The scoring settings.
    pub fn score_config(&self) -> ScoreConfig {
        ScoreConfig {
            date_order: self.normalization.date_order,
            anls_fields: self.normalization.anls_fields.iter().cloned().collect(),
            anls_threshold: self.normalization.anls_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned_and_ignores_list_order() {
        let s = EvalSpec::default();
        s.validate().unwrap();
        // Pinned: if this changes, every stored eval_spec_sha256 changes meaning.
        assert_eq!(
            String::from_utf8(s.canonical_json()).unwrap(),
            r#"{"split":"test","limit":null,"metrics":["anls","doc_exact_match","field_exact_match","field_prf","json_valid_rate","line_items"],"normalization":{"version":1,"date_order":"day_first","anls_fields":["account_holder","bank","buyer","description","merchant","supplier","vendor"],"anls_threshold":0.5},"decoding":{"strategy":"greedy","max_new_tokens":512},"bootstrap":{"resamples":1000,"seed":0}}"#
        );
        let mut r = s.clone();
        r.metrics.reverse();
        r.normalization.anls_fields.reverse();
        r.normalization.anls_fields.push("vendor".into());
        assert_eq!(r.sha256(), s.sha256());
    }

    #[test]
    fn every_setting_changes_the_hash() {
        let base = EvalSpec::default();
        let h = base.sha256();
        let mut variants = Vec::new();
        let mut v = base.clone();
        v.split = "validation".into();
        variants.push(v);
        let mut v = base.clone();
        v.limit = Some(10);
        variants.push(v);
        let mut v = base.clone();
        v.metrics.pop();
        variants.push(v);
        let mut v = base.clone();
        v.normalization.date_order = DateOrder::MonthFirst;
        variants.push(v);
        let mut v = base.clone();
        v.normalization.anls_fields.push("bank_name".into());
        variants.push(v);
        let mut v = base.clone();
        v.normalization.anls_threshold = 0.4;
        variants.push(v);
        let mut v = base.clone();
        v.decoding.max_new_tokens = 256;
        variants.push(v);
        let mut v = base.clone();
        v.bootstrap.resamples = 100;
        variants.push(v);
        let mut v = base.clone();
        v.bootstrap.seed = 1;
        variants.push(v);
        let mut seen = std::collections::BTreeSet::new();
        for v in &variants {
            assert_ne!(v.sha256(), h);
            assert!(seen.insert(v.sha256().to_hex()));
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let mut s = EvalSpec::default();
        s.metrics.push("bleu".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown metric \"bleu\""));
        let mut s = EvalSpec::default();
        s.normalization.version = 2;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("normalization version 2"));
        let mut s = EvalSpec::default();
        s.normalization.anls_threshold = f64::NAN;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("anls_threshold"));
        let mut s = EvalSpec::default();
        s.decoding.max_new_tokens = 0;
        assert!(s.validate().is_err());
        let s = EvalSpec {
            limit: Some(0),
            ..EvalSpec::default()
        };
        assert!(s.validate().is_err());
        let s: EvalSpec = serde_json::from_slice(&EvalSpec::default().canonical_json()).unwrap();
        assert_eq!(s, EvalSpec::default().canonical());
    }
}
