//! `hello`: the probe booted, wrote the boot timer and reached CPL3.

use crate::serial::ResultLine;
use crate::zero_page::BootInfo;

pub const NAME: &str = "hello";

pub fn run(_boot: &BootInfo) {
    ResultLine::ok(NAME.as_bytes()).end();
}
