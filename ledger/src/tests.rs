use super::*;
use foundry_events::{
    Event, EventType, MetricPoint, MetricsLogged, RecordedEvent, Role, RunCancelled, RunRequested,
};
use std::collections::BTreeMap;

mod trust_tests;

/// Events before the first one a test appends: the genesis.
const G: u64 = 1;

/// A root identity holding every role, so tests can append anything.
fn root() -> Identity {
    static ROOT: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| Identity::generate("root").unwrap())
        .clone()
}

fn fresh() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Home::at(dir.path()).init().unwrap();
    ledger.init_genesis(&root(), Role::ALL, &[]).unwrap();
    (dir, ledger)
}

/// Appends as the root.
fn put(l: &Ledger, req: AppendRequest) -> Result<AppendOutcome> {
    l.append_as(&root(), req)
}

fn requested(run: &str) -> Event {
    Event::RunRequested(RunRequested {
        run_id: run.into(),
        recipe_id: "rcp".into(),
        dataset_id: "ds".into(),
        model_id: "m".into(),
        backend: "local".into(),
        overrides: BTreeMap::new(),
    })
}

fn metrics(run: &str, step: u64) -> Event {
    Event::MetricsLogged(MetricsLogged {
        run_id: run.into(),
        points: vec![MetricPoint {
            step,
            loss: 1.0 / (step as f64 + 1.0),
            lr: 1e-4,
            grad_norm: 0.5,
            tokens: 512,
            tokens_per_s: 1000.0,
            elapsed_ms: step * 10,
        }],
    })
}

fn append_n(l: &Ledger, n: u64, batch: u64) {
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let events = (0..k)
            .map(|i| NewEvent::new(metrics(&format!("r{}", (done + i) % 7), done + i)))
            .collect();
        put(l, AppendRequest::new(events)).unwrap();
        done += k;
    }
}

#[test]
fn append_assigns_seq_versions_and_chains() {
    let (_d, l) = fresh();
    let out = put(
        &l,
        AppendRequest::new(vec![
            NewEvent::new(requested("a")),
            NewEvent::new(metrics("a", 1)),
        ]),
    )
    .unwrap();
    assert!(!out.duplicate);
    assert_eq!(out.events[0].seq, G + 1);
    assert_eq!(out.events[1].seq, G + 2);
    assert_eq!(out.events[1].stream_version, 2);
    assert_eq!(out.events[1].prev_hash, out.events[0].hash);
    assert_eq!(out.events[0].actor, "root");
    assert_eq!(out.events[0].signer, root().public_key());
    assert_eq!(
        (out.events[0].batch_index, out.events[1].batch_index),
        (0, 1)
    );
    assert!(out.events[0].seal.is_none() && out.events[1].seal.is_some());
    assert_eq!(l.head().seq, G + 2);
    assert_eq!(l.stream_version("run/a").unwrap(), 2);
    assert_eq!(l.read_stream("run/a", 2).unwrap()[0].seq, G + 2);
    assert_eq!(
        l.seqs_of_type(EventType::MetricsLogged, 0).unwrap(),
        vec![G + 2]
    );
    assert_eq!(l.read_from(G + 2, 10).unwrap().len(), 1);
    let r = l.verify().unwrap();
    assert!(r.is_ok(), "{:?}", r.violation);
    assert_eq!(r.root.as_deref(), Some(root().public_key()));
    assert_eq!(r.batches, 2);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    {
        let l = home.init().unwrap();
        l.init_genesis(&root(), Role::ALL, &[]).unwrap();
        append_n(&l, 24, 4);
    }
    let l = home.open_ledger().unwrap();
    assert_eq!(l.head().seq, 25);
    assert_eq!(l.registry().root(), Some(root().public_key()));
    append_n(&l, 5, 5);
    assert_eq!(l.head().seq, 30);
    assert!(l.verify().unwrap().is_ok());
}

