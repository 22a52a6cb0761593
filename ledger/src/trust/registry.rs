//! The key registry: who holds which key and role at each point of the
//! history, folded from KeyRegistered and KeyRevoked events, and the rules
//! an event must pass to be appended by its signer.

use std::collections::{BTreeSet, HashMap};

use ed25519_dalek::VerifyingKey;
use foundry_events::{Event, EventType, KeyRegistered, KeyRevoked, Role, Timestamp};

use super::identity::{check_key_name, parse_public_key};

/// Longest a key registered by a dispatcher (a Modal container's) may live.
pub const MAX_SCOPED_KEY_LIFETIME_NS: i64 = 30 * 24 * 3600 * 1_000_000_000;

/// One registered key as of some point of the history.
#[derive(Clone, Debug)]
pub struct KeyState {
    /// Its name (the actor of what it signs).
    pub name: String,
    /// The public key (nkey).
    pub public_key: String,
    /// The parsed key, for signature checks.
    pub verifying: VerifyingKey,
    /// Its roles.
    pub roles: BTreeSet<Role>,
    /// The run it is confined to, if any.
    pub run_scope: Option<String>,
    /// When it stops being valid, if ever.
    pub expires_at: Option<Timestamp>,
    /// Seq of its (latest) registration.
    pub registered_at: u64,
    /// Who registered it.
    pub registered_by: String,
    /// Seq of its revocation, if revoked.
    pub revoked_at: Option<u64>,
}

impl KeyState {
    fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    fn live(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// Its roles, comma-separated.
    pub fn roles_text(&self) -> String {
        if self.roles.is_empty() {
            return "none".into();
        }
        self.roles
            .iter()
            .map(Role::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where an event would land: the checks depend on it (revocations by
/// seq, expiry by the ledger's time).
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// The seq it gets.
    pub seq: u64,
    /// The time the ledger records.
    pub recorded_at: Timestamp,
}

/// The statement fields authorization looks at.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// The signer's nkey.
    pub signer: &'a str,
    /// The actor it claims to be.
    pub actor: &'a str,
    /// The stream it appends to.
    pub stream: &'a str,
}

/// The keys of a ledger, as of some seq.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_key: HashMap<String, KeyState>,
    by_name: HashMap<String, String>,
    root: Option<String>,
}

fn short(nkey: &str) -> &str {
    nkey.get(..12).unwrap_or(nkey)
}

impl Registry {
    /// An empty registry: only a genesis registration can be appended.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The root key (registered by the genesis event), once there is one.
    pub fn root(&self) -> Option<&str> {
        self.root.as_deref()
    }

    /// A key by its nkey.
    pub fn key(&self, nkey: &str) -> Option<&KeyState> {
        self.by_key.get(nkey)
    }

    /// The key a name is bound to now.
    pub fn by_name(&self, name: &str) -> Option<&KeyState> {
        self.by_name.get(name).and_then(|k| self.by_key.get(k))
    }

    /// Every key ever registered, by name.
    pub fn keys(&self) -> Vec<&KeyState> {
        let mut v: Vec<&KeyState> = self.by_key.values().collect();
        v.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(a.registered_at.cmp(&b.registered_at))
        });
        v
    }

    fn live_admins(&self) -> usize {
        self.by_key
            .values()
            .filter(|k| k.live() && k.has(Role::Admin))
            .count()
    }

    /// Whether `claim` may append `event` at `at`. The reason is one line
    /// naming the key, the rule and what would be needed.
    pub fn authorize(&self, at: Placement, claim: Claim<'_>, event: &Event) -> Result<(), String> {
        let ty = event.event_type();
        if !event.in_own_stream(claim.stream) {
            return Err(format!(
                "{} belongs in stream {}, not {}",
                ty.as_str(),
                event.default_stream(),
                claim.stream
            ));
        }
        self.authorize_checked(at, claim, ty, Self::changes_on(ty).then_some(event))
    }

