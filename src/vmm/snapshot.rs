//! The snapshot API (issue 14): Firecracker's `PUT /snapshot/create` and `PUT /snapshot/load`
//! bodies, checked as hostile client input, and the typed reasons a snapshot request is
//! refused. What may run when (create only on a paused VM, load only on a fresh VMM) is
//! ruled in `controller::rules`; the state file format and its authentication live in
//! `crate::snapshot`, the KVM state in `crate::vstate::snapshot`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest path accepted in a snapshot request (Linux's PATH_MAX).
const MAX_PATH_LEN: usize = 4096;

/// `snapshot_type` of `PUT /snapshot/create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// Every page of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the state file is written.
    pub snapshot_path: PathBuf,
    /// Where guest memory is written.
    pub mem_file_path: PathBuf,
    /// Firecracker's removed `version` field: accepted only when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Palisade extension: also bind the memory file's SHA-256 into the state file's tag, so
    /// that a load refuses a memory file of the right size with other contents (costs a read
    /// of the whole file at create and at load).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hash_memory: bool,
}

/// `backend_type` of a memory backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// The memory file, mapped private.
    File,
    /// Anonymous memory whose page faults an external handler serves (userfaultfd, handed
    /// over the Unix socket `backend_path` in Firecracker's protocol).
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file (File) or the handler's socket (Uffd).
    pub backend_path: PathBuf,
}

/// One entry of `network_overrides`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface in the snapshot.
    pub iface_id: String,
    /// The tap it gets in the clone.
    pub host_dev_name: String,
}

/// `vsock_override` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The clone's Unix socket.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` body as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSnapshotBody {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated form of `mem_backend` {File, path}.
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// Track dirty pages after the load (so Diff snapshots can follow).
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// New taps for the clone's interfaces.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// A new socket for the clone's vsock device.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall time that passed since the snapshot.
    #[serde(default)]
    pub clock_realtime: bool,
}

/// `PUT /snapshot/load`, normalised: the deprecated spellings folded into the current ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSnapshotParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from: the memory file (File) or the page fault handler's
    /// socket (Uffd).
    pub mem_backend: MemBackend,
    /// Track dirty pages after the load.
    pub track_dirty_pages: bool,
    /// Resume the VM once loaded.
    pub resume_vm: bool,
    /// Advance kvmclock by the wall time that passed since the snapshot.
    pub clock_realtime: bool,
    /// `vsock_override`: the clone's vsock socket (checked as `PUT /vsock` checks it when
    /// the device is created).
    pub vsock_uds_path: Option<String>,
    /// `network_overrides`: new taps for the clone's interfaces (each name checked as
    /// `PUT /network-interfaces` checks it, when the interface is restored).
    pub network_overrides: Vec<NetworkOverride>,
}

