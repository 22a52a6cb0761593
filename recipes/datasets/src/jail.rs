//! Directories that paths taken from untrusted input cannot leave.
//!
//! A dataset's rows name their images, a model's index names its weight
//! shards, a pinned event names its files: all of them are input. Every such
//! path is opened through a [`Jail`] rooted at the dataset root, the model
//! directory or the hub cache's repository folder, which resolves it with
//! the kernel's `openat2(RESOLVE_BENEATH)` (cap-std): an absolute path, a
//! `..` past the root, or a symlink (to a file or a directory) whose target
//! lies outside is refused as [`Denied::Outside`] without the target ever
//! being looked up, so the error says nothing about what exists out there.

use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;

/// Why a path in a jail could not be read.
#[derive(Debug)]
pub enum Denied {
    /// It leads outside the jail (absolute, `..`, or through a symlink).
    Outside,
    /// It is inside, but nothing is there.
    NotFound,
    /// It is larger than the reader allows.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Another I/O error, inside the jail.
    Io(std::io::Error),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Outside => f.write_str("leads outside the directory it must stay in"),
            Denied::NotFound => f.write_str("not found"),
            Denied::TooLarge { limit } => write!(f, "larger than {limit} bytes"),
            Denied::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The message cap-std gives a resolution that would leave its directory.
const ESCAPE: &str = "a path led outside of the filesystem";

fn denied(e: std::io::Error) -> Denied {
    match e.kind() {
        std::io::ErrorKind::NotFound => Denied::NotFound,
        std::io::ErrorKind::PermissionDenied if e.to_string() == ESCAPE => Denied::Outside,
        // openat2 reports an escape as EXDEV on some kernels.
        _ if e.raw_os_error() == Some(18) => Denied::Outside,
        _ => Denied::Io(e),
    }
}

/// A directory, opened once, that every read below it goes through.
pub struct Jail {
    dir: cap_std::fs::Dir,
    /// Prefix of every path (a hub snapshot's `snapshots/<sha>/`).
    base: String,
    root: PathBuf,
    /// A hub repository folder, resolved: where absolute links may point.
    hub_top: Option<PathBuf>,
}

impl std::fmt::Debug for Jail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jail({})", self.root.display())
    }
}

impl Jail {
    /// Opens `root` (a path the user gave, resolved normally) as a jail.
    /// A hub cache snapshot (`…/models--ORG--NAME/snapshots/<sha>`, whose
    /// files are links to `../../blobs/…`) is jailed at its repository
    /// folder, so those links resolve and nothing beyond the repository does.
    pub fn open(root: &Path) -> std::io::Result<Jail> {
        let hub = root
            .parent()
            .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
            .and_then(|p| p.parent())
            .filter(|repo| {
                repo.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--") || n.starts_with("datasets--"))
            });
        let (top, base) = match (hub, root.file_name().and_then(|n| n.to_str())) {
            (Some(repo), Some(sha)) => (repo.to_path_buf(), format!("snapshots/{sha}/")),
            _ => (root.to_path_buf(), String::new()),
        };
        let dir = cap_std::fs::Dir::open_ambient_dir(&top, ambient_authority())?;
        let hub_top = if base.is_empty() {
            None
        } else {
            Some(std::fs::canonicalize(&top)?)
        };
        Ok(Jail {
            dir,
            base,
            root: root.to_path_buf(),
            hub_top,
        })
    }

    /// The jail's root, as given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens the file at `rel` (a `/`-separated path relative to the root).
    pub fn file(&self, rel: &str) -> Result<std::fs::File, Denied> {
        if rel.is_empty() || rel.contains('\0') || Path::new(rel).is_absolute() {
            return Err(Denied::Outside);
        }
        let path = format!("{}{rel}", self.base);
        let f = match self.dir.open(&path).map_err(denied) {
            Ok(f) => f,
            Err(Denied::Outside) => self.absolute_blob_link(&path)?,
            Err(e) => return Err(e),
        }
        .into_std();
        let meta = f.metadata().map_err(Denied::Io)?;
        if !meta.is_file() {
            return Err(Denied::Io(std::io::Error::other("not a regular file")));
        }
        Ok(f)
    }

