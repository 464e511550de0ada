//! Turns a validated configuration into a VM ready to run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::arch::x86_64::boot_params::{write_boot_params, BootInfo};
use crate::arch::x86_64::cpuid::VcpuTopology;
use crate::arch::x86_64::layout::{
    BOOT_TIMER_SIZE, BOOT_TIMER_START, I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN, SERIAL_IRQ,
    SERIAL_PORT,
};
use crate::arch::x86_64::mptable::{self, setup_mptable};
use crate::config::{BootFiles, HugePages, VmResources};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{BusError, Buses};
use crate::devices::i8042::I8042Device;
use crate::devices::serial::{EventFdTrigger, SerialDevice};
use crate::devices::serial_output::BoundedOutput;
use crate::devices::virtio::vsock::Vsock;
use crate::seccomp::SeccompFilters;
use crate::vmm::device_manager::{
    attach_devices, AttachContext, AttachError, DeviceConfigs, Slots, VirtioDevices,
};
use crate::vstate::exit::ExitRequest;
use crate::vstate::memory::{create_guest_memory, Backing, MemoryError, MemoryOptions};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuShared};
use crate::vstate::vm::{Vm, VmError};

use super::kernel::{self, KernelError};
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
    /// A virtio device could not be created or attached.
    #[error(transparent)]
    Virtio(#[from] AttachError),
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
    let vm = Vm::new()?;
    let memory_options = MemoryOptions {
        backing: match machine.huge_pages {
            HugePages::None => Backing::Normal,
            HugePages::Transparent => Backing::Transparent,
            HugePages::Hugetlbfs2M => Backing::Huge2M,
        },
        lock: machine.mem_lock,
    };
    let mem = create_guest_memory((machine.mem_size_mib as u64) << 20, memory_options)?;
    vm.register_memory(&mem)?;

    let OpenedFiles {
        boot: files,
        taps,
        vsock,
    } = opened;
    let BootFiles {
        kernel: mut kernel_file,
        initrd: initrd_file,
    } = files;
    let kernel = kernel::load_kernel(&mem, &mut kernel_file, &boot.kernel_image_path)?;
    let initrd_path = boot.initrd_path.as_deref().unwrap_or_default();
    let initrd = initrd_file
        .map(|mut file| kernel::load_initrd(&mem, &mut file, initrd_path, kernel.end))
        .transpose()?;
    let exit = opts.exit.clone();
    let mut buses = Buses::default();
    let serial = SerialDevice::new(
        EventFdTrigger::new().map_err(BuildError::Event)?,
        Box::new(BoundedOutput::new(std::io::stdout())),
    );
    vm.register_irqfd(serial.interrupt_event(), SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(serial));
    buses
        .pio
        .insert(serial.clone(), u64::from(SERIAL_PORT), 8)?;
    let i8042 = I8042Device::new(exit.clone()).map_err(BuildError::Event)?;
    vm.register_irqfd(i8042.interrupt_event(), I8042_KBD_IRQ)?;
    let i8042 = Arc::new(Mutex::new(i8042));
    buses.pio.insert(
        i8042.clone(),
        u64::from(I8042_PORT),
        u64::from(I8042_PORT_LEN),
    )?;
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
            vsock,
        },
    )?;
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

    let supported = vm.supported_cpuid()?;
    let vcpus = (0..machine.vcpu_count)
        .map(|index| {
            let topo = VcpuTopology {
                index,
                count: machine.vcpu_count,
                smt: machine.smt,
            };
            Vcpu::new(&vm, &mem, &supported, topo, kernel.entry)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let shared = Arc::new(VcpuShared::new(Arc::new(buses), mem, exit));
    let vmm = Vmm {
        vm,
        vcpus,
        shared,
        serial,
        i8042,
        seccomp: opts.seccomp.clone(),
    };
    Ok(BuiltVm { vmm, devices })
}