/// Why a snapshot request is refused. [`SnapshotError::status`] is the one place these
/// become an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A path is empty, too long or holds a NUL byte.
    #[error("Invalid {field}: a path of 1 to {MAX_PATH_LEN} bytes without NUL is needed")]
    BadPath {
        /// The field.
        field: &'static str,
    },
    /// Firecracker's removed `version` field.
    #[error("The 'version' field is no longer supported: snapshots are always written in the current format")]
    VersionField,
    /// Neither or both of `mem_backend` and `mem_file_path`.
    #[error("Exactly one of 'mem_backend' and the deprecated 'mem_file_path' must be given")]
    MemBackendChoice,
    /// Both `track_dirty_pages` and `enable_diff_snapshots`.
    #[error(
        "Only one of 'track_dirty_pages' and the deprecated 'enable_diff_snapshots' may be given"
    )]
    DirtyTrackingChoice,
    /// The Uffd memory backend for a state file that binds its memory's SHA-256: the handler
    /// serves the memory, so the VMM cannot check it.
    #[error("This snapshot was created with hash_memory: its memory's SHA-256 cannot be checked when a Uffd handler serves the memory; load it with backend_type File")]
    UffdWithMemoryHash,
    /// `network_overrides` names an interface the snapshot does not have (Firecracker's
    /// "Unknown Network Device").
    #[error("Failed to get snapshot state from file: Unknown Network Device: network_overrides names iface_id '{0}', which the snapshot does not have")]
    UnknownNetworkDevice(String),
    /// A network interface of the state file is refused, or its tap cannot be opened.
    #[error("Cannot restore a network interface")]
    Net(#[source] Box<crate::devices::virtio::net::snapshot::NetStateError>),
    /// The state file names one interface twice.
    #[error("The snapshot state file holds network interface '{0}' twice")]
    DuplicateInterface(String),
    /// A network interface of the running VM has no device (a bug).
    #[error("Internal VMM error: network interface '{0}' has no device")]
    MissingNetDevice(String),
    /// The state file's network interfaces conflict (more than allowed, one tap or MAC twice).
    #[error("The snapshot's network interfaces are refused")]
    NetConfig(#[source] Box<crate::devices::virtio::net::config::NetConfigError>),
    /// `vsock_override` for a snapshot without a vsock device.
    #[error("vsock_override was given but the snapshot has no vsock device")]
    VsockOverrideWithoutDevice,
    /// The restored vsock device cannot be created (its configuration or its socket).
    #[error("Cannot restore the vsock device")]
    Vsock(#[source] crate::devices::virtio::vsock::VsockError),
    /// A Diff snapshot of a VM without dirty page tracking (Firecracker's message).
    #[error("The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")]
    DiffWithoutTracking,
    /// An Async drive's requests outlived the wait before a create.
    #[error("Drive {0}: requests still in flight after the wait; no snapshot was written")]
    DriveBusy(String),
    /// Create on a VM that is not paused.
    #[error("Cannot create a snapshot of a microVM that is not paused: pause it first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
    /// Load after something else was configured.
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadNotAllowed,
    /// The state file is unreadable, malformed, tampered with, keyed with another key, or
    /// does not match the memory file.
    #[error("The snapshot state file is refused")]
    StateFile(#[source] crate::snapshot::FormatError),
    /// The memory file cannot be opened.
    #[error("Cannot open the snapshot memory file")]
    MemoryFile(#[source] std::io::Error),
    /// The memory file is being written by another VM's Diff.
    #[error("Cannot lock the snapshot memory file")]
    MemoryFileLock(#[source] crate::vstate::snapshot::MemoryFileError),
    /// The state file's parts disagree (memory size, vCPU count).
    #[error("The snapshot state file is inconsistent: its memory size or vCPU count disagrees with its machine configuration")]
    Inconsistent,
    /// The state file's machine configuration is refused.
    #[error("The snapshot's machine configuration is refused")]
    MachineConfig(#[source] crate::vmm::machine_state::RestoredConfigError),
    /// The state file's i8042, rate limiter or generation state is refused.
    #[error("The snapshot's device state is refused")]
    CloneState(#[source] crate::vmm::clone_state::CloneStateError),
    /// Saving the paused VM failed.
    #[error("Cannot create the snapshot")]
    Save(#[source] crate::vmm::machine_state::SaveError),
    /// Building the VM from the snapshot failed.
    #[error("Cannot restore the snapshot")]
    Restore(#[source] crate::vmm::builder::BuildError),
    /// The Landlock layer could not be applied to the restored VM.
    #[error("Cannot confine the restored microVM")]
    Landlock(#[source] crate::sandbox::SandboxError),
    /// The restored VM's MMDS responders could not be set up.
    #[error("Cannot restore MMDS")]
    Mmds(#[source] crate::vmm::controller::MmdsStartError),
    /// The restored VM could not start.
    #[error("Cannot start the restored microVM")]
    Start(#[source] Box<crate::vmm::RunError>),
    /// A snapshot feature this build does not have yet.
    #[error("Snapshot {0} is not supported yet by this build of Palisade")]
    NotImplemented(&'static str),
}

impl SnapshotError {
    /// The HTTP status of this refusal: every one is the client's to fix (400), as
    /// Firecracker answers.
    pub fn status(&self) -> u16 {
        400
    }
}

/// Checks a path from the client.
fn check_path(field: &'static str, path: &std::path::Path) -> Result<(), SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH_LEN || bytes.contains(&0) {
        return Err(SnapshotError::BadPath { field });
    }
    Ok(())
}

impl CreateSnapshotParams {
    /// Refuses what cannot be honoured before the VMM thread sees it.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.version.is_some() {
            return Err(SnapshotError::VersionField);
        }
        check_path("snapshot_path", &self.snapshot_path)?;
        check_path("mem_file_path", &self.mem_file_path)
    }
}

impl LoadSnapshotBody {
    /// The request, normalised, or why it cannot be honoured.
    pub fn into_params(self) -> Result<LoadSnapshotParams, SnapshotError> {
        check_path("snapshot_path", &self.snapshot_path)?;
        let mem_backend = match (self.mem_backend, self.mem_file_path) {
            (Some(backend), None) => backend,
            (None, Some(path)) => MemBackend {
                backend_type: MemBackendType::File,
                backend_path: path,
            },
            _ => return Err(SnapshotError::MemBackendChoice),
        };
        check_path("mem_backend.backend_path", &mem_backend.backend_path)?;
        let track_dirty_pages = match (self.track_dirty_pages, self.enable_diff_snapshots) {
            (Some(_), Some(_)) => return Err(SnapshotError::DirtyTrackingChoice),
            (Some(track), None) | (None, Some(track)) => track,
            (None, None) => false,
        };
        let vsock_uds_path = match self.vsock_override {
            Some(o) => {
                check_path("vsock_override.uds_path", &o.uds_path)?;
                let path = o.uds_path.into_os_string().into_string();
                Some(path.map_err(|_| SnapshotError::BadPath {
                    field: "vsock_override.uds_path",
                })?)
            }
            None => None,
        };
        Ok(LoadSnapshotParams {
            snapshot_path: self.snapshot_path,
            mem_backend,
            track_dirty_pages,
            resume_vm: self.resume_vm,
            clock_realtime: self.clock_realtime,
            vsock_uds_path,
            network_overrides: self.network_overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn load(body: serde_json::Value) -> Result<LoadSnapshotParams, SnapshotError> {
        serde_json::from_value::<LoadSnapshotBody>(body)
            .unwrap()
            .into_params()
    }

    #[test]
    fn create_defaults_to_full_and_refuses_bad_paths_and_the_removed_version() {
        let p: CreateSnapshotParams =
            serde_json::from_value(json!({"snapshot_path": "/s", "mem_file_path": "/m"})).unwrap();
        assert_eq!(p.snapshot_type, SnapshotType::Full);
        p.validate().unwrap();
        let p: CreateSnapshotParams = serde_json::from_value(
            json!({"snapshot_path": "", "mem_file_path": "/m", "snapshot_type": "Diff"}),
        )
        .unwrap();
        assert!(matches!(p.validate(), Err(SnapshotError::BadPath { .. })));
        let p: CreateSnapshotParams = serde_json::from_value(
            json!({"snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0.0"}),
        )
        .unwrap();
        assert!(matches!(p.validate(), Err(SnapshotError::VersionField)));
        let long = "a".repeat(MAX_PATH_LEN + 1);
        let p: CreateSnapshotParams =
            serde_json::from_value(json!({"snapshot_path": "/s", "mem_file_path": long})).unwrap();
        assert!(matches!(p.validate(), Err(SnapshotError::BadPath { .. })));
    }

    #[test]
    fn load_takes_mem_backend_or_the_deprecated_mem_file_path_but_not_both() {
        let a = load(json!({"snapshot_path": "/s",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"},
            "enable_diff_snapshots": true, "resume_vm": true}))
        .unwrap();
        let b = load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
            "track_dirty_pages": true, "resume_vm": true}))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.mem_backend.backend_path, PathBuf::from("/m"));
        assert_eq!(a.mem_backend.backend_type, MemBackendType::File);
        assert!(a.track_dirty_pages && a.resume_vm);
        assert!(matches!(
            load(json!({"snapshot_path": "/s"})),
            Err(SnapshotError::MemBackendChoice)
        ));
        assert!(matches!(
            load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
                "mem_backend": {"backend_type": "File", "backend_path": "/m"}})),
            Err(SnapshotError::MemBackendChoice)
        ));
        assert!(matches!(
            load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
                "track_dirty_pages": true, "enable_diff_snapshots": false})),
            Err(SnapshotError::DirtyTrackingChoice)
        ));
    }

    #[test]
    fn load_takes_uffd_and_network_and_vsock_overrides() {
        let p = load(json!({"snapshot_path": "/s",
            "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}}))
        .unwrap();
        assert_eq!(p.mem_backend.backend_type, MemBackendType::Uffd);
        assert_eq!(p.mem_backend.backend_path, PathBuf::from("/uffd.sock"));
        let e = load(json!({"snapshot_path": "/s",
            "mem_backend": {"backend_type": "Uffd", "backend_path": ""}}))
        .unwrap_err();
        assert!(matches!(e, SnapshotError::BadPath { .. }), "{e}");
        assert_eq!(e.status(), 400);
        let p = load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}))
        .unwrap();
        assert_eq!(
            p.network_overrides,
            vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap1".into()
            }]
        );
        assert!(
            serde_json::from_value::<LoadSnapshotBody>(json!({"snapshot_path": "/s",
            "mem_file_path": "/m", "network_overrides": [{"iface_id": "eth0"}]}))
            .is_err()
        );
        let p = load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
            "vsock_override": {"uds_path": "/v.sock"}}))
        .unwrap();
        assert_eq!(p.vsock_uds_path.as_deref(), Some("/v.sock"));
        let e = load(json!({"snapshot_path": "/s", "mem_file_path": "/m",
            "vsock_override": {"uds_path": ""}}))
        .unwrap_err();
        assert!(matches!(e, SnapshotError::BadPath { .. }), "{e}");
    }
}