#[test]
fn idempotent_append_returns_the_originals() {
    let (_d, l) = fresh();
    let req = AppendRequest::new(vec![
        NewEvent::new(requested("x")),
        NewEvent::new(metrics("x", 0)),
    ])
    .idempotent("req-1");
    let first = put(&l, req.clone()).unwrap();
    let again = put(&l, req.clone()).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.events, first.events);
    // The very same signed batch, sent again (a replay): nothing appended.
    let signed = root().sign(req.idempotent("req-2")).unwrap();
    assert!(!l.append(signed.clone()).unwrap().duplicate);
    assert!(l.append(signed).unwrap().duplicate);
    assert_eq!(l.head().seq, G + 4);
}

#[test]
fn expected_version_conflict_is_typed_and_writes_nothing() {
    let (_d, l) = fresh();
    put(&l, AppendRequest::new(vec![NewEvent::new(requested("x"))])).unwrap();
    let err = put(
        &l,
        AppendRequest::new(vec![NewEvent::new(metrics("x", 1))])
            .expect("run/x", ExpectedVersion::NoStream),
    )
    .unwrap_err();
    match err {
        LedgerError::Conflict { stream, actual, .. } => {
            assert_eq!(stream, "run/x");
            assert_eq!(actual, 1);
        }
        e => panic!("{e}"),
    }
    assert_eq!(l.head().seq, G + 1);
    put(
        &l,
        AppendRequest::new(vec![NewEvent::new(metrics("x", 1))])
            .expect("run/x", ExpectedVersion::Exact(1)),
    )
    .unwrap();
    assert_eq!(l.head().seq, G + 2);
}

#[test]
fn two_writers_racing_exactly_one_wins_each_round() {
    let (_d, l) = fresh();
    put(
        &l,
        AppendRequest::new(vec![NewEvent::new(requested("race"))]),
    )
    .unwrap();
    let rounds = 200u64;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|w| {
            let l = l.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..rounds {
                    b.wait();
                    let req = AppendRequest::new(vec![NewEvent::new(Event::RunCancelled(
                        RunCancelled {
                            run_id: "race".into(),
                            reason: format!("{w}:{round}"),
                        },
                    ))])
                    .expect("run/race", ExpectedVersion::Exact(round + 1));
                    match put(&l, req) {
                        Ok(_) => wins.push(round),
                        Err(LedgerError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    b.wait();
                }
                wins
            })
        })
        .collect();
    let wins: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut all: Vec<u64> = wins.concat();
    all.sort();
    assert_eq!(
        all,
        (0..rounds).collect::<Vec<_>>(),
        "exactly one winner per round"
    );
    assert_eq!(l.stream_version("run/race").unwrap(), rounds + 1);
    assert_eq!(l.head().seq, G + rounds + 1);
    assert!(l.verify().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_new_events_in_order() {
    let (_d, l) = fresh();
    append_n(&l, 3, 3);
    let mut tail = l.tail(G + 2);
    let writer = l.clone();
    let h = tokio::task::spawn_blocking(move || append_n(&writer, 5, 1));
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(tail.next().await.unwrap().seq - G);
    }
    h.await.unwrap();
    assert_eq!(seen, vec![3, 4, 5, 6, 7, 8]);
}

#[test]
fn outbox_tracks_unpublished_events() {
    let (_d, l) = fresh();
    append_n(&l, 4, 4);
    assert_eq!(l.outbox_pending(100).unwrap(), vec![1, 2, 3, 4, 5]);
    l.outbox_ack_through(3).unwrap();
    assert_eq!(l.outbox_pending(100).unwrap(), vec![4, 5]);
    l.outbox_ack_through(2).unwrap();
    assert_eq!(l.published_through().unwrap(), 3);
}

#[test]
fn untouched_ledger_of_100k_events_verifies() {
    let (_d, l) = fresh();
    append_n(&l, 100_000, 1000);
    let r = l.verify().unwrap();
    assert!(r.is_ok(), "{:?}", r.violation);
    assert_eq!(r.events, G + 100_000);
    assert_eq!(r.batches, 1 + 100);
}

