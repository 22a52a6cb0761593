//! Scoring one document: parse the model's answer, compare it field by field with the
//! target, match table rows one to one. Pure functions, no model.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{EvalError, Result};
use crate::normalize::{nls, normalize, DateOrder, Norm};

/// What scoring needs from the eval spec.
#[derive(Debug, Clone)]
pub struct ScoreConfig {
    /// How all-numeric dates are read.
    pub date_order: DateOrder,
    /// Free-text field names scored with ANLS (top level and inside table rows).
    pub anls_fields: BTreeSet<String>,
    /// ANLS threshold (0.5 in the literature).
    pub anls_threshold: f64,
}

/// Tables with more than this many target × predicted row pairs are matched greedily
/// instead of optimally (the Hungarian algorithm is cubic).
pub const OPTIMAL_MATCH_MAX_PAIRS: usize = 40_000;

/// Special tokens a decoder may leave at the end of an answer.
const TRAILING_TOKENS: &[&str] = &["<end_of_utterance>", "</s>", "<|endoftext|>"];

/// Parses a model answer into a JSON object. Surrounding whitespace and trailing stop
/// tokens (`<end_of_utterance>`, `</s>`) are tolerated; anything else that is not exactly
/// one JSON object (truncated, trailing text, an array) is invalid, with the reason.
pub fn parse_prediction(raw: &str) -> std::result::Result<Map<String, Value>, String> {
    let mut s = raw.trim();
    loop {
        let before = s;
        for t in TRAILING_TOKENS {
            if let Some(r) = s.strip_suffix(t) {
                s = r.trim_end();
            }
        }
        if s == before {
            break;
        }
    }
    if s.is_empty() {
        return Err("empty answer".into());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "answer is JSON but not an object ({})",
            kind(&other)
        )),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// True positives, false positives and false negatives of one field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prf {
    /// Predicted, present in the target, and equal after normalization.
    pub tp: u64,
    /// Predicted (non-null) but wrong, or not in the target.
    pub fp: u64,
    /// In the target (non-null) but missing or wrong.
    pub fn_: u64,
}

impl Prf {
    /// Adds another count.
    pub fn add(&mut self, o: &Prf) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
}

/// Everything measured on one document; metrics are ratios of sums of these.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DocScore {
    /// The answer parsed as a JSON object.
    pub json_valid: bool,
    /// Why it did not, when it did not.
    pub invalid_reason: Option<String>,
    /// Top-level fields in the target (null-valued ones included).
    pub fields_total: u64,
    /// Of those, fields whose prediction equals the target after normalization.
    pub fields_matched: u64,
    /// Valid, every target field matched and no extra field.
    pub doc_exact: bool,
    /// Non-null predicted top-level fields that the target does not have.
    pub extra_fields: u64,
    /// Counts per target field name.
    pub per_field: BTreeMap<String, Prf>,
    /// Sum of ANLS scores of free-text values in the target.
    pub anls_sum: f64,
    /// Number of free-text values in the target.
    pub anls_count: u64,
    /// Table cells (non-null) predicted equal to the matched target row's cell.
    pub cells_tp: u64,
    /// Table cells predicted (non-null; a row that is not an object counts as one).
    pub cells_pred: u64,
    /// Table cells (non-null) in the target.
    pub cells_target: u64,
    /// Target rows whose matched predicted row is exactly equal.
    pub rows_exact: u64,
    /// Target rows.
    pub rows_target: u64,
}

