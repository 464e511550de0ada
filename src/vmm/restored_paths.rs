//! Host paths that a state file names (each drive's `path_on_host`, the vsock device's
//! `uds_path`, each network interface's firewall `flow_log`). A keyed state file's paths are the orchestrator's: its key authenticates them.
//! An unkeyed one's tag is a SHA-256 anyone who can write the file computes again, so its
//! paths are hostile input: each must resolve (links followed, `..` folded) beneath a
//! directory named by `--snapshot-dir`, and is replaced by that resolved path, so the file
//! opened is the file checked (not a link swapped in later, short of a directory inside a
//! snapshot directory being replaced between the check and the open). Without a
//! `--snapshot-dir`, an unkeyed state file may name no host path at all.

use std::path::{Component, Path, PathBuf};

/// Why a host path of a state file is refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoredPathError {
    /// The path resolves outside every `--snapshot-dir`.
    #[error("The snapshot state file has no key and names {what} '{path}', which is not beneath a --snapshot-dir directory (use --snapshot-key-file, or keep the files in a --snapshot-dir)")]
    Outside {
        /// What the path is.
        what: &'static str,
        /// The path as the state file names it.
        path: String,
    },
    /// The path cannot be resolved (missing, or a component is not a directory).
    #[error("Cannot resolve {what} '{path}' named by the snapshot state file")]
    Resolve {
        /// What the path is.
        what: &'static str,
        /// The path as the state file names it.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where an unkeyed state file's paths may lie: the `--snapshot-dir` directories, resolved.
pub struct Confinement {
    dirs: Vec<PathBuf>,
}

impl Confinement {
    /// The `--snapshot-dir` directories (those that do not resolve allow nothing).
    pub fn new(dirs: &[PathBuf]) -> Self {
        Self {
            dirs: dirs
                .iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect(),
        }
    }

    fn check(
        &self,
        what: &'static str,
        original: &str,
        resolved: PathBuf,
    ) -> Result<String, RestoredPathError> {
        let inside = self
            .dirs
            .iter()
            .any(|dir| resolved.starts_with(dir) && resolved != *dir);
        match (inside, resolved.into_os_string().into_string()) {
            (true, Ok(path)) => Ok(path),
            _ => Err(RestoredPathError::Outside {
                what,
                path: original.to_string(),
            }),
        }
    }

    /// An existing file (a drive's backing file): its resolved path, beneath a snapshot
    /// directory.
    pub fn file(&self, what: &'static str, path: &str) -> Result<String, RestoredPathError> {
        let resolved =
            std::fs::canonicalize(path).map_err(|source| RestoredPathError::Resolve {
                what,
                path: path.to_string(),
                source,
            })?;
        self.check(what, path, resolved)
    }

    /// A socket the VMM binds (it need not exist): its directory resolved, its last
    /// component a plain name.
    pub fn socket(&self, what: &'static str, path: &str) -> Result<String, RestoredPathError> {
        let p = Path::new(path);
        let outside = || RestoredPathError::Outside {
            what,
            path: path.to_string(),
        };
        let name = match p.components().next_back() {
            Some(Component::Normal(name)) => name,
            _ => return Err(outside()),
        };
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).map_err(|source| {
            RestoredPathError::Resolve {
                what,
                path: path.to_string(),
                source,
            }
        })?;
        self.check(what, path, dir.join(name))
    }
}

impl Confinement {
    /// A file the VMM appends to and creates when missing (a flow log): an existing one
    /// resolved whole (a link in its place is followed here, not later), a missing one as a
    /// socket is.
    pub fn created_file(
        &self,
        what: &'static str,
        path: &str,
    ) -> Result<String, RestoredPathError> {
        if std::fs::symlink_metadata(path).is_ok() {
            self.file(what, path)
        } else {
            self.socket(what, path)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths_outside_the_snapshot_dirs_are_refused_and_inside_ones_resolved() {
        let snap = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let disk = snap.path().join("disk.img");
        std::fs::write(&disk, b"x").unwrap();
        let link = snap.path().join("link.img");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let c = Confinement::new(&[snap.path().to_path_buf()]);
        let real = std::fs::canonicalize(&disk).unwrap();
        assert_eq!(
            c.file("drive", disk.to_str().unwrap()).unwrap(),
            real.to_str().unwrap()
        );
        for bad in ["/etc/passwd", link.to_str().unwrap()] {
            assert!(matches!(
                c.file("drive", bad),
                Err(RestoredPathError::Outside { .. })
            ));
        }
        let dotdot = format!("{}/../{}/x", snap.path().display(), other.path().display());
        assert!(c.file("drive", &dotdot).is_err());
        let sock = snap.path().join("v.sock");
        assert!(c.socket("vsock", sock.to_str().unwrap()).is_ok());
        let escape = format!("{}/..", snap.path().display());
        assert!(c.socket("vsock", &escape).is_err());
        let elsewhere = other.path().join("v.sock");
        assert!(c.socket("vsock", elsewhere.to_str().unwrap()).is_err());
        assert!(Confinement::new(&[])
            .file("drive", disk.to_str().unwrap())
            .is_err());
        // A flow log: a new file inside, an existing one inside, a link to outside.
        let log = snap.path().join("flows.jsonl");
        assert!(c.created_file("flow log", log.to_str().unwrap()).is_ok());
        assert!(c.created_file("flow log", disk.to_str().unwrap()).is_ok());
        assert!(c.created_file("flow log", link.to_str().unwrap()).is_err());
        assert!(c.created_file("flow log", "/etc/cron.d/x").is_err());
    }
}
