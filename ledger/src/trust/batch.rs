//! What an appender sends: statements and one signature over them.

use ed25519_dalek::VerifyingKey;
use foundry_events::{
    batch_message, conditions_digest, ExpectedVersion, RecordedEvent, Sha256Digest, Signature,
    Statement,
};

use crate::{LedgerError, Result};

/// Most events one signed batch may hold.
pub const MAX_BATCH: usize = 1 << 20;

/// The stream-version expectations a batch was signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conditions {
    /// Checked at append: every stream must be at the expected version.
    Expect(Vec<(String, ExpectedVersion)>),
    /// A batch already appended elsewhere (a Modal container's scratch
    /// ledger), appended again as signed: its expectations held there and
    /// are known here only by their digest, so they are not checked again.
    /// Only run-scoped keys' batches may be relayed.
    Relayed(Sha256Digest),
}

impl Conditions {
    /// The digest the signature binds.
    pub fn digest(&self) -> Sha256Digest {
        match self {
            Conditions::Expect(e) => conditions_digest(e.iter().map(|(s, v)| (s.as_str(), *v))),
            Conditions::Relayed(d) => *d,
        }
    }
}

/// A batch of statements signed once by their signer: the only thing the
/// ledger appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBatch {
    /// The events, as their signer vouches for them, in order.
    pub statements: Vec<Statement>,
    /// The expectations it was signed with.
    pub conditions: Conditions,
    /// The signer's signature of the [`batch_message`].
    pub signature: Signature,
}

impl SignedBatch {
    /// The signer's nkey (of the first statement; [`SignedBatch::check_shape`]
    /// makes sure all agree).
    pub fn signer(&self) -> &str {
        self.statements.first().map_or("", |s| s.signer.as_str())
    }

    /// The batch's idempotency key.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.statements
            .first()
            .and_then(|s| s.idempotency_key.as_deref())
    }

    /// The message the signature must sign, and the statements' encodings.
    pub fn message(&self) -> ([u8; 32], Vec<Vec<u8>>) {
        let encoded: Vec<Vec<u8>> = self.statements.iter().map(Statement::encode).collect();
        let digests: Vec<Sha256Digest> = encoded.iter().map(|b| Sha256Digest::of(b)).collect();
        (batch_message(&self.conditions.digest(), &digests), encoded)
    }

    /// One whole batch as it was recorded (its records in order, the last
    /// one sealed), to be appended again with its original signature.
    pub fn relay(records: &[RecordedEvent]) -> Result<SignedBatch> {
        let bad = |m: String| LedgerError::InvalidAppend(format!("not a recorded batch: {m}"));
        let Some(last) = records.last() else {
            return Err(bad("no records".into()));
        };
        let n = records.len();
        for (i, r) in records.iter().enumerate() {
            if r.batch_index as usize != i || r.batch_len as usize != n {
                return Err(bad(format!(
                    "seq {} is event {} of {}, expected {i} of {n}",
                    r.seq, r.batch_index, r.batch_len
                )));
            }
        }
        let seal = last
            .seal
            .ok_or_else(|| bad(format!("seq {} has no seal", last.seq)))?;
        Ok(SignedBatch {
            statements: records.iter().map(|r| r.statement.clone()).collect(),
            conditions: Conditions::Relayed(seal.conditions),
            signature: seal.signature,
        })
    }

    /// Checks what needs no registry: size, one signer, one actor, one
    /// idempotency key on every statement.
    pub fn check_shape(&self) -> std::result::Result<(), String> {
        let Some(first) = self.statements.first() else {
            return Err("a batch needs at least one event".into());
        };
        if self.statements.len() > MAX_BATCH {
            return Err(format!(
                "{} events in one batch; at most {MAX_BATCH}",
                self.statements.len()
            ));
        }
        match first.idempotency_key.as_deref() {
            Some(k) if !k.is_empty() && k.len() <= 1024 => {}
            _ => {
                return Err("every signed batch needs an idempotency key of 1 to 1024 bytes".into())
            }
        }
        for (i, s) in self.statements.iter().enumerate() {
            if s.signer != first.signer
                || s.actor != first.actor
                || s.idempotency_key != first.idempotency_key
            {
                return Err(format!(
                    "event {i} has another signer, actor or idempotency key than event 0"
                ));
            }
        }
        Ok(())
    }
}

/// Checks one signature strictly (no malleable encodings, no weak keys).
pub fn signature_holds(key: &VerifyingKey, message: &[u8; 32], signature: &Signature) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(message, &sig).is_ok()
}

/// Checks many signatures at once (Ed25519 batch verification, about twice
/// as fast per signature as one by one). Returns the indices of the ones
/// that fail, found one by one only when the batch as a whole fails.
pub fn failing_signatures(items: &[(VerifyingKey, [u8; 32], Signature)]) -> Vec<usize> {
    if items.is_empty() {
        return Vec::new();
    }
    let messages: Vec<&[u8]> = items.iter().map(|(_, m, _)| m.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = items
        .iter()
        .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(k, _, _)| *k).collect();
    if items.len() > 1 && ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok() {
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter(|(_, (k, m, s))| !signature_holds(k, m, s))
        .map(|(i, _)| i)
        .collect()
}
