//! Applies API actions: the pre-boot controller fills the VM resources and starts the VM;
//! the runtime controller handles what may change while it runs. The rules of which action
//! is allowed when live in [`rules`] and nowhere else.

mod balloon;
mod mmds;
mod net;
pub mod rules;
mod snapshot;
mod start;
#[cfg(test)]
mod tests;
mod vsock;

use std::fs::File;
use std::time::Instant;

use crate::arch::x86_64::cpu_template::CpuTemplate;
use crate::config::{host_memory_mib, BlockDeviceUpdate, BootFiles, VmResources};
use crate::devices::virtio::vsock::Vsock;
use crate::mmds::MmdsStore;
use crate::vmm::device_manager::{Subscriber, VirtioDevices};
use crate::vstate::prepared::PreparedVm;

use self::mmds::MmdsData;
pub use self::mmds::MmdsStartError;
use self::rules::{ActionKind, VmState};
pub use self::start::StartError;
use super::action::{ActionError, ActionResult, InstanceInfo, VersionInfo, VmmAction, VmmData};
use super::builder::{build_vm, BuildError, BuildOptions, BuiltVm, OpenedFiles};
use super::taps::OpenTaps;
use super::RunningVm;

/// Name in `GET /`.
pub const APP_NAME: &str = "Palisade";
/// Version in `GET /` and `GET /version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Owns the VM resources before boot and the running VM after.
pub struct Controller {
    id: String,
    resources: VmResources,
    opts: BuildOptions,
    running: Option<RunningVm>,
    /// The running VM's virtio devices, for `PATCH /drives`.
    devices: VirtioDevices,
    /// Devices started but not yet given to the event loop.
    new_subscribers: Vec<Subscriber>,
    /// The console output opened by `PUT /serial`, held until the VM is built on it.
    serial_out: Option<crate::devices::serial_config::SerialOutputFile>,
    /// The taps opened by `PUT /network-interfaces`, held until the VM is built on them.
    taps: OpenTaps,
    /// The kernel and initrd opened by `PUT /boot-source`, held until the VM is built from
    /// them.
    boot_files: Option<BootFiles>,
    /// The vsock device created by `PUT /vsock` (its listener bound), held until the VM is
    /// built with it.
    vsock: Option<Vsock>,
    /// Whether anything but the logger and metrics was configured (a snapshot load is then
    /// refused, as Firecracker does).
    configured: bool,
    /// The memory file a loaded VM's RAM is mapped from (File backend), open and read-locked
    /// for the VM's life: other VMs' Diffs cannot write into it.
    loaded_memory: Option<File>,
    /// The MMDS data store, once an MMDS action, `--metadata` or the config file made one.
    mmds: Option<MmdsStore>,
    /// Its size limit (`--mmds-size-limit`).
    mmds_size_limit: usize,
    /// The KVM VM made ahead for InstanceStart or a snapshot load (API mode).
    prepared: PreparedVm,
}

impl Controller {
    /// A controller for instance `id` with default resources.
    pub fn new(id: String, opts: BuildOptions) -> Self {
        Self {
            id,
            resources: VmResources::default(),
            opts,
            running: None,
            devices: VirtioDevices::default(),
            new_subscribers: Vec::new(),
            taps: OpenTaps::default(),
            boot_files: None,
            serial_out: None,
            vsock: None,
            configured: false,
            loaded_memory: None,
            mmds: None,
            mmds_size_limit: crate::mmds::DEFAULT_SIZE_LIMIT,
            prepared: PreparedVm::default(),
        }
    }

    /// Starts creating the KVM VM (irqchip and PIT included) on a thread of its own, for
    /// InstanceStart or a snapshot load to take: an API client's configuring requests then
    /// overlap KVM's VM-level set-up. Without it (or when it failed) they create the VM.
    pub fn prepare_vm(&mut self) {
        self.prepared = PreparedVm::spawn();
    }

    /// Devices of a VM that just started, for the event loop to serve (once).
    pub fn take_new_subscribers(&mut self) -> Vec<Subscriber> {
        std::mem::take(&mut self.new_subscribers)
    }

