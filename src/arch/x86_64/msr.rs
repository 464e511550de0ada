//! Model-specific registers a Linux guest expects at entry, and which MSRs hold guest state
//! that snapshots carry and CPU templates may change.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Errors of MSR setup.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// Building the MSR list failed.
    #[error("Cannot build the MSR list")]
    Build(#[source] vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed.
    #[error("Cannot set MSRs")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Partial {
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
}

/// The boot MSR values: syscall MSRs cleared, TSC at zero, fast strings, write-back MTRRs.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Writes the boot MSRs into a vCPU.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != entries.len() {
        return Err(MsrError::Partial {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const MSR_IA32_MCG_CTL: u32 = 0x17b;
/// IA32_PAT: eight memory types; 2 and 3 are reserved (checked here: not every KVM does).
pub const MSR_IA32_PAT: u32 = 0x277;

/// (first index, count) of the MSR ranges that hold guest state (Firecracker's list).
const GUEST_STATE_RANGES: &[(u32, u32)] = &[
    (0x0, 2),             // P5_MC_ADDR, P5_MC_TYPE
    (0x10, 1),            // TSC
    (0x17, 1),            // PLATFORM_ID
    (0x1b, 1),            // APICBASE
    (0x2a, 1),            // EBL_CR_POWERON
    (0x2c, 1),            // EBC_FREQUENCY_ID
    (0x34, 1),            // SMI_COUNT
    (0x3a, 2),            // FEAT_CTL, TSC_ADJUST
    (0x48, 2),            // SPEC_CTRL, PRED_CMD
    (0x79, 1),            // UCODE_WRITE
    (0x8b, 1),            // UCODE_REV
    (0x9e, 1),            // SMBASE
    (0xcd, 2),            // FSB_FREQ, PLATFORM_INFO
    (0xe2, 1),            // PKG_CST_CONFIG_CONTROL
    (0xe7, 2),            // MPERF, APERF
    (0xfe, 1),            // MTRRcap
    (0x10a, 1),           // ARCH_CAPABILITIES
    (0x11e, 1),           // BBL_CR_CTL3
    (0x122, 1),           // TSX_CTRL
    (0x140, 1),           // MISC_FEATURES_ENABLES
    (0x174, 3),           // SYSENTER_CS/ESP/EIP
    (0x179, 2),           // MCG_CAP, MCG_STATUS
    (0x198, 1),           // PERF_STATUS
    (0x1a0, 1),           // MISC_ENABLE
    (0x1a4, 1),           // MISC_FEATURE_CONTROL
    (0x1aa, 1),           // MISC_PWR_MGMT
    (0x1ad, 2),           // TURBO_RATIO_LIMIT, _LIMIT1
    (0x1d9, 1),           // DEBUGCTL
    (0x1db, 4),           // LASTBRANCH/LASTINT FROM/TO
    (0x1fc, 1),           // POWER_CTL
    (0x200, 0x100),       // MTRRs, PAT
    (0x3fc, 3),           // CORE_C3/C6/C7_RESIDENCY
    (0x400, 0x80),        // MC banks
    (0x606, 1),           // RAPL_POWER_UNIT
    (0x60a, 3),           // PKGC3/6/7_IRTL
    (0x610, 2),           // PKG_POWER_LIMIT, PKG_ENERGY_STATUS
    (0x613, 2),           // PKG_PERF_STATUS, PKG_POWER_INFO
    (0x618, 2),           // DRAM_POWER_LIMIT, DRAM_ENERGY_STATUS
    (0x61b, 2),           // DRAM_PERF_STATUS, DRAM_POWER_INFO
    (0x648, 5),           // CONFIG_TDP_*, TURBO_ACTIVATION_RATIO
    (0x6e0, 1),           // TSC_DEADLINE
    (0x800, 0x400),       // x2APIC
    (0xda0, 1),           // XSS
    (0x4b56_4d00, 0x100), // KVM paravirtual (kvmclock, async PF, steal time, PV EOI, ...)
    (0xc000_0080, 5),     // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xc000_0100, 4),     // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0xc001_0015, 1),     // K7_HWCR
];

/// Whether MSR `index` holds guest state a snapshot carries: the architectural, syscall,
/// MTRR/PAT, machine-check, x2APIC and KVM paravirtual MSRs; never IA32_MCG_CTL, the PMU or
/// VMX capability MSRs, nor Hyper-V's.
pub fn is_guest_state(index: u32) -> bool {
    index != MSR_IA32_MCG_CTL
        && GUEST_STATE_RANGES
            .iter()
            .any(|&(base, n)| index >= base && index - base < n)
}

/// Whether a CPU template may change MSR `index`: guest state ([`is_guest_state`]), the set a
/// restored state file may set too, so every templated MSR is one snapshots carry. Everything
/// else (PMU, VMX capabilities, Hyper-V, vendor MSRs) would reach KVM's host-initiated MSR
/// writes, which check less than a guest's, with values no guest state needs.
pub fn is_templatable(index: u32) -> bool {
    is_guest_state(index)
}

/// Whether `pat` holds only defined memory types (2 and 3 are reserved).
pub fn pat_is_valid(pat: u64) -> bool {
    pat.to_le_bytes()
        .iter()
        .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}
