//! Step 7: make the jail directory the root of the new mount namespace and detach the old
//! root, so no path leads back to the host's file system (stronger than chroot alone).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    #[error("Cannot make / a private mount")]
    Private(#[source] nix::Error),
    #[error("Cannot bind-mount {0} onto itself")]
    Bind(PathBuf, #[source] nix::Error),
    #[error("Cannot change directory to {0}")]
    Chdir(PathBuf, #[source] nix::Error),
    #[error("pivot_root into {0} failed")]
    PivotRoot(PathBuf, #[source] nix::Error),
    #[error("Cannot detach the old root")]
    Detach(#[source] nix::Error),
    #[error("{0} is no longer the jail directory the jailer prepared (a path was swapped)")]
    Swapped(PathBuf),
}

/// Private `/`, bind `root` onto itself, pivot_root into it, detach the old root. `identity`
/// (device, inode) is the directory the jailer prepared: the path must still lead to it.
pub fn enter_root(root: &Path, identity: (u64, u64)) -> Result<(), PivotError> {
    // Nothing below propagates back to the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(PivotError::Private)?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| PivotError::Bind(root.to_path_buf(), e))?;
    chdir(root).map_err(|e| PivotError::Chdir(root.to_path_buf(), e))?;
    // A bind mount keeps the device and inode: anything else is not the prepared directory.
    match std::fs::metadata(".") {
        Ok(m) if (m.dev(), m.ino()) == identity => {}
        _ => return Err(PivotError::Swapped(root.to_path_buf())),
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "." then
    // detaches it without a directory for it inside the jail (pivot_root(2)).
    pivot_root(".", ".").map_err(|e| PivotError::PivotRoot(root.to_path_buf(), e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(PivotError::Detach)?;
    chdir("/").map_err(|e| PivotError::Chdir(PathBuf::from("/"), e))
}
