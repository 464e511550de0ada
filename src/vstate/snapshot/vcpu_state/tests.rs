//! vCPU state against real KVM: distinctive values survive capture, the state file and a
//! restore into a fresh VM; a corrupted state is refused before KVM sees it.

use kvm_bindings::kvm_msr_entry;

use super::*;
use crate::snapshot::{MemoryIdentity, SnapshotKey, StateFile};
use crate::vstate::snapshot::test_kvm::{boot_vcpu, vm_or_skip};

type Corruption = (&'static str, fn(&mut VcpuState));

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_PAT: u32 = 0x277;
const MSR_FEAT_CTL: u32 = 0x3a;
const DISTINCT_MSRS: [(u32, u64); 4] = [
    (MSR_STAR, 0x0023_0010_0000_0000),
    (MSR_LSTAR, 0xffff_ffff_8100_1230),
    (MSR_KERNEL_GS_BASE, 0xffff_8880_0abc_d000),
    (MSR_SYSENTER_ESP, 0x4242_4240),
];
/// XMM0 lies at byte 160 of the XSAVE area.
const XMM0_WORD: usize = 40;
const APIC_TPR: usize = 0x80;
/// XSTATE_BV lies at byte 512.
const XSTATE_BV_WORD: usize = 128;

fn host(vm: &crate::vstate::vm::Vm) -> Host {
    Host::probe(vm.kvm()).unwrap()
}

/// Sets distinctive registers, MSRs, debug registers, XMM0 and the LAPIC TPR into `fd`.
fn make_distinctive(fd: &VcpuFd) {
    let mut regs = fd.get_regs().unwrap();
    regs.rax = 0x1111_2222_3333_4444;
    regs.rbx = 0x5555_6666_7777_8888;
    regs.r15 = 0x0f0f_0f0f_f0f0_f0f0;
    regs.rip = 0x1234;
    regs.rsp = 0x8000;
    regs.rflags = 0x2 | 0x40;
    fd.set_regs(&regs).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cr8 = 5;
    sregs.ds.base = 0x1_0000;
    fd.set_sregs(&sregs).unwrap();
    let entries: Vec<kvm_msr_entry> = DISTINCT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = kvm_bindings::Msrs::from_entries(&entries).unwrap();
    assert_eq!(fd.set_msrs(&msrs).unwrap(), entries.len());
    let mut dr = fd.get_debug_regs().unwrap();
    dr.db[0] = 0x1000;
    dr.db[1] = 0x2000;
    dr.dr7 = 0x400 | 0x1;
    fd.set_debug_regs(&dr).unwrap();
    let mut xsave = fd.get_xsave().unwrap();
    xsave.region[XMM0_WORD] = 0xcafe_f00d;
    xsave.region[XMM0_WORD + 3] = 0x600d_d00d;
    // XSTATE_BV: x87 and SSE hold values (else XRSTOR takes SSE as in its init state).
    xsave.region[XSTATE_BV_WORD] |= 0b11;
    // SAFETY: a full legacy XSAVE area read from this vCPU, one word changed.
    unsafe { fd.set_xsave(&xsave) }.unwrap();
}

fn msr_value(state: &VcpuState, index: u32) -> Option<u64> {
    state
        .msrs
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, v)| *v)
}

