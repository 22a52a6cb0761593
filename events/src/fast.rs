//! A fast decoder for the payload that makes up most of a training
//! ledger: `MetricsLogged`, in exactly the form the ledger writes (a map
//! with each field once, unsigned integers, 64- or 32-bit floats), read
//! without serde's per-field string handling. `None` for anything else,
//! which then goes through serde, so the result never differs from it.

use crate::msgpack::Reader;
use crate::{MetricPoint, MetricsLogged};

/// Sets a field that must appear once.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(v);
            Some(())
        }
    }
}

fn metric_point(r: &mut Reader) -> Option<MetricPoint> {
    let (mut step, mut loss, mut lr, mut grad_norm) = (None, None, None, None);
    let (mut tokens, mut tokens_per_s, mut elapsed_ms) = (None, None, None);
    for _ in 0..r.map().ok()? {
        match r.str().ok()? {
            "step" => once(&mut step, r.uint().ok()?)?,
            "loss" => once(&mut loss, r.f64().ok()?)?,
            "lr" => once(&mut lr, r.f64().ok()?)?,
            "grad_norm" => once(&mut grad_norm, r.f64().ok()?)?,
            "tokens" => once(&mut tokens, r.uint().ok()?)?,
            "tokens_per_s" => once(&mut tokens_per_s, r.f64().ok()?)?,
            "elapsed_ms" => once(&mut elapsed_ms, r.uint().ok()?)?,
            _ => return None,
        }
    }
    Some(MetricPoint {
        step: step?,
        loss: loss?,
        lr: lr?,
        grad_norm: grad_norm?,
        tokens: tokens?,
        tokens_per_s: tokens_per_s?,
        elapsed_ms: elapsed_ms?,
    })
}

/// Decodes a `MetricsLogged` payload on the fast path, or `None`.
pub(crate) fn metrics_logged(payload: &[u8]) -> Option<MetricsLogged> {
    let mut r = Reader::new(payload);
    let (mut run_id, mut points) = (None, None);
    for _ in 0..r.map().ok()? {
        match r.str().ok()? {
            "run_id" => {
                let id = r.str().ok()?.to_string();
                once(&mut run_id, id)?
            }
            "points" => {
                let n = r.array().ok()? as usize;
                // Never trust a length before the bytes are there.
                let mut v = Vec::with_capacity(n.min(payload.len() / 8));
                for _ in 0..n {
                    v.push(metric_point(&mut r)?);
                }
                once(&mut points, v)?
            }
            _ => return None,
        }
    }
    if r.remaining() != 0 {
        return None;
    }
    Some(MetricsLogged {
        run_id: run_id?,
        points: points?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventError, EventType};

    fn point(step: u64) -> MetricPoint {
        MetricPoint {
            step,
            loss: 1.0 / (step as f64 + 1.0),
            lr: 2e-4,
            grad_norm: 0.75,
            tokens: 300 + step * 70_000,
            tokens_per_s: 1234.5,
            elapsed_ms: step * 1_000_003,
        }
    }

    fn serde_decode(bytes: &[u8]) -> Result<Event, EventError> {
        rmp_serde::from_slice::<MetricsLogged>(bytes)
            .map(Event::MetricsLogged)
            .map_err(|e| EventError::Payload {
                event_type: "MetricsLogged",
                reason: e.to_string(),
            })
    }

    #[test]
    fn metrics_fast_path_equals_serde_and_leaves_the_rest_to_it() {
        for n in [0, 1, 15, 16, 70_000] {
            let m = MetricsLogged {
                run_id: format!("run-{n}-é"),
                points: (0..n).map(|i| point(i * 977)).collect(),
            };
            let bytes = rmp_serde::to_vec_named(&m).unwrap();
            assert_eq!(metrics_logged(&bytes).as_ref(), Some(&m));
            assert_eq!(
                serde_decode(&bytes).unwrap(),
                Event::MetricsLogged(m.clone())
            );
            assert_eq!(
                Event::decode_payload(EventType::MetricsLogged, &bytes).unwrap(),
                Event::MetricsLogged(m)
            );
        }
        // Forms the ledger does not write, and damage: no fast path.
        let m = MetricsLogged {
            run_id: "r".into(),
            points: vec![point(3)],
        };
        let named = rmp_serde::to_vec_named(&m).unwrap();
        let positional = rmp_serde::to_vec(&m).unwrap();
        let mut extra = named.clone();
        extra.push(0xc0);
        let mut dup = named.clone();
        dup[0] += 1; // one more entry than there is: runs out of bytes
        let mut renamed = named.clone();
        let at = named.windows(4).position(|w| w == b"step").unwrap();
        renamed[at] = b'S';
        let cases: [&[u8]; 6] = [
            &positional,
            &extra,
            &dup,
            &renamed,
            &named[..named.len() - 1],
            &[],
        ];
        for bytes in cases {
            assert_eq!(metrics_logged(bytes), None);
        }
        // serde still gets the last word on those: same result as before.
        assert_eq!(
            Event::decode_payload(EventType::MetricsLogged, &positional).unwrap(),
            Event::MetricsLogged(m.clone())
        );
        assert!(
            Event::decode_payload(EventType::MetricsLogged, &named[..named.len() - 1]).is_err()
        );
        // A field given twice is refused by both.
        let mut twice = vec![0x83];
        twice.extend_from_slice(&named[1..]);
        twice.extend_from_slice(&rmp_serde::to_vec("run_id").unwrap());
        twice.extend_from_slice(&rmp_serde::to_vec("again").unwrap());
        assert_eq!(metrics_logged(&twice), None);
        assert!(serde_decode(&twice).is_err());
        // Integers in other widths and 32-bit floats are read like serde does.
        let mut wide = vec![0x82];
        wide.extend_from_slice(&rmp_serde::to_vec("run_id").unwrap());
        wide.extend_from_slice(&rmp_serde::to_vec("r").unwrap());
        wide.extend_from_slice(&rmp_serde::to_vec("points").unwrap());
        wide.extend_from_slice(&[0x91, 0x87]);
        for (k, v) in [
            ("step", vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 9]),
            ("loss", vec![0xca, 0x3f, 0x00, 0x00, 0x00]),
            (
                "lr",
                vec![0xcb, 0x3f, 0x1a, 0x36, 0xe2, 0xeb, 0x1c, 0x43, 0x2d],
            ),
            ("grad_norm", vec![0xcb, 0x3f, 0xe8, 0, 0, 0, 0, 0, 0]),
            ("tokens", vec![0xcd, 0x01, 0x00]),
            ("tokens_per_s", vec![0xcb, 0x40, 0x59, 0, 0, 0, 0, 0, 0]),
            ("elapsed_ms", vec![0xce, 0, 1, 0, 0]),
        ] {
            wide.extend_from_slice(&rmp_serde::to_vec(k).unwrap());
            wide.extend_from_slice(&v);
        }
        let fast = metrics_logged(&wide).unwrap();
        assert_eq!(fast.points[0].step, 9);
        assert_eq!(fast.points[0].loss, 0.5);
        assert_eq!(fast.points[0].tokens, 256);
        assert_eq!(fast.points[0].elapsed_ms, 65536);
        assert_eq!(serde_decode(&wide).unwrap(), Event::MetricsLogged(fast));
    }
}
