use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    for &(n, size, sorted) in &[
        (100_000usize, 550usize, true),
        (100_000, 550, false),
        (100_000, 120, true),
        (50_000, 1100, true),
        (25_000, 1500, true),
    ] {
        let dir = std::env::temp_dir().join("zz_sled");
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::Config::new()
            .path(&dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let t = db.open_tree("x")?;
        let v = vec![7u8; size];
        let t0 = Instant::now();
        for i in 0..n {
            t.insert(
                format!(
                    "checkpoint:{:064x}",
                    if sorted { i } else { i * 7919 % 1_000_003 }
                )
                .as_bytes(),
                v.as_slice(),
            )?;
        }
        let a = t0.elapsed().as_secs_f64();
        db.flush()?;
        println!(
            "{n} x {size} B sorted {sorted}: insert {a:.2} s, +flush {:.2} s; {:.1} us/insert",
            t0.elapsed().as_secs_f64(),
            a * 1e6 / n as f64
        );
    }
    Ok(())
}
