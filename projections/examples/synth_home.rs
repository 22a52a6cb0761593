//! Creates a Foundry home holding a seeded, plausible history, for demos
//! and manual checks: `cargo run --release -p foundry-projections
//! --example synth_home -- HOME EVENTS [SEED]`.

use foundry_ledger::Home;
use foundry_projections::histories::append_synthetic;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let home = args.next().ok_or("usage: synth_home HOME EVENTS [SEED]")?;
    let events: u64 = args
        .next()
        .ok_or("usage: synth_home HOME EVENTS [SEED]")?
        .parse()?;
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(42);
    let ledger = Home::at(&home).init()?;
    let t = Instant::now();
    let head = append_synthetic(&ledger, seed, events, 2000, |_| Ok(()))?;
    println!(
        "{home}: head seq {head} after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