    /// [`Registry::authorize`] for an event whose own stream was already
    /// checked, given its type and, for key events, the event itself (what
    /// `verify` keeps of each record).
    pub fn authorize_checked(
        &self,
        at: Placement,
        claim: Claim<'_>,
        ty: EventType,
        key_event: Option<&Event>,
    ) -> Result<(), String> {
        let Some(root) = &self.root else {
            return match key_event {
                Some(event) => genesis(at, claim, event),
                None => Err(format!(
                    "the first event of a ledger must be its root key's KeyRegistered, not {}",
                    ty.as_str()
                )),
            };
        };
        let Some(key) = self.by_key.get(claim.signer) else {
            return Err(format!(
                "signer {} is not a registered key of this ledger (root {})",
                claim.signer,
                short(root)
            ));
        };
        if key.name != claim.actor {
            return Err(format!(
                "signer {} is registered as {:?}, not {:?}",
                short(claim.signer),
                key.name,
                claim.actor
            ));
        }
        if let Some(r) = key.revoked_at {
            return Err(format!(
                "key {:?} ({}) was revoked at seq {r}",
                key.name,
                short(&key.public_key)
            ));
        }
        if let Some(t) = key.expires_at {
            if at.recorded_at > t {
                return Err(format!("key {:?} expired at {t}", key.name));
            }
        }
        if let Some(run) = &key.run_scope {
            if claim.stream != format!("run/{run}") {
                return Err(format!(
                    "key {:?} is scoped to run {run} and may not append to {}",
                    key.name, claim.stream
                ));
            }
        }
        if !key.roles.iter().any(|r| r.allows(ty)) {
            let need: Vec<&str> = Role::that_may_append(ty).iter().map(Role::as_str).collect();
            return Err(format!(
                "{:?} (roles: {}) may not append {}; that takes the role {}",
                key.name,
                key.roles_text(),
                ty.as_str(),
                need.join(" or ")
            ));
        }
        match key_event {
            Some(Event::KeyRegistered(k)) => self.may_register(at, key, k),
            Some(Event::KeyRevoked(k)) => self.may_revoke(key, k),
            _ if Self::changes_on(ty) => Err(format!("{} without its payload", ty.as_str())),
            _ => Ok(()),
        }
    }

    fn may_register(&self, at: Placement, by: &KeyState, k: &KeyRegistered) -> Result<(), String> {
        check_key_name(&k.name)?;
        parse_public_key(&k.public_key)?;
        let roles = parse_roles(&k.roles)?;
        if let Some(scope) = &k.run_scope {
            if scope.is_empty() || scope.contains('\0') {
                return Err("a run scope must name a run".into());
            }
        }
        let existing = self.by_key.get(&k.public_key);
        if let Some(e) = existing {
            if !e.live() {
                return Err(format!(
                    "key {} was revoked at seq {}; a revoked key stays revoked (make a new one)",
                    short(&k.public_key),
                    e.revoked_at.unwrap_or(0)
                ));
            }
            if e.name != k.name {
                return Err(format!(
                    "key {} is already registered as {:?}",
                    short(&k.public_key),
                    e.name
                ));
            }
        }
        if let Some(bound) = self.by_name(&k.name) {
            if bound.public_key != k.public_key && bound.live() {
                return Err(format!(
                    "the name {:?} belongs to key {}; revoke it before giving the name to another key",
                    k.name,
                    short(&bound.public_key)
                ));
            }
        }
        if by.has(Role::Admin) {
            if let Some(e) = existing {
                if e.has(Role::Admin) && !roles.contains(&Role::Admin) && self.live_admins() == 1 {
                    return Err(format!(
                        "{:?} holds the last admin key; give the role to another key first",
                        e.name
                    ));
                }
            }
            return Ok(());
        }
        // A dispatcher: one new, run-scoped, expiring trainer key.
        if existing.is_some() {
            return Err("a dispatcher may only register new keys".into());
        }
        if roles.iter().any(|r| *r != Role::Trainer) || roles.is_empty() {
            return Err("a dispatcher may only register keys with the role trainer".into());
        }
        if k.run_scope.is_none() {
            return Err("a dispatcher may only register keys scoped to one run".into());
        }
        match k.expires_at {
            Some(t)
                if t > at.recorded_at && t.0 - at.recorded_at.0 <= MAX_SCOPED_KEY_LIFETIME_NS =>
            {
                Ok(())
            }
            _ => Err("a dispatcher may only register keys that expire within 30 days".into()),
        }
    }

