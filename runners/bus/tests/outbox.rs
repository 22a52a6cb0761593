//! The outbox against a real nats-server that the test starts itself (free
//! port, JetStream in a temporary directory), stops and restarts.

use foundry_bus::{ensure_stream, NatsOptions, OutboxPublisher, STREAM};
use foundry_events::Role;
use foundry_events::{MetricPoint, MetricsLogged, RecordedEvent};
use foundry_ledger::{AppendRequest, Home, Identity, Ledger, NewEvent};

mod common;
use common::NatsServer;
use std::time::{Duration, Instant};

/// A ledger whose genesis (seq 1) registers a key that may append anything.
fn ledger_in(dir: &std::path::Path) -> (Ledger, Identity) {
    let l = Home::at(dir).init().unwrap();
    let id = Identity::generate("t").unwrap();
    l.init_genesis(&id, Role::ALL, &[]).unwrap();
    (l, id)
}

fn append(l: &Ledger, id: &Identity, from: u64, n: u64) {
    let events = (from..from + n)
        .map(|step| {
            NewEvent::new(MetricsLogged {
                run_id: format!("r{}", step % 3),
                points: vec![MetricPoint {
                    step,
                    loss: 1.0,
                    lr: 1e-4,
                    grad_norm: 1.0,
                    tokens: 1,
                    tokens_per_s: 1.0,
                    elapsed_ms: step,
                }],
            })
        })
        .collect();
    l.append_as(id, AppendRequest::new(events)).expect("append");
}

async fn stream_messages(url: &str) -> u64 {
    let client = NatsOptions::url(url).connect().await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_everything_once_and_dedups_republished_events() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ledger, id) = ledger_in(dir.path());
    append(&ledger, &id, 0, 299);
    let client = NatsOptions::url(nats.url()).connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = ensure_stream(&js).await.unwrap();
    let publisher = OutboxPublisher::new(ledger.clone(), js.clone());
    let r = publisher.publish_pending().await.unwrap();
    assert_eq!((r.published, r.duplicates, r.through), (300, 0, 300));
    assert!(ledger.outbox_pending(10).unwrap().is_empty());
    // A lost watermark (crash between ack and flush) republishes: JetStream
    // recognises every id and stores nothing twice.
    let (again, err) = publisher.publish_range(1, 300).await;
    assert!(err.is_none());
    assert_eq!((again.published, again.duplicates), (0, 300));
    assert_eq!(stream_messages(&nats.url()).await, 300);
    // Subjects and payloads: the stored record, verifiable on its own.
    let msg = stream.get_raw_message(1).await.unwrap();
    assert_eq!(msg.subject.as_str(), "foundry.events.KeyRegistered.key");
    let msg = stream.get_raw_message(2).await.unwrap();
    assert_eq!(msg.subject.as_str(), "foundry.events.MetricsLogged.run");
    let rec = RecordedEvent::decode(&msg.payload).unwrap();
    assert_eq!(rec.seq, 2);
    assert_eq!(rec.compute_hash().unwrap(), rec.hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_and_duplicates_nothing() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ledger, id) = ledger_in(dir.path());
    let client = NatsOptions::url(nats.url()).connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    ensure_stream(&js).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publisher = OutboxPublisher::new(ledger.clone(), js.clone());
    let task = tokio::spawn(publisher.run(stop_rx, Duration::from_millis(100)));
    for batch in 0..20u64 {
        append(&ledger, &id, batch * 50, if batch == 0 { 49 } else { 50 });
        if batch == 6 {
            nats.stop();
        }
        if batch == 12 {
            nats.spawn();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.published_through().unwrap() < 1000 {
        assert!(Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(stream_messages(&nats.url()).await, 1000);
}
