//! The KVM VM: capabilities checked, in-kernel irqchip and PIT, guest RAM registered.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;
use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// KVM API version this VMM speaks.
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 8] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Most CPUID entries asked of KVM.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Errors of VM creation.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("Cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// Wrong KVM API version.
    #[error("/dev/kvm does not answer as KVM API version {KVM_API_VERSION} (it answered {0})")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("The host's KVM lacks {0}")]
    MissingCap(&'static str),
    /// A KVM VM ioctl failed.
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Too many memory regions.
    #[error("Too many guest memory regions for KVM's slots")]
    TooManySlots,
}

/// The VM and the host KVM handle it came from.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks the API version and capabilities, and creates a VM with the
    /// in-kernel irqchip and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create the VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the in-kernel PIT", e))?;
        Ok(Self { kvm, fd })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The CPUID entries KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("read the supported CPUID", e))
    }

    /// The host's KVM handle (snapshots ask it for the MSR list and the XSAVE size).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Registers every region of guest RAM with KVM, one slot each (slot n = region n). Memory
    /// created with dirty page tracking is registered with KVM_MEM_LOG_DIRTY_PAGES: KVM logs
    /// the pages the guest writes, read and cleared by KVM_GET_DIRTY_LOG for Diff snapshots.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        let flags = if super::dirty::is_tracking(mem) {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let max_slots = self.kvm.get_nr_memslots();
        for (slot, region) in mem.iter().enumerate() {
            if slot >= max_slots {
                return Err(VmError::TooManySlots);
            }
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::TooManySlots)?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region maps `memory_size` bytes at `host` and lives as long as the
            // VM: the builder keeps the GuestMemory alive for the life of the process.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|e| VmError::Kvm("register guest memory", e))?;
        }
        Ok(())
    }

    /// Routes `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Kvm("register an irqfd", e))
    }
}
