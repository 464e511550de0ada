//! Step 11: the jailer's own seccomp layer, installed just before exec and inherited by the
//! VMM (whose per-thread filters stack on top). It forbids creating or joining namespaces: a
//! new user namespace would hand the process a full set of capabilities again, and a new
//! network namespace would take it out of the one it was given.
//!
//! - `unshare` and `clone` with any CLONE_NEW* flag: EPERM;
//! - `setns`: EPERM;
//! - `clone3`: ENOSYS, since its flags sit in memory a filter cannot read (libc then falls back
//!   to `clone`, which the rules above check).

use std::collections::BTreeMap;

use palisade_sandbox::seccomp_target::target_arch;
use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("Cannot install the filter")]
    Install(#[source] seccompiler::Error),
}

/// Every namespace flag; CLONE_NEWTIME shares its bit with the exit signal of `clone`, so it
/// is only checked for `unshare`.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];
const CLONE_NEWTIME: libc::c_int = 0x80;

/// Installs both filters on the calling thread.
pub fn apply() -> Result<(), SeccompError> {
    for program in [namespace_filter()?, clone3_filter()?] {
        apply_filter(&program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// One rule per flag: `(arg0 & flag) == flag`.
fn flag_rules(flags: &[libc::c_int]) -> Result<Vec<SeccompRule>, SeccompError> {
    flags
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<_, _>>()
        .map_err(SeccompError::Build)
}

fn namespace_filter() -> Result<BpfProgram, SeccompError> {
    let mut unshare_flags = NAMESPACE_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [
        (libc::SYS_unshare, flag_rules(&unshare_flags)?),
        (libc::SYS_clone, flag_rules(&NAMESPACE_FLAGS)?),
        (libc::SYS_setns, Vec::new()),
    ]
    .into_iter()
    .collect();
    compile(rules, libc::EPERM)
}

fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    compile(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        libc::ENOSYS,
    )
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch(),
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        assert!(!namespace_filter().unwrap().is_empty());
        assert!(!clone3_filter().unwrap().is_empty());
    }
}
