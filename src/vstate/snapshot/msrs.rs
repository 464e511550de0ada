//! Which MSRs a snapshot carries: those KVM reports (KVM_GET_MSR_INDEX_LIST) that lie in the
//! ranges a guest can use and that KVM can save (the ranges follow Firecracker's list: the
//! architectural, syscall, MTRR/PAT, machine-check, x2APIC and KVM paravirtual MSRs; never
//! IA32_MCG_CTL, the PMU or VMX capability MSRs, nor Hyper-V's). Restore accepts only indices
//! of that host list, each once, and writes IA32_TSC_DEADLINE after IA32_TSC.

use std::collections::BTreeSet;

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::StateError;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: restored after IA32_TSC, or KVM may arm its timer wrongly.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const MSR_IA32_MCG_CTL: u32 = 0x17b;
/// IA32_PAT: eight memory types; 2 and 3 are reserved (checked here: not every KVM does).
const MSR_IA32_PAT: u32 = 0x277;

/// (first index, count) of the MSR ranges a snapshot may carry.
const SAVED_RANGES: &[(u32, u32)] = &[
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

/// Whether a snapshot may carry MSR `index`.
pub fn is_saved(index: u32) -> bool {
    index != MSR_IA32_MCG_CTL
        && SAVED_RANGES
            .iter()
            .any(|&(base, n)| index >= base && index - base < n)
}

/// The MSRs of this host that snapshots carry, sorted.
pub fn host_list(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| StateError::Kvm("list the host's MSRs (KVM_GET_MSR_INDEX_LIST)", e))?;
    let set: BTreeSet<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| is_saved(i))
        .collect();
    Ok(set.into_iter().collect())
}

/// Reads the MSRs of `indices` from `vcpu`. An MSR that KVM lists but refuses to read for
/// this vCPU (its CPUID lacks the feature) is left out, as it holds no guest state.
pub fn read(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let mut pending: Vec<u32> = chunk.to_vec();
        // Each round either reads everything left or drops the one MSR KVM stopped at, so
        // the loop ends after at most chunk.len() + 1 rounds.
        while !pending.is_empty() {
            let entries: Vec<kvm_msr_entry> = pending
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(StateError::Fam)?;
            let n = vcpu
                .get_msrs(&mut msrs)
                .map_err(|e| StateError::Kvm("read MSRs (KVM_GET_MSRS)", e))?;
            let n = n.min(pending.len());
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            if n == pending.len() {
                break;
            }
            log::debug!(
                "MSR {:#x} is listed by KVM but not readable; not saved",
                pending[n]
            );
            pending.drain(..=n);
        }
    }
    fix_zero_tsc_deadline(&mut out);
    Ok(out)
}

/// A zero IA32_TSC_DEADLINE read at capture may hide a pending timer; restoring it as the
/// TSC value makes the timer fire at once instead of never (Firecracker saw lost timers).
fn fix_zero_tsc_deadline(msrs: &mut [(u32, u64)]) {
    let tsc = msrs
        .iter()
        .filter(|(i, _)| *i == MSR_IA32_TSC)
        .map(|(_, v)| *v)
        .max();
    if let Some(tsc) = tsc {
        for (i, v) in msrs.iter_mut() {
            if *i == MSR_IA32_TSC_DEADLINE && *v == 0 {
                *v = tsc;
            }
        }
    }
}

/// Checks a saved MSR list against the host list: every index one the host lists, none twice.
pub fn validate(msrs: &[(u32, u64)], host: &[u32]) -> Result<(), StateError> {
    if msrs.len() > host.len() {
        return Err(StateError::TooMany {
            what: "MSRs",
            found: msrs.len(),
            max: host.len(),
        });
    }
    let mut seen = BTreeSet::new();
    for &(index, _) in msrs {
        if host.binary_search(&index).is_err() {
            return Err(StateError::UnknownMsr(index));
        }
        if !seen.insert(index) {
            return Err(StateError::DuplicateMsr(index));
        }
    }
    if let Some(&(_, pat)) = msrs.iter().find(|(i, _)| *i == MSR_IA32_PAT) {
        let valid = pat
            .to_le_bytes()
            .iter()
            .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
        if !valid {
            return Err(StateError::Invalid("PAT"));
        }
    }
    Ok(())
}

/// Writes validated MSRs into `vcpu`, IA32_TSC_DEADLINE last.
pub fn write(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<(), StateError> {
    let (late, early): (Vec<_>, Vec<_>) =
        msrs.iter().partition(|(i, _)| *i == MSR_IA32_TSC_DEADLINE);
    for group in [early, late] {
        for chunk in group.chunks(KVM_MAX_MSR_ENTRIES) {
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let m = Msrs::from_entries(&entries).map_err(StateError::Fam)?;
            let n = vcpu
                .set_msrs(&m)
                .map_err(|e| StateError::Kvm("write MSRs (KVM_SET_MSRS)", e))?;
            if n < chunk.len() {
                return Err(StateError::MsrRejected(chunk[n].0));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_ranges_skip_mcg_ctl_pmu_vmx_and_hyperv() {
        assert!(is_saved(0x10) && is_saved(0xc000_0082) && is_saved(0x4b56_4d01));
        assert!(is_saved(0x277) && is_saved(0x6e0) && is_saved(0x830));
        for bad in [
            0x17b,
            0xc1,
            0x186,
            0x309,
            0x38d,
            0x480,
            0x4000_0000,
            0xdead_beef,
        ] {
            assert!(!is_saved(bad), "{bad:#x}");
        }
    }

    #[test]
    fn validation_refuses_unknown_duplicate_and_too_many_msrs() {
        let host = [0x10, 0x1b, 0xc000_0082];
        assert!(validate(&[(0x10, 1), (0xc000_0082, 2)], &host).is_ok());
        assert!(matches!(
            validate(&[(0x10, 1), (0x17b, 0)], &host),
            Err(StateError::UnknownMsr(0x17b))
        ));
        assert!(matches!(
            validate(&[(0x10, 1), (0x10, 2)], &host),
            Err(StateError::DuplicateMsr(0x10))
        ));
        assert!(matches!(
            validate(&[(0x10, 1); 4], &host),
            Err(StateError::TooMany { .. })
        ));
    }

    #[test]
    fn zero_tsc_deadline_becomes_the_tsc() {
        let mut m = vec![(MSR_IA32_TSC_DEADLINE, 0), (MSR_IA32_TSC, 77)];
        fix_zero_tsc_deadline(&mut m);
        assert_eq!(m[0], (MSR_IA32_TSC_DEADLINE, 77));
    }
}