#[test]
fn vcpu_state_survives_the_state_file_and_a_restore_into_a_fresh_vm() {
    let Some(vm1) = vm_or_skip("vcpu_state_survives_the_state_file_and_a_restore_into_a_fresh_vm")
    else {
        return;
    };
    let host = host(&vm1);
    let fd1 = boot_vcpu(&vm1, 0, 1);
    make_distinctive(&fd1);
    let saved = VcpuState::capture(&fd1, 0, &host).unwrap();
    for (index, value) in DISTINCT_MSRS {
        assert_eq!(msr_value(&saved, index), Some(value), "MSR {index:#x}");
    }
    let tpr = read_lapic_u32(&saved.lapic.0, APIC_TPR);

    let key = SnapshotKey::new(&[7; 32]).unwrap();
    let mem = MemoryIdentity {
        size: 0,
        sha256: None,
    };
    let bytes = StateFile::encode(&saved, Some(&key), &mem).unwrap();
    let loaded: VcpuState = StateFile::open(&bytes, Some(&key))
        .unwrap()
        .state()
        .unwrap();

    let vm2 = vm_or_skip("fresh vm").unwrap();
    let fd2 = vm2.fd().create_vcpu(0).unwrap();
    loaded.restore(&fd2, 0, &host).unwrap();
    let back = VcpuState::capture(&fd2, 0, &host).unwrap();

    assert_eq!(back.regs.0, saved.regs.0);
    assert_eq!(back.sregs.0, saved.sregs.0);
    assert_eq!(back.mp_state.0, saved.mp_state.0);
    assert_eq!(back.xcrs.0.xcrs[0].value, saved.xcrs.0.xcrs[0].value);
    assert_eq!(back.debug_regs.0.db, saved.debug_regs.0.db);
    assert_eq!(back.debug_regs.0.dr7, saved.debug_regs.0.dr7);
    assert_eq!(back.xsave[XMM0_WORD], 0xcafe_f00d);
    assert_eq!(back.xsave[XMM0_WORD + 3], 0x600d_d00d);
    assert_eq!(read_lapic_u32(&back.lapic.0, APIC_TPR), tpr);
    assert_eq!(back.cpuid.len(), saved.cpuid.len());
    for (index, value) in DISTINCT_MSRS {
        assert_eq!(msr_value(&back, index), Some(value), "MSR {index:#x}");
    }
    // Every MSR but the moving counters comes back as saved.
    for &(index, value) in &saved.msrs {
        if [
            msrs::MSR_IA32_TSC,
            msrs::MSR_IA32_TSC_DEADLINE,
            0xe7,
            0xe8,
            0x3b,
        ]
        .contains(&index)
        {
            continue;
        }
        assert_eq!(msr_value(&back, index), Some(value), "MSR {index:#x}");
    }
    assert_eq!(back.tsc_khz, saved.tsc_khz);
}

/// Captures the state of a boot vCPU of a fresh VM.
fn captured() -> Option<(crate::vstate::vm::Vm, Host, VcpuState)> {
    let vm = vm_or_skip("corrupted vCPU state")?;
    let host = host(&vm);
    let fd = boot_vcpu(&vm, 0, 1);
    let state = VcpuState::capture(&fd, 0, &host).unwrap();
    Some((vm, host, state))
}

/// Restores `state` into a fresh vCPU of `vm` and checks that the refusal left its
/// registers untouched.
fn refused(vm: &crate::vstate::vm::Vm, host: &Host, state: &VcpuState, id: u64) -> StateError {
    let fd = vm.fd().create_vcpu(id).unwrap();
    let before = fd.get_regs().unwrap();
    let index = id as u8;
    let mut state = state.clone();
    if state.index == 0 {
        state.index = index;
    }
    write_lapic_id(&mut state, index);
    let err = state.restore(&fd, index, host).unwrap_err();
    assert_eq!(
        fd.get_regs().unwrap(),
        before,
        "refused restore touched the vCPU"
    );
    err
}

fn write_lapic_id(state: &mut VcpuState, id: u8) {
    state.lapic.0.regs[APIC_ID_OFFSET + 3] = id as _;
}

#[test]
fn msr_index_the_host_does_not_list_is_refused() {
    let Some((vm, host, mut state)) = captured() else {
        return;
    };
    state.msrs[0] = (0x17b, 0); // IA32_MCG_CTL: never saved.
    assert!(matches!(
        refused(&vm, &host, &state, 1),
        StateError::UnknownMsr(0x17b)
    ));
    state.msrs[0] = (0xdead_beef, 1);
    assert!(matches!(
        refused(&vm, &host, &state, 2),
        StateError::UnknownMsr(0xdead_beef)
    ));
}

