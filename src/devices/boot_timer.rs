//! Firecracker's boot timer: the guest writes 123 to its MMIO window when it has booted,
//! and the VMM logs the time since it started building the VM.

use std::time::Instant;

use super::bus::BusDevice;

/// The byte a guest writes when boot is complete.
pub const MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE: u8 = 123;

/// The boot timer device.
pub struct BootTimer {
    start: Instant,
    start_cpu_us: u64,
}

/// CPU time this process used so far, in µs.
pub fn process_cpu_time_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass, which outlives the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

impl BootTimer {
    /// A timer counting from `start`, the moment the VMM began building the VM.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            start_cpu_us: process_cpu_time_us(),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE) {
            let us = self.start.elapsed().as_micros();
            let cpu_us = process_cpu_time_us().saturating_sub(self.start_cpu_us);
            log::info!(
                "Guest-boot-time = {us:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms",
                us / 1000,
                cpu_us / 1000
            );
        }
    }
}
