//! The KVM VM: capabilities checked, in-kernel irqchip and PIT, guest RAM registered.

use std::sync::OnceLock;

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
    /// A set-up thread (irqchip and PIT, memory registration) could not start or did not
    /// finish.
    #[error("A VM set-up thread failed")]
    SetupThread(#[source] std::io::Error),
}

/// The VM and the host KVM handle it came from.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    /// KVM's CPUID list, once read (`supported_cpuid`).
    supported: OnceLock<CpuId>,
}

impl Vm {
    /// Opens /dev/kvm, checks the API version and capabilities, and creates a VM with the
    /// in-kernel irqchip and PIT.
    pub fn new() -> Result<Self, VmError> {
        let vm = Self::bare()?;
        vm.create_irqchip_and_pit()?;
        Ok(vm)
    }

    /// Runs `meanwhile` on this thread while a scoped thread creates the in-kernel irqchip
    /// and PIT of a `bare` VM; returns once both are done, an irqchip or PIT error first.
    /// Both ioctls spend most of their time asleep in KVM (SRCU grace periods, the PIT's
    /// kernel thread): overlapped with other work, the waits cost nothing. `meanwhile` must
    /// not need the irqchip (no irqfd, no vCPU).
    pub fn create_irqchip_and_pit_while<T, E: From<VmError>>(
        &self,
        meanwhile: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        overlap(|| self.create_irqchip_and_pit(), meanwhile)
    }

    /// Runs `meanwhile` on this thread while a scoped thread registers `mem` (as
    /// `register_memory`); returns once both are done, a registration error first. KVM waits
    /// for an SRCU grace period to install a memory slot; overlapped, that wait costs
    /// nothing. `meanwhile` must not run the guest.
    pub fn register_memory_while<T, E: From<VmError>>(
        &self,
        mem: &GuestMemory,
        meanwhile: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        overlap(|| self.register_memory(mem), meanwhile)
    }

    /// The VM without irqchip and PIT (`create_irqchip_and_pit_while` makes them).
    pub fn bare() -> Result<Self, VmError> {
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
        Ok(Self {
            kvm,
            fd,
            supported: OnceLock::new(),
        })
    }

    /// KVM_CREATE_IRQCHIP, then KVM_CREATE_PIT2 (KVM wants the PIC first).
    fn create_irqchip_and_pit(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the in-kernel PIT", e))
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The CPUID entries KVM supports on this host, asked of KVM at the first call only (it
    /// costs CPU: KVM executes CPUID for every leaf, a trap of its own on a nested host); a
    /// failed read is not kept, the next call asks again.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        if let Some(cpuid) = self.supported.get() {
            return Ok(cpuid.clone());
        }
        let cpuid = self
            .kvm
            .get_supported_cpuid(MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("read the supported CPUID", e))?;
        Ok(self.supported.get_or_init(|| cpuid).clone())
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

/// Runs `background` on a scoped thread and `meanwhile` here; both results once both are done,
/// `background`'s error first.
fn overlap<T, E: From<VmError>>(
    background: impl FnOnce() -> Result<(), VmError> + Send,
    meanwhile: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("vmm-setup".to_string())
            .spawn_scoped(scope, background)
            .map_err(VmError::SetupThread)?;
        let out = meanwhile();
        handle
            .join()
            .unwrap_or_else(|_| Err(VmError::SetupThread(std::io::Error::other("it panicked"))))?;
        out
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn overlap_runs_the_background_while_meanwhile_runs() {
        // Each side waits for the other: done one after the other, neither would see its
        // message before the deadline.
        let (to_background, background_rx) = channel();
        let (to_meanwhile, meanwhile_rx) = channel();
        let out = overlap(
            move || {
                to_meanwhile.send(()).unwrap();
                background_rx.recv_timeout(DEADLINE).unwrap();
                Ok(())
            },
            move || {
                to_background.send(()).unwrap();
                meanwhile_rx.recv_timeout(DEADLINE).unwrap();
                Ok::<_, VmError>(7)
            },
        );
        assert_eq!(out.unwrap(), 7);
    }

    #[test]
    fn overlap_reports_the_background_error_before_meanwhiles() {
        let out: Result<(), VmError> = overlap(
            || Err(VmError::TooManySlots),
            || Err(VmError::ApiVersion(1)),
        );
        assert!(matches!(out, Err(VmError::TooManySlots)), "{out:?}");
        let out: Result<(), VmError> = overlap(|| Ok(()), || Err(VmError::ApiVersion(1)));
        assert!(matches!(out, Err(VmError::ApiVersion(1))), "{out:?}");
    }

    #[test]
    fn kvms_cpuid_list_is_kept_after_the_first_read_and_given_unchanged() {
        let Some(vm) = crate::vstate::snapshot::test_kvm::vm_or_skip(
            "kvms_cpuid_list_is_kept_after_the_first_read_and_given_unchanged",
        ) else {
            return;
        };
        assert!(vm.supported.get().is_none());
        let first = vm.supported_cpuid().unwrap();
        assert!(vm.supported.get().is_some());
        let asked = vm.kvm.get_supported_cpuid(MAX_CPUID_ENTRIES).unwrap();
        assert_eq!(first.as_slice(), asked.as_slice());
        assert_eq!(vm.supported_cpuid().unwrap().as_slice(), first.as_slice());
    }
}
