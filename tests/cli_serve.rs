//! `ledger serve` and `ledger runner` against a real nats-server started by
//! the test (free port, JetStream in a temporary directory).

use crate::common;

use std::net::TcpListener;
use std::process::Command;

use common::{fails, nats_server, ok, start, Proc};
use foundry_bus::{consumer_name, NatsLedgerClient, NatsOptions, STREAM};
use foundry_events::{MetricPoint, MetricsLogged};
use foundry_ledger::{AppendRequest, NewEvent};
use foundry_runner::LedgerClient;

fn signal(p: &mut Proc, sig: &str) -> std::process::ExitStatus {
    Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap();
    p.0.wait().unwrap()
}

#[test]
fn serve_shares_the_ledger_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (_nats, url) = nats_server();
    ok(&home, &["init"]);
    let (mut serve, mut err) = start(&home, &["serve", "--nats", &url], &[], "serving");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A trainer elsewhere, holding the trainer key this home registered.
        let trainer =
            foundry_ledger::Identity::load(&home.join("keys/runner-trainer.nk"), None).unwrap();
        let c = NatsLedgerClient::new(NatsOptions::url(&url).connect().await.unwrap(), trainer);
        let req = AppendRequest::new(vec![NewEvent::new(MetricsLogged {
            run_id: "r1".into(),
            points: vec![MetricPoint {
                step: 1,
                loss: 0.5,
                lr: 1e-4,
                grad_norm: 1.0,
                tokens: 1,
                tokens_per_s: 1.0,
                elapsed_ms: 1,
            }],
        })]);
        let out = c.append(req).await.unwrap();
        // After the genesis of the six keys `init` made.
        assert_eq!(out.events[0].seq, 7);
        assert_eq!(c.head().await.unwrap(), 7);

        // A runner process registers its durable consumer and stops on SIGTERM.
        let promoter_key = home.join("keys/runner-promoter.nk");
        let (mut runner, _runner_err) = start(
            &dir.path().join("runner-home"),
            &[
                "runner",
                "--nats",
                &url,
                "--only",
                "promoter",
                "--key",
                promoter_key.to_str().unwrap(),
            ],
            &[],
            "running promoter",
        );
        let js = async_nats::jetstream::new(NatsOptions::url(&url).connect().await.unwrap());
        let stream = js.get_stream(STREAM).await.unwrap();
        stream
            .consumer_info(consumer_name("promoter"))
            .await
            .unwrap();
        assert!(signal(&mut runner, "-TERM").success());
    });

    // Ctrl-C: the service drains the outbox and exits 0.
    assert!(signal(&mut serve, "-INT").success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(
        rest.contains("stopped; published through seq 7 of 7"),
        "{rest}"
    );
    let log = ok(&home, &["log"]);
    assert!(log.contains("MetricsLogged"), "{log}");
}

#[test]
fn serve_without_a_reachable_nats_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &["init"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let e = fails(&home, &["serve", "--nats", &url]);
    assert!(
        e.contains(&format!("cannot connect to NATS at {url}")),
        "{e}"
    );
}
