//! `unknown-io`: reads and writes a port and an MMIO address where no device lives. A VMM
//! must ignore the writes and answer the reads like an empty bus (all ones), and keep going.

use crate::platform::{inb, outb};
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "unknown-io";

/// A legacy port no VMM device claims (the second parallel port's data register).
const UNCLAIMED_PORT: u16 = 0x278;
/// Inside the probe's uncached MMIO window, past the boot timer and the device slots.
const UNCLAIMED_MMIO: u64 = 0xc01f_f000;

pub fn run(_boot: &BootInfo) {
    outb(UNCLAIMED_PORT, 0x5a);
    let port = inb(UNCLAIMED_PORT);
    // SAFETY: the address is mapped uncached and user-accessible by boot.rs; it is MMIO.
    let mmio = unsafe {
        core::ptr::write_volatile(UNCLAIMED_MMIO as *mut u32, 0x1234_5678);
        core::ptr::read_volatile(UNCLAIMED_MMIO as *const u32)
    };
    let line = if port == 0xff && mmio == 0xffff_ffff {
        ResultLine::ok(NAME.as_bytes())
    } else {
        ResultLine::fail(NAME.as_bytes())
    };
    line.hex("port", u64::from(port)).hex("mmio", u64::from(mmio)).end();
}
