//! What the API asks of the VMM thread, and what it answers: typed, loggable, testable.

use serde::{Deserialize, Serialize};

use crate::config::{
    BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, EntropyConfig, MachineConfig,
    MachineConfigUpdate,
};
use crate::devices::virtio::net::config::{NetworkInterfaceConfig, NetworkInterfaceUpdate};

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
    /// `PUT /network-interfaces/{iface_id}`, before boot.
    PutNetworkInterface(Box<NetworkInterfaceConfig>),
    /// `PATCH /network-interfaces/{iface_id}`, after boot: new limits and/or firewall.
    PatchNetworkInterface(Box<NetworkInterfaceUpdate>),
    /// `GET /network-interfaces/{iface_id}/firewall`: rules and counters (before boot: the
    /// configuration only).
    GetFirewall(String),
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

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    /// 200 with this JSON body.
    Json(serde_json::Value),
}

/// Why an action failed; every variant is a 400 with this message as `fault_message`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// A configuration value was refused.
    #[error("{0}")]
    InvalidConfig(String),
    /// Building or starting the VM failed.
    #[error("Start microvm error: {0}")]
    StartMicrovm(String),
    /// Pausing or resuming failed, or another runtime operation.
    #[error("Internal VMM error: {0}")]
    Runtime(String),
}

/// The VMM's answer to one action.
pub type ActionResult = Result<VmmData, ActionError>;
