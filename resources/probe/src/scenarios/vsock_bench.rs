//! placeholder
use crate::zero_page::BootInfo;
pub const NAME: &str = "vsock-bench";
pub fn run(_boot: &BootInfo) {}
