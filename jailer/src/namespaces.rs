//! Step 6: new mount, IPC, UTS and cgroup namespaces. (The pid namespace of `--new-pid-ns` is
//! created by the supervisor when it forks the jailed process: a process cannot change its own
//! pid namespace.)

use nix::sched::{unshare, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("Cannot unshare mount, IPC, UTS and cgroup namespaces")]
    Unshare(#[source] nix::Error),
}

/// Unshares the namespaces. Runs after the cgroups were joined, so the new cgroup namespace
/// is rooted at the jail's cgroup.
pub fn unshare_all() -> Result<(), NamespaceError> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(NamespaceError::Unshare)
}
