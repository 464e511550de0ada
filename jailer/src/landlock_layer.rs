//! Step 10: the jailer's Landlock layer (layer 1 of 2; the VMM adds its own once it knows its
//! files). Applied inside the jail after the privilege drop, best effort down the ABIs:
//! - files: read/write beneath the jail's `/` (its whole world), but no execution except the
//!   exec file and its ELF interpreter, no device nodes made, ioctl only on /dev/kvm,
//!   /dev/net/tun and /dev/userfaultfd (ABI 5; the last for Uffd snapshot loads), plus the
//!   `--landlock-rule` paths;
//! - network: TCP bind and connect denied (ABI 4);
//! - scopes: abstract Unix sockets and signals to processes outside the sandbox (ABI 6).
//!
//! The ABI table and the log line are palisade-sandbox's, shared with the VMM's layer.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, PathFdError, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope,
};
use palisade_sandbox::landlock_abi::{Enforcement, TARGET_ABI};

use crate::spec::LandlockRule;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Cannot build the ruleset")]
    Ruleset(#[source] RulesetError),
    #[error("Cannot open {0} for a rule")]
    Path(PathBuf, #[source] PathFdError),
}

/// Applies the ruleset; returns the line to log about what is enforced.
pub fn apply(exec_file: &Path, extra: &[LandlockRule]) -> Result<String, LandlockError> {
    let root = AccessFs::from_all(TARGET_ABI)
        & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let run = AccessFs::Execute | AccessFs::ReadFile;
    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, bool)> = vec![
        ("/".into(), root, true),
        (exec_file.to_path_buf(), run, true),
        ("/dev/kvm".into(), device, false),
        ("/dev/net/tun".into(), device, false),
        ("/dev/userfaultfd".into(), device, false),
        ("/dev/urandom".into(), AccessFs::ReadFile.into(), false),
    ];
    if let Some(interpreter) = crate::exec::interpreter(exec_file) {
        rules.push((interpreter, run, false));
    }
    for rule in extra {
        let access = if rule.write {
            root | AccessFs::IoctlDev
        } else {
            AccessFs::ReadFile | AccessFs::ReadDir
        };
        rules.push((rule.path.clone(), access, true));
    }

    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET_ABI)))
        .and_then(|r| r.scope(Scope::from_all(TARGET_ABI)))
        .and_then(|r| r.create())
        .map_err(LandlockError::Ruleset)?;
    for (path, access, required) in rules {
        if !required && std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let fd = PathFd::new(&path).map_err(|e| LandlockError::Path(path.clone(), e))?;
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(TARGET_ABI)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(LandlockError::Ruleset)?;
    }
    let status = ruleset.restrict_self().map_err(LandlockError::Ruleset)?;
    Ok(describe(Enforcement::of(&status)))
}

/// "Landlock ABI 7 enforced (kernel ABI 7): files only inside the jail, ..." or why nothing
/// is enforced.
fn describe(enforcement: Enforcement) -> String {
    enforcement.line("Landlock", "files only inside the jail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_enforced_abi_and_kernel_abi() {
        let line = describe(Enforcement::Enforced { abi: 7, kernel: 9 });
        assert_eq!(
            line,
            "Landlock ABI 7 enforced (kernel ABI 9): files only inside the jail, TCP bind and \
             connect denied, device ioctls only on /dev/kvm and /dev/net/tun, abstract Unix \
             sockets and signals scoped"
        );
        let old = describe(Enforcement::Enforced { abi: 3, kernel: 3 });
        assert_eq!(
            old,
            "Landlock ABI 3 enforced (kernel ABI 3): files only inside the jail"
        );
    }
}
