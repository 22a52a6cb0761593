//! Times a full rebuild of every view of a home (what `ledger replay` does
//! after its catch-up), phase by phase, with the process's CPU time and the
//! machine's load (the figures are meaningless without it), and prints each
//! view's digest:
//! `cargo run --release -p foundry-projections --example rebuild_time -- HOME [ROUNDS]`.

use foundry_ledger::Home;
use foundry_projections::{fold_until, Bound, ViewStore};
use std::time::Instant;

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let home = Home::at(args.next().ok_or("usage: rebuild_time HOME [ROUNDS]")?);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let ledger = home.open_ledger()?;
    let mut store = ViewStore::open(&home)?;
    let scratch = std::env::temp_dir().join(format!("rebuild_time_{}", std::process::id()));
    for _ in 0..rounds {
        let (t, c) = (Instant::now(), cpu_s());
        let state = fold_until(&ledger, Bound::Head)?;
        let (fold_s, fold_cpu) = (t.elapsed().as_secs_f64(), cpu_s() - c);
        let _ = std::fs::remove_dir_all(&scratch);
        let mut empty = ViewStore::open_dir(&scratch)?;
        let (t, c) = (Instant::now(), cpu_s());
        empty.write_all(&state)?;
        let (write_s, write_cpu) = (t.elapsed().as_secs_f64(), cpu_s() - c);
        std::thread::spawn(move || drop(state));
        println!(
            "phases       fold {fold_s:.2} s (cpu {fold_cpu:.2} s), encode+write into empty views {write_s:.2} s (cpu {write_cpu:.2} s)  load {}",
            load()
        );
        drop(empty);
        let _ = std::fs::remove_dir_all(&scratch);
        let mut empty = ViewStore::open_dir(&scratch)?;
        for (what, store) in [("empty", &mut empty), ("existing", &mut store)] {
            let c = cpu_s();
            let r = store.rebuild(&ledger)?;
            println!(
                "rebuild      into {what} views: {} events, {} entries ({} changed) in {:.2} s (cpu {:.2} s)  load {}",
                r.applied,
                r.entries_written,
                r.entries_changed,
                r.seconds,
                cpu_s() - c,
                load()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for d in store.digests()? {
        println!("{:<12} {:>8} entries  {}", d.view, d.entries, d.sha256);
    }
    Ok(())
}
