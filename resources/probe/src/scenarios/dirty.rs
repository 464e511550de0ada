//! `dirty`: writes a known pattern to `probe.pages=K` pages (default 64, at most 4096) from
//! guest-physical 32 MiB, in rounds. Round R writes `pattern(addr, R)` to every word, prints
//! `probe: dirty ok round=R pages=K check=ok|none`, then waits for keyboard bytes (an
//! orchestrator's Ctrl+Alt+Del through the API) before round R + 1, which first checks that
//! every word still holds round R's pattern (`check=ok`, or `probe: dirty fail round=R
//! bad_addr= found=`). Between two rounds the guest writes nothing else but its stack, so a
//! Diff snapshot taken there holds about K pages; a clone restored from it checks the pages
//! it was saved with. Nothing after it runs.

use crate::cmdline;
use crate::platform::inb;
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

use super::mem::pattern;

pub const NAME: &str = "dirty";

/// Guest-physical address of the first page (identity-mapped, below the 1 GiB boot map).
pub const BASE: u64 = 32 << 20;
const PAGE: u64 = 4096;
const DEFAULT_PAGES: u64 = 64;
const MAX_PAGES: u64 = 4096;
const I8042_DATA: u16 = 0x60;
const I8042_STATUS: u16 = 0x64;
const OUTPUT_FULL: u8 = 0x01;
/// Bytes of one Ctrl+Alt+Del (make and break codes, set 1).
const KEY_BYTES: usize = 10;

fn parse_dec(text: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &b in text {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    (!text.is_empty()).then_some(value)
}

fn fill(pages: u64, round: u64) {
    let mut addr = BASE;
    while addr < BASE + pages * PAGE {
        // SAFETY: [BASE, BASE + pages * 4 KiB) is RAM below 1 GiB (identity-mapped by boot.rs)
        // above the probe image, its stacks and page tables; nothing else uses it.
        unsafe { core::ptr::write_volatile(addr as *mut u64, pattern(addr, round)) };
        addr += 8;
    }
}

fn first_bad(pages: u64, round: u64) -> Option<(u64, u64)> {
    let mut addr = BASE;
    while addr < BASE + pages * PAGE {
        // SAFETY: as in fill.
        let found = unsafe { core::ptr::read_volatile(addr as *const u64) };
        if found != pattern(addr, round) {
            return Some((addr, found));
        }
        addr += 8;
    }
    None
}

fn wait_for_key() {
    for _ in 0..KEY_BYTES {
        while inb(I8042_STATUS) & OUTPUT_FULL == 0 {}
        inb(I8042_DATA);
    }
}

pub fn run(boot: &BootInfo) {
    let pages = match cmdline::param(boot.cmdline(), b"probe.pages") {
        None => DEFAULT_PAGES,
        Some(text) => match parse_dec(text) {
            Some(n) if (1..=MAX_PAGES).contains(&n) => n,
            _ => {
                ResultLine::fail(NAME.as_bytes()).text("probe.pages must be 1..4096").end();
                return;
            }
        },
    };
    if !boot.e820.is_usable(BASE, BASE + pages * PAGE) {
        ResultLine::fail(NAME.as_bytes()).text("needs-ram").hex("end", BASE + pages * PAGE).end();
        return;
    }
    let mut round = 1u64;
    let mut checked = false;
    loop {
        fill(pages, round);
        ResultLine::ok(NAME.as_bytes())
            .dec("round", round)
            .dec("pages", pages)
            .text(if checked { "check=ok" } else { "check=none" })
            .end();
        wait_for_key();
        if let Some((addr, found)) = first_bad(pages, round) {
            ResultLine::fail(NAME.as_bytes())
                .dec("round", round)
                .hex("bad_addr", addr)
                .hex("found", found)
                .end();
            return;
        }
        checked = true;
        round += 1;
    }
}
