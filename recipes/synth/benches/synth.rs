//! Documents per second on one thread, per profile (`cargo bench -p foundry-synth`).
//! For a whole-run figure on N cores see `examples/throughput.rs`.

use criterion::{criterion_group, criterion_main, Criterion};
use foundry_synth::{document, Profile, SynthConfig};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("synth");
    g.sample_size(20);
    for profile in [Profile::Standard, Profile::Tiny] {
        let cfg = SynthConfig::new(profile, 1, 1_000_000);
        let mut i = 0u64;
        g.bench_function(format!("{profile:?}").to_lowercase(), |b| {
            b.iter(|| {
                i += 1;
                document(&cfg, i).map(|d| d.png.len()).unwrap_or(0)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
