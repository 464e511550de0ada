//! `kbd`: polls the i8042 until keyboard bytes arrive (an orchestrator sends Ctrl+Alt+Del
//! through the API) and prints the scancodes: `probe: kbd ok scancodes=1d,e0,...`.

use crate::platform::inb;
use crate::serial::{put_hex, put_str, ResultLine};
use crate::zero_page::BootInfo;

pub const NAME: &str = "kbd";

const I8042_DATA: u16 = 0x60;
const I8042_STATUS: u16 = 0x64;
const OUTPUT_FULL: u8 = 0x01;
/// Bytes of one Ctrl+Alt+Del (make and break codes, set 1).
const EXPECTED: usize = 10;

pub fn run(_boot: &BootInfo) {
    put_str("probe: kbd waiting\n");
    let mut codes = [0u8; EXPECTED];
    for code in codes.iter_mut() {
        while inb(I8042_STATUS) & OUTPUT_FULL == 0 {}
        *code = inb(I8042_DATA);
    }
    let line = ResultLine::ok(NAME.as_bytes()).text("scancodes=");
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            put_str(",");
        }
        put_hex(u64::from(*code));
    }
    line.end();
}
