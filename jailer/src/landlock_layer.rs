//! Step 10: the jailer's Landlock layer (layer 1 of 2; the VMM adds its own once it knows its
//! files). Applied inside the jail after the privilege drop, best effort down the ABIs:
//! - files: read/write beneath the jail's `/` (its whole world), but no execution except the
//!   exec file and its ELF interpreter, no device nodes made, ioctl only on /dev/kvm and
//!   /dev/net/tun (ABI 5), plus the `--landlock-rule` paths;
//! - network: TCP bind and connect denied (ABI 4);
//! - scopes: abstract Unix sockets and signals to processes outside the sandbox (ABI 6).

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, PathFdError,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

use crate::spec::LandlockRule;

/// The newest ABI whose rights this layer asks for (ABI 7 adds logging controls only).
const TARGET_ABI: ABI = ABI::V7;

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
    Ok(describe(status.ruleset, status.landlock))
}

/// "Landlock ABI 7 enforced (kernel ABI 7): ..." or why nothing is enforced.
fn describe(ruleset: RulesetStatus, landlock: LandlockStatus) -> String {
    let (effective, kernel) = match landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => (effective_abi, kernel_abi),
        LandlockStatus::NotEnabled => {
            return "warning: Landlock is not enabled on this kernel: not enforced".into()
        }
        LandlockStatus::NotImplemented => {
            return "warning: this kernel has no Landlock: not enforced".into()
        }
    };
    if ruleset == RulesetStatus::NotEnforced {
        return "warning: Landlock ruleset not enforced".into();
    }
    let abi = abi_number(effective.min(TARGET_ABI));
    let kernel = kernel.unwrap_or(abi_number(effective));
    let mut what = vec!["files only inside the jail"];
    if abi >= 4 {
        what.push("TCP bind and connect denied");
    }
    if abi >= 5 {
        what.push("device ioctls only on /dev/kvm and /dev/net/tun");
    }
    if abi >= 6 {
        what.push("abstract Unix sockets and signals scoped");
    }
    format!(
        "Landlock ABI {abi} enforced (kernel ABI {kernel}): {}",
        what.join(", ")
    )
}

fn abi_number(abi: ABI) -> i32 {
    match abi {
        ABI::Unsupported => 0,
        ABI::V1 => 1,
        ABI::V2 => 2,
        ABI::V3 => 3,
        ABI::V4 => 4,
        ABI::V5 => 5,
        ABI::V6 => 6,
        ABI::V7 => 7,
        ABI::V8 => 8,
        ABI::V9 => 9,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_enforced_abi_and_kernel_abi() {
        let line = describe(
            RulesetStatus::FullyEnforced,
            LandlockStatus::Available {
                effective_abi: ABI::V9,
                kernel_abi: None,
            },
        );
        assert!(
            line.starts_with("Landlock ABI 7 enforced (kernel ABI 9)"),
            "{line}"
        );
        assert!(line.contains("signals scoped"), "{line}");
        let old = describe(
            RulesetStatus::PartiallyEnforced,
            LandlockStatus::Available {
                effective_abi: ABI::V3,
                kernel_abi: None,
            },
        );
        assert!(
            old.starts_with("Landlock ABI 3 enforced (kernel ABI 3)"),
            "{old}"
        );
        assert!(!old.contains("TCP"), "{old}");
    }
}
