//! The modal runner: RunRequested (backend `modal`) → ModalJobSubmitted,
//! ModalJobUpdated, the container's own run events, then RunCompleted or
//! RunFailed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use foundry_events::{
    BaseModelPinned, DatasetPinned, Event, EventType, ModalJobSubmitted, ModalJobUpdated,
    RecordedEvent, RunFailed, RunRequested, Timestamp,
};
use foundry_runner::{lookup, Delivery, Runner, RunnerContext, RunnerError};
use serde::{Deserialize, Serialize};

use crate::cli::{app_is_over, parse_submission, ModalCli, Submission};
use crate::launcher::{sha256_hex, LauncherSpec};
use crate::outbox::{self, Anchor};
use crate::{ModalError, Result};

/// Dispatcher settings that are not in the recipe (they belong to the
/// machine that submits), each from an environment variable.
#[derive(Debug, Clone)]
pub struct ModalOptions {
    /// How to call `modal`.
    pub cli: ModalCli,
    /// The `ledger` binary put into the image (FOUNDRY_MODAL_LEDGER_BINARY;
    /// default: this executable). Build it with `--features cuda`.
    pub ledger_binary: PathBuf,
    /// Device of `ledger runner train` in the container (FOUNDRY_MODAL_DEVICE; `cuda`).
    pub device: String,
    /// Modal secrets attached by name (FOUNDRY_MODAL_SECRETS, comma-separated).
    pub secrets: Vec<String>,
    /// Volume mounted as the HF cache (FOUNDRY_MODAL_HF_CACHE_VOLUME; `foundry-hf-cache`).
    pub hf_cache_volume: String,
    /// NATS URL the container tries before its outbox (FOUNDRY_MODAL_NATS_URL; none).
    pub nats_url: String,
    /// How often the job is polled (FOUNDRY_MODAL_POLL_MS; 5000).
    pub poll: Duration,
}

impl ModalOptions {
    /// The settings from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        ModalOptions {
            cli: ModalCli::from_env(),
            ledger_binary: var("FOUNDRY_MODAL_LEDGER_BINARY")
                .map(PathBuf::from)
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("ledger")),
            device: var("FOUNDRY_MODAL_DEVICE").unwrap_or_else(|| "cuda".into()),
            secrets: var("FOUNDRY_MODAL_SECRETS")
                .map(|s| {
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            hf_cache_volume: var("FOUNDRY_MODAL_HF_CACHE_VOLUME")
                .unwrap_or_else(|| "foundry-hf-cache".into()),
            nats_url: var("FOUNDRY_MODAL_NATS_URL").unwrap_or_default(),
            poll: Duration::from_millis(
                var("FOUNDRY_MODAL_POLL_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5000),
            ),
        }
    }
}

/// The recipe's `[backend]` (kind, gpu, timeout, retries, app, volumes).
pub use foundry_recipes::Backend;

/// The `[backend]` of a recipe's resolved config.
pub fn backend_of(config: &serde_json::Value) -> Result<Backend> {
    serde_json::from_value(config["backend"].clone()).map_err(|e| {
        ModalError::Invalid(format!(
            "the recipe's [backend] is not a modal backend: {e}"
        ))
    })
}

/// One directory to upload into a Volume before submitting.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// What it is (`dataset <id>`, `base model <id>`).
    pub what: String,
    /// The Volume.
    pub volume: String,
    /// Local directory.
    pub local: PathBuf,
    /// Path in the Volume.
    pub remote: String,
}

/// Marker written into a Volume directory once it is fully uploaded.
const STAGED_MARKER: &str = ".foundry-staged";

/// Everything a submission does, prepared and written to `work` but not run:
/// what `--dry-run` prints and what [`ModalRunner`] executes.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchPlan {
    /// The launcher's inputs.
    pub spec: LauncherSpec,
    /// Where the rendered launcher is.
    pub launcher_path: PathBuf,
    /// Its sha256.
    pub launcher_sha256: String,
    /// sha256 of the image's contents: base image, ledger binary, snapshot.
    pub image_digest: String,
    /// The snapshot's head.
    pub snapshot_events: u64,
    /// Uploads before submission (skipped where already staged).
    pub stage: Vec<Stage>,
    /// The submitting command.
    pub submit: Vec<String>,
}

