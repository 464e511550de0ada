//! The VMM's own Landlock layer (layer 2; the jailer applies layer 1). At InstanceStart the
//! VMM knows every file it will need; it confines its thread, and so every vCPU thread it
//! starts later, to exactly those: the kernel and initrd (read), the drives (as configured),
//! /dev/kvm and /dev/net/tun. Files already open (API socket, log, metrics) stay usable.
//! TCP bind/connect are denied (ABI 4); abstract Unix sockets and signals are scoped (ABI 6).
//! Best effort down the ABIs: an older kernel enforces what it has, and the log says which.

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The newest ABI whose rights this layer asks for.
const TARGET_ABI: ABI = ABI::V6;

/// Errors of the Landlock layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The ruleset could not be built or applied.
    #[error("Cannot apply the VMM's Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// A file named by the configuration cannot be opened for its rule.
    #[error("Cannot open {0} for its Landlock rule: {1}")]
    Path(PathBuf, landlock::PathFdError),
}

/// Access to one file the VMM needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// The file.
    pub path: PathBuf,
    /// Read-write (else read-only).
    pub write: bool,
}

impl PathRule {
    /// Read-only access to `path`.
    pub fn read(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: false,
        }
    }

    /// Read-write access to `path`.
    pub fn read_write(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: true,
        }
    }
}

/// Device nodes every VMM needs, when they exist.
const DEVICES: [&str; 2] = ["/dev/kvm", "/dev/net/tun"];

/// Confines the calling thread (and the threads it starts later) to `files` and the device
/// nodes; returns the line to log about what is enforced.
pub fn restrict_vmm(files: &[PathRule]) -> Result<String, SandboxError> {
    let read = AccessFs::ReadFile.into();
    let read_write: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile;
    let device = read_write | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?;
    let devices = DEVICES
        .iter()
        .filter(|d| std::path::Path::new(d).exists())
        .map(|d| (PathBuf::from(d), device));
    let configured = files
        .iter()
        .map(|f| (f.path.clone(), if f.write { read_write } else { read }));
    for (path, access) in devices.chain(configured) {
        let fd = PathFd::new(&path).map_err(|e| SandboxError::Path(path.clone(), e))?;
        ruleset = ruleset.add_rule(PathBeneath::new(
            fd,
            access & AccessFs::from_file(TARGET_ABI),
        ))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(describe(status.ruleset, status.landlock, files.len()))
}

fn describe(ruleset: RulesetStatus, landlock: LandlockStatus, files: usize) -> String {
    let (effective, kernel) = match landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => (effective_abi, kernel_abi),
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => {
            return "Landlock is not available on this kernel: the VMM's layer is not enforced"
                .into()
        }
    };
    if ruleset == RulesetStatus::NotEnforced {
        return "The VMM's Landlock ruleset is not enforced".into();
    }
    let abi = abi_number(effective.min(TARGET_ABI));
    let kernel = kernel.unwrap_or(abi);
    let mut what = vec![format!(
        "files: {files} configured plus /dev/kvm and /dev/net/tun"
    )];
    if abi >= 4 {
        what.push("TCP bind and connect denied".into());
    }
    if abi >= 6 {
        what.push("abstract Unix sockets and signals scoped".into());
    }
    format!(
        "VMM Landlock ABI {abi} enforced (kernel ABI {kernel}): {}",
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
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_abi() {
        let line = describe(
            RulesetStatus::FullyEnforced,
            LandlockStatus::Available {
                effective_abi: ABI::V7,
                kernel_abi: None,
            },
            2,
        );
        assert!(
            line.starts_with("VMM Landlock ABI 6 enforced (kernel ABI 6)"),
            "{line}"
        );
        assert!(line.contains("2 configured"));
        let none = describe(
            RulesetStatus::NotEnforced,
            LandlockStatus::NotImplemented,
            0,
        );
        assert!(none.contains("not available"));
    }

    #[test]
    fn a_confined_thread_reads_only_what_its_rules_name() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("kernel");
        let other = dir.path().join("other");
        std::fs::write(&allowed, b"k").unwrap();
        std::fs::write(&other, b"o").unwrap();
        let rules = vec![PathRule::read(&allowed)];
        // A thread of its own: Landlock confines the calling thread only.
        let (a, b) = std::thread::spawn(move || {
            restrict_vmm(&rules).unwrap();
            (
                std::fs::read(&allowed).is_ok(),
                std::fs::read(&other).is_ok(),
            )
        })
        .join()
        .unwrap();
        assert!(a, "the configured file is readable");
        assert!(!b, "another file is not");
    }
}
