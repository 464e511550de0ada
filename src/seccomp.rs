//! Per-thread seccomp filters: `vmm`, `api` and `vcpu`, compiled from
//! seccomp-profiles/x86_64.json at build time (build.rs) and embedded. Each thread installs its
//! own filter before it touches untrusted input. A forbidden syscall kills the process
//! (SIGSYS); the kernel's audit log names the syscall (seccomp-profiles/README.md).

use std::collections::HashMap;
use std::fs::File;

use palisade_sandbox::seccomp_target::target_arch;
use seccompiler::BpfProgram;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// The kinds of threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM thread: event loop and devices.
    Vmm,
    /// The HTTP API thread.
    Api,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    /// Name of the filter in the profile.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

/// Errors of filter loading and installation.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The custom filter file cannot be read.
    #[error("Cannot open the seccomp filter file {path}: {source}")]
    Open {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The custom filter does not compile.
    #[error("Invalid seccomp filter file {path}: {message}")]
    Compile {
        /// Path given.
        path: String,
        /// seccompiler's message.
        message: String,
    },
    /// A thread kind has no filter in the set.
    #[error("The seccomp filter set has no filter for the {0} thread")]
    Missing(&'static str),
    /// Installing a filter failed.
    #[error("Cannot install the {kind} seccomp filter: {message}")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// seccompiler's message.
        message: String,
    },
}

/// The filter of every thread kind, or none at all (`--no-seccomp`).
#[derive(Clone, Debug)]
pub struct SeccompFilters {
    programs: Option<HashMap<String, BpfProgram>>,
}

impl SeccompFilters {
    /// The filters built into this binary.
    pub fn embedded() -> Self {
        let programs = EMBEDDED_FILTERS
            .iter()
            .map(|(name, insns)| {
                let program = insns
                    .iter()
                    .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                    .collect();
                (name.to_string(), program)
            })
            .collect();
        Self {
            programs: Some(programs),
        }
    }

    /// A filter set compiled from a seccompiler JSON file (`--seccomp-filter`).
    pub fn from_json_file(path: &str) -> Result<Self, SeccompError> {
        let file = File::open(path).map_err(|source| SeccompError::Open {
            path: path.to_string(),
            source,
        })?;
        let programs = seccompiler::compile_from_json(file, target_arch()).map_err(|e| {
            SeccompError::Compile {
                path: path.to_string(),
                message: e.to_string(),
            }
        })?;
        let set = Self {
            programs: Some(programs),
        };
        for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu] {
            set.program(kind)?;
        }
        Ok(set)
    }

    /// No filtering at all.
    pub fn disabled() -> Self {
        Self { programs: None }
    }

    fn program(&self, kind: ThreadKind) -> Result<Option<&BpfProgram>, SeccompError> {
        match &self.programs {
            None => Ok(None),
            Some(map) => map
                .get(kind.name())
                .map(Some)
                .ok_or(SeccompError::Missing(kind.name())),
        }
    }

    /// Installs the filter of `kind` on the calling thread (and sets no_new_privs).
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(program) = self.program(kind)? else {
            return Ok(());
        };
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
            kind: kind.name(),
            message: e.to_string(),
        })?;
        log::debug!("Seccomp filter of the {} thread installed", kind.name());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct syscalls each thread kind may make, from the profile.
    fn allowed_syscalls() -> HashMap<String, usize> {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../seccomp-profiles/x86_64.json")).unwrap();
        json.as_object()
            .unwrap()
            .iter()
            .map(|(kind, filter)| {
                let mut names: Vec<&str> = filter["filter"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|rule| rule["syscall"].as_str().unwrap())
                    .collect();
                names.sort();
                names.dedup();
                (kind.clone(), names.len())
            })
            .collect()
    }

    #[test]
    fn every_thread_kind_has_an_embedded_filter_that_kills_by_default() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../seccomp-profiles/x86_64.json")).unwrap();
        let set = SeccompFilters::embedded();
        for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu] {
            assert!(!set.program(kind).unwrap().unwrap().is_empty());
            assert_eq!(json[kind.name()]["default_action"], "kill_process");
        }
    }

    /// Growth of a profile is a deliberate change: update these numbers with it. Firecracker
    /// allows vmm 50, api 31, vcpu 27 on x86_64.
    #[test]
    fn allowed_syscall_counts_per_thread() {
        let counts = allowed_syscalls();
        assert_eq!(counts["vmm"], EXPECTED_VMM, "vmm");
        assert_eq!(counts["api"], EXPECTED_API, "api");
        assert_eq!(counts["vcpu"], EXPECTED_VCPU, "vcpu");
        assert!(counts["vmm"] < 50 && counts["api"] < 31 && counts["vcpu"] < 27);
    }

    // io_uring_enter, io_uring_register (FILES_UPDATE only): virtio-blk io_engine Async.
    // Not io_uring_setup: the drives' rings are made before the filter.
    const EXPECTED_VMM: usize = 42;
    const EXPECTED_API: usize = 18;
    // No io_uring_enter: a driver's reset of an Async drive orphans its requests in flight
    // without waiting (no syscall).
    const EXPECTED_VCPU: usize = 15;
}