    /// Replaces the resources (from a config file), before boot; their files are opened
    /// when the VM starts.
    pub fn set_resources(&mut self, resources: VmResources) {
        if resources.mmds_config.is_some() && self.mmds.is_none() {
            self.mmds = Some(MmdsStore::new(self.mmds_size_limit));
        }
        self.resources = resources;
        self.boot_files = None;
        self.vsock = None;
        self.configured = true;
    }

    /// The running VM, if started.
    pub fn running(&self) -> Option<&RunningVm> {
        self.running.as_ref()
    }

    /// Takes the running VM out, to stop it.
    pub fn take_running(&mut self) -> Option<RunningVm> {
        self.running.take()
    }

    /// The VM's state, for the rules and `GET /`.
    pub fn state(&self) -> VmState {
        match &self.running {
            None => VmState::NotStarted,
            Some(vm) if vm.is_paused() => VmState::Paused,
            Some(_) => VmState::Running,
        }
    }

    /// Builds and starts the VM from the resources. A boot source and taps not yet opened
    /// (a config file's resources had no PUTs) get the checks of their PUTs first, so both
    /// paths refuse them with the same message before anything is built; the VM is built
    /// from the files and taps opened by those checks.
    pub fn start_vm(&mut self) -> Result<(), StartError> {
        self.resources
            .machine_config
            .validate(host_memory_mib())
            .map_err(StartError::MachineConfig)?;
        let boot = match self.boot_files.take() {
            Some(files) => Some(files),
            None => self
                .resources
                .boot_source
                .as_ref()
                .map(|boot| {
                    boot.open().map_err(|source| StartError::BootSource {
                        source,
                        boot: Box::new(boot.clone()),
                    })
                })
                .transpose()?,
        };
        self.taps
            .open_missing(&self.resources.network_interfaces)
            .map_err(StartError::Taps)?;
        // Opened before the Landlock layer and the filter, like the taps.
        if self.serial_out.is_none() {
            if let Some(serial) = &self.resources.serial {
                self.serial_out = serial.open().map_err(StartError::Serial)?;
            }
        }
        // Bound before the Landlock layer: it needs no right to create the socket.
        self.create_missing_vsock().map_err(StartError::Vsock)?;
        if self.opts.landlock {
            for iface in self.resources.network_interfaces.iter() {
                iface.create_flow_log().map_err(StartError::FlowLog)?;
            }
            // Before the kernel image is parsed: the build runs confined too.
            let line = crate::sandbox::restrict_vmm(&self.landlock_rules())
                .map_err(StartError::Landlock)?;
            log::info!("{line}");
        }
        let opened = OpenedFiles {
            boot: boot.ok_or(StartError::Build(BuildError::MissingKernelConfig))?,
            taps: std::mem::take(&mut self.taps),
            vsock: self.vsock.take(),
            vm: self.prepared.take(),
            serial: self.serial_out.take(),
        };
        let BuiltVm { vmm, devices } =
            build_vm(&self.resources, &self.opts, opened).map_err(StartError::Build)?;
        self.attach_mmds(
            self.resources.mmds_config.as_ref(),
            self.mmds.as_ref(),
            &devices,
        )
        .map_err(StartError::Mmds)?;
        let running = vmm.start().map_err(|e| StartError::Start(Box::new(e)))?;
        self.running = Some(running);
        self.new_subscribers = devices.subscribers();
        self.devices = devices;
        Ok(())
    }

    /// `PUT /serial`: the output opened now (before the Landlock layer and the filter, as
    /// Firecracker opens it at PUT), held until the VM is built on it, and recorded.
    fn put_serial(&mut self, config: crate::config::SerialConfig) -> ActionResult {
        let opened = config.open().map_err(crate::config::ConfigError::from)?;
        self.serial_out = opened;
        self.resources.serial = Some(config);
        Ok(VmmData::Empty)
    }

