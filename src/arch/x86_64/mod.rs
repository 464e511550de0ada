//! x86_64 specifics: layout, boot protocols, CPUID, MSRs, registers, MP table.

pub mod boot_params;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