fn violation(l: &Ledger) -> Violation {
    l.verify()
        .unwrap()
        .violation
        .expect("tampering must be detected")
}

/// The records of the chunk holding `seq`: (first seq, records).
fn chunk_records(l: &Ledger, seq: u64) -> (u64, Vec<Vec<u8>>) {
    let (first, bytes) = l.chunk_of(seq).unwrap().unwrap();
    let recs = chunk::Frames::new(first, &bytes)
        .map(|f| f.unwrap().1.to_vec())
        .collect();
    (first, recs)
}

fn put_chunk(l: &Ledger, first: u64, recs: &[Vec<u8>]) {
    let bytes = chunk::encode(recs.iter().map(|r| r.as_slice()));
    l.raw_tree().insert(layout::event(first), bytes).unwrap();
}

#[test]
fn flipping_any_byte_of_a_stored_record_is_caught_at_its_seq() {
    let (_d, l) = fresh();
    append_n(&l, 12, 3);
    for seq in [1u64, 8, 10, 13] {
        let (first, recs) = chunk_records(&l, seq);
        let i = (seq - first) as usize;
        for pos in 0..recs[i].len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = recs.clone();
                bad[i][pos] ^= bit;
                put_chunk(&l, first, &bad);
                let v = violation(&l);
                assert_eq!(v.seq, seq, "byte {pos} bit {bit:#x}: {v}");
            }
        }
        // Damaged frame lengths are caught at the record they frame.
        let raw = l
            .raw_tree()
            .get(layout::event(first))
            .unwrap()
            .unwrap()
            .to_vec();
        let mut off = 0;
        for _ in 0..i {
            off += 4 + u32::from_le_bytes(raw[off..off + 4].try_into().unwrap()) as usize;
        }
        for b in 0..2 {
            let mut bad = raw.clone();
            bad[off + b] ^= 0x04;
            l.raw_tree().insert(layout::event(first), bad).unwrap();
            let v = violation(&l);
            assert_eq!(v.seq, seq, "length byte {b}: {v}");
        }
        put_chunk(&l, first, &recs);
        assert!(l.verify().unwrap().is_ok());
    }
}

#[test]
fn deleting_swapping_and_truncating_are_caught() {
    let (_d, l) = fresh();
    append_n(&l, 19, 5); // chunks at 1 (genesis), 2, 7, 12, 17 (4 events)
    let tree = l.raw_tree();

    // Delete one event from inside a chunk.
    let (first, recs) = chunk_records(&l, 8);
    let mut bad = recs.clone();
    bad.remove(1);
    put_chunk(&l, first, &bad);
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (8, &ViolationKind::Reordered { claims: 9 })
    );
    assert!(v.to_string().contains("missing"), "{v}");
    put_chunk(&l, first, &recs);

    // Delete a whole chunk.
    let saved = tree.get(layout::event(7)).unwrap().unwrap();
    tree.remove(layout::event(7)).unwrap();
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (7, &ViolationKind::Gap { next_present: 12 })
    );
    tree.insert(layout::event(7), saved).unwrap();

    // Swap two neighbours.
    let (first, recs) = chunk_records(&l, 13);
    let mut bad = recs.clone();
    bad.swap(1, 2);
    put_chunk(&l, first, &bad);
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (13, &ViolationKind::Reordered { claims: 14 })
    );
    put_chunk(&l, first, &recs);

    // Move an event back: seq 3 stored again at position 4.
    let (first, recs) = chunk_records(&l, 3);
    let mut bad = recs.clone();
    bad[2] = bad[1].clone();
    put_chunk(&l, first, &bad);
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (4, &ViolationKind::Reordered { claims: 3 })
    );
    assert!(v.to_string().contains("reordered"), "{v}");
    put_chunk(&l, first, &recs);

    // Truncate the tail: the last two events of the last chunk.
    let (first, recs) = chunk_records(&l, 20);
    put_chunk(&l, first, &recs[..2]);
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (19, &ViolationKind::Truncated { last_present: 18 })
    );
    // And the whole last chunk.
    tree.remove(layout::event(17)).unwrap();
    let v = violation(&l);
    assert_eq!(
        (v.seq, &v.kind),
        (17, &ViolationKind::Truncated { last_present: 16 })
    );
    put_chunk(&l, first, &recs);
    assert!(l.verify().unwrap().is_ok());
}

