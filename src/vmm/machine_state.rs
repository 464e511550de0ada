//! What a snapshot's state file holds (the machine state), and how a paused VM is saved:
//! each vCPU's state captured on its own thread (after one KVM_RUN that completes a pending
//! exit), then the VM's in-kernel devices, then guest memory, then the authenticated state
//! file that binds the memory file's identity.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    BlockDeviceConfig, DriveList, EntropyConfig, MachineConfig, VsockDeviceConfig,
};
use crate::devices::serial::UartState;
use crate::devices::virtio::mmio::{MmioTransport, TransportState};
use crate::devices::virtio::net::snapshot::NetState;
use crate::snapshot::{FormatError, MemoryIdentity, SnapshotKey, StateFile};
use crate::vstate::snapshot::{
    prepare_full_memory, MemoryFileError, StateError, VcpuState, VmState,
};

use super::RunningVm;

/// How long the vCPU threads get to capture their state.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a state file restores.
#[derive(Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// The machine configuration the VM was built with, in its API (JSON) form: its serde
    /// attributes (optional fields) need a self-describing format, which postcard is not.
    pub machine_config: String,
    /// Bytes of guest memory (the memory file's size).
    pub mem_size: u64,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The VM's in-kernel devices and clock.
    pub vm: VmState,
    /// The serial port.
    pub serial: UartState,
    /// The virtio devices' configurations, in their API (JSON) form.
    pub device_configs: String,
    /// Each virtio transport, in slot order.
    pub transports: Vec<TransportState>,
    /// Each network interface (configuration, limiter levels, firewall state), in order.
    pub nets: Vec<NetState>,
}

/// The virtio devices a snapshot carries, as configured (JSON inside the state).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfigs {
    /// The drives, root first.
    pub drives: Vec<BlockDeviceConfig>,
    /// The entropy device.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device (its policy as patched); absent in state files of VMs without one.
    #[serde(default)]
    pub vsock: Option<VsockDeviceConfig>,
}

/// The virtio devices' configurations of a state file, each checked as its PUT would be.
pub struct CheckedDeviceConfigs {
    /// The drives, root first.
    pub drives: DriveList,
    /// The entropy device.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device.
    pub vsock: Option<VsockDeviceConfig>,
}