    /// A hub snapshot whose files are absolute links into the repository's
    /// own `blobs/` (as some tools write them): followed when, resolved,
    /// the file is inside the repository folder; anything else is outside.
    fn absolute_blob_link(&self, path: &str) -> Result<cap_std::fs::File, Denied> {
        let top = self.hub_top.as_ref().ok_or(Denied::Outside)?;
        let real = std::fs::canonicalize(top.join(path)).map_err(|_| Denied::Outside)?;
        let inner = real.strip_prefix(top).map_err(|_| Denied::Outside)?;
        self.dir.open(inner).map_err(denied)
    }

    /// Reads the file at `rel`, refusing one larger than `limit` bytes
    /// (without reading more than that).
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, Denied> {
        let f = self.file(rel)?;
        let len = f.metadata().map_err(Denied::Io)?.len();
        if len > limit {
            return Err(Denied::TooLarge { limit });
        }
        let mut out = Vec::with_capacity(len as usize);
        f.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(Denied::Io)?;
        if out.len() as u64 > limit {
            return Err(Denied::TooLarge { limit });
        }
        Ok(out)
    }

    /// Whether `rel` is a regular file inside the jail.
    pub fn is_file(&self, rel: &str) -> bool {
        self.file(rel).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_whatever_they_try() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.png"), b"secret").unwrap();
        std::fs::write(root.join("images/a.png"), b"a").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(outside.join("secret.png"), root.join("images/abs-link.png")).unwrap();
            symlink("../../outside/secret.png", root.join("images/rel-link.png")).unwrap();
            symlink(
                "../../outside/missing.png",
                root.join("images/dangling.png"),
            )
            .unwrap();
            symlink(&outside, root.join("elsewhere")).unwrap();
            symlink("a.png", root.join("images/inside-link.png")).unwrap();
        }
        let jail = Jail::open(&root).unwrap();
        assert_eq!(jail.read("images/a.png", 10).unwrap(), b"a");
        assert_eq!(jail.read("images/../images/a.png", 10).unwrap(), b"a");
        let secret = outside.join("secret.png");
        for rel in [
            "../outside/secret.png",
            "images/../../outside/secret.png",
            secret.to_str().unwrap(),
            "/etc/passwd",
            "/no/such/file",
            "",
        ] {
            assert!(
                matches!(jail.read(rel, 100), Err(Denied::Outside)),
                "{rel} was not refused as outside"
            );
        }
        #[cfg(unix)]
        {
            assert_eq!(jail.read("images/inside-link.png", 10).unwrap(), b"a");
            // A link to something that exists and one to nothing read the same.
            for rel in [
                "images/abs-link.png",
                "images/rel-link.png",
                "images/dangling.png",
                "elsewhere/secret.png",
            ] {
                assert!(
                    matches!(jail.read(rel, 100), Err(Denied::Outside)),
                    "{rel} was not refused as outside"
                );
            }
        }
        assert!(matches!(
            jail.read("images/none.png", 10),
            Err(Denied::NotFound)
        ));
        // A hub snapshot reaches its blobs, and nothing past its repository.
        let repo = dir.path().join("hub/models--org--m");
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::write(repo.join("blobs/f00"), b"w").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(
                "../../blobs/f00",
                repo.join("snapshots/abc/model.safetensors"),
            )
            .unwrap();
            symlink(
                "../../../../outside/secret.png",
                repo.join("snapshots/abc/config.json"),
            )
            .unwrap();
            // Some tools write absolute links to the blobs.
            symlink(
                repo.join("blobs/f00"),
                repo.join("snapshots/abc/tokenizer.json"),
            )
            .unwrap();
            symlink(
                outside.join("secret.png"),
                repo.join("snapshots/abc/abs-outside.json"),
            )
            .unwrap();
            let hub = Jail::open(&repo.join("snapshots/abc")).unwrap();
            assert_eq!(hub.read("model.safetensors", 10).unwrap(), b"w");
            assert_eq!(hub.read("tokenizer.json", 10).unwrap(), b"w");
            assert!(matches!(hub.read("config.json", 100), Err(Denied::Outside)));
            assert!(matches!(
                hub.read("abs-outside.json", 100),
                Err(Denied::Outside)
            ));
            assert!(hub.read("../../blobs/f00", 100).is_ok());
            assert!(matches!(hub.read("../../../x", 100), Err(Denied::Outside)));
        }
        assert!(matches!(
            jail.read("images/a.png", 0),
            Err(Denied::TooLarge { limit: 0 })
        ));
    }
}
