//! What the API asks of the VMM thread, and what it answers: typed, loggable, testable.

use palisade_firewall::{FirewallConfig, FirewallStatus};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::cpu_template::CustomCpuTemplate;
use crate::config::{
    BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, ConfigError, EntropyConfig,
    MachineConfig, MachineConfigUpdate,
};
use crate::devices::virtio::balloon::{
    BalloonConfig, BalloonError, BalloonStats, BalloonStatsUpdate, BalloonUpdate, HintingStatus,
    StartHintingCmd,
};
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::net::config::{
    NetConfigError, NetworkInterfaceConfig, NetworkInterfaceUpdate,
};
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::vsock::config::{VsockDeviceConfig, VsockUpdate};
use crate::devices::virtio::vsock::VsockError;
use crate::logger::LoggerError;
use crate::metrics::MetricsError;
use crate::mmds::{MmdsConfig, MmdsConfigError, StoreError};
use crate::vmm::controller::rules::ActionKind;
use crate::vmm::controller::StartError;
use crate::vmm::snapshot::{CreateSnapshotParams, LoadSnapshotParams, SnapshotError};
use crate::vmm::RunError;

/// One request from the api thread to the VMM thread.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`.
    PutBootSource(BootSourceConfig),
    /// `PUT /cpu-config`, before boot: a custom CPU template (replaces a static one).
    PutCpuConfig(Box<CustomCpuTemplate>),
    /// `GET /vm/config`.
    GetFullConfig,
    /// `PUT /actions` InstanceStart.
    InstanceStart,
    /// `PUT /actions` SendCtrlAltDel.
    SendCtrlAltDel,
    /// `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// `PUT /logger`.
    PutLogger(crate::logger::LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(crate::metrics::MetricsConfig),
    /// `PATCH /vm` Paused.
    Pause,
    /// `PATCH /vm` Resumed.
    Resume,
    /// `PUT /drives/{drive_id}`, before boot.
    PutDrive(Box<BlockDeviceConfig>),
    /// `PATCH /drives/{drive_id}`, after boot: a new file and/or new limits.
    PatchDrive(Box<BlockDeviceUpdate>),
    /// `PUT /entropy`, before boot.
    PutEntropy(EntropyConfig),
    /// `PUT /serial`.
    PutSerial(Box<crate::config::SerialConfig>),
    /// `PUT /network-interfaces/{iface_id}`, before boot.
    PutNetworkInterface(Box<NetworkInterfaceConfig>),
    /// `PATCH /network-interfaces/{iface_id}`, after boot: new limits and/or firewall.
    PatchNetworkInterface(Box<NetworkInterfaceUpdate>),
    /// `GET /network-interfaces/{iface_id}/firewall`: rules and counters (before boot: the
    /// configuration only).
    GetFirewall(String),
    /// `PUT /vsock` (or `/vsock/{anything}`, as Firecracker accepts), before boot: the
    /// listener on `uds_path` is bound here.
    PutVsock(Box<VsockDeviceConfig>),
    /// `PATCH /vsock` (Palisade's extension): a new policy, before boot (replaces the
    /// configured one) or after it (applied live).
    PatchVsock(Box<VsockUpdate>),
    /// `PUT /mmds/config`, before boot.
    PutMmdsConfig(Box<MmdsConfig>),
    /// `PUT /mmds`: replaces the data store.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: merges into the data store (RFC 7396).
    PatchMmds(serde_json::Value),
    /// `GET /mmds`.
    GetMmds,
    /// `PUT /balloon`, before boot.
    PutBalloon(BalloonConfig),
    /// `GET /balloon`.
    GetBalloon,
    /// `PATCH /balloon`, after boot: a new target.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon/statistics`, after boot.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`, after boot.
    PatchBalloonStats(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`, after boot: a new free page hinting run.
    StartBalloonHinting(StartHintingCmd),
    /// `PATCH /balloon/hinting/stop`, after boot: the run ends (DONE).
    StopBalloonHinting,
    /// `GET /balloon/hinting/status`, after boot.
    GetBalloonHintingStatus,
    /// `PUT /snapshot/create`, on a paused VM.
    CreateSnapshot(Box<CreateSnapshotParams>),
    /// `PUT /snapshot/load`, on a fresh VMM.
    LoadSnapshot(Box<LoadSnapshotParams>),
}

/// `GET /` answer, Firecracker's InstanceInfo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Always "Palisade".
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    /// Version of this VMM.
    pub vmm_version: String,
}

/// `GET /version` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version, under Firecracker's key.
    pub firecracker_version: String,
    /// The version, under Palisade's key.
    pub palisade_version: String,
}

/// A successful answer: nothing, or a typed body the api thread serialises once.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(VersionInfo),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /vm/config`: the configuration in the config file's shape.
    FullConfig(Box<crate::config::FullVmConfig>),
    /// `GET /network-interfaces/{id}/firewall` after boot: rules and counters.
    FirewallStatus(Box<FirewallStatus>),
    /// `GET /network-interfaces/{id}/firewall` before boot: the configured rules.
    ConfiguredFirewall(ConfiguredFirewall),
    /// `GET /mmds`: the data store.
    MmdsValue(serde_json::Value),
    /// `GET /balloon`.
    Balloon(BalloonConfig),
    /// `GET /balloon/statistics`.
    BalloonStats(BalloonStats),
    /// `GET /balloon/hinting/status`.
    BalloonHinting(HintingStatus),
}

/// `GET /network-interfaces/{id}/firewall` before boot: the firewall the interface will get
/// (`null` when it gets none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfiguredFirewall {
    /// The interface.
    pub iface_id: String,
    /// Its firewall's configuration.
    pub rules: Option<FirewallConfig>,
}