#[test]
fn reads_by_stream_and_type_cross_chunks() {
    let (_d, l) = fresh();
    append_n(&l, 69, 9);
    let s = l.read_stream("run/r3", 4).unwrap();
    assert_eq!(s.first().unwrap().stream_version, 4);
    assert_eq!(s.len(), 7);
    assert!(s.iter().all(|r| r.stream == "run/r3"));
    assert_eq!(
        l.seqs_of_type(EventType::MetricsLogged, 60).unwrap().len(),
        11
    );
    assert_eq!(
        l.seqs_of_type(EventType::KeyRegistered, 0).unwrap(),
        vec![1]
    );
    assert_eq!(l.read_from(44, 100).unwrap().first().unwrap().seq, 44);
    assert_eq!(l.get(70).unwrap().unwrap().seq, 70);
    assert!(l.get(71).unwrap().is_none());
}

#[test]
fn chunks_from_shares_stored_records_from_any_seq() {
    let (_d, l) = fresh();
    append_n(&l, 69, 9);
    for from in [2, 10, 11, 44, 70] {
        let chunks: Vec<Chunk> = l.chunks_from(from).map(|c| c.unwrap()).collect();
        // The first chunk holds `from`; each chunk starts where the last ended.
        assert!(chunks[0].first_seq() <= from && from < chunks[0].first_seq() + 9);
        for w in chunks.windows(2) {
            assert_eq!(w[1].first_seq(), w[0].first_seq() + 9);
        }
        let records: Vec<(u64, Vec<u8>)> = chunks
            .iter()
            .flat_map(|c| {
                c.records()
                    .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
            })
            .collect();
        let raw: Vec<(u64, Vec<u8>)> = l.scan_raw(from).map(|r| r.unwrap()).collect();
        assert_eq!(records, raw);
        assert_eq!(records.first().unwrap().0, from);
        let stored: usize = l.chunks_from(1).map(|c| c.unwrap().stored_len()).sum();
        let framed: usize = l.scan_raw(1).map(|r| 4 + r.unwrap().1.len()).sum();
        assert_eq!(stored, framed);
        assert_eq!(records.len() as u64, 71 - from);
        for (seq, bytes) in &records {
            assert_eq!(RecordedEvent::decode(bytes).unwrap().seq, *seq);
        }
    }
    assert_eq!(
        l.chunks_from(71).count(),
        1,
        "the last chunk, with no records left"
    );
    let left: usize = l
        .chunks_from(71)
        .map(|c| c.unwrap().records().count())
        .sum();
    assert_eq!(left, 0);
}

#[test]
fn a_damaged_frame_in_a_chunk_names_its_seq() {
    let (_d, l) = fresh();
    append_n(&l, 20, 10);
    let (first, recs) = chunk_records(&l, 13);
    let mut bytes = chunk::encode(recs.iter().map(|r| r.as_slice()));
    // Make the third record's length run past the end of the chunk.
    let mut pos = 0;
    for r in &recs[..2] {
        pos += 4 + r.len();
    }
    bytes[pos..pos + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    l.raw_tree().insert(layout::event(first), bytes).unwrap();
    let out: Vec<_> = l.chunks_from(1).map(|c| c.unwrap()).collect();
    let second: Vec<_> = out[2].records().collect();
    assert_eq!(second.len(), 3, "two records, then the error, then nothing");
    match &second[2] {
        Err(LedgerError::Corrupt { seq, .. }) => assert_eq!(*seq, 14),
        other => panic!("expected a corrupt frame at seq 14, got {other:?}"),
    }
}

/// An export of a ledger of `n` events (the genesis, then batches of 4).
fn exported(n: u64) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let (d, l) = fresh();
    append_n(&l, n - G, 4);
    let path = d.path().join("ledger.export");
    let s = l.export(&path, "2026-11-29T00:00:00Z").unwrap();
    assert_eq!(s.events, n);
    let bytes = std::fs::read(&path).unwrap();
    (d, path, bytes)
}

