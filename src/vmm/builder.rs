//! Turns a validated configuration into a VM ready to run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::CpuId;

use crate::arch::x86_64::boot_params::{write_boot_params, BootInfo};
use crate::arch::x86_64::cpu_template::{CpuTemplateError, HostCpu};
use crate::arch::x86_64::cpuid::VcpuTopology;
use crate::arch::x86_64::layout::{
    BOOT_TIMER_SIZE, BOOT_TIMER_START, GENERATION_ID_SIZE, GENERATION_ID_START, I8042_KBD_IRQ,
    I8042_PORT, I8042_PORT_LEN, SERIAL_IRQ, SERIAL_PORT,
};
use crate::arch::x86_64::mptable::{self, setup_mptable};
use crate::config::{BootFiles, HugePages, VmResources};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{BusError, Buses};
use crate::devices::generation_id::{GenerationError, GenerationIdDevice, GenerationState};
use crate::devices::i8042::{I8042Device, I8042State, I8042StateError};
use crate::devices::serial::{EventFdTrigger, SerialDevice, UartState};
use crate::devices::serial_output::{BoundedOutput, ByteBucket};
use crate::devices::virtio::balloon::{check_memory_options, BalloonError};
use crate::devices::virtio::vsock::Vsock;
use crate::seccomp::SeccompFilters;
use crate::vmm::device_manager::{
    attach_devices, AttachContext, AttachError, DeviceConfigs, Slots, VirtioDevices,
};
use crate::vstate::exit::ExitRequest;
use crate::vstate::memory::{create_guest_memory, Backing, MemoryError, MemoryOptions};
use crate::vstate::snapshot::uffd::{hand_to_handler, UffdError};
use crate::vstate::snapshot::{map_memory_file, Host, MemoryFileError, StateError};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuShared};
use crate::vstate::vm::{Vm, VmError};

use super::clone_state::CloneStateError;
use super::kernel::{self, KernelError};
use super::machine_state::MachineState;
use super::taps::OpenTaps;
use super::Vmm;

