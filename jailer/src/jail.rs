//! The steps in order, each named in the one-line error that stops the start.
//!
//! On the host: validate, fds, jail dir, cgroups (created), then the split (supervisor.rs).
//! In the child: rlimits, cgroups (joined), netns, namespaces, pivot_root, mknod, privileges,
//! landlock, seccomp, daemonize, exec.

use std::fs::File;
use std::path::PathBuf;

use crate::cgroups::{CgroupError, JailCgroups};
use crate::daemonize::DaemonizeError;
use crate::exec::ExecError;
use crate::fds::FdsError;
use crate::jail_dir::{JailDir, JailDirError};
use crate::landlock_layer::LandlockError;
use crate::mknod::MknodError;
use crate::namespaces::NamespaceError;
use crate::netns::NetnsError;
use crate::pivot::PivotError;
use crate::privileges::PrivilegeError;
use crate::rlimits::RlimitError;
use crate::seccomp_layer::SeccompError;
use crate::spec::JailSpec;
use crate::supervisor::{StatusWriter, SupervisorError};
use crate::validate::ValidateError;
use crate::{daemonize, exec, landlock_layer, mknod, namespaces, netns, pivot, privileges};
use crate::{rlimits, seccomp_layer};

/// A failed step: the variant's message is the step's name, its source the reason.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("validate")]
    Validate(#[from] ValidateError),
    #[error("fds")]
    Fds(#[from] FdsError),
    #[error("jail dir")]
    JailDir(#[from] JailDirError),
    #[error("cgroups")]
    Cgroups(#[from] CgroupError),
    #[error("supervisor")]
    Supervisor(#[from] SupervisorError),
    #[error("rlimits")]
    Rlimits(#[from] RlimitError),
    #[error("netns")]
    Netns(#[from] NetnsError),
    #[error("namespaces")]
    Namespaces(#[from] NamespaceError),
    #[error("pivot_root")]
    Pivot(#[from] PivotError),
    #[error("mknod")]
    Mknod(#[from] MknodError),
    #[error("privileges")]
    Privileges(#[from] PrivilegeError),
    #[error("landlock")]
    Landlock(#[from] LandlockError),
    #[error("seccomp")]
    Seccomp(#[from] SeccompError),
    #[error("daemonize")]
    Daemonize(#[from] DaemonizeError),
    #[error("exec")]
    Exec(#[from] ExecError),
}

/// What the host side prepared for the child.
pub struct Prepared<'a> {
    pub spec: &'a JailSpec,
    pub jail_dir: &'a JailDir,
    pub cgroups: &'a JailCgroups,
    /// Opened before the jail is entered, with `--daemonize`.
    pub dev_null: Option<&'a File>,
}

/// The child's steps. Returns only on failure (success is the exec).
pub fn confine_and_exec(p: &Prepared, status: &StatusWriter) -> JailerError {
    match confine(p, status) {
        Ok(()) => {
            let exec_file = PathBuf::from("/").join(&p.spec.exec_name);
            exec::exec(
                &exec_file,
                &p.spec.id,
                &p.spec.exec_args,
                p.jail_dir.lock_fd(),
            )
            .into()
        }
        Err(e) => e,
    }
}

fn confine(p: &Prepared, status: &StatusWriter) -> Result<(), JailerError> {
    let spec = p.spec;
    // The host's sysfs is out of sight once the jail is entered.
    let userfaultfd = mknod::host_userfaultfd();
    rlimits::apply(&spec.limits)?;
    p.cgroups.attach_self()?;
    if let Some(path) = &spec.netns {
        netns::join(path)?;
    }
    namespaces::unshare_all()?;
    pivot::enter_root(p.jail_dir.root(), p.jail_dir.root_identity())?;
    mknod::create_devices(spec.uid, spec.gid, userfaultfd)?;
    privileges::drop_all(spec.uid, spec.gid)?;
    if !spec.daemonize {
        status.tie_to_supervisor()?;
    }
    if let Some(rules) = &spec.landlock_rules {
        let exec_file = PathBuf::from("/").join(&spec.exec_name);
        let line = landlock_layer::apply(&exec_file, rules)?;
        eprintln!("palisade-jailer: {line}");
    }
    seccomp_layer::apply()?;
    if let Some(dev_null) = p.dev_null {
        daemonize::detach(dev_null)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sandbox::error_chain;

    #[test]
    fn errors_read_step_then_reason_on_one_line() {
        let e = JailerError::from(ValidateError::InvalidId("a/b".into()));
        assert_eq!(
            error_chain(&e),
            "validate: Invalid instance id \"a/b\": 1 to 64 characters of [A-Za-z0-9-]"
        );
        let io = std::io::Error::from_raw_os_error(libc::EINVAL);
        let e = JailerError::from(CgroupError::Write("/x/pids.max".into(), "y".into(), io));
        assert!(
            error_chain(&e)
                .starts_with("cgroups: Cannot write \"y\" to /x/pids.max: Invalid argument"),
            "{}",
            error_chain(&e)
        );
    }
}
