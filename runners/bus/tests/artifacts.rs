//! Artifact files over a real nats-server's object store: uploads that
//! resume and never duplicate, fetches that trust nothing, and `ledger
//! serve`'s rule that an append naming a file is confirmed only once the
//! file is in its home.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NatsServer, TestKeys};
use foundry_bus::{
    artifacts::{BUCKET, CHUNK},
    serve, ArtifactBucket, NatsLedgerClient, NatsOptions, ServeArtifacts, Uploaded,
};
use foundry_events::{CheckpointCommitted, Event, FileDigest, Sha256Digest};
use foundry_ledger::{AppendRequest, Home, Identity, LedgerError, NewEvent};
use foundry_runner::{LedgerClient, RunnerError};
use tokio::sync::watch;

/// Deterministic bytes that differ chunk to chunk.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> (std::path::PathBuf, Sha256Digest) {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    (p, Sha256Digest::of(data))
}

async fn bucket_on(url: impl AsRef<str>) -> ArtifactBucket {
    ArtifactBucket::on(NatsOptions::url(url.as_ref()).connect().await.unwrap())
        .await
        .unwrap()
}

async fn chunk_messages(url: &str) -> u64 {
    let js = async_nats::jetstream::new(NatsOptions::url(url).connect().await.unwrap());
    let mut s = js.get_stream(format!("OBJ_{BUCKET}")).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_idempotent_and_fetches_are_verified() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3 * CHUNK + 17, 1);
    let (path, digest) = write(dir.path(), "weights", &data);
    let bucket = bucket_on(nats.url()).await;
    assert!(!bucket.contains(&digest).await.unwrap());
    assert_eq!(
        bucket.upload(&digest, &path).await.unwrap(),
        Uploaded::Written {
            resumed_at: 0,
            chunks: 4
        }
    );
    let after_first = chunk_messages(&nats.url()).await;
    assert_eq!(
        bucket.upload(&digest, &path).await.unwrap(),
        Uploaded::AlreadyThere
    );
    assert_eq!(
        chunk_messages(&nats.url()).await,
        after_first,
        "no second copy"
    );
    assert!(bucket.contains(&digest).await.unwrap());

    // Another home fetches it, verified; a stock object-store reader agrees.
    let home = Home::at(dir.path().join("elsewhere"));
    let store = home.artifacts();
    assert!(bucket.fetch(&digest, &store).await.unwrap());
    assert_eq!(std::fs::read(store.path_of(&digest)).unwrap(), data);
    let js = async_nats::jetstream::new(NatsOptions::url(nats.url()).connect().await.unwrap());
    let mut obj = js
        .get_object_store(BUCKET)
        .await
        .unwrap()
        .get(digest.to_hex())
        .await
        .unwrap();
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut read)
        .await
        .unwrap();
    assert_eq!(read, data);

    // Unknown digests are not there; an empty file travels too.
    assert!(!bucket
        .fetch(&Sha256Digest::of(b"never uploaded"), &store)
        .await
        .unwrap());
    let (empty, empty_digest) = write(dir.path(), "empty", b"");
    bucket.upload(&empty_digest, &empty).await.unwrap();
    assert!(bucket.fetch(&empty_digest, &store).await.unwrap());
    assert_eq!(std::fs::read(store.path_of(&empty_digest)).unwrap(), b"");

    // Removed (retention), then uploaded again at once: a new generation,
    // so the stream's duplicate window cannot swallow its chunks.
    bucket.remove(&digest).await.unwrap();
    assert!(!bucket.contains(&digest).await.unwrap());
    let fresh = Home::at(dir.path().join("fresh")).artifacts();
    assert!(!bucket.fetch(&digest, &fresh).await.unwrap());
    assert!(matches!(
        bucket.upload(&digest, &path).await.unwrap(),
        Uploaded::Written { chunks: 4, .. }
    ));
    assert!(bucket.fetch(&digest, &fresh).await.unwrap());
    assert_eq!(std::fs::read(fresh.path_of(&digest)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_and_leaves_one_whole_copy() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(160 * CHUNK + 5, 2);
    let (path, digest) = write(dir.path(), "big", &data);
    let bucket = bucket_on(nats.url()).await;
    // Start an upload on its own connection and cut it off midway.
    let url = nats.url();
    let (p, d) = (path.clone(), digest);
    let first = tokio::spawn(async move {
        let b = bucket_on(&url).await;
        b.upload(&d, &p).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = chunk_messages(&nats.url()).await;
        if n >= 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let _ = first.await;
    // Cut off before its metadata: nothing a reader could take for the file.
    assert!(!bucket.contains(&digest).await.unwrap());
    let stored = chunk_messages(&nats.url()).await;
    assert!(stored > 0 && stored < 161, "{stored} chunks stored");

    let resumed = bucket.upload(&digest, &path).await.unwrap();
    let Uploaded::Written { resumed_at, chunks } = resumed else {
        panic!("{resumed:?}")
    };
    assert_eq!(chunks, 161);
    assert!(resumed_at > 0, "{resumed:?}");
    // Every chunk once, plus one metadata message.
    assert_eq!(chunk_messages(&nats.url()).await, 161 + 1);
    let store = Home::at(dir.path().join("reader")).artifacts();
    assert!(bucket.fetch(&digest, &store).await.unwrap());
    assert_eq!(std::fs::read(store.path_of(&digest)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bytes_under_a_digest_are_refused_and_replaced() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(CHUNK + 3, 3);
    let (path, digest) = write(dir.path(), "true", &data);
    // Someone with write access to the bucket stores other bytes under the
    // name, through the stock client.
    let bucket = bucket_on(nats.url()).await;
    let js = async_nats::jetstream::new(NatsOptions::url(nats.url()).connect().await.unwrap());
    let raw = js.get_object_store(BUCKET).await.unwrap();
    let mut forged: &[u8] = b"not the file";
    raw.put(digest.to_hex().as_str(), &mut forged)
        .await
        .unwrap();

    let store = Home::at(dir.path().join("reader")).artifacts();
    let err = bucket.fetch(&digest, &store).await.unwrap_err().to_string();
    assert!(err.contains("other bytes"), "{err}");
    assert!(!store.contains(&digest));
    // The honest upload does not take the forgery for the file.
    assert!(matches!(
        bucket.upload(&digest, &path).await.unwrap(),
        Uploaded::Written { .. }
    ));
    assert!(bucket.fetch(&digest, &store).await.unwrap());
    assert_eq!(std::fs::read(store.path_of(&digest)).unwrap(), data);
}

fn checkpoint(files: Vec<FileDigest>) -> AppendRequest {
    AppendRequest::new(vec![NewEvent::new(Event::CheckpointCommitted(
        CheckpointCommitted {
            run_id: "r1".into(),
            checkpoint_id: "c1".into(),
            step: 10,
            files,
            loss: None,
            location: "adapters/r1/step-10".into(),
        },
    ))])
    .idempotent("ckpt/c1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_confirms_an_append_only_once_its_files_are_in_its_home() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let serve_home = Home::at(dir.path().join("serve"));
    let ledger = serve_home.init().unwrap();
    let keys = TestKeys::new();
    keys.genesis(&ledger);
    let (stop, rx) = watch::channel(false);
    let conn = NatsOptions::url(nats.url()).connect().await.unwrap();
    let gate = ServeArtifacts::open(serve_home.artifacts(), &conn)
        .await
        .unwrap();
    let task = tokio::spawn(serve(ledger.clone(), conn, rx, Some(gate)));

    // The trainer's home holds the checkpoint file.
    let trainer_home = Home::at(dir.path().join("trainer"));
    let data = bytes(2 * CHUNK, 4);
    let (src, _) = write(dir.path(), "adapter_model.safetensors", &data);
    let (digest, size) = trainer_home.artifacts().put_file(&src).unwrap();
    let files = vec![FileDigest {
        path: "adapter_model.safetensors".into(),
        sha256: digest,
        bytes: size,
    }];
    let nc = || async { NatsOptions::url(nats.url()).connect().await.unwrap() };
    let bare = NatsLedgerClient::new(nc().await, keys.trainer.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bare.head().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client that does not ship files: refused, nothing recorded.
    let head = ledger.head().seq;
    let err = bare.append(checkpoint(files.clone())).await.unwrap_err();
    assert!(
        matches!(&err, RunnerError::Ledger(LedgerError::InvalidAppend(m)) if m.contains("not in the artifact bucket")),
        "{err}"
    );
    assert_eq!(ledger.head().seq, head);

    // A forger with an unregistered key makes the service fetch nothing,
    // even for a file that is in the bucket.
    let bucket = ArtifactBucket::on(nc().await).await.unwrap();
    bucket
        .upload(&digest, &trainer_home.artifacts().path_of(&digest))
        .await
        .unwrap();
    let forger = NatsLedgerClient::new(nc().await, Identity::generate("runner:trainer").unwrap());
    let err = forger.append(checkpoint(files.clone())).await.unwrap_err();
    assert!(
        matches!(&err, RunnerError::Ledger(LedgerError::Unauthorized(_))),
        "{err}"
    );
    assert!(!serve_home.artifacts().contains(&digest));
    bucket.remove(&digest).await.unwrap();

    // The trainer's client uploads first; the service fetches, checks and
    // only then appends.
    let trainer = bare.clone().with_artifacts(trainer_home.artifacts());
    trainer.append(checkpoint(files.clone())).await.unwrap();
    assert_eq!(ledger.head().seq, head + 1);
    assert!(serve_home.artifacts().check(&digest).unwrap());
    // Another machine's runner fetches it from the bucket.
    let evaluator_home = Home::at(dir.path().join("evaluator"));
    let evaluator = NatsLedgerClient::new(nc().await, keys.evaluator.clone());
    assert!(evaluator
        .fetch_artifact(&digest, &evaluator_home.artifacts())
        .await
        .unwrap());
    assert_eq!(
        std::fs::read(evaluator_home.artifacts().path_of(&digest)).unwrap(),
        data
    );
    // A retry of the same append is the same event, and no second copy.
    trainer.append(checkpoint(files)).await.unwrap();
    assert_eq!(ledger.head().seq, head + 1);

    stop.send_replace(true);
    task.await.unwrap().unwrap();
}
