//! Extending the identity mapping from CPL3.
//!
//! boot.rs maps 0..1 GiB and the MMIO page at 3 GiB, and maps its page-table pages
//! user-writable, so CPL3 code can map more RAM (the memory test maps all of e820 RAM, also
//! above 4 GiB) without returning to CPL0. New tables come from RAM right after the probe
//! image; only not-present entries are ever filled, which needs no TLB flush.

use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};

use crate::e820::E820Map;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;
const RAM_2M_FLAGS: u64 = PRESENT | WRITABLE | USER | HUGE;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_4K: u64 = 0x1000;
const PAGE_2M: u64 = 0x20_0000;
/// New tables must lie in the part that boot.rs maps.
const BOOT_MAPPED_LIMIT: u64 = 1 << 30;
/// The highest address 4-level paging can map.
const VIRTUAL_LIMIT: u64 = 1 << 47;

extern "C" {
    static probe_pml4: u8;
    static __image_start: u8;
    static __image_end: u8;
}

/// End of the tables allocated so far (0: none yet, they start at the image end).
static TABLES_END: AtomicU64 = AtomicU64::new(0);

pub enum MapError {
    OutOfTableMemory,
    BeyondPagingLimit,
}

impl MapError {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::OutOfTableMemory => "no-ram-for-page-tables",
            Self::BeyondPagingLimit => "ram-beyond-4-level-paging",
        }
    }
}

pub fn image_start() -> u64 {
    core::ptr::addr_of!(__image_start) as u64
}

/// End of the probe image plus the page tables allocated so far: RAM the probe uses.
pub fn reserved_end() -> u64 {
    let end = TABLES_END.load(Ordering::Relaxed);
    if end == 0 {
        image_end()
    } else {
        end
    }
}

fn image_end() -> u64 {
    core::ptr::addr_of!(__image_end) as u64
}

fn pml4() -> u64 {
    core::ptr::addr_of!(probe_pml4) as u64
}

fn read_entry(table: u64, index: u64) -> u64 {
    // SAFETY: `table` is a page-table page below 1 GiB (identity-mapped, user-writable).
    unsafe { core::ptr::read_volatile((table + index * 8) as *const u64) }
}

fn write_entry(table: u64, index: u64, value: u64) {
    // SAFETY: as read_entry; volatile so the compiler keeps it before later accesses.
    unsafe { core::ptr::write_volatile((table + index * 8) as *mut u64, value) };
    compiler_fence(Ordering::SeqCst);
}

fn allocate_table(e820: &E820Map) -> Result<u64, MapError> {
    let table = reserved_end();
    let end = table + PAGE_4K;
    if end > BOOT_MAPPED_LIMIT || !e820.is_usable(table, end) {
        return Err(MapError::OutOfTableMemory);
    }
    for index in 0..512 {
        write_entry(table, index, 0);
    }
    TABLES_END.store(end, Ordering::Relaxed);
    Ok(table)
}

/// The table an entry points to, allocating it when the entry is not present.
fn next_table(e820: &E820Map, table: u64, index: u64) -> Result<u64, MapError> {
    let entry = read_entry(table, index);
    if entry & PRESENT != 0 {
        return Ok(entry & ADDR_MASK);
    }
    let next = allocate_table(e820)?;
    write_entry(table, index, next | TABLE_FLAGS);
    Ok(next)
}

/// Identity-maps [start, end) as write-back user RAM with 2 MiB pages (rounded outwards).
/// Already-present mappings are left as they are.
pub fn map_ram(e820: &E820Map, start: u64, end: u64) -> Result<(), MapError> {
    if end > VIRTUAL_LIMIT {
        return Err(MapError::BeyondPagingLimit);
    }
    let mut addr = start & !(PAGE_2M - 1);
    while addr < end {
        let pdpt = next_table(e820, pml4(), (addr >> 39) & 511)?;
        let pdpt_entry = read_entry(pdpt, (addr >> 30) & 511);
        if pdpt_entry & (PRESENT | HUGE) == PRESENT | HUGE {
            addr = (addr | ((1 << 30) - 1)) + 1;
            continue;
        }
        let pd = next_table(e820, pdpt, (addr >> 30) & 511)?;
        let index = (addr >> 21) & 511;
        if read_entry(pd, index) & PRESENT == 0 {
            write_entry(pd, index, addr | RAM_2M_FLAGS);
        }
        addr += PAGE_2M;
    }
    Ok(())
}
