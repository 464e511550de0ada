//! Guest physical memory layout for x86_64 guests.
//!
//! ```text
//! 0x0000_0500  GDT used at entry
//! 0x0000_0520  IDT used at entry (empty)
//! 0x0000_6000  PVH start info, module list at 0x6040
//! 0x0000_7000  zero page (Linux boot protocol) or PVH memory map
//! 0x0000_8ff0  initial stack pointer
//! 0x0000_9000  identity page tables (PML4, PDPT, PD: the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table; RAM below it is usable
//! 0x0010_0000  high memory: kernel, initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap (1 GiB): boot timer, then 4 KiB virtio-mmio slots from
//!              0xc000_1000 (IRQ 5 upwards), the generation ID page after the last slot
//!              (0xc001_4000), IOAPIC, LAPIC
//! 0x1_0000_0000 RAM that does not fit below the gap
//! ```

/// GDT loaded at entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT loaded at entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables used at 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory with 2 MiB pages over the first 1 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First address of high memory where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First address past 32 bits, where RAM resumes above the gap.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Firecracker's boot timer device (the guest writes 123 here).
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Size of the boot timer window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device slot, just after the boot timer.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_START + BOOT_TIMER_SIZE;
/// Size of one virtio-mmio slot (the `4K` of `virtio_mmio.device=4K@ADDR:IRQ`).
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Interrupt line of the first virtio device (serial has 4, the i8042 keyboard 1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last interrupt line for virtio devices (the IOAPIC has 24 pins).
pub const VIRTIO_IRQ_LAST: u32 = 23;
/// The generation ID page (`palisade_genid=4K@0xc0014000`): just after the last virtio-mmio
/// slot, inside the window guests map uncached for virtio-mmio.
pub const GENERATION_ID_START: u64 =
    VIRTIO_MMIO_START + (VIRTIO_IRQ_LAST - VIRTIO_IRQ_BASE + 1) as u64 * VIRTIO_MMIO_SLOT_SIZE;
/// Size of the generation ID window.
pub const GENERATION_ID_SIZE: u64 = 0x1000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// Where KVM places its TSS (three pages just below 4 GiB, inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Serial port COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Interrupt line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 controller ports 0x60..=0x64.
pub const I8042_PORT: u16 = 0x60;
/// Number of ports of the i8042 window.
pub const I8042_PORT_LEN: u16 = 5;
/// Interrupt line of the i8042 keyboard.
pub const I8042_KBD_IRQ: u32 = 1;
