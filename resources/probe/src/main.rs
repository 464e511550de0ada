//! Palisade's probe guest: a freestanding x86-64 ELF booted like a Linux vmlinux (64-bit boot
//! protocol, zero page in RSI). boot.rs sets up the CPU at CPL0 and drops to CPL3, where
//! `probe_main` runs the scenarios named by `probe.run=` and powers off. See README.md.

#![no_std]
#![no_main]

mod boot;
mod cmdline;
mod cpuid;
mod crc32;
mod e820;
mod exception;
mod mem_functions;
mod mmds_client;
mod mptable;
mod netstack;
mod paging;
mod phys;
mod platform;
mod scenarios;
mod serial;
mod tcp_client;
mod virtio;
mod vsock_stream;
mod zero_page;

use core::panic::PanicInfo;

use crate::serial::{put_dec, put_str};
use crate::zero_page::BootInfo;

const DEFAULT_SCENARIO: &[u8] = b"hello";

/// CPL3 entry, called by boot.rs with the zero page address.
#[no_mangle]
pub extern "C" fn probe_main(zero_page: u64) -> ! {
    platform::write_boot_timer();
    put_str("probe: ready\n");
    let boot = BootInfo::read(zero_page);
    let names = cmdline::param(boot.cmdline(), b"probe.run")
        .filter(|value| !value.is_empty())
        .unwrap_or(DEFAULT_SCENARIO);
    for name in cmdline::list(names) {
        scenarios::run(name, &boot);
    }
    platform::power_off()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    put_str("probe: panic");
    if let Some(location) = info.location() {
        put_str(" at ");
        put_str(location.file());
        put_str(":");
        put_dec(u64::from(location.line()));
    }
    put_str("\n");
    platform::power_off()
}