/// Whether a target value is a table: an array whose elements are all objects.
fn is_table(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.iter().all(Value::is_object))
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Scores one document. Errors only when the *target* is not a JSON object; the
/// prediction can be anything.
pub fn score_document(target: &Value, raw_prediction: &str, cfg: &ScoreConfig) -> Result<DocScore> {
    let target = target.as_object().ok_or_else(|| {
        EvalError::Input(format!("target is not a JSON object ({})", kind(target)))
    })?;
    let mut s = DocScore::default();
    let pred = match parse_prediction(raw_prediction) {
        Ok(m) => {
            s.json_valid = true;
            Some(m)
        }
        Err(reason) => {
            s.invalid_reason = Some(reason);
            None
        }
    };
    for (k, t) in target {
        let p = pred.as_ref().and_then(|m| m.get(k));
        let t_present = !t.is_null();
        let p_present = p.is_some_and(|v| !v.is_null());
        let matched = if let (true, Value::Array(rows)) = (is_table(t), t) {
            let ts = score_table(rows, p, cfg);
            s.cells_tp += ts.cells_tp;
            s.cells_pred += ts.cells_pred;
            s.cells_target += ts.cells_target;
            s.rows_exact += ts.rows_exact;
            s.rows_target += rows.len() as u64;
            s.anls_sum += ts.anls_sum;
            s.anls_count += ts.anls_count;
            ts.all_exact
        } else {
            if cfg.anls_fields.contains(k) {
                if let Value::String(ts) = t {
                    s.anls_count += 1;
                    s.anls_sum += nls(&as_text(p), ts, cfg.anls_threshold);
                }
            }
            normalize(t, cfg.date_order) == normalize(p.unwrap_or(&Value::Null), cfg.date_order)
        };
        s.fields_total += 1;
        let prf = s.per_field.entry(k.clone()).or_default();
        if matched {
            s.fields_matched += 1;
            prf.tp += u64::from(t_present);
        } else {
            prf.fp += u64::from(p_present);
            prf.fn_ += u64::from(t_present);
        }
    }
    if let Some(m) = &pred {
        s.extra_fields = m
            .iter()
            .filter(|(k, v)| !v.is_null() && !target.contains_key(*k))
            .count() as u64;
    }
    s.doc_exact = s.json_valid && s.fields_matched == s.fields_total && s.extra_fields == 0;
    Ok(s)
}

/// The outcome of matching one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableScore {
    /// Equal cells in matched rows.
    pub cells_tp: u64,
    /// Predicted cells.
    pub cells_pred: u64,
    /// Target cells.
    pub cells_target: u64,
    /// Exactly matched target rows.
    pub rows_exact: u64,
    /// Same number of rows and every row exactly matched.
    pub all_exact: bool,
    /// ANLS sum over free-text cells of the target.
    pub anls_sum: f64,
    /// Free-text cells of the target.
    pub anls_count: u64,
}

/// Matches predicted rows to target rows one to one (maximizing the number of equal
/// cells, free-text cells counting their ANLS similarity, with a tiny penalty for extra
/// cells) and counts cells and exact rows.
pub fn score_table(target_rows: &[Value], pred: Option<&Value>, cfg: &ScoreConfig) -> TableScore {
    let empty = Map::new();
    let t_raw: Vec<&Map<String, Value>> = target_rows
        .iter()
        .map(|r| r.as_object().unwrap_or(&empty))
        .collect();
    let t_norm: Vec<BTreeMap<String, Norm>> = t_raw.iter().map(|r| norm_row(r, cfg)).collect();
    let mut out = TableScore::default();
    let p_rows: Vec<&Value> = match pred {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            out.cells_pred += 1;
            Vec::new()
        }
    };
    let p_raw: Vec<Option<&Map<String, Value>>> = p_rows.iter().map(|r| r.as_object()).collect();
    let p_norm: Vec<Option<BTreeMap<String, Norm>>> =
        p_raw.iter().map(|r| r.map(|m| norm_row(m, cfg))).collect();
    for p in &p_norm {
        out.cells_pred += p.as_ref().map_or(1, |m| m.len() as u64);
    }
    let (n, m) = (t_norm.len(), p_norm.len());
    let sim = |i: usize, j: usize| -> f64 {
        let Some(pr) = &p_norm[j] else { return 0.0 };
        let mut s = 0.0;
        for (k, tv) in &t_norm[i] {
            if pr.get(k) == Some(tv) {
                s += 1.0;
            } else if cfg.anls_fields.contains(k) {
                if let (Some(Value::String(a)), Some(Value::String(b))) =
                    (p_raw[j].and_then(|r| r.get(k)), t_raw[i].get(k))
                {
                    s += nls(a, b, cfg.anls_threshold);
                }
            }
        }
        let extra = pr.keys().filter(|k| !t_norm[i].contains_key(*k)).count();
        s - 0.001 * extra as f64
    };
    let sims: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..m).map(|j| sim(i, j)).collect())
        .collect();
    let assign = if n * m <= OPTIMAL_MATCH_MAX_PAIRS {
        assign_max(&sims, n, m)
    } else {
        assign_greedy(&sims, n, m)
    };
    out.cells_target = t_norm.iter().map(|r| r.len() as u64).sum();
    for i in 0..n {
        let pr = assign[i].and_then(|j| p_norm[j].as_ref());
        let equal = t_norm[i]
            .iter()
            .filter(|(k, v)| pr.and_then(|p| p.get(*k)) == Some(*v))
            .count();
        out.cells_tp += equal as u64;
        if let Some(p) = pr {
            if equal == t_norm[i].len() && p.len() == t_norm[i].len() {
                out.rows_exact += 1;
            }
        }
        for (k, tv) in t_raw[i] {
            if let (true, Value::String(ts)) = (cfg.anls_fields.contains(k), tv) {
                out.anls_count += 1;
                let pv = assign[i].and_then(|j| p_raw[j]).and_then(|r| r.get(k));
                if assign[i].is_some() {
                    out.anls_sum += nls(&as_text(pv), ts, cfg.anls_threshold);
                }
            }
        }
    }
    out.all_exact = n == m && out.rows_exact == n as u64;
    out
}

