//! Remote runners over a real nats-server started by the test: the ledger
//! service, its client, the JetStream feeds, auth, restarts and redelivery.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{request_run, LineEngine, LineEval, NatsServer, TestKeys};
use foundry_bus::{
    consumer_name, serve, FeedOptions, JetStreamFeed, NatsLedgerClient, NatsOptions, STREAM,
};
use foundry_events::{Event, EventType, MetricPoint, MetricsLogged, RecordedEvent};
use foundry_ledger::{
    AppendRequest, ExpectedVersion, Home, Identity, Ledger, LedgerError, NewEvent,
};
use foundry_runner::{
    Delivery, EvaluatorRunner, EventFeed, Host, LedgerClient, PromoterRunner, Runner,
    RunnerContext, RunnerError, TrainerRunner,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Service {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), foundry_bus::BusError>>,
}

impl Service {
    async fn start(url: &str, ledger: &Ledger) -> Service {
        let client = NatsOptions::url(url).connect().await.unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve(ledger.clone(), client, rx, None));
        // The service answers once it subscribed.
        let probe = NatsLedgerClient::new(
            NatsOptions::url(url).connect().await.unwrap(),
            Identity::generate("probe").unwrap(),
        )
        .with_timeout(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while probe.head().await.is_err() {
            assert!(Instant::now() < deadline, "ledger service did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Service { stop, task }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

fn metrics(run: &str, step: u64, points: usize) -> NewEvent {
    NewEvent::new(MetricsLogged {
        run_id: run.into(),
        points: (0..points as u64)
            .map(|i| MetricPoint {
                step: step + i,
                loss: 1.0 / (1 + i) as f64,
                lr: 1e-4,
                grad_norm: 1.0,
                tokens: 100,
                tokens_per_s: 10.0,
                elapsed_ms: i,
            })
            .collect(),
    })
}

/// Events of a ledger's genesis (the test organisation's keys).
const G: u64 = 6;

/// A ledger in `dir` whose genesis registers the test organisation's keys.
fn org_ledger(dir: &std::path::Path) -> (Ledger, TestKeys) {
    let ledger = Home::at(dir).init().unwrap();
    let keys = TestKeys::new();
    keys.genesis(&ledger);
    (ledger, keys)
}

async fn client(url: &str, id: &Identity) -> Arc<NatsLedgerClient> {
    Arc::new(
        NatsLedgerClient::new(NatsOptions::url(url).connect().await.unwrap(), id.clone())
            .with_timeout(Duration::from_secs(3)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_read_round_trip_with_idempotency_paging_and_conflicts() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keys) = org_ledger(dir.path());
    let svc = Service::start(&nats.url(), &ledger).await;
    let c = client(&nats.url(), &keys.trainer).await;

    let req = AppendRequest::new(vec![metrics("r1", 0, 3), metrics("r1", 3, 3)])
        .idempotent("k1")
        .expect("run/r1", ExpectedVersion::NoStream);
    let first = c.append(req.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.events[1].seq, G + 2);
    assert_eq!(first.events[1].actor, "runner:trainer");
    assert_eq!(
        first.events[1].compute_hash().unwrap(),
        first.events[1].hash
    );
    // Same key: the originals, nothing appended.
    let again = c.append(req).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.events, first.events);
    assert_eq!(c.head().await.unwrap(), G + 2);
    // A stale expectation is a Conflict, exactly as the embedded client says.
    let stale =
        AppendRequest::new(vec![metrics("r1", 6, 1)]).expect("run/r1", ExpectedVersion::Exact(1));
    match c.append(stale).await {
        Err(RunnerError::Ledger(LedgerError::Conflict {
            stream,
            expected,
            actual,
        })) => {
            assert_eq!((stream.as_str(), actual), ("run/r1", 2));
            assert_eq!(expected, "version 1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.head().seq, G + 2);
    // Keys and roles hold over NATS as they do in process: a key the ledger
    // does not know, and a registered key lacking the role, are refused.
    let stranger = client(&nats.url(), &Identity::generate("runner:trainer").unwrap()).await;
    match stranger
        .append(AppendRequest::new(vec![metrics("r1", 9, 1)]))
        .await
    {
        Err(RunnerError::Ledger(LedgerError::Unauthorized(m))) => {
            assert!(m.contains("not a registered key"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let alice = client(&nats.url(), &keys.alice).await;
    match alice
        .append(AppendRequest::new(vec![metrics("r1", 9, 1)]))
        .await
    {
        Err(RunnerError::Ledger(LedgerError::Unauthorized(m))) => {
            assert!(m.contains("may not append MetricsLogged"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.head().seq, G + 2);

    // Big events: the replies are paged under max_payload and reassembled.
    for i in 0..12u64 {
        c.append(AppendRequest::new(vec![metrics("r2", i * 3000, 3000)]))
            .await
            .unwrap();
    }
    let remote = c.read_stream("run/r2", 1).await.unwrap();
    assert_eq!(remote, ledger.read_stream("run/r2", 1).unwrap());
    assert_eq!(remote.len(), 12);
    let from_5 = c.read_stream("run/r2", 5).await.unwrap();
    assert_eq!(from_5[0].stream_version, 5);
    assert_eq!(from_5.len(), 8);
    let typed = c
        .read_type(EventType::MetricsLogged, G + 2, 9)
        .await
        .unwrap();
    assert_eq!(
        typed,
        ledger
            .read_type(EventType::MetricsLogged, G + 2, 9)
            .unwrap()
    );
    assert_eq!(typed.len(), 9);
    assert_eq!(c.get(3).await.unwrap(), ledger.get(3).unwrap());
    assert_eq!(c.get(999).await.unwrap(), None);
    assert_eq!(c.stream_version("run/r2").await.unwrap(), 12);
    assert_eq!(c.stream_version("run/none").await.unwrap(), 0);
    assert_eq!(c.head().await.unwrap(), G + 14);

    // Every append reached JetStream through the service's outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.published_through().unwrap() < G + 14 {
        assert!(Instant::now() < deadline, "outbox did not publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // No service: a clear transport error, not a hang.
    svc.stop().await;
    let impatient = NatsLedgerClient::new(
        NatsOptions::url(nats.url()).connect().await.unwrap(),
        keys.alice.clone(),
    )
    .with_reconnect(Duration::ZERO);
    match impatient.head().await {
        Err(RunnerError::Transport(m)) => {
            assert!(
                m.starts_with("foundry.api.head: no ledger service is answering"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A service restart is ridden out: the request is resent until it answers.
    let url = nats.url();
    let l2 = ledger.clone();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Service::start(&url, &l2).await
    });
    assert_eq!(c.head().await.unwrap(), G + 14);
    restart.await.unwrap().stop().await;
}

/// Wraps a feed so that every wanted event is nak'ed on its first delivery:
/// each one is delivered twice.
struct NakOnce<F>(F);

#[async_trait::async_trait]
impl<F: EventFeed> EventFeed for NakOnce<F> {
    async fn next(&mut self) -> foundry_runner::Result<Delivery> {
        loop {
            let d = self.0.next().await?;
            if d.attempt > 1 {
                return Ok(d);
            }
            self.0.nak(d.event.seq).await?;
        }
    }
    async fn ack(&mut self, seq: u64) -> foundry_runner::Result<()> {
        self.0.ack(seq).await
    }
    async fn nak(&mut self, seq: u64) -> foundry_runner::Result<()> {
        self.0.nak(seq).await
    }
    async fn in_progress(&mut self) -> foundry_runner::Result<()> {
        self.0.in_progress().await
    }
    fn progress(&self) -> watch::Receiver<u64> {
        self.0.progress()
    }
}

/// Trainer, evaluator and promoter in "another process": their own home
/// (runs and artifacts), the ledger only through NATS, each with its key.
async fn remote_host(
    url: &str,
    home: &Home,
    keys: &TestKeys,
    engine: Arc<LineEngine>,
    nak_once: bool,
) -> Host {
    let nats = NatsOptions::url(url).connect().await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let client =
        NatsLedgerClient::new(nats, keys.alice.clone()).with_timeout(Duration::from_secs(3));
    let mut host = Host::new();
    let runners: Vec<Arc<dyn Runner>> = vec![
        Arc::new(TrainerRunner::new(engine).with_lease(Duration::from_millis(600))),
        Arc::new(EvaluatorRunner::new(Arc::new(LineEval))),
        Arc::new(PromoterRunner::new(Arc::new(LineEval))),
    ];
    let opts = FeedOptions {
        ack_wait: Duration::from_secs(5),
        nak_delay: Duration::from_millis(10),
        retry: Duration::from_millis(100),
    };
    for r in runners {
        let client = Arc::new(client.acting_as(keys.for_runner(r.name())));
        let feed = JetStreamFeed::open(&js, r.name(), &r.reacts_to(), opts)
            .await
            .unwrap()
            .confirming_with(client.clone());
        let feed: Box<dyn EventFeed> = if nak_once {
            Box::new(NakOnce(feed))
        } else {
            Box::new(feed)
        };
        let ctx = RunnerContext {
            client,
            runner_id: format!("{}-remote", r.name()),
            home: home.clone(),
            stop: host.stop_signal(),
        };
        host.spawn(r, feed, ctx);
    }
    host
}

fn types_of(ledger: &Ledger) -> Vec<String> {
    ledger
        .iter_from(1)
        .map(|r| r.unwrap().statement.event_type)
        .collect()
}

fn count(types: &[String], ty: EventType) -> usize {
    types.iter().filter(|t| *t == ty.as_str()).count()
}

async fn idle(host: &Host, url: &str) {
    let c = client(url, &Identity::generate("reader").unwrap()).await;
    tokio::time::timeout(Duration::from_secs(60), host.wait_idle(c.as_ref()))
        .await
        .expect("runners did not become idle within 60s")
        .unwrap();
}

/// What JetStream holds: the ledger seqs of the stream's messages, in order.
async fn stream_seqs(url: &str) -> Vec<u64> {
    let js = async_nats::jetstream::new(NatsOptions::url(url).connect().await.unwrap());
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let n = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for s in 1..=n {
        let m = stream.get_raw_message(s).await.unwrap();
        out.push(RecordedEvent::decode(&m.payload).unwrap().seq);
    }
    out
}

fn assert_trained_and_evaluated(ledger: &Ledger, runs: usize) {
    let types = types_of(ledger);
    assert_eq!(count(&types, EventType::RunStarted), runs, "{types:?}");
    assert_eq!(count(&types, EventType::RunCompleted), runs, "{types:?}");
    assert_eq!(count(&types, EventType::CheckpointCommitted), 4 * runs);
    assert_eq!(count(&types, EventType::EvalRequested), 2 * runs);
    assert_eq!(count(&types, EventType::EvalScored), 2 * runs);
    let ids: HashSet<String> = ledger
        .read_type(EventType::CheckpointCommitted, 1, 100)
        .unwrap()
        .iter()
        .map(|r| match r.decode_event().unwrap() {
            Event::CheckpointCommitted(c) => c.checkpoint_id,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ids.len(), 4 * runs);
}

/// A nats-server, the ledger service over the test organisation's ledger,
/// and remote runners in a home of their own.
struct Cluster {
    nats: NatsServer,
    dir: tempfile::TempDir,
    ledger: Ledger,
    keys: TestKeys,
    runner_home: Home,
    svc: Service,
    host: Host,
}

async fn cluster(engine: Arc<LineEngine>, nak_once: bool) -> Cluster {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keys) = org_ledger(&dir.path().join("ledger-home"));
    let runner_home = Home::at(dir.path().join("runner-home"));
    let svc = Service::start(&nats.url(), &ledger).await;
    let host = remote_host(&nats.url(), &runner_home, &keys, engine, nak_once).await;
    Cluster {
        nats,
        dir,
        ledger,
        keys,
        runner_home,
        svc,
        host,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_run_is_trained_and_evaluated_by_remote_runners() {
    let Cluster {
        nats,
        dir: _dir,
        ledger,
        keys,
        runner_home,
        svc,
        host,
    } = cluster(Arc::new(LineEngine::new(0)), false).await;
    request_run(&ledger, &keys.alice, "r1");
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    assert_trained_and_evaluated(&ledger, 1);
    // Checkpoint files live on the runner's machine, not the ledger's.
    assert!(runner_home.run_dir("r1").join("run_config.json").is_file());
    let last = ledger.read_type(EventType::EvalScored, 1, 10).unwrap();
    let Event::EvalScored(s) = last.last().unwrap().decode_event().unwrap() else {
        panic!()
    };
    assert!(
        s.metrics["field_exact_match"].value > 0.5,
        "{:?}",
        s.metrics
    );
    svc.stop().await;
    let head = ledger.head().seq;
    assert_eq!(
        stream_seqs(&nats.url()).await,
        (1..=head).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_a_clear_error() {
    let nats = NatsServer::start_with_user("foundry", "s3cret");
    let bad = NatsOptions {
        user: Some("foundry".into()),
        password: Some("wrong".into()),
        ..NatsOptions::url(nats.url())
    };
    let e = bad.connect().await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot connect to NATS at {}", nats.url())),
        "{e}"
    );
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let anonymous = NatsOptions::url(nats.url())
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        anonymous.to_lowercase().contains("authorization"),
        "{anonymous}"
    );

    // The right ones serve and append.
    let good = NatsOptions {
        user: Some("foundry".into()),
        password: Some("s3cret".into()),
        ..NatsOptions::url(nats.url())
    };
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keys) = org_ledger(dir.path());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        ledger.clone(),
        good.connect().await.unwrap(),
        rx,
        None,
    ));
    let c = NatsLedgerClient::new(good.connect().await.unwrap(), keys.trainer.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        match c
            .append(AppendRequest::new(vec![metrics("r1", 0, 1)]))
            .await
        {
            Ok(o) => break o,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(out.events[0].seq, G + 1);
    stop.send_replace(true);
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_service_and_nats_loses_and_duplicates_nothing() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keys) = org_ledger(&dir.path().join("ledger-home"));
    let runner_home = Home::at(dir.path().join("runner-home"));
    let svc = Service::start(&nats.url(), &ledger).await;
    let host = remote_host(
        &nats.url(),
        &runner_home,
        &keys,
        Arc::new(LineEngine::new(0)),
        false,
    )
    .await;
    // Traffic no runner reacts to, through the service: skipped and acked.
    let c = client(&nats.url(), &keys.trainer).await;
    for i in 0..20 {
        c.append(AppendRequest::new(vec![metrics("r0", i, 2)]))
            .await
            .unwrap();
    }
    idle(&host, &nats.url()).await;

    // Both go down; meanwhile an operator requests a run on the ledger's
    // machine: it is committed but cannot be published.
    svc.stop().await;
    nats.stop();
    request_run(&ledger, &keys.alice, "r1");
    assert!(ledger.published_through().unwrap() < ledger.head().seq);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back up: the outbox publishes what was pending, the runners' clients
    // reconnect and their durable consumers carry on.
    nats.spawn();
    let svc = Service::start(&nats.url(), &ledger).await;
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    svc.stop().await;
    assert_trained_and_evaluated(&ledger, 1);
    let head = ledger.head().seq;
    assert_eq!(ledger.published_through().unwrap(), head);
    assert_eq!(
        stream_seqs(&nats.url()).await,
        (1..=head).collect::<Vec<_>>()
    );
}

async fn digests(ledger: &Ledger) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut views = foundry_projections::ViewStore::open_dir(dir.path()).unwrap();
    views.rebuild(ledger).unwrap();
    views
        .digests()
        .unwrap()
        .iter()
        .map(|d| format!("{d:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_delivered_twice_changes_no_outcome() {
    // Every event the runners react to is nak'ed once, then handled.
    let Cluster {
        nats,
        dir: _dir,
        ledger,
        keys,
        runner_home,
        svc,
        host,
    } = cluster(Arc::new(LineEngine::new(0)), true).await;
    request_run(&ledger, &keys.alice, "r1");
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    assert_trained_and_evaluated(&ledger, 1);
    let before = types_of(&ledger);
    let digests_before = digests(&ledger).await;

    // Forget the consumers: everything is delivered (and handled) again.
    let js = async_nats::jetstream::new(NatsOptions::url(nats.url()).connect().await.unwrap());
    let stream = js.get_stream(STREAM).await.unwrap();
    for r in ["trainer", "evaluator", "promoter"] {
        stream.delete_consumer(&consumer_name(r)).await.unwrap();
    }
    let host = remote_host(
        &nats.url(),
        &runner_home,
        &keys,
        Arc::new(LineEngine::new(0)),
        false,
    )
    .await;
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    svc.stop().await;
    assert_eq!(types_of(&ledger), before);
    assert_eq!(digests(&ledger).await, digests_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restart_mid_training_is_ridden_out() {
    let engine = Arc::new(LineEngine::new(15));
    let Cluster {
        nats,
        dir: _dir,
        ledger,
        keys,
        svc,
        host,
        ..
    } = cluster(engine.clone(), false).await;
    request_run(&ledger, &keys.alice, "r1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger
        .read_type(EventType::CheckpointCommitted, 1, 10)
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The service goes away while the trainer is mid-run, and comes back.
    svc.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let svc = Service::start(&nats.url(), &ledger).await;
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    svc.stop().await;
    assert_trained_and_evaluated(&ledger, 1);
    // Trained once, without a restart of the run.
    let types = types_of(&ledger);
    assert_eq!(count(&types, EventType::RunClaimed), 1, "{types:?}");
    assert_eq!(
        engine.steps_run.load(std::sync::atomic::Ordering::SeqCst),
        40
    );
    let head = ledger.head().seq;
    assert_eq!(
        stream_seqs(&nats.url()).await,
        (1..=head).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_published_into_the_stream_by_someone_else_is_never_acted_on() {
    let Cluster {
        nats,
        dir,
        ledger,
        keys,
        runner_home,
        svc,
        host,
    } = cluster(Arc::new(LineEngine::new(0)), false).await;
    // A NATS user forges a RunRequested record (signed by a key of their
    // own, chained to nothing) and publishes it straight into the stream.
    let (other, other_keys) = org_ledger(&dir.path().join("forger"));
    request_run(&other, &other_keys.alice, "forged");
    let js = async_nats::jetstream::new(NatsOptions::url(nats.url()).connect().await.unwrap());
    let mut forged = 0;
    for r in other.scan_raw(ledger.head().seq + 1) {
        let (_, bytes) = r.unwrap();
        let rec = RecordedEvent::decode(&bytes).unwrap();
        let subject = format!("foundry.events.{}.run", rec.event_type);
        js.publish(subject, bytes.into())
            .await
            .unwrap()
            .await
            .unwrap();
        forged += 1;
    }
    assert_eq!(forged, 4);
    // The real history goes on; the runners train only the real run.
    request_run(&ledger, &keys.alice, "r1");
    idle(&host, &nats.url()).await;
    host.shutdown().await;
    svc.stop().await;
    assert_trained_and_evaluated(&ledger, 1);
    assert!(ledger.read_stream("run/forged", 1).unwrap().is_empty());
    assert!(!runner_home.run_dir("forged").exists());
}