    fn may_revoke(&self, by: &KeyState, k: &KeyRevoked) -> Result<(), String> {
        let Some(target) = self.by_key.get(&k.public_key) else {
            return Err(format!("key {} is not registered", short(&k.public_key)));
        };
        if target.name != k.name {
            return Err(format!(
                "key {} is registered as {:?}, not {:?}",
                short(&k.public_key),
                target.name,
                k.name
            ));
        }
        if let Some(r) = target.revoked_at {
            return Err(format!("key {:?} was already revoked at seq {r}", k.name));
        }
        if target.has(Role::Admin) && self.live_admins() == 1 {
            return Err(format!(
                "{:?} is the last admin key; register another admin first",
                k.name
            ));
        }
        if !by.has(Role::Admin) && target.run_scope.is_none() {
            return Err("a dispatcher may only revoke run-scoped keys".into());
        }
        Ok(())
    }

    /// Folds one appended (authorized) event into the registry.
    pub fn apply(&mut self, at: Placement, actor: &str, event: &Event) {
        match event {
            Event::KeyRegistered(k) => {
                let Ok(verifying) = parse_public_key(&k.public_key) else {
                    return;
                };
                let roles = parse_roles(&k.roles).unwrap_or_default();
                if self.root.is_none() {
                    self.root = Some(k.public_key.clone());
                }
                self.by_name.insert(k.name.clone(), k.public_key.clone());
                self.by_key.insert(
                    k.public_key.clone(),
                    KeyState {
                        name: k.name.clone(),
                        public_key: k.public_key.clone(),
                        verifying,
                        roles,
                        run_scope: k.run_scope.clone(),
                        expires_at: k.expires_at,
                        registered_at: at.seq,
                        registered_by: actor.to_string(),
                        revoked_at: None,
                    },
                );
            }
            Event::KeyRevoked(k) => {
                if let Some(s) = self.by_key.get_mut(&k.public_key) {
                    s.revoked_at = Some(at.seq);
                }
            }
            _ => {}
        }
    }

    /// Whether an event of this type changes the registry.
    pub fn changes_on(ty: EventType) -> bool {
        matches!(ty, EventType::KeyRegistered | EventType::KeyRevoked)
    }
}

fn parse_roles(names: &[String]) -> Result<BTreeSet<Role>, String> {
    names
        .iter()
        .map(|n| {
            Role::parse(n).ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(Role::as_str).collect();
                format!("unknown role {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

fn genesis(at: Placement, claim: Claim<'_>, event: &Event) -> Result<(), String> {
    let Event::KeyRegistered(k) = event else {
        return Err(format!(
            "the first event of a ledger must be its root key's KeyRegistered, not {}",
            event.event_type().as_str()
        ));
    };
    if at.seq != 1 {
        return Err("the root key can only be registered by the first event".into());
    }
    check_key_name(&k.name)?;
    parse_public_key(&k.public_key)?;
    let roles = parse_roles(&k.roles)?;
    if k.public_key != claim.signer || k.name != claim.actor {
        return Err("the root key must register itself (sign its own KeyRegistered)".into());
    }
    if !roles.contains(&Role::Admin) {
        return Err("the root key must hold the admin role".into());
    }
    if k.run_scope.is_some() || k.expires_at.is_some() {
        return Err("the root key cannot be scoped or expire".into());
    }
    Ok(())
}
