//! VM state: KVM VM, vCPUs, guest memory, and the VM exit request.

pub mod dirty;
pub mod exit;
pub mod memory;
pub mod prepared;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
