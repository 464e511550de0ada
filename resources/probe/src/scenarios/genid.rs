//! `genid`: reads the VMM's generation ID page, announced as `palisade_genid=SIZE@ADDR` on the
//! command line (layout in the VMM's `src/devices/generation_id.rs`: magic `PLSDGNID`,
//! version 1, 16-byte ID at 0x10, restore counter at 0x20), and prints
//! `probe: genid ok id=<32 hex digits> counter=N`. With `probe.wait=1` it then polls the page
//! at a ticker's pace (one MMIO read per few milliseconds of guest work) until the ID or the
//! counter changes — a snapshot restored in a new VMM — prints the new line and returns, so
//! the next scenario (e.g. `rng`) runs in the clone.

use crate::cmdline;
use crate::serial::{put_byte, put_str, ResultLine};
use crate::zero_page::BootInfo;

pub const NAME: &str = "genid";

/// The window the boot page tables map uncached and user-accessible.
const MMIO_WINDOW: (u64, u64) = (0xc000_0000, 0xc020_0000);
const MAGIC: u64 = u64::from_le_bytes(*b"PLSDGNID");
const VERSION: u32 = 1;
const PAGE_USED: u64 = 0x28;
/// Busy-loop iterations between polls (as `ticker`'s ticks).
const SPIN_PER_POLL: u64 = 5_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Generation {
    id: [u64; 2],
    counter: u64,
}

fn fail(what: &str) {
    ResultLine::fail(NAME.as_bytes()).text(what).end();
}

fn parse_hex(text: &[u8]) -> Option<u64> {
    let digits = text.strip_prefix(b"0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| Some(acc << 4 | u64::from((c as char).to_digit(16)?)))
}

/// `4K@0xc0014000` -> the page's address.
fn parse_page(value: &[u8]) -> Option<u64> {
    let at = value.iter().position(|&c| c == b'@')?;
    parse_hex(&value[at + 1..])
}

fn read64(addr: u64) -> u64 {
    // SAFETY: `addr` was checked to lie in the uncached MMIO window that boot.rs maps
    // user-accessible, 8-byte aligned.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// One consistent reading: the counter, the ID, then the counter again, retried while the
/// two counters differ (the VM may be snapshotted between two reads, and a clone then
/// changes the page under a half-done reading: an old ID with the new counter).
fn read(base: u64) -> Option<Generation> {
    if read64(base) != MAGIC || read64(base + 8) as u32 != VERSION {
        return None;
    }
    loop {
        let before = read64(base + 0x20);
        let id = [read64(base + 0x10), read64(base + 0x18)];
        if read64(base + 0x20) == before {
            return Some(Generation { id, counter: before });
        }
    }
}

fn print(generation: &Generation) {
    let line = ResultLine::ok(NAME.as_bytes());
    put_str(" id=");
    for word in generation.id {
        for byte in word.to_le_bytes() {
            put_byte(b"0123456789abcdef"[usize::from(byte >> 4)]);
            put_byte(b"0123456789abcdef"[usize::from(byte & 0xf)]);
        }
    }
    line.dec("counter", generation.counter).end();
}

fn spin() {
    let mut spin = 0u64;
    while spin < SPIN_PER_POLL {
        // SAFETY: a volatile read of a local keeps the loop from being optimised away.
        spin = unsafe { core::ptr::read_volatile(&spin) } + 1;
    }
}

pub fn run(boot: &BootInfo) {
    let Some(base) = cmdline::param(boot.cmdline(), b"palisade_genid").and_then(parse_page) else {
        return fail("no-palisade_genid");
    };
    let inside = base % 8 == 0
        && base >= MMIO_WINDOW.0
        && base.checked_add(PAGE_USED).is_some_and(|end| end <= MMIO_WINDOW.1);
    if !inside {
        return fail("outside-mmio-window");
    }
    let Some(first) = read(base) else {
        return fail("bad-magic-or-version");
    };
    print(&first);
    if cmdline::param(boot.cmdline(), b"probe.wait") != Some(b"1") {
        return;
    }
    loop {
        spin();
        match read(base) {
            Some(now) if now == first => {}
            Some(now) => return print(&now),
            None => return fail("bad-magic-or-version"),
        }
    }
}
