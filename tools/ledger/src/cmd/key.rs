//! `ledger key new|register|revoke|list`, `ledger whoami` and `ledger
//! channel policy`: identities, their roles, and the policies that say whose
//! requests and evidence count.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use foundry_events::{ChannelPolicySet, KeyRegistered, KeyRevoked, Role, Timestamp};
use foundry_ledger::trust::{check_key_name, key_path, parse_public_key};
use foundry_ledger::{AppendRequest, Identity, NewEvent};

use crate::context::{user_keys_dir, Context};

/// `ledger key …`.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Make a key pair and store its seed (mode 0600); prints the public key.
    New(NewArgs),
    /// Register a public key under a name with roles (admin; again to change roles).
    Register(RegisterArgs),
    /// Revoke a key: what it signs from now on is refused (admin).
    Revoke(RevokeArgs),
    /// Every key the ledger has registered, with roles and state.
    List,
}

/// Options of `ledger key new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The name its events will carry.
    name: String,
    /// Where to write the seed (default: `<home>/keys/NAME.nk`).
    #[arg(long, conflicts_with = "user")]
    out: Option<PathBuf>,
    /// Store it under `~/.config/foundry/keys/` instead of the home.
    #[arg(long)]
    user: bool,
}

/// Options of `ledger key register`.
#[derive(clap::Args)]
pub struct RegisterArgs {
    /// The name the key signs as.
    name: String,
    /// Its public key (`U…`); default: the public key of the key file of
    /// that name in this home.
    #[arg(long)]
    public_key: Option<String>,
    /// Roles, comma-separated (admin, operator, trainer, evaluator, promoter, dispatcher).
    #[arg(long, value_delimiter = ',', required = true)]
    roles: Vec<String>,
    /// Confine the key to one run's stream.
    #[arg(long)]
    run_scope: Option<String>,
    /// The instant (RFC 3339) after which what it signs is refused.
    #[arg(long)]
    expires: Option<String>,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    note: String,
}

/// Options of `ledger key revoke`.
#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The key's registered name.
    name: String,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    reason: String,
}

/// `ledger channel …`.
#[derive(clap::Subcommand)]
pub enum ChannelCommand {
    /// Pin a channel's own policy (admin): it binds every promotion and
    /// rollback of the channel, whatever recipe trained the candidate.
    Policy(PolicyArgs),
}

/// Options of `ledger channel policy`.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// The channel.
    channel: String,
    /// Key names that may request a promotion (default: any operator).
    #[arg(long, value_delimiter = ',')]
    requesters: Option<Vec<String>>,
    /// Key names that may request a rollback (default: the requesters).
    #[arg(long, value_delimiter = ',')]
    rollbackers: Option<Vec<String>>,
    /// Evaluator key names whose scores count (default: any evaluator key).
    #[arg(long, value_delimiter = ',')]
    evaluators: Option<Vec<String>>,
    /// A gate every candidate must pass (`field_exact_match >= 0.9`); repeatable.
    #[arg(long = "gate")]
    gates: Vec<String>,
    /// Fewest examples an eval must have scored to count.
    #[arg(long, default_value_t = 1)]
    min_examples: u64,
}

/// Runs `ledger key …`.
pub fn run(ctx: &Context, c: KeyCommand) -> Result<()> {
    match c {
        KeyCommand::New(a) => new(ctx, a),
        KeyCommand::Register(a) => register(ctx, a),
        KeyCommand::Revoke(a) => revoke(ctx, a),
        KeyCommand::List => list(ctx),
    }
}

