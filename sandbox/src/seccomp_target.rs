//! The seccompiler target of this build, for every filter either binary compiles.

use seccompiler::TargetArch;

/// The architecture this binary runs on, as seccompiler names it.
pub fn target_arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}