fn norm_row(r: &Map<String, Value>, cfg: &ScoreConfig) -> BTreeMap<String, Norm> {
    r.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), normalize(v, cfg.date_order)))
        .collect()
}

/// One-to-one assignment of `n` rows to `m` columns maximizing the total of `sims`
/// (Hungarian algorithm, O(min² · max)). Returns each row's column, `None` for rows left
/// over when `n > m`.
pub fn assign_max(sims: &[Vec<f64>], n: usize, m: usize) -> Vec<Option<usize>> {
    if n == 0 || m == 0 {
        return vec![None; n];
    }
    if n > m {
        let t: Vec<Vec<f64>> = (0..m)
            .map(|j| (0..n).map(|i| sims[i][j]).collect())
            .collect();
        let cols = hungarian_min(&t, m, n, true);
        let mut out = vec![None; n];
        for (j, i) in cols.into_iter().enumerate() {
            out[i] = Some(j);
        }
        return out;
    }
    hungarian_min(sims, n, m, true)
        .into_iter()
        .map(Some)
        .collect()
}

/// The e-maxx Hungarian algorithm on an `n × m` matrix, `n <= m`; `negate` turns
/// similarities into costs. Returns the column of each row.
fn hungarian_min(a: &[Vec<f64>], n: usize, m: usize, negate: bool) -> Vec<usize> {
    let cost = |i: usize, j: usize| if negate { -a[i][j] } else { a[i][j] };
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut ans = vec![0usize; n];
    for j in 1..=m {
        if p[j] != 0 {
            ans[p[j] - 1] = j - 1;
        }
    }
    ans
}

