//! Advisory locks on snapshot memory files. A VM whose RAM is mapped from a memory file (the
//! File backend maps it private, copy-on-write) holds a read lock on it for its life (the
//! file stays open with the VM); a Diff, which writes pages into the file in place, takes the
//! write lock first and is refused while any other VM holds a read lock: that VM would see
//! the written pages (another guest's memory) in every page it has not touched yet.
//!
//! A Diff onto the very file this VM is mapped from is safe for this VM, so only OTHER
//! holders refuse it: the read lock moves from the held file to the target (same inode),
//! which is then upgraded. These are open file description locks (`F_OFD_SETLK`, whole
//! file), not flock(2): a flock conversion that fails drops the lock it converts (flock(2),
//! and so on Linux 6.18), a window in which a second VM's conversion succeeds and writes into
//! the file the first still maps. An OFD lock's upgrade that fails leaves the read lock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::memory_file::MemoryFileError;

fn set(file: &File, kind: libc::c_int) -> io::Result<()> {
    let lock = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl reads the flock structure, which lives across the call; the fd is open
    // (owned by `file`).
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn conflict(e: io::Error, refusal: MemoryFileError) -> MemoryFileError {
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => refusal,
        _ => MemoryFileError::Io("lock", e),
    }
}

/// Takes the read lock a VM holds on the memory file its RAM is mapped from, for as long as
/// `file` stays open. Refused while another VM's Diff writes into the file.
pub fn hold_mapped(file: &File) -> Result<(), MemoryFileError> {
    set(file, libc::F_RDLCK).map_err(|e| conflict(e, MemoryFileError::BeingWritten))
}

fn same_inode(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// The write lock of a Diff on its target; [`DiffLock::release`] gives it back.
#[must_use = "release the lock when the Diff is written"]
pub struct DiffLock<'a> {
    /// The file this VM is mapped from, when it is the target (its read lock moved).
    own: Option<&'a File>,
}

impl<'a> DiffLock<'a> {
    /// Write-locks `target` (opened read-write from `path`). `held` is the file this VM's
    /// memory is mapped from (read-locked by [`hold_mapped`]): when it is the target, its
    /// lock moves to `target` first, so that only other VMs' locks refuse the Diff.
    pub fn take(
        target: &File,
        path: &Path,
        held: Option<&'a File>,
    ) -> Result<Self, MemoryFileError> {
        let mapped = || MemoryFileError::Mapped(path.to_path_buf());
        let own = match held {
            Some(held)
                if same_inode(target, held).map_err(|e| MemoryFileError::Io("stat", e))? =>
            {
                held
            }
            _ => {
                set(target, libc::F_WRLCK).map_err(|e| conflict(e, mapped()))?;
                return Ok(Self { own: None });
            }
        };
        set(target, libc::F_RDLCK).map_err(|e| conflict(e, MemoryFileError::BeingWritten))?;
        // Both read locks are this VM's; the held one goes, the target's still keeps writers
        // out, and the upgrade either succeeds or leaves it.
        let moved = set(own, libc::F_UNLCK).and_then(|()| set(target, libc::F_WRLCK));
        if let Err(e) = moved {
            restore(own);
            return Err(conflict(e, mapped()));
        }
        Ok(Self { own: Some(own) })
    }

    /// Ends the Diff's write: the target keeps a read lock until it is closed (no other Diff
    /// writes into it while its identity is taken); the held file is read-locked again.
    pub fn release(self, target: &File) {
        if let Err(e) = set(target, libc::F_RDLCK) {
            log::warn!("Cannot downgrade the memory file's lock: {e}");
        }
        if let Some(own) = self.own {
            restore(own);
        }
    }
}

/// Read-locks the held file again; cannot conflict while this VM read-locks the target.
fn restore(held: &File) {
    if let Err(e) = set(held, libc::F_RDLCK) {
        log::error!("Cannot lock the memory file this VM is mapped from again: {e}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    fn open_rw(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .unwrap()
    }

    /// Each open file description stands for one VM.
    #[test]
    fn a_diff_onto_its_own_mapped_file_is_refused_only_by_other_holders_and_keeps_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let (own, other) = (File::open(&path).unwrap(), File::open(&path).unwrap());
        hold_mapped(&own).unwrap();
        hold_mapped(&other).unwrap();

        // Another VM maps it: refused, and this VM's read lock is still held after the
        // failed upgrade (a third writer is refused because of it alone once `other` goes).
        let target = open_rw(&path);
        assert!(matches!(
            DiffLock::take(&target, &path, Some(&own)),
            Err(MemoryFileError::Mapped(_))
        ));
        drop(target);
        drop(other);
        let stranger = open_rw(&path);
        assert!(matches!(
            DiffLock::take(&stranger, &path, None),
            Err(MemoryFileError::Mapped(_))
        ));
        drop(stranger);

        // Alone: the Diff takes the write lock (a new load is refused meanwhile), and after
        // it the held file is read-locked again.
        let target = open_rw(&path);
        let lock = DiffLock::take(&target, &path, Some(&own)).unwrap();
        let loader = File::open(&path).unwrap();
        assert!(matches!(
            hold_mapped(&loader),
            Err(MemoryFileError::BeingWritten)
        ));
        lock.release(&target);
        drop(target);
        hold_mapped(&loader).unwrap();
        drop(loader);
        let stranger = open_rw(&path);
        assert!(matches!(
            DiffLock::take(&stranger, &path, None),
            Err(MemoryFileError::Mapped(_))
        ));
        drop(stranger);
        drop(own);
        let stranger = open_rw(&path);
        DiffLock::take(&stranger, &path, None)
            .unwrap()
            .release(&stranger);
    }

    #[test]
    fn a_held_file_that_is_not_the_target_does_not_unlock_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, [0u8; 4096]).unwrap();
        std::fs::write(&b, [0u8; 4096]).unwrap();
        let own = File::open(&a).unwrap();
        hold_mapped(&own).unwrap();
        let other = File::open(&b).unwrap();
        hold_mapped(&other).unwrap();
        let target = open_rw(&b);
        assert!(matches!(
            DiffLock::take(&target, &b, Some(&own)),
            Err(MemoryFileError::Mapped(_))
        ));
    }
}
