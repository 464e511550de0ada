//! Real KVM for the snapshot unit tests: a VM with the in-kernel irqchip and PIT, vCPUs set
//! up as the builder sets them up for boot, or a skip (tests/common/skip.rs's rule: a skip is
//! a failure when PALISADE_NO_SKIP is set, or CI is set to anything but `false` or `0`).

use kvm_ioctls::VcpuFd;

use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::{lapic, msr, regs};
use crate::vstate::vm::Vm;

/// A VM, or None after reporting `test` as skipped.
pub(crate) fn vm_or_skip(test: &str) -> Option<Vm> {
    match Vm::new() {
        Ok(vm) => Some(vm),
        Err(e) => {
            let line = format!("SKIPPED: {test}: no usable KVM ({e})");
            let set = |var: &str| {
                std::env::var(var).is_ok_and(|v| {
                    let v = v.trim().to_ascii_lowercase();
                    !v.is_empty() && (var == "PALISADE_NO_SKIP" || (v != "false" && v != "0"))
                })
            };
            if let Some(var) = ["PALISADE_NO_SKIP", "CI"].into_iter().find(|v| set(v)) {
                panic!("{line} ({var} is set: a test that cannot run fails)");
            }
            println!("{line}");
            None
        }
    }
}

/// vCPU `index` of `count`, with CPUID, boot MSRs, FPU and LINT set as for boot.
pub(crate) fn boot_vcpu(vm: &Vm, index: u8, count: u8) -> VcpuFd {
    let fd = vm.fd().create_vcpu(u64::from(index)).unwrap();
    let mut cpuid = vm.supported_cpuid().unwrap();
    let topo = VcpuTopology {
        index,
        count,
        smt: false,
    };
    cpuid::normalize(&mut cpuid, topo).unwrap();
    fd.set_cpuid2(&cpuid).unwrap();
    msr::setup_msrs(&fd).unwrap();
    regs::setup_fpu(&fd).unwrap();
    lapic::setup_lint(&fd).unwrap();
    fd
}
