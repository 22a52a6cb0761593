//! From per-document scores to metrics: micro-averaged ratios over a slice of documents,
//! broken down per doc type and layout family, with seeded percentile-bootstrap 95%
//! confidence intervals (documents are resampled with replacement).

use std::collections::BTreeMap;

use foundry_events::MetricValue;
use serde::Serialize;
use serde_json::Value;

use crate::error::{EvalError, Result};
use crate::score::{score_document, DocScore, Prf};
use crate::spec::EvalSpec;

/// One document to score: the target and what the model answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The example's id (for the per-document listing).
    pub id: String,
    /// Document type (`invoice`, `receipt`, …).
    pub doc_type: String,
    /// Layout family (`invoice-b`, …).
    pub layout: String,
    /// The target JSON object.
    pub target: Value,
    /// The model's raw answer.
    pub raw: String,
    /// Time to produce the answer, in ms (0 when not measured).
    pub latency_ms: f64,
}

/// One document's outcome, for inspection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocResult {
    /// The example's id.
    pub id: String,
    /// Document type.
    pub doc_type: String,
    /// Layout family.
    pub layout: String,
    /// The model's raw answer.
    pub raw: String,
    /// Time to produce the answer, in ms.
    pub latency_ms: f64,
    /// The detailed scores.
    pub score: DocScore,
}

/// The result of an eval: headline metrics, per-slice breakdown, timing and documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Hex sha256 of the eval spec used.
    pub eval_spec_sha256: String,
    /// The split.
    pub split: String,
    /// Documents scored.
    pub examples: u64,
    /// Metrics over all documents.
    pub metrics: BTreeMap<String, MetricValue>,
    /// Metrics per slice (`doc_type=invoice`, `layout=invoice-b`).
    pub breakdown: BTreeMap<String, BTreeMap<String, MetricValue>>,
    /// Mean time per document, ms.
    pub latency_ms_mean: f64,
    /// Documents per second (wall clock of the whole run when the driver measured it,
    /// otherwise from the summed latencies).
    pub throughput_docs_per_s: f64,
    /// Every document's outcome, in input order.
    pub documents: Vec<DocResult>,
}

/// Sums of per-document counts over a multiset of documents.
#[derive(Debug, Clone, Default)]
struct Acc {
    docs: u64,
    valid: u64,
    doc_exact: u64,
    fields_total: u64,
    fields_matched: u64,
    extra: u64,
    anls_sum: f64,
    anls_count: u64,
    cells_tp: u64,
    cells_pred: u64,
    cells_target: u64,
    rows_exact: u64,
    rows_target: u64,
    per_field: Vec<Prf>,
}

/// A document's counts with field names resolved to slice-local indices.
struct Doc<'a> {
    s: &'a DocScore,
    fields: Vec<(usize, Prf)>,
}

impl Acc {
    fn new(n_fields: usize) -> Self {
        Acc {
            per_field: vec![Prf::default(); n_fields],
            ..Default::default()
        }
    }

    fn add(&mut self, d: &Doc<'_>) {
        let s = d.s;
        self.docs += 1;
        self.valid += u64::from(s.json_valid);
        self.doc_exact += u64::from(s.doc_exact);
        self.fields_total += s.fields_total;
        self.fields_matched += s.fields_matched;
        self.extra += s.extra_fields;
        self.anls_sum += s.anls_sum;
        self.anls_count += s.anls_count;
        self.cells_tp += s.cells_tp;
        self.cells_pred += s.cells_pred;
        self.cells_target += s.cells_target;
        self.rows_exact += s.rows_exact;
        self.rows_target += s.rows_target;
        for (i, p) in &d.fields {
            self.per_field[*i].add(p);
        }
    }

