//! Latency from appending a CheckpointCommitted to a remote runner's handler
//! starting, on loopback: ledger service + outbox + JetStream + durable pull
//! consumer + host. Prints p50/p90/p99/max for appends made through the
//! service (a remote trainer) and appends made at the ledger itself.
//!
//! `cargo bench -p foundry-bus --bench feed_latency [-- N]` (needs nats-server).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foundry_bus::{serve, FeedOptions, JetStreamFeed, NatsLedgerClient, NatsOptions};
use foundry_events::{CheckpointCommitted, EventType};
use foundry_ledger::{AppendRequest, Home, Ledger, NewEvent};
use foundry_runner::{Delivery, Host, LedgerClient, Runner, RunnerContext};
use tokio::sync::{mpsc, watch};

/// Stands in for the evaluator: reacts to CheckpointCommitted and reports
/// when its handler starts.
struct Probe(mpsc::UnboundedSender<(u64, Instant)>);

#[async_trait]
impl Runner for Probe {
    fn name(&self) -> &str {
        "evaluator"
    }
    fn reacts_to(&self) -> Vec<EventType> {
        vec![EventType::CheckpointCommitted, EventType::EvalRequested]
    }
    async fn handle(&self, _: &RunnerContext, d: &Delivery) -> foundry_runner::Result<()> {
        let _ = self.0.send((d.event.seq, Instant::now()));
        Ok(())
    }
}

fn checkpoint(i: u64) -> AppendRequest {
    AppendRequest::new(vec![NewEvent::new(CheckpointCommitted {
        run_id: "bench".into(),
        checkpoint_id: format!("ckpt-{i}"),
        step: i,
        files: vec![],
        loss: Some(0.5),
        location: "local".into(),
    })])
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<34} n={:<5} p50={:.3} ms  p90={:.3} ms  p99={:.3} ms  max={:.3} ms",
        v.len(),
        ms(p(0.50)),
        ms(p(0.90)),
        ms(p(0.99)),
        ms(p(1.0)),
    );
}

async fn measure(
    n: u64,
    rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    append: impl AsyncFn(u64) -> u64,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let seq = append(i).await;
        loop {
            let (s, t) = rx.recv().await.expect("probe alive");
            if s == seq {
                out.push(t - t0);
                break;
            }
        }
    }
    out
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let nats = common::NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let ledger: Ledger = Home::at(dir.path().join("l")).init().unwrap();
        let trainer = foundry_ledger::Identity::generate("runner:trainer").unwrap();
        ledger
            .init_genesis(&trainer, foundry_events::Role::ALL, &[])
            .unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let svc = tokio::spawn(serve(
            ledger.clone(),
            NatsOptions::url(nats.url()).connect().await.unwrap(),
            stop_rx,
            None,
        ));
        let nc = NatsOptions::url(nats.url()).connect().await.unwrap();
        let client = Arc::new(NatsLedgerClient::new(nc.clone(), trainer.clone()));
        while client.head().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let js = async_nats::jetstream::new(nc);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let probe: Arc<dyn Runner> = Arc::new(Probe(tx));
        let feed = JetStreamFeed::open(
            &js,
            probe.name(),
            &probe.reacts_to(),
            FeedOptions::default(),
        )
        .await
        .unwrap();
        let mut host = Host::new();
        let ctx = RunnerContext {
            client: client.clone(),
            runner_id: "probe".into(),
            home: Home::at(dir.path().join("r")),
            stop: host.stop_signal(),
        };
        host.spawn(probe, Box::new(feed), ctx);
        // Warm up.
        let warm = measure(20, &mut rx, async |i| {
            client.append(checkpoint(i)).await.unwrap().events[0].seq
        })
        .await;
        drop(warm);
        let remote = measure(n, &mut rx, async |i| {
            client.append(checkpoint(i)).await.unwrap().events[0].seq
        })
        .await;
        let local = measure(n, &mut rx, async |i| {
            let l = ledger.clone();
            let id = trainer.clone();
            tokio::task::spawn_blocking(move || {
                l.append_as(&id, checkpoint(i)).unwrap().events[0].seq
            })
            .await
            .unwrap()
        })
        .await;
        report("append via service -> handler", remote);
        report("append at the ledger -> handler", local);
        host.shutdown().await;
        stop.send_replace(true);
        let _ = svc.await;
    });
}
