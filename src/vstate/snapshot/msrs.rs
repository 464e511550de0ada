//! Which MSRs a snapshot carries: those KVM reports (KVM_GET_MSR_INDEX_LIST) that lie in the
//! ranges a guest can use and that KVM can save (the ranges follow Firecracker's list: the
//! architectural, syscall, MTRR/PAT, machine-check, x2APIC and KVM paravirtual MSRs; never
//! IA32_MCG_CTL, the PMU or VMX capability MSRs, nor Hyper-V's: [`msr::is_guest_state`]). Restore accepts only indices
//! of that host list, each once, and writes IA32_TSC_DEADLINE after IA32_TSC.

use std::collections::BTreeSet;

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::StateError;
use crate::arch::x86_64::msr;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: restored after IA32_TSC, or KVM may arm its timer wrongly.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The MSRs of this host that snapshots carry, sorted.
pub fn host_list(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| StateError::Kvm("list the host's MSRs (KVM_GET_MSR_INDEX_LIST)", e))?;
    let set: BTreeSet<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| msr::is_guest_state(i))
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
    if let Some(&(_, pat)) = msrs.iter().find(|(i, _)| *i == msr::MSR_IA32_PAT) {
        if !msr::pat_is_valid(pat) {
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
        assert!(
            msr::is_guest_state(0x10)
                && msr::is_guest_state(0xc000_0082)
                && msr::is_guest_state(0x4b56_4d01)
        );
        assert!(
            msr::is_guest_state(0x277) && msr::is_guest_state(0x6e0) && msr::is_guest_state(0x830)
        );
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
            assert!(!msr::is_guest_state(bad), "{bad:#x}");
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
