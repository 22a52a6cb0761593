use foundry_ledger::Home;
use foundry_projections::{fold_until, Bound};
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = Home::at(std::env::args().nth(1).unwrap());
    let ledger = home.open_ledger()?;
    for _ in 0..2 {
        let t = Instant::now();
        let s = fold_until(&ledger, Bound::Head)?;
        println!("fold {:.2}", t.elapsed().as_secs_f64());
        let t = Instant::now();
        drop(s);
        println!("drop {:.2}", t.elapsed().as_secs_f64());
    }
    Ok(())
}
