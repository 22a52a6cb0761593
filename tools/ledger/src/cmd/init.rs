//! `ledger init`: the home, its keys and the ledger's genesis.

use crate::context::{Context, DEFAULT_KEY_FILE};
use anyhow::{Context as _, Result};
use foundry_events::Role;
use foundry_ledger::trust::{check_key_name, key_path, Grant};
use foundry_ledger::Identity;
use std::path::Path;

/// Options of `ledger init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The name of your own (operator) key; default: the OS user.
    #[arg(long)]
    name: Option<String>,
}

/// The key file of the embedded runner with this role: `keys/runner-<role>.nk`.
pub fn runner_key_file(keys: &Path, role: Role) -> std::path::PathBuf {
    keys.join(format!("runner-{}.nk", role.as_str()))
}

/// The roles of the runners an embedded home signs for, and their short names.
pub const RUNNER_ROLES: [(Role, &str); 4] = [
    (Role::Trainer, "trainer"),
    (Role::Evaluator, "evaluator"),
    (Role::Promoter, "promoter"),
    (Role::Dispatcher, "modal"),
];

/// A key name from the OS user's name: letters, digits and `._-` kept,
/// anything else `_`.
fn person_name(given: Option<String>) -> Result<String> {
    let explicit = given.is_some();
    let raw = given
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "operator".into());
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    check_key_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    if name == "root" {
        if explicit {
            anyhow::bail!("--name root: that name is the home's root key; choose your own");
        }
        // Logged in as root: the person's key is not the root key.
        return Ok("operator".into());
    }
    Ok(name)
}

/// Loads `path`, or makes and saves a key named `name` there (an
/// interrupted init is finished with the keys it already wrote).
fn key_at(path: &Path, name: &str) -> Result<Identity> {
    if path.is_file() {
        return Ok(Identity::load(path, Some(name))?);
    }
    let id = Identity::generate(name)?;
    id.save(path)?;
    Ok(id)
}

/// Creates the home and, in an empty ledger, its genesis: the root key
/// (admin; keep its file offline), your operator key (the default key of
/// this home's commands) and one key per embedded runner. Harmless on a
/// home that already has a history. With `--nats`, makes an empty replica
/// home only: the history comes from the service.
pub fn run(ctx: &Context, a: InitArgs) -> Result<()> {
    let ledger = ctx.home.init()?;
    let head = ledger.head();
    if ctx.remote.is_some() || head.seq > 0 {
        if ctx.json {
            return crate::output::json(&serde_json::json!({
                "home": ctx.home.root(),
                "events": head.seq,
                "root": ledger.registry().root(),
            }));
        }
        if head.seq > 0 {
            println!(
                "ledger in {} already holds {} events",
                ctx.home.root().display(),
                head.seq
            );
        } else {
            println!(
                "initialized an empty replica home in {}; make your key with `ledger key new NAME` and have an admin register it",
                ctx.home.root().display()
            );
        }
        return Ok(());
    }
    let keys = ctx.keys_dir();
    std::fs::create_dir_all(&keys).with_context(|| format!("cannot create {}", keys.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", keys.display()))?;
    }
    let host = foundry_runner::host_info().hostname;
    let person = person_name(a.name)?;
    let root = key_at(&key_path(&keys, "root"), "root")?;
    let me = key_at(&key_path(&keys, &person), &person)?;
    let mut grants = vec![Grant::of(
        &me,
        &[Role::Operator],
        "the person who ran ledger init",
    )];
    for (role, short) in RUNNER_ROLES {
        let id = key_at(
            &runner_key_file(&keys, role),
            &format!("runner:{short}@{host}"),
        )?;
        grants.push(Grant::of(&id, &[role], "embedded runner of this home"));
    }
    ledger.init_genesis(&root, &[Role::Admin], &grants)?;
    std::fs::write(keys.join(DEFAULT_KEY_FILE), format!("{person}\n"))
        .with_context(|| format!("cannot write {}", keys.join(DEFAULT_KEY_FILE).display()))?;
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "home": ctx.home.root(),
            "events": ledger.head().seq,
            "root": root.public_key(),
            "default_key": person,
        }));
    }
    println!(
        "initialized {} with {} keys",
        ctx.home.root().display(),
        grants.len() + 1
    );
    println!(
        "root key  {} (keys/root.nk: admin; keep it offline)",
        root.public_key()
    );
    println!(
        "your key  {person} {} (operator; the default key here)",
        me.public_key()
    );
    println!(
        "auditors verify with: ledger verify --trust-root {}",
        root.public_key()
    );
    Ok(())
}
