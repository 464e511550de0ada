//! Writing a snapshot file by replacing it whole: the new contents go to a fresh file beside
//! the target (`.<name>.palisade-new`, created 0600, never through a link), which is synced and
//! then renamed over the target. Whoever still has the old file open or mapped — a clone
//! whose RAM is mapped from the memory file being replaced — keeps the old contents; a reader
//! never sees a half-written file; a link at the target is replaced, never followed.
//!
//! A snapshot is a pair (memory file, state file) that must change together: [`commit_pair`]
//! exchanges the new first file with the old one (`renameat2(RENAME_EXCHANGE)`), then renames
//! the second over its target; when that fails, it exchanges the first back, so the old pair
//! stays on disk as it was (or, when there was no old first file, removes the new one).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
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

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Swaps the directory entries `a` and `b` atomically (both must exist).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call; renameat2 only reads
    // them.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How the first file of a pair went in.
enum FirstIn {
    /// Exchanged with the old file, which is now at the temporary name.
    Exchanged,
    /// Renamed: there was no old file.
    Renamed,
    /// Renamed over the old file: the file system cannot exchange (EINVAL), so a failure of
    /// the second rename cannot be undone.
    Replaced,
}

/// Puts the first file of a pair in place, keeping the old one (if any) at the temporary name.
fn put_first(first: &Replacement) -> io::Result<FirstIn> {
    match std::fs::symlink_metadata(&first.target) {
        // rename(2) refuses to put a file over a directory; the exchange would not.
        Ok(meta) if meta.is_dir() => Err(io::Error::from_raw_os_error(libc::EISDIR)),
        Ok(_) => match exchange(&first.temp, &first.target) {
            Ok(()) => Ok(FirstIn::Exchanged),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: the file system cannot exchange files; replacing without undo",
                    first.target.display()
                );
                std::fs::rename(&first.temp, &first.target).map(|()| FirstIn::Replaced)
            }
            Err(e) => Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::rename(&first.temp, &first.target).map(|()| FirstIn::Renamed)
        }
        Err(e) => Err(e),
    }
}

/// Commits two replacements that belong together (a snapshot's memory file, then its state
/// file) so that a reader finds either both old files or both new ones whenever a commit
/// fails: the first is exchanged with its old file, the second renamed over its target; if
/// that rename fails the first is exchanged back (or removed, when it had no old file) and
/// both new files are removed. On success the old first file is removed (whoever maps it
/// keeps its pages).
pub fn commit_pair(mut first: Replacement, mut second: Replacement) -> io::Result<()> {
    first.file.sync_all()?;
    second.file.sync_all()?;
    let how = put_first(&first)?;
    if let Err(e) = std::fs::rename(&second.temp, &second.target) {
        match how {
            // The new first file is back at the temporary name; dropping removes it.
            FirstIn::Exchanged => {
                if let Err(undo) = exchange(&first.temp, &first.target) {
                    log::error!(
                        "Cannot put back {} after a failed snapshot commit: {undo}",
                        first.target.display()
                    );
                    first.committed = true;
                }
            }
            FirstIn::Renamed => {
                first.committed = true;
                let _ = std::fs::remove_file(&first.target);
            }
            FirstIn::Replaced => {
                first.committed = true;
                log::error!(
                    "{} was replaced but its state file was not: the pair on disk is inconsistent",
                    first.target.display()
                );
            }
        }
        return Err(e);
    }
    second.committed = true;
    first.committed = true;
    if let FirstIn::Exchanged = how {
        // The old first file, now at the temporary name.
        if let Err(e) = std::fs::remove_file(&first.temp) {
            log::warn!(
                "Snapshot committed, but the replaced file {} was not removed: {e}",
                first.temp.display()
            );
        }
    }
    Ok(())
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

    /// A pair whose second target is a non-empty directory: its rename fails.
    fn failing_pair(dir: &Path, first_target: &Path) -> io::Result<()> {
        let blocked = dir.join("state-dir");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let mut first = Replacement::create(first_target).unwrap();
        first.file().write_all(b"new memory").unwrap();
        let mut second = Replacement::create(&blocked).unwrap();
        second.file().write_all(b"new state").unwrap();
        commit_pair(first, second)
    }

    #[test]
    fn a_committed_pair_replaces_both_and_an_open_old_first_file_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, state) = (dir.path().join("mem"), dir.path().join("state"));
        std::fs::write(&mem, b"old memory").unwrap();
        std::fs::write(&state, b"old state").unwrap();
        let mut old = File::open(&mem).unwrap();
        let mut first = Replacement::create(&mem).unwrap();
        first.file().write_all(b"new memory").unwrap();
        let mut second = Replacement::create(&state).unwrap();
        second.file().write_all(b"new state").unwrap();
        commit_pair(first, second).unwrap();
        assert_eq!(std::fs::read(&mem).unwrap(), b"new memory");
        assert_eq!(std::fs::read(&state).unwrap(), b"new state");
        let mut seen = String::new();
        old.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old memory");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp left"
        );
    }

    #[test]
    fn when_the_second_rename_fails_the_old_first_file_is_put_back_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("mem");
        std::fs::write(&mem, b"old memory").unwrap();
        let e = failing_pair(dir.path(), &mem).unwrap_err();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST)
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&mem).unwrap(), b"old memory");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["mem", "state-dir"], "no temp left");
    }

    #[test]
    fn when_the_second_rename_fails_a_first_file_that_had_no_old_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("mem");
        assert!(failing_pair(dir.path(), &mem).is_err());
        assert!(!mem.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_at_the_first_target_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("mem");
        std::fs::create_dir(&mem).unwrap();
        let first = Replacement::create(&mem).unwrap();
        let second = Replacement::create(&dir.path().join("state")).unwrap();
        let e = commit_pair(first, second).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
        assert!(mem.is_dir());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
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
