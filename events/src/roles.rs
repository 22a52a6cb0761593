//! Who may append what: the roles a key can hold and, for each, the event
//! types it may sign. The ledger enforces this table at every append and
//! `verify` and `import` check it again, record by record.
//!
//! | role | may append |
//! |---|---|
//! | `admin` | KeyRegistered, KeyRevoked, ChannelPolicySet |
//! | `operator` (people, CI) | RecipeDeclared, DatasetPinned, BaseModelPinned, RunRequested, RunCancelled, EvalRequested, PromotionRequested, RollbackRequested |
//! | `trainer` | RunClaimed, RunStarted, RunHeartbeat, MetricsLogged, CheckpointCommitted, RunResumed, RunCompleted, RunFailed, RunAttemptFailed |
//! | `evaluator` | EvalRequested, EvalScored |
//! | `promoter` | AdapterPromoted, PromotionRejected, ChannelRolledBack, RollbackRejected |
//! | `dispatcher` (Modal) | ModalJobSubmitted, ModalJobUpdated, RunFailed, and KeyRegistered / KeyRevoked of run-scoped, expiring trainer keys only |
//!
//! A key may hold several roles. Payload-level rules (what a dispatcher may
//! register, what a run-scoped key may touch, the genesis) live with the
//! ledger's registry.

use crate::EventType;
use std::fmt;

/// A role a registered key can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Manages keys and channel policies.
    Admin,
    /// A person or CI: declares, pins and requests.
    Operator,
    /// Trains runs and records what training did.
    Trainer,
    /// Scores checkpoints.
    Evaluator,
    /// Decides promotions and rollbacks.
    Promoter,
    /// Dispatches runs to Modal and registers their containers' keys.
    Dispatcher,
}

use EventType as T;

const ADMIN: &[EventType] = &[T::KeyRegistered, T::KeyRevoked, T::ChannelPolicySet];
const OPERATOR: &[EventType] = &[
    T::RecipeDeclared,
    T::DatasetPinned,
    T::BaseModelPinned,
    T::RunRequested,
    T::RunCancelled,
    T::EvalRequested,
    T::PromotionRequested,
    T::RollbackRequested,
];
const TRAINER: &[EventType] = &[
    T::RunClaimed,
    T::RunStarted,
    T::RunHeartbeat,
    T::MetricsLogged,
    T::CheckpointCommitted,
    T::RunResumed,
    T::RunCompleted,
    T::RunFailed,
    T::RunAttemptFailed,
];
const EVALUATOR: &[EventType] = &[T::EvalRequested, T::EvalScored];
const PROMOTER: &[EventType] = &[
    T::AdapterPromoted,
    T::PromotionRejected,
    T::ChannelRolledBack,
    T::RollbackRejected,
];
const DISPATCHER: &[EventType] = &[
    T::ModalJobSubmitted,
    T::ModalJobUpdated,
    T::RunFailed,
    T::KeyRegistered,
    T::KeyRevoked,
];

impl Role {
    /// Every role, in table order.
    pub const ALL: &'static [Role] = &[
        Role::Admin,
        Role::Operator,
        Role::Trainer,
        Role::Evaluator,
        Role::Promoter,
        Role::Dispatcher,
    ];

    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Trainer => "trainer",
            Role::Evaluator => "evaluator",
            Role::Promoter => "promoter",
            Role::Dispatcher => "dispatcher",
        }
    }

    /// Looks a stored name up.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// The event types this role may append.
    pub fn may_append(&self) -> &'static [EventType] {
        match self {
            Role::Admin => ADMIN,
            Role::Operator => OPERATOR,
            Role::Trainer => TRAINER,
            Role::Evaluator => EVALUATOR,
            Role::Promoter => PROMOTER,
            Role::Dispatcher => DISPATCHER,
        }
    }

    /// Whether this role may append events of type `ty`.
    pub fn allows(&self, ty: EventType) -> bool {
        self.may_append().contains(&ty)
    }

    /// The roles that may append `ty`.
    pub fn that_may_append(ty: EventType) -> Vec<Role> {
        Role::ALL.iter().copied().filter(|r| r.allows(ty)).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_role_and_names_parse_back() {
        for ty in EventType::ALL {
            assert!(
                !Role::that_may_append(*ty).is_empty(),
                "{} has no role that may append it",
                ty.as_str()
            );
        }
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(*r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn evidence_and_decisions_belong_to_their_roles_only() {
        assert_eq!(Role::that_may_append(T::EvalScored), vec![Role::Evaluator]);
        assert_eq!(
            Role::that_may_append(T::AdapterPromoted),
            vec![Role::Promoter]
        );
        assert_eq!(
            Role::that_may_append(T::ChannelRolledBack),
            vec![Role::Promoter]
        );
        assert_eq!(
            Role::that_may_append(T::CheckpointCommitted),
            vec![Role::Trainer]
        );
        assert!(!Role::Operator.allows(T::KeyRegistered));
    }
}