impl DispatchPlan {
    /// Every command, in order, as a shell would run it.
    pub fn commands(&self, cli: &ModalCli) -> Vec<String> {
        let mut out: Vec<String> = self
            .stage
            .iter()
            .map(|s| {
                cli.argv(&[
                    "volume",
                    "put",
                    "--force",
                    &s.volume,
                    &s.local.display().to_string(),
                    &s.remote,
                ])
                .join(" ")
            })
            .collect();
        out.push(format!(
            "cd {} && {}",
            self.launcher_path
                .parent()
                .map_or(".".into(), |p| p.display().to_string()),
            self.submit.join(" ")
        ));
        out
    }
}

fn now_ts() -> Timestamp {
    Timestamp::from_unix_nanos(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
    )
}

fn io(path: &Path, e: std::io::Error) -> ModalError {
    ModalError::Invalid(format!("{}: {e}", path.display()))
}

/// The key file's sha256, or `none` where it does not exist yet (a dry run).
fn key_sha256(path: &Path) -> Result<String> {
    if path.is_file() {
        file_sha256(path)
    } else {
        Ok("none".into())
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let (sha, _) = foundry_ledger::hash_file(path)?;
    Ok(sha.to_hex())
}

/// The container's key file, in the run's dispatch directory.
pub const CONTAINER_KEY: &str = "container.nk";

/// The key the run's container signs with: read from `work` if an earlier
/// attempt of the dispatcher made it, else made and saved there (mode
/// 0600). Its name is `modal:<run>:<first characters of the key>`.
pub fn container_identity(work: &Path, run_id: &str) -> Result<foundry_ledger::Identity> {
    let path = work.join(CONTAINER_KEY);
    if path.is_file() {
        return Ok(foundry_ledger::Identity::load(&path, None)?);
    }
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    let probe = foundry_ledger::Identity::generate("probe")?;
    let short: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let name = format!("modal:{short}:{}", &probe.public_key()[1..9]);
    let id = foundry_ledger::Identity::from_seed(&name, probe.seed())?;
    id.save(&path)?;
    Ok(id)
}

/// How long a container's key lives: every attempt's timeout, plus a day
/// for queueing and the dispatcher's final import, at most 30 days.
pub fn container_key_lifetime(timeout_s: i64, retries: i64) -> Duration {
    let attempts = u64::try_from(retries.max(0)).unwrap_or(0) + 1;
    let secs = u64::try_from(timeout_s.max(1))
        .unwrap_or(1)
        .saturating_mul(attempts)
        .saturating_add(24 * 3600);
    Duration::from_secs(secs.min(29 * 24 * 3600))
}

/// Prepares a submission of `run_id` in `work`: snapshots the ledger,
/// renders the launcher and lists the uploads and the submit command.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    client: &dyn foundry_runner::LedgerClient,
    opts: &ModalOptions,
    run_id: &str,
    config: &serde_json::Value,
    dataset: &DatasetPinned,
    model: &BaseModelPinned,
    work: &Path,
) -> Result<DispatchPlan> {
    let backend = backend_of(config)?;
    if backend.kind != "modal" {
        return Err(ModalError::Invalid(format!(
            "backend.kind is {:?}, not \"modal\"",
            backend.kind
        )));
    }
    if !opts.ledger_binary.is_file() {
        return Err(ModalError::Invalid(format!(
            "{}: the ledger binary for the image is not here (set FOUNDRY_MODAL_LEDGER_BINARY)",
            opts.ledger_binary.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    let hub = foundry_datasets::HubOptions::from_env();
    let data_dir = foundry_datasets::DatasetPin::from_event(dataset, &hub)
        .map_err(|e| ModalError::Invalid(format!("dataset: {e}")))?
        .root;
    let model_dir = foundry_datasets::locate_model(model, &hub)
        .map_err(|e| ModalError::Invalid(format!("base model: {e}")))?;
    let stage = vec![
        Stage {
            what: format!("dataset {}", dataset.dataset_id),
            volume: backend.data_volume.clone(),
            local: data_dir,
            remote: format!("datasets/{}", dataset.dataset_id),
        },
        Stage {
            what: format!("base model {}", model.model_id),
            volume: backend.data_volume.clone(),
            local: model_dir,
            remote: format!("models/{}", model.model_id),
        },
    ];
    let bundle = work.join("bundle.foundry");
    let key_file = work.join(CONTAINER_KEY);
    let anchor = outbox::snapshot(client, &bundle, &now_ts().to_rfc3339()).await?;
    let spec = LauncherSpec {
        run_id: run_id.to_string(),
        app_name: backend.app_name.clone(),
        gpu: backend.gpu.clone().unwrap_or_default(),
        timeout_s: backend.timeout_s,
        retries: backend.retries,
        device: opts.device.clone(),
        ledger_binary: opts.ledger_binary.display().to_string(),
        bundle: bundle.display().to_string(),
        key_file: key_file.display().to_string(),
        checkpoint_volume: backend.checkpoint_volume.clone(),
        data_volume: backend.data_volume.clone(),
        hf_cache_volume: opts.hf_cache_volume.clone(),
        secrets: opts.secrets.clone(),
        nats_url: opts.nats_url.clone(),
    };
    let source = spec.render()?;
    let launcher_path = work.join("launcher.py");
    std::fs::write(&launcher_path, &source).map_err(|e| io(&launcher_path, e))?;
    let image_digest = format!(
        "sha256:{}",
        sha256_hex(
            format!(
                "debian_slim python 3.11\n/foundry/bin/ledger {}\n/foundry/bundle.foundry {}\n/foundry/key.nk {}\n",
                file_sha256(&opts.ledger_binary)?,
                file_sha256(&bundle)?,
                key_sha256(&key_file)?
            )
            .as_bytes()
        )
    );
    Ok(DispatchPlan {
        launcher_sha256: sha256_hex(source.as_bytes()),
        spec,
        launcher_path,
        image_digest,
        snapshot_events: anchor.events,
        stage,
        submit: opts.cli.argv(&["run", "--detach", "launcher.py::main"]),
    })
}

/// What the launcher writes to `runs/<run>/status.json` in the Volume.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Status {
    state: String,
    attempt: u32,
    exit_code: Option<i32>,
}

/// A submission remembered locally as soon as `modal run` returns, so a
/// dispatcher that dies before recording it does not submit twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Submitted {
    app_id: String,
    function_call_id: String,
}

/// The modal runner.
pub struct ModalRunner {
    opts: ModalOptions,
}

impl ModalRunner {
    /// A dispatcher with these settings.
    pub fn new(opts: ModalOptions) -> Self {
        ModalRunner { opts }
    }
}

fn is_terminal(e: &Event) -> bool {
    matches!(
        e,
        Event::RunCompleted(_) | Event::RunFailed(_) | Event::RunCancelled(_)
    )
}

struct Job<'a> {
    ctx: &'a RunnerContext,
    trigger: &'a RecordedEvent,
    run_id: String,
    backend: Backend,
    work: PathBuf,
    sub: Submission,
    anchor: Anchor,
}

impl Job<'_> {
    fn remote(&self, rest: &str) -> String {
        format!("runs/{}/{rest}", self.run_id)
    }

    async fn append(&self, what: Option<String>, ev: Event) -> Result<()> {
        let key = what.map(|w| foundry_runner::outcome_key("modal", &self.trigger.event_id, &w));
        foundry_runner::append_outcome(self.ctx, self.trigger, key, vec![ev]).await?;
        Ok(())
    }

    async fn updated(
        &self,
        state: &str,
        exit_code: Option<i32>,
        log_tail: String,
        key: &str,
    ) -> Result<()> {
        self.append(
            Some(format!("state/{key}")),
            Event::ModalJobUpdated(ModalJobUpdated {
                run_id: self.run_id.clone(),
                function_call_id: self.sub.function_call_id.clone(),
                state: state.to_string(),
                exit_code,
                log_tail,
                observed_at: now_ts(),
            }),
        )
        .await
    }

    /// Pulls the files an event names ([`Event::stored_artifacts`]: a
    /// checkpoint's files, a run's config) from the container's artifact
    /// store in the Volume into the local one, each verified against the
    /// event. `false` when a file is not in the Volume (yet).
    async fn pull_named(&self, cli: &ModalCli, event: &Event) -> Result<bool> {
        let store = self.ctx.home.artifacts();
        let pulls = self.work.join("pulls");
        std::fs::create_dir_all(&pulls).map_err(|e| io(&pulls, e))?;
        for (what, sha256) in event.stored_artifacts() {
            if store.check(&sha256)? {
                continue;
            }
            let rel = store
                .path_of(&sha256)
                .strip_prefix(self.ctx.home.root())
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .map_err(|_| {
                    ModalError::Invalid("the artifact store is outside the home".into())
                })?;
            let local = pulls.join(sha256.to_hex());
            if !cli
                .volume_get(
                    &self.backend.checkpoint_volume,
                    &self.remote(&format!("home/{rel}")),
                    &local,
                )
                .await?
            {
                return Ok(false);
            }
            let (sha, _) = foundry_ledger::hash_file(&local)?;
            if sha != sha256 {
                let _ = std::fs::remove_file(&local);
                return Err(ModalError::Outbox(format!(
                    "{what} pulled from volume {} hashes to {}, but the {} event says {}",
                    self.backend.checkpoint_volume,
                    sha.short(),
                    event.event_type().as_str(),
                    sha256.short()
                )));
            }
            store.put_file(&local)?;
            let _ = std::fs::remove_file(&local);
        }
        Ok(true)
    }

    /// Fetches the outbox, and imports what is new: checkpoint files first,
    /// then the events. Returns the number of events appended.
    /// Revokes the container's key once the job is over (idempotent).
    async fn revoke_container_key(&self) -> Result<()> {
        let path = self.work.join(CONTAINER_KEY);
        if !path.is_file() {
            return Ok(());
        }
        let id = foundry_ledger::Identity::load(&path, None)?;
        let registry_has = lookup::all_of_type(self.ctx.client.as_ref(), EventType::KeyRegistered)
            .await?
            .iter()
            .any(|(_, e)| matches!(e, Event::KeyRegistered(k) if k.public_key == id.public_key()));
        if !registry_has {
            return Ok(());
        }
        let ev = Event::KeyRevoked(foundry_events::KeyRevoked {
            name: id.name().to_string(),
            public_key: id.public_key().to_string(),
            reason: format!("the Modal job of run {} is over", self.run_id),
        });
        self.append(Some("container-key-revoked".into()), ev).await
    }

    async fn sync_outbox(&self, cli: &ModalCli, last_sha: &mut Option<String>) -> Result<usize> {
        let local = self.work.join("outbox.foundry");
        if !cli
            .volume_get(
                &self.backend.checkpoint_volume,
                &self.remote("outbox.foundry"),
                &local,
            )
            .await?
        {
            return Ok(0);
        }
        let sha = file_sha256(&local)?;
        if last_sha.as_deref() == Some(sha.as_str()) {
            return Ok(0);
        }
        let records = outbox::read_outbox(&local, self.anchor)?;
        for rec in &records {
            let Ok(event) = rec.decode_event() else {
                continue;
            };
            // The outbox is written after the files its events name (a
            // checkpoint's, a run config): they must be there.
            if !event.stored_artifacts().is_empty() && !self.pull_named(cli, &event).await? {
                return Err(ModalError::Outbox(format!(
                    "seq {} ({}) is in the outbox but the files it names are not in volume {}",
                    rec.seq,
                    event.event_type().as_str(),
                    self.backend.checkpoint_volume
                )));
            }
        }
        let n = outbox::import(self.ctx.client.as_ref(), &records).await?;
        *last_sha = Some(sha);
        Ok(n)
    }

    async fn status(&self, cli: &ModalCli) -> Result<Option<Status>> {
        let local = self.work.join("status.json");
        if !cli
            .volume_get(
                &self.backend.checkpoint_volume,
                &self.remote("status.json"),
                &local,
            )
            .await?
        {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&local).map_err(|e| io(&local, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModalError::Cli(format!("status.json of run {}: {e}", self.run_id)))
    }

    async fn run_terminal(&self) -> Result<Option<Event>> {
        let events =
            lookup::stream_events(self.ctx.client.as_ref(), &format!("run/{}", self.run_id))
                .await?;
        Ok(events.into_iter().map(|(_, e)| e).find(is_terminal))
    }
}

impl ModalRunner {
    async fn fail(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        run_id: &str,
        reason: String,
        retryable: bool,
    ) -> foundry_runner::Result<()> {
        let ev = Event::RunFailed(RunFailed {
            run_id: run_id.to_string(),
            reason,
            step: None,
            retryable,
        });
        let key = foundry_runner::outcome_key("modal", &trigger.event_id, "failed");
        foundry_runner::append_outcome(ctx, trigger, Some(key), vec![ev]).await
    }

    async fn dispatch(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: RunRequested,
    ) -> foundry_runner::Result<()> {
        let stream = format!("run/{}", req.run_id);
        let events = lookup::stream_events(ctx.client.as_ref(), &stream).await?;
        if events.iter().any(|(_, e)| is_terminal(e)) {
            return Ok(());
        }
        let work = ctx.home.run_dir(&req.run_id).join("modal");
        let inputs = lookup::run_inputs(ctx.client.as_ref(), &req).await;
        let (recipe, dataset, model) = match inputs {
            Ok(v) => v,
            Err(RunnerError::Missing(reason)) => {
                return self.fail(ctx, trigger, &req.run_id, reason, false).await
            }
            Err(e) => return Err(e),
        };
        let backend = match backend_of(&recipe.resolved_config) {
            Ok(b) => b,
            Err(e) => {
                return self
                    .fail(ctx, trigger, &req.run_id, e.to_string(), false)
                    .await
            }
        };
        let recorded = events.iter().find_map(|(_, e)| match e {
            Event::ModalJobSubmitted(s) => Some(Submission {
                app_id: s.app_id.clone(),
                function_call_id: s.function_call_id.clone(),
            }),
            _ => None,
        });
        let marker = work.join("submitted.json");
        let (sub, anchor) = match recorded {
            Some(sub) => match outbox::anchor_of(&work.join("bundle.foundry")) {
                Ok(anchor) => (sub, anchor),
                Err(e) => {
                    return self
                        .fail(
                            ctx,
                            trigger,
                            &req.run_id,
                            format!("the Modal job's snapshot is unreadable, so its outbox cannot be checked: {e}"),
                            false,
                        )
                        .await
                }
            },
            None => {
                match self
                    .submit(ctx, trigger, &req, &recipe.resolved_config, &dataset, &model, &work, &marker)
                    .await
                {
                    Ok(v) => v,
                    Err(ModalError::Runner(e)) => return Err(e),
                    Err(e) => {
                        return self
                            .fail(ctx, trigger, &req.run_id, format!("modal submission failed: {e}"), true)
                            .await
                    }
                }
            }
        };
        let job = Job {
            ctx,
            trigger,
            run_id: req.run_id.clone(),
            backend,
            work,
            sub,
            anchor,
        };
        match self.follow(&job).await {
            Ok(()) => Ok(()),
            Err(ModalError::Runner(e)) => Err(e),
            Err(e @ ModalError::Outbox(_)) => {
                // The container's history or files do not check out: stop
                // the job rather than import anything unverified.
                let _ = self
                    .opts
                    .cli
                    .call(&["app", "stop", "--yes", &job.sub.app_id], None)
                    .await;
                self.fail(ctx, trigger, &req.run_id, e.to_string(), false)
                    .await
            }
            Err(e) => Err(RunnerError::Engine(e.to_string())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: &RunRequested,
        config: &serde_json::Value,
        dataset: &DatasetPinned,
        model: &BaseModelPinned,
        work: &Path,
        marker: &Path,
    ) -> Result<(Submission, Anchor)> {
        let cli = &self.opts.cli;
        if let Ok(text) = std::fs::read_to_string(marker) {
            // Submitted before, but not recorded: follow that job.
            let s: Submitted = serde_json::from_str(&text)
                .map_err(|e| ModalError::Invalid(format!("{}: {e}", marker.display())))?;
            let sub = Submission {
                app_id: s.app_id,
                function_call_id: s.function_call_id,
            };
            let anchor = outbox::anchor_of(&work.join("bundle.foundry"))?;
            self.record(ctx, trigger, req, config, &sub, work).await?;
            return Ok((sub, anchor));
        }
        self.register_container_key(ctx, trigger, req, config, work)
            .await?;
        let plan = prepare(
            ctx.client.as_ref(),
            &self.opts,
            &req.run_id,
            config,
            dataset,
            model,
            work,
        )
        .await?;
        for s in &plan.stage {
            let probe = work.join("staged.probe");
            let marker_remote = format!("{}/{STAGED_MARKER}", s.remote);
            if cli.volume_get(&s.volume, &marker_remote, &probe).await? {
                continue;
            }
            let local = s.local.display().to_string();
            cli.call_ok(
                &["volume", "put", "--force", &s.volume, &local, &s.remote],
                None,
            )
            .await?;
            let m = work.join(STAGED_MARKER);
            std::fs::write(&m, format!("{}\n", s.what)).map_err(|e| io(&m, e))?;
            let m = m.display().to_string();
            cli.call_ok(
                &["volume", "put", "--force", &s.volume, &m, &marker_remote],
                None,
            )
            .await?;
        }
        let out = cli
            .call_ok(&["run", "--detach", "launcher.py::main"], Some(work))
            .await?;
        let sub = parse_submission(&out)?;
        let text = serde_json::to_string(&Submitted {
            app_id: sub.app_id.clone(),
            function_call_id: sub.function_call_id.clone(),
        })
        .map_err(|e| ModalError::Invalid(e.to_string()))?;
        std::fs::write(marker, text).map_err(|e| io(marker, e))?;
        self.record_plan(ctx, trigger, req, &plan, &sub).await?;
        Ok((
            sub,
            Anchor {
                events: plan.snapshot_events,
                head_hash: outbox::anchor_of(&work.join("bundle.foundry"))?.head_hash,
            },
        ))
    }

    /// Registers the container's key (run-scoped, expiring, trainer
    /// only) before the snapshot is taken, so the container's scratch
    /// ledger — and then the real one, when its outbox is relayed — knows
    /// it. Idempotent: a retried dispatch registers it once.
    async fn register_container_key(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: &RunRequested,
        config: &serde_json::Value,
        work: &Path,
    ) -> Result<()> {
        let backend = backend_of(config)?;
        let id = container_identity(work, &req.run_id)?;
        let expires = now_ts().0.saturating_add(
            i64::try_from(container_key_lifetime(backend.timeout_s, backend.retries).as_nanos())
                .unwrap_or(i64::MAX),
        );
        let ev = Event::KeyRegistered(foundry_events::KeyRegistered {
            name: id.name().to_string(),
            public_key: id.public_key().to_string(),
            roles: vec!["trainer".into()],
            run_scope: Some(req.run_id.clone()),
            expires_at: Some(Timestamp(expires)),
            note: format!("Modal container of run {}", req.run_id),
        });
        let key = foundry_runner::outcome_key("modal", &trigger.event_id, "container-key");
        foundry_runner::append_outcome(ctx, trigger, Some(key), vec![ev]).await?;
        Ok(())
    }

    async fn record(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: &RunRequested,
        config: &serde_json::Value,
        sub: &Submission,
        work: &Path,
    ) -> Result<()> {
        let backend = backend_of(config)?;
        let launcher = work.join("launcher.py");
        let bundle = work.join("bundle.foundry");
        let image_digest = format!(
            "sha256:{}",
            sha256_hex(
                format!(
                    "debian_slim python 3.11\n/foundry/bin/ledger {}\n/foundry/bundle.foundry {}\n/foundry/key.nk {}\n",
                    file_sha256(&self.opts.ledger_binary)?,
                    file_sha256(&bundle)?,
                    key_sha256(&work.join(CONTAINER_KEY))?
                )
                .as_bytes()
            )
        );
        let ev = ModalJobSubmitted {
            run_id: req.run_id.clone(),
            app_id: sub.app_id.clone(),
            function_call_id: sub.function_call_id.clone(),
            gpu: backend.gpu.unwrap_or_default(),
            image_digest,
            launcher_sha256: foundry_ledger::hash_file(&launcher)?.0,
            command: self
                .opts
                .cli
                .argv(&["run", "--detach", "launcher.py::main"]),
        };
        self.append_submitted(ctx, trigger, ev).await
    }

    async fn record_plan(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        req: &RunRequested,
        plan: &DispatchPlan,
        sub: &Submission,
    ) -> Result<()> {
        let ev = ModalJobSubmitted {
            run_id: req.run_id.clone(),
            app_id: sub.app_id.clone(),
            function_call_id: sub.function_call_id.clone(),
            gpu: plan.spec.gpu.clone(),
            image_digest: plan.image_digest.clone(),
            launcher_sha256: foundry_ledger::hash_file(&plan.launcher_path)?.0,
            command: plan.submit.clone(),
        };
        self.append_submitted(ctx, trigger, ev).await
    }

    async fn append_submitted(
        &self,
        ctx: &RunnerContext,
        trigger: &RecordedEvent,
        ev: ModalJobSubmitted,
    ) -> Result<()> {
        let key = foundry_runner::outcome_key("modal", &trigger.event_id, "submitted");
        foundry_runner::append_outcome(ctx, trigger, Some(key), vec![Event::ModalJobSubmitted(ev)])
            .await?;
        Ok(())
    }

    /// Polls the job until the run ends there, importing its events and
    /// checkpoints as they come; cancels it when the run is cancelled here.
    async fn follow(&self, job: &Job<'_>) -> Result<()> {
        let cli = &self.opts.cli;
        let mut last_outbox: Option<String> = None;
        let mut last_status: Option<Status> = None;
        let mut seen = false;
        let mut missing_polls = 0u32;
        let mut stop = job.ctx.stop.clone();
        loop {
            let events =
                lookup::stream_events(job.ctx.client.as_ref(), &format!("run/{}", job.run_id))
                    .await?;
            if events
                .iter()
                .any(|(_, e)| matches!(e, Event::RunCancelled(_)))
            {
                let out = cli
                    .call(&["app", "stop", "--yes", &job.sub.app_id], None)
                    .await?;
                job.updated("cancelled", None, out.tail(5), "cancelled")
                    .await?;
                return Ok(());
            }
            job.sync_outbox(cli, &mut last_outbox).await?;
            // A container on NATS appends its checkpoints directly: bring
            // their files here from the Volume too.
            // (Files not yet committed to the Volume: next poll.)
            for (_, e) in &events {
                if !e.stored_artifacts().is_empty() {
                    job.pull_named(cli, e).await?;
                }
            }
            if let Some(st) = job.status(cli).await? {
                if last_status.as_ref() != Some(&st) {
                    job.updated(
                        &st.state,
                        st.exit_code,
                        String::new(),
                        &format!("{}/{}", st.attempt, st.state),
                    )
                    .await?;
                    last_status = Some(st);
                }
            }
            let app = cli.app_state(&job.sub.app_id).await?;
            let over = match &app {
                Some(s) => {
                    seen = true;
                    app_is_over(s)
                }
                None => {
                    missing_polls += 1;
                    seen || missing_polls > 5
                }
            };
            if over {
                return self.finish(job, last_status).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.opts.poll) => {}
                _ = stop.wait_for(|s| *s) => return Err(ModalError::Runner(RunnerError::Stopped)),
            }
        }
    }

    /// The app is over: import what is left and map its end to the run's.
    async fn finish(&self, job: &Job<'_>, last_status: Option<Status>) -> Result<()> {
        let cli = &self.opts.cli;
        let mut none = None;
        job.sync_outbox(cli, &mut none).await?;
        let events =
            lookup::stream_events(job.ctx.client.as_ref(), &format!("run/{}", job.run_id)).await?;
        for (_, e) in &events {
            if !e.stored_artifacts().is_empty() && !job.pull_named(cli, e).await? {
                tracing::warn!(
                    run = %job.run_id,
                    "the files of a {} event never reached volume {}",
                    e.event_type().as_str(),
                    job.backend.checkpoint_volume
                );
            }
        }
        let status = job.status(cli).await?.or(last_status);
        let logs = cli
            .call(&["app", "logs", &job.sub.app_id], None)
            .await
            .map(|o| o.tail(8))
            .unwrap_or_default();
        let exit_code = status.as_ref().and_then(|s| s.exit_code);
        // Nothing more comes from the container: its key is no use to anyone.
        job.revoke_container_key().await?;
        match job.run_terminal().await? {
            Some(Event::RunCompleted(_)) => job.updated("succeeded", exit_code, logs, "end").await,
            // Cancelled here while the container, which saw it too, wound down.
            Some(Event::RunCancelled(_)) => job.updated("cancelled", exit_code, logs, "end").await,
            Some(_) => job.updated("failed", exit_code, logs, "end").await,
            None => {
                let (state, how) = match &status {
                    // Still "running": the container was killed (timeout,
                    // preemption) during its last attempt.
                    Some(s) if s.state == "running" => (
                        "timeout",
                        format!("attempt {} was killed (timeout or preemption)", s.attempt),
                    ),
                    Some(s) => (
                        "failed",
                        format!(
                            "attempt {} exited with {}",
                            s.attempt,
                            s.exit_code.map_or("no code".to_string(), |c| c.to_string())
                        ),
                    ),
                    None => (
                        "failed",
                        "no attempt started the launcher (no status in the volume)".to_string(),
                    ),
                };
                job.updated(state, exit_code, logs.clone(), "end").await?;
                let reason = format!(
                    "Modal job {} ({}) ended without finishing the run: {how}; at most {} attempt(s), timeout {}s; log: {}",
                    job.sub.function_call_id,
                    job.sub.app_id,
                    job.backend.retries + 1,
                    job.backend.timeout_s,
                    if logs.is_empty() { "(none)" } else { logs.as_str() }
                );
                let ev = Event::RunFailed(RunFailed {
                    run_id: job.run_id.clone(),
                    reason,
                    step: None,
                    retryable: true,
                });
                job.append(Some("failed".into()), ev).await
            }
        }
    }
}

#[async_trait]
impl Runner for ModalRunner {
    fn name(&self) -> &str {
        "modal"
    }

    fn reacts_to(&self) -> Vec<EventType> {
        vec![EventType::RunRequested]
    }

    async fn handle(&self, ctx: &RunnerContext, delivery: &Delivery) -> foundry_runner::Result<()> {
        let Event::RunRequested(req) = delivery.event.decode_event()? else {
            return Ok(());
        };
        if req.backend != "modal" {
            return Ok(());
        }
        self.dispatch(ctx, &delivery.event, req).await
    }
}
