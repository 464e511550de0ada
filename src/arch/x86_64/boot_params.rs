//! What the kernel finds at entry: the zero page (64-bit Linux boot protocol) or the PVH
//! start info, each with the memory map and the initrd.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use super::regs::EntryMode;
// arch sits below vstate: its functions take any guest memory (vstate's alias carries the
// dirty bitmap); its tests use vm-memory's plain type.
#[cfg(test)]
type GuestMemory = vm_memory::GuestMemoryMmap<()>;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Errors of boot parameter setup.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The zero page could not be written.
    #[error("Cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// The PVH start info could not be written.
    #[error("Cannot write the PVH start info")]
    Pvh(#[source] linux_loader::configurator::Error),
    /// More RAM ranges than the zero page holds.
    #[error("Too many e820 entries: {0}")]
    TooManyE820Entries(usize),
}

/// An initrd already in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct InitrdPlacement {
    /// Guest physical start.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Everything the kernel is told at entry.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Length of the command line at [`CMDLINE_START`], without the NUL.
    pub cmdline_len: usize,
    /// The initrd, if any.
    pub initrd: Option<InitrdPlacement>,
    /// The bzImage setup header, or `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Protocol of the entry.
    pub mode: EntryMode,
}

/// The usable RAM ranges of guest memory as (start, size): below the EBDA, from 1 MiB to
/// the end of low RAM, and above 4 GiB.
pub fn ram_map<M: GuestMemoryBackend>(mem: &M) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

/// The highest page-aligned address at which an initrd of `size` bytes fits in low RAM.
pub fn initrd_load_address<M: GuestMemoryBackend>(mem: &M, size: u64) -> Option<u64> {
    let low_end = mem.iter().next().map(|r| r.start_addr().0 + r.len())?;
    let start = low_end.checked_sub(size)? & !0xfff;
    (start >= HIMEM_START).then_some(start)
}

/// Writes the zero page or the PVH start info for `info`.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
) -> Result<(), BootParamsError> {
    match info.mode {
        EntryMode::Linux64 => write_zero_page(mem, info),
        EntryMode::Pvh => write_pvh_start_info(mem, info),
    }
}

fn write_zero_page<M: GuestMemoryBackend>(mem: &M, info: &BootInfo) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.address as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = ram_map(mem);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (i, (addr, size)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootParamsError::ZeroPage)
}

/// `hvm_start_info` as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: a repr(C) struct of integers with no padding holes that matter and no pointers;
// any byte pattern is a valid value.
unsafe impl ByteValued for StartInfo {}

/// `hvm_memmap_table_entry` as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a repr(C) struct of integers; any byte pattern is a valid value.
unsafe impl ByteValued for MemmapEntry {}

/// `hvm_modlist_entry` as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a repr(C) struct of integers; any byte pattern is a valid value.
unsafe impl ByteValued for ModlistEntry {}

fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
) -> Result<(), BootParamsError> {
    let memmap: Vec<MemmapEntry> = ram_map(mem)
        .into_iter()
        .map(|(addr, size)| {
            MemmapEntry(hvm_memmap_table_entry {
                addr,
                size,
                type_: E820_RAM,
                reserved: 0,
            })
        })
        .collect();
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<ModlistEntry> = info
        .initrd
        .iter()
        .map(|i| {
            ModlistEntry(hvm_modlist_entry {
                paddr: i.address,
                size: i.size,
                ..Default::default()
            })
        })
        .collect();
    if !modules.is_empty() {
        start.nr_modules = modules.len() as u32;
        start.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&StartInfo(start), GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootParamsError::Pvh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_map_skips_the_bios_hole() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 128 << 20)]).unwrap();
        assert_eq!(
            ram_map(&mem),
            vec![(0, EBDA_START), (HIMEM_START, (128 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)]).unwrap();
        assert_eq!(initrd_load_address(&mem, 0x1800), Some((64 << 20) - 0x2000));
        assert_eq!(initrd_load_address(&mem, 64 << 20), None);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)]).unwrap();
        let info = BootInfo {
            cmdline_len: 10,
            initrd: Some(InitrdPlacement {
                address: 0x300_0000,
                size: 0x1000,
            }),
            setup_header: None,
            mode: EntryMode::Linux64,
        };
        write_boot_params(&mem, &info).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
    }

    #[test]
    fn pvh_start_info_has_the_magic_and_memmap() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)]).unwrap();
        let info = BootInfo {
            cmdline_len: 1,
            initrd: None,
            setup_header: None,
            mode: EntryMode::Pvh,
        };
        write_boot_params(&mem, &info).unwrap();
        let s: StartInfo = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(s.0.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(s.0.memmap_entries, 2);
    }
}
