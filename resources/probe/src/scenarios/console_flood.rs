//! `console-flood`: prints `probe: console-flood ok`, then floods the console with 64-byte
//! lines forever, as fast as the UART takes them. Tests check that the host's output (a
//! file) stays within its budget and that the VMM's CPU stays bounded. Nothing after it runs.

use crate::serial::put_str;
use crate::zero_page::BootInfo;

pub const NAME: &str = "console-flood";

pub fn run(_boot: &BootInfo) {
    put_str("probe: console-flood ok\n");
    loop {
        put_str("probe: flood 0123456789abcdef0123456789abcdef0123456789ab\n");
    }
}