    /// What the VMM's Landlock layer allows: the configured files and the snapshot
    /// directories.
    fn landlock_rules(&self) -> Vec<crate::sandbox::PathRule> {
        let mut rules = self.resources.landlock_rules();
        rules.extend(
            self.opts
                .snapshot_dirs
                .iter()
                .map(crate::sandbox::PathRule::create_in),
        );
        rules
    }

    /// Handles one action from the API: refused by the [`rules`] in this state, or done.
    pub fn handle(&mut self, action: VmmAction) -> ActionResult {
        log::debug!("API action {action:?}");
        match rules::allowed(self.state(), self.configured, &action)? {
            ActionKind::Query => self.query(action),
            ActionKind::PreBoot => {
                // As in Firecracker, the logger, metrics, serial output and CPU template may
                // precede a snapshot load.
                if !matches!(
                    action,
                    VmmAction::PutLogger(_)
                        | VmmAction::PutMetrics(_)
                        | VmmAction::PutSerial(_)
                        | VmmAction::PutCpuConfig(_)
                ) {
                    self.configured = true;
                }
                self.preboot(action)
            }
            ActionKind::Runtime => self.runtime(action),
            ActionKind::Live => self.live(action),
            ActionKind::SnapshotCreate => match action {
                VmmAction::CreateSnapshot(params) => self.create_snapshot(&params),
                other => misrouted(&other),
            },
            ActionKind::SnapshotLoad => match action {
                VmmAction::LoadSnapshot(params) => self.load_snapshot(&params),
                other => misrouted(&other),
            },
        }
    }

    fn query(&self, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(self.instance_info())),
            VmmAction::GetVersion => Ok(VmmData::Version(VersionInfo {
                firecracker_version: VERSION.to_string(),
                palisade_version: VERSION.to_string(),
            })),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(
                self.resources.machine_config.clone(),
            )),
            VmmAction::GetFullConfig => Ok(VmmData::FullConfig(Box::new(
                self.resources.to_full_config(),
            ))),
            VmmAction::GetFirewall(id) => self.get_firewall(&id),
            VmmAction::GetBalloon => self.get_balloon(),
            other => misrouted(&other),
        }
    }

    fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            app_name: APP_NAME.to_string(),
            id: self.id.clone(),
            state: self.state().name().to_string(),
            vmm_version: VERSION.to_string(),
        }
    }

    fn preboot(&mut self, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::PutMachineConfig(config) => {
                let config = config.replacing(&self.resources.machine_config);
                config.validate(host_memory_mib())?;
                self.resources.machine_config = config;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchMachineConfig(update) => {
                let config = update.apply(&self.resources.machine_config);
                config.validate(host_memory_mib())?;
                self.resources.machine_config = config;
                Ok(VmmData::Empty)
            }
            VmmAction::PutCpuConfig(template) => {
                self.resources.machine_config.cpu_template = Some(CpuTemplate::Custom(template));
                Ok(VmmData::Empty)
            }
            VmmAction::PutBootSource(boot) => {
                self.boot_files = Some(boot.open()?);
                self.resources.boot_source = Some(boot);
                Ok(VmmData::Empty)
            }
            VmmAction::PutDrive(drive) => self
                .resources
                .drives
                .insert(*drive)
                .map(|_| VmmData::Empty)
                .map_err(ActionError::from),
            VmmAction::PutSerial(config) => self.put_serial(*config),
            VmmAction::PutEntropy(entropy) => {
                self.resources.entropy = Some(entropy);
                Ok(VmmData::Empty)
            }
            VmmAction::PutNetworkInterface(iface) => self.put_network_interface(*iface),
            VmmAction::PutVsock(config) => self.put_vsock(*config),
            VmmAction::PutBalloon(config) => self.put_balloon(config),
            VmmAction::PutMmdsConfig(config) => self.put_mmds_config(*config),
            VmmAction::PutLogger(config) => crate::logger::configure(&config)
                .map(|_| VmmData::Empty)
                .map_err(ActionError::from),
            VmmAction::PutMetrics(config) => crate::metrics::init_from_config(&config)
                .map(|_| VmmData::Empty)
                .map_err(ActionError::from),
            VmmAction::InstanceStart => {
                if self.resources.boot_source.is_none() {
                    return Err(ActionError::MissingKernelConfig);
                }
                let started = Instant::now();
                self.start_vm().map_err(ActionError::StartMicrovm)?;
                log::info!("InstanceStart took {} us", started.elapsed().as_micros());
                Ok(VmmData::Empty)
            }
            other => misrouted(&other),
        }
    }

    fn runtime(&mut self, action: VmmAction) -> ActionResult {
        let Some(vm) = self.running.as_mut() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        match action {
            VmmAction::Pause => {
                let started = Instant::now();
                if !vm.is_paused() {
                    vm.pause().map_err(ActionError::Runtime)?;
                }
                let us = started.elapsed().as_micros() as u64;
                crate::metrics::METRICS.latencies_us.pause_vm.store(us);
                log::info!("'pause vm' VMM action took {us} us.");
                Ok(VmmData::Empty)
            }
            VmmAction::Resume => {
                let started = Instant::now();
                vm.resume();
                let us = started.elapsed().as_micros() as u64;
                crate::metrics::METRICS.latencies_us.resume_vm.store(us);
                log::info!("'resume vm' VMM action took {us} us.");
                Ok(VmmData::Empty)
            }
            VmmAction::SendCtrlAltDel => vm
                .send_ctrl_alt_del()
                .map(|_| VmmData::Empty)
                .map_err(ActionError::Runtime),
            VmmAction::FlushMetrics => crate::metrics::flush()
                .map(|_| VmmData::Empty)
                .map_err(ActionError::FlushMetrics),
            VmmAction::PatchDrive(update) => self.patch_drive(&update),
            VmmAction::PatchNetworkInterface(update) => self.patch_network_interface(&update),
            VmmAction::PatchBalloon(update) => self.patch_balloon(&update),
            VmmAction::GetBalloonStats => self.balloon_stats(),
            VmmAction::PatchBalloonStats(update) => self.patch_balloon_stats(&update),
            VmmAction::StartBalloonHinting(cmd) => self.balloon_hinting(|b| b.start_hinting(cmd)),
            VmmAction::StopBalloonHinting => self.balloon_hinting(|b| b.stop_hinting()),
            VmmAction::GetBalloonHintingStatus => self.balloon_hinting_status(),
            other => misrouted(&other),
        }
    }
}