    fn micro(&self) -> Prf {
        let mut t = Prf::default();
        for p in &self.per_field {
            t.add(p);
        }
        t.fp += self.extra;
        t
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Precision,
    Recall,
    F1,
}

fn prf_metric(p: &Prf, k: Kind) -> Option<f64> {
    let (tp, fp, fn_) = (p.tp as f64, p.fp as f64, p.fn_ as f64);
    match k {
        Kind::Precision => ratio(tp, tp + fp),
        Kind::Recall => ratio(tp, tp + fn_),
        Kind::F1 => ratio(2.0 * tp, 2.0 * tp + fp + fn_),
    }
}

/// One reported metric: how to compute it from an [`Acc`].
#[derive(Debug, Clone)]
enum Def {
    FieldExact,
    FieldPrf(Kind),
    PerField(usize, Kind),
    DocExact,
    JsonValid,
    Anls,
    Cells(Kind),
    RowExact,
}

impl Def {
    fn eval(&self, a: &Acc) -> Option<f64> {
        match self {
            Def::FieldExact => ratio(a.fields_matched as f64, a.fields_total as f64),
            Def::FieldPrf(k) => prf_metric(&a.micro(), *k),
            Def::PerField(i, k) => prf_metric(&a.per_field[*i], *k),
            Def::DocExact => ratio(a.doc_exact as f64, a.docs as f64),
            Def::JsonValid => ratio(a.valid as f64, a.docs as f64),
            Def::Anls => ratio(a.anls_sum, a.anls_count as f64),
            Def::Cells(k) => {
                let p = Prf {
                    tp: a.cells_tp,
                    fp: a.cells_pred - a.cells_tp.min(a.cells_pred),
                    fn_: a.cells_target - a.cells_tp.min(a.cells_target),
                };
                prf_metric(&p, *k)
            }
            Def::RowExact => ratio(a.rows_exact as f64, a.rows_target as f64),
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Precision => "precision",
        Kind::Recall => "recall",
        Kind::F1 => "f1",
    }
}

/// The metrics a spec asks for, given the slice's target field names.
fn defs(spec: &EvalSpec, fields: &[String]) -> Vec<(String, Def)> {
    let kinds = [Kind::Precision, Kind::Recall, Kind::F1];
    let mut out = Vec::new();
    if spec.wants("field_exact_match") {
        out.push(("field_exact_match".to_string(), Def::FieldExact));
    }
    if spec.wants("field_prf") {
        for k in kinds {
            out.push((format!("field_{}", kind_name(k)), Def::FieldPrf(k)));
        }
        for (i, f) in fields.iter().enumerate() {
            for k in kinds {
                out.push((format!("field_{}/{f}", kind_name(k)), Def::PerField(i, k)));
            }
        }
    }
    if spec.wants("doc_exact_match") {
        out.push(("doc_exact_match".to_string(), Def::DocExact));
    }
    if spec.wants("json_valid_rate") {
        out.push(("json_valid_rate".to_string(), Def::JsonValid));
    }
    if spec.wants("anls") {
        out.push(("anls".to_string(), Def::Anls));
    }
    if spec.wants("line_items") {
        for k in kinds {
            out.push((format!("line_item_{}", kind_name(k)), Def::Cells(k)));
        }
        out.push(("line_item_row_exact_match".to_string(), Def::RowExact));
    }
    out
}

/// SplitMix64: a tiny, fully specified generator, so intervals do not depend on a crate's
/// RNG choice.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift; `n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// FNV-1a of a slice key, to give each slice its own bootstrap stream.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Linear-interpolated percentile of sorted values, `q` in `[0, 1]`.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// Metrics of one slice of documents, with bootstrap intervals seeded by
/// `seed ^ fnv1a(slice_key)`.
fn slice_metrics(
    docs: &[&DocScore],
    spec: &EvalSpec,
    slice_key: &str,
) -> BTreeMap<String, MetricValue> {
    let mut names: Vec<String> = docs
        .iter()
        .flat_map(|d| d.per_field.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let docs: Vec<Doc<'_>> = docs
        .iter()
        .map(|s| Doc {
            s,
            fields: s
                .per_field
                .iter()
                .map(|(k, p)| (index[k.as_str()], *p))
                .collect(),
        })
        .collect();
    let defs = defs(spec, &names);
    let mut full = Acc::new(names.len());
    docs.iter().for_each(|d| full.add(d));
    let point: Vec<Option<f64>> = defs.iter().map(|(_, d)| d.eval(&full)).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); defs.len()];
    let resamples = spec.bootstrap.resamples;
    if resamples > 0 && !docs.is_empty() {
        let mut rng = SplitMix64::new(spec.bootstrap.seed ^ fnv1a(slice_key));
        for _ in 0..resamples {
            let mut acc = Acc::new(names.len());
            for _ in 0..docs.len() {
                acc.add(&docs[rng.below(docs.len())]);
            }
            for (i, (_, d)) in defs.iter().enumerate() {
                if let (Some(_), Some(v)) = (point[i], d.eval(&acc)) {
                    samples[i].push(v);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (i, (name, _)) in defs.iter().enumerate() {
        let Some(value) = point[i] else { continue };
        let s = &mut samples[i];
        s.sort_by(f64::total_cmp);
        out.insert(
            name.clone(),
            MetricValue {
                value,
                ci_low: percentile(s, 0.025),
                ci_high: percentile(s, 0.975),
            },
        );
    }
    out
}

/// Scores predictions under `spec`. Bad answers are scored; only a target that is not a
/// JSON object is an error (naming the example).
pub fn score(preds: &[Prediction], spec: &EvalSpec) -> Result<EvalReport> {
    spec.validate()?;
    let cfg = spec.score_config();
    let mut documents = Vec::with_capacity(preds.len());
    for p in preds {
        let score = score_document(&p.target, &p.raw, &cfg)
            .map_err(|e| EvalError::Input(format!("example {:?}: {e}", p.id)))?;
        documents.push(DocResult {
            id: p.id.clone(),
            doc_type: p.doc_type.clone(),
            layout: p.layout.clone(),
            raw: p.raw.clone(),
            latency_ms: p.latency_ms,
            score,
        });
    }
    let all: Vec<&DocScore> = documents.iter().map(|d| &d.score).collect();
    let metrics = slice_metrics(&all, spec, "all");
    let mut slices: BTreeMap<String, Vec<&DocScore>> = BTreeMap::new();
    for d in &documents {
        slices
            .entry(format!("doc_type={}", d.doc_type))
            .or_default()
            .push(&d.score);
        slices
            .entry(format!("layout={}", d.layout))
            .or_default()
            .push(&d.score);
    }
    let breakdown = slices
        .iter()
        .map(|(k, docs)| (k.clone(), slice_metrics(docs, spec, k)))
        .collect();
    let n = documents.len() as f64;
    let total_ms: f64 = documents.iter().map(|d| d.latency_ms).sum();
    Ok(EvalReport {
        eval_spec_sha256: spec.sha256().to_hex(),
        split: spec.split.clone(),
        examples: documents.len() as u64,
        metrics,
        breakdown,
        latency_ms_mean: if n > 0.0 { total_ms / n } else { 0.0 },
        throughput_docs_per_s: if total_ms > 0.0 {
            n / (total_ms / 1000.0)
        } else {
            0.0
        },
        documents,
    })
}

impl EvalReport {
    /// A plain-text table of the headline metrics (value and 95% interval), then one
    /// line per slice with its field exact match, for terminals.
    pub fn table(&self) -> String {
        let fmt = |m: &MetricValue| match (m.ci_low, m.ci_high) {
            (Some(l), Some(h)) => format!("{:.4}  [{l:.4}, {h:.4}]", m.value),
            _ => format!("{:.4}", m.value),
        };
        let mut out = format!(
            "eval over {} documents (split {}, spec {})\n",
            self.examples,
            self.split,
            &self.eval_spec_sha256[..12.min(self.eval_spec_sha256.len())]
        );
        let width = self
            .metrics
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(6)
            .max(6);
        for (k, m) in &self.metrics {
            if !k.contains('/') {
                out.push_str(&format!("  {k:<width$}  {}\n", fmt(m)));
            }
        }
        for (slice, ms) in &self.breakdown {
            if let Some(m) = ms.get("field_exact_match") {
                out.push_str(&format!(
                    "  {slice:<width$}  field_exact_match {}\n",
                    fmt(m)
                ));
            }
        }
        out.push_str(&format!(
            "  latency {:.1} ms/doc, throughput {:.3} docs/s\n",
            self.latency_ms_mean, self.throughput_docs_per_s
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pred(id: &str, doc_type: &str, layout: &str, target: Value, raw: &str) -> Prediction {
        Prediction {
            id: id.into(),
            doc_type: doc_type.into(),
            layout: layout.into(),
            target,
            raw: raw.into(),
            latency_ms: 10.0,
        }
    }

    fn fixture() -> Vec<Prediction> {
        vec![
            // Perfect invoice (4 fields, 1 table with 2 rows of 2 cells).
            pred(
                "a",
                "invoice",
                "invoice-a",
                json!({"vendor": "ACME", "date": "2024-03-05", "total": 15,
                       "line_items": [{"description": "Widget", "amount": 10},
                                      {"description": "Gadget", "amount": 5}]}),
                r#"{"vendor": "Acme", "date": "05/03/2024", "total": "15.00",
                    "line_items": [{"description": "gadget", "amount": "5"},
                                   {"description": "widget", "amount": "$10.00"}]}"#,
            ),
            // Invoice with a wrong total, a missing date, a one-row table and an extra field.
            pred(
                "b",
                "invoice",
                "invoice-b",
                json!({"vendor": "Globex", "date": "2024-01-31", "total": 7,
                       "line_items": [{"description": "Bolt", "amount": 7}]}),
                r#"{"vendor": "Globex", "total": 8, "note": "x",
                    "line_items": [{"description": "Bolt", "amount": 7}]}"#,
            ),
            // Receipt, truncated answer.
            pred(
                "c",
                "receipt",
                "receipt-a",
                json!({"merchant": "Shop", "total": 3}),
                r#"{"merchant": "Shop", "tot"#,
            ),
        ]
    }

    fn spec(resamples: u32, seed: u64) -> EvalSpec {
        let mut s = EvalSpec::default();
        s.bootstrap.resamples = resamples;
        s.bootstrap.seed = seed;
        s
    }

    fn v(r: &BTreeMap<String, MetricValue>, k: &str) -> f64 {
        r.get(k).unwrap_or_else(|| panic!("no metric {k}")).value
    }

    #[test]
    fn exact_numbers_on_hand_written_predictions() {
        let r = score(&fixture(), &spec(0, 0)).unwrap();
        let m = &r.metrics;
        assert_eq!(r.examples, 3);
        // Fields: a 4/4, b 2/4 (vendor, line_items), c 0/2.
        assert_eq!(v(m, "field_exact_match"), 6.0 / 10.0);
        assert_eq!(v(m, "doc_exact_match"), 1.0 / 3.0);
        assert_eq!(v(m, "json_valid_rate"), 2.0 / 3.0);
        // Micro P/R: tp 6; fp = b.total + b.note = 2; fn = b.date + b.total + c.merchant + c.total = 4.
        assert_eq!(v(m, "field_precision"), 6.0 / 8.0);
        assert_eq!(v(m, "field_recall"), 6.0 / 10.0);
        assert_eq!(v(m, "field_f1"), 12.0 / 18.0);
        // Per field: total tp 1 (a), fp 1 (b), fn 2 (b, c).
        assert_eq!(v(m, "field_precision/total"), 0.5);
        assert_eq!(v(m, "field_recall/total"), 1.0 / 3.0);
        assert_eq!(v(m, "field_f1/total"), 2.0 / 5.0);
        assert_eq!(v(m, "field_recall/date"), 0.5);
        assert_eq!(v(m, "field_precision/date"), 1.0);
        // ANLS: vendor a, vendor b, 3 descriptions all exact = 5; merchant c = 0 → 5/6.
        assert_eq!(v(m, "anls"), 5.0 / 6.0);
        // Cells: 6 target, 6 predicted, 6 right.
        assert_eq!(v(m, "line_item_f1"), 1.0);
        assert_eq!(v(m, "line_item_row_exact_match"), 1.0);
        // No intervals without resamples.
        assert_eq!(m["field_exact_match"].ci_low, None);
        // No metric named after the extra field.
        assert!(!m.keys().any(|k| k.contains("note")));
        // Latency from the predictions.
        assert_eq!(r.latency_ms_mean, 10.0);
        assert_eq!(r.throughput_docs_per_s, 100.0);
    }

    #[test]
    fn breakdown_keys_and_values() {
        let r = score(&fixture(), &spec(0, 0)).unwrap();
        let keys: Vec<&str> = r.breakdown.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "doc_type=invoice",
                "doc_type=receipt",
                "layout=invoice-a",
                "layout=invoice-b",
                "layout=receipt-a"
            ]
        );
        assert_eq!(
            v(&r.breakdown["doc_type=invoice"], "field_exact_match"),
            6.0 / 8.0
        );
        assert_eq!(
            v(&r.breakdown["layout=invoice-b"], "field_exact_match"),
            0.5
        );
        assert_eq!(v(&r.breakdown["doc_type=receipt"], "json_valid_rate"), 0.0);
        // A slice without tables has no line-item metrics rather than a made-up value.
        assert!(!r.breakdown["doc_type=receipt"].contains_key("line_item_f1"));
        // Receipt slice only knows receipt fields.
        assert!(!r.breakdown["doc_type=receipt"].contains_key("field_f1/vendor"));
    }

    #[test]
    fn bootstrap_is_deterministic_per_seed_and_brackets_the_estimate() {
        let mut preds = Vec::new();
        for i in 0..40 {
            let good = i % 4 != 0;
            // i % 7 characters wrong: ANLS takes several values, not just 0 and 1.
            let wrong = i % 7;
            let vendor = format!("{}{}", "x".repeat(wrong), &"abcdefghij"[wrong..]);
            preds.push(pred(
                &i.to_string(),
                if i % 2 == 0 { "invoice" } else { "receipt" },
                "l",
                json!({"total": i, "vendor": "abcdefghij"}),
                &if good {
                    format!("{{\"total\": {i}, \"vendor\": \"{vendor}\"}}")
                } else {
                    "{}".into()
                },
            ));
        }
        let a = score(&preds, &spec(500, 7)).unwrap();
        let b = score(&preds, &spec(500, 7)).unwrap();
        let c = score(&preds, &spec(500, 8)).unwrap();
        assert_eq!(a, b);
        let tr = &a.metrics["field_recall/total"];
        assert_eq!(tr.value, 0.75);
        let (lo, hi) = (tr.ci_low.unwrap(), tr.ci_high.unwrap());
        assert!(lo < 0.75 && 0.75 < hi, "{lo} {hi}");
        // Binomial standard error sqrt(.75*.25/40) ≈ 0.068: the interval is about ±0.13.
        assert!(
            (0.55..0.7).contains(&lo) && (0.8..0.95).contains(&hi),
            "{lo} {hi}"
        );
        // Another seed, other resamples: a continuous metric's interval moves.
        let (x, y) = (&a.metrics["anls"], &c.metrics["anls"]);
        assert_eq!(x.value, y.value);
        assert!(x.ci_low.unwrap() < x.value && x.value < x.ci_high.unwrap());
        assert_ne!((x.ci_low, x.ci_high), (y.ci_low, y.ci_high));
        // A constant metric has a degenerate interval.
        let jv = &a.metrics["json_valid_rate"];
        assert_eq!(
            (jv.value, jv.ci_low, jv.ci_high),
            (1.0, Some(1.0), Some(1.0))
        );
    }

    #[test]
    fn metric_selection_and_bad_targets() {
        let mut s = spec(0, 0);
        s.metrics = vec!["json_valid_rate".into()];
        let r = score(&fixture(), &s).unwrap();
        assert_eq!(r.metrics.keys().collect::<Vec<_>>(), ["json_valid_rate"]);
        let mut bad = fixture();
        bad[1].target = json!("not an object");
        let e = score(&bad, &spec(0, 0)).unwrap_err().to_string();
        assert!(
            e.contains("example \"b\"") && e.contains("not a JSON object"),
            "{e}"
        );
        let r = score(&[], &spec(100, 0)).unwrap();
        assert_eq!(r.examples, 0);
        assert!(r.metrics.is_empty());
    }

    #[test]
    fn percentile_and_rng() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), Some(3.0));
        assert_eq!(percentile(&[0.0, 10.0], 0.025), Some(0.25));
        let mut r = SplitMix64::new(1234567);
        // Reference values of SplitMix64 for seed 1234567.
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        let mut r = SplitMix64::new(0);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[r.below(3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn table_renders() {
        let r = score(&fixture(), &spec(50, 0)).unwrap();
        let t = r.table();
        assert!(t.contains("field_exact_match"), "{t}");
        assert!(t.contains("doc_type=receipt"), "{t}");
        assert!(!t.contains("field_f1/total"), "{t}");
    }
}
