//! `idle`: the boot CPU halts at CPL0 (`cli; hlt`, no busy loop) until the VMM is killed.
//! Application processors are never started. Nothing after it runs.

use crate::platform::halt_forever;
use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "idle";

pub fn run(_boot: &BootInfo) {
    ResultLine::ok(NAME.as_bytes()).end();
    halt_forever()
}
