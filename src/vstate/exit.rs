//! How any thread asks the VMM to end the VM: the first request's exit code wins.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Process exit codes; README.md documents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// The guest powered off or reset.
    Ok = 0,
    /// The VMM failed at run time (a KVM call or a device failed).
    VmmError = 1,
    /// The guest did something KVM cannot run (internal error, failed entry, unknown exit).
    GuestError = 2,
    /// The host cannot run VMs: no usable /dev/kvm or a missing KVM capability.
    HostUnsupported = 3,
    /// The configuration was refused.
    BadConfiguration = 152,
    /// The command line was refused.
    ArgParsing = 153,
}

/// A shared "end the VM" request with the code to exit with.
pub struct ExitRequest {
    code: AtomicI32,
    /// When the first request was made, for the exit latency in the log.
    at: OnceLock<Instant>,
    evt: EventFd,
}

const UNSET: i32 = -1;

impl ExitRequest {
    /// A request nobody has made yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            code: AtomicI32::new(UNSET),
            at: OnceLock::new(),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Asks for the VM to end with `code`; later requests keep the first code.
    pub fn request(&self, code: ExitCode) {
        if self
            .code
            .compare_exchange(UNSET, code as i32, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = self.at.set(Instant::now());
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("Cannot signal the VM exit request: {e}");
        }
    }

    /// The requested code, if a request was made.
    pub fn code(&self) -> Option<i32> {
        match self.code.load(Ordering::Acquire) {
            UNSET => None,
            c => Some(c),
        }
    }

    /// When the first request was made.
    pub fn requested_at(&self) -> Option<Instant> {
        self.at.get().copied()
    }

    /// The event that becomes readable when a request is made.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let r = ExitRequest::new().unwrap();
        assert_eq!(r.code(), None);
        assert_eq!(r.requested_at(), None);
        r.request(ExitCode::GuestError);
        let first = r.requested_at();
        r.request(ExitCode::Ok);
        assert_eq!(r.code(), Some(2));
        assert!(first.is_some());
        assert_eq!(r.requested_at(), first);
        assert_eq!(r.event().read().unwrap(), 2);
    }
}
