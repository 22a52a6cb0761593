//! Promotion gates: `<metric> <op> <number>`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A comparison operator of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateOp {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

/// One parsed gate, e.g. `field_exact_match >= 0.94`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Metric name.
    pub metric: String,
    /// Operator.
    pub op: GateOp,
    /// Threshold.
    pub threshold: f64,
}

impl Gate {
    /// Whether `value` passes the gate.
    pub fn passes(&self, value: f64) -> bool {
        match self.op {
            GateOp::Ge => value >= self.threshold,
            GateOp::Gt => value > self.threshold,
            GateOp::Le => value <= self.threshold,
            GateOp::Lt => value < self.threshold,
        }
    }
}

impl FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("cannot parse {s:?} (expected \"<metric> >= <number>\")");
        let (op, at, len) = [
            (">=", GateOp::Ge),
            ("<=", GateOp::Le),
            (">", GateOp::Gt),
            ("<", GateOp::Lt),
        ]
        .iter()
        .find_map(|(tok, op)| s.find(tok).map(|i| (*op, i, tok.len())))
        .ok_or_else(bad)?;
        let metric = s[..at].trim();
        let number = s[at + len..].trim();
        let valid_metric = !metric.is_empty()
            && metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        let threshold: f64 = number.parse().map_err(|_| bad())?;
        if !valid_metric || !threshold.is_finite() {
            return Err(bad());
        }
        Ok(Gate {
            metric: metric.to_string(),
            op,
            threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_evaluates() {
        let g: Gate = "field_exact_match >= 0.94".parse().unwrap();
        assert_eq!(g.op, GateOp::Ge);
        assert!(g.passes(0.94) && !g.passes(0.9399));
        let g: Gate = "cer<0.1".parse().unwrap();
        assert_eq!((g.metric.as_str(), g.op), ("cer", GateOp::Lt));
        assert!("foo >= x".parse::<Gate>().is_err());
        assert!(">= 1".parse::<Gate>().is_err());
        assert!("a b >= 1".parse::<Gate>().is_err());
    }
}
