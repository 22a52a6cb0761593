//! Ledger throughput: signed, durable appends at batch 1 and 1000 (signing
//! included), and a read + decode + verify pass (hashes, chain, every
//! batch's signature and every event's authorization) over 1M events.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundry_events::{MetricPoint, MetricsLogged, Role};
use foundry_ledger::{AppendRequest, Home, Identity, Ledger, NewEvent};
use std::time::Duration;

fn event(step: u64) -> NewEvent {
    NewEvent::new(MetricsLogged {
        run_id: format!("bench-{}", step % 16),
        points: vec![MetricPoint {
            step,
            loss: 2.0 / (1.0 + step as f64).sqrt(),
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 512,
            tokens_per_s: 2048.0,
            elapsed_ms: step,
        }],
    })
}

fn append(l: &Ledger, id: &Identity, from: u64, n: u64) {
    let events = (from..from + n).map(event).collect();
    l.append_as(id, AppendRequest::new(events)).expect("append");
}

/// A fresh ledger whose root may append anything.
fn ledger(dir: &std::path::Path) -> (Ledger, Identity) {
    let l = Home::at(dir).init().expect("init");
    let id = Identity::generate("bench").expect("key");
    l.init_genesis(&id, Role::ALL, &[]).expect("genesis");
    (l, id)
}

fn bench_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_append");
    g.measurement_time(Duration::from_secs(10)).sample_size(10);
    for batch in [1u64, 1000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (l, id) = ledger(dir.path());
        let mut step = 0;
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                append(&l, &id, step, batch);
                step += batch;
            })
        });
    }
    g.finish();
}

fn bench_verify(c: &mut Criterion) {
    let n = 1_000_000u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (l, id) = ledger(dir.path());
    for chunk in 0..n / 1000 {
        append(&l, &id, chunk * 1000, 1000);
    }
    let mut g = c.benchmark_group("read_decode_verify");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n));
    g.bench_function("1M_events", |b| {
        b.iter(|| {
            let r = l.verify().expect("verify");
            assert!(r.is_ok());
            assert_eq!(r.events, n + 1);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append, bench_verify);
criterion_main!(benches);
