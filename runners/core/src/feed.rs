//! Durable delivery of events to one runner.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use foundry_events::{EventType, RecordedEvent};
use foundry_ledger::{Ledger, Tail};
use tokio::sync::watch;

use crate::{Result, RunnerError};

/// One delivered event and how many times it has been delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The committed event.
    pub event: RecordedEvent,
    /// 1 on first delivery, 2 on the first redelivery, …
    pub attempt: u32,
}

/// Delivers the events of some types, in ledger order, until each is acked.
/// An event that is not acked (the runner crashed, or nak'ed it) comes again.
#[async_trait]
pub trait EventFeed: Send {
    /// The next event to handle, waiting for one if needed.
    async fn next(&mut self) -> Result<Delivery>;
    /// The runner is done with `seq`; it will not be delivered again.
    async fn ack(&mut self, seq: u64) -> Result<()>;
    /// The runner could not handle `seq` now; deliver it again.
    async fn nak(&mut self, seq: u64) -> Result<()>;
    /// The runner is still working on the current event (long work).
    async fn in_progress(&mut self) -> Result<()>;
    /// The ledger seq through which every event has been handled or skipped.
    fn progress(&self) -> watch::Receiver<u64>;
}

/// The embedded feed: tails the local ledger and keeps its cursor (the last
/// acked seq) in a file, written atomically on every ack, so a restarted
/// runner carries on where it stopped and redelivers what it had not acked.
pub struct EmbeddedFeed {
    ledger: Ledger,
    types: Vec<EventType>,
    cursor_file: PathBuf,
    tail: Tail,
    attempts: HashMap<u64, u32>,
    progress_tx: watch::Sender<u64>,
    progress_rx: watch::Receiver<u64>,
}

impl EmbeddedFeed {
    /// A feed of `types` for the runner whose cursor lives in `cursor_file`
    /// (created on the first ack; absent means "from the beginning").
    pub fn open(ledger: Ledger, types: &[EventType], cursor_file: PathBuf) -> Result<Self> {
        let cursor = match std::fs::read_to_string(&cursor_file) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                RunnerError::Missing(format!(
                    "{}: not a cursor (expected a seq, found {:?})",
                    cursor_file.display(),
                    s.trim()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(RunnerError::io(&cursor_file, e)),
        };
        let (progress_tx, progress_rx) = watch::channel(cursor);
        Ok(EmbeddedFeed {
            tail: ledger.tail(cursor),
            ledger,
            types: types.to_vec(),
            cursor_file,
            attempts: HashMap::new(),
            progress_tx,
            progress_rx,
        })
    }

    fn wanted(&self, rec: &RecordedEvent) -> bool {
        self.types.iter().any(|t| t.as_str() == rec.event_type)
    }

    fn save_cursor(&self, seq: u64) -> Result<()> {
        let dir = self
            .cursor_file
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| RunnerError::io(&dir, e))?;
        let tmp = self.cursor_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{seq}\n")).map_err(|e| RunnerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.cursor_file).map_err(|e| RunnerError::io(&self.cursor_file, e))
    }
}

#[async_trait]
impl EventFeed for EmbeddedFeed {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let rec = self.tail.next().await?;
            if self.wanted(&rec) {
                let attempt = self.attempts.entry(rec.seq).or_insert(0);
                *attempt += 1;
                return Ok(Delivery {
                    attempt: *attempt,
                    event: rec,
                });
            }
            // Nothing to do for this one: it counts as handled.
            self.progress_tx.send_replace(rec.seq);
        }
    }

    async fn ack(&mut self, seq: u64) -> Result<()> {
        self.save_cursor(seq)?;
        self.attempts.remove(&seq);
        self.progress_tx.send_replace(seq);
        Ok(())
    }

    async fn nak(&mut self, seq: u64) -> Result<()> {
        self.tail = self.ledger.tail(seq.saturating_sub(1));
        Ok(())
    }

    async fn in_progress(&mut self) -> Result<()> {
        Ok(())
    }

    fn progress(&self) -> watch::Receiver<u64> {
        self.progress_rx.clone()
    }
}
