//! The controller's snapshot actions: `PUT /snapshot/create` on a paused VM and
//! `PUT /snapshot/load` on a fresh VMM (the rules have checked the state). A load
//! authenticates the state file and binds it to the memory file (with the Uffd backend: to
//! the memory size the handler is told), checks every device's configuration and state, and
//! opens the network interfaces' taps (renamed by `network_overrides`) before anything is
//! built, so a refused load leaves the VMM fresh and usable.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::vsock::create_vsock;
use super::Controller;
use crate::devices::virtio::net::config::InterfaceList;
use crate::devices::virtio::net::snapshot::{NetState, RestoredNet};
use crate::mmds::MmdsStore;
use crate::snapshot::StateFile;
use crate::vmm::action::{ActionError, ActionResult, VmmData};
use crate::vmm::builder::{build_restored_vm, BuiltVm, RestoredConfigs, RestoredMemory};
use crate::vmm::machine_state::{
    CheckedDeviceConfigs, MachineState, RestoredConfigError, SaveError, SaveInput,
};
use crate::vmm::restored_paths::Confinement;
use crate::vmm::snapshot::{
    CreateSnapshotParams, LoadSnapshotParams, MemBackendType, NetworkOverride, SnapshotError,
    SnapshotType,
};
use crate::vmm::uffd_watch::HandlerWatch;
use crate::vstate::snapshot::hold_mapped;

