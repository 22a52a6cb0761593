//! An identity: a registered name and the Ed25519 key that signs as it.
//! Seeds are NATS nkeys (`SU…`), the encoding NATS creds already use, kept
//! in files only their owner can read.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use foundry_events::{batch_message, conditions_digest, Signature, Statement, SCHEMA_VERSION};

use super::{Conditions, SignedBatch};
use crate::{AppendRequest, LedgerError, Result};

/// Longest key name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a key name: 1 to 128 characters from letters, digits and
/// `. _ - : @ +`. Names appear in streams (`key/<name>`), tables and file
/// names, so nothing else is allowed.
pub fn check_key_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "key name {name:?} must be 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_:@+".contains(*c)))
    {
        return Err(format!(
            "key name {name:?} contains {c:?}; use letters, digits and . _ - : @ +"
        ));
    }
    Ok(())
}

/// Parses a NATS user public key (`U…`) into a verifying key. Weak keys
/// (small-order points, whose signatures prove nothing) are refused.
pub fn parse_public_key(nkey: &str) -> std::result::Result<VerifyingKey, String> {
    let (prefix, bytes) = nkeys::from_public_key(nkey)
        .map_err(|e| format!("{nkey:?} is not an nkey public key ({e})"))?;
    if prefix != USER_PREFIX {
        return Err(format!("{nkey:?} is not a user key (it must start with U)"));
    }
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("{nkey:?} is not a valid Ed25519 public key"))?;
    if key.is_weak() {
        return Err(format!("{nkey:?} is a weak Ed25519 key"));
    }
    Ok(key)
}

/// nkeys' prefix byte of user public keys (`U`).
const USER_PREFIX: u8 = 20 << 3;

/// A name and the signing key that acts as it. Signs append requests into
/// [`SignedBatch`]es; the ledger checks them against the registered key.
#[derive(Clone)]
pub struct Identity {
    name: String,
    key: SigningKey,
    public: String,
    seed: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({} {})", self.name, self.public)
    }
}

impl Identity {
    /// A fresh random key named `name`.
    pub fn generate(name: &str) -> Result<Identity> {
        check_key_name(name).map_err(LedgerError::Key)?;
        let pair = nkeys::KeyPair::new_user();
        let seed = pair
            .seed()
            .map_err(|e| LedgerError::Key(format!("cannot make a key: {e}")))?;
        Identity::from_seed(name, &seed)
    }

    /// The identity of a NATS user seed (`SU…`).
    pub fn from_seed(name: &str, seed: &str) -> Result<Identity> {
        check_key_name(name).map_err(LedgerError::Key)?;
        let seed = seed.trim();
        let pair = nkeys::KeyPair::from_seed(seed)
            .map_err(|e| LedgerError::Key(format!("not an nkey seed ({e})")))?;
        if pair.key_pair_type() != nkeys::KeyPairType::User {
            return Err(LedgerError::Key(
                "the seed is not a user seed (it must start with SU)".into(),
            ));
        }
        let (_, raw) = nkeys::decode_seed(seed)
            .map_err(|e| LedgerError::Key(format!("not an nkey seed ({e})")))?;
        Ok(Identity {
            name: name.to_string(),
            key: SigningKey::from_bytes(&raw),
            public: pair.public_key(),
            seed: seed.to_string(),
        })
    }

    /// The registered name this key signs as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key, as a NATS nkey (`U…`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The seed (`SU…`): the secret. For writing a key file or handing a
    /// scoped key to the one process that must hold it.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// Signs a 32-byte message.
    pub fn sign_message(&self, message: &[u8; 32]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }

