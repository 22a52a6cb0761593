//! Crash safety: a child appends in a loop and prints every acknowledged seq;
//! it is SIGKILLed at random moments. After each kill every acknowledged
//! event is present, the chain verifies, and appends continue.

use crate::common;
use common::ok;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigkill_never_loses_an_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    ok(&home, &["init"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut acked_max = 0u64;
    for round in 0..24 {
        let batch = if round % 3 == 0 { "25" } else { "1" };
        let mut child = Command::new(common::bin())
            .arg("--home")
            .arg(&home)
            .args([
                "bench",
                "append",
                "--events",
                "100000000",
                "--batch",
                batch,
                "--in-home",
                "--print-acks",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line
                    .strip_prefix("ack ")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    if tx.send(seq).is_err() {
                        break;
                    }
                }
            }
        });
        // Let it run a random while once it has started appending.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child appends");
        assert!(first > acked_max, "seqs continue after restart");
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(5..300));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let seen: Vec<u64> = std::iter::once(first).chain(rx.try_iter()).collect();
        acked_max = acked_max.max(*seen.iter().max().unwrap());

        let v = ok(&home, &["verify", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v["ok"], true, "round {round}");
        let events = v["events"].as_u64().unwrap();
        assert!(
            events >= acked_max,
            "round {round}: acknowledged seq {acked_max} lost (ledger has {events})"
        );
        let last = ok(
            &home,
            &[
                "log",
                "--from",
                &acked_max.to_string(),
                "--limit",
                "1",
                "--json",
            ],
        );
        let last: serde_json::Value = serde_json::from_str(last.trim()).unwrap();
        assert_eq!(last["seq"], acked_max);
    }
}
