//! A KVM VM (with its in-kernel irqchip and PIT, and KVM's CPUID list read) created on a
//! thread of its own before it is needed: an API-mode VMM makes one while its client is still
//! configuring, so that InstanceStart or a snapshot load does not wait on KVM's VM-level
//! set-up.

use std::thread::JoinHandle;

use super::vm::{Vm, VmError};

/// A VM being created, or made; taken once.
#[derive(Default)]
pub struct PreparedVm {
    thread: Option<JoinHandle<Result<Vm, VmError>>>,
}

impl PreparedVm {
    /// Starts creating a VM on a thread (nothing when the thread cannot start: the VM is
    /// then made when needed, as without preparation).
    pub fn spawn() -> Self {
        let thread = std::thread::Builder::new()
            .name("vmm-prepare".to_string())
            .spawn(|| {
                let vm = Vm::new()?;
                // Read now, kept by the VM: InstanceStart need not (a failure is retried and
                // reported then).
                let _ = vm.supported_cpuid();
                Ok(vm)
            })
            .inspect_err(|e| log::debug!("No VM prepared ahead: {e}"))
            .ok();
        Self { thread }
    }

    /// The prepared VM (waiting for its thread if it is still at work), or None when there is
    /// none: none was started, it was taken already, or its creation failed (the caller then
    /// creates a VM itself, which reports the failure as it would have without preparation).
    pub fn take(&mut self) -> Option<Vm> {
        match self.thread.take()?.join() {
            Ok(Ok(vm)) => Some(vm),
            Ok(Err(e)) => {
                log::debug!("The VM prepared ahead failed ({e}); creating it now");
                None
            }
            Err(_) => {
                log::warn!("The thread preparing the VM ahead panicked; creating it now");
                None
            }
        }
    }
}