fn new(ctx: &Context, a: NewArgs) -> Result<()> {
    check_key_name(&a.name).map_err(|e| anyhow!(e))?;
    let path = match (a.out, a.user) {
        (Some(p), _) => p,
        (None, true) => key_path(
            &user_keys_dir().ok_or_else(|| anyhow!("--user: no HOME to find ~/.config in"))?,
            &a.name,
        ),
        (None, false) => key_path(&ctx.keys_dir(), &a.name),
    };
    if path.exists() {
        bail!("{}: a key file is already there", path.display());
    }
    let id = Identity::generate(&a.name)?;
    id.save(&path)?;
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "name": id.name(), "public_key": id.public_key(), "file": path,
        }));
    }
    println!("{} {}", id.name(), id.public_key());
    println!(
        "seed written to {} (mode 0600); an admin registers it with: ledger key register {} --public-key {} --roles …",
        path.display(),
        id.name(),
        id.public_key()
    );
    Ok(())
}

fn parse_roles(names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let role = Role::parse(n).ok_or_else(|| {
            let known: Vec<&str> = Role::ALL.iter().map(Role::as_str).collect();
            anyhow!("--roles: unknown role {n:?} (known: {})", known.join(", "))
        })?;
        out.push(role.as_str().to_string());
    }
    if out.is_empty() {
        bail!("--roles: name at least one role");
    }
    Ok(out)
}

fn register(ctx: &Context, a: RegisterArgs) -> Result<()> {
    check_key_name(&a.name).map_err(|e| anyhow!(e))?;
    let roles = parse_roles(&a.roles)?;
    let public_key = match a.public_key {
        Some(k) => k.trim().to_string(),
        None => {
            let path = ctx.find_key(&a.name).ok_or_else(|| {
                anyhow!(
                    "no key file named {} here; pass --public-key U… (from `ledger key new` on its machine)",
                    a.name
                )
            })?;
            Identity::load(&path, Some(&a.name))?
                .public_key()
                .to_string()
        }
    };
    parse_public_key(&public_key).map_err(|e| anyhow!("--public-key: {e}"))?;
    let expires_at = a
        .expires
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| anyhow!("--expires: {e}"))?;
    let ledger = ctx.ledger()?;
    let rec = ctx
        .append(
            &ledger,
            AppendRequest::new(vec![NewEvent::new(KeyRegistered {
                name: a.name.clone(),
                public_key: public_key.clone(),
                roles: roles.clone(),
                run_scope: a.run_scope,
                expires_at,
                note: a.note,
            })]),
        )?
        .events
        .remove(0);
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "name": a.name, "public_key": public_key, "roles": roles, "seq": rec.seq,
        }));
    }
    println!(
        "registered {} {} with roles {} (seq {}, by {})",
        a.name,
        public_key,
        roles.join(", "),
        rec.seq,
        rec.actor
    );
    Ok(())
}

fn revoke(ctx: &Context, a: RevokeArgs) -> Result<()> {
    let ledger = ctx.ledger()?;
    let registry = ledger.registry();
    let key = registry
        .by_name(&a.name)
        .ok_or_else(|| anyhow!("no key is registered as {:?}", a.name))?;
    let rec = ctx
        .append(
            &ledger,
            AppendRequest::new(vec![NewEvent::new(KeyRevoked {
                name: a.name.clone(),
                public_key: key.public_key.clone(),
                reason: a.reason,
            })]),
        )?
        .events
        .remove(0);
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "name": a.name, "public_key": key.public_key, "seq": rec.seq,
        }));
    }
    println!(
        "revoked {} {} at seq {}: what it signs from here on is refused",
        a.name, key.public_key, rec.seq
    );
    Ok(())
}

