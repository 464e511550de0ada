//! The VMM's own Landlock layer (layer 2; the jailer applies layer 1). At InstanceStart the
//! VMM knows every file it will need; it confines its thread, and so every vCPU thread it
//! starts later, to exactly those: the kernel and initrd (read), the drives (as configured),
//! /dev/kvm and /dev/net/tun. Files already open (API socket, log, metrics) stay usable.
//! TCP bind/connect are denied (ABI 4); abstract Unix sockets and signals are scoped (ABI 6).
//! Pathname Unix sockets are not a Landlock right up to ABI 7: the vsock device's
//! guest-initiated connects to `<uds_path>_<port>` work confined (tested below), and its
//! listener is bound before the layer applies, so vsock needs no rule here.
//! Best effort down the ABIs: an older kernel enforces what it has, and the log says which
//! (the ABI table and the log line are palisade-sandbox's, shared with the jailer).

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use palisade_sandbox::landlock_abi::{Enforcement, TARGET_ABI};

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
    /// A directory in which new files may be created, read and written (snapshot files).
    pub create: bool,
}

impl PathRule {
    /// Read-only access to `path`.
    pub fn read(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: false,
            create: false,
        }
    }

    /// Read-write access to `path`.
    pub fn read_write(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: true,
            create: false,
        }
    }

    /// A directory where files may be created, read, written, truncated and replaced by
    /// rename (beneath it, not the directory itself: no directories, links or devices).
    pub fn create_in(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            write: true,
            create: true,
        }
    }
}

/// Device nodes every VMM needs, when they exist.
const DEVICES: [&str; 2] = ["/dev/kvm", "/dev/net/tun"];

/// Confines the calling thread (and the threads it starts later) to `files` and the device
/// nodes; returns the line to log about what is enforced.
pub fn restrict_vmm(files: &[PathRule]) -> Result<String, SandboxError> {
    let read: BitFlags<AccessFs> = AccessFs::ReadFile.into();
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
    // RemoveFile: a snapshot's new files replace the old ones by rename (and a failed
    // create's leftovers are removed); no rights on the directory itself, no links, no devices.
    let create: BitFlags<AccessFs> =
        read_write | AccessFs::MakeReg | AccessFs::Truncate | AccessFs::RemoveFile;
    let configured = files.iter().map(|f| {
        let access = match (f.create, f.write) {
            (true, _) => create & AccessFs::from_all(TARGET_ABI),
            (false, true) => read_write & AccessFs::from_file(TARGET_ABI),
            (false, false) => read & AccessFs::from_file(TARGET_ABI),
        };
        (f.path.clone(), access)
    });
    let devices = devices.map(|(path, access)| (path, access & AccessFs::from_file(TARGET_ABI)));
    for (path, access) in devices.chain(configured) {
        let fd = PathFd::new(&path).map_err(|e| SandboxError::Path(path.clone(), e))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(describe(Enforcement::of(&status), files.len()))
}

/// "VMM Landlock ABI 7 enforced (kernel ABI 7): files: ..." or why nothing is enforced.
fn describe(enforcement: Enforcement, files: usize) -> String {
    enforcement.line(
        "VMM Landlock",
        &format!("files: {files} configured plus /dev/kvm and /dev/net/tun"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_enforced_and_the_kernel_abi() {
        // An ABI 7 kernel: this line once said "kernel ABI 6".
        let line = describe(Enforcement::Enforced { abi: 7, kernel: 7 }, 2);
        assert!(
            line.starts_with("VMM Landlock ABI 7 enforced (kernel ABI 7): files: 2 configured"),
            "{line}"
        );
        assert!(line.contains("signals scoped"), "{line}");
        let none = describe(Enforcement::NotImplemented, 0);
        assert!(none.contains("no Landlock"), "{none}");
    }

    #[test]
    fn a_confined_thread_still_connects_to_a_unix_socket_by_path_but_cannot_bind_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_52");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let other = dir.path().join("new.sock");
        let (connected, bound) = std::thread::spawn(move || {
            restrict_vmm(&[]).unwrap();
            (
                std::os::unix::net::UnixStream::connect(&path).is_ok(),
                std::os::unix::net::UnixListener::bind(&other).is_ok(),
            )
        })
        .join()
        .unwrap();
        assert!(
            connected,
            "vsock's guest-initiated connect needs no Landlock right"
        );
        let enforced = palisade_sandbox::landlock_abi::kernel_abi() >= 1;
        assert_eq!(
            bound, !enforced,
            "binding needs MAKE_SOCK: the listener is bound before the layer"
        );
        assert!(listener.accept().is_ok());
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
        let (line, a, b) = std::thread::spawn(move || {
            let line = restrict_vmm(&rules).unwrap();
            (
                line,
                std::fs::read(&allowed).is_ok(),
                std::fs::read(&other).is_ok(),
            )
        })
        .join()
        .unwrap();
        assert!(a, "the configured file is readable");
        assert!(!b, "another file is not");
        let kernel = palisade_sandbox::landlock_abi::kernel_abi();
        assert!(
            line.contains(&format!("(kernel ABI {kernel})")),
            "the line names this kernel's ABI {kernel}: {line}"
        );
    }
}