/// Byte offset ranges of each frame's record (seq, start, end).
fn frames(bytes: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut pos = EXPORT_MAGIC.len();
    pos += bytes[pos..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut out = Vec::new();
    let mut seq = 1;
    loop {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return out;
        }
        out.push((seq, pos, pos + 4 + len));
        pos += 4 + len;
        seq += 1;
    }
}

#[test]
fn export_import_round_trip() {
    let (d, path, _) = exported(50);
    let dst = Home::at(d.path().join("copy")).init().unwrap();
    let s = dst.import(&path, Some(root().public_key())).unwrap();
    assert_eq!(s.events, 50);
    assert_eq!(s.root.as_deref(), Some(root().public_key()));
    assert_eq!(dst.head().seq, 50);
    assert!(dst.verify().unwrap().is_ok());
    assert_eq!(dst.stream_version("run/r1").unwrap(), 7);
    assert_eq!(dst.outbox_pending(1000).unwrap().len(), 50);
    assert_eq!(dst.read_stream("run/r1", 1).unwrap().len(), 7);
    assert_eq!(dst.registry().root(), Some(root().public_key()));
    // The imported ledger takes appends by the same keys.
    put(
        &dst,
        AppendRequest::new(vec![NewEvent::new(metrics("r1", 99))]),
    )
    .unwrap();
    // A second import into a non-empty ledger is refused.
    assert!(matches!(
        dst.import(&path, None),
        Err(LedgerError::ImportRefused(_))
    ));
}

#[test]
fn every_single_byte_flip_of_an_export_is_refused_naming_the_seq() {
    let (d, path, bytes) = exported(8);
    let frames = frames(&bytes);
    let bad = d.path().join("bad.export");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        std::fs::write(&bad, &b).unwrap();
        let err = verify_export(&bad, None).expect_err(&format!("flip at byte {i} accepted"));
        let msg = err.to_string();
        if let Some((seq, _, _)) = frames.iter().find(|(_, s, e)| (*s..*e).contains(&i)) {
            assert!(
                msg.contains(&format!("seq {seq}:")),
                "byte {i} in frame of seq {seq}: {msg}"
            );
        }
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    let _ = path;
}

#[test]
fn deleted_swapped_or_truncated_exports_are_refused() {
    let (d, _path, bytes) = exported(10);
    let fr = frames(&bytes);
    let bad = d.path().join("bad.export");
    let check = |b: &[u8], want: &str| {
        std::fs::write(&bad, b).unwrap();
        let msg = verify_export(&bad, None).unwrap_err().to_string();
        assert!(msg.contains(want), "want {want:?}, got {msg}");
    };
    // Delete the frame of seq 4.
    let (_, s, e) = fr[3];
    let mut b = bytes[..s].to_vec();
    b.extend_from_slice(&bytes[e..]);
    check(&b, "seq 4:");
    // Swap seq 6 and 7.
    let (_, s6, e6) = fr[5];
    let (_, _, e7) = fr[6];
    let mut b = bytes[..s6].to_vec();
    b.extend_from_slice(&bytes[e6..e7]);
    b.extend_from_slice(&bytes[s6..e6]);
    b.extend_from_slice(&bytes[e7..]);
    check(&b, "seq 6:");
    // Truncate the tail at every point after the header.
    for cut in (fr[0].1..bytes.len()).step_by(7) {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert!(verify_export(&bad, None).is_err(), "cut at {cut} accepted");
    }
    // Cut cleanly after seq 9 with a fake end frame.
    let (_, _, e9) = fr[8];
    let mut b = bytes[..e9].to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    check(&b, "seq 10:");
}

