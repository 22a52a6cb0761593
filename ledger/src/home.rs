//! The on-disk home (`--home`, default `./.foundry`) and its content-addressed
//! artifact store.

use crate::{Ledger, LedgerError, Result};
use foundry_events::Sha256Digest;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A Foundry home directory: `ledger/`, `views/`, `artifacts/`, `runs/`, `adapters/`.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Names a home without touching the disk.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The home's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the sled ledger lives.
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join("ledger")
    }

    /// Where projections persist their views.
    pub fn views_dir(&self) -> PathBuf {
        self.root.join("views")
    }

    /// Root of the content-addressed artifact store.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Per-run working files (run_config.json, logs).
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    /// Checkpoints of a run in PEFT layout.
    pub fn adapters_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("adapters").join(run_id)
    }

    /// Creates the home (and its parents) and an empty ledger. Idempotent.
    pub fn init(&self) -> Result<Ledger> {
        for d in [self.root.clone(), self.views_dir(), self.artifacts_dir()] {
            std::fs::create_dir_all(&d).map_err(|source| LedgerError::Io { path: d, source })?;
        }
        Ledger::create(&self.ledger_dir())
    }

    /// Opens the ledger of an existing, initialized home.
    pub fn open_ledger(&self) -> Result<Ledger> {
        if !self.root.is_dir() {
            return Err(LedgerError::HomeMissing(self.root.clone()));
        }
        if !self.ledger_dir().is_dir() {
            return Err(LedgerError::NotInitialized(self.root.clone()));
        }
        Ledger::open(&self.ledger_dir())
    }

    /// The artifact store of this home.
    pub fn artifacts(&self) -> ArtifactStore {
        ArtifactStore {
            root: self.artifacts_dir(),
        }
    }
}

/// Files addressed by their sha256: `artifacts/sha256/<ab>/<hash>`. Writing
/// goes through a temporary file and a rename, so a stored file is whole.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Hashes a file by streaming it; returns its digest and size.
pub fn hash_file(path: &Path) -> Result<(Sha256Digest, u64)> {
    let io = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Sha256Digest(h.finalize().into()), n))
}

impl ArtifactStore {
    /// Where a digest's file lives.
    pub fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// True if the store holds this digest.
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// Copies a file into the store; returns its digest and size.
    pub fn put_file(&self, src: &Path) -> Result<(Sha256Digest, u64)> {
        let (digest, size) = hash_file(src)?;
        self.store(&digest, |tmp| std::fs::copy(src, tmp).map(|_| ()))?;
        Ok((digest, size))
    }

    /// Stores bytes; returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Sha256Digest> {
        let digest = Sha256Digest::of(bytes);
        self.store(&digest, |tmp| {
            std::fs::File::create(tmp).and_then(|mut f| f.write_all(bytes))
        })?;
        Ok(digest)
    }

    /// Writes a digest's file through `write` into a temporary file, syncs
    /// it and renames it into place, unless it is already stored.
    fn store(
        &self,
        digest: &Sha256Digest,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<()> {
        let dst = self.path_of(digest);
        if dst.is_file() {
            return Ok(());
        }
        let io = |source| LedgerError::Io {
            path: dst.clone(),
            source,
        };
        let dir = dst.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(".{}.tmp", digest.to_hex()));
        write(&tmp).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &dst).map_err(io)?;
        Ok(())
    }

    /// Where a file fetched from elsewhere is written before it is checked
    /// and installed with [`ArtifactStore::install_staged`] (its folder is
    /// created). One name per digest: a fetch killed midway leaves a file
    /// that the next fetch of the same digest overwrites, never an artifact.
    pub fn staging_path(&self, digest: &Sha256Digest) -> Result<PathBuf> {
        let dst = self.path_of(digest);
        let dir = dst.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| LedgerError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join(format!(".{}.incoming", digest.to_hex())))
    }

    /// Installs a staged file as `digest` if its bytes hash to it (synced,
    /// then renamed into place); otherwise removes it and says what arrived.
    pub fn install_staged(&self, staged: &Path, digest: &Sha256Digest) -> Result<()> {
        let (actual, _) = hash_file(staged)?;
        self.install_hashed(staged, digest, &actual)
    }

    /// [`ArtifactStore::install_staged`] for a writer that hashed the bytes
    /// as it wrote them: `actual` is their sha256.
    pub fn install_hashed(
        &self,
        staged: &Path,
        digest: &Sha256Digest,
        actual: &Sha256Digest,
    ) -> Result<()> {
        if actual != digest {
            let _ = std::fs::remove_file(staged);
            return Err(LedgerError::Corrupt {
                seq: 0,
                reason: format!(
                    "artifact {} arrived with other bytes (they hash to {})",
                    digest.short(),
                    actual.short()
                ),
            });
        }
        let dst = self.path_of(digest);
        let io = |source| LedgerError::Io {
            path: dst.clone(),
            source,
        };
        std::fs::File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(staged, &dst).map_err(io)?;
        Ok(())
    }

    /// Re-hashes a stored file: `Ok(true)` if present and intact,
    /// `Ok(false)` if missing, `Err` naming it if its bytes changed.
    pub fn check(&self, digest: &Sha256Digest) -> Result<bool> {
        let p = self.path_of(digest);
        if !p.is_file() {
            return Ok(false);
        }
        let (actual, _) = hash_file(&p)?;
        if actual != *digest {
            return Err(LedgerError::Corrupt {
                seq: 0,
                reason: format!(
                    "artifact {} was altered (now hashes to {})",
                    p.display(),
                    actual.short()
                ),
            });
        }
        Ok(true)
    }
}