#[test]
fn oversized_or_duplicated_lists_are_refused() {
    let Some((vm, host, state)) = captured() else {
        return;
    };
    let mut big = state.clone();
    big.msrs = vec![(msrs::MSR_IA32_TSC, 0); host.msrs.len() + 1];
    assert!(matches!(
        refused(&vm, &host, &big, 1),
        StateError::TooMany { what: "MSRs", .. }
    ));
    let mut dup = state.clone();
    dup.msrs[1] = dup.msrs[0];
    assert!(matches!(
        refused(&vm, &host, &dup, 2),
        StateError::DuplicateMsr(_)
    ));
    let mut cpuid = state.clone();
    cpuid.cpuid = vec![cpuid.cpuid[0]; KVM_MAX_CPUID_ENTRIES + 1];
    assert!(matches!(
        refused(&vm, &host, &cpuid, 3),
        StateError::TooMany { .. }
    ));
    let mut xsave = state.clone();
    xsave.xsave.push(0);
    assert!(matches!(
        refused(&vm, &host, &xsave, 4),
        StateError::XsaveSize { .. }
    ));
}

#[test]
fn architecturally_invalid_values_are_refused() {
    let Some((vm, host, state)) = captured() else {
        return;
    };
    let cases: [Corruption; 9] = [
        ("RFLAGS", |s| s.regs.0.rflags = 0x2 | (1 << 40)),
        ("RFLAGS", |s| s.regs.0.rflags = 0),
        ("APIC base", |s| s.sregs.0.apic_base = 0xfee0_0123),
        ("APIC base", |s| s.sregs.0.apic_base = 1 << 60 | 0x900),
        ("EFER", |s| s.sregs.0.efer |= 1 << 40),
        ("MP state", |s| s.mp_state.0.mp_state = 9),
        ("pending exception", |s| s.events.0.exception.nr = 200),
        ("debug registers", |s| s.debug_regs.0.dr7 = 1 << 40),
        ("TSC frequency", |s| s.tsc_khz = Some(u32::MAX)),
    ];
    for (n, (what, corrupt)) in cases.iter().enumerate() {
        let mut bad = state.clone();
        corrupt(&mut bad);
        match refused(&vm, &host, &bad, n as u64 + 1) {
            StateError::Invalid(w) => assert_eq!(w, *what),
            other => panic!("{what}: {other}"),
        }
    }
}

#[test]
fn state_of_another_vcpu_or_unknown_cpuid_leaf_is_refused() {
    let Some((vm, host, state)) = captured() else {
        return;
    };
    let fd = vm.fd().create_vcpu(1).unwrap();
    assert!(matches!(
        state.restore(&fd, 1, &host),
        Err(StateError::WrongVcpu {
            found: 0,
            expected: 1
        })
    ));
    let mut bad = state.clone();
    bad.cpuid[0].0.function = 0x4fff_0000;
    assert!(matches!(
        refused(&vm, &host, &bad, 2),
        StateError::UnknownCpuid { .. }
    ));
}

#[test]
fn msr_value_kvm_refuses_fails_the_restore_with_its_index() {
    let Some((vm, host, mut state)) = captured() else {
        return;
    };
    assert!(
        host.msrs.binary_search(&MSR_FEAT_CTL).is_ok(),
        "KVM does not list FEAT_CTL"
    );
    // Bits KVM does not allow in IA32_FEATURE_CONTROL: KVM refuses the value.
    let feat = state
        .msrs
        .iter_mut()
        .find(|(i, _)| *i == MSR_FEAT_CTL)
        .unwrap();
    feat.1 = 0xffff;
    let fd = vm.fd().create_vcpu(1).unwrap();
    state.index = 1;
    write_lapic_id(&mut state, 1);
    let got = state.restore(&fd, 1, &host);
    assert!(
        matches!(got, Err(StateError::MsrRejected(MSR_FEAT_CTL))),
        "{got:?}"
    );
}

