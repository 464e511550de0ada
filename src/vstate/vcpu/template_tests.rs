//! A CPU template on a real vCPU: what KVM_SET_CPUID2 got (read back with KVM_GET_CPUID2) and
//! the MSRs KVM holds (KVM_GET_MSRS), and the errors for what KVM does not offer.

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};

use super::{BootEntry, Vcpu, VcpuError};
use crate::arch::x86_64::cpu_template::{ApplyError, CustomCpuTemplate, StaticCpuTemplate};
use crate::arch::x86_64::cpuid::VcpuTopology;
use crate::arch::x86_64::regs::EntryMode;
use crate::vstate::memory::{create_guest_memory, MemoryOptions};
use crate::vstate::snapshot::test_kvm::vm_or_skip;
use crate::vstate::vm::Vm;

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;

fn template(json: &str) -> CustomCpuTemplate {
    CustomCpuTemplate::from_json(json.as_bytes()).unwrap()
}

fn vcpu(vm: &Vm, index: u8, t: &CustomCpuTemplate) -> Result<Vcpu, VcpuError> {
    let mem = create_guest_memory(2 << 20, MemoryOptions::default()).unwrap();
    let supported = vm.supported_cpuid().unwrap();
    let topo = VcpuTopology {
        index,
        count: 4,
        smt: false,
    };
    let entry = BootEntry {
        address: 0x100_0000,
        mode: EntryMode::Linux64,
    };
    Vcpu::new(vm, &mem, &supported, topo, entry, Some(t))
}

fn msr(v: &Vcpu, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(v.fd.get_msrs(&mut msrs).unwrap(), 1);
    msrs.as_slice()[0].data
}

#[test]
fn kvm_gets_the_templated_cpuid_and_msrs() {
    let Some(vm) = vm_or_skip("kvm_gets_the_templated_cpuid_and_msrs") else {
        return;
    };
    let supported = vm.supported_cpuid().unwrap();
    let ext = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0001)
        .copied()
        .unwrap();
    // Leaf 0x8000_0001: ECX bit 0 (LAHF) cleared, bit 30 set; EDX bit 27 (RDTSCP) cleared.
    let t = template(
        r#"{"cpuid_modifiers":[{"leaf":"0x80000001","subleaf":"0x0","flags":0,"modifiers":[
             {"register":"ecx","bitmap":"0bx1xxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"},
             {"register":"edx","bitmap":"0bxxxx0xxxxxxxxxxxxxxxxxxxxxxxxxxx"}]},
             {"leaf":"0x7","subleaf":"0x0","flags":1,"modifiers":[
             {"register":"eax","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxx000xxxxx"},
             {"register":"ebx","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxx00000000"}]},
             {"leaf":"0xd","subleaf":"0x0","flags":1,"modifiers":[
             {"register":"eax","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxx000xxxxx"}]}],
           "msr_modifiers":[{"addr":"0xc0000102","bitmap":"0b0000000000000000000000000000000000000000000000000000000000001100"},
             {"addr":"0x1a0","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}"#,
    );
    let v = vcpu(&vm, 1, &t).unwrap();
    let set = v.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
    let got = set
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0001)
        .unwrap();
    assert_eq!(got.ecx, (ext.ecx & !1) | (1 << 30));
    assert_eq!(got.edx, ext.edx & !(1 << 27));
    // Leaves 7 and 0xD: this host's kvm_pvm ORs the host's bits into what KVM keeps (GUEST.md),
    // so a cleared bit may come back set, but only where the host has it.
    for (leaf, subleaf) in [(7, 0), (0xd, 0)] {
        let got = set
            .as_slice()
            .iter()
            .find(|e| e.function == leaf && e.index == subleaf)
            .unwrap();
        let host = std::arch::x86_64::__cpuid_count(leaf, subleaf);
        // (0xD.0 EBX is the XSAVE size for the enabled features, which KVM recomputes.)
        if leaf == 7 {
            assert_eq!(got.ebx & 0xff & !host.ebx, 0, "leaf 7.0 EBX[7:0]");
        }
        assert_eq!(
            got.eax & 0xe0 & !host.eax,
            0,
            "leaf {leaf:#x}.{subleaf} EAX[7:5]"
        );
    }
    assert_eq!(msr(&v, MSR_KERNEL_GS_BASE), 0xc);
    // The template clears fast strings, which the boot MSRs set.
    assert_eq!(msr(&v, 0x1a0) & 1, 0);
}

