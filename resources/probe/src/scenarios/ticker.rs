//! `ticker`: prints `probe: tick N` at a steady pace of guest work, forever. Tests pause and
//! resume the VM and watch the ticks stop and start again. Nothing after it runs.

use crate::serial::{put_dec, put_str};
use crate::zero_page::BootInfo;

pub const NAME: &str = "ticker";

/// Busy-loop iterations between ticks (a few milliseconds at CPL3 on any host).
const SPIN_PER_TICK: u64 = 5_000_000;

pub fn run(_boot: &BootInfo) {
    put_str("probe: ticker ok\n");
    let mut tick: u64 = 0;
    loop {
        let mut spin = 0u64;
        while spin < SPIN_PER_TICK {
            // SAFETY: a volatile read of a local keeps the loop from being optimised away.
            spin = unsafe { core::ptr::read_volatile(&spin) } + 1;
        }
        tick += 1;
        put_str("probe: tick ");
        put_dec(tick);
        put_str("\n");
    }
}
