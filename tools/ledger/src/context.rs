//! What every command needs: the home, the actor and the output mode.

use anyhow::Result;
use foundry_ledger::{Home, Ledger, LedgerError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a command waits for another process to release the ledger lock
/// before it gives up with a clear error.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Shared state of one CLI invocation.
pub struct Context {
    /// The Foundry home.
    pub home: Home,
    /// Who acts (recorded on appended events).
    pub actor: String,
    /// JSON output instead of tables.
    pub json: bool,
}

impl Context {
    /// Builds the context from the global options.
    pub fn new(home: PathBuf, actor: Option<String>, json: bool) -> Self {
        let actor = actor
            .filter(|a| !a.trim().is_empty())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .unwrap_or_else(|| "unknown".to_string());
        Context {
            home: Home::at(home),
            actor,
            json,
        }
    }

    /// Opens the home's ledger, waiting briefly if another short-lived
    /// command holds it.
    pub fn ledger(&self) -> Result<Ledger> {
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
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    foundry_events::Timestamp(nanos).to_rfc3339()
}
