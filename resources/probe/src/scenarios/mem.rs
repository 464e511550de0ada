//! `mem`: every usable e820 byte the probe does not occupy holds what was written to it.
//!
//! Maps all usable RAM (paging.rs), writes an address-dependent 64-bit pattern over it, then
//! reads it all back, so aliasing between addresses shows as well as lost writes. Skipped: the
//! low 1 MiB (zero page, command line, MP table) and the probe image with its stacks and page
//! tables. Reports `mib` = usable RAM in MiB, rounded to nearest, and `tested_mib`.

use crate::e820::E820Map;
use crate::paging;
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "mem";

const MIB: u64 = 1 << 20;
const LOW_MEMORY_END: u64 = MIB;

/// The value written at `addr` for `seed` (the `mem` scenario uses seed 0).
pub(super) fn pattern(addr: u64, seed: u64) -> u64 {
    // An odd multiplier makes this a bijection: distinct addresses, distinct values.
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_c3c3_0f0f_9669 ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93)
}

/// Calls `f(start, end)` for each 8-byte-aligned part of usable RAM outside the skipped ranges.
pub(super) fn for_each_tested_range(e820: &E820Map, skip: &[(u64, u64); 2], mut f: impl FnMut(u64, u64)) {
    for entry in e820.usable() {
        let mut start = (entry.addr + 7) & !7;
        let end = entry.end() & !7;
        // `skip` is sorted and disjoint, so one left-to-right sweep cuts it out.
        for &(skip_start, skip_end) in skip {
            if start >= end {
                break;
            }
            if skip_end <= start || skip_start >= end {
                continue;
            }
            if skip_start > start {
                f(start, skip_start);
            }
            start = start.max(skip_end);
        }
        if start < end {
            f(start, end);
        }
    }
}

pub(super) fn fill(start: u64, end: u64, seed: u64) {
    let mut addr = start;
    while addr < end {
        // SAFETY: [start, end) is usable RAM mapped by paging::map_ram and not used by the probe.
        unsafe { core::ptr::write_volatile(addr as *mut u64, pattern(addr, seed)) };
        addr += 8;
    }
}

/// The first address whose content differs, with the value found.
pub(super) fn check(start: u64, end: u64, seed: u64) -> Option<(u64, u64)> {
    let mut addr = start;
    while addr < end {
        // SAFETY: as in fill.
        let found = unsafe { core::ptr::read_volatile(addr as *const u64) };
        if found != pattern(addr, seed) {
            return Some((addr, found));
        }
        addr += 8;
    }
    None
}

/// The ranges the memory scenarios leave alone: low memory and the probe's own image.
pub(super) fn tested_skip() -> [(u64, u64); 2] {
    [(0, LOW_MEMORY_END), (paging::image_start(), paging::reserved_end())]
}

pub fn run(boot: &BootInfo) {
    let e820 = &boot.e820;
    let mib = (e820.usable_bytes() + MIB / 2) / MIB;
    for entry in e820.usable() {
        if let Err(error) = paging::map_ram(e820, entry.addr, entry.end()) {
            ResultLine::fail(NAME.as_bytes()).dec("mib", mib).text(error.as_str()).end();
            return;
        }
    }
    let skip = tested_skip();

    let mut tested = 0;
    for_each_tested_range(e820, &skip, |start, end| {
        fill(start, end, 0);
        tested += end - start;
    });
    let mut first_bad = None;
    for_each_tested_range(e820, &skip, |start, end| {
        if first_bad.is_none() {
            first_bad = check(start, end, 0);
        }
    });
    match first_bad {
        None => ResultLine::ok(NAME.as_bytes()).dec("mib", mib).dec("tested_mib", tested / MIB).end(),
        Some((addr, found)) => ResultLine::fail(NAME.as_bytes())
            .dec("mib", mib)
            .hex("bad_addr", addr)
            .hex("expected", pattern(addr, 0))
            .hex("found", found)
            .end(),
    }
}
