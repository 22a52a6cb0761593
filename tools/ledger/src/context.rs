//! What every command needs: the home, the identity it signs with, the
//! output mode, and, with `--nats`, the remote ledger.

use anyhow::{anyhow, bail, Context as _, Result};
use foundry_bus::{NatsLedgerClient, NatsOptions};
use foundry_ledger::{AppendOutcome, AppendRequest, Home, Identity, Ledger, LedgerError};
use foundry_runner::LedgerClient;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
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
    fn client(&self, identity: &Identity, home: &Home) -> Result<&NatsLedgerClient> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let nats = self
            .rt
            .block_on(self.opts.connect())
            .with_context(|| format!("cannot reach the ledger service at {}", self.opts.url))?;
        Ok(self.client.get_or_init(|| {
            NatsLedgerClient::new(nats, identity.clone()).with_artifacts(home.artifacts())
        }))
    }
}

/// The home's file naming its default key (written by `ledger init`).
pub const DEFAULT_KEY_FILE: &str = "default";

/// Shared state of one CLI invocation.
pub struct Context {
    /// The Foundry home (with `--nats`: where the replica lives).
    pub home: Home,
    /// `--key`: a key file, a key name, or (FOUNDRY_KEY) a literal seed.
    key: Option<String>,
    /// `--trust-root`: the root key (nkey) a history must have.
    pub trust_root: Option<String>,
    identity: OnceCell<Identity>,
    /// JSON output instead of tables.
    pub json: bool,
    /// The remote ledger, when `--nats` was given.
    pub remote: Option<Remote>,
}

/// Where a user's own keys live when not in a home:
/// `$XDG_CONFIG_HOME/foundry/keys` or `~/.config/foundry/keys`.
pub fn user_keys_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|c| c.join("foundry").join("keys"))
}

