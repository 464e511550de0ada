//! The controller's snapshot actions: `PUT /snapshot/create` on a paused VM and
//! `PUT /snapshot/load` on a fresh VMM (the rules have checked the state). A VM with a
//! device whose state snapshots do not carry yet is refused with a clear 400 before any file
//! is written; a load authenticates the state file and binds it to the memory file (with the
//! Uffd backend: to the memory size the handler is told) before anything is built, so a
//! refused load leaves the VMM fresh and usable.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::vsock::create_vsock;
use super::Controller;
use crate::snapshot::StateFile;
use crate::vmm::action::{ActionError, ActionResult, VmmData};
use crate::vmm::builder::{build_restored_vm, BuiltVm, RestoredConfigs, RestoredMemory};
use crate::vmm::machine_state::{CheckedDeviceConfigs, MachineState, SaveInput};
use crate::vmm::restored_paths::Confinement;
use crate::vmm::snapshot::{
    CreateSnapshotParams, LoadSnapshotParams, MemBackendType, SnapshotError, SnapshotType,
};
use crate::vmm::uffd_watch::HandlerWatch;

impl Controller {
    /// The first device of this VM that snapshots cannot carry yet, if any.
    fn unsupported_device(&self) -> Option<&'static str> {
        if self.resources.network_interfaces.iter().next().is_some() {
            return Some("network interfaces");
        }
        None
    }

    /// `PUT /snapshot/create`.
    pub(super) fn create_snapshot(&mut self, params: &CreateSnapshotParams) -> ActionResult {
        if let Some(device) = self.unsupported_device() {
            return Err(SnapshotError::UnsupportedDevice(device).into());
        }
        if params.snapshot_type == SnapshotType::Diff
            && !self.resources.machine_config.track_dirty_pages
        {
            return Err(SnapshotError::DiffWithoutTracking.into());
        }
        let Some(vm) = self.running.as_ref() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        let started = Instant::now();
        let input = SaveInput {
            machine_config: &self.resources.machine_config,
            drives: &self.resources.drives,
            entropy: self.resources.entropy.as_ref(),
            vsock: self.resources.vsock.as_ref(),
            transports: self.devices.transports(),
            limiters: self.devices.save_limiters(),
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
        } = configs;
        if state.mem_size != opened.memory.size
            || state.mem_size != (config.mem_size_mib as u64) << 20
            || state.vcpus.len() != usize::from(config.vcpu_count)
        {
            return Err(SnapshotError::Inconsistent.into());
        }
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
                vsock,
            },
            &memory,
            &self.opts,
            params.clock_realtime,
        )
        .map_err(SnapshotError::Restore)?;
        // The restored drives are the VM's (PATCH /drives, GET /vm/config, Landlock).
        self.resources.drives = drives;
        self.resources.entropy = entropy;
        self.resources.vsock = vsock_config;
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
        self.configured = true;
        self.running = Some(running);
        self.new_subscribers = devices.subscribers();
        if let Some(watch) = handler_watch {
            self.new_subscribers.push(Arc::new(Mutex::new(watch)));
        }
        self.devices = devices;
        log::info!(
            "Snapshot loaded ({} MiB, {} vCPU(s)) in {} ms",
            self.resources.machine_config.mem_size_mib,
            self.resources.machine_config.vcpu_count,
            started.elapsed().as_millis()
        );
        Ok(VmmData::Empty)
    }
}
