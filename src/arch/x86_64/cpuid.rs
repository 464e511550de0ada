//! CPUID for each vCPU: what KVM supports, normalised for this vCPU's identity and the
//! machine's topology.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1: processor info; EBX holds the APIC id and logical count, ECX the hypervisor bit.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (Intel).
const LEAF_CACHE: u32 = 0x4;
/// Leaf 0xA: architectural performance monitoring.
const LEAF_PMU: u32 = 0xa;
/// Leaf 0xB: extended topology.
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1F: V2 extended topology.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x8000_0008: address sizes and, on AMD, the core count.
const LEAF_AMD_SIZE: u32 = 0x8000_0008;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// The identity of one vCPU within the machine.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTopology {
    /// Index of this vCPU, also its APIC id.
    pub index: u8,
    /// Number of vCPUs in the machine.
    pub count: u8,
    /// Whether sibling threads share a core (two threads per core).
    pub smt: bool,
}

impl VcpuTopology {
    fn threads_per_core(&self) -> u32 {
        if self.smt && self.count > 1 {
            2
        } else {
            1
        }
    }
}

/// Number of APIC-id bits needed to number `n` items.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        // "AuthenticAMD": EBX = "Auth", EDX = "enti", ECX = "cAMD".
        .is_some_and(|e| e.ebx == 0x6874_7541 && e.edx == 0x6974_6e65 && e.ecx == 0x444d_4163)
}

/// Adds the extended topology sub-leaves (SMT, core, terminator) that KVM leaves out on some
/// hosts, when the maximum basic leaf covers leaf 0xB.
fn add_topology_subleaves(cpuid: &mut CpuId) -> Result<(), vmm_sys_util::fam::Error> {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    if max_basic < LEAF_TOPOLOGY {
        return Ok(());
    }
    for index in 0..3 {
        let present = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_TOPOLOGY && e.index == index);
        if !present {
            cpuid.push(kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            })?;
        }
    }
    Ok(())
}

/// Normalises a copy of the supported CPUID for the vCPU `topo` describes.
pub fn normalize(cpuid: &mut CpuId, topo: VcpuTopology) -> Result<(), vmm_sys_util::fam::Error> {
    add_topology_subleaves(cpuid)?;
    let amd = is_amd(cpuid);
    let count = u32::from(topo.count);
    let apic_id = u32::from(topo.index);
    let threads = topo.threads_per_core();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // CLFLUSH line size 8 quadwords, logical count, initial APIC id.
                entry.ebx = (entry.ebx & 0xff) | (8 << 8) | (count << 16) | (apic_id << 24);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => normalize_cache_leaf(entry, count, threads),
            LEAF_PMU => {
                // No virtual PMU is exposed.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => normalize_topology_leaf(entry, topo),
            LEAF_AMD_SIZE if amd => entry.ecx = (entry.ecx & !0xff) | (count - 1),
            _ => {}
        }
    }
    Ok(())
}

fn normalize_cache_leaf(entry: &mut kvm_cpuid_entry2, count: u32, threads: u32) {
    let cache_type = entry.eax & 0x1f;
    if cache_type == 0 {
        return;
    }
    let level = (entry.eax >> 5) & 0x7;
    let sharing = if level >= 3 { count } else { threads };
    let cores = (count / threads).max(1);
    entry.eax &= 0x3fff;
    entry.eax |= ((sharing - 1) & 0xfff) << 14;
    entry.eax |= ((cores - 1) & 0x3f) << 26;
}

fn normalize_topology_leaf(entry: &mut kvm_cpuid_entry2, topo: VcpuTopology) {
    let count = u32::from(topo.count);
    let threads = topo.threads_per_core();
    entry.edx = u32::from(topo.index);
    match entry.index {
        0 => {
            entry.eax = id_bits(threads);
            entry.ebx = threads;
            entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = id_bits(count);
            entry.ebx = count;
            entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                eax: 0xd,
                ..entry(0, 0)
            },
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_id_and_count_follow_the_vcpu() {
        let mut c = sample();
        normalize(
            &mut c,
            VcpuTopology {
                index: 3,
                count: 4,
                smt: false,
            },
        )
        .unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!((core.ebx, core.eax, core.edx), (4, 2, 3));
        assert_eq!(find(&c, LEAF_TOPOLOGY, 0).ebx, 1);
        assert_eq!(find(&c, LEAF_TOPOLOGY, 2).ecx, 2);
    }

    #[test]
    fn smt_gives_two_threads_per_core() {
        let mut c = sample();
        normalize(
            &mut c,
            VcpuTopology {
                index: 1,
                count: 2,
                smt: true,
            },
        )
        .unwrap();
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        assert_eq!((smt.ebx, smt.eax), (2, 1));
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        // As KVM reports on some hosts: only sub-leaf 0 of leaf 0xB, all zeros.
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                eax: 0x1c,
                ..entry(0, 0)
            },
            entry(LEAF_TOPOLOGY, 0),
        ])
        .unwrap();
        normalize(
            &mut c,
            VcpuTopology {
                index: 2,
                count: 3,
                smt: false,
            },
        )
        .unwrap();
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!(
            (core.ebx, core.ecx >> 8, core.edx),
            (3, TOPOLOGY_LEVEL_CORE, 2)
        );
        assert_ne!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        assert_eq!(find(&c, LEAF_TOPOLOGY, 2).ecx, 2);
    }

    #[test]
    fn one_vcpu_has_no_htt() {
        let mut c = sample();
        normalize(
            &mut c,
            VcpuTopology {
                index: 0,
                count: 1,
                smt: false,
            },
        )
        .unwrap();
        assert_eq!(find(&c, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&c, LEAF_TOPOLOGY, 1).eax, 0);
    }
}