impl Controller {
    /// Actions allowed in every state that change the VM: before boot its configuration,
    /// after boot the running device.
    fn live(&mut self, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::PatchVsock(update) => self.patch_vsock(*update),
            VmmAction::PutMmds(data) => self.mmds_data(MmdsData::Put(data)),
            VmmAction::PatchMmds(patch) => self.mmds_data(MmdsData::Patch(patch)),
            VmmAction::GetMmds => self.mmds_data(MmdsData::Get),
            other => misrouted(&other),
        }
    }

    /// `PATCH /drives/{id}` on a running VM: a new backing file and/or new limits.
    fn patch_drive(&mut self, update: &BlockDeviceUpdate) -> ActionResult {
        let id = &update.drive_id;
        let mut block = self
            .devices
            .block(id)
            .ok_or_else(|| ActionError::NoSuchDrive { id: id.clone() })?;
        if let Some(path) = &update.path_on_host {
            block.update_disk(path).map_err(ActionError::PatchDrive)?;
        }
        if let Some(limits) = &update.rate_limiter {
            block.update_rate_limiter(limits);
        }
        if let Some(drive) = self.resources.drives.get_mut(id) {
            if let Some(path) = &update.path_on_host {
                drive.path_on_host.clone_from(path);
            }
            let limits = block.rate_limiter_config();
            drive.rate_limiter = (limits != Default::default()).then_some(limits);
        }
        Ok(VmmData::Empty)
    }
}

/// An action handed to the handler of another kind; `rules::kind` makes this unreachable.
fn misrouted(action: &VmmAction) -> ActionResult {
    Err(ActionError::Misrouted(rules::kind(action)))
}
