//! [`NatsLedgerClient`]: the ledger as a remote runner sees it, through the
//! `ledger serve` request/reply service.

use std::time::Duration;

use async_trait::async_trait;
use foundry_events::{EventType, RecordedEvent};
use foundry_ledger::{AppendOutcome, Identity, SignedBatch};
use foundry_runner::{LedgerClient, Result, RunnerError};
use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;

use crate::wire::{self, ops, Page, Reply};

/// How long a request waits for the service by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request keeps retrying by default while no service is
/// subscribed (a `ledger serve` restart).
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(5);

/// A [`LedgerClient`] over NATS request/reply. Conflicts and invalid appends
/// come back as the same `LedgerError`s the embedded client returns; an
/// unreachable or silent service is `RunnerError::Transport` saying which
/// operation and why. A request nobody received (no responders: the service
/// is restarting) is sent again for a while, which is always safe; a request
/// that timed out is not retried here, because it may have been applied.
///
/// Appends are signed here with the client's [`Identity`]; the service
/// checks the signature and the key's roles, so the NATS connection's own
/// credentials never let anyone append as someone else.
#[derive(Clone)]
pub struct NatsLedgerClient {
    client: async_nats::Client,
    identity: Identity,
    timeout: Duration,
    reconnect: Duration,
}

impl NatsLedgerClient {
    /// A client over a connected NATS client, signing as `identity`.
    pub fn new(client: async_nats::Client, identity: Identity) -> Self {
        NatsLedgerClient {
            client,
            identity,
            timeout: DEFAULT_TIMEOUT,
            reconnect: DEFAULT_RECONNECT,
        }
    }

    /// The same connection, signing as another identity.
    pub fn acting_as(&self, identity: Identity) -> Self {
        NatsLedgerClient {
            identity,
            ..self.clone()
        }
    }

    /// Sets how long a request keeps being resent while no service answers
    /// (zero: fail at once).
    pub fn with_reconnect(mut self, reconnect: Duration) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets how long one request waits for its reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<Q: Serialize, R: DeserializeOwned>(&self, op: &'static str, q: &Q) -> Result<R> {
        let body = wire::encode(q)
            .map_err(|e| RunnerError::Transport(format!("{op}: cannot encode the request: {e}")))?;
        let started = tokio::time::Instant::now();
        let msg = loop {
            let req = async_nats::Request::new()
                .payload(body.clone().into())
                .timeout(Some(self.timeout));
            let answer = tokio::time::timeout(
                self.timeout + Duration::from_millis(500),
                self.client.send_request(op, req),
            )
            .await;
            match answer {
                Err(_) => return Err(self.timed_out(op)),
                Ok(Err(e)) => {
                    use async_nats::RequestErrorKind as K;
                    return Err(match e.kind() {
                        K::TimedOut => self.timed_out(op),
                        // Nobody received it: safe to send again for a while.
                        K::NoResponders if started.elapsed() < self.reconnect => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        K::NoResponders => RunnerError::Transport(format!(
                            "{op}: no ledger service is answering (is `ledger serve` running against this NATS server?)"
                        )),
                        _ => RunnerError::Transport(format!("{op}: {e}")),
                    });
                }
                Ok(Ok(m)) => break m,
            }
        };
        match wire::decode::<Reply<R>>(&msg.payload) {
            Ok(Reply::Ok(r)) => Ok(r),
            Ok(Reply::Err(w)) => Err(match w.to_ledger() {
                Some(l) => RunnerError::Ledger(l),
                None => RunnerError::Transport(format!("{op}: ledger service: {}", w.message)),
            }),
            Err(e) => Err(RunnerError::Transport(format!(
                "{op}: malformed reply from the ledger service: {e}"
            ))),
        }
    }

    fn timed_out(&self, op: &str) -> RunnerError {
        RunnerError::Transport(format!(
            "{op}: the ledger service did not answer within {:.1}s",
            self.timeout.as_secs_f64()
        ))
    }
}

fn records(b: &[ByteBuf]) -> Result<Vec<RecordedEvent>> {
    Ok(wire::decode_records(b)?)
}

#[async_trait]
impl LedgerClient for NatsLedgerClient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn append_signed(&self, batch: SignedBatch) -> Result<AppendOutcome> {
        let w = wire::WireAppend::from_batch(&batch);
        let o: wire::WireOutcome = self.call(ops::APPEND, &w).await?;
        Ok(o.into_outcome()?)
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let mut from = from_version;
        loop {
            let q = wire::ReadStream {
                stream: stream.to_string(),
                from_version: from,
            };
            let p: Page = self.call(ops::READ_STREAM, &q).await?;
            let recs = records(&p.events)?;
            let last = recs.last().map(|r| r.stream_version);
            out.extend(recs);
            match (p.complete, last) {
                (false, Some(v)) => from = v + 1,
                _ => return Ok(out),
            }
        }
    }

    async fn read_type(
        &self,
        ty: EventType,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut out: Vec<RecordedEvent> = Vec::new();
        let mut from = from;
        loop {
            let q = wire::ReadType {
                event_type: ty.as_str().to_string(),
                from,
                limit: (limit - out.len()) as u64,
            };
            let p: Page = self.call(ops::READ_TYPE, &q).await?;
            let recs = records(&p.events)?;
            let last = recs.last().map(|r| r.seq);
            out.extend(recs);
            match (p.complete, last) {
                (false, Some(s)) if out.len() < limit => from = s + 1,
                _ => return Ok(out),
            }
        }
    }

    async fn read_raw(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut from = from;
        loop {
            let q = wire::ReadRaw {
                from,
                limit: (limit - out.len()) as u64,
            };
            let p: Page = self.call(ops::READ_RAW, &q).await?;
            let n = p.events.len() as u64;
            out.extend(p.events.into_iter().map(|b| b.into_vec()));
            if p.complete || n == 0 || out.len() >= limit {
                return Ok(out);
            }
            from += n;
        }
    }

    async fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        let b: Option<ByteBuf> = self.call(ops::GET, &wire::Get { seq }).await?;
        Ok(b.map(|b| RecordedEvent::decode(&b)).transpose()?)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let q = wire::StreamVersion {
            stream: stream.to_string(),
        };
        self.call(ops::STREAM_VERSION, &q).await
    }

    async fn head(&self) -> Result<u64> {
        self.call(ops::HEAD, &wire::Head {}).await
    }
}