/// Errors of VM building.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No boot source was configured.
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernelConfig,
    /// KVM VM creation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory creation failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A restored balloon's state is refused.
    #[error("Cannot restore the balloon")]
    BalloonState(#[source] crate::devices::virtio::balloon::BalloonStateError),
    /// The balloon cannot give back this kind of guest memory.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// Kernel, initrd or command line loading failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Zero page or PVH start info setup failed.
    #[error("Cannot write the boot parameters")]
    BootParams(#[from] crate::arch::x86_64::boot_params::BootParamsError),
    /// MP table setup failed.
    #[error("Cannot write the MP table")]
    Mptable(#[from] mptable::MptableError),
    /// A device could not be placed on its bus.
    #[error("Cannot attach a device")]
    Bus(#[from] BusError),
    /// An eventfd could not be created.
    #[error("Cannot create an event")]
    Event(#[source] std::io::Error),
    /// vCPU creation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The CPU template cannot be used on this host (Firecracker's checks).
    #[error(transparent)]
    CpuTemplate(#[from] CpuTemplateError),
    /// A snapshot's vCPU or VM state was refused, or this host cannot restore it.
    #[error("Cannot restore the snapshot's machine state")]
    Restore(#[source] StateError),
    /// The serial port's state was refused.
    #[error("Cannot restore the serial port")]
    Uart(#[source] std::io::Error),
    /// A virtio transport's state was refused.
    #[error("Cannot restore a virtio device")]
    Transport(#[source] crate::devices::virtio::mmio::TransportStateError),
    /// The snapshot's memory file cannot be mapped.
    #[error("Cannot map the snapshot memory file")]
    MemoryFile(#[source] MemoryFileError),
    /// A virtio device could not be created or attached.
    #[error(transparent)]
    Virtio(#[from] AttachError),
    /// The generation ID cannot be made.
    #[error("Cannot set up the generation ID")]
    Generation(#[source] GenerationError),
    /// The i8042 controller's state was refused.
    #[error("Cannot restore the i8042 controller")]
    I8042(#[source] I8042StateError),
    /// The rate limiters' state was refused.
    #[error("Cannot restore the rate limiters")]
    Limiters(#[source] CloneStateError),
    /// The generation ID cannot be added to the command line.
    #[error("Cannot add the generation ID to the kernel command line")]
    GenerationCmdline(#[source] linux_loader::cmdline::Error),
    /// Guest memory could not be handed to the snapshot's page fault handler (Uffd).
    #[error("Cannot hand guest memory to the page fault handler")]
    Uffd(#[source] UffdError),
}

/// A built VM and its virtio devices (which the controller keeps for run-time updates and
/// hands to the event loop).
pub struct BuiltVm {
    /// The VM, vCPUs not started.
    pub vmm: Vmm,
    /// Drives, the entropy device, the network interfaces and the vsock device.
    pub devices: VirtioDevices,
}

/// Options of the build that come from the command line rather than the config.
#[derive(Clone)]
pub struct BuildOptions {
    /// Attach Firecracker's boot timer.
    pub boot_timer: bool,
    /// Where devices and vCPUs ask the VM to end.
    pub exit: Arc<ExitRequest>,
    /// Seccomp filters for the VMM and vCPU threads.
    pub seccomp: Arc<SeccompFilters>,
    /// Confine the VMM thread with its Landlock layer before building.
    pub landlock: bool,
    /// The orchestrator's snapshot key (`--snapshot-key-file`); without it state files are
    /// checked for integrity only.
    pub snapshot_key: Option<Arc<crate::snapshot::SnapshotKey>>,
    /// Directories where `PUT /snapshot/create` may write under the Landlock layer
    /// (`--snapshot-dir`).
    pub snapshot_dirs: Vec<std::path::PathBuf>,
}

/// What was opened while the resources were checked, for the build to use rather than open
/// again.
pub struct OpenedFiles {
    /// The boot source's kernel and initrd.
    pub boot: BootFiles,
    /// The network interfaces' taps.
    pub taps: OpenTaps,
    /// The vsock device, created (its listener bound) before the Landlock layer.
    pub vsock: Option<Vsock>,
    /// The KVM VM, with its irqchip and PIT, when it was made ahead (API mode).
    pub vm: Option<Vm>,
    /// The console's output file or FIFO (`PUT /serial`), stdout when `None`.
    pub serial: Option<crate::devices::serial_config::SerialOutputFile>,
}

/// Builds the VM: KVM VM, guest memory, kernel, initrd, devices (the virtio ones add to the
/// command line), command line, boot parameters, MP table and configured vCPUs (not yet
/// running).
pub fn build_vm(
    resources: &VmResources,
    opts: &BuildOptions,
    opened: OpenedFiles,
) -> Result<BuiltVm, BuildError> {
    // The boot timer counts from here: the start of building the VM.
    let boot_timer = opts
        .boot_timer
        .then(|| Arc::new(Mutex::new(BootTimer::new(Instant::now()))));
    let boot = resources
        .boot_source
        .as_ref()
        .ok_or(BuildError::MissingKernelConfig)?;
    let machine = &resources.machine_config;
    let template = machine
        .cpu_template
        .as_ref()
        .map(|t| t.resolve(HostCpu::probe()))
        .transpose()?
        .flatten();
    let memory_options = MemoryOptions {
        backing: match machine.huge_pages {
            HugePages::None => Backing::Normal,
            HugePages::Transparent => Backing::Transparent,
            HugePages::Hugetlbfs2M => Backing::Huge2M,
        },
        lock: machine.mem_lock,
        track_dirty_pages: machine.track_dirty_pages,
    };
    if resources.balloon.is_some() {
        check_memory_options(&memory_options)?;
    }
    let OpenedFiles {
        boot: files,
        taps,
        vsock,
        vm: prepared,
        serial: serial_out,
    } = opened;
    let BootFiles {
        kernel: mut kernel_file,
        initrd: initrd_file,
    } = files;
    let (vm, irqchip_made) = match prepared {
        Some(vm) => (vm, true),
        None => (Vm::bare()?, false),
    };
    let mem = create_guest_memory((machine.mem_size_mib as u64) << 20, memory_options)?;
    let load = || {
        let kernel = kernel::load_kernel(&mem, &mut kernel_file, &boot.kernel_image_path)?;
        let initrd_path = boot.initrd_path.as_deref().unwrap_or_default();
        let initrd = initrd_file
            .map(|mut file| kernel::load_initrd(&mem, &mut file, initrd_path, kernel.end))
            .transpose()?;
        Ok::<_, BuildError>((kernel, initrd))
    };
    // KVM's VM-level set-up sleeps on grace periods: guest memory is registered on one
    // thread for the whole build, and the irqchip and PIT made on another while the kernel
    // loads. Both are done before anything runs the guest.
    let (devices, legacy, generation, vcpus, supported, buses, exit) =
        vm.register_memory_while(&mem, || {
            // KVM's CPUID list (read once, kept by the VM) costs CPU, not sleep: read while
            // the irqchip and PIT wait on grace periods (a VM prepared ahead read it then).
            let (kernel, initrd) = if irqchip_made {
                load()?
            } else {
                vm.create_irqchip_and_pit_while(|| {
                    let loaded = load()?;
                    vm.supported_cpuid()?;
                    Ok::<_, BuildError>(loaded)
                })?
            };
            let exit = opts.exit.clone();
            let mut buses = Buses::default();
            let out = console_output(resources.serial.as_ref(), serial_out);
            let legacy = legacy_devices(&vm, &exit, &mut buses, None, out)?;
            let generation = GenerationState::first().map_err(BuildError::Generation)?;
            attach_generation_id(&mut buses, &generation)?;
            if let Some(timer) = boot_timer {
                buses
                    .mmio
                    .insert(timer, BOOT_TIMER_START, BOOT_TIMER_SIZE)?;
            }
            let mut cmdline = kernel::build_command_line(boot.boot_args.as_deref())?;
            let devices = attach_devices(
                &mut AttachContext {
                    vm: vm.fd(),
                    mem: &mem,
                    mmio: &mut buses.mmio,
                    cmdline: &mut cmdline,
                    slots: Slots::default(),
                },
                DeviceConfigs {
                    drives: &resources.drives,
                    entropy: resources.entropy.as_ref(),
                    nets: &resources.network_interfaces,
                    taps,
                    restored_nets: Vec::new(),
                    vsock,
                    balloon: resources.balloon.as_ref(),
                },
            )?;
            cmdline
                .insert(
                    "palisade_genid",
                    &format!("{}K@{GENERATION_ID_START:#x}", GENERATION_ID_SIZE >> 10),
                )
                .map_err(BuildError::GenerationCmdline)?;
            let cmdline_len = kernel::load_command_line(&mem, &cmdline)?;
            write_boot_params(
                &mem,
                &BootInfo {
                    cmdline_len,
                    initrd,
                    setup_header: kernel.setup_header,
                    mode: kernel.entry.mode,
                },
            )?;
            setup_mptable(&mem, machine.vcpu_count)?;
            log::info!(
                "Kernel {} loaded, entry {:#x} ({:?}), {} vCPU(s), {} MiB",
                boot.kernel_image_path,
                kernel.entry.address,
                kernel.entry.mode,
                machine.vcpu_count,
                machine.mem_size_mib
            );

            // The vCPUs and the snapshot host probe both need it.
            let supported = vm.supported_cpuid()?;
            let vcpus = (0..machine.vcpu_count)
                .map(|index| {
                    let topo = VcpuTopology {
                        index,
                        count: machine.vcpu_count,
                        smt: machine.smt,
                    };
                    Vcpu::new(&vm, &mem, &supported, topo, kernel.entry, template.as_ref())
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, BuildError>((devices, legacy, generation, vcpus, supported, buses, exit))
        })?;
    let (serial, i8042) = legacy;

    let shared = Arc::new(VcpuShared::new(
        Arc::new(buses),
        mem,
        exit,
        probe_snapshot_host(&vm, &supported),
    ));
    let vmm = Vmm {
        vm,
        vcpus,
        shared,
        serial,
        i8042,
        seccomp: opts.seccomp.clone(),
        generation,
        uffd: None,
    };
    Ok(BuiltVm { vmm, devices })
}

/// Places the read-only generation ID page showing `generation` on the MMIO bus.
fn attach_generation_id(buses: &mut Buses, generation: &GenerationState) -> Result<(), BuildError> {
    let device = Arc::new(Mutex::new(GenerationIdDevice::new(generation)));
    buses
        .mmio
        .insert(device, GENERATION_ID_START, GENERATION_ID_SIZE)?;
    Ok(())
}

/// The console's output: the `PUT /serial` file or FIFO with its budget and total, or stdout
/// with the default budget.
fn console_output(
    config: Option<&crate::config::SerialConfig>,
    opened: Option<crate::devices::serial_config::SerialOutputFile>,
) -> Box<dyn std::io::Write + Send> {
    let (burst, per_sec, credit) = config.map(|c| c.budget()).unwrap_or((
        crate::devices::serial_output::BURST_BYTES,
        crate::devices::serial_output::BYTES_PER_SEC,
        0,
    ));
    let bucket = ByteBucket::new(burst, per_sec, std::time::Instant::now()).with_credit(credit);
    match opened {
        Some(out) => {
            Box::new(BoundedOutput::with_bucket(out.file, bucket).with_total(out.total_cap))
        }
        None => Box::new(BoundedOutput::with_bucket(std::io::stdout(), bucket)),
    }
}

/// The serial port and the i8042 controller.
type LegacyDevices = (Arc<Mutex<SerialDevice>>, Arc<Mutex<I8042Device>>);

/// The serial port and the i8042 controller, on the port bus with their interrupts.
fn legacy_devices(
    vm: &Vm,
    exit: &Arc<ExitRequest>,
    buses: &mut Buses,
    saved: Option<(&UartState, &I8042State)>,
    out: Box<dyn std::io::Write + Send>,
) -> Result<LegacyDevices, BuildError> {
    let trigger = EventFdTrigger::new().map_err(BuildError::Event)?;
    let serial = match saved.map(|s| s.0) {
        Some(state) => SerialDevice::from_state(state, trigger, out).map_err(BuildError::Uart)?,
        None => SerialDevice::new(trigger, out),
    };
    vm.register_irqfd(serial.interrupt_event(), SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(serial));
    buses
        .pio
        .insert(serial.clone(), u64::from(SERIAL_PORT), 8)?;
    let i8042 = match saved.map(|s| s.1) {
        Some(state) => I8042Device::from_state(exit.clone(), state).map_err(BuildError::I8042)?,
        None => I8042Device::new(exit.clone()).map_err(BuildError::Event)?,
    };
    vm.register_irqfd(i8042.interrupt_event(), I8042_KBD_IRQ)?;
    let i8042 = Arc::new(Mutex::new(i8042));
    buses.pio.insert(
        i8042.clone(),
        u64::from(I8042_PORT),
        u64::from(I8042_PORT_LEN),
    )?;
    Ok((serial, i8042))
}

/// What snapshots of this VM check against, asked of KVM before any seccomp filter; a host
/// that cannot snapshot still boots.
fn probe_snapshot_host(vm: &Vm, supported: &CpuId) -> Option<Host> {
    Host::probe_with(vm.kvm(), supported)
        .map_err(|e| log::warn!("Snapshots are unavailable on this host: {e}"))
        .ok()
}

/// Where a restored VM's memory comes from (`mem_backend` of `PUT /snapshot/load`).
pub enum RestoredMemory {
    /// The memory file (checked against the state file by the caller), mapped private.
    File(std::fs::File),
    /// Fresh anonymous memory whose pages the handler listening on this socket fills as they
    /// are first touched (`vstate::snapshot::uffd`).
    Uffd(std::path::PathBuf),
}

/// Builds a VM from a snapshot: KVM VM, guest memory (mapped private from the memory file, or
/// anonymous and handed to the Uffd handler before anything may touch it; tracked for dirty
/// pages, all clean, when the machine configuration says `track_dirty_pages`), the legacy
/// devices, then each vCPU and the VM state restored (both validated first). Nothing is
/// loaded or written into guest memory.
pub fn build_restored_vm(
    state: &MachineState,
    configs: RestoredConfigs<'_>,
    memory: &RestoredMemory,
    opts: &BuildOptions,
    clock_realtime: bool,
    prepared: Option<Vm>,
) -> Result<BuiltVm, BuildError> {
    let machine = configs.machine;
    let serial = configs.serial;
    let vm = match prepared {
        Some(vm) => vm,
        None => Vm::new()?,
    };
    let host = Host::probe(vm.kvm()).map_err(BuildError::Restore)?;
    // Every vCPU's and the VM's state is checked before guest memory exists: a state refused
    // here costs no mapping and never reaches a Uffd handler (which keeps the userfaultfd, a
    // reach into this process's address space, even after a refused load).
    for (index, vcpu) in state.vcpus.iter().enumerate() {
        let index = u8::try_from(index)
            .map_err(|_| BuildError::Restore(StateError::Invalid("vCPU count")))?;
        vcpu.validate(index, &host).map_err(BuildError::Restore)?;
    }
    state.vm.validate().map_err(BuildError::Restore)?;
    let memory_options = MemoryOptions {
        backing: Backing::Normal,
        lock: machine.mem_lock,
        track_dirty_pages: machine.track_dirty_pages,
    };
    if configs.balloon.is_some() {
        check_memory_options(&memory_options)?;
    }
    let mem = match memory {
        RestoredMemory::File(file) => {
            map_memory_file(file, state.mem_size, memory_options).map_err(BuildError::MemoryFile)?
        }
        RestoredMemory::Uffd(_) => create_guest_memory(state.mem_size, memory_options)?,
    };
    vm.register_memory(&mem)?;
    let exit = opts.exit.clone();
    let mut buses = Buses::default();
    let (serial, i8042) = legacy_devices(
        &vm,
        &exit,
        &mut buses,
        Some((&state.serial, &state.i8042)),
        console_output(serial.0, serial.1),
    )?;
    // The clone sees a new generation: a new random ID, the counter plus one.
    let generation = state.generation.next().map_err(BuildError::Generation)?;
    attach_generation_id(&mut buses, &generation)?;
    // The handler gets the memory before KVM state is restored: restoring it may make KVM
    // read guest pages (a kvmclock page), and a registered page nobody serves would block
    // this thread for good.
    let uffd = match memory {
        RestoredMemory::File(_) => None,
        RestoredMemory::Uffd(socket) => {
            Some(hand_to_handler(&mem, socket).map_err(BuildError::Uffd)?)
        }
    };
    let vcpus = state
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, vcpu)| {
            let index = u8::try_from(index)
                .map_err(|_| BuildError::Restore(StateError::Invalid("vCPU count")))?;
            Ok(Vcpu::restored(&vm, index, vcpu, &host)?)
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    state
        .vm
        .restore(vm.fd(), clock_realtime)
        .map_err(BuildError::Restore)?;
    // Devices after the VM's interrupt controllers, so a re-raised interrupt is not lost.
    // Their command line entries are already in the restored memory: this one is dropped.
    let mut cmdline = kernel::build_command_line(None)?;
    let devices = attach_devices(
        &mut AttachContext {
            vm: vm.fd(),
            mem: &mem,
            mmio: &mut buses.mmio,
            cmdline: &mut cmdline,
            slots: Slots::default(),
        },
        DeviceConfigs {
            drives: configs.drives,
            entropy: configs.entropy,
            nets: &Default::default(),
            taps: OpenTaps::default(),
            restored_nets: configs.nets,
            vsock: configs.vsock,
            balloon: configs.balloon.map(|(config, _)| config),
        },
    )?;
    if devices.transports().len() != state.transports.len() {
        return Err(BuildError::Restore(StateError::Invalid(
            "virtio transport count",
        )));
    }
    for (transport, saved) in devices.transports().iter().zip(&state.transports) {
        transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(saved)
            .map_err(BuildError::Transport)?;
    }
    devices
        .restore_limiters(&state.limiters)
        .map_err(BuildError::Limiters)?;
    // After its transport: the pages and buffer it held belong to an active device.
    if let (Some(mut balloon), Some((_, saved))) = (devices.balloon(), configs.balloon) {
        balloon
            .restore_state(saved)
            .map_err(BuildError::BalloonState)?;
        balloon.end_hinting_after_restore();
    }
    // Its host sockets are not in the snapshot: the guest's connections end and its driver
    // is told with a transport reset event.
    if let Some(mut vsock) = devices.vsock() {
        vsock.restored();
    }
    let shared = Arc::new(VcpuShared::new(Arc::new(buses), mem, exit, Some(host)));
    let vmm = Vmm {
        vm,
        vcpus,
        shared,
        serial,
        i8042,
        seccomp: opts.seccomp.clone(),
        generation,
        uffd,
    };
    Ok(BuiltVm { vmm, devices })
}

/// The configurations a restored VM is built with (checked from its state file), its network
/// interfaces and its vsock device (created, its taps opened and its listener bound, by the
/// caller).
pub struct RestoredConfigs<'a> {
    /// The machine.
    pub machine: &'a crate::config::MachineConfig,
    /// The drives, root first (their files are opened again).
    pub drives: &'a crate::config::DriveList,
    /// The entropy device.
    pub entropy: Option<&'a crate::config::EntropyConfig>,
    /// The network interfaces (taps open, firewalls restored).
    pub nets: Vec<crate::devices::virtio::net::snapshot::RestoredNet>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
    /// The balloon's configuration and run-time state.
    pub balloon: Option<&'a (
        crate::devices::virtio::balloon::BalloonConfig,
        crate::devices::virtio::balloon::BalloonState,
    )>,
    /// The console's output (`PUT /serial` before the load) and its configuration.
    pub serial: (
        Option<&'a crate::config::SerialConfig>,
        Option<crate::devices::serial_config::SerialOutputFile>,
    ),
}
