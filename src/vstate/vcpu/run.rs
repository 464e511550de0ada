//! A running vCPU: KVM_RUN and the handling of each exit.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::control::GuestRun;
use super::VcpuShared;
use crate::metrics::METRICS;
use crate::seccomp::SeccompError;
use crate::vstate::exit::ExitCode;
use crate::vstate::snapshot::{StateError, VcpuState};

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

/// A vCPU on its own thread.
pub(super) struct RunningVcpu {
    pub(super) index: u8,
    pub(super) fd: VcpuFd,
    pub(super) shared: Arc<VcpuShared>,
    /// The outcome of installing the thread's seccomp filter, reported at the first run
    /// (a VM stopped before it runs ends silently).
    pub(super) filtered: Option<Result<(), SeccompError>>,
}

// SAFETY: `immediate_exit` is a byte of the vCPU's kvm_run mapping, which the VcpuFd owns:
// mapped at a fixed address from the vCPU's creation until the fd is dropped with `self`.
unsafe impl GuestRun for RunningVcpu {
    fn immediate_exit(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit
    }

    fn run_once(&mut self) -> bool {
        if let Some(Err(e)) = self.filtered.take() {
            log::error!("vCPU {}: {e}", self.index);
            self.shared.request_exit(ExitCode::VmmError);
            return false;
        }
        match self.step() {
            Ok(go_on) => go_on,
            Err(code) => {
                METRICS.vcpu.failures.inc();
                self.shared.request_exit(code);
                false
            }
        }
    }

    /// Captures this vCPU's state for a snapshot: first one KVM_RUN with immediate_exit
    /// set, which completes a pending I/O or MMIO exit (KVM finishes those only on the next
    /// KVM_RUN) and returns EINTR without running guest code.
    fn serve(&mut self) {
        let state = self.settle().and_then(|()| match &self.shared.host {
            Some(host) => VcpuState::capture(&self.fd, self.index, host),
            None => Err(StateError::MissingCap("the capabilities probed at start")),
        });
        self.shared
            .captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.index, state);
    }
}

impl RunningVcpu {
    /// Completes a pending exit without running the guest.
    fn settle(&mut self) -> Result<(), StateError> {
        self.fd.set_kvm_immediate_exit(1);
        let result = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(StateError::Kvm("complete the last exit", e)),
            Ok(_) => Err(StateError::Invalid("exit on an immediate_exit KVM_RUN")),
        };
        self.fd.set_kvm_immediate_exit(0);
        result
    }
}

impl Drop for RunningVcpu {
    fn drop(&mut self) {
        log::debug!("vCPU {} stopped", self.index);
    }
}

impl RunningVcpu {
    /// Logs how the guest ended the VM and asks for a clean exit; false ends this vCPU.
    fn guest_ended(&self, how: std::fmt::Arguments<'_>) -> bool {
        log::info!("vCPU {} {how}; ending the VM", self.index);
        self.shared.request_exit(ExitCode::Ok);
        false
    }

    /// Runs the guest until its next exit and handles it. Ok(false) ends this vCPU.
    fn step(&mut self) -> Result<bool, ExitCode> {
        let shared = &*self.shared;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(true);
            }
            Err(e) => {
                METRICS.vcpu.failures.inc();
                log::error!("KVM_RUN failed on vCPU {}: {e}", self.index);
                return Err(ExitCode::VmmError);
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                METRICS.vcpu.exit_io_in.inc();
                if !shared.buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    if let Some(n) = shared.unknown_pio.hit() {
                        log::debug!("Unhandled port read at {port:#x} (#{n})");
                    }
                }
            }
            VcpuExit::IoOut(port, data) => {
                METRICS.vcpu.exit_io_out.inc();
                if !shared.buses.pio.write(u64::from(port), data) {
                    if let Some(n) = shared.unknown_pio.hit() {
                        log::debug!("Unhandled port write at {port:#x} (#{n})");
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                METRICS.vcpu.exit_mmio_read.inc();
                if !shared.buses.mmio.read(addr, data) {
                    data.fill(0xff);
                    if let Some(n) = shared.unknown_mmio.hit() {
                        log::debug!("Unhandled MMIO read at {addr:#x} (#{n})");
                    }
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                METRICS.vcpu.exit_mmio_write.inc();
                if !shared.buses.mmio.write(addr, data) {
                    if let Some(n) = shared.unknown_mmio.hit() {
                        log::debug!("Unhandled MMIO write at {addr:#x} (#{n})");
                    }
                }
            }
            VcpuExit::Hlt => return Ok(self.guest_ended(format_args!("halted"))),
            VcpuExit::Shutdown => {
                return Ok(self.guest_ended(format_args!("shut down (triple fault)")));
            }
            VcpuExit::SystemEvent(kind, _) => {
                let what = match kind {
                    SYSTEM_EVENT_SHUTDOWN => "shutdown",
                    SYSTEM_EVENT_RESET => "reset",
                    _ => "system event",
                };
                return Ok(self.guest_ended(format_args!("reported a {what} ({kind})")));
            }
            VcpuExit::FailEntry(reason, cpu) => {
                log::error!(
                    "KVM_EXIT_FAIL_ENTRY on vCPU {}: hardware entry failure reason {reason:#x} \
                     on host CPU {cpu}; {}",
                    self.index,
                    self.describe_rip()
                );
                return Err(ExitCode::GuestError);
            }
            VcpuExit::InternalError => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let ndata = (internal.ndata as usize).min(internal.data.len());
                log::error!(
                    "KVM_EXIT_INTERNAL_ERROR on vCPU {}: suberror {} ({}), data {:x?}; {}",
                    self.index,
                    internal.suberror,
                    suberror_name(internal.suberror),
                    &internal.data[..ndata],
                    self.describe_rip()
                );
                return Err(ExitCode::GuestError);
            }
            VcpuExit::Intr => {}
            other => {
                let what = format!("{other:?}");
                log::error!(
                    "Unexpected exit {what} on vCPU {}; {}",
                    self.index,
                    self.describe_rip()
                );
                return Err(ExitCode::GuestError);
            }
        }
        Ok(true)
    }

    /// "RIP 0x.. (guest physical 0x..), instruction bytes [..]" for error reports.
    fn describe_rip(&self) -> String {
        let rip = match self.fd.get_regs() {
            Ok(r) => r.rip,
            Err(e) => return format!("registers unavailable: {e}"),
        };
        let gpa = match self.fd.translate_gva(rip) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => return format!("RIP {rip:#x} (not mapped)"),
        };
        let mut bytes = [0u8; 16];
        match self.shared.mem.read_slice(&mut bytes, GuestAddress(gpa)) {
            Ok(()) => {
                format!("RIP {rip:#x} (guest physical {gpa:#x}), instruction bytes {bytes:02x?}")
            }
            Err(_) => format!("RIP {rip:#x} (guest physical {gpa:#x}, outside RAM)"),
        }
    }
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event via an event-delivery fault",
        4 => "unexpected exit during event delivery",
        _ => "unknown",
    }
}
