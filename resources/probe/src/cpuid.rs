//! CPUID as the VMM configured it.
//!
//! CPUID is executed at CPL0 through the gate in boot.rs: on the development host (kvm_pvm)
//! CPUID at CPL3 runs natively and returns the host's values instead of the VMM's.

use core::arch::asm;

// ECX and EDX are for scenarios that read feature bits.
#[allow(dead_code)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx);
    // SAFETY: the gate executes CPUID at CPL0 and returns; it writes only the registers named
    // here, preserves RBX and uses the stack below RSP (no `nostack`).
    unsafe {
        asm!(
            "call probe_cpuid_gate",
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            out("esi") ebx,
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}