#[test]
fn a_refused_import_leaves_the_ledger_empty() {
    let (d, _path, mut bytes) = exported(30);
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    let bad = d.path().join("bad.export");
    std::fs::write(&bad, &bytes).unwrap();
    let dst = Home::at(d.path().join("copy")).init().unwrap();
    assert!(dst.import(&bad, None).is_err());
    assert_eq!(dst.head().seq, 0);
    assert!(dst.read_from(1, 10).unwrap().is_empty());
}

#[test]
fn opening_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Home::at(dir.path().join("nope"));
    assert!(matches!(
        missing.open_ledger(),
        Err(LedgerError::HomeMissing(_))
    ));
    let empty = Home::at(dir.path());
    assert!(matches!(
        empty.open_ledger(),
        Err(LedgerError::NotInitialized(_))
    ));
    let _l = empty.init().unwrap();
    let err = Ledger::open(&empty.ledger_dir()).err().unwrap();
    assert!(matches!(err, LedgerError::Locked(_)), "{err}");
}

#[test]
fn artifacts_are_content_addressed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    home.init().unwrap();
    let store = home.artifacts();
    let src = dir.path().join("f.bin");
    std::fs::write(&src, b"weights").unwrap();
    let (d, n) = store.put_file(&src).unwrap();
    assert_eq!(n, 7);
    assert_eq!(d, foundry_events::Sha256Digest::of(b"weights"));
    assert!(store.check(&d).unwrap());
    std::fs::write(store.path_of(&d), b"weightz").unwrap();
    assert!(store.check(&d).is_err());
}

#[test]
fn a_replica_follows_its_source_and_refuses_another_history() {
    let (_d1, source) = fresh();
    append_n(&source, 30, 7);
    let raw_check: usize = source.scan_raw(1).count();
    assert_eq!(raw_check, 31);
    let d2 = tempfile::tempdir().unwrap();
    let replica = Home::at(d2.path()).init().unwrap();
    let raw: Vec<Vec<u8>> = source.scan_raw(1).map(|r| r.unwrap().1).collect();
    // Batches of 7 after the genesis: 12 records hold the genesis, one
    // batch and 4 of the next; only whole batches are stored.
    assert_eq!(replica.replicate(&raw[..12]).unwrap(), 8);
    assert_eq!(replica.replicate(&raw[8..]).unwrap(), 23);
    assert_eq!(replica.replicate(&[]).unwrap(), 0);
    assert!(replica.verify().unwrap().is_ok());
    assert_eq!(replica.head(), source.head());
    assert_eq!(
        replica.read_stream("run/r0", 1).unwrap().len(),
        source.read_stream("run/r0", 1).unwrap().len()
    );
    // Records of another ledger, or a gap, are refused and nothing is written.
    let (_d3, other) = fresh();
    append_n(&other, 31, 1);
    let theirs: Vec<Vec<u8>> = other.scan_raw(32).map(|r| r.unwrap().1).collect();
    let e = replica.replicate(&theirs).unwrap_err().to_string();
    assert!(e.contains("seq 32") && e.contains("another ledger"), "{e}");
    let e = replica.replicate(&raw[..1]).unwrap_err().to_string();
    assert!(e.contains("claims seq 1"), "{e}");
    assert_eq!(replica.head().seq, 31);
}

#[test]
fn staged_files_are_installed_only_when_they_hash_to_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Home::at(dir.path()).artifacts();
    let good = foundry_events::Sha256Digest::of(b"weights");
    let staged = store.staging_path(&good).unwrap();
    std::fs::write(&staged, b"other bytes").unwrap();
    let e = store
        .install_staged(&staged, &good)
        .unwrap_err()
        .to_string();
    assert!(e.contains("arrived with other bytes"), "{e}");
    assert!(!store.contains(&good) && !staged.exists());
    std::fs::write(&staged, b"weights").unwrap();
    store.install_staged(&staged, &good).unwrap();
    assert!(store.check(&good).unwrap() && !staged.exists());
}