/// The network interfaces of a state file with `overrides` applied (each must name one of
/// them; Firecracker's rule), checked together as their PUTs would be, then restored: firewall
/// and limiter states checked, taps opened. On error nothing stays open.
fn restore_nets(
    nets: &[NetState],
    overrides: &[NetworkOverride],
    confine: Option<&Confinement>,
) -> Result<(InterfaceList, Vec<RestoredNet>), SnapshotError> {
    let mut configs = nets
        .iter()
        .map(|net| net.config().map_err(|e| SnapshotError::Net(Box::new(e))))
        .collect::<Result<Vec<_>, _>>()?;
    // An unkeyed state file's flow logs are host files anyone could have named.
    if let Some(confine) = confine {
        for config in &mut configs {
            if let Some(log) = config.firewall.as_mut().and_then(|f| f.flow_log.as_mut()) {
                let shown = log.to_string_lossy().into_owned();
                let resolved = confine
                    .created_file("a firewall flow log", &shown)
                    .map_err(|e| SnapshotError::MachineConfig(e.into()))?;
                *log = resolved.into();
            }
        }
    }
    for o in overrides {
        let config = configs
            .iter_mut()
            .find(|c| c.iface_id == o.iface_id)
            .ok_or_else(|| SnapshotError::UnknownNetworkDevice(o.iface_id.clone()))?;
        config.host_dev_name.clone_from(&o.host_dev_name);
    }
    let mut list = InterfaceList::default();
    for config in &configs {
        if list.iter().any(|c| c.iface_id == config.iface_id) {
            return Err(SnapshotError::DuplicateInterface(config.iface_id.clone()));
        }
        list.insert(config.clone())
            .map_err(|e| SnapshotError::NetConfig(Box::new(e)))?;
    }
    let now = Instant::now();
    let restored = nets
        .iter()
        .zip(configs)
        .map(|(net, config)| {
            net.restore(config, now)
                .map_err(|e| SnapshotError::Net(Box::new(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((list, restored))
}

impl Controller {
    /// The states of the running VM's network interfaces, with their configurations in
    /// force.
    fn net_states(&self) -> Result<Vec<NetState>, SnapshotError> {
        self.resources
            .network_interfaces
            .iter()
            .map(|iface| {
                let id = &iface.iface_id;
                let mut net = self
                    .devices
                    .net(id)
                    .ok_or_else(|| SnapshotError::MissingNetDevice(id.clone()))?;
                net.snapshot_state(iface)
                    .map_err(|e| SnapshotError::Save(SaveError::MachineConfig(e)))
            })
            .collect()
    }

    /// `PUT /snapshot/create`.
    pub(super) fn create_snapshot(&mut self, params: &CreateSnapshotParams) -> ActionResult {
        if params.snapshot_type == SnapshotType::Diff
            && !self.resources.machine_config.track_dirty_pages
        {
            return Err(SnapshotError::DiffWithoutTracking.into());
        }
        let Some(vm) = self.running.as_ref() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        let started = Instant::now();
        // An Async drive's requests in flight finish first: none is saved half done.
        for mut block in self.devices.blocks() {
            if block.quiesce() > 0 {
                return Err(SnapshotError::DriveBusy(block.id().to_string()).into());
            }
        }
        let nets = self.net_states()?;
        let balloon = self.devices.balloon().map(|b| (b.config(), b.save_state()));
        let input = SaveInput {
            machine_config: &self.resources.machine_config,
            drives: &self.resources.drives,
            entropy: self.resources.entropy.as_ref(),
            vsock: self.resources.vsock.as_ref(),
            mmds: self.resources.mmds_config.as_ref(),
            balloon,
            transports: self.devices.transports(),
            limiters: self.devices.save_limiters(),
            nets: &nets,
            loaded_memory: self.loaded_memory.as_ref(),
        };
        let written = vm
            .save(&input, params, self.opts.snapshot_key.as_deref())
            .map_err(SnapshotError::Save)?;
        log::info!(
            "Snapshot created ({:?}, {} MiB, {} pages written) in {} ms",
            params.snapshot_type,
            self.resources.machine_config.mem_size_mib,
            written.pages,
            started.elapsed().as_millis()
        );
        let kind = match params.snapshot_type {
            SnapshotType::Full => "full",
            SnapshotType::Diff => "diff",
        };
        log::info!(
            "'create {kind} snapshot' VMM action took {} us.",
            started.elapsed().as_micros()
        );
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/load`. The state file is authenticated (with `--snapshot-key-file`'s
    /// key, else checked for integrity) and bound to the memory file before anything is
    /// built.
    pub(super) fn load_snapshot(&mut self, params: &LoadSnapshotParams) -> ActionResult {
        let started = Instant::now();
        let key = self.opts.snapshot_key.as_deref();
        let bytes = StateFile::read(&params.snapshot_path).map_err(SnapshotError::StateFile)?;
        let opened = StateFile::open(&bytes, key).map_err(SnapshotError::StateFile)?;
        let backend_path = &params.mem_backend.backend_path;
        let memory = match params.mem_backend.backend_type {
            MemBackendType::File => {
                let file = File::open(backend_path).map_err(SnapshotError::MemoryFile)?;
                // Held while the VM runs: no other VM's Diff writes into its pages.
                hold_mapped(&file).map_err(SnapshotError::MemoryFileLock)?;
                opened
                    .check_memory_file(&file)
                    .map_err(SnapshotError::StateFile)?;
                RestoredMemory::File(file)
            }
            // The handler serves the memory: its size is the state file's (checked below),
            // its contents are the handler's responsibility.
            MemBackendType::Uffd if opened.memory.sha256.is_some() => {
                return Err(SnapshotError::UffdWithMemoryHash.into())
            }
            MemBackendType::Uffd => RestoredMemory::Uffd(backend_path.clone()),
        };
        let state: MachineState = opened.state().map_err(SnapshotError::StateFile)?;
        let mut config = state
            .machine_config()
            .map_err(SnapshotError::MachineConfig)?;
        // Not carried by snapshots (as in Firecracker): the load says whether the clone is
        // tracked, all pages clean at first.
        config.track_dirty_pages = params.track_dirty_pages;
        // An unkeyed state file's host paths are anyone's who could write it: confined to
        // the snapshot directories (restored_paths).
        let confine = (!opened.keyed).then(|| Confinement::new(&self.opts.snapshot_dirs));
        if !opened.keyed {
            // Its policy (rate limits, vsock policy, firewall rules) is only as trusted as
            // whoever may write the file: said once per load, where operators look.
            log::warn!(
                "Loading an unkeyed state file: its integrity is checked, not its origin; \
                 its device policy is trusted as written (use --snapshot-key-file)"
            );
        }
        let configs = state
            .device_configs(confine.as_ref())
            .map_err(SnapshotError::MachineConfig)?;
        state
            .validate_clone_state(&configs)
            .map_err(SnapshotError::CloneState)?;
        let CheckedDeviceConfigs {
            drives,
            entropy,
            vsock,
            mmds: mmds_config,
            balloon,
        } = configs;
        if let Some((b, _)) = &balloon {
            b.check_fits(config.mem_size_mib)
                .map_err(|e| SnapshotError::MachineConfig(RestoredConfigError::Balloon(e)))?;
        }
        if state.mem_size != opened.memory.size
            || state.mem_size != (config.mem_size_mib as u64) << 20
            || state.vcpus.len() != usize::from(config.vcpu_count)
        {
            return Err(SnapshotError::Inconsistent.into());
        }
        // Taps are opened (by name, possibly overridden) before anything is built.
        let (interfaces, nets) =
            restore_nets(&state.nets, &params.network_overrides, confine.as_ref())?;
        let vsock = match (vsock, &params.vsock_uds_path) {
            (Some(mut config), uds_path) => {
                match (uds_path, &confine) {
                    (Some(path), _) => config.uds_path.clone_from(path),
                    (None, Some(confine)) => {
                        config.uds_path = confine
                            .socket("a vsock socket", &config.uds_path)
                            .map_err(|e| SnapshotError::MachineConfig(e.into()))?;
                    }
                    (None, None) => {}
                }
                // Checked as PUT /vsock checks it; the listener is bound again (a stale
                // socket at uds_path is replaced).
                let device = create_vsock(&config).map_err(SnapshotError::Vsock)?;
                Some((config, device))
            }
            (None, Some(_)) => return Err(SnapshotError::VsockOverrideWithoutDevice.into()),
            (None, None) => None,
        };
        let (vsock_config, vsock) = vsock.unzip();
        let BuiltVm { vmm, devices } = build_restored_vm(
            &state,
            RestoredConfigs {
                machine: &config,
                drives: &drives,
                entropy: entropy.as_ref(),
                nets,
                vsock,
                balloon: balloon.as_ref(),
                serial: (self.resources.serial.as_ref(), self.serial_out.take()),
            },
            &memory,
            &self.opts,
            params.clock_realtime,
            self.prepared.take(),
        )
        .map_err(SnapshotError::Restore)?;
        // MMDS as Firecracker restores it: the configuration from the state file, the data
        // store this process has (`--metadata`, `PUT /mmds` before the load; empty if none),
        // never one from the file. A new token key: the parent's tokens are refused here.
        let new_store = match (&mmds_config, &self.mmds) {
            (Some(_), None) => Some(MmdsStore::new(self.mmds_size_limit)),
            _ => None,
        };
        self.attach_mmds(
            mmds_config.as_ref(),
            self.mmds.as_ref().or(new_store.as_ref()),
            &devices,
        )
        .map_err(SnapshotError::Mmds)?;
        if let Some(mmds) = &mmds_config {
            log::info!(
                "MMDS {:?} restored on {} with a new token key (tokens issued before the \
                 snapshot are refused); the data store is this process's ({} bytes)",
                mmds.version,
                mmds.network_interfaces.join(", "),
                self.mmds
                    .as_ref()
                    .or(new_store.as_ref())
                    .map_or(0, MmdsStore::size)
            );
        }
        // The restored drives are the VM's (PATCH /drives, GET /vm/config, Landlock).
        self.resources.drives = drives;
        self.resources.entropy = entropy;
        self.resources.vsock = vsock_config;
        self.resources.balloon = balloon.map(|(config, _)| config);
        self.resources.network_interfaces = interfaces;
        if self.opts.landlock {
            // The restored VM is confined as a booted one: its files are open already.
            let line = crate::sandbox::restrict_vmm(&self.landlock_rules())
                .map_err(SnapshotError::Landlock)?;
            log::info!("{line}");
        }
        // Duplicated before the VMM thread's seccomp filter (installed at launch).
        let handler_watch = vmm.uffd.as_ref().and_then(|backend| {
            backend
                .connection()
                .map(|socket| HandlerWatch::new(socket, backend_path.clone()))
                .map_err(|e| log::warn!("Cannot watch the page fault handler's connection: {e}"))
                .ok()
        });
        let running = vmm
            .launch(params.resume_vm)
            .map_err(|e| SnapshotError::Start(Box::new(e)))?;
        self.resources.machine_config = config;
        self.resources.mmds_config = mmds_config;
        if new_store.is_some() {
            self.mmds = new_store;
        }
        self.configured = true;
        self.running = Some(running);
        self.new_subscribers = devices.subscribers();
        if let Some(watch) = handler_watch {
            self.new_subscribers.push(Arc::new(Mutex::new(watch)));
        }
        self.devices = devices;
        if let RestoredMemory::File(file) = memory {
            self.loaded_memory = Some(file);
        }
        log::info!(
            "Snapshot loaded ({} MiB, {} vCPU(s)) in {} ms",
            self.resources.machine_config.mem_size_mib,
            self.resources.machine_config.vcpu_count,
            started.elapsed().as_millis()
        );
        log::info!(
            "'load snapshot' VMM action took {} us.",
            started.elapsed().as_micros()
        );
        Ok(VmmData::Empty)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::rate_limiter::RateLimiterState;

    fn net(id: &str, tap: &str) -> NetState {
        NetState {
            config: json!({"iface_id": id, "host_dev_name": tap}).to_string(),
            rx_limiter: RateLimiterState::default(),
            tx_limiter: RateLimiterState::default(),
            firewall: None,
        }
    }

    fn over(id: &str, tap: &str) -> NetworkOverride {
        NetworkOverride {
            iface_id: id.into(),
            host_dev_name: tap.into(),
        }
    }

    #[test]
    fn an_unkeyed_state_files_flow_log_outside_the_snapshot_dirs_is_refused_before_any_tap_opens() {
        let snap = tempfile::tempdir().unwrap();
        let mut n = net("eth0", "pal-nx0");
        n.config = json!({"iface_id": "eth0", "host_dev_name": "pal-nx0",
            "guest_mac": "02:00:00:00:00:01",
            "firewall": {"allowed_ips": ["10.0.0.2/32"], "flow_log": "/etc/cron.d/palisade"}})
        .to_string();
        let confine = Confinement::new(&[snap.path().to_path_buf()]);
        let e = restore_nets(&[n], &[], Some(&confine)).err().unwrap();
        assert!(matches!(e, SnapshotError::MachineConfig(_)), "{e}");
        assert!(!std::path::Path::new("/etc/cron.d/palisade").exists());
    }

    /// Each refusal comes before any tap is opened (the names do not exist: as root, opening
    /// one would create it).
    #[test]
    fn overrides_of_unknown_interfaces_and_conflicting_interfaces_are_refused_before_any_tap_opens()
    {
        let nets = [net("eth0", "pal-nx0"), net("eth1", "pal-nx1")];
        let e = restore_nets(&nets, &[over("eth9", "pal-nx2")], None)
            .err()
            .unwrap();
        assert!(
            matches!(e, SnapshotError::UnknownNetworkDevice(ref id) if id == "eth9"),
            "{e}"
        );
        assert!(e.to_string().contains("Unknown Network Device"), "{e}");
        let e = restore_nets(&nets, &[over("eth1", "pal-nx0")], None)
            .err()
            .unwrap();
        assert!(matches!(e, SnapshotError::NetConfig(_)), "{e}");
        let e = restore_nets(&[net("eth0", "pal-nx0"), net("eth0", "pal-nx1")], &[], None)
            .err()
            .unwrap();
        assert!(matches!(e, SnapshotError::DuplicateInterface(_)), "{e}");
        let e = restore_nets(&nets, &[over("eth0", "a/b")], None)
            .err()
            .unwrap();
        assert!(matches!(e, SnapshotError::NetConfig(_)), "{e}");
        let mut bad = net("eth0", "pal-nx0");
        bad.config = "{".into();
        let e = restore_nets(&[bad], &[], None).err().unwrap();
        assert!(matches!(e, SnapshotError::Net(_)), "{e}");
    }
}