    /// Signs an append request: every event becomes a [`Statement`] by this
    /// identity, with a fresh event id; the batch gets an idempotency key
    /// (`auto/<uuid>` when the request has none, so a captured request can
    /// never be appended twice) and one signature over its statements and
    /// its expectations.
    pub fn sign(&self, req: AppendRequest) -> Result<SignedBatch> {
        let key = req
            .idempotency_key
            .unwrap_or_else(|| format!("auto/{}", uuid::Uuid::now_v7()));
        let mut statements = Vec::with_capacity(req.events.len());
        for ne in req.events {
            statements.push(Statement {
                stream: ne.stream.unwrap_or_else(|| ne.event.default_stream()),
                event_id: uuid::Uuid::now_v7(),
                event_type: ne.event.event_type().as_str().to_string(),
                schema_version: SCHEMA_VERSION,
                actor: self.name.clone(),
                causation_id: ne.causation_id,
                correlation_id: ne.correlation_id,
                idempotency_key: Some(key.clone()),
                payload: ne.event.encode_payload()?,
                signer: self.public.clone(),
            });
        }
        let conditions = conditions_digest(req.expected.iter().map(|(s, v)| (s.as_str(), *v)));
        let digests: Vec<_> = statements.iter().map(|s| s.digest()).collect();
        let signature = self.sign_message(&batch_message(&conditions, &digests));
        Ok(SignedBatch {
            statements,
            conditions: Conditions::Expect(req.expected),
            signature,
        })
    }

    /// Writes the seed to a new file readable only by its owner (mode
    /// 0600), with the name and public key as comments. Refuses to
    /// overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let text = format!(
            "# foundry key: {}\n# public key: {}\n{}\n",
            self.name, self.public, self.seed
        );
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads a key file written by [`Identity::save`] (or any file holding
    /// a NATS user seed on a line of its own). The name is the file's
    /// `# foundry key: NAME` comment, else `name`, else the file's stem.
    pub fn load(path: &Path, name: Option<&str>) -> Result<Identity> {
        let text = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(LedgerError::Key(format!(
                        "{}: the key file is readable by others (mode {:o}); chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    )));
                }
            }
        }
        let mut found_name = None;
        let mut seed = None;
        for line in text.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("# foundry key:") {
                found_name = Some(n.trim().to_string());
            } else if line.starts_with("SU") {
                seed = Some(line.to_string());
            }
        }
        let seed = seed.ok_or_else(|| {
            LedgerError::Key(format!(
                "{}: no nkey user seed (SU…) in the file",
                path.display()
            ))
        })?;
        let name = found_name
            .or_else(|| name.map(str::to_string))
            .or_else(|| {
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Identity::from_seed(&name, &seed)
            .map_err(|e| LedgerError::Key(format!("{}: {e}", path.display())))
    }
}

/// Where a home keeps its key files: `<home>/keys/<name>.nk`.
pub fn key_path(keys_dir: &Path, name: &str) -> PathBuf {
    keys_dir.join(format!("{name}.nk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate("alice").unwrap();
        assert!(id.public_key().starts_with('U') && id.public_key().len() == 56);
        let path = key_path(dir.path(), "alice");
        id.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = Identity::load(&path, None).unwrap();
        assert_eq!(back.name(), "alice");
        assert_eq!(back.public_key(), id.public_key());
        assert!(id.save(&path).is_err(), "overwrote a key file");
        // A file others can read is refused.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Identity::load(&path, None).unwrap_err().to_string();
            assert!(e.contains("readable by others"), "{e}");
        }
    }

    #[test]
    fn names_and_keys_are_checked() {
        assert!(check_key_name("runner:trainer@gpu-1").is_ok());
        assert!(check_key_name("").is_err());
        assert!(check_key_name("a b").is_err());
        assert!(check_key_name("a/b").is_err());
        assert!(check_key_name(&"x".repeat(129)).is_err());
        let id = Identity::generate("k").unwrap();
        assert!(parse_public_key(id.public_key()).is_ok());
        assert!(parse_public_key("UABC").is_err());
        let seed = nkeys::KeyPair::new_account().seed().unwrap();
        assert!(Identity::from_seed("x", &seed).is_err(), "an account seed");
        assert!(Identity::from_seed("x", "SUnotaseed").is_err());
    }
}