impl Context {
    /// Builds the context from the global options.
    pub fn new(
        home: PathBuf,
        key: Option<String>,
        trust_root: Option<String>,
        json: bool,
        nats: Option<NatsOptions>,
    ) -> Result<Self> {
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
            key: key.filter(|k| !k.trim().is_empty()),
            trust_root: trust_root.filter(|k| !k.trim().is_empty()),
            identity: OnceCell::new(),
            json,
            remote,
        })
    }

    /// Whether `--key` (or FOUNDRY_KEY) named a key.
    pub fn key_given(&self) -> bool {
        self.key.is_some()
    }

    /// Where this home keeps key files.
    pub fn keys_dir(&self) -> PathBuf {
        self.home.root().join("keys")
    }

    /// Finds a key by name: `<home>/keys/NAME.nk`, then the user's
    /// config dir.
    pub fn find_key(&self, name: &str) -> Option<PathBuf> {
        let mut dirs = vec![self.keys_dir()];
        dirs.extend(user_keys_dir());
        dirs.into_iter()
            .map(|d| foundry_ledger::trust::key_path(&d, name))
            .find(|p| p.is_file())
    }

    /// Loads the identity named by `spec`: a key file's path, a key name
    /// (looked up with [`Context::find_key`]), or a literal seed (`SU…`,
    /// as a secret in FOUNDRY_KEY may hold) whose name is then the one the
    /// ledger registered for its public key.
    pub fn load_identity(&self, spec: &str) -> Result<Identity> {
        let spec = spec.trim();
        if spec.starts_with("SU") && !Path::new(spec).exists() {
            let probe = Identity::from_seed("unnamed", spec)
                .map_err(|e| anyhow!("FOUNDRY_KEY/--key: {e}"))?;
            let name = self
                .registered_name(probe.public_key())
                .unwrap_or_else(|| "unnamed".to_string());
            return Ok(Identity::from_seed(&name, spec)?);
        }
        let path = Path::new(spec);
        if path.is_file() {
            return Ok(Identity::load(path, None)?);
        }
        if spec.contains('/') || spec.ends_with(".nk") {
            bail!("--key {spec}: no such key file");
        }
        match self.find_key(spec) {
            Some(p) => Ok(Identity::load(&p, Some(spec))?),
            None => bail!(
                "--key {spec}: no key named {spec} in {} (make one with `ledger key new {spec}`)",
                self.keys_dir().display()
            ),
        }
    }

    /// The name the home's ledger registered for a public key, if it can
    /// tell without network (used for keys given as bare seeds).
    fn registered_name(&self, public: &str) -> Option<String> {
        let ledger = self.home.open_ledger().ok()?;
        ledger.registry().key(public).map(|k| k.name.clone())
    }

    /// The identity this command signs with: `--key` / FOUNDRY_KEY, else
    /// the home's default key (`ledger init` makes it).
    pub fn identity(&self) -> Result<&Identity> {
        if let Some(id) = self.identity.get() {
            return Ok(id);
        }
        let id = match &self.key {
            Some(k) => self.load_identity(k)?,
            None => {
                let default = self.keys_dir().join(DEFAULT_KEY_FILE);
                let name = std::fs::read_to_string(&default).map_err(|_| {
                    anyhow!(
                        "no key to sign with: this home has no default key ({}); run `ledger init` (which makes one) or pass --key FILE|NAME",
                        default.display()
                    )
                })?;
                self.load_identity(name.trim())?
            }
        };
        Ok(self.identity.get_or_init(|| id))
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
        // Reach the service before anything is written here: a refused
        // login, a wrong URL or no `ledger serve` answering leaves no empty
        // replica home behind.
        let client = self.remote_client()?;
        if self.home.ledger_dir().exists() {
            let ledger = self.local_ledger()?;
            self.sync(&ledger)?;
            return Ok(ledger);
        }
        if let Some(remote) = &self.remote {
            remote
                .rt
                .block_on(client.head())
                .map_err(|e| anyhow!("reading the remote ledger at {}: {e}", remote.opts.url))?;
        }
        let made_root = !self.home.root().exists();
        let ledger = self.home.init()?;
        if let Err(e) = self.sync(&ledger) {
            // A replica that could not be brought up is not kept half made.
            drop(ledger);
            if made_root {
                let _ = std::fs::remove_dir_all(self.home.root());
            } else {
                let _ = std::fs::remove_dir_all(self.home.ledger_dir());
            }
            return Err(e);
        }
        Ok(ledger)
    }

    /// Brings the replica up to the remote head (no-op without `--nats`).
    /// Every copied record is checked against the chain; a home whose ledger
    /// is not a replica of that remote one is refused.
    ///
    /// The records' signatures and authorizations are checked too, so a
    /// service (or anyone answering in its name) cannot slip in events its
    /// signers could not have appended; with `--trust-root`, the replica's
    /// history must start from that root key.
    pub fn sync(&self, ledger: &Ledger) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let client = self.remote_client()?;
        let mut page_size = SYNC_PAGE;
        loop {
            let from = ledger.head().seq + 1;
            let page = remote
                .rt
                .block_on(client.read_raw(from, page_size))
                .map_err(|e| anyhow!("reading the remote ledger at {}: {e}", remote.opts.url))?;
            if page.is_empty() {
                return Ok(());
            }
            if from == 1 {
                if let Some(root) = &self.trust_root {
                    let first = foundry_events::RecordedEvent::decode(&page[0])?;
                    if &first.signer != root {
                        bail!(
                            "the ledger at {} has the root key {}, not the trusted root {root}",
                            remote.opts.url,
                            first.signer
                        );
                    }
                }
            }
            let stored = ledger.replicate(&page).with_context(|| {
                format!(
                    "{} is not a replica of the ledger at {}",
                    self.home.root().display(),
                    remote.opts.url
                )
            })?;
            if stored == 0 {
                // One batch bigger than the page: ask for more at once.
                page_size = page_size.saturating_mul(4);
            }
        }
    }

    /// The connected client of the `--nats` service, signing as this
    /// command's identity (or, for a command that only reads, any key).
    fn remote_client(&self) -> Result<&NatsLedgerClient> {
        let Some(remote) = &self.remote else {
            bail!("--nats URL is required");
        };
        let id = match self.identity() {
            Ok(id) => id.clone(),
            // Reading needs no key of one's own.
            Err(_) => Identity::generate("reader")?,
        };
        remote.client(&id, &self.home)
    }

    /// The home's persisted views, caught up to `ledger`'s head: what every
    /// command that looks things up by id or prefix reads.
    pub fn views(&self, ledger: &Ledger) -> Result<foundry_projections::ViewStore> {
        let mut views = foundry_projections::ViewStore::open(&self.home)?;
        views.catch_up(ledger)?;
        Ok(views)
    }

    /// Makes sure this home's artifact store holds every file of `named`:
    /// with `--nats`, each missing one is fetched from the service's
    /// artifact bucket (verified by hash); embedded, the store is the
    /// ledger's own and nothing is fetched.
    pub fn fetch_artifacts(&self, named: &[(String, foundry_events::Sha256Digest)]) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let client = self.remote_client()?;
        remote
            .rt
            .block_on(foundry_runner::fetch_artifacts(client, &self.home, named))
            .map_err(|e| anyhow!("fetching artifacts from {}: {e}", remote.opts.url))
    }

    /// Appends: to the home's ledger, or with `--nats` through the remote
    /// service (the replica is then synced, so the result can be read).
    pub fn append(&self, ledger: &Ledger, req: AppendRequest) -> Result<AppendOutcome> {
        let id = self.identity()?;
        let Some(remote) = &self.remote else {
            return Ok(ledger.append_as(id, req)?);
        };
        let client = remote.client(id, &self.home)?;
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
