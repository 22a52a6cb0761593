//! [`JetStreamFeed`]: the distributed [`EventFeed`], a durable JetStream pull
//! consumer per runner.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    AckKind,
};
use async_trait::async_trait;
use foundry_events::{EventType, RecordedEvent};
use foundry_runner::{Delivery, EventFeed, Result, RunnerError};
use futures::StreamExt;
use tokio::sync::watch;

use crate::{BusError, STREAM, SUBJECTS};

/// Tuning of a [`JetStreamFeed`].
#[derive(Clone, Copy, Debug)]
pub struct FeedOptions {
    /// How long JetStream waits for an ack (or a progress signal) before it
    /// redelivers. The host signals progress every 10 s on long work.
    pub ack_wait: Duration,
    /// How long a nak'ed event waits before it is delivered again.
    pub nak_delay: Duration,
    /// How long to wait before pulling again after the connection failed.
    pub retry: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            ack_wait: Duration::from_secs(30),
            nak_delay: Duration::from_millis(100),
            retry: Duration::from_millis(250),
        }
    }
}

/// The durable consumer name of a runner: `runner-<name>` with characters
/// NATS forbids in names replaced by `_`.
pub fn consumer_name(runner: &str) -> String {
    let clean: String = runner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("runner-{clean}")
}

/// Delivers a runner's event types from the `FOUNDRY` stream in ledger
/// order through a durable pull consumer (one per runner name, so a restarted
/// or second instance carries on where the last ack left off).
///
/// The consumer filters `foundry.events.>` (nats-server 2.9 allows one
/// filter subject per consumer, and runners react to two types) and acks
/// events of other types as skipped; that is also what lets [`progress`]
/// reach the ledger's head. `max_ack_pending` is 1, so delivery is strictly
/// in order and a nak'ed event is redelivered before anything after it, as
/// in the embedded feed.
///
/// [`progress`]: EventFeed::progress
pub struct JetStreamFeed {
    confirm: Option<std::sync::Arc<dyn foundry_runner::LedgerClient>>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    messages: Option<pull::Stream>,
    types: Vec<String>,
    current: Option<(u64, jetstream::Message)>,
    options: FeedOptions,
    progress_tx: watch::Sender<u64>,
    progress_rx: watch::Receiver<u64>,
}

impl JetStreamFeed {
    /// Opens (creating if needed) the durable consumer of `runner` for
    /// `types` on the `FOUNDRY` stream, which must exist.
    pub async fn open(
        js: &jetstream::Context,
        runner: &str,
        types: &[EventType],
        options: FeedOptions,
    ) -> std::result::Result<Self, BusError> {
        let stream = js.get_stream(STREAM).await.map_err(|e| {
            BusError::JetStream(format!(
                "stream {STREAM}: {e} (start `ledger serve` once to create it)"
            ))
        })?;
        let name = consumer_name(runner);
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("foundry runner {runner}")),
                    filter_subject: SUBJECTS.to_string(),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    max_ack_pending: 1,
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::JetStream(format!("consumer {name}: {e}")))?;
        let mut consumer = consumer;
        let info = consumer
            .info()
            .await
            .map_err(|e| BusError::JetStream(format!("consumer {name}: {e}")))?;
        // Progress starts at the ledger seq of the last acked message.
        let floor = info.ack_floor.stream_sequence;
        let start = if floor == 0 {
            0
        } else {
            match stream.get_raw_message(floor).await {
                Ok(m) => RecordedEvent::decode(&m.payload)?.seq,
                Err(e) => {
                    return Err(BusError::JetStream(format!(
                        "consumer {name}: cannot read its ack floor (stream seq {floor}): {e}"
                    )))
                }
            }
        };
        let (progress_tx, progress_rx) = watch::channel(start);
        Ok(JetStreamFeed {
            confirm: None,
            consumer,
            messages: None,
            types: types.iter().map(|t| t.as_str().to_string()).collect(),
            current: None,
            options,
            progress_tx,
            progress_rx,
        })
    }

    /// Checks every event it is about to deliver against the ledger
    /// service (`get(seq)`, same hash) before the runner sees it. A record
    /// that anyone with publish rights could have put into the stream is
    /// then never acted upon unless the ledger holds it.
    pub fn confirming_with(
        mut self,
        client: std::sync::Arc<dyn foundry_runner::LedgerClient>,
    ) -> Self {
        self.confirm = Some(client);
        self
    }

    /// Whether the ledger holds `rec` at its seq (`Err`: could not ask).
    async fn confirmed(&self, rec: &RecordedEvent) -> Result<bool> {
        let Some(client) = &self.confirm else {
            return Ok(true);
        };
        Ok(client
            .get(rec.seq)
            .await?
            .is_some_and(|r| r.hash == rec.hash))
    }

    async fn pull(&mut self) -> Option<std::result::Result<jetstream::Message, String>> {
        if self.messages.is_none() {
            match self
                .consumer
                .stream()
                .max_messages_per_batch(1)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(s) => self.messages = Some(s),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        let s = self.messages.as_mut()?;
        match s.next().await {
            Some(Ok(m)) => Some(Ok(m)),
            Some(Err(e)) => Some(Err(e.to_string())),
            None => None,
        }
    }

    async fn settle(&mut self, seq: u64, kind: AckKind) -> Result<()> {
        let Some((cur, msg)) = self.current.take() else {
            return Err(RunnerError::Transport(format!(
                "feed {}: seq {seq} is not the delivered event",
                self.consumer.cached_info().name
            )));
        };
        if cur != seq {
            self.current = Some((cur, msg));
            return Err(RunnerError::Transport(format!(
                "feed {}: seq {seq} settled but seq {cur} is the delivered event",
                self.consumer.cached_info().name
            )));
        }
        // A lost ack only means a redelivery, which the idempotent outcome
        // absorbs; never fail the runner for it.
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(seq, "ack not sent ({e}); the event will be delivered again");
        }
        Ok(())
    }
}

