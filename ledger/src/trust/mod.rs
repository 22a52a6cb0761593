//! Who wrote each event, and whether they were allowed to.
//!
//! Every append is a [`SignedBatch`]: statements signed once by one key.
//! The ledger accepts it only if the signature holds and the [`Registry`]
//! — folded from the ledger's own KeyRegistered / KeyRevoked events,
//! starting with the genesis event in which the root key registers itself —
//! says the key is registered under the statement's actor, live, not
//! expired, inside its run scope, and holds a role that may append each
//! event's type ([`foundry_events::Role`]). `verify`, `import` and replicas
//! check the same rules again, record by record, so a history edited after
//! the fact, or forged from scratch under another root, is refused.

mod batch;
mod identity;
mod registry;

pub use batch::{failing_signatures, signature_holds, Conditions, SignedBatch, MAX_BATCH};
pub use identity::{check_key_name, key_path, parse_public_key, Identity, MAX_NAME_LEN};
pub use registry::{Claim, KeyState, Placement, Registry, MAX_SCOPED_KEY_LIFETIME_NS};

use foundry_events::{KeyRegistered, Role};

use crate::{AppendRequest, NewEvent};

/// A key to register, with its roles.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The name it signs as.
    pub name: String,
    /// Its public key (nkey).
    pub public_key: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Why.
    pub note: String,
}

impl Grant {
    /// A grant for an identity.
    pub fn of(id: &Identity, roles: &[Role], note: &str) -> Grant {
        Grant {
            name: id.name().to_string(),
            public_key: id.public_key().to_string(),
            roles: roles.to_vec(),
            note: note.to_string(),
        }
    }

    /// The event that registers it.
    pub fn event(&self) -> KeyRegistered {
        KeyRegistered {
            name: self.name.clone(),
            public_key: self.public_key.clone(),
            roles: self.roles.iter().map(|r| r.as_str().to_string()).collect(),
            run_scope: None,
            expires_at: None,
            note: self.note.clone(),
        }
    }
}

/// The genesis batch of a ledger: the root key registers itself with
/// `root_roles` (which must include admin), then registers `others`.
pub fn genesis_request(root: &Identity, root_roles: &[Role], others: &[Grant]) -> AppendRequest {
    let mut events = vec![NewEvent::new(
        Grant::of(
            root,
            root_roles,
            "root key, registered by itself at ledger init",
        )
        .event(),
    )];
    events.extend(others.iter().map(|g| NewEvent::new(g.event())));
    AppendRequest::new(events).idempotent("genesis")
}
