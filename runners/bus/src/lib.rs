//! Distribution of committed events over NATS JetStream.
//!
//! The ledger is the record; JetStream only distributes. The
//! [`OutboxPublisher`] publishes every appended event, in seq order, to the
//! stream `FOUNDRY` on `foundry.events.<type>.<stream-kind>` with
//! `Nats-Msg-Id` = event id (so JetStream drops duplicates), and advances the
//! ledger's durable "published through" watermark only after JetStream
//! acknowledged. Whatever is not acknowledged — after a crash, a NATS outage
//! or a restart — is published again, and deduplicated by id.
//!
//! Runners in other processes or machines reach the ledger through
//! [`serve`] (the single writer answering `foundry.api.*` requests, see
//! [`wire`] for the format) with a [`NatsLedgerClient`], and receive events
//! through a [`JetStreamFeed`] (a durable pull consumer per runner).

#![warn(missing_docs)]

pub mod artifacts;
mod feed;
mod remote;
mod service;
pub mod wire;

pub use artifacts::{ArtifactBucket, Uploaded};
pub use feed::{consumer_name, FeedOptions, JetStreamFeed};
pub use remote::{NatsLedgerClient, DEFAULT_RECONNECT, DEFAULT_TIMEOUT};
pub use service::{handle_request, serve, spawn_service, ServeArtifacts, OUTBOX_RETRY};

use async_nats::jetstream::{self, context::Context, message::PublishMessage};
use foundry_events::{EventType, RecordedEvent};
use foundry_ledger::Ledger;
use std::path::PathBuf;
use std::time::Duration;

/// The JetStream stream that carries every event.
pub const STREAM: &str = "FOUNDRY";
/// Subjects of the stream.
pub const SUBJECTS: &str = "foundry.events.>";
/// How long JetStream remembers message ids for deduplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);

/// Why distribution failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect to NATS.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// A JetStream request failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] foundry_ledger::LedgerError),
    /// A stored event could not be decoded.
    #[error(transparent)]
    Event(#[from] foundry_events::EventError),
}

/// How to reach and authenticate to NATS; every option is passed through
/// to the client unchanged.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// Server URL (`nats://127.0.0.1:4222`, `tls://…`).
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// A `.creds` file (JWT + NKey).
    pub creds_file: Option<PathBuf>,
    /// CA certificate(s) to trust for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS even for `nats://` URLs.
    pub require_tls: bool,
}

impl NatsOptions {
    /// Options for a plain URL.
    pub fn url(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Connects, failing fast (no endless retry) with a clear error.
    pub async fn connect(&self) -> Result<async_nats::Client, BusError> {
        let err = |e: &dyn std::fmt::Display| BusError::Connect {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(f) = &self.creds_file {
            o = o.credentials_file(f).await.map_err(|e| err(&e))?;
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((c, k)) = &self.tls_client {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        if self.require_tls {
            o = o.require_tls(true);
        }
        o.connect(self.url.as_str()).await.map_err(|e| err(&e))
    }
}

/// The subject an event is published on: `foundry.events.<type>.<stream-kind>`.
pub fn subject_for(rec: &RecordedEvent) -> String {
    let kind = EventType::parse(&rec.event_type)
        .map(|t| t.stream_kind())
        .unwrap_or("unknown");
    format!("foundry.events.{}.{kind}", rec.event_type)
}

/// Creates the `FOUNDRY` stream if it does not exist (file storage, a
/// duplicate window for `Nats-Msg-Id` deduplication).
pub async fn ensure_stream(js: &Context) -> Result<jetstream::stream::Stream, BusError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.to_string(),
        subjects: vec![SUBJECTS.to_string()],
        duplicate_window: DUPLICATE_WINDOW,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::JetStream(e.to_string()))
}

/// Result of one publishing pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Events JetStream stored for the first time.
    pub published: u64,
    /// Events JetStream recognised as already stored (same id).
    pub duplicates: u64,
    /// The watermark after the pass.
    pub through: u64,
}

/// Publishes the ledger's outbox to JetStream.
pub struct OutboxPublisher {
    ledger: Ledger,
    js: Context,
    batch: usize,
}

impl OutboxPublisher {
    /// A publisher over an open ledger and a JetStream context.
    pub fn new(ledger: Ledger, js: Context) -> Self {
        OutboxPublisher {
            ledger,
            js,
            batch: 512,
        }
    }

    /// Publishes the events with seqs `from..=to` (whatever the watermark),
    /// awaiting every acknowledgement. The report's `through` is the last seq
    /// acknowledged in order; the error, if any, says what stopped it.
    pub async fn publish_range(&self, from: u64, to: u64) -> (PublishReport, Option<BusError>) {
        let mut report = PublishReport {
            through: from.saturating_sub(1),
            ..Default::default()
        };
        let err = self.publish_range_into(from, to, &mut report).await.err();
        (report, err)
    }

    async fn publish_range_into(
        &self,
        from: u64,
        to: u64,
        report: &mut PublishReport,
    ) -> Result<(), BusError> {
        let mut pending = Vec::new();
        for seq in from..=to {
            let Some(bytes) = self.ledger.get_raw(seq)? else {
                break;
            };
            let rec = RecordedEvent::decode(&bytes)?;
            let msg = PublishMessage::build()
                .payload(bytes.into())
                .message_id(rec.event_id.to_string());
            let fut = self
                .js
                .send_publish(subject_for(&rec), msg)
                .await
                .map_err(|e| BusError::JetStream(format!("seq {seq}: {e}")))?;
            pending.push((seq, fut));
        }
        for (seq, fut) in pending {
            let ack = fut
                .await
                .map_err(|e| BusError::JetStream(format!("seq {seq} not acknowledged: {e}")))?;
            if ack.duplicate {
                report.duplicates += 1;
            } else {
                report.published += 1;
            }
            report.through = seq;
        }
        Ok(())
    }

    /// Publishes everything pending, batch by batch, advancing the durable
    /// watermark after each acknowledged batch.
    pub async fn publish_pending(&self) -> Result<PublishReport, BusError> {
        let mut total = PublishReport {
            through: self.ledger.published_through()?,
            ..Default::default()
        };
        loop {
            let pending = self.ledger.outbox_pending(self.batch)?;
            let (Some(&from), Some(&to)) = (pending.first(), pending.last()) else {
                return Ok(total);
            };
            let (report, err) = self.publish_range(from, to).await;
            self.ledger.outbox_ack_through(report.through)?;
            total.published += report.published;
            total.duplicates += report.duplicates;
            total.through = report.through;
            if let Some(e) = err {
                return Err(e);
            }
        }
    }

    /// Runs until `stop` turns true: publishes whenever the ledger's head
    /// moves, and retries every `retry` while NATS is unreachable.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>, retry: Duration) {
        let mut head = self.ledger.watch_head();
        loop {
            let failed = self.publish_pending().await.is_err();
            if *stop.borrow() {
                return;
            }
            let wait = if failed {
                retry
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = head.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            if *stop.borrow() {
                // One last pass so a clean shutdown leaves nothing behind.
                let _ = self.publish_pending().await;
                return;
            }
        }
    }
}
