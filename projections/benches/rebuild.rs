//! Full rebuild of every projection from a 1M-event ledger (goal: ≤ 5 s).
//!
//! The ledger is generated once (seeded, plausible history) in a temporary
//! home. Measured: the fold alone (in memory, what `--at`/`--until` reads),
//! a rebuild into empty views (every entry inserted), and a rebuild over
//! views that are already right (`ledger replay`: every entry compared,
//! none written). `FOUNDRY_BENCH_EVENTS` overrides the size.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use foundry_ledger::Home;
use foundry_projections::histories::append_synthetic;
use foundry_projections::{fold_until, Bound, ViewStore};
use std::time::{Duration, Instant};

fn rebuild(c: &mut Criterion) {
    let events: u64 = std::env::var("FOUNDRY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::at(dir.path().join("home"));
    let ledger = home.init().expect("init");
    let t = Instant::now();
    let head = append_synthetic(&ledger, 42, events, 5000, |_| Ok(())).expect("append");
    eprintln!(
        "generated {head} events in {:.1} s ({} MB on disk)",
        t.elapsed().as_secs_f64(),
        ledger.size_on_disk() >> 20
    );
    let mut store = ViewStore::open(&home).expect("views");

    let mut g = c.benchmark_group("projections");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(40));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function(format!("fold_in_memory_{events}"), |b| {
        b.iter(|| fold_until(&ledger, Bound::Head).expect("fold"))
    });
    let scratch = dir.path().join("empty_views");
    g.bench_function(format!("rebuild_into_empty_views_{events}"), |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&scratch);
                ViewStore::open_dir(&scratch).expect("empty views")
            },
            // The store goes back to criterion, which drops it untimed.
            |mut empty| {
                let r = empty.rebuild(&ledger).expect("rebuild");
                (empty, r)
            },
            BatchSize::PerIteration,
        )
    });
    store.rebuild(&ledger).expect("rebuild");
    g.bench_function(format!("rebuild_over_existing_views_{events}"), |b| {
        b.iter(|| store.rebuild(&ledger).expect("rebuild"))
    });
    g.finish();
    let d = store.digests().expect("digests");
    for v in d {
        eprintln!(
            "{:<12} {:>8} entries  {}",
            v.view,
            v.entries,
            &v.sha256[..16]
        );
    }
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
