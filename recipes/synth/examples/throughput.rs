//! Writes N documents to a temporary dir and prints documents/s:
//! `RAYON_NUM_THREADS=2 cargo run --release -p foundry-synth --example throughput -- standard 2000 [jsonl|parquet]`.

use std::time::Instant;

use foundry_synth::{generate, Format, Profile, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let profile = Profile::parse(args.get(1).map_or("standard", String::as_str))?;
    let count: u64 = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let mut cfg = SynthConfig::new(profile, 42, count);
    if args.get(3).is_some_and(|f| f == "parquet") {
        cfg.format = Format::Parquet;
    }
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let s = generate(&cfg, dir.path())?;
    let secs = t.elapsed().as_secs_f64();
    let rate = s.documents as f64 / secs;
    println!(
        "{profile:?} {:?}: {} documents in {secs:.2} s on {} threads = {rate:.1} docs/s; 107k documents: {:.1} min",
        cfg.format,
        s.documents,
        rayon::current_num_threads(),
        107_000.0 / rate / 60.0
    );
    Ok(())
}
