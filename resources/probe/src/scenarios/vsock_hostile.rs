//! placeholder
use crate::zero_page::BootInfo;
pub const NAME: &str = "vsock-hostile";
pub fn run(_boot: &BootInfo) {}
