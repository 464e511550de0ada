//! Which action may run in which state of the VM, as Firecracker rules it: queries always;
//! configuration and InstanceStart only before boot; pause, resume, Ctrl+Alt+Del, metrics
//! flushes and live PATCHes only after it; `PATCH /vsock` in every state (it configures the
//! policy before boot and updates it after), and `PUT|PATCH|GET /mmds` too (the data store);
//! `PUT /snapshot/create` only on a paused VM; `PUT /snapshot/load` only on a fresh VMM
//! (nothing configured but the logger and metrics). The controller asks [`allowed`] before
//! it acts, so the rules are one pure function, tested here without KVM.

use crate::vmm::action::{ActionError, VmmAction};
use crate::vmm::snapshot::SnapshotError;

/// The VM's state as the rules (and `GET /`) see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Before InstanceStart (or after one that failed).
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs held by `PATCH /vm` Paused.
    Paused,
}

impl VmState {
    /// Firecracker's `state` in `GET /`.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// When an action may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// Reads state; allowed in every state.
    Query,
    /// Configures the VM to be built, or builds it; only before boot.
    PreBoot,
    /// Acts on the running VM; only after boot (paused or not).
    Runtime,
    /// Changes the configuration before boot and the running device after it; allowed in
    /// every state.
    Live,
    /// Saves the VM; only while paused.
    SnapshotCreate,
    /// Builds the VM from a snapshot; only on a fresh VMM.
    SnapshotLoad,
}

/// The kind of `action`. Exhaustive on purpose: a new action must be given its place here.
pub fn kind(action: &VmmAction) -> ActionKind {
    match action {
        VmmAction::GetInstanceInfo
        | VmmAction::GetVersion
        | VmmAction::GetMachineConfig
        | VmmAction::GetFullConfig
        | VmmAction::GetFirewall(_)
        | VmmAction::GetBalloon => ActionKind::Query,
        VmmAction::PutMachineConfig(_)
        | VmmAction::PatchMachineConfig(_)
        | VmmAction::PutBootSource(_)
        | VmmAction::PutCpuConfig(_)
        | VmmAction::PutDrive(_)
        | VmmAction::PutEntropy(_)
        | VmmAction::PutSerial(_)
        | VmmAction::PutNetworkInterface(_)
        | VmmAction::PutLogger(_)
        | VmmAction::PutMetrics(_)
        | VmmAction::PutVsock(_)
        | VmmAction::PutMmdsConfig(_)
        | VmmAction::PutBalloon(_)
        | VmmAction::InstanceStart => ActionKind::PreBoot,
        VmmAction::SendCtrlAltDel
        | VmmAction::FlushMetrics
        | VmmAction::Pause
        | VmmAction::Resume
        | VmmAction::PatchDrive(_)
        | VmmAction::PatchNetworkInterface(_)
        | VmmAction::PatchBalloon(_)
        | VmmAction::GetBalloonStats
        | VmmAction::PatchBalloonStats(_)
        | VmmAction::StartBalloonHinting(_)
        | VmmAction::StopBalloonHinting
        | VmmAction::GetBalloonHintingStatus => ActionKind::Runtime,
        VmmAction::PatchVsock(_)
        | VmmAction::PutMmds(_)
        | VmmAction::PatchMmds(_)
        | VmmAction::GetMmds => ActionKind::Live,
        VmmAction::CreateSnapshot(_) => ActionKind::SnapshotCreate,
        VmmAction::LoadSnapshot(_) => ActionKind::SnapshotLoad,
    }
}

