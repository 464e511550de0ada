//! `triple-fault`: the boot CPU loads an empty IDT at CPL0 and raises an exception, so the
//! machine shuts down (KVM_EXIT_SHUTDOWN). Tests that the VMM ends such a VM in order.
//! Nothing after it runs.

use crate::platform::triple_fault;
use crate::serial::put_str;
use crate::zero_page::BootInfo;

pub const NAME: &str = "triple-fault";

pub fn run(_boot: &BootInfo) {
    put_str("probe: triple-fault now\n");
    triple_fault()
}
