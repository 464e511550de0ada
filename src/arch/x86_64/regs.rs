//! General, special and FPU registers of a vCPU at guest entry, and the boot GDT, IDT and
//! identity page tables they point at.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{kvm_segment_from_gdt, GDT_64BIT, GDT_PVH};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
// arch sits below vstate: its functions take any guest memory (vstate's alias carries the
// dirty bitmap); its tests use vm-memory's plain type.
#[cfg(test)]
type GuestMemory = vm_memory::GuestMemoryMmap<()>;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Errors of register setup.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("Cannot {0} vCPU registers")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Writing the GDT, IDT or page tables to guest memory failed.
    #[error("Cannot write the boot {0} to guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh,
}

/// Sets the general registers of the boot vCPU for `entry`.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64, mode: EntryMode) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(|e| RegsError::Kvm("set", e))
}

/// Sets x87 and SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("set FPU", e))
}

/// Writes the boot GDT and an empty IDT, and for the 64-bit protocol identity page tables
/// over the first 1 GiB; then loads the segments and control registers of the boot vCPU.
pub fn setup_sregs<M: GuestMemoryBackend>(
    mem: &M,
    vcpu: &VcpuFd,
    mode: EntryMode,
) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("get", e))?;
    let gdt = match mode {
        EntryMode::Linux64 => GDT_64BIT,
        EntryMode::Pvh => GDT_PVH,
    };
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| RegsError::Memory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::Memory("IDT", e))?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (8 * gdt.len() - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);

    match mode {
        EntryMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("set special", e))
}

/// Identity-maps the first 1 GiB with 2 MiB pages: PML4[0] -> PDPT[0] -> 512 PDEs.
fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    let err = |e| RegsError::Memory("page tables", e);
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(err)?;
    let mut pd = [0u8; 4096];
    for (i, slot) in pd.chunks_exact_mut(8).enumerate() {
        slot.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tables_map_the_first_gigabyte() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 16 << 20)]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }
}
