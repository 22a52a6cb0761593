//! Times the phases of a full rebuild of a home's views:
//! `cargo run --release -p foundry-projections --example fold_time -- HOME`.

use foundry_ledger::Home;
use foundry_projections::{fold_until, Bound, ViewStore};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = Home::at(std::env::args().nth(1).ok_or("usage: fold_time HOME")?);
    let ledger = home.open_ledger()?;
    let t = Instant::now();
    let mut n = 0u64;
    for r in ledger.scan_raw(1) {
        r?;
        n += 1;
    }
    println!(
        "scan raw     {n} records {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for r in ledger.iter_from(1) {
        r?.to_envelope()?;
    }
    println!("decode       {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let state = fold_until(&ledger, Bound::Head)?;
    println!("fold         {:.2} s", t.elapsed().as_secs_f64());
    for kind in foundry_projections::ViewKind::ALL {
        let (mut n, mut bytes, mut max) = (0u64, 0usize, 0usize);
        let t = Instant::now();
        state.for_each_entry(kind, &mut |_, v| {
            n += 1;
            bytes += v.len();
            max = max.max(v.len());
            Ok(())
        })?;
        println!(
            "{kind:<12} {n:>7} entries {:>6} KB (largest {} KB) encoded in {:.2} s",
            bytes >> 10,
            max >> 10,
            t.elapsed().as_secs_f64()
        );
    }
    let dir = std::env::temp_dir().join("fold_time_views");
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = ViewStore::open_dir(&dir)?;
    let t = Instant::now();
    let (w, _) = store.write_all(&state)?;
    println!(
        "write fresh  {w} entries {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (w, changed) = store.write_all(&state)?;
    println!(
        "write again  {w} entries ({changed} changed) {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