#[test]
fn what_kvm_does_not_offer_is_an_error_not_a_skip() {
    let Some(vm) = vm_or_skip("what_kvm_does_not_offer_is_an_error_not_a_skip") else {
        return;
    };
    let leaf = template(
        r#"{"cpuid_modifiers":[{"leaf":"0x4fffffff","subleaf":"0x0","flags":0,"modifiers":[]}]}"#,
    );
    let err = vcpu(&vm, 1, &leaf).err().unwrap();
    assert!(matches!(
        err,
        VcpuError::Template(1, ApplyError::CpuidNotSupported(0x4fff_ffff, 0))
    ));
    // A guest-state MSR KVM does not emulate, DRAM_POWER_LIMIT (each attempt on a new vCPU:
    // a failed one stays created).
    let unknown = template(r#"{"msr_modifiers":[{"addr":"0x618","bitmap":"0b1"}]}"#);
    let err = vcpu(&vm, 2, &unknown).err().unwrap();
    assert!(
        matches!(
            err,
            VcpuError::Template(2, ApplyError::MsrNotSupported(0x618))
        ),
        "{err:?}"
    );
    // A value KVM refuses: a non-canonical KERNEL_GS_BASE.
    let refused = template(
        r#"{"msr_modifiers":[{"addr":"0xc0000102","bitmap":"0b1000000000000000000000000000000000000000000000000000000000000000"}]}"#,
    );
    let err = vcpu(&vm, 3, &refused).err().unwrap();
    assert!(
        matches!(
            err,
            VcpuError::Template(
                3,
                ApplyError::MsrRefused {
                    index: MSR_KERNEL_GS_BASE,
                    ..
                }
            )
        ),
        "{err:?}"
    );
    // A reserved memory type (2) in PAT: refused whether or not this KVM checks PAT.
    let pat = template(
        r#"{"msr_modifiers":[{"addr":"0x277","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx010"}]}"#,
    );
    let err = vcpu(&vm, 0, &pat).err().unwrap();
    assert!(
        matches!(
            err,
            VcpuError::Template(0, ApplyError::MsrRefused { index: 0x277, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn t2s_sets_arch_capabilities_or_names_the_msr_kvm_refuses() {
    let Some(vm) = vm_or_skip("t2s_sets_arch_capabilities_or_names_the_msr_kvm_refuses") else {
        return;
    };
    let t2s = StaticCpuTemplate::T2S.masks().unwrap();
    // KVM takes only the capabilities this host can give a guest; here it takes all of them.
    match vcpu(&vm, 1, &t2s) {
        Ok(v) => assert_eq!(msr(&v, MSR_IA32_ARCH_CAPABILITIES), 0x0c0a_0c4c),
        Err(VcpuError::Template(
            1,
            ApplyError::MsrRefused {
                index: MSR_IA32_ARCH_CAPABILITIES,
                ..
            },
        )) => println!("this host's KVM refuses T2S's IA32_ARCH_CAPABILITIES"),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn an_msr_named_twice_gets_both_modifiers_in_order_as_firecracker_applies_them() {
    let Some(vm) =
        vm_or_skip("an_msr_named_twice_gets_both_modifiers_in_order_as_firecracker_applies_them")
    else {
        return;
    };
    let x = |tail: &str| format!("0b{}{tail}", "x".repeat(64 - tail.len()));
    let t = template(&format!(
        r#"{{"msr_modifiers":[{{"addr":"0xc0000102","bitmap":"{}"}},
             {{"addr":"0xc0000102","bitmap":"{}"}}]}}"#,
        x("1xx"),
        x("1xxx")
    ));
    let v = vcpu(&vm, 1, &t).unwrap();
    // The boot value is 0: bit 2 from the first modifier, bit 3 from the second.
    assert_eq!(msr(&v, MSR_KERNEL_GS_BASE), 0b1100);
}

#[test]
fn reserved_bits_of_the_msrs_kvm_treats_specially_are_refused_by_kvm() {
    let test = "reserved_bits_of_the_msrs_kvm_treats_specially_are_refused_by_kvm";
    let Some(vm) = vm_or_skip(test) else {
        return;
    };
    // Templates may change EFER, APIC_BASE, SPEC_CTRL, DEBUGCTL and the SYSCALL MSRs (guest
    // state, as state files do); KVM's own checks are what bound their values. Bit 63 is
    // reserved (or non-canonical) in each.
    let bit63 = format!("0b1{}", "x".repeat(63));
    for (i, addr) in [0xc000_0080u32, 0x1b, 0x48, 0x1d9, 0xc000_0082]
        .into_iter()
        .enumerate()
    {
        let t = template(&format!(
            r#"{{"msr_modifiers":[{{"addr":"{addr:#x}","bitmap":"{bit63}"}}]}}"#
        ));
        // Refused, or taken and dropped (this host's kvm_pvm ignores SPEC_CTRL writes): never
        // held by the vCPU.
        match vcpu(&vm, i as u8, &t) {
            Ok(v) => assert_eq!(msr(&v, addr) >> 63, 0, "{addr:#x} holds bit 63"),
            Err(err) => assert!(
                matches!(
                    err,
                    VcpuError::Template(_, ApplyError::MsrRefused { index, .. })
                        | VcpuError::Template(_, ApplyError::MsrNotSupported(index))
                        if index == addr
                ),
                "{addr:#x}: {err:?}"
            ),
        }
    }
}
