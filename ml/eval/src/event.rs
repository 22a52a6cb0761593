//! Turning a report into the EvalScored event that promotions are gated on.

use foundry_events::{CodeVersion, DeviceInfo, EvalScored, Sha256Digest};

use crate::metrics::EvalReport;
use crate::spec::EvalSpec;

/// What the event needs besides the report: who was evaluated on what, and where.
#[derive(Debug, Clone)]
pub struct EvalIdentity {
    /// The eval's id.
    pub eval_id: String,
    /// The checkpoint, or `None` for the base model.
    pub checkpoint_id: Option<String>,
    /// The run the checkpoint belongs to.
    pub run_id: Option<String>,
    /// The base model.
    pub model_id: String,
    /// The pinned dataset.
    pub dataset_id: String,
    /// Hash of the split's shards.
    pub split_sha256: Sha256Digest,
    /// The code that scored.
    pub code: CodeVersion,
    /// The device it ran on.
    pub device: DeviceInfo,
}

impl EvalReport {
    /// The EvalScored event of this report under `spec` (its split and hash are taken from
    /// the spec, so the event cannot carry a hash of another spec).
    pub fn to_event(&self, spec: &EvalSpec, id: EvalIdentity) -> EvalScored {
        EvalScored {
            eval_id: id.eval_id,
            checkpoint_id: id.checkpoint_id,
            run_id: id.run_id,
            model_id: id.model_id,
            dataset_id: id.dataset_id,
            split: spec.split.clone(),
            split_sha256: id.split_sha256,
            eval_spec_sha256: spec.sha256(),
            examples: self.examples,
            metrics: self.metrics.clone(),
            breakdown: self.breakdown.clone(),
            latency_ms_mean: self.latency_ms_mean,
            throughput_docs_per_s: self.throughput_docs_per_s,
            code: id.code,
            device: id.device,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{score, Prediction};
    use foundry_events::Event;
    use serde_json::json;

    #[test]
    fn report_becomes_an_eval_scored_event() {
        let mut spec = EvalSpec::default();
        spec.bootstrap.resamples = 20;
        let preds = vec![Prediction {
            id: "0".into(),
            doc_type: "invoice".into(),
            layout: "invoice-a".into(),
            target: json!({"total": 5}),
            raw: "{\"total\": \"5.00\"}".into(),
            latency_ms: 4.0,
        }];
        let r = score(&preds, &spec).unwrap();
        let e = r.to_event(
            &spec,
            EvalIdentity {
                eval_id: "ev1".into(),
                checkpoint_id: Some("ck1".into()),
                run_id: Some("run1".into()),
                model_id: "m".into(),
                dataset_id: "d".into(),
                split_sha256: Sha256Digest::of(b"split"),
                code: CodeVersion::default(),
                device: DeviceInfo::default(),
            },
        );
        assert_eq!(e.eval_spec_sha256, spec.sha256());
        assert_eq!(e.eval_spec_sha256.to_hex(), r.eval_spec_sha256);
        assert_eq!(e.split, "test");
        assert_eq!(e.examples, 1);
        assert_eq!(e.metrics["field_exact_match"].value, 1.0);
        assert!(e.breakdown.contains_key("layout=invoice-a"));
        assert_eq!(e.latency_ms_mean, 4.0);
        // The event goes through the catalog's envelope encoding.
        let ev = Event::EvalScored(e.clone());
        assert_eq!(ev.default_stream(), "eval/ev1");
    }
}
