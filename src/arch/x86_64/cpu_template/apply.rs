//! Applying a template: its CPUID masks to a vCPU's CPUID list (after normalisation, before
//! KVM_SET_CPUID2) and its MSR masks to the vCPU's MSRs (after the boot MSRs).

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use super::custom::{CpuidRegister, CustomCpuTemplate};
use crate::arch::x86_64::msr;

/// Why a template cannot be applied to a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A leaf KVM does not list (Firecracker's message).
    #[error("Template changes a CPUID entry not supported by KVM: Leaf: {0:x}, Subleaf: {1:x}")]
    CpuidNotSupported(u32, u32),
    /// An MSR KVM does not read (Firecracker's message).
    #[error("Template changes an MSR entry not supported by KVM: Register Address: {0:x}")]
    MsrNotSupported(u32),
    /// An MSR KVM refused to take the templated value of.
    #[error("KVM refused to set MSR {index:#x} to {value:#x} as the template asks")]
    MsrRefused {
        /// MSR index.
        index: u32,
        /// The value refused.
        value: u64,
    },
    /// The MSR list cannot be built.
    #[error("Cannot build the template's MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// KVM_GET_MSRS or KVM_SET_MSRS failed.
    #[error("Cannot access the template's MSRs")]
    MsrIoctl(#[source] kvm_ioctls::Error),
}

/// Applies the template's CPUID modifiers to `cpuid`: each names a leaf and sub-leaf KVM
/// lists, takes the template's flags and gets its register bits.
pub fn apply_to_cpuid(cpuid: &mut CpuId, template: &CustomCpuTemplate) -> Result<(), ApplyError> {
    for modifier in &template.cpuid_modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == modifier.leaf && e.index == modifier.subleaf)
            .ok_or(ApplyError::CpuidNotSupported(
                modifier.leaf,
                modifier.subleaf,
            ))?;
        entry.flags = modifier.flags;
        for reg in &modifier.modifiers {
            let value = match reg.register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            *value = reg.bitmap.apply(u64::from(*value)) as u32;
        }
    }
    Ok(())
}

/// Reads each MSR the template names from the vCPU, applies its bits (an MSR named twice gets
/// both modifiers, in order) and writes it back. An MSR KVM does not read or refuses to write
/// is an error, never skipped.
pub fn apply_to_msrs(vcpu: &VcpuFd, template: &CustomCpuTemplate) -> Result<(), ApplyError> {
    if template.msr_modifiers.is_empty() {
        return Ok(());
    }
    let entries: Vec<kvm_msr_entry> = template
        .msr_modifiers
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.addr,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(ApplyError::MsrList)?;
    let read = vcpu.get_msrs(&mut msrs).map_err(ApplyError::MsrIoctl)?;
    if let Some(stopped) = msrs.as_slice().get(read) {
        return Err(ApplyError::MsrNotSupported(stopped.index));
    }
    let entries = msrs.as_mut_slice();
    for (i, modifier) in template.msr_modifiers.iter().enumerate() {
        // An MSR named again builds on what the modifiers before it made (Firecracker's
        // order), not on the value read (at most 256 entries: the search is bounded).
        let base = entries[..i]
            .iter()
            .rev()
            .find(|e| e.index == modifier.addr)
            .map_or(entries[i].data, |e| e.data);
        let entry = &mut entries[i];
        entry.data = modifier.bitmap.apply(base);
        // Not every KVM checks PAT's memory types (as a snapshot restore does).
        if entry.index == msr::MSR_IA32_PAT && !msr::pat_is_valid(entry.data) {
            return Err(ApplyError::MsrRefused {
                index: entry.index,
                value: entry.data,
            });
        }
    }
    let set = vcpu.set_msrs(&msrs).map_err(ApplyError::MsrIoctl)?;
    if let Some(refused) = msrs.as_slice().get(set) {
        return Err(ApplyError::MsrRefused {
            index: refused.index,
            value: refused.data,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn template(json: &str) -> CustomCpuTemplate {
        CustomCpuTemplate::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn cpuid_bits_are_set_cleared_and_kept() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0xffff_ffff,
                ecx: 0x0000_00f0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                ebx: 0x1234,
                ..Default::default()
            },
        ])
        .unwrap();
        let t = template(
            r#"{"cpuid_modifiers":[
              {"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[
                {"register":"eax","bitmap":"0b0000xxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
                {"register":"ecx","bitmap":"0b1xxxxxxxxxxxxxxxxxxxxxxx0x1xxxxx"}]},
              {"leaf":"0x7","subleaf":"0x1","flags":1,"modifiers":[
                {"register":"ebx","bitmap":"0b0"}]}]}"#,
        );
        apply_to_cpuid(&mut cpuid, &t).unwrap();
        let e = cpuid.as_slice();
        assert_eq!(e[0].eax, 0x0fff_ffff);
        // Bit 31 set, bit 7 cleared, bit 5 set, others kept.
        assert_eq!(e[0].ecx, 0x8000_0070);
        assert_eq!(e[1].ebx, 0x1234);
        assert_eq!(e[1].flags, 1);
    }

    #[test]
    fn a_leaf_kvm_does_not_list_is_refused() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ..Default::default()
        }])
        .unwrap();
        let t = template(
            r#"{"cpuid_modifiers":[{"leaf":"0x7","subleaf":"0x2","flags":1,"modifiers":[]}]}"#,
        );
        let err = apply_to_cpuid(&mut cpuid, &t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Template changes a CPUID entry not supported by KVM: Leaf: 7, Subleaf: 2"
        );
    }
}
