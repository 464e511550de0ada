//! What a snapshot's state file holds (the machine state), and how a paused VM is saved:
//! each vCPU's state captured on its own thread (after one KVM_RUN that completes a pending
//! exit), then the VM's in-kernel devices, then guest memory (every page, or for a Diff the
//! pages written since the last snapshot), then the authenticated state file that binds the
//! memory file's identity.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    BlockDeviceConfig, DriveList, EntropyConfig, MachineConfig, VsockDeviceConfig,
};
use crate::devices::generation_id::GenerationState;
use crate::devices::i8042::I8042State;
use crate::devices::serial::UartState;
use crate::devices::virtio::balloon::{BalloonConfig, BalloonError, BalloonState};
use crate::devices::virtio::mmio::{MmioTransport, TransportState};
use crate::devices::virtio::net::snapshot::NetState;
use crate::mmds::{MmdsConfig, MmdsConfigError};
use crate::snapshot::{
    commit_pair, FormatError, MemoryIdentity, Replacement, SnapshotKey, StateFile,
};
use crate::vstate::dirty::{self, DirtyError, DirtyLog};
use crate::vstate::memory::GuestMemory;
use crate::vstate::snapshot::{
    prepare_full_memory, write_diff_memory, MemoryFileError, MemoryWritten, StateError, VcpuState,
    VmState,
};

use super::clone_state::LimiterStates;
use super::restored_paths::Confinement;
use super::snapshot::{CreateSnapshotParams, SnapshotType};
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
    /// The i8042 controller.
    pub i8042: I8042State,
    /// The rate limiters' remaining budgets.
    pub limiters: LimiterStates,
    /// The generation the guest saw (a restore shows it a new one).
    pub generation: GenerationState,
    /// Each network interface (configuration, limiter levels, firewall state), in order.
    pub nets: Vec<NetState>,
    /// The balloon's run-time state (its configuration is in `device_configs`).
    pub balloon: Option<BalloonState>,
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
    /// The MMDS configuration as validated (`mmds-config`), never the data store; absent in
    /// state files of VMs without MMDS and in those of builds before MMDS (JSON, so fields
    /// added later with serde defaults stay readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmds: Option<MmdsConfig>,
    /// The balloon device, as `GET /balloon` answers it (absent without a balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
}

