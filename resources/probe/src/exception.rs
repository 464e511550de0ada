//! CPL0 exception report, called from `isr_common` in boot.rs on the kernel stack.
//!
//! Runs emulated on the development host, so it is short, and must not use SSE (check with
//! `objdump -d`; only serial.rs helpers are called).

use crate::platform::request_power_off;
use crate::serial::{put_dec, put_hex, put_str};

/// Prints `probe: exception vector=N err=.. rip=.. cr2=..` and requests power-off; the caller
/// then halts.
#[no_mangle]
pub extern "C" fn probe_exception_report(vector: u64, error_code: u64, rip: u64, cr2: u64) {
    put_str("probe: exception vector=");
    put_dec(vector);
    put_str(" err=");
    put_hex(error_code);
    put_str(" rip=");
    put_hex(rip);
    put_str(" cr2=");
    put_hex(cr2);
    put_str("\n");
    request_power_off();
}