/// Greedy one-to-one assignment: pairs in order of decreasing similarity (ties by row,
/// then column). Used for very large tables.
pub fn assign_greedy(sims: &[Vec<f64>], n: usize, m: usize) -> Vec<Option<usize>> {
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..m).map(move |j| (i, j))).collect();
    pairs.sort_by(|a, b| sims[b.0][b.1].total_cmp(&sims[a.0][a.1]).then(a.cmp(b)));
    let mut out = vec![None; n];
    let mut taken = vec![false; m];
    for (i, j) in pairs {
        if out[i].is_none() && !taken[j] {
            out[i] = Some(j);
            taken[j] = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn cfg() -> ScoreConfig {
        ScoreConfig {
            date_order: DateOrder::DayFirst,
            anls_fields: ["vendor", "description", "merchant"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            anls_threshold: 0.5,
        }
    }

    #[test]
    fn parse_tolerates_whitespace_and_stop_tokens_only() {
        assert!(parse_prediction(" {\"a\": 1}\n<end_of_utterance>").is_ok());
        assert!(parse_prediction("{\"a\": 1}<end_of_utterance></s>  ").is_ok());
        assert!(parse_prediction("\n\t{}\n").is_ok());
        let truncated = parse_prediction("{\"a\": 1, \"b\": \"x").unwrap_err();
        assert!(truncated.starts_with("not JSON: EOF"), "{truncated}");
        assert!(parse_prediction("{\"a\": 1} trailing").is_err());
        assert!(parse_prediction("Sure! {\"a\": 1}").is_err());
        assert_eq!(
            parse_prediction("[1, 2]").unwrap_err(),
            "answer is JSON but not an object (array)"
        );
        assert_eq!(
            parse_prediction("  <end_of_utterance>").unwrap_err(),
            "empty answer"
        );
        // Deep nesting is rejected by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_prediction(&deep).is_err());
    }

    #[test]
    fn fields_are_compared_after_normalization() {
        let target = json!({
            "vendor": "ACME Corp",
            "date": "2024-03-05",
            "total": 1234.5,
            "currency": "USD",
            "due_date": null
        });
        let pred = r#"{"vendor": " acme  corp ", "date": "5 Mar 2024", "total": "$1,234.50",
                       "currency": "usd"}<end_of_utterance>"#;
        let s = score_document(&target, pred, &cfg()).unwrap();
        assert!(s.json_valid);
        assert_eq!((s.fields_matched, s.fields_total), (5, 5));
        assert!(s.doc_exact);
        assert_eq!(
            s.per_field["total"],
            Prf {
                tp: 1,
                fp: 0,
                fn_: 0
            }
        );
        // Null target and absent prediction match but count in neither precision nor recall.
        assert_eq!(s.per_field["due_date"], Prf::default());
        assert_eq!((s.anls_sum, s.anls_count), (1.0, 1));
    }

    #[test]
    fn missing_wrong_and_extra_fields() {
        let target = json!({"vendor": "ACME", "total": 10, "tax": 1, "due_date": null});
        let pred =
            r#"{"vendor": "ACME", "total": 11, "due_date": "2024-01-01", "note": "hi", "x": null}"#;
        let s = score_document(&target, pred, &cfg()).unwrap();
        assert_eq!((s.fields_matched, s.fields_total), (1, 4));
        assert_eq!(
            s.per_field["vendor"],
            Prf {
                tp: 1,
                fp: 0,
                fn_: 0
            }
        );
        // Wrong value: both a false positive and a false negative.
        assert_eq!(
            s.per_field["total"],
            Prf {
                tp: 0,
                fp: 1,
                fn_: 1
            }
        );
        // Missing: a false negative.
        assert_eq!(
            s.per_field["tax"],
            Prf {
                tp: 0,
                fp: 0,
                fn_: 1
            }
        );
        // Predicted where the target has null: a false positive.
        assert_eq!(
            s.per_field["due_date"],
            Prf {
                tp: 0,
                fp: 1,
                fn_: 0
            }
        );
        // `note` is extra; the null `x` is not.
        assert_eq!(s.extra_fields, 1);
        assert!(!s.doc_exact);
    }

    #[test]
    fn extra_field_alone_breaks_document_exact_match() {
        let target = json!({"total": 10});
        let s = score_document(&target, r#"{"total": "10.00", "tip": 1}"#, &cfg()).unwrap();
        assert_eq!(
            (s.fields_matched, s.fields_total, s.extra_fields),
            (1, 1, 1)
        );
        assert!(!s.doc_exact);
    }

    #[test]
    fn invalid_and_truncated_json_scores_everything_wrong() {
        let target = json!({"vendor": "ACME", "total": 10, "line_items": [{"description": "a", "amount": 1}]});
        for raw in [
            "",
            "garbage",
            "{\"vendor\": \"ACME\", \"total\": 1",
            "<image><image>",
        ] {
            let s = score_document(&target, raw, &cfg()).unwrap();
            assert!(!s.json_valid);
            assert!(s.invalid_reason.is_some());
            assert_eq!((s.fields_matched, s.fields_total), (0, 3));
            assert_eq!((s.cells_tp, s.cells_pred, s.cells_target), (0, 0, 2));
            assert_eq!((s.anls_sum, s.anls_count), (0.0, 2));
            assert!(!s.doc_exact);
        }
        assert!(score_document(&json!([1]), "{}", &cfg()).is_err());
    }

    #[test]
    fn table_rows_match_regardless_of_order() {
        let target = json!({"line_items": [
            {"description": "Widget", "qty": 2, "amount": "10.00"},
            {"description": "Gadget", "qty": 1, "amount": "5.50"}
        ]});
        let pred = r#"{"line_items": [
            {"description": "gadget", "qty": "1", "amount": 5.5},
            {"description": "widget", "qty": 2, "amount": "$10"}
        ]}"#;
        let s = score_document(&target, pred, &cfg()).unwrap();
        assert_eq!((s.cells_tp, s.cells_pred, s.cells_target), (6, 6, 6));
        assert_eq!((s.rows_exact, s.rows_target), (2, 2));
        assert_eq!(s.fields_matched, 1);
        assert!(s.doc_exact);
    }

    #[test]
    fn table_partial_match_counts_cells() {
        let target = json!({"line_items": [
            {"description": "Widget", "qty": 2, "amount": 10},
            {"description": "Gadget", "qty": 1, "amount": 5}
        ]});
        // One row right, one row with a wrong amount and a typo, one extra row, one non-object.
        let pred = r#"{"line_items": [
            {"description": "Gadgef", "qty": 1, "amount": 6},
            {"description": "Widget", "qty": 2, "amount": 10},
            {"description": "Extra", "qty": 9, "amount": 9},
            "junk"
        ]}"#;
        let s = score_document(&target, pred, &cfg()).unwrap();
        // Widget row: 3 cells; Gadget row: qty only.
        assert_eq!(s.cells_tp, 4);
        assert_eq!(s.cells_pred, 3 + 3 + 3 + 1);
        assert_eq!(s.cells_target, 6);
        assert_eq!((s.rows_exact, s.rows_target), (1, 2));
        assert_eq!(s.fields_matched, 0);
        // ANLS over the two descriptions: 1 and 1 - 1/6.
        assert_eq!(s.anls_count, 2);
        assert!((s.anls_sum - (2.0 - 1.0 / 6.0)).abs() < 1e-12);
    }

    #[test]
    fn table_not_an_array_and_missing_rows() {
        let target = json!({"transactions": [{"date": "2024-01-02", "amount": -5}]});
        let s = score_document(&target, r#"{"transactions": "none"}"#, &cfg()).unwrap();
        assert_eq!((s.cells_tp, s.cells_pred, s.cells_target), (0, 1, 2));
        assert_eq!(
            s.per_field["transactions"],
            Prf {
                tp: 0,
                fp: 1,
                fn_: 1
            }
        );
        let s = score_document(&target, r#"{"transactions": []}"#, &cfg()).unwrap();
        assert_eq!((s.cells_tp, s.cells_pred, s.cells_target), (0, 0, 2));
        // An empty target table matched by an empty prediction.
        let s =
            score_document(&json!({"line_items": []}), r#"{"line_items": []}"#, &cfg()).unwrap();
        assert_eq!(s.fields_matched, 1);
        assert!(s.doc_exact);
    }

    #[test]
    fn hungarian_beats_greedy() {
        // Greedy takes (0,0)=3 then (1,1)=0: 3. The optimum is (0,1)+(1,0) = 4.
        let sims = vec![vec![3.0, 2.0], vec![2.0, 0.0]];
        assert_eq!(assign_greedy(&sims, 2, 2), vec![Some(0), Some(1)]);
        assert_eq!(assign_max(&sims, 2, 2), vec![Some(1), Some(0)]);
        // More rows than columns: one row is left over.
        let sims = vec![vec![1.0], vec![5.0], vec![2.0]];
        assert_eq!(assign_max(&sims, 3, 1), vec![None, Some(0), None]);
        // More columns than rows.
        let sims = vec![vec![0.0, 1.0, 7.0]];
        assert_eq!(assign_max(&sims, 1, 3), vec![Some(2)]);
        assert_eq!(assign_max(&[], 0, 3), Vec::<Option<usize>>::new());
    }

    #[test]
    fn hungarian_is_optimal_on_random_matrices() {
        // Brute force over permutations of small square matrices.
        fn perms(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for p in perms(n - 1) {
                for pos in 0..=p.len() {
                    let mut q = p.clone();
                    q.insert(pos, n - 1);
                    out.push(q);
                }
            }
            out
        }
        let mut x: u64 = 7;
        for n in 1..=5 {
            for _ in 0..20 {
                let sims: Vec<Vec<f64>> = (0..n)
                    .map(|_| {
                        (0..n)
                            .map(|_| {
                                x = x
                                    .wrapping_mul(6364136223846793005)
                                    .wrapping_add(1442695040888963407);
                                ((x >> 33) % 5) as f64
                            })
                            .collect()
                    })
                    .collect();
                let best = perms(n)
                    .iter()
                    .map(|p| (0..n).map(|i| sims[i][p[i]]).sum::<f64>())
                    .fold(f64::MIN, f64::max);
                let a = assign_max(&sims, n, n);
                let got: f64 = (0..n).map(|i| sims[i][a[i].unwrap()]).sum();
                assert_eq!(got, best);
            }
        }
    }
}