fn list(ctx: &Context) -> Result<()> {
    let ledger = ctx.ledger()?;
    let registry = ledger.registry();
    let keys = registry.keys();
    if ctx.json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name,
                    "public_key": k.public_key,
                    "roles": k.roles.iter().map(Role::as_str).collect::<Vec<_>>(),
                    "run_scope": k.run_scope,
                    "expires_at": k.expires_at,
                    "registered_at": k.registered_at,
                    "registered_by": k.registered_by,
                    "revoked_at": k.revoked_at,
                    "root": registry.root() == Some(k.public_key.as_str()),
                })
            })
            .collect();
        return crate::output::json(&rows);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let mut state = match k.revoked_at {
                Some(s) => format!("revoked at seq {s}"),
                None => "live".into(),
            };
            if registry.root() == Some(k.public_key.as_str()) {
                state.push_str(", root");
            }
            vec![
                k.name.clone(),
                k.public_key.get(..16).unwrap_or(&k.public_key).to_string() + "…",
                k.roles_text(),
                k.run_scope.clone().unwrap_or_default(),
                k.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                k.registered_at.to_string(),
                state,
            ]
        })
        .collect();
    crate::output::grid(
        &[
            "name",
            "key",
            "roles",
            "run scope",
            "expires",
            "seq",
            "state",
        ],
        rows,
    );
    Ok(())
}

/// Runs `ledger whoami`.
pub fn whoami(ctx: &Context) -> Result<()> {
    let id = ctx.identity()?.clone();
    let ledger = ctx.ledger()?;
    let registry = ledger.registry();
    let state = registry.key(id.public_key());
    if ctx.json {
        return crate::output::json(&serde_json::json!({
            "name": id.name(),
            "public_key": id.public_key(),
            "registered": state.is_some(),
            "roles": state.map(|k| k.roles.iter().map(Role::as_str).collect::<Vec<_>>()),
            "revoked_at": state.and_then(|k| k.revoked_at),
            "root": registry.root(),
        }));
    }
    println!("{} {}", id.name(), id.public_key());
    match state {
        None => println!("not registered in this ledger (an admin runs `ledger key register`)"),
        Some(k) if k.name != id.name() => println!(
            "registered as {:?}, not {:?}: events signed with this file would be refused",
            k.name,
            id.name()
        ),
        Some(k) => {
            let may: Vec<&str> = k
                .roles
                .iter()
                .flat_map(|r| r.may_append().iter().map(|t| t.as_str()))
                .collect();
            println!("roles {} (seq {})", k.roles_text(), k.registered_at);
            if let Some(s) = k.revoked_at {
                println!("REVOKED at seq {s}");
            } else {
                println!("may append {}", may.join(", "));
            }
        }
    }
    if let Some(root) = registry.root() {
        println!("ledger root {root}");
    }
    Ok(())
}

/// Runs `ledger channel …`.
pub fn channel(ctx: &Context, c: ChannelCommand) -> Result<()> {
    let ChannelCommand::Policy(a) = c;
    if a.channel.trim().is_empty() {
        bail!("the channel name is empty");
    }
    for g in &a.gates {
        g.parse::<foundry_recipes::Gate>()
            .map_err(|e| anyhow!("--gate {g:?}: {e}"))?;
    }
    let clean = |v: Option<Vec<String>>, what: &str| -> Result<Option<Vec<String>>> {
        match v {
            Some(list) => {
                let list: Vec<String> = list.into_iter().map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|s| check_key_name(s).is_err()) {
                    bail!("--{what}: {bad:?} is not a key name");
                }
                Ok(Some(list))
            }
            None => Ok(None),
        }
    };
    let policy = ChannelPolicySet {
        channel: a.channel.clone(),
        requesters: clean(a.requesters, "requesters")?,
        rollbackers: clean(a.rollbackers, "rollbackers")?,
        evaluators: clean(a.evaluators, "evaluators")?,
        gates: a.gates,
        min_examples: a.min_examples,
    };
    let ledger = ctx.ledger()?;
    let rec = ctx
        .append(
            &ledger,
            AppendRequest::new(vec![NewEvent::new(policy.clone())]),
        )?
        .events
        .remove(0);
    if ctx.json {
        return crate::output::json(&serde_json::json!({"seq": rec.seq, "policy": policy}));
    }
    println!(
        "policy of channel {} set at seq {} by {}",
        a.channel, rec.seq, rec.actor
    );
    Ok(())
}