#[async_trait]
impl EventFeed for JetStreamFeed {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let msg = match self.pull().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(
                        consumer = %self.consumer.cached_info().name,
                        "pull failed, retrying: {e}"
                    );
                    self.messages = None;
                    tokio::time::sleep(self.options.retry).await;
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            let attempt = msg
                .info()
                .map(|i| u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX))
                .unwrap_or(1);
            let rec = match RecordedEvent::decode(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    // Not a ledger record: nothing a runner can do with it.
                    tracing::error!(subject = %msg.subject, "not a ledger record, dropped: {e}");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            if self.types.contains(&rec.event_type) {
                match self.confirmed(&rec).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            seq = rec.seq,
                            subject = %msg.subject,
                            "not the ledger's record at this seq (published by someone else?), dropped"
                        );
                        let _ = msg.ack_with(AckKind::Term).await;
                        continue;
                    }
                    Err(e) => {
                        // Could not ask the ledger: deliver nothing now;
                        // JetStream redelivers it after the ack wait.
                        tracing::warn!(seq = rec.seq, "cannot confirm the event yet: {e}");
                        let _ = msg.ack_with(AckKind::Nak(Some(self.options.retry))).await;
                        tokio::time::sleep(self.options.retry).await;
                        continue;
                    }
                }
                self.current = Some((rec.seq, msg));
                return Ok(Delivery {
                    event: rec,
                    attempt,
                });
            }
            if let Err(e) = msg.ack().await {
                tracing::warn!(seq = rec.seq, "skip ack not sent ({e})");
            }
            self.progress_tx.send_replace(rec.seq);
        }
    }

    async fn ack(&mut self, seq: u64) -> Result<()> {
        self.settle(seq, AckKind::Ack).await?;
        self.progress_tx.send_replace(seq);
        Ok(())
    }

    async fn nak(&mut self, seq: u64) -> Result<()> {
        let delay = self.options.nak_delay;
        self.settle(seq, AckKind::Nak((!delay.is_zero()).then_some(delay)))
            .await
    }

    async fn in_progress(&mut self) -> Result<()> {
        if let Some((_, msg)) = &self.current {
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::warn!("progress signal not sent: {e}");
            }
        }
        Ok(())
    }

    fn progress(&self) -> watch::Receiver<u64> {
        self.progress_rx.clone()
    }
}