/// Whether `action` may run in `state`: its kind when it may, Firecracker's refusal when not.
/// Pausing a paused VM and resuming a running one are allowed and change nothing.
/// `configured` says whether anything but the logger and metrics was configured before boot.
pub fn allowed(
    state: VmState,
    configured: bool,
    action: &VmmAction,
) -> Result<ActionKind, ActionError> {
    let kind = kind(action);
    match (kind, state) {
        (ActionKind::Query | ActionKind::Live, _)
        | (ActionKind::PreBoot, VmState::NotStarted)
        | (ActionKind::Runtime, VmState::Running | VmState::Paused)
        | (ActionKind::SnapshotCreate, VmState::Paused) => Ok(kind),
        (ActionKind::SnapshotLoad, VmState::NotStarted) if !configured => Ok(kind),
        (ActionKind::SnapshotLoad, VmState::NotStarted) => {
            Err(SnapshotError::LoadNotAllowed.into())
        }
        (ActionKind::PreBoot | ActionKind::SnapshotLoad, VmState::Running | VmState::Paused) => {
            Err(ActionError::NotSupportedPostBoot)
        }
        (ActionKind::Runtime | ActionKind::SnapshotCreate, VmState::NotStarted) => {
            Err(ActionError::NotSupportedPreBoot)
        }
        (ActionKind::SnapshotCreate, VmState::Running) => Err(SnapshotError::NotPaused.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::config::{EntropyConfig, MachineConfig, MachineConfigUpdate};
    use crate::vmm::snapshot::LoadSnapshotBody;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    /// One action of every variant (the match in `kind` keeps this list honest: a variant
    /// missing here fails `the_table_lists_every_variant_once`).
    fn every_action() -> Vec<VmmAction> {
        vec![
            VmmAction::GetInstanceInfo,
            VmmAction::GetVersion,
            VmmAction::GetMachineConfig,
            VmmAction::GetFullConfig,
            VmmAction::GetFirewall("eth0".into()),
            VmmAction::PutMachineConfig(MachineConfig::default()),
            VmmAction::PatchMachineConfig(MachineConfigUpdate::default()),
            VmmAction::PutBootSource(from(json!({"kernel_image_path": "/k"}))),
            VmmAction::PutDrive(Box::new(from(
                json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}),
            ))),
            VmmAction::PutEntropy(EntropyConfig::default()),
            VmmAction::PutNetworkInterface(Box::new(from(
                json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
            ))),
            VmmAction::PutLogger(crate::logger::LoggerConfig::default()),
            VmmAction::PutMetrics(from(json!({"metrics_path": "/m"}))),
            VmmAction::InstanceStart,
            VmmAction::SendCtrlAltDel,
            VmmAction::FlushMetrics,
            VmmAction::Pause,
            VmmAction::Resume,
            VmmAction::PatchDrive(Box::new(from(json!({"drive_id": "rootfs"})))),
            VmmAction::PatchNetworkInterface(Box::new(from(json!({"iface_id": "eth0"})))),
            VmmAction::PutVsock(Box::new(from(
                json!({"guest_cid": 3, "uds_path": "/v.sock"}),
            ))),
            VmmAction::PatchVsock(Box::new(from(json!({"policy": {}})))),
            VmmAction::PutMmdsConfig(Box::new(from(json!({"network_interfaces": ["eth0"]})))),
            VmmAction::PutMmds(json!({"a": 1})),
            VmmAction::PatchMmds(json!({"a": 2})),
            VmmAction::GetMmds,
            VmmAction::PutSerial(Box::default()),
            VmmAction::CreateSnapshot(Box::new(from(
                json!({"snapshot_path": "/s", "mem_file_path": "/m"}),
            ))),
            VmmAction::LoadSnapshot(Box::new(
                from::<LoadSnapshotBody>(json!({"snapshot_path": "/s", "mem_file_path": "/m"}))
                    .into_params()
                    .unwrap(),
            )),
            VmmAction::PutBalloon(from(json!({"amount_mib": 1, "deflate_on_oom": false}))),
            VmmAction::GetBalloon,
            VmmAction::PatchBalloon(from(json!({"amount_mib": 2}))),
            VmmAction::GetBalloonStats,
            VmmAction::PatchBalloonStats(from(json!({"stats_polling_interval_s": 1}))),
            VmmAction::PutCpuConfig(Box::default()),
            VmmAction::StartBalloonHinting(Default::default()),
            VmmAction::StopBalloonHinting,
            VmmAction::GetBalloonHintingStatus,
        ]
    }

    /// The variant's name, from its Debug text.
    fn name(action: &VmmAction) -> String {
        let text = format!("{action:?}");
        text.split(['(', ' '])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    const PRE: Result<(), ActionError> = Err(ActionError::NotSupportedPreBoot);
    const POST: Result<(), ActionError> = Err(ActionError::NotSupportedPostBoot);
    const OK: Result<(), ActionError> = Ok(());
    const NOT_PAUSED: Result<(), ActionError> =
        Err(ActionError::Snapshot(SnapshotError::NotPaused));
    const NOT_FRESH: Result<(), ActionError> =
        Err(ActionError::Snapshot(SnapshotError::LoadNotAllowed));

    /// Firecracker's answers, per action: (fresh, configured, running, paused).
    fn expected(name: &str) -> [Result<(), ActionError>; 4] {
        match name {
            "CreateSnapshot" => return [PRE, PRE, NOT_PAUSED, OK],
            "LoadSnapshot" => return [OK, NOT_FRESH, POST, POST],
            _ => {}
        }
        // Every other action: configuring does not change its answer.
        let [not_started, running, paused] = match name {
            "GetInstanceInfo" | "GetVersion" | "GetMachineConfig" | "GetFullConfig"
            | "GetFirewall" | "GetBalloon" => [OK, OK, OK],
            "PutMachineConfig"
            | "PatchMachineConfig"
            | "PutBootSource"
            | "PutCpuConfig"
            | "PutDrive"
            | "PutEntropy"
            | "PutSerial"
            | "PutNetworkInterface"
            | "PutLogger"
            | "PutMetrics"
            | "PutVsock"
            | "PutMmdsConfig"
            | "PutBalloon"
            | "InstanceStart" => [OK, POST, POST],
            "SendCtrlAltDel"
            | "FlushMetrics"
            | "Pause"
            | "Resume"
            | "PatchDrive"
            | "PatchNetworkInterface"
            | "PatchBalloon"
            | "GetBalloonStats"
            | "PatchBalloonStats"
            | "StartBalloonHinting"
            | "StopBalloonHinting"
            | "GetBalloonHintingStatus" => [PRE, OK, OK],
            // Palisade's extension: the policy before boot, the live device after.
            "PatchVsock" => [OK, OK, OK],
            // Firecracker: the data store before and after boot.
            "PutMmds" | "PatchMmds" | "GetMmds" => [OK, OK, OK],
            other => panic!("{other} has no row in the table"),
        };
        let again = match &not_started {
            Ok(()) => OK,
            Err(ActionError::NotSupportedPostBoot) => POST,
            Err(_) => PRE,
        };
        [not_started, again, running, paused]
    }

    /// The same answer: both allowed, or both refused for the same reason.
    fn same(a: &Result<(), ActionError>, b: &Result<(), ActionError>) -> bool {
        match (a, b) {
            (Ok(()), Ok(())) => true,
            (Err(ActionError::Snapshot(a)), Err(ActionError::Snapshot(b))) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
            }
            (Err(a), Err(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
            _ => false,
        }
    }

    #[test]
    fn every_action_in_every_state_is_allowed_or_refused_as_firecracker_does() {
        let states = [
            (VmState::NotStarted, false),
            (VmState::NotStarted, true),
            (VmState::Running, true),
            (VmState::Paused, true),
        ];
        for action in every_action() {
            let rows = expected(&name(&action));
            for ((state, configured), want) in states.into_iter().zip(rows) {
                let got = allowed(state, configured, &action).map(drop);
                assert!(
                    same(&got, &want),
                    "{} in {state:?}: {got:?}, not {want:?}",
                    name(&action)
                );
            }
        }
    }

    /// The variant's place in `every_action`; exhaustive, so a new variant does not compile
    /// until it is listed (and given a row in `expected`).
    fn place(action: &VmmAction) -> usize {
        match action {
            VmmAction::GetInstanceInfo => 0,
            VmmAction::GetVersion => 1,
            VmmAction::GetMachineConfig => 2,
            VmmAction::GetFullConfig => 3,
            VmmAction::GetFirewall(_) => 4,
            VmmAction::PutMachineConfig(_) => 5,
            VmmAction::PatchMachineConfig(_) => 6,
            VmmAction::PutBootSource(_) => 7,
            VmmAction::PutDrive(_) => 8,
            VmmAction::PutEntropy(_) => 9,
            VmmAction::PutNetworkInterface(_) => 10,
            VmmAction::PutLogger(_) => 11,
            VmmAction::PutMetrics(_) => 12,
            VmmAction::InstanceStart => 13,
            VmmAction::SendCtrlAltDel => 14,
            VmmAction::FlushMetrics => 15,
            VmmAction::Pause => 16,
            VmmAction::Resume => 17,
            VmmAction::PatchDrive(_) => 18,
            VmmAction::PatchNetworkInterface(_) => 19,
            VmmAction::PutVsock(_) => 20,
            VmmAction::PatchVsock(_) => 21,
            VmmAction::PutMmdsConfig(_) => 22,
            VmmAction::PutMmds(_) => 23,
            VmmAction::PatchMmds(_) => 24,
            VmmAction::GetMmds => 25,
            VmmAction::PutSerial(_) => 26,
            VmmAction::CreateSnapshot(_) => 27,
            VmmAction::LoadSnapshot(_) => 28,
            VmmAction::PutBalloon(_) => 29,
            VmmAction::GetBalloon => 30,
            VmmAction::PatchBalloon(_) => 31,
            VmmAction::GetBalloonStats => 32,
            VmmAction::PatchBalloonStats(_) => 33,
            VmmAction::PutCpuConfig(_) => 34,
            VmmAction::StartBalloonHinting(_) => 35,
            VmmAction::StopBalloonHinting => 36,
            VmmAction::GetBalloonHintingStatus => 37,
        }
    }

    #[test]
    fn the_table_lists_every_variant_once() {
        let places: Vec<usize> = every_action().iter().map(place).collect();
        assert_eq!(places, (0..38).collect::<Vec<_>>());
    }

    #[test]
    fn refusals_carry_firecrackers_messages() {
        assert_eq!(
            allowed(VmState::Running, true, &VmmAction::InstanceStart)
                .unwrap_err()
                .to_string(),
            "The requested operation is not supported after starting the microVM."
        );
        assert_eq!(
            allowed(VmState::NotStarted, false, &VmmAction::Pause)
                .unwrap_err()
                .to_string(),
            "The requested operation is not supported before starting the microVM."
        );
        assert_eq!(VmState::NotStarted.name(), "Not started");
        let load = every_action()
            .into_iter()
            .find(|a| matches!(a, VmmAction::LoadSnapshot(_)))
            .unwrap();
        assert_eq!(
            allowed(VmState::NotStarted, true, &load)
                .unwrap_err()
                .to_string(),
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
        );
    }
}