/// The virtio devices' configurations of a state file, each checked as its PUT would be.
pub struct CheckedDeviceConfigs {
    /// The drives, root first.
    pub drives: DriveList,
    /// The entropy device.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device.
    pub vsock: Option<VsockDeviceConfig>,
    /// The MMDS configuration, checked as `PUT /mmds/config` checks it against the state
    /// file's network interfaces.
    pub mmds: Option<MmdsConfig>,
    /// The balloon (its target is the caller's to check against the machine's memory), with
    /// its run-time state.
    pub balloon: Option<(BalloonConfig, BalloonState)>,
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
    /// The MMDS configuration (the data store is never saved).
    pub mmds: Option<&'a MmdsConfig>,
    /// The balloon's configuration in force and its run-time state.
    pub balloon: Option<(BalloonConfig, BalloonState)>,
    /// The virtio transports, in slot order.
    pub transports: &'a [Arc<Mutex<MmioTransport>>],
    /// The rate limiters' remaining budgets.
    pub limiters: LimiterStates,
    /// The network interfaces' states, in order.
    pub nets: &'a [NetState],
    /// The memory file this VM's RAM is mapped from (File backend load), read-locked: a Diff
    /// may write into it, not into a file other VMs map.
    pub loaded_memory: Option<&'a File>,
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
    /// The pages written since the last snapshot could not be read.
    #[error("Cannot read the dirty page log")]
    DirtyLog(#[source] DirtyError),
    /// A Diff of guest memory that is not tracked for dirty pages.
    #[error("Guest memory is not tracked for dirty pages: a Diff snapshot cannot be taken")]
    NotTracked,
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
    /// A host path of an unkeyed state file lies outside the snapshot directories.
    #[error(transparent)]
    Path(#[from] super::restored_paths::RestoredPathError),
    /// The MMDS configuration is refused (as `PUT /mmds/config` refuses it).
    #[error("Its mmds-config is refused")]
    Mmds(#[source] MmdsConfigError),
    /// The balloon's configuration is refused (as `PUT /balloon` refuses it), or its state
    /// and its configuration are not both present.
    #[error("Its balloon is refused")]
    Balloon(#[source] crate::devices::virtio::balloon::BalloonError),
}

impl MachineState {
    /// The machine configuration, checked as a `PUT /machine-config` body would be.
    pub fn machine_config(&self) -> Result<MachineConfig, RestoredConfigError> {
        let config: MachineConfig = serde_json::from_str(&self.machine_config)?;
        config.validate(crate::config::host_memory_mib())?;
        Ok(config)
    }

    /// The virtio devices' configurations, each checked as its PUT would be. With
    /// `confine` (an unkeyed state file) each drive's file must resolve beneath a snapshot
    /// directory, and is named by its resolved path, before anything opens it; the vsock
    /// socket's path is the caller's to confine (a `vsock_override` replaces it).
    pub fn device_configs(
        &self,
        confine: Option<&Confinement>,
    ) -> Result<CheckedDeviceConfigs, RestoredConfigError> {
        let configs: DeviceConfigs = serde_json::from_str(&self.device_configs)?;
        let mut drives = DriveList::default();
        for mut drive in configs.drives {
            if let Some(confine) = confine {
                drive.path_on_host = confine.file("a drive file", &drive.path_on_host)?;
            }
            drives.insert(drive)?;
        }
        if let Some(vsock) = &configs.vsock {
            vsock.validate()?;
        }
        let mmds = configs
            .mmds
            .map(|mmds| checked_mmds(mmds, &self.nets))
            .transpose()?;
        let balloon = paired_balloon(configs.balloon, self.balloon.as_ref())?;
        Ok(CheckedDeviceConfigs {
            drives,
            entropy: configs.entropy,
            vsock: configs.vsock,
            mmds,
            balloon,
        })
    }

    /// The MMDS configuration recorded in the state, unchecked (`--describe-snapshot`).
    pub fn recorded_mmds(&self) -> Result<Option<MmdsConfig>, RestoredConfigError> {
        let configs: DeviceConfigs = serde_json::from_str(&self.device_configs)?;
        Ok(configs.mmds)
    }
}

/// The balloon's configuration with its run-time state: both or neither.
fn paired_balloon(
    config: Option<BalloonConfig>,
    state: Option<&BalloonState>,
) -> Result<Option<(BalloonConfig, BalloonState)>, RestoredConfigError> {
    match (config, state) {
        (Some(config), Some(state)) => Ok(Some((config, state.clone()))),
        (None, None) => Ok(None),
        _ => Err(RestoredConfigError::Balloon(BalloonError::NotFound)),
    }
}

/// `mmds` checked as `PUT /mmds/config` checks it (link-local address, a non-empty list of
/// interfaces), every interface one of `nets` (`network_overrides` keep the `iface_id`s).
/// Each interface is kept once: a state file may repeat a name far more often than a PUT
/// body can, and each name costs a responder at load.
fn checked_mmds(mmds: MmdsConfig, nets: &[NetState]) -> Result<MmdsConfig, RestoredConfigError> {
    // An interface whose configuration does not parse is refused by its own restore.
    let ids: Vec<String> = nets
        .iter()
        .filter_map(|net| net.config().ok().map(|c| c.iface_id))
        .collect();
    let mut mmds = mmds
        .validated(|id| ids.iter().any(|i| i == id))
        .map_err(RestoredConfigError::Mmds)?;
    let mut seen = std::collections::BTreeSet::new();
    mmds.network_interfaces.retain(|id| seen.insert(id.clone()));
    Ok(mmds)
}

impl RunningVm {
    /// Saves the paused VM as `params` say: state to `snapshot_path` (tagged with `key`, else
    /// SHA-256), memory to `mem_file_path` (0600; a Full replaces the file whole, a Diff
    /// writes the pages written since the last snapshot into it in place; the resulting
    /// file's SHA-256 is bound into the tag when `hash_memory`). With dirty page tracking the
    /// log is cleared by a successful save, and kept whole by a failed one. The VM stays
    /// paused.
    pub fn save(
        &self,
        input: &SaveInput<'_>,
        params: &CreateSnapshotParams,
        key: Option<&SnapshotKey>,
    ) -> Result<MemoryWritten, SaveError> {
        if self.shared.host().is_none() {
            return Err(SaveError::HostUnsupported);
        }
        let state = self.capture(input)?;
        let mem = self.shared.mem();
        // The VM is paused and devices run on this thread: nothing writes guest memory
        // between taking the log and writing the files.
        let log = if dirty::is_tracking(mem) {
            Some(DirtyLog::take(self._vm.fd(), mem).map_err(SaveError::DirtyLog)?)
        } else {
            None
        };
        let saved = write_files(state, mem, log.as_ref(), input.loaded_memory, params, key);
        if let (Err(_), Some(log)) = (&saved, &log) {
            log.give_back(mem);
        }
        saved
    }

    /// The machine state but the memory size (filled in by `write_files`).
    fn capture(&self, input: &SaveInput<'_>) -> Result<MachineState, SaveError> {
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
            mmds: input.mmds.cloned(),
            balloon: input.balloon.as_ref().map(|(config, _)| config.clone()),
        })
        .map_err(SaveError::MachineConfig)?;
        let machine_config =
            serde_json::to_string(input.machine_config).map_err(SaveError::MachineConfig)?;
        Ok(MachineState {
            machine_config,
            mem_size: 0,
            vcpus,
            vm,
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            device_configs,
            transports,
            i8042: self.i8042.lock().unwrap_or_else(|e| e.into_inner()).state(),
            limiters: input.limiters.clone(),
            generation: self.generation,
            nets: input.nets.to_vec(),
            balloon: input.balloon.as_ref().map(|(_, state)| state.clone()),
        })
    }
}

/// Writes guest memory, then the state file that binds its identity.
fn write_files(
    mut state: MachineState,
    mem: &GuestMemory,
    log: Option<&DirtyLog>,
    loaded_memory: Option<&File>,
    params: &CreateSnapshotParams,
    key: Option<&SnapshotKey>,
) -> Result<MemoryWritten, SaveError> {
    let (state_path, mem_path) = (&params.snapshot_path, &params.mem_file_path);
    match params.snapshot_type {
        SnapshotType::Full => {
            // Both files are written beside their targets and put in place only when both
            // are complete: a clone snapshotting over the files it was loaded from keeps its
            // RAM (mapped from the old memory file). The pair changes together: if the state
            // file cannot replace its target, the old memory file is put back, so a failed
            // create leaves the old pair as it was (and loadable).
            let (mut new_mem, written) =
                prepare_full_memory(mem, mem_path).map_err(SaveError::Memory)?;
            let identity = MemoryIdentity::of_file(new_mem.file(), params.hash_memory)
                .map_err(SaveError::Identity)?;
            state.mem_size = identity.size;
            let new_state = prepare_state(&state, key, &identity, state_path)?;
            commit_pair(new_mem, new_state)
                .map_err(|e| SaveError::StateFile(FormatError::Io("replace", e)))?;
            Ok(written)
        }
        SnapshotType::Diff => {
            // In place, as Firecracker writes it: the file at the path is the base it brings
            // up to date (or a new sparse file). The identity is the resulting file's.
            let log = log.ok_or(SaveError::NotTracked)?;
            let (file, written) =
                write_diff_memory(mem, mem_path, log, loaded_memory).map_err(SaveError::Memory)?;
            let identity =
                MemoryIdentity::of_file(&file, params.hash_memory).map_err(SaveError::Identity)?;
            state.mem_size = identity.size;
            let new_state = prepare_state(&state, key, &identity, state_path)?;
            commit_state(new_state)?;
            Ok(written)
        }
    }
}

fn prepare_state(
    state: &MachineState,
    key: Option<&SnapshotKey>,
    identity: &MemoryIdentity,
    path: &Path,
) -> Result<Replacement, SaveError> {
    let bytes = StateFile::encode(state, key, identity).map_err(SaveError::StateFile)?;
    StateFile::prepare(path, &bytes).map_err(SaveError::StateFile)
}

fn commit_state(new_state: Replacement) -> Result<(), SaveError> {
    new_state
        .commit()
        .map_err(|e| SaveError::StateFile(FormatError::Io("replace", e)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::mmds::{MmdsVersion, DEFAULT_IPV4_ADDRESS};
    use crate::rate_limiter::RateLimiterState;

    fn net(id: &str) -> NetState {
        NetState {
            config: json!({"iface_id": id, "host_dev_name": format!("tap-{id}")}).to_string(),
            rx_limiter: RateLimiterState::default(),
            tx_limiter: RateLimiterState::default(),
            firewall: None,
        }
    }

    fn mmds(value: serde_json::Value) -> MmdsConfig {
        serde_json::from_value(value).unwrap()
    }

    fn refusal(config: MmdsConfig, nets: &[NetState]) -> MmdsConfigError {
        match checked_mmds(config, nets) {
            Err(RestoredConfigError::Mmds(e)) => e,
            other => panic!("not refused as MMDS: {other:?}"),
        }
    }

    #[test]
    fn device_configs_without_mmds_stay_without_it_and_older_ones_parse() {
        let none = serde_json::to_string(&DeviceConfigs::default()).unwrap();
        assert!(!none.contains("mmds"), "{none}");
        // A state file written before MMDS existed.
        let old: DeviceConfigs =
            serde_json::from_str(r#"{"drives": [], "entropy": null, "vsock": null}"#).unwrap();
        assert!(old.mmds.is_none());
    }

    #[test]
    fn a_balloon_needs_both_its_configuration_and_its_state() {
        let none = serde_json::to_string(&DeviceConfigs::default()).unwrap();
        assert!(!none.contains("balloon"), "{none}");
        let with = DeviceConfigs {
            balloon: Some(BalloonConfig {
                amount_mib: 4,
                free_page_hinting: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&with).unwrap();
        let back: DeviceConfigs = serde_json::from_str(&text).unwrap();
        assert_eq!(back.balloon, with.balloon);
        let config = back.balloon.unwrap();
        let state = BalloonState::default();
        let (paired, _) = paired_balloon(Some(config.clone()), Some(&state))
            .unwrap()
            .unwrap();
        assert_eq!(paired.amount_mib, 4);
        for half in [
            paired_balloon(Some(config), None),
            paired_balloon(None, Some(&state)),
        ] {
            assert!(matches!(
                half,
                Err(RestoredConfigError::Balloon(BalloonError::NotFound))
            ));
        }
        assert!(paired_balloon(None, None).unwrap().is_none());
    }

    #[test]
    fn device_configs_round_trip_the_mmds_config_with_its_defaults() {
        let configs = DeviceConfigs {
            mmds: Some(mmds(
                json!({"network_interfaces": ["eth0"], "imds_compat": true}),
            )),
            ..Default::default()
        };
        let text = serde_json::to_string(&configs).unwrap();
        let back: DeviceConfigs = serde_json::from_str(&text).unwrap();
        let got = back.mmds.unwrap();
        assert_eq!(got.version, MmdsVersion::V2);
        assert!(got.imds_compat);
        assert_eq!(got.network_interfaces, vec!["eth0".to_string()]);
    }

    #[test]
    fn a_saved_mmds_config_naming_an_interface_the_state_lacks_is_refused() {
        let config = mmds(json!({"network_interfaces": ["eth0", "eth9"]}));
        assert_eq!(
            refusal(config, &[net("eth0")]),
            MmdsConfigError::InvalidNetworkInterfaceId
        );
        let config = mmds(json!({"network_interfaces": ["eth0"]}));
        assert_eq!(
            refusal(config, &[]),
            MmdsConfigError::InvalidNetworkInterfaceId
        );
    }

    #[test]
    fn a_saved_mmds_config_with_a_non_link_local_address_is_refused() {
        for addr in ["10.0.0.1", "169.254.0.1", "169.254.255.1", "0.0.0.0"] {
            let config = mmds(json!({"network_interfaces": ["eth0"], "ipv4_address": addr}));
            assert_eq!(
                refusal(config, &[net("eth0")]),
                MmdsConfigError::InvalidIpv4Addr,
                "{addr}"
            );
        }
    }

    #[test]
    fn a_saved_mmds_config_with_no_interface_is_refused() {
        let config = mmds(json!({"network_interfaces": []}));
        assert_eq!(
            refusal(config, &[net("eth0")]),
            MmdsConfigError::EmptyNetworkIfaceList
        );
    }

    #[test]
    fn a_saved_mmds_config_with_an_unknown_field_or_version_does_not_parse() {
        for bad in [
            r#"{"drives": [], "mmds": {"network_interfaces": ["eth0"], "key": "x"}}"#,
            r#"{"drives": [], "mmds": {"network_interfaces": ["eth0"], "version": "V3"}}"#,
            r#"{"drives": [], "mmds": {"network_interfaces": "eth0"}}"#,
        ] {
            assert!(serde_json::from_str::<DeviceConfigs>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_saved_mmds_config_repeating_an_interface_keeps_it_once() {
        let names = vec!["eth0"; 100_000];
        let config = mmds(json!({"network_interfaces": names}));
        let got = checked_mmds(config, &[net("eth0")]).unwrap();
        assert_eq!(got.network_interfaces, vec!["eth0".to_string()]);
    }

    #[test]
    fn a_valid_saved_mmds_config_is_kept_with_its_address_filled_in() {
        let config = mmds(json!({"version": "V1", "network_interfaces": ["eth1"]}));
        let got = checked_mmds(config, &[net("eth0"), net("eth1")]).unwrap();
        assert_eq!(got.ipv4_address, Some(DEFAULT_IPV4_ADDRESS));
        assert_eq!(got.version, MmdsVersion::V1);
    }
}
