//! Writing a snapshot file by replacing it whole: the new contents go to a fresh file beside
//! the target (`.<name>.palisade-new`, created 0600, never through a link), which is synced and
//! then renamed over the target. Whoever still has the old file open or mapped — a clone
//! whose RAM is mapped from the memory file being replaced — keeps the old contents; a reader
//! never sees a half-written file; a link at the target is replaced, never followed.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A new file that will replace `target` when committed (and is removed when dropped
/// uncommitted).
#[derive(Debug)]
pub struct Replacement {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(".palisade-new");
    Ok(target.with_file_name(temp))
}

fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl Replacement {
    /// Creates the new file beside `target`. A leftover of an earlier failed write (same
    /// name) is removed first.
    pub fn create(target: &Path) -> io::Result<Self> {
        let temp = temp_path(target)?;
        let file = match create_new(&temp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&temp)?;
                create_new(&temp)?
            }
            other => other?,
        };
        Ok(Self {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The new file, to write.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the new file and renames it over the target.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_committed_replacement_leaves_an_open_old_file_intact_and_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mem");
        std::fs::write(&target, b"old contents").unwrap();
        let mut old = File::open(&target).unwrap();
        let mut r = Replacement::create(&target).unwrap();
        r.file().write_all(b"new").unwrap();
        r.commit().unwrap();
        let mut seen = String::new();
        old.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old contents");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn a_link_at_the_target_is_replaced_not_followed_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("state");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let mut r = Replacement::create(&link).unwrap();
        r.file().write_all(b"x").unwrap();
        r.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        let mut r = Replacement::create(&victim).unwrap();
        r.file().write_all(b"never").unwrap();
        drop(r);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_leftover_temp_file_or_link_is_removed_first() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mem");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".mem.palisade-new")).unwrap();
        let mut r = Replacement::create(&target).unwrap();
        r.file().write_all(b"new").unwrap();
        r.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }
}
