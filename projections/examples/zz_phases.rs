use foundry_events::{RecordView, RecordedEvent};
use foundry_ledger::Home;
use foundry_projections::{State, ViewKind};
use std::collections::BTreeMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = Home::at(std::env::args().nth(1).unwrap());
    let ledger = home.open_ledger()?;
    let t = Instant::now();
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut recs = Vec::new();
    for r in ledger.scan_raw(1) {
        let (_, b) = r?;
        let v = RecordView::decode(&b)?;
        let e = by.entry(v.event_type.to_string()).or_default();
        e.0 += 1;
        e.1 += v.payload.len() as u64;
        recs.push(b);
    }
    println!("scan+view {:.2}", t.elapsed().as_secs_f64());
    for (k, (n, b)) in &by {
        println!("{k:<22} {n:>8} {:>8} KB  avg {}", b >> 10, b / n);
    }
    let t = Instant::now();
    let recorded: Vec<RecordedEvent> = recs
        .iter()
        .map(|b| RecordedEvent::decode(b).unwrap())
        .collect();
    println!("decode records {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let envs: Vec<_> = recorded.iter().map(|r| r.to_envelope().unwrap()).collect();
    println!("to_envelope {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let evs: Vec<_> = recs
        .iter()
        .map(|b| RecordView::decode(b).unwrap().decode_event().unwrap())
        .collect();
    println!("view+payload decode {:.2}", t.elapsed().as_secs_f64());
    drop(evs);
    let t = Instant::now();
    let mut s = State::new();
    for e in &envs {
        s.apply(e);
    }
    println!("fold only {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut enc: Vec<(ViewKind, Vec<(String, Vec<u8>)>)> = Vec::new();
    for k in ViewKind::ALL {
        let mut v = Vec::new();
        s.for_each_entry(k, &mut |key, val| {
            v.push((key.to_string(), val));
            Ok(())
        })?;
        enc.push((k, v));
    }
    println!("encode {:.2}", t.elapsed().as_secs_f64());
    let enc = std::sync::Arc::new(enc);
    for round in 0..2 {
        for mode in [
            "single",
            "single-noflush",
            "two-threads",
            "two-threads-noflush",
        ] {
            let dir = std::env::temp_dir().join("zz_phases_views");
            let _ = std::fs::remove_dir_all(&dir);
            let mut cfg = sled::Config::new()
                .path(&dir)
                .mode(sled::Mode::HighThroughput);
            if mode.ends_with("noflush") {
                cfg = cfg.flush_every_ms(None);
            }
            let db = cfg.open()?;
            let t0 = Instant::now();
            let write = |idx: Vec<usize>| -> Result<(), sled::Error> {
                for i in idx {
                    let (k, v) = &enc[i];
                    let tree = db.open_tree(k.as_str())?;
                    for (key, val) in v {
                        tree.insert(key.as_bytes(), val.as_slice())?;
                    }
                }
                Ok(())
            };
            if mode.starts_with("two") {
                std::thread::scope(|s| {
                    let h = s.spawn(|| write(vec![7, 5, 0, 1, 2]));
                    write(vec![3, 4, 6, 8]).unwrap();
                    h.join().unwrap().unwrap();
                });
            } else {
                write((0..9).collect())?;
            }
            let t = Instant::now();
            db.flush()?;
            println!(
                "round {round} {mode}: flush {:.2}; writes total {:.2}  load {}",
                t.elapsed().as_secs_f64(),
                t0.elapsed().as_secs_f64(),
                std::fs::read_to_string("/proc/loadavg")?.trim()
            );
        }
    }
    Ok(())
}
