//! Snapshot state of the KVM objects (issue 14): each vCPU's registers, special registers,
//! XSAVE area, XCRs, MSRs, LAPIC, debug registers, events, MP state and TSC frequency
//! (`vcpu_state`), the VM's PIC, IOAPIC, PIT and kvmclock (`vm_state`), and guest memory to
//! and from a file (`memory_file`) or an external page fault handler (`uffd`). Restore treats every value as hostile: it is checked
//! against the host (`Host`) and against the architecture before KVM sees it, and a bad value
//! fails the restore with a `StateError`.

pub mod memory_file;
pub mod memory_lock;
pub mod msrs;
pub mod raw;
pub mod uffd;
pub mod uffd_abi;
pub mod vcpu_state;
pub mod vm_state;

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm};

pub use memory_file::{
    map_memory, map_memory_file, prepare_full_memory, write_diff_memory, write_memory, MemoryDump,
    MemoryFileError, MemoryWritten,
};
pub use memory_lock::hold_mapped;
pub use vcpu_state::VcpuState;
pub use vm_state::VmState;

/// Size of the legacy XSAVE area (KVM_GET_XSAVE), in 32-bit words.
const LEGACY_XSAVE_WORDS: usize = 1024;

/// Errors of capturing or restoring vCPU and VM state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A KVM list could not be built.
    #[error("Cannot build a KVM list")]
    Fam(#[source] vmm_sys_util::fam::Error),
    /// The host lacks a capability that snapshots need.
    #[error("The host's KVM lacks {0}, which snapshots need")]
    MissingCap(&'static str),
    /// A list is longer than the host allows.
    #[error("The state holds {found} {what}, more than the {max} this host has")]
    TooMany {
        /// What is listed.
        what: &'static str,
        /// Entries found.
        found: usize,
        /// Largest count allowed.
        max: usize,
    },
    /// An MSR the host does not list for snapshots.
    #[error("The state holds MSR {0:#x}, which this host does not save")]
    UnknownMsr(u32),
    /// An MSR listed twice.
    #[error("The state holds MSR {0:#x} twice")]
    DuplicateMsr(u32),
    /// KVM refused an MSR value.
    #[error("KVM refused the value of MSR {0:#x}")]
    MsrRejected(u32),
    /// A CPUID leaf the host does not have.
    #[error("The state holds CPUID leaf {function:#x}.{index:#x}, which this host lacks")]
    UnknownCpuid {
        /// Leaf.
        function: u32,
        /// Sub-leaf.
        index: u32,
    },
    /// The XSAVE area has the wrong size for this host.
    #[error("The state's XSAVE area has {found} words, this host's has {expected}")]
    XsaveSize {
        /// Words found.
        found: usize,
        /// Words expected.
        expected: usize,
    },
    /// A value out of its architectural range.
    #[error("The state's {0} is not valid")]
    Invalid(&'static str),
    /// The state belongs to another vCPU.
    #[error("The state is of vCPU {found}, restored into vCPU {expected}")]
    WrongVcpu {
        /// Index in the state.
        found: u8,
        /// Index of the target vCPU.
        expected: u8,
    },
}

/// What restore checks a state against: this host's KVM.
#[derive(Clone, Debug)]
pub struct Host {
    /// MSRs snapshots carry on this host, sorted.
    pub msrs: Vec<u32>,
    /// Size of the XSAVE area in 32-bit words.
    pub xsave_words: usize,
    /// (function, index) of every CPUID leaf KVM supports, sorted.
    pub cpuid_leaves: Vec<(u32, u32)>,
}

impl Host {
    /// Asks KVM.
    pub fn probe(kvm: &Kvm) -> Result<Self, StateError> {
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| StateError::Kvm("read the supported CPUID", e))?;
        Self::probe_with(kvm, &supported)
    }

    /// As `probe`, with the CPUID KVM supports already read (`supported`).
    pub fn probe_with(kvm: &Kvm, supported: &CpuId) -> Result<Self, StateError> {
        if !kvm.check_extension(Cap::Xsave) {
            return Err(StateError::MissingCap("KVM_CAP_XSAVE"));
        }
        if !kvm.check_extension(Cap::Xcrs) {
            return Err(StateError::MissingCap("KVM_CAP_XCRS"));
        }
        if !kvm.check_extension(Cap::VcpuEvents) {
            return Err(StateError::MissingCap("KVM_CAP_VCPU_EVENTS"));
        }
        if !kvm.check_extension(Cap::Debugregs) {
            return Err(StateError::MissingCap("KVM_CAP_DEBUGREGS"));
        }
        if !kvm.check_extension(Cap::AdjustClock) {
            return Err(StateError::MissingCap("KVM_CAP_ADJUST_CLOCK"));
        }
        // KVM_CAP_XSAVE2 answers the XSAVE area's size in bytes when it exceeds 4 KiB
        // (AMX); 0 or a smaller value means the legacy 4 KiB area.
        let size = usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        let xsave_words = (size / 4).max(LEGACY_XSAVE_WORDS);
        let mut cpuid_leaves: Vec<(u32, u32)> = supported
            .as_slice()
            .iter()
            .map(|e| (e.function, e.index))
            .collect();
        cpuid_leaves.sort_unstable();
        cpuid_leaves.dedup();
        Ok(Self {
            msrs: msrs::host_list(kvm)?,
            xsave_words,
            cpuid_leaves,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_kvm;
#[cfg(test)]
mod tests;