/// What `RunningVm::save` saves besides the vCPUs, the VM and memory.
pub struct SaveInput<'a> {
    /// The machine configuration.
    pub machine_config: &'a MachineConfig,
    /// The drives, as configured (and patched).
    pub drives: &'a DriveList,
    /// The entropy device.
    pub entropy: Option<&'a EntropyConfig>,
    /// The vsock device.
    pub vsock: Option<&'a VsockDeviceConfig>,
    /// The virtio transports, in slot order.
    pub transports: &'a [Arc<Mutex<MmioTransport>>],
    /// The network interfaces' states, in order.
    pub nets: &'a [NetState],
}

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// This host's KVM cannot snapshot.
    #[error("This host's KVM cannot take snapshots")]
    HostUnsupported,
    /// The vCPU threads did not capture in time.
    #[error("The vCPUs did not capture their state within {0:?}")]
    CaptureTimeout(Duration),
    /// A vCPU's state is missing (its thread ended).
    #[error("vCPU {0} did not capture its state")]
    MissingVcpu(u8),
    /// A vCPU or the VM state could not be read.
    #[error("Cannot capture the machine state")]
    Capture(#[source] StateError),
    /// The memory file could not be written.
    #[error("Cannot write the memory file")]
    Memory(#[source] MemoryFileError),
    /// The memory file's identity could not be taken.
    #[error("Cannot read back the memory file")]
    Identity(#[source] crate::snapshot::AuthError),
    /// The machine or device configuration could not be encoded.
    #[error("Cannot encode the machine configuration")]
    MachineConfig(#[source] serde_json::Error),
    /// The state file could not be encoded or written.
    #[error("Cannot write the state file")]
    StateFile(#[source] FormatError),
}

/// Why a state file's configurations are refused (each is checked as its PUT would be).
#[derive(Debug, thiserror::Error)]
pub enum RestoredConfigError {
    /// The embedded JSON does not parse.
    #[error("it does not parse")]
    Json(#[from] serde_json::Error),
    /// The machine configuration or a drive is refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The vsock device's configuration is refused.
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::config::VsockConfigError),
}

impl MachineState {
    /// The machine configuration, checked as a `PUT /machine-config` body would be.
    pub fn machine_config(&self) -> Result<MachineConfig, RestoredConfigError> {
        let config: MachineConfig = serde_json::from_str(&self.machine_config)?;
        config.validate(crate::config::host_memory_mib())?;
        Ok(config)
    }

    /// The virtio devices' configurations, each checked as its PUT would be.
    pub fn device_configs(&self) -> Result<CheckedDeviceConfigs, RestoredConfigError> {
        let configs: DeviceConfigs = serde_json::from_str(&self.device_configs)?;
        let mut drives = DriveList::default();
        for drive in configs.drives {
            drives.insert(drive)?;
        }
        if let Some(vsock) = &configs.vsock {
            vsock.validate()?;
        }
        Ok(CheckedDeviceConfigs {
            drives,
            entropy: configs.entropy,
            vsock: configs.vsock,
        })
    }
}

impl RunningVm {
    /// Saves the paused VM: state to `state_path` (tagged with `key`, else SHA-256), memory
    /// to `mem_path` (0600; its SHA-256 bound into the tag when `hash_memory`). The VM stays
    /// paused.
    pub fn save(
        &self,
        input: &SaveInput<'_>,
        state_path: &Path,
        mem_path: &Path,
        key: Option<&SnapshotKey>,
        hash_memory: bool,
    ) -> Result<(), SaveError> {
        if self.shared.host().is_none() {
            return Err(SaveError::HostUnsupported);
        }
        self.shared.take_captured();
        if !self.vcpus.serve_paused(CAPTURE_TIMEOUT) {
            return Err(SaveError::CaptureTimeout(CAPTURE_TIMEOUT));
        }
        let mut captured = self.shared.take_captured();
        let count = u8::try_from(self.vcpus.len()).map_err(|_| SaveError::MissingVcpu(u8::MAX))?;
        let vcpus = (0..count)
            .map(|index| match captured.remove(&index) {
                Some(state) => state.map_err(SaveError::Capture),
                None => Err(SaveError::MissingVcpu(index)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vm = VmState::capture(self._vm.fd()).map_err(SaveError::Capture)?;
        let transports = input
            .transports
            .iter()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).save())
            .collect();
        let device_configs = serde_json::to_string(&DeviceConfigs {
            drives: input.drives.iter().cloned().collect(),
            entropy: input.entropy.cloned(),
            vsock: input.vsock.cloned(),
        })
        .map_err(SaveError::MachineConfig)?;
        // Both files are written beside their targets and renamed over them only when both
        // are complete: a clone snapshotting over the files it was loaded from keeps its RAM
        // (mapped from the old memory file), and a failed create leaves the old pair as it was.
        let mem = self.shared.mem();
        let (mut new_mem, _) = prepare_full_memory(mem, mem_path).map_err(SaveError::Memory)?;
        let identity =
            MemoryIdentity::of_file(new_mem.file(), hash_memory).map_err(SaveError::Identity)?;
        let machine_config =
            serde_json::to_string(input.machine_config).map_err(SaveError::MachineConfig)?;
        let state = MachineState {
            machine_config,
            mem_size: identity.size,
            vcpus,
            vm,
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            device_configs,
            transports,
            nets: input.nets.to_vec(),
        };
        let bytes = StateFile::encode(&state, key, &identity).map_err(SaveError::StateFile)?;
        let new_state = StateFile::prepare(state_path, &bytes).map_err(SaveError::StateFile)?;
        new_mem
            .commit()
            .map_err(|e| SaveError::Memory(MemoryFileError::Io("replace", e)))?;
        new_state
            .commit()
            .map_err(|e| SaveError::StateFile(FormatError::Io("replace", e)))
    }
}
