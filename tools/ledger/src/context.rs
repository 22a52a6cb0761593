//! What every command needs: the home, the actor, the output mode, and, with
//! `--nats`, the remote ledger.

use anyhow::{anyhow, Context as _, Result};
use foundry_bus::{NatsLedgerClient, NatsOptions};
use foundry_ledger::{AppendOutcome, AppendRequest, Home, Ledger, LedgerError};
use foundry_runner::LedgerClient;
use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a command waits for another process to release the ledger lock
/// before it gives up with a clear error.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Records fetched per request while a replica catches up.
const SYNC_PAGE: usize = 5_000;

/// The ledger of a `ledger serve` reached over NATS. Commands append through
/// it and read a verified replica of it kept in the home.
pub struct Remote {
    /// How to reach it.
    pub opts: NatsOptions,
    rt: tokio::runtime::Runtime,
    client: OnceCell<NatsLedgerClient>,
}

impl Remote {
    fn client(&self) -> Result<&NatsLedgerClient> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let nats = self
            .rt
            .block_on(self.opts.connect())
            .with_context(|| format!("cannot reach the ledger service at {}", self.opts.url))?;
        Ok(self.client.get_or_init(|| NatsLedgerClient::new(nats)))
    }
}

/// Shared state of one CLI invocation.
pub struct Context {
    /// The Foundry home (with `--nats`: where the replica lives).
    pub home: Home,
    /// Who acts (recorded on appended events).
    pub actor: String,
    /// JSON output instead of tables.
    pub json: bool,
    /// The remote ledger, when `--nats` was given.
    pub remote: Option<Remote>,
}

impl Context {
    /// Builds the context from the global options.
    pub fn new(
        home: PathBuf,
        actor: Option<String>,
        json: bool,
        nats: Option<NatsOptions>,
    ) -> Result<Self> {
        let actor = actor
            .filter(|a| !a.trim().is_empty())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .unwrap_or_else(|| "unknown".to_string());
        let remote = match nats {
            Some(opts) => Some(Remote {
                opts,
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?,
                client: OnceCell::new(),
            }),
            None => None,
        };
        Ok(Context {
            home: Home::at(home),
            actor,
            json,
            remote,
        })
    }

    /// The home's own ledger, waiting briefly if another short-lived command
    /// holds it (what `serve` shares, and what every command uses without
    /// `--nats`).
    pub fn local_ledger(&self) -> Result<Ledger> {
        let start = Instant::now();
        loop {
            match self.home.open_ledger() {
                Err(LedgerError::Locked(_)) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return Ok(other?),
            }
        }
    }

    /// The ledger to read: the home's own, or with `--nats` the home's
    /// replica of the remote one, brought up to its head first.
    pub fn ledger(&self) -> Result<Ledger> {
        if self.remote.is_none() {
            return self.local_ledger();
        }
        let ledger = if self.home.ledger_dir().exists() {
            self.local_ledger()?
        } else {
            self.home.init()?
        };
        self.sync(&ledger)?;
        Ok(ledger)
    }

    /// Brings the replica up to the remote head (no-op without `--nats`).
    /// Every copied record is checked against the chain; a home whose ledger
    /// is not a replica of that remote one is refused.
    pub fn sync(&self, ledger: &Ledger) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let client = remote.client()?;
        loop {
            let from = ledger.head().seq + 1;
            let page = remote
                .rt
                .block_on(client.read_raw(from, SYNC_PAGE))
                .map_err(|e| anyhow!("reading the remote ledger at {}: {e}", remote.opts.url))?;
            if page.is_empty() {
                return Ok(());
            }
            ledger.replicate(&page).with_context(|| {
                format!(
                    "{} is not a replica of the ledger at {}",
                    self.home.root().display(),
                    remote.opts.url
                )
            })?;
        }
    }

    /// Appends: to the home's ledger, or with `--nats` through the remote
    /// service (the replica is then synced, so the result can be read).
    pub fn append(&self, ledger: &Ledger, req: AppendRequest) -> Result<AppendOutcome> {
        let Some(remote) = &self.remote else {
            return Ok(ledger.append(req)?);
        };
        let client = remote.client()?;
        let out = remote
            .rt
            .block_on(client.append(req))
            .map_err(|e| anyhow!("append at {}: {e}", remote.opts.url))?;
        self.sync(ledger)?;
        Ok(out)
    }

    /// With `--nats`: syncs until `done` holds or `wait` has passed; returns
    /// whether it held. Runners on the bus do the work meanwhile.
    pub fn wait_remote(
        &self,
        ledger: &Ledger,
        wait: Duration,
        done: impl Fn(&Ledger) -> Result<bool>,
    ) -> Result<bool> {
        let start = Instant::now();
        loop {
            self.sync(ledger)?;
            if done(ledger)? {
                return Ok(true);
            }
            if start.elapsed() >= wait {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// How long a command waits over NATS for the runners' answer (an eval, a
/// promotion decision): FOUNDRY_WAIT_S, default 600.
pub fn remote_wait() -> Duration {
    Duration::from_secs(
        std::env::var("FOUNDRY_WAIT_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    foundry_events::Timestamp(nanos).to_rfc3339()
}
