//! The validated command line: what the steps are asked to do.

use std::path::PathBuf;

/// Default soft and hard limit on open files (Firecracker's).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Cgroup version of the hierarchy the jail's cgroups are created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupProperty {
    pub file: String,
    pub value: String,
}

impl CgroupProperty {
    /// The controller a file belongs to: `pids` for `pids.max`.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// What the jail's cgroups should be.
#[derive(Debug, Clone)]
pub struct CgroupRequest {
    /// `None`: detected from the mounted hierarchies.
    pub version: Option<CgroupVersion>,
    pub parent: PathBuf,
    /// `--parent-cgroup` was given (cgroup v2 without properties then joins the parent).
    pub parent_given: bool,
    pub properties: Vec<CgroupProperty>,
}

/// Resource limits set with setrlimit before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    pub no_file: u64,
    pub fsize: Option<u64>,
}

/// One `--landlock-rule PATH:r|rw` (PATH as seen inside the jail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockRule {
    pub path: PathBuf,
    pub write: bool,
}

/// A validated command line.
#[derive(Debug, Clone)]
pub struct JailSpec {
    pub id: String,
    /// Canonical path of the exec file on the host.
    pub exec_file: PathBuf,
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    /// Canonical chroot base directory.
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: CgroupRequest,
    pub limits: ResourceLimits,
    /// `None` with `--no-landlock`.
    pub landlock_rules: Option<Vec<LandlockRule>>,
    pub exec_args: Vec<String>,
}