#[test]
fn pat_with_a_reserved_memory_type_is_refused_even_where_kvm_takes_it() {
    // kvm_pvm accepts this value from KVM_SET_MSRS; Palisade does not.
    let Some((vm, host, mut state)) = captured() else {
        return;
    };
    let pat = state.msrs.iter_mut().find(|(i, _)| *i == MSR_PAT).unwrap();
    pat.1 = 0x0007_0406_0202_0406;
    assert!(matches!(
        refused(&vm, &host, &state, 1),
        StateError::Invalid("PAT")
    ));
}

/// Writes the seed corpus of the snapshot_state fuzz target (fuzz/corpus/snapshot_state/):
/// a real two-vCPU machine state as a keyed file, as an unkeyed file, and as a bare body.
#[test]
#[ignore = "writes the snapshot_state fuzz seeds; run by hand to change them"]
fn write_snapshot_state_fuzz_seeds() {
    let vm = vm_or_skip("write_snapshot_state_fuzz_seeds").unwrap();
    let host = host(&vm);
    let vcpus: Vec<VcpuState> = (0..2)
        .map(|i| {
            let fd = boot_vcpu(&vm, i, 2);
            make_distinctive(&fd);
            let mut s = VcpuState::capture(&fd, i, &host).unwrap();
            // Keep to the fuzz target's fixed host: its MSRs and legacy XSAVE.
            s.msrs.retain(|(m, _)| {
                [
                    0x10,
                    0x3a,
                    0x174,
                    0x175,
                    0x176,
                    0x1a0,
                    0x277,
                    0x6e0,
                    0xc000_0081,
                ]
                .contains(m)
            });
            s.xsave.truncate(1024);
            s
        })
        .collect();
    let machine = (
        crate::vstate::snapshot::VmState::capture(vm.fd()).unwrap(),
        vcpus,
    );
    let key = SnapshotKey::new(b"palisade fuzz key 0123456789abcd").unwrap();
    let mem = MemoryIdentity {
        size: 128 << 20,
        sha256: None,
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/snapshot_state");
    std::fs::create_dir_all(&dir).unwrap();
    let keyed = StateFile::encode(&machine, Some(&key), &mem).unwrap();
    let plain = StateFile::encode(&machine, None, &mem).unwrap();
    let body = postcard::to_stdvec(&machine).unwrap();
    for (name, mode, bytes) in [
        ("keyed_file", 0u8, keyed),
        ("plain_file", 2, plain),
        ("body_keyed", 1, body.clone()),
        ("body_plain", 3, body),
    ] {
        let mut seed = vec![mode];
        seed.extend_from_slice(&bytes);
        std::fs::write(dir.join(name), seed).unwrap();
    }
}

#[test]
fn application_processor_waiting_for_sipi_restores_as_such() {
    let Some(vm1) = vm_or_skip("application_processor_waiting_for_sipi_restores_as_such") else {
        return;
    };
    let host = host(&vm1);
    let _bsp = boot_vcpu(&vm1, 0, 2);
    let ap = boot_vcpu(&vm1, 1, 2);
    let saved = VcpuState::capture(&ap, 1, &host).unwrap();
    assert_eq!(read_lapic_u32(&saved.lapic.0, APIC_ID_OFFSET) >> 24, 1);
    assert_eq!(saved.sregs.0.apic_base & (1 << 8), 0, "AP marked as BSP");

    let vm2 = vm_or_skip("fresh vm").unwrap();
    let _bsp2 = vm2.fd().create_vcpu(0).unwrap();
    let ap2 = vm2.fd().create_vcpu(1).unwrap();
    saved.restore(&ap2, 1, &host).unwrap();
    let back = VcpuState::capture(&ap2, 1, &host).unwrap();
    assert_eq!(back.mp_state.0, saved.mp_state.0);
    assert_eq!(back.sregs.0.apic_base, saved.sregs.0.apic_base);
    assert_eq!(back.lapic.0.regs[..0x400], saved.lapic.0.regs[..0x400]);
}