/// Why an action failed. Each variant keeps its typed cause; [`ActionError::status`] and
/// [`ActionError::fault_message`] are the one place an error becomes an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Only allowed before InstanceStart.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    /// Only allowed after InstanceStart.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    /// InstanceStart without a kernel.
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernelConfig,
    /// A machine config, boot source or drive was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A network interface was refused against the others.
    #[error(transparent)]
    Interface(#[from] NetConfigError),
    /// A network interface's tap could not be opened.
    #[error(transparent)]
    Net(#[from] NetError),
    /// `PUT /logger` was refused.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// `PUT /metrics` was refused.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Building or starting the VM failed.
    #[error("Start microvm error")]
    StartMicrovm(#[source] StartError),
    /// Pausing or another runtime operation of the VM failed.
    #[error("Internal VMM error")]
    Runtime(#[source] RunError),
    /// `FlushMetrics` could not write.
    #[error("Internal VMM error")]
    FlushMetrics(#[source] MetricsError),
    /// `PATCH /drives/{id}` names no attached drive.
    #[error("No drive with id '{id}' is attached")]
    NoSuchDrive {
        /// The drive id asked for.
        id: String,
    },
    /// `PATCH /drives/{id}`: the new backing file was refused.
    #[error("Unable to patch the block device")]
    PatchDrive(#[source] BlockError),
    /// `PATCH /network-interfaces/{id}` names no attached interface.
    #[error("No network interface with id '{id}' is attached")]
    NoSuchAttachedInterface {
        /// The interface id asked for.
        id: String,
    },
    /// `PATCH /network-interfaces/{id}`: the new limits or firewall were refused.
    #[error("Unable to patch the network interface")]
    PatchNetworkInterface(#[source] NetError),
    /// `GET /network-interfaces/{id}/firewall` names no interface.
    #[error("No network interface with id '{id}'")]
    NoSuchInterface {
        /// The interface id asked for.
        id: String,
    },
    /// `GET /network-interfaces/{id}/firewall` on an interface without one.
    #[error("Network interface '{id}' has no firewall")]
    NoFirewall {
        /// The interface id asked for.
        id: String,
    },
    /// The vsock device cannot be created, or its policy is refused (`PUT`/`PATCH /vsock`).
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// An MMDS data action was refused (Firecracker's prefix).
    #[error("MMDS error")]
    Mmds(#[source] StoreError),
    /// A PUT or PATCH of the MMDS data store would exceed its limit (Firecracker's prefix;
    /// 413).
    #[error("MMDS limit exceeded error")]
    MmdsLimitExceeded(#[source] StoreError),
    /// `PUT /mmds/config` was refused. Firecracker's prefix, its spelling included: clients
    /// written against it may match on it.
    #[error("MMMDS config error")]
    MmdsConfig(#[source] MmdsConfigError),
    /// A balloon request was refused before it reached the device (Firecracker's prefix).
    #[error("Balloon config error")]
    Balloon(#[source] BalloonError),
    /// The running balloon refused a query (Firecracker's prefixes).
    #[error("Internal VMM error: Balloon")]
    BalloonRuntime(#[source] BalloonError),
    /// The running balloon refused an update (Firecracker's prefixes).
    #[error("Balloon update error: Balloon")]
    BalloonUpdate(#[source] BalloonError),
    /// A snapshot request was refused.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// An action reached the handler of another kind; the rules make this unreachable.
    #[error("Internal VMM error: {0:?} action routed to the wrong handler")]
    Misrouted(ActionKind),
}

impl ActionError {
    /// The HTTP status of this refusal: Firecracker answers every action error with 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::Snapshot(e) => e.status(),
            Self::MmdsLimitExceeded(_) => 413,
            _ => 400,
        }
    }

    /// The `fault_message` of the answer: the error and its causes, on one line.
    pub fn fault_message(&self) -> String {
        crate::error_chain(self)
    }
}

impl From<StoreError> for ActionError {
    /// Firecracker's split: over the limit is 413 with its own prefix, the rest 400.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LimitExceeded => Self::MmdsLimitExceeded(e),
            e => Self::Mmds(e),
        }
    }
}

/// The VMM's answer to one action.
pub type ActionResult = Result<VmmData, ActionError>;
